"""Held-out denoising loss of trained embedded models, measured on the same clips and noise.

    python benchmarks/heldout_loss.py vcomp/assets runs/tiny_m/export [--clips 16]

A run's logged `eval_mse_ema` is its EMA model on a fixed held-out batch; this scores any number
of finished models (`vcomp train --export` folders, or vcomp/assets) on one batch, so a candidate
release compares with the shipped one before any sampling. Two numbers per model: with text only
(stage 1: the caption is all the model gets, as in `vcomp t2v`) and with every condition (stage 2).
The first model is the baseline; the ratio column is each model's loss over the baseline's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def heldout_losses(model_dir: str, clips: int, threads: int) -> dict[str, float]:
    """eps-MSE of `model_dir`'s UNet on the trainer's fixed held-out batch (same clips, timesteps
    and noise for every model), text only and with every condition."""
    from vcomp.train.loop import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out=str(Path(out) / "run"), init=model_dir, stage="2", steps=1, workers=0,
                          threads=threads)
        trainer = Trainer(cfg).setup()
        try:
            batch = trainer.eval_batch(0, size=clips)
            return {"text_only": trainer.fixed_loss(trainer.model, batch, 1),
                    "all_conditions": trainer.fixed_loss(trainer.model, batch, 2)}
        finally:
            trainer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="embedded model folders; the first is the baseline")
    ap.add_argument("--clips", type=int, default=16, help="held-out clips in the batch")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()

    rows = [(m, heldout_losses(m, args.clips, args.threads)) for m in args.models]
    base = rows[0][1]
    print(f"{'model':40s} {'text only':>10s} {'ratio':>6s} {'all conds':>10s} {'ratio':>6s}")
    for name, loss in rows:
        print(f"{name[-40:]:40s} {loss['text_only']:10.5f} {loss['text_only'] / base['text_only']:6.3f} "
              f"{loss['all_conditions']:10.5f} {loss['all_conditions'] / base['all_conditions']:6.3f}")


if __name__ == "__main__":
    main()
