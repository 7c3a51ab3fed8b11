"""Train an embedded model's temporal refiner (`vcomp train-refiner`): the deflicker after its decoder.

The encoder, decoder and UNet stay frozen, so the latent space and everything trained in it stay
valid; only a `TemporalRefiner` (vcomp.model.temporal_refiner) learns. Each step renders world
clips (16 frames, moving objects), encodes them, adds Gaussian noise of std U(0, `latent_noise`)
independently per frame (the frame-to-frame jitter of sampled latents, in scaled-latent units),
decodes frame by frame, and trains the refiner to return the clean clip:

    loss = object-weighted L1 + MSE + `temporal_weight` x L1 of (frame differences - clean ones)

The temporal term is what removes flicker (a still background must stay still); the L1 to the
clean clip keeps moving objects sharp where they are. The export is the whole embedded model with
the refiner added (`OUT/export`, ready for `vcomp/assets` or `--weights`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from vcomp.errors import InputError


@dataclass
class RefinerTrainConfig:
    init: str | None = None  # the embedded model whose decoder the refiner follows (None: the shipped one)
    out: str = "runs/refiner"
    steps: int = 1500
    batch: int = 4  # clips per step
    frames: int = 16
    width: int | None = None  # refiner channels (None: 16, or the resumed run's)
    layers: int | None = None  # 3x3x3 convolutions, it sees 2 * layers + 1 frames (None: 4, or the run's)
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


def world_clips(rng: np.random.Generator, n: int, size: int, frames: int, split: str = "train"):
    """`n` world clips [n, 3, T, size, size] in [-1, 1] and their object masks [n, 1, T, size, size]."""
    from vcomp.train.synthetic import render, sample_scene

    clips, masks = [], []
    for _ in range(n):
        sample = render(sample_scene(rng, split, (1, 2), size, frames), motion="none")
        clips.append(torch.from_numpy(sample.frames))
        masks.append(torch.from_numpy(sample.mask))
    x = rearrange(torch.stack(clips), "b t h w c -> b c t h w").float() / 127.5 - 1.0
    return x, rearrange(torch.stack(masks), "b t c h w -> b c t h w").float()


@torch.no_grad()
def noisy_decodes(autoencoder, clips: torch.Tensor, levels: torch.Tensor, generator: torch.Generator):
    """Decode `clips` after adding per-frame Gaussian noise of std `levels[b]` to their latents,
    without the refiner: what the refiner learns to clean up."""
    latent = autoencoder.encode(clips)
    noise = torch.randn(latent.shape, generator=generator) * levels.view(-1, 1, 1, 1, 1)
    return autoencoder.decode(latent + noise, refine=False)


def refiner_loss(refined: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor, object_weight: float,
                 temporal_weight: float) -> tuple[torch.Tensor, dict]:
    err = refined - clean
    w = (1.0 + object_weight * masks).expand_as(err)
    l1 = (err.abs() * w).sum() / w.sum()
    mse = err.pow(2).mean()
    temporal = (err[:, :, 1:] - err[:, :, :-1]).abs().mean()  # = |diff(refined) - diff(clean)|
    loss = l1 + mse + temporal_weight * temporal
    return loss, {"l1": l1.item(), "mse": mse.item(), "temporal": temporal.item()}


@torch.no_grad()
def evaluate(autoencoder, refiner, clips: torch.Tensor, level: float = 0.06) -> dict:
    """L1 and temporal L1 (of frame differences) to the clean held-out clips, of the plain decode
    and the refined one, at a fixed latent noise `level`."""
    g = torch.Generator().manual_seed(0)
    decoded = noisy_decodes(autoencoder, clips, torch.full((len(clips),), level), g)
    refined = refiner(decoded)

    def scores(video):
        err = video.clamp(-1, 1) - clips
        return float(err.abs().mean()), float((err[:, :, 1:] - err[:, :, :-1]).abs().mean())

    (dl1, dt), (rl1, rt) = scores(decoded), scores(refined)
    return {"decoded_l1": dl1, "decoded_temporal": dt, "refined_l1": rl1, "refined_temporal": rt}


def check_config(cfg: RefinerTrainConfig) -> None:
    for name in ("steps", "batch", "width", "ckpt_every", "log_every"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.layers is not None and cfg.layers < 2:
        raise InputError(f"--layers must be at least 2, got {cfg.layers}")
    if cfg.frames < 2:
        raise InputError(f"--frames must be at least 2 (flicker is between frames), got {cfg.frames}")
    for name in ("latent_noise", "temporal_weight", "object_weight"):
        if getattr(cfg, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")


def train_refiner(cfg: RefinerTrainConfig, on_event=None) -> dict:
    """Train (or resume) a temporal refiner for the embedded model in `cfg.init`, and export the
    model with it to `cfg.out/export`. Returns a summary dict."""
    from vcomp.model.temporal_refiner import TemporalRefiner
    from vcomp.train.checkpoint import find_checkpoint, load_checkpoint, save_module_checkpoint
    from vcomp.train.module_loop import run_module_steps
    from vcomp.weights.embedded import load_embedded, save_embedded

    check_config(cfg)
    on_event = on_event or (lambda kind, info: None)
    torch.set_num_threads(cfg.threads or max(1, os.cpu_count() or 1))
    out = Path(cfg.out).expanduser()
    existing = find_checkpoint(out)
    if existing is not None and not cfg.resume:
        raise InputError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
    if existing is None and cfg.resume:
        raise InputError(f"--resume: {out} holds no checkpoint to continue")
    ckpt = load_checkpoint(existing) if existing is not None else None
    init = cfg.init or (ckpt.record["config"].get("init") if ckpt is not None else None)
    emb = load_embedded(Path(init).expanduser() if init else None)
    autoencoder = emb.autoencoder
    if not hasattr(autoencoder, "vae"):
        raise InputError(f"--init {init}: that model's latent is a pixel unshuffle; its frames do not flicker")
    size = int(emb.unet.cfg.default_size)
    ran = ckpt.record["config"] if ckpt is not None else {}  # a resumed run keeps its architecture
    for name, default in (("width", 16), ("layers", 4)):
        if getattr(cfg, name) is None:
            setattr(cfg, name, int(ran.get(name) or default))
        elif ran and getattr(cfg, name) != ran.get(name):
            raise InputError(f"--{name} {getattr(cfg, name)}: the run in {out} has {name} {ran.get(name)}; "
                             "leave it out to continue it, or choose another --out")
    torch.manual_seed(cfg.seed)
    refiner = TemporalRefiner(cfg.width, cfg.layers).train()
    opt = torch.optim.AdamW(refiner.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, wall, sessions = 0, 0.0, []
    if ckpt is not None:
        refiner.load_state_dict(ckpt.tensors)
        opt.load_state_dict(ckpt.state["optimizer"])
        start, wall = ckpt.step, float(ckpt.record.get("wall_time_s", 0.0))
        sessions = ckpt.record.get("sessions", [])
    cfg.init = init
    session = {"command": cfg.command, "config": cfg.to_dict(), "start_step": start}
    held, _ = world_clips(np.random.default_rng([cfg.seed, 7]), 4, size, cfg.frames, split="heldout")
    t0 = time.monotonic()

    def save(step_now: int) -> None:
        save_module_checkpoint(out, "refiner", step_now, refiner, opt, cfg.to_dict(), wall + time.monotonic() - t0,
                               sessions + [{**session, "end_step": step_now}])

    def loss_at(step_now: int):
        rng = np.random.default_rng([cfg.seed, 1, step_now])
        clips, masks = world_clips(rng, cfg.batch, size, cfg.frames)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        decoded = noisy_decodes(autoencoder, clips, torch.rand(cfg.batch, generator=g) * cfg.latent_noise, g)
        return refiner_loss(refiner(decoded), clips, masks, cfg.object_weight, cfg.temporal_weight)

    def held_out() -> dict:
        refiner.eval()
        scores = evaluate(autoencoder, refiner, held)
        refiner.train()
        return scores

    step = run_module_steps(cfg, start, list(refiner.parameters()), opt, loss_at, out=out, save=save,
                            evaluate=held_out, eval_every=cfg.log_every * 10, on_event=on_event)
    refiner.eval()
    stats = evaluate(autoencoder, refiner, held)
    history = {"steps": step, "wall_time_s": wall + time.monotonic() - t0, "config": cfg.to_dict(),
               "command": cfg.command, "commands": [s.get("command") for s in sessions] + [cfg.command],
               "heldout": stats, "hardware": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                                              "torch": torch.__version__}}
    autoencoder.refiner = refiner.requires_grad_(False)
    training = {**emb.record.get("training", {}), "refiner": history}
    paths = save_embedded(out / "export", emb.unet, emb.text_encoder, training, autoencoder,
                          emb.record.get("style"), emb.record.get("sampling"))
    summary = {"step": step, **stats, "export": str(paths[0].parent)}
    on_event("done", summary)
    return summary
