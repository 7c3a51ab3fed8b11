"""The step loop of the one-module trainers (`vcomp train-autoencoder`, `vcomp train-refiner`).

Both train a single frozen-context module on rendered world data with AdamW, a warm-up + cosine
learning rate (`vcomp.train.autoencoder.lr_at`), gradient clipping, a JSON log line every
`log_every` steps (held-out numbers every `eval_every`), a checkpoint every `ckpt_every` and a
wall-clock stop; only the batch and the loss differ, which the trainer passes in as `loss_at`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch


def run_module_steps(cfg, start: int, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                     loss_at: Callable[[int], tuple[torch.Tensor, dict]], *, out: Path,
                     save: Callable[[int], None], evaluate: Callable[[], dict], eval_every: int,
                     on_event: Callable[[str, dict], None]) -> int:
    """Optimise from step `start` to `cfg.steps` (or until `cfg.max_minutes`), save, and return
    the last step. `loss_at(step)` -> (loss, logged parts) for that step's batch."""
    from vcomp.train.autoencoder import lr_at
    from vcomp.train.checkpoint import append_log

    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else None
    last = time.monotonic()
    step = start
    while step < cfg.steps:
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, parts = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.monotonic()
            entry = {"step": step, "loss": loss.item(), **parts, "lr": lr, "s_per_step": (now - last) / cfg.log_every}
            if step % eval_every == 0 or step == cfg.steps:
                entry.update({f"eval_{k}": v for k, v in evaluate().items()})
            last = now
            append_log(out, entry)
            on_event("log", entry)
        if step % cfg.ckpt_every == 0:
            save(step)
        if deadline is not None and time.monotonic() > deadline:
            break
    save(step)
    return step
