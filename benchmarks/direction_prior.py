"""Which way a model's first guess moves an object, for each direction word.

    python benchmarks/direction_prior.py vcomp/assets runs/tiny_r/export [--t 900 700]
    python benchmarks/direction_prior.py --make-data DIR [--variety colours|world] [--clips N]

For "a white circle moving {left,right,up,down} on a black background", the x0 each model predicts
from the same pure-noise latents at timestep t (mostly its prior: the noise says little) is decoded
and averaged over draws; the printout is the shift (dx, dy, in pixels) of the centroid of what
differs from each frame's background colour, from the first frame to the last. A model that reads
direction words shows left < right in dx and up < down in dy: objects moving left must start right
of centre. Every embedded release so far prints the same shift for all four words.

The micro experiment (docs/embedded-model-history.md): `--make-data DIR` writes 160 such clips (the only
caption difference is the direction) with captions.jsonl, to train small models from scratch on
(`vcomp train --data DIR --stage 1 ...`) and compare levers in minutes; `--variety colours` and
`--variety world` add the world's other words back (docs/embedded-model-history.md: with them the same
levers taught no direction in 550-710 steps unless `--caption-contrast` was added).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DIRECTIONS = ("left", "right", "up", "down")
CAPTION = "a white circle moving {} on a black background"


VARIETIES = ("circle", "colours", "world")


def make_data(out: Path, clips: int = 160, seed: int = 0, variety: str = "circle") -> None:
    """`clips` single-object clips on solid backgrounds, as mp4s with captions.jsonl.

    variety: "circle" - a white circle on black, directions left/right/up/down in turn (the only
    caption difference is the direction); "colours" - the same four directions with a random
    colour, shape and background colour; "world" - any world object and motion (ten directions,
    "in a circle", "standing still", textured objects)."""
    from dataclasses import replace

    import numpy as np

    from vcomp.io.write import write_video
    from vcomp.train import synthetic

    if variety not in VARIETIES:
        raise ValueError(f"variety must be one of {VARIETIES}, got {variety!r}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(clips):
        direction = DIRECTIONS[i % len(DIRECTIONS)]
        if variety == "circle":
            primary = ("white", "circle", direction, "black")
        elif variety == "colours":
            colour, background = rng.choice(len(synthetic.COLOURS), 2, replace=False)
            primary = (synthetic.COLOURS[colour], synthetic.SHAPES[rng.integers(len(synthetic.SHAPES))], direction,
                       synthetic.COLOURS[background])
        else:
            primary = None
        scene = synthetic.sample_scene(rng, num_objects=1, primary=primary)
        scene = replace(scene, background=replace(scene.background, kind="solid"))
        write_video(out / f"c{i:03d}.mp4", synthetic.render(scene, motion="none").frames, fps=synthetic.FPS)
        lines.append(json.dumps({"video": f"c{i:03d}.mp4", "caption": synthetic.caption(scene)}))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")


def blob_shifts(model_dir: str, timestep: int, draws: int = 8) -> dict[str, tuple[float, float]]:
    """direction -> (dx, dy) of the predicted x0's object's centroid, last frame minus first."""
    import torch

    from vcomp.engine import get_scheduler
    from vcomp.engine.parameterization import to_x0
    from vcomp.weights.embedded import load_embedded

    model = load_embedded(model_dir)
    unet, text, autoencoder = model.unet.eval(), model.text_encoder.eval(), model.autoencoder
    grid = unet.cfg.sample_size // unet.cfg.latent_scale
    noise = torch.randn(draws, unet.cfg.in_dim, 16, grid, grid, generator=torch.Generator().manual_seed(1))
    ab = get_scheduler(1, zero_terminal_snr=unet.cfg.zero_terminal_snr).alphas_cumprod
    t = torch.full((draws,), timestep)
    shifts = {}
    for direction in DIRECTIONS:
        with torch.inference_mode():
            x0 = to_x0(unet(noise, t, text([CAPTION.format(direction)] * draws)).float(), noise, t,
                       unet.cfg.prediction, ab)
            video = autoencoder.decode(x0).clamp(-1, 1)
        # how far each pixel is from its frame's background (median) colour, averaged over draws:
        # the object whatever colours the model drew (a model that draws it dark on light would
        # otherwise be tracked by the bright background around it, the wrong way)
        background = video.flatten(3).median(3).values[..., None, None]  # [B, C, T, 1, 1]
        away = (video - background).abs().sum(1).mean(0)  # [T, H, W]
        away = (away - away.mean((1, 2), keepdim=True)).clamp(min=0)
        ys, xs = torch.meshgrid(torch.arange(away.shape[1]), torch.arange(away.shape[2]), indexing="ij")
        mass = away.sum((1, 2))
        cx, cy = (away * xs).sum((1, 2)) / mass, (away * ys).sum((1, 2)) / mass
        shifts[direction] = (float(cx[-1] - cx[0]), float(cy[-1] - cy[0]))
    return shifts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="embedded model folders")
    ap.add_argument("--t", type=int, nargs="+", default=[900], help="timesteps (default 900)")
    ap.add_argument("--make-data", metavar="DIR", help="write the micro experiment's clips to DIR and stop")
    ap.add_argument("--variety", choices=VARIETIES, default="circle",
                    help="--make-data: white circles only (default), random colours, or any world object")
    ap.add_argument("--clips", type=int, default=160, help="--make-data: how many clips (default 160)")
    args = ap.parse_args()
    if args.make_data:
        make_data(Path(args.make_data), args.clips, variety=args.variety)
        return
    for model in args.models:
        for t in args.t:
            s = blob_shifts(model, t)
            print(f"{model[-28:]:28s} t={t:4d}  " + " | ".join(f"{d}: dx {s[d][0]:+5.1f} dy {s[d][1]:+5.1f}" for d in DIRECTIONS)
                  + f"   left-right dx {s['left'][0] - s['right'][0]:+5.1f}, down-up dy {s['down'][1] - s['up'][1]:+5.1f}")


if __name__ == "__main__":
    main()
