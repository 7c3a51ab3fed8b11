"""What shape and track guidance cost: seconds per generation of the embedded model without them,
with shape guidance alone (the critic), with both, and with both and shape guidance's outline term
(same prompt, seed and steps), and the ratios to the plain run, measured in the same run.

    python benchmarks/shape_guidance.py [--assets DIR] [--steps 50] [--repeat 2] [--json]

Shape guidance (vcomp.engine.shape_guidance) decodes the clean-latent prediction and
back-propagates a shape critic through the decoder at the steps with 300 <= t <= 800 (about half
of them); track guidance (vcomp.engine.track_guidance) back-propagates the object's centroid track
through the same decode, over its own timesteps; the outline term fits each named shape's outline
to the object and back-propagates the distance at 300 <= t <= 650; the rest of sampling is unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    from vcomp.pipeline import Pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=None, help="embedded model folder (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--prompt", default="a red star moving left on a blue background")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=args.assets)
    if pipe.shape_critic is None:
        raise SystemExit("this model has no shape critic (add one with `vcomp train-shape-critic`)")
    shape = pipe.default_shape_guidance or 1.0
    track = pipe.default_track_guidance or 1.0
    outline = pipe.shape_outline or 1.0
    pipe.generate(None, args.prompt, steps=2, seed=0)  # warm-up

    def seconds(shape_guidance: float, track_guidance: float, shape_outline: float = 0.0) -> float:
        pipe.shape_outline = shape_outline
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            pipe.generate(None, args.prompt, steps=args.steps, seed=0, shape_guidance=shape_guidance,
                          track_guidance=track_guidance)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    plain, shaped, both = seconds(0.0, 0.0), seconds(shape, 0.0), seconds(shape, track)
    outlined = seconds(shape, track, outline)
    row = {"steps": args.steps, "shape_guidance": shape, "track_guidance": track, "shape_outline": outline,
           "plain_s": round(plain, 3), "shape_s": round(shaped, 3), "shape_and_track_s": round(both, 3),
           "with_outline_s": round(outlined, 3), "shape_ratio": round(shaped / plain, 3),
           "shape_and_track_ratio": round(both / plain, 3), "with_outline_ratio": round(outlined / plain, 3)}
    print(json.dumps(row) if args.json else
          f"{args.steps} steps: {plain:.2f} s plain, {shaped:.2f} s with shape guidance {shape:g} "
          f"(x{shaped / plain:.2f}), {both:.2f} s with track guidance {track:g} too (x{both / plain:.2f}), "
          f"{outlined:.2f} s with the outline term {outline:g} too (x{outlined / plain:.2f})")


if __name__ == "__main__":
    main()
