"""The step loop of the one-module trainers (`vcomp train-autoencoder`, `vcomp train-refiner`,
`vcomp train-prompt-refiner`), and how the two stage trainers open, resume and export a run.

They all train a single frozen-context module on rendered world data with AdamW, a warm-up + cosine
learning rate (`vcomp.train.autoencoder.lr_at`), gradient clipping, a JSON log line every
`log_every` steps (held-out numbers every `eval_every`), a checkpoint every `ckpt_every` and on
Ctrl-C / SIGTERM, and a wall-clock stop; only the batch and the loss differ, which the trainer
passes in as `loss_at`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


def run_module_steps(cfg, start: int, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                     loss_at: Callable[[int], tuple[torch.Tensor, dict]], *, out: Path,
                     save: Callable[[int], None], evaluate: Callable[[], dict], eval_every: int,
                     on_event: Callable[[str, dict], None]) -> int:
    """Optimise from step `start` to `cfg.steps` (or until `cfg.max_minutes`), save, and return
    the last step. `loss_at(step)` -> (loss, logged parts) for that step's batch. Ctrl-C / SIGTERM
    let the step in flight finish, save, and stop (KeyboardInterrupt goes on to the caller)."""
    from vcomp.train.autoencoder import lr_at
    from vcomp.train.checkpoint import append_log
    from vcomp.train.interrupts import deferred_interrupts

    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes else None
    last = time.monotonic()
    step = saved = start
    try:
        while step < cfg.steps:
            with deferred_interrupts():  # a step, its log line and checkpoint stay together
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
                    entry = {"step": step, "loss": loss.item(), **parts, "lr": lr,
                             "s_per_step": (now - last) / cfg.log_every}
                    if step % eval_every == 0 or step == cfg.steps:
                        entry.update({f"eval_{k}": v for k, v in evaluate().items()})
                    last = now
                    append_log(out, entry)
                    on_event("log", entry)
                if step % cfg.ckpt_every == 0:
                    save(step)
                    saved = step
            if deadline is not None and time.monotonic() > deadline:
                break
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: keep what was trained, then stop
        if step > saved:
            save(step)
        raise
    save(step)
    return step


@dataclass
class StageTrainConfig:
    """What the stage trainers (`vcomp train-refiner`, `vcomp train-prompt-refiner`) share; each
    subclass adds its own options and defaults."""

    init: str | None = None  # the embedded model the stage follows (None: the shipped one)
    out: str = "runs/stage"
    steps: int = 1500
    batch: int = 4  # clips per step
    frames: int = 16
    width: int | None = None  # channels (None: the trainer's default, or the resumed run's)
    lr: float = 2e-3
    warmup: int = 50
    min_lr_ratio: float = 0.05
    latent_noise: float = 0.12
    temporal_weight: float = 1.0
    object_weight: float = 4.0
    seed: int = 0
    ckpt_every: int = 200
    log_every: int = 10
    max_minutes: float | None = None
    threads: int | None = None
    resume: bool = False
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, min_frames: int = 1, why_frames: str = "") -> None:
        """One-line errors for the shared options out of range (a subclass checks its own)."""
        from vcomp.errors import InputError

        for name in ("steps", "batch", "width", "ckpt_every", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.frames < min_frames:
            raise InputError(f"--frames must be at least {min_frames}{why_frames}, got {self.frames}")
        for name in ("latent_noise", "temporal_weight", "object_weight"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")


@dataclass
class StageRun:
    """A run of a trainer of one stage after an embedded model's decoder (the temporal refiner,
    the prompt refiner): its folder, the checkpoint it resumes (None: a new run) and the embedded
    model the stage follows (from `cfg.init`, which `open_stage_run` settles)."""

    out: Path
    ckpt: object | None  # vcomp.train.checkpoint.Checkpoint
    emb: object  # vcomp.weights.embedded.EmbeddedModel

    @property
    def ran(self) -> dict:
        """The resumed run's config ({} for a new run)."""
        return self.ckpt.record["config"] if self.ckpt is not None else {}


_NOT_CARRIED = {"init", "out", "max_minutes", "threads", "resume", "command"}


def open_stage_run(cfg, what: str, explicit: set[str] | None = None) -> StageRun:
    """Check `cfg.out` against `cfg.resume`, read its checkpoint, and load the embedded model the
    stage follows (`cfg.init`, else the resumed run's, else the shipped one), which must have a
    learned decoder; sets the torch threads. `what` names the stage in the errors. `explicit`:
    the options the user typed (the CLI's); a resumed run keeps its own values for the others,
    as `vcomp train` does (None: every value in `cfg` stands)."""
    from vcomp.errors import InputError
    from vcomp.train.checkpoint import find_checkpoint, load_checkpoint
    from vcomp.train.cpu import prepare_cpu_training
    from vcomp.weights.embedded import load_embedded

    prepare_cpu_training(cfg.threads)
    out = Path(cfg.out).expanduser()
    existing = find_checkpoint(out)
    if existing is not None and not cfg.resume:
        raise InputError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
    if existing is None and cfg.resume:
        raise InputError(f"--resume: {out} holds no checkpoint to continue")
    ckpt = load_checkpoint(existing) if existing is not None else None
    if ckpt is not None and explicit is not None:
        for name, value in ckpt.record["config"].items():
            if hasattr(cfg, name) and name not in explicit and name not in _NOT_CARRIED:
                setattr(cfg, name, value)
    init = cfg.init or (ckpt.record["config"].get("init") if ckpt is not None else None)
    emb = load_embedded(Path(init).expanduser() if init else None)
    if not hasattr(emb.autoencoder, "vae"):
        raise InputError(f"--init {init}: that model's latent is a pixel unshuffle; it has no decoder for a {what}")
    cfg.init = init
    return StageRun(out, ckpt, emb)


def keep_architecture(cfg, run: StageRun, defaults: dict) -> None:
    """Fill the architecture options left out (None) from the resumed run, else `defaults`; a
    resumed run's architecture cannot change."""
    from vcomp.errors import InputError

    for name, default in defaults.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, int(run.ran.get(name) or default))
        elif run.ran and getattr(cfg, name) != run.ran.get(name):
            raise InputError(f"--{name} {getattr(cfg, name)}: the run in {run.out} has {name} {run.ran.get(name)}; "
                             "leave it out to continue it, or choose another --out")


def restore(run: StageRun, module: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, float, list]:
    """Load the resumed run's weights and optimizer state into `module` and `opt`; returns (start
    step, wall time so far, its sessions) — (0, 0.0, []) for a new run."""
    if run.ckpt is None:
        return 0, 0.0, []
    module.load_state_dict(run.ckpt.tensors)
    opt.load_state_dict(run.ckpt.state["optimizer"])
    return run.ckpt.step, float(run.ckpt.record.get("wall_time_s", 0.0)), run.ckpt.record.get("sessions", [])


def export_stage(run: StageRun, cfg, key: str, step: int, wall_time_s: float, sessions: list[dict],
                 heldout: dict) -> Path:
    """Write the embedded model with the trained stage (already set on its autoencoder) and this
    run's record under training[`key`] to `run.out/export`; returns that folder."""
    from vcomp.weights.embedded import save_embedded

    history = {"steps": step, "wall_time_s": wall_time_s, "config": cfg.to_dict(), "command": cfg.command,
               "commands": [s.get("command") for s in sessions] + [cfg.command], "heldout": heldout,
               "hardware": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}}
    emb = run.emb
    training = {**emb.record.get("training", {}), key: history}
    paths = save_embedded(run.out / "export", emb.unet, emb.text_encoder, training, emb.autoencoder,
                          emb.record.get("style"), emb.record.get("sampling"))
    return paths[0].parent
