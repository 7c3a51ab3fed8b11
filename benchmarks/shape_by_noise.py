"""Where does an object's shape get lost: in the latent space, in the UNet's denoising, or in
binding shape words?

    python benchmarks/shape_by_noise.py [--assets DIR ...] [--n 24] [--t 20,50,100,200,400] [--wrong-shape-guidance 4 8]

On `--n` held-out cases of the world suite (`vcomp eval`'s seed 0 scenes), classifies the object's
shape (the suite's `world_checks`) in:

- recon: the source clip through the model's latent space (encode, decode; the baseline, measured
  in the same run: what a perfect UNet could give back);
- x0@t: the decoded clean latent the UNet predicts in one pass from the source latent noised to
  timestep t, with the true caption. The shape is still in x_t at small t, so a model that loses it
  there is averaging shapes away (its prior holds less shape variance than the data), not failing
  to read the words;
- text / sketch: full generations (DDIM `--steps`) from the caption alone, and with the clip's
  exact sketch sequence (which draws every frame's outline);
- wrong@w (`--wrong-shape-guidance W ...`): from the caption, guided at w against the same caption
  with the next shape word (`synthetic.counterfactual_caption`, the negative prompt). If the model
  knew shapes but weighed them too little, pushing away from a wrong shape would draw the right
  one more often.

Several --assets compare models on the same cases and noise draws.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def shape_of(frames: np.ndarray) -> str | None:
    from vcomp.evaluation.world_checks import analyse_object

    return analyse_object(frames)["shape"]


def x0_shapes(pipe, cases, timesteps: list[int], seed: int) -> dict[int, list]:
    """Per timestep, the shape of the decoded one-pass clean-latent prediction of every case."""
    from vcomp.engine import get_scheduler
    from vcomp.engine.parameterization import to_x0
    from vcomp.pipeline import _uint8_frames

    unet, ae = pipe.unet, pipe.autoencoder
    zero_snr = bool(getattr(unet.cfg, "zero_terminal_snr", False))
    alphas = get_scheduler(50, zero_terminal_snr=zero_snr).alphas_cumprod
    kind = unet.cfg.prediction
    out: dict[int, list] = {t: [] for t in timesteps}
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for case in cases:
            video = torch.from_numpy(case.sample.frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            z0 = ae.encode(video).float()
            context, _ = pipe.encode_text([case.sample.caption])
            for t in timesteps:
                tt = torch.tensor([t])
                noise = torch.randn(z0.shape, generator=g)
                x_t = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * noise
                x0 = to_x0(unet(x_t, tt, context).float(), x_t, tt, kind, alphas)
                out[t].append(shape_of(_uint8_frames(ae.decode(x0))))
    return out


def main() -> None:
    from vcomp.conditions.condition_set import ConditionSet
    from vcomp.evaluation.suite import make_case
    from vcomp.pipeline import Pipeline
    from vcomp.train.synthetic import FPS, counterfactual_caption

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", nargs="*", default=[None], help="embedded model folders (default: the shipped one)")
    ap.add_argument("--n", type=int, default=24, help="held-out cases (default 24)")
    ap.add_argument("--t", default="20,50,100,200,400", help="timesteps of the one-pass predictions")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps of the full generations (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="suite seed of the cases (default 0)")
    ap.add_argument("--wrong-shape-guidance", type=float, nargs="*", default=[], metavar="W",
                    help="also generate guided at each W against the caption with the next shape word")
    args = ap.parse_args()
    timesteps = [int(t) for t in args.t.split(",")]
    cases = [make_case(args.seed, i) for i in range(args.n)]
    truth = [c.sample.scene.primary.shape for c in cases]

    meta = {"fps": FPS}
    jobs = (("text", lambda c: ConditionSet(meta=meta)),
            ("sketch", lambda c: ConditionSet(sketch=c.sample.sketch, meta=meta)))

    def score(shapes) -> str:
        return f"{sum(s == t for s, t in zip(shapes, truth, strict=True))}/{len(truth)}"

    for assets in args.assets:
        pipe = Pipeline.load(device="cpu", preset="tiny", assets=assets)
        row = {"recon": score([shape_of(pipe.reconstruct(c.sample.frames)) for c in cases])}
        row.update({f"x0@{t}": score(s) for t, s in x0_shapes(pipe, cases, timesteps, args.seed).items()})
        for name, make in jobs:
            row[name] = score([shape_of(pipe.generate(make(c), c.sample.caption, steps=args.steps, seed=c.seed).frames)
                               for c in cases])
        for w in args.wrong_shape_guidance:
            row[f"wrong@{w:g}"] = score([shape_of(pipe.generate(
                ConditionSet(meta=meta), c.sample.caption, steps=args.steps, seed=c.seed, guidance=w,
                negative_prompt=counterfactual_caption(c.sample.caption, "shape")).frames) for c in cases])
        print(f"{assets or 'shipped'}: " + ", ".join(f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
