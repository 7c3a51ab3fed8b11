"""What shape guidance costs: seconds per generation of the embedded model with and without it
(same prompt, seed and steps), and their ratio, measured in the same run.

    python benchmarks/shape_guidance.py [--assets DIR] [--steps 50] [--repeat 2] [--json]

Shape guidance (vcomp.engine.shape_guidance) decodes the clean-latent prediction and
back-propagates a shape critic through the decoder at the steps with 300 <= t <= 800 (about half
of them); the rest of sampling is unchanged.
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
    strength = pipe.default_shape_guidance or 1.0
    pipe.generate(None, args.prompt, steps=2, seed=0)  # warm-up

    def seconds(shape_guidance: float) -> float:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            pipe.generate(None, args.prompt, steps=args.steps, seed=0, shape_guidance=shape_guidance)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    plain, guided = seconds(0.0), seconds(strength)
    row = {"steps": args.steps, "shape_guidance": strength, "plain_s": round(plain, 3), "guided_s": round(guided, 3),
           "ratio": round(guided / plain, 3)}
    print(json.dumps(row) if args.json else
          f"{args.steps} steps: {plain:.2f} s plain, {guided:.2f} s with shape guidance {strength:g} "
          f"(x{guided / plain:.2f})")


if __name__ == "__main__":
    main()
