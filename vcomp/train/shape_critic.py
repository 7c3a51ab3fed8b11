"""A small frozen shape classifier for the `--shape-weight` training term.

Why: the embedded model decides an object's shape at mid noise (t ~ 500-650, see
docs/embedded-model.md, "Where shapes are lost"), where the shape word moves the latent loss by a
few per cent, so the plain loss (and the caption-contrast hinge, latent or decoded) barely teaches
it. A classifier of the world's four shapes, run on the decoded clean-latent prediction cropped
around the true object, turns "is this a star?" into a loss of its own at every noise level.

The critic only sees a crop (never the mask, which would give the shape away): a square window
centred on the object's mask centroid, sized from its bounding box, resampled with `grid_sample`
(differentiable, so gradients reach the UNet through the frozen decoder). It is trained here on
world frames as the model will show them: clean, through the autoencoder, and through it with
noisy latents, with jittered crops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vcomp.train.synthetic import SHAPES

CROP = 24  #: crop side in pixels the critic sees
CROP_SCALE = 1.5  #: crop side / the object's larger bounding-box side
MIN_AREA = 12.0  #: frames whose object covers fewer pixels are not judged (out of frame, occluded)


class ShapeCritic(nn.Module):
    """circle / square / triangle / star from a [N, 3, CROP, CROP] crop in [-1, 1] (24 k parameters)."""

    def __init__(self, width: int = 24):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GroupNorm(4, w), nn.SiLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GroupNorm(4, w), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, len(SHAPES)))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops)


def crop_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre (x, y) in pixels, crop side in pixels and area of each mask [N, H, W] (soft or
    bool): the centroid, CROP_SCALE x the larger bounding-box side (pixels over 0.5)."""
    m = masks.float()
    n, h, w = m.shape
    area = m.sum((1, 2))
    xs = torch.arange(w, dtype=m.dtype, device=m.device)
    ys = torch.arange(h, dtype=m.dtype, device=m.device)
    safe = area.clamp(min=1e-6)
    cx = (m.sum(1) * xs).sum(1) / safe
    cy = (m.sum(2) * ys).sum(1) / safe
    cols, rows = m.amax(1) > 0.5, m.amax(2) > 0.5
    big = torch.tensor(float(max(h, w)), device=m.device)

    def extent(on: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        lo = torch.where(on, pos, big).amin(1)
        hi = torch.where(on, pos, -big).amax(1)
        return (hi - lo + 1).clamp(min=1)

    side = CROP_SCALE * torch.maximum(extent(cols, xs), extent(rows, ys))
    return torch.stack([cx, cy], 1), side, area


def object_crops(frames: torch.Tensor, centres: torch.Tensor, sides: torch.Tensor, size: int = CROP) -> torch.Tensor:
    """[N, 3, size, size] windows of `frames` [N, 3, H, W] around `centres` [N, 2] (x, y px) with
    sides `sides` [N] px; bilinear, border-padded, differentiable in `frames`."""
    n, _, h, w = frames.shape
    theta = frames.new_zeros(n, 2, 3)
    theta[:, 0, 0] = sides / w
    theta[:, 1, 1] = sides / h
    theta[:, 0, 2] = (2 * centres[:, 0] + 1) / w - 1  # align_corners=False pixel centres
    theta[:, 1, 2] = (2 * centres[:, 1] + 1) / h - 1
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def critic_logits(critic: ShapeCritic, frames: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, 4] of the object in each frame [N, 3, H, W] located by its mask [N, H, W], and
    which frames count (the object shows at least MIN_AREA pixels) [N] bool."""
    centres, sides, area = crop_boxes(masks)
    return critic(object_crops(frames, centres, sides)), area >= MIN_AREA


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
    critic = ShapeCritic()
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
