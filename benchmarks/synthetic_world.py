"""How fast the procedural world makes training clips (single process).

    python benchmarks/synthetic_world.py                 # 64 and 128 px, 16 frames
    taskset -c 0 python benchmarks/synthetic_world.py    # pinned to one core (x264 threads included)

Prints clips/s for: scene sampling; render only (motion="none"); render + H.264 round trip through
`motion_from_frames` (motion="extracted", what training uses); a full `WorldDataset` item (render +
motion + style embedding); and reading that item back from the npz cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from vcomp.train.synthetic import WorldDataset, render, sample_scene


def rate(fn, items, repeat: int = 1) -> float:
    fn(items[0])  # warm up (imports, encoder init)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100, help="clips per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    args = parser.parse_args()

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"procedural world, {args.frames} frames, {args.clips} clips per figure, best of {args.repeat}, "
          f"{affinity} CPU(s) available to this process")
    for size in args.sizes:
        rng = np.random.default_rng(0)
        scenes = [sample_scene(rng, size=size, frames=args.frames) for _ in range(args.clips)]
        seeds = list(range(args.clips))
        figures = {
            "sample_scene": rate(lambda i, size=size: sample_scene(np.random.default_rng(i), size=size, frames=args.frames),
                                 seeds, args.repeat),
            "render (no motion)": rate(lambda s: render(s, motion="none"), scenes, args.repeat),
            "render + H.264 motion": rate(lambda s: render(s, motion="extracted"), scenes, args.repeat),
        }
        with tempfile.TemporaryDirectory() as tmp:
            data = WorldDataset(length=args.clips, size=size, frames=args.frames, cache_dir=tmp)
            figures["dataset item (+ style), writing cache"] = rate(data.__getitem__, seeds, 1)
            figures["dataset item from npz cache"] = rate(data.__getitem__, seeds, args.repeat)
            per_item = sum(f.stat().st_size for f in data.cache.glob("*.npz")) / args.clips
        print(f"\n{size}x{size}x{args.frames}:")
        for name, value in figures.items():
            print(f"  {name:40s} {value:8.1f} clips/s  ({1000 / value:6.2f} ms/clip)")
        print(f"  {'cache size':40s} {per_item / 1024:8.1f} KiB/clip")


if __name__ == "__main__":
    main()
