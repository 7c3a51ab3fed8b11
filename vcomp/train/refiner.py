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

import time
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from vcomp.errors import InputError
from vcomp.train.module_loop import StageTrainConfig


@dataclass
class RefinerTrainConfig(StageTrainConfig):
    out: str = "runs/refiner"
    layers: int | None = None  # 3x3x3 convolutions, it sees 2 * layers + 1 frames (None: 4, or the run's)


def world_clips(rng: np.random.Generator, n: int, size: int, frames: int, split: str = "train"):
    """`n` world clips [n, 3, T, size, size] in [-1, 1] and their object masks [n, 1, T, size, size]."""
    from vcomp.train.synthetic import render, sample_scene

    clips, masks = zip(*(sample_tensors(render(sample_scene(rng, split, (1, 2), size, frames), motion="none"))
                         for _ in range(n)))
    return torch.stack(clips), torch.stack(masks)


def sample_tensors(sample) -> tuple[torch.Tensor, torch.Tensor]:
    """A rendered world sample as the stage trainers use it: its clip [3, T, H, W] in [-1, 1] and
    its object mask [1, T, H, W]."""
    x = rearrange(torch.from_numpy(sample.frames), "t h w c -> c t h w").float() / 127.5 - 1.0
    return x, rearrange(torch.from_numpy(sample.mask), "t c h w -> c t h w").float()


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
    cfg.check(min_frames=2, why_frames=" (flicker is between frames)")
    if cfg.layers is not None and cfg.layers < 2:
        raise InputError(f"--layers must be at least 2, got {cfg.layers}")


def train_refiner(cfg: RefinerTrainConfig, on_event=None, explicit: set[str] | None = None) -> dict:
    """Train (or resume) a temporal refiner for the embedded model in `cfg.init`, and export the
    model with it to `cfg.out/export`. Returns a summary dict. `explicit`: see `open_stage_run`."""
    from vcomp.model.temporal_refiner import TemporalRefiner
    from vcomp.train.checkpoint import save_module_checkpoint
    from vcomp.train.module_loop import export_stage, keep_architecture, open_stage_run, restore, run_module_steps

    on_event = on_event or (lambda kind, info: None)
    run = open_stage_run(cfg, "temporal refiner", explicit)
    check_config(cfg)
    autoencoder, out = run.emb.autoencoder, run.out
    size = int(run.emb.unet.cfg.default_size)
    keep_architecture(cfg, run, {"width": 16, "layers": 4})
    torch.manual_seed(cfg.seed)
    refiner = TemporalRefiner(cfg.width, cfg.layers).train()
    opt = torch.optim.AdamW(refiner.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, wall, sessions = restore(run, refiner, opt)
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
    autoencoder.refiner = refiner.requires_grad_(False)
    export = export_stage(run, cfg, "refiner", step, wall + time.monotonic() - t0, sessions, stats)
    summary = {"step": step, **stats, "export": str(export)}
    on_event("done", summary)
    return summary
