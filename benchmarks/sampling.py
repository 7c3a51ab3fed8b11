"""Seconds per DDIM step and peak memory of the sampling loop (cond + uncond in one batch).

    python benchmarks/sampling.py                                     # tiny, CPU, 16 x 64 x 64
    python benchmarks/sampling.py --preset official --device cuda     # 16 x 256 x 256, fp16 autocast
    python benchmarks/sampling.py --preset official --device cuda --decode --json

Weights are random (no files needed): timing does not depend on the values. Each step is one
UNet call on a batch of 2 (the guided pair) plus the DDIM update; the condition features are
precomputed once, as the pipeline does. Peak memory is `torch.cuda.max_memory_allocated` on CUDA
and the process's peak resident set size on CPU (which includes Python, torch and the model).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize()
    except OSError:
        return None


def build(preset: str, device: torch.device):
    from vcomp.model import create_model, get_config

    if preset == "tiny":
        from vcomp.weights.embedded import random_embedded

        emb = random_embedded(seed=0)
        return emb.unet.to(device), emb.autoencoder, emb.autoencoder.factor
    cfg = get_config("official", stc_pool_size=None)
    unet = create_model(cfg, device=device).eval().requires_grad_(False)
    return unet, None, 8


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "official"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=None, help="square video side in pixels (64 tiny, 256 official)")
    parser.add_argument("--steps", type=int, default=5, help="timed DDIM steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default=None, help="fp16 / bf16 / fp32 (default: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--attention-chunk", type=int, default=None, help="attention slicing chunk (batch rows)")
    parser.add_argument("--decode", action="store_true", help="also time the VAE decode (official: random SD-2.1 VAE)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from vcomp.engine import Branch, denoise, get_noise, get_scheduler, make_eps_fn
    from vcomp.model.attention import set_attention_chunk_size
    from vcomp.pipeline import resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    autocast_dtype, _ = resolve_dtype(args.dtype, device)
    set_attention_chunk_size(args.attention_chunk)
    size = args.size or (64 if args.preset == "tiny" else 256)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline_rss = current_rss_bytes()  # torch + vcomp imported, no model yet

    t0 = time.perf_counter()
    unet, autoencoder, factor = build(args.preset, device)
    build_s = time.perf_counter() - t0
    cfg = unet.cfg
    f, h, w = args.frames, size // factor, size // factor
    g = torch.Generator("cpu").manual_seed(0)
    ctx = torch.randn(1, cfg.text_len, cfg.context_dim, generator=g).to(device)
    style = torch.randn(1, 1, cfg.style_dim, generator=g).to(device)
    misc = round(size * 1.5) if args.preset == "official" else size
    conditions = {"depth": torch.rand(1, 1, f, misc, misc, generator=g).to(device),
                  "motion": torch.randn(1, 2, f, size, size, generator=g).to(device),
                  "local_image": torch.rand(1, 3, misc, misc, generator=g).to(device)}
    ac = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
          else torch.autocast(device.type, enabled=False))
    with torch.inference_mode():
        with ac:
            feats = unet.encode_conditions(conditions, 1, f, (h, w)).float()
        cond = Branch(ctx, style, feats)
        uncond = Branch(torch.zeros_like(ctx), torch.zeros_like(style), feats)
        eps_fn = make_eps_fn(unet, cond, uncond, guidance=9.0, autocast_dtype=autocast_dtype)
        noise = get_noise((1, cfg.in_dim, f, h, w), seed=0, device=device)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        if args.warmup:
            denoise(eps_fn, noise, get_scheduler(args.warmup, device=device))
            sync()
        stamps = [time.perf_counter()]

        def tick(done, total):
            sync()
            stamps.append(time.perf_counter())

        latent = denoise(eps_fn, noise, get_scheduler(args.steps, device=device), callback=tick)
        per_step = [b - a for a, b in zip(stamps, stamps[1:])]
        decode_s = None
        if args.decode:
            if autoencoder is None:
                from vcomp.model.autoencoder import KLAutoencoder, build_kl_vae

                autoencoder = KLAutoencoder(build_kl_vae(device=device))
            t0 = time.perf_counter()
            with ac:
                autoencoder.decode(latent)
            sync()
            decode_s = time.perf_counter() - t0

    result = {
        "preset": args.preset, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "dtype": str(autocast_dtype or torch.float32).replace("torch.", ""),
        "frames": f, "size": size, "latent": [cfg.in_dim, f, h, w], "batch": 2,
        "params": sum(p.numel() for p in unet.parameters()), "build_s": round(build_s, 3),
        "s_per_step_median": round(statistics.median(per_step), 4), "s_per_step_mean": round(statistics.mean(per_step), 4),
        "s_per_step_min": round(min(per_step), 4), "steps_timed": len(per_step),
        "decode_s": round(decode_s, 4) if decode_s is not None else None,
        "peak_memory_bytes": (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()),
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
        "baseline_rss_bytes": baseline_rss,
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        gib = result["peak_memory_bytes"] / 2**30
        print(f"{args.preset} on {result['device']} ({result['device_name']}, {result['threads']} threads, {result['dtype']}): "
              f"{f} x {size} x {size}, latent {result['latent']}, batch 2 (cond + uncond)")
        extra = ""
        if device.type != "cuda" and baseline_rss:
            extra = f", {(result['peak_memory_bytes'] - baseline_rss) / 2**20:.0f} MiB above the {baseline_rss / 2**20:.0f} MiB before the model was built"
        print(f"  {result['s_per_step_median']:.3f} s/step median ({result['s_per_step_min']:.3f} min, "
              f"{len(per_step)} steps); peak memory {gib:.2f} GiB ({result['peak_memory_kind']}{extra})")
        if decode_s is not None:
            print(f"  decode: {decode_s:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
