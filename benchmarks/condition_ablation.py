"""How much each condition tells the model: the denoising loss on held-out world clips with the
caption and that one condition, as a ratio to the caption alone (1.0 = the model ignores it).

    python benchmarks/condition_ablation.py                 # the shipped embedded model
    python benchmarks/condition_ablation.py --model runs/next/export --repeats 5

Why: a condition the model does not use shows up here in a minute, long before `vcomp eval`'s
adherence metrics (which need full generations) can tell. Each repeat draws new noise and new
timesteps in each band over the same 8 held-out stage-2 clips (16 frames, 64²); the baseline (the
caption alone) is measured on the same noisy latents in the same run.
"""

from __future__ import annotations

import argparse
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vcomp/assets", help="embedded-model folder (default: vcomp/assets)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11, help="picks the held-out clips")
    args = parser.parse_args()

    import torch

    from vcomp.engine import draw_noise
    from vcomp.train.loop import TrainConfig, Trainer, to_eps

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(TrainConfig(init=args.model, out=out, stage="2", steps=1, batch=8, frames_curriculum="16",
                                      seed=args.seed, workers=0)).setup({"init", "stage"})
    model, bands, totals = trainer.ema_model, [(200, 500), (500, 800)], {}
    batch = trainer.eval_batch(0, size=8)
    for rep in range(args.repeats):
        g = torch.Generator().manual_seed(100 + rep)
        latent, ids, _, conditions, _ = trainer._inputs(batch, 2, g, None)
        for band in bands:
            t = torch.randint(*band, (latent.shape[0],), generator=g)
            noise = draw_noise(latent.shape, g, trainer.model_cfg.noise_shared)
            x_t = trainer.scheduler.add_noise(latent, noise, t)
            with torch.inference_mode():
                for name in ["caption only", *conditions]:
                    kept = {name: conditions[name]} if name in conditions else None
                    eps = to_eps(model(x_t, t, ids, None, kept, None).float(), x_t, t,
                                 trainer.model_cfg.prediction, trainer.alphas_cumprod)
                    totals[band, name] = totals.get((band, name), 0.0) + float((eps - noise).pow(2).mean())
    names = ["caption only", *conditions]
    print(f"{'t band':10s} " + " ".join(f"{n:>13s}" for n in names))
    for band in bands:
        base = totals[band, "caption only"]
        print(f"{band[0]}-{band[1]:<6d} " + " ".join(f"{totals[band, n] / base:13.3f}" for n in names))


if __name__ == "__main__":
    main()
