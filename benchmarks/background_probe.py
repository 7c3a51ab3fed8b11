"""Does a model paint the prompted background behind light and dark objects? (What the
shipped-model test checks for white circles, over more colours, objects and seeds.)

    python benchmarks/background_probe.py vcomp/assets runs/tiny_x/export [--seeds 0 1] [--steps 15]

For every model folder, generates `a {object} circle standing still on a {background} background`
for each object colour x background colour x seed and reads the dominant background colour with
the checks `vcomp eval` uses. Prints, per model, how many backgrounds were right overall and per
object colour, and the misses. A fine-tune that made light objects wash out their backgrounds
(run W: 13 of 16 against 15 for the model it started from) shows up here before it fails the test.
Models are compared in the same run, on the same prompts and seeds.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="embedded-model folders (vcomp/assets, runs/NAME/export)")
    parser.add_argument("--objects", nargs="+", default=["white", "red"], help="object colours")
    parser.add_argument("--backgrounds", nargs="+", default=["blue", "green", "yellow", "purple"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=15, help="DDIM steps (the shipped-model test uses 15)")
    parser.add_argument("--json", action="store_true", help="one JSON object per model instead of text")
    args = parser.parse_args()

    from vcomp.evaluation.world_checks import background_colour
    from vcomp.pipeline import Pipeline

    for folder in args.models:
        pipeline = Pipeline.load(preset="tiny", assets=folder, device="cpu", allow_random=False)
        results = []
        for obj in args.objects:
            for background in args.backgrounds:
                prompt = f"a {obj} circle standing still on a {background} background"
                for seed in args.seeds:
                    frames = pipeline.generate(None, prompt, steps=args.steps, seed=seed).frames
                    results.append({"object": obj, "background": background, "seed": seed,
                                    "found": background_colour(frames)})
        right = [r for r in results if r["found"] == r["background"]]
        per_object = {obj: sum(r["object"] == obj for r in right) for obj in args.objects}
        misses = [r for r in results if r["found"] != r["background"]]
        if args.json:
            print(json.dumps({"model": folder, "right": len(right), "total": len(results),
                              "per_object": per_object, "misses": misses}))
            continue
        per = ", ".join(f"{obj} {n}/{len(results) // len(args.objects)}" for obj, n in per_object.items())
        print(f"{folder}: {len(right)}/{len(results)} backgrounds right ({per})")
        for r in misses:
            print(f"  {r['object']} on {r['background']} (seed {r['seed']}): got {r['found']}")


if __name__ == "__main__":
    main()
