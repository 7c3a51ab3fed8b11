"""Training the shape critic (vcomp.model.shape_critic), for the `--shape-weight` training term and
for shape guidance at sampling (`vcomp train-shape-critic`).

Why: the embedded model decides an object's shape at mid noise (t ~ 500-650, see
docs/embedded-model-history.md, "Where shapes are lost"), where the shape word moves the latent loss by a
few per cent, so the plain loss (and the caption-contrast hinge, latent or decoded) barely teaches
it. A classifier of the world's four shapes, run on the decoded clean-latent prediction cropped
around the true object, turns "is this a star?" into a loss of its own at every noise level.

It is trained here on world frames as the model will show them: clean, through the autoencoder,
and through it with noisy latents, with jittered crops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vcomp.model.shape_critic import MIN_AREA, ShapeCritic, critic_logits, crop_boxes, object_crops
from vcomp.train.synthetic import PALETTE, SHAPES

DEFAULT_SHAPE_GUIDANCE = 1.0  #: the best measured of 1, 1.5, 2 and 4 on the text task (docs/embedded-model-history.md)
DEFAULT_TRACK_GUIDANCE = 1.0  #: the best measured of 0.5, 1 and 2 on the text task (docs/embedded-model-history.md)
DEFAULT_SHAPE_OUTLINE = 1.0  #: the outline term's weight in the shape step (measured against 0 and 2, docs/embedded-model-history.md)
#: motion guidance (vcomp.engine.motion_guidance; needs no critic, but this command writes the model's
#: sampling defaults): the best measured of 0.25, 0.35, 0.5 and 1 on the motion task (docs/embedded-model-history.md)
DEFAULT_MOTION_GUIDANCE = 0.35

__all__ = ["ShapeCritic", "critic_accuracy", "critic_logits", "crop_boxes", "object_crops", "train_shape_critic"]


def _world_frames(seed: int, clips: int, split: str, frames: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-object world clips -> frames uint8 [N, T, H, W, 3], masks [N, T, H, W], shape labels [N]."""
    from vcomp.train.synthetic import WorldDataset

    data = WorldDataset(length=clips, seed=seed, split=split, size=64, frames=frames, num_objects=1,
                        motion="none", style=False)
    video, masks, labels = [], [], []
    for i in range(clips):
        s = data.sample(i)
        video.append(s.frames)
        masks.append(s.mask[:, 0])
        labels.append(SHAPES.index(s.scene.objects[0].shape))
    return np.stack(video), np.stack(masks), np.asarray(labels)


def _flat(frames: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips -> frames [N*T, 3, H, W] in [-1, 1], masks [N*T, H, W], labels [N*T]."""
    x = torch.from_numpy(frames).reshape(-1, *frames.shape[2:]).permute(0, 3, 1, 2).float() / 127.5 - 1
    m = torch.from_numpy(masks).float().reshape(-1, *masks.shape[2:])
    y = torch.from_numpy(labels).long().repeat_interleave(frames.shape[1])
    return x, m, y


def _device_of(module) -> torch.device:
    """Where a module's weights live (CPU for the parameter-free pixel unshuffle)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


@torch.no_grad()
def _as_seen(autoencoder, frames: torch.Tensor, g: torch.Generator, noise: float, chunk: int = 256) -> torch.Tensor:
    """Frames [N, 3, H, W] in [-1, 1] the way the training term shows them: a third clean, a
    third through the autoencoder, a third through it with latent noise of std U(0, noise)."""
    out, dev = frames.clone(), _device_of(autoencoder)
    which = torch.randint(0, 3, (frames.shape[0],), generator=g)
    for lo in range(0, frames.shape[0], chunk):
        part = slice(lo, lo + chunk)
        coded = torch.nonzero(which[part] > 0).flatten() + lo
        if not len(coded):
            continue
        z = autoencoder.encode(frames[coded].unsqueeze(2).to(dev)).float().cpu()  # one-frame clips [n, 3, 1, H, W]
        std = torch.rand(len(coded), generator=g) * noise * (which[coded] == 2).float()
        z = z + std.view(-1, 1, 1, 1, 1) * torch.randn(z.shape, generator=g)
        out[coded] = autoencoder.decode(z.to(dev), refine=False)[:, :, 0].float().clamp(-1, 1).cpu()
    return out


def train_shape_critic(autoencoder, seed: int = 0, steps: int = 1500, clips: int = 1536, batch: int = 128,
                       lr: float = 2e-3, noise: float = 0.3, on_step=None) -> tuple[ShapeCritic, dict]:
    """Train a ShapeCritic on one-object world frames seen through `autoencoder` (frozen, on its
    own device); the critic trains on the CPU (24 k parameters). Returns it (eval mode, frozen)
    and a record with its held-out accuracies (clean, decoded)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, m, y = _flat(*_world_frames(seed, clips, "train"))
    x = _as_seen(autoencoder, x, g, noise)
    centres0, sides0, area = crop_boxes(m)
    keep = torch.nonzero(area >= MIN_AREA).flatten()
    critic = ShapeCritic(shapes=SHAPES, colours=PALETTE)
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=1e-4)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = keep[torch.randint(0, len(keep), (batch,), generator=g)]
        sides = sides0[idx]
        centres = centres0[idx] + (torch.rand(batch, 2, generator=g) - 0.5) * 0.15 * sides[:, None]
        sides = sides * (0.85 + 0.35 * torch.rand(batch, generator=g))
        loss = F.cross_entropy(critic(object_crops(x[idx], centres, sides)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    critic.eval().requires_grad_(False)
    return critic, {"steps": steps, "clips": clips, "seed": seed, **critic_accuracy(critic, autoencoder, seed)}


@torch.no_grad()
def critic_accuracy(critic: ShapeCritic, autoencoder, seed: int = 0, clips: int = 96) -> dict:
    """Held-out accuracy of the critic on clean frames and on autoencoder reconstructions."""
    x, m, y = _flat(*_world_frames(seed + 1, clips, "heldout"))
    dev = _device_of(autoencoder)
    decoded = autoencoder.decode(autoencoder.encode(x.unsqueeze(2).to(dev)), refine=False)[:, :, 0].float().clamp(-1, 1).cpu()
    out = {}
    for name, v in (("clean_accuracy", x), ("decoded_accuracy", decoded)):
        logits, counted = critic_logits(critic, v, m)
        out[name] = round(float((logits.argmax(1) == y)[counted].float().mean()), 4)
    return out


def add_shape_critic(init: str | None, out: str, steps: int = 1500, seed: int = 0, clips: int = 1536,
                     shape_guidance: float | None = None, on_step=None, track_guidance: float | None = None,
                     shape_outline: float | None = None, motion_guidance: float | None = None) -> dict:
    """`vcomp train-shape-critic`: train a critic on the decoder of the embedded model in `init`
    (None: the shipped one) on `clips` world clips and write that model with it into `out`, its sampling block's
    `shape_guidance` set to `shape_guidance` (None: the model's, else DEFAULT_SHAPE_GUIDANCE) and its
    `track_guidance`, `shape_outline` and `motion_guidance` likewise (DEFAULT_TRACK_GUIDANCE,
    DEFAULT_SHAPE_OUTLINE, DEFAULT_MOTION_GUIDANCE).
    Returns a summary."""
    from pathlib import Path

    from vcomp.errors import InputError
    from vcomp.weights.embedded import load_embedded, save_embedded

    for name, value in (("steps", steps), ("clips", clips)):
        if value < 1:
            raise InputError(f"--{name} must be at least 1, got {value}")
    # the sampling settings this command writes: (asked for, default when neither asked nor in the model)
    asked = {"shape_guidance": (shape_guidance, DEFAULT_SHAPE_GUIDANCE),
             "track_guidance": (track_guidance, DEFAULT_TRACK_GUIDANCE),
             "shape_outline": (shape_outline, DEFAULT_SHAPE_OUTLINE),
             "motion_guidance": (motion_guidance, DEFAULT_MOTION_GUIDANCE)}
    for key, (value, _) in asked.items():
        if value is not None and value < 0:
            raise InputError(f"--{key.replace('_', '-')} must be 0 or more, got {value}")
    emb = load_embedded(Path(init).expanduser() if init else None)
    if not hasattr(emb.autoencoder, "vae"):
        raise InputError(f"--init {init}: that model's latent is a pixel unshuffle; a shape critic needs its decoder")
    sampling = dict(emb.record.get("sampling") or {})
    chosen = {key: float(value if value is not None else sampling.get(key, default))
              for key, (value, default) in asked.items()}
    sampling.update(chosen)
    critic, record = train_shape_critic(emb.autoencoder, seed=seed, steps=steps, clips=clips, on_step=on_step)
    emb.autoencoder.shape_critic = critic
    training = {**emb.record.get("training", {}), "shape_critic": {**record, "init": init, **chosen}}
    paths = save_embedded(Path(out).expanduser(), emb.unet, emb.text_encoder, training, emb.autoencoder,
                          emb.record.get("style"), sampling)
    return {"export": str(paths[0].parent), **chosen, **record}
