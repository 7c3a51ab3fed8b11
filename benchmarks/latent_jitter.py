"""How much a model's sampled latents change from frame to frame where nothing moves.

    python benchmarks/latent_jitter.py vcomp/assets runs/tiny_z/export [--n 4] [--steps 20]

Why: an embedded model's flicker (and most of its motion-control error on still scenes, which the
H.264 extractor reads as motion) starts in the latents the UNet samples, before any decoder or
refiner. For the first `--n` held-out eval scenes whose object stands still (`vcomp eval --seed 0`
scenes, text prompt only), each model generates once and the script prints the RMS of its
latents' frame-to-frame differences (scaled-latent units; a still source clip's latents differ by
0), their spatial correlation (about 0 = white noise in every cell, which no decoder can tell from
texture), and the one-shot x0 error of the UNet from the source's own latent noised to t = 50
(how well it denoises at the end of sampling). Ratios are against the first model, measured in
the same run.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def still_cases(n: int, seed: int = 0, limit: int = 400) -> list:
    """The first `n` eval cases (`suite.make_case(seed, i)`) whose object stands still."""
    from vcomp.evaluation.suite import make_case

    found = []
    for i in range(limit):
        case = make_case(seed, i)
        if case.sample.scene.primary.direction == "still":
            found.append(case)
            if len(found) == n:
                break
    return found


def sampled_latent(pipeline, prompt: str, steps: int, seed: int) -> torch.Tensor:
    """The latent `pipeline.generate` decodes ([C, T, h, w]), caught at the decoder."""
    caught = {}
    decode = pipeline.autoencoder.decode

    def catch(latent, *args, **kwargs):
        caught["latent"] = latent.detach().float()[0].clone()
        return decode(latent, *args, **kwargs)

    pipeline.autoencoder.decode = catch
    try:
        pipeline.generate(None, prompt, steps=steps, seed=seed)
    finally:
        pipeline.autoencoder.decode = decode
    return caught["latent"]


def jitter_stats(latent: torch.Tensor) -> tuple[float, float]:
    """(RMS of frame-to-frame differences, correlation of the differences with the next cell)."""
    diff = latent[:, 1:] - latent[:, :-1]
    pairs = torch.stack([diff[..., 1:].flatten(), diff[..., :-1].flatten()])
    return float(diff.pow(2).mean().sqrt()), float(torch.corrcoef(pairs)[0, 1])


@torch.inference_mode()
def x0_error(pipeline, case, t: int = 50) -> float:
    """RMS error of the UNet's x0 estimate from the source latent noised to `t` (text prompt)."""
    from vcomp.engine import Branch, get_scheduler, make_eps_fn
    from vcomp.engine.parameterization import to_x0

    ac = get_scheduler(20, zero_terminal_snr=pipeline.unet.cfg.zero_terminal_snr).alphas_cumprod.float()
    clip = torch.from_numpy(case.sample.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    z0 = pipeline.autoencoder.encode(clip).float()
    tokens, _ = pipeline.encode_text([case.sample.caption])
    eps_fn = make_eps_fn(pipeline.unet, Branch(tokens, None, None), None, 1.0, None, ac)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(case.index))
    a = ac[t]
    xt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    x0 = to_x0(eps_fn(xt, torch.tensor([t])), xt, torch.tensor([t]), "eps", ac)
    return float((x0 - z0).pow(2).mean().sqrt())


def main() -> None:
    from vcomp.pipeline import Pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="embedded-model folders (vcomp/assets, a `vcomp train --export`)")
    parser.add_argument("--n", type=int, default=4, help="still held-out scenes (default 4)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = still_cases(args.n)
    print(f"{len(cases)} still scenes: {', '.join(str(c.index) for c in cases)}")
    print(f"{'model':36s} {'frame diff RMS':>16s} {'spatial corr':>13s} {'x0 error t=50':>15s}")
    first = None
    for folder in args.models:
        pipeline = Pipeline.load(folder, device="cpu")
        stats = np.array([jitter_stats(sampled_latent(pipeline, c.sample.caption, args.steps, c.seed)) for c in cases])
        x0 = float(np.mean([x0_error(pipeline, c) for c in cases]))
        row = (float(stats[:, 0].mean()), float(stats[:, 1].mean()), x0)
        first = first or row
        print(f"{folder:36s} {row[0]:7.3f} ({row[0] / first[0]:4.1f}x) {row[1]:13.2f} {row[2]:7.3f} ({row[2] / first[2]:4.1f}x)")


if __name__ == "__main__":
    main()
