"""Do generated objects move the way the prompt says, once wobble is set aside?

    vcomp eval --suite world --n 24 --steps 20 --tasks text,motion --out runs/eval_out
    python benchmarks/direction_tracks.py runs/eval_out [--task text]

`vcomp eval` reads a track whose straight fit leaves a large residual as "in a circle", so its
direction accuracy mixes two failures: wobbly tracks and wrong directions. This script re-reads
the clips an eval wrote, fits a straight constant-velocity track to every object's centroid
regardless of the residual, and counts how often the fitted direction is the prompted one among
the scenes with a straight motion (chance: 1 in 8), with the mean `world_checks.direction_cosine`
(partial credit for a neighbouring direction; chance 0; it also rescores eval folders written
before the suite reported it). The same fit on the rendered source clips is the baseline,
measured in the same run.

It also counts the tracks that *jump*: a centroid step between consecutive frames of more than
JUMP_PX (over three times the world's fastest straight motion, 3 px/frame, at 64 px). A jump is an object
that vanishes while another appears elsewhere (or a second object that outgrows the first), the
commonest reason a generated track reads "in a circle" although it goes the right way.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

JUMP_PX = 10.0  #: px at 64 px: a centroid step over three times the world's fastest motion


def fitted_track(frames: np.ndarray, want: str) -> tuple[dict | None, float]:
    """Straight fit of the main object's centroid track (`world_checks.straight_fit`: direction,
    speed in px/frame, wobble = residual / spread; None without a track) and its
    `world_checks.direction_cosine` against the prompted direction `want`."""
    from vcomp.evaluation import world_checks as W

    track = W.analyse_object(frames)["track"]
    cosine = W.direction_cosine(track, want, frames.shape[2])
    fit = W.straight_fit(track)
    if fit is None:
        return None, cosine
    steps = np.linalg.norm(np.diff(track, axis=0), axis=1) * (W.REFERENCE_SIZE / frames.shape[2])
    return {"direction": fit["direction"], "speed": math.hypot(*fit["velocity"]),
            "wobble": fit["residual"] / max(fit["spread"], 1e-6),
            "jump": float(np.nanmax(steps)) if np.isfinite(steps).any() else 0.0}, cosine


def main() -> None:
    from vcomp.evaluation import world_checks as W
    from vcomp.io.video import iter_frames

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a `vcomp eval --out` folder")
    ap.add_argument("--task", default="text", help="which generated clips: text (default) or motion")
    args = ap.parse_args()
    report = json.loads((args.folder / "results.json").read_text())

    def read(name: str) -> np.ndarray:
        return np.stack([frame for _, frame in iter_frames(args.folder / name)])

    counts = {"source": 0, args.task: 0}
    jumps = {"source": 0, args.task: 0}
    cosines: dict[str, list[float]] = {"source": [], args.task: []}
    straight = 0
    for case in report["cases"]:
        want = case["object"]["direction"]
        if want not in W.MOVING:
            continue
        straight += 1
        stem = f"case{case['index']:03d}"
        for kind, name in (("source", f"{stem}_source.mp4"), (args.task, f"{stem}_{args.task}.mp4")):
            fit, cosine = fitted_track(read(name), want)
            hit = fit is not None and fit["direction"] == want
            counts[kind] += hit
            jumps[kind] += fit is not None and fit["jump"] > JUMP_PX
            cosines[kind].append(cosine)
            if kind == args.task and fit is not None:
                print(f"{stem} want {want:10s} fitted {fit['direction']:10s} {fit['speed']:4.2f} px/frame "
                      f"wobble {fit['wobble']:4.2f} jump {fit['jump']:4.1f} px cosine {cosine:+.2f} {'ok' if hit else ''}")
    print(f"straight-motion scenes: {straight}; fitted direction = prompt: "
          f"{args.task} {counts[args.task]} ({counts[args.task] / max(straight, 1):.2f}), "
          f"source clips {counts['source']} ({counts['source'] / max(straight, 1):.2f}), chance 0.125; "
          f"mean direction cosine: {args.task} {np.mean(cosines[args.task] or [0]):.2f}, "
          f"source clips {np.mean(cosines['source'] or [0]):.2f}, chance 0; "
          f"tracks with a jump > {JUMP_PX:g} px: {args.task} {jumps[args.task]}, source clips {jumps['source']}")


if __name__ == "__main__":
    main()
