"""Held-out denoising loss of trained embedded models, and how much of it each caption word saves.

    python benchmarks/heldout_loss.py vcomp/assets runs/tiny_m/export [--clips 16]

A run's logged `eval_mse_ema` is its EMA model on a fixed held-out batch; this scores any number
of finished models (`vcomp train --export` folders, or vcomp/assets) on one batch (same clips,
timesteps and noise), so a candidate release compares with the shipped one before any sampling:
- text only (stage 1: the caption is all the model gets, as in `vcomp t2v`) and with every
  condition (stage 2), as ratios against the first model;
- caption sensitivity: the text-only loss when every object's direction is reversed, or its colour
  or shape changed (`synthetic.counterfactual_caption`), or the caption is empty, over the loss with
  the true caption. 1.000 means the model ignores that attribute; the larger, the more it uses it.

`--timesteps 900 700 500 300 100` adds, per timestep (every clip noised to it), the text-only x0
error with the direction reversed over that with the true caption. The eps loss above hardly sees
high noise, where a clip's layout (and so its direction of motion) is decided; x0 errors do.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ATTRIBUTES = ("direction", "colour", "shape")


def heldout_losses(model_dir: str, clips: int, threads: int | None, timesteps=()) -> dict[str, float]:
    """Losses of `model_dir`'s UNet on the trainer's fixed held-out batch: text only, every
    condition, and text only with each counterfactual caption and with none."""
    from vcomp.train.loop import TrainConfig, Trainer
    from vcomp.train.synthetic import counterfactual_caption

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out=str(Path(out) / "run"), init=model_dir, stage="2", steps=1, workers=0,
                          threads=threads)
        trainer = Trainer(cfg).setup()
        try:
            batch = trainer.eval_batch(0, size=clips)
            losses = {"text_only": trainer.fixed_loss(trainer.model, batch, 1),
                      "all_conditions": trainer.fixed_loss(trainer.model, batch, 2)}
            for attribute in ATTRIBUTES:
                changed = [counterfactual_caption(c, attribute) for c in batch["caption"]]
                losses[attribute] = trainer.fixed_loss(trainer.model, {**batch, "caption": changed}, 1)
            losses["null"] = trainer.fixed_loss(trainer.model, {**batch, "caption": [""] * len(batch["caption"])}, 1)
            reversed_ = [counterfactual_caption(c, "direction") for c in batch["caption"]]
            for t in timesteps:
                true = trainer.fixed_loss(trainer.model, batch, 1, timestep=t, space="x0")
                losses[f"t{t}"] = trainer.fixed_loss(trainer.model, {**batch, "caption": reversed_}, 1,
                                                     timestep=t, space="x0") / true
            return losses
        finally:
            trainer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="embedded model folders; the first is the baseline")
    ap.add_argument("--clips", type=int, default=16, help="held-out clips in the batch")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--timesteps", type=int, nargs="*", default=(),
                    help="also the x0-space direction sensitivity with every clip at each of these timesteps")
    args = ap.parse_args()

    rows = [(m, heldout_losses(m, args.clips, args.threads, args.timesteps)) for m in args.models]
    base = rows[0][1]
    print(f"{'model':32s} {'text only':>10s} {'ratio':>6s} {'all conds':>10s} {'ratio':>6s}   "
          "caption sensitivity: " + " ".join(f"{a:>9s}" for a in (*ATTRIBUTES, "null")))
    for name, loss in rows:
        text = loss["text_only"]
        print(f"{name[-32:]:32s} {text:10.5f} {text / base['text_only']:6.3f} {loss['all_conditions']:10.5f} "
              f"{loss['all_conditions'] / base['all_conditions']:6.3f}   {'':21s}"
              + " ".join(f"{loss[a] / text:9.3f}" for a in (*ATTRIBUTES, "null")))
    if args.timesteps:
        print(f"\n{'direction sensitivity (x0)':32s} " + " ".join(f"{'t=' + str(t):>7s}" for t in args.timesteps))
        for name, loss in rows:
            print(f"{name[-32:]:32s} " + " ".join(f"{loss[f't{t}']:7.3f}" for t in args.timesteps))


if __name__ == "__main__":
    main()
