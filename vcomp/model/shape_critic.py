"""A small shape classifier of the procedural world's objects, seen through an embedded model's
decoder: circle / square / triangle / star from a crop around one object.

Two uses. Training (`vcomp train --shape-weight`, vcomp.train.shape_critic) scores the decoded
clean-latent prediction of a sample. Sampling (vcomp.engine.shape_guidance) steers generation
towards the shape the prompt names: the embedded model draws colour, place and motion right but
an object's outline as a blob that settles on a shape at mid noise, mostly not the named one, and
this critic's gradient says which way the prompted shape lies. It is stored with the model as a
stage after the decoder (`shape_critic.*` tensors, `autoencoder.shape_critic`), since it judges
that decoder's output; its config carries the shape names (its classes) and the colour names and
RGB values guidance uses to find each object.

The critic only sees a crop (never the mask, which would give the shape away): a square window
centred on the object's mask centroid, sized from its bounding box, resampled with `grid_sample`
(differentiable, so gradients reach the latent through the frozen decoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHAPE_NAMES = ("circle", "square", "triangle", "star")  #: the procedural world's shapes (vcomp.train.synthetic.SHAPES)
CROP = 24  #: crop side in pixels the critic sees
CROP_SCALE = 1.5  #: crop side / the object's larger bounding-box side
MIN_AREA = 12.0  #: frames whose object covers fewer pixels are not judged (out of frame, occluded)


class ShapeCritic(nn.Module):
    """Logits over `shapes` from a [N, 3, CROP, CROP] crop in [-1, 1] (24 k parameters at width 24).
    `colours`: name -> RGB (0-255) of the world's colours, kept for guidance to locate objects."""

    def __init__(self, width: int = 24, shapes=SHAPE_NAMES, colours: dict | None = None):
        super().__init__()
        if width < 4 or width % 4 or len(shapes) < 2:
            raise ValueError(f"a shape critic needs a width that is a multiple of 4 and two or more shapes, "
                             f"got {width}, {list(shapes)}")
        self.width, self.shapes = int(width), tuple(str(s) for s in shapes)
        self.colours = {str(k): [int(c) for c in v] for k, v in (colours or {}).items()}
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GroupNorm(4, w), nn.SiLU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GroupNorm(4, w), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, len(self.shapes)))

    def config(self) -> dict:
        return {"width": self.width, "shapes": list(self.shapes), "colours": self.colours}

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
