"""What motion guidance costs: seconds per motion-conditioned generation of the embedded model
without it and with it (same source field, prompt, seed and steps), and the ratio, measured in the
same run.

    python benchmarks/motion_guidance.py [--assets DIR] [--steps 50] [--repeat 2] [--scale S] [--json]

Motion guidance (vcomp.engine.motion_guidance) decodes the clean-latent prediction and
back-propagates the warp residual against the motion condition through the decoder at the steps
with 300 <= t <= 999 (spaced 50 timesteps apart: 14 decodes at 20 or 50 steps); the rest of
sampling is unchanged. The field is a held-out world scene's, extracted from H.264 as a user's is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    from vcomp.conditions.condition_set import ConditionSet
    from vcomp.evaluation.suite import make_case
    from vcomp.pipeline import Pipeline
    from vcomp.train.synthetic import FPS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=None, help="embedded model folder (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--scale", type=float, default=None, help="motion guidance strength (default: the model's, else 0.35)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=args.assets)
    scale = args.scale or pipe.default_motion_guidance or 0.35
    sample = make_case(0, 2).sample  # a moving object
    conditions = ConditionSet(motion=sample.motion, meta={"fps": FPS})
    pipe.generate(conditions, sample.caption, steps=2, seed=0, motion_guidance=0.0)  # warm-up

    def seconds(motion_guidance: float) -> float:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            pipe.generate(conditions, sample.caption, steps=args.steps, seed=0, motion_guidance=motion_guidance)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    plain, guided = seconds(0.0), seconds(scale)
    row = {"steps": args.steps, "motion_guidance": scale, "plain_s": round(plain, 3), "guided_s": round(guided, 3),
           "ratio": round(guided / plain, 3)}
    print(json.dumps(row) if args.json else
          f"{args.steps} steps: {plain:.2f} s plain, {guided:.2f} s with motion guidance {scale:g} (x{guided / plain:.2f})")


if __name__ == "__main__":
    main()
