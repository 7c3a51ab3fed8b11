"""How much an autoencoder's decoder turns small frame-to-frame latent jitter into flicker, read
the way `vcomp eval` reads motion (H.264 motion vectors of the decoded clip).

    python benchmarks/decoder_jitter.py vcomp/assets runs/dec/export [--n 12] [--levels 0,0.05,0.1]

An embedded-model folder with a temporal refiner (`vcomp train-refiner`) gets a second row: its
decoder followed by the refiner.

Why: sampled latents differ from frame to frame by ~0.06 per value even where the scene is still,
and the motion-control error of the embedded model's videos was dominated by the background's
flicker, not by the object's path. For `--n` held-out eval scenes (the same ones `vcomp eval
--seed 0` uses) each clip is encoded (mean latent), independent Gaussian noise of each level
(scaled-latent units) is added per frame, the clip is decoded, and its motion error against the
clip's own motion field is averaged. Baselines measured in the same run: the source clip (0 by
construction) and its first frame frozen for 16 frames (what a video with no motion at all scores).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("autoencoders", nargs="+", help="autoencoder export or embedded-model folders")
    parser.add_argument("--n", type=int, default=12, help="held-out eval scenes (default 12)")
    parser.add_argument("--levels", default="0,0.05,0.1", help="latent noise levels, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    levels = [float(v) for v in args.levels.split(",")]

    from vcomp.evaluation.metrics import motion_control_error
    from vcomp.evaluation.suite import make_case

    samples = [make_case(0, i).sample for i in range(args.n)]
    motions = [np.asarray(s.motion, np.float32) for s in samples]
    frozen = np.mean([motion_control_error(np.repeat(s.frames[:1], len(s.frames), 0), m)
                      for s, m in zip(samples, motions, strict=True)])
    print(f"{'clip':40s} motion error (px/frame) at latent noise {', '.join(map(str, levels))}")
    print(f"{'first frame frozen (baseline)':40s} {frozen:.3f}")
    for folder in args.autoencoders:
        vae, refiner = autoencoder_and_refiner(folder)
        for label, refine in [(folder, None)] + ([(f"{folder} + refiner", refiner)] if refiner else []):
            errors, psnrs = decode_errors(vae, refine, samples, motions, levels)
            ratios = "  ".join(f"{e:.3f} ({e / frozen:.1f}x)" for e in errors)
            psnr_text = f"   PSNR {np.mean(psnrs):.1f} dB" if psnrs else ""
            print(f"{label:40s} {ratios}{psnr_text}")


def autoencoder_and_refiner(folder: str):
    """(AutoencoderKL, temporal refiner or None) of an embedded-model folder, loaded once; an
    autoencoder export has no refiner."""
    from vcomp.train.autoencoder import load_any_autoencoder
    from vcomp.weights.files import embedded_available

    if embedded_available(folder):
        from vcomp.weights.embedded import load_embedded

        autoencoder = load_embedded(folder).autoencoder
        if hasattr(autoencoder, "vae"):
            return autoencoder.vae.float().eval(), getattr(autoencoder, "refiner", None)
    return load_any_autoencoder(folder)[0].eval(), None  # an export, or the error that says why not


def decode_errors(vae, refiner, samples, motions, levels):
    """Mean motion error per noise level, and the PSNRs of the clean decodes."""
    from vcomp.evaluation.metrics import motion_control_error, psnr

    scale = float(vae.config.scaling_factor)
    errors, psnrs = np.zeros(len(levels)), []
    for i, (s, m) in enumerate(zip(samples, motions, strict=True)):
        x = torch.from_numpy(s.frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        g = torch.Generator().manual_seed(i)
        with torch.inference_mode():
            z = vae.encode(x).latent_dist.mean * scale
            for k, level in enumerate(levels):
                recon = vae.decode((z + level * torch.randn(z.shape, generator=g)) / scale).sample
                if refiner is not None:  # it works on the whole clip [1, 3, T, H, W]
                    recon = refiner(recon.permute(1, 0, 2, 3)[None])[0].permute(1, 0, 2, 3)
                frames = ((recon.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                errors[k] += motion_control_error(frames, m) / len(samples)
                if level == 0:
                    psnrs.append(psnr(frames, s.frames))
    return errors, psnrs


if __name__ == "__main__":
    main()
