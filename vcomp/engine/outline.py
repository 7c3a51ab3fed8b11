"""Outline templates of the procedural world's shapes, rasterised softly and differentiably in
torch: the shape an object of a given colour should have, at its own place, size and turn.

Why: shape guidance's critic (vcomp.engine.shape_guidance) says which way the named shape lies but
is pleased by outlines with notches or rounded corners; a template fitted to the object says
exactly where its edges go. The polygons are the renderer's (vcomp.train.synthetic), written out
here because sampling does not import training code (a test checks that they agree)."""

from __future__ import annotations

import math

import torch

SHAPES = ("circle", "square", "triangle", "star")  #: the shapes with an outline here (the world's)
ANGLES = tuple(range(-20, 21, 5))  #: object rotations tried (the world turns objects by -20..20 degrees)
STAR_INNER = 0.45  #: a star's inner / outer radius (vcomp.train.synthetic.STAR_INNER)
EDGE = 0.5  #: px: softness of a template's edge
#: smallest circumradius of a fitted template, as a fraction of the frame's shorter side, by
#: shape. Why: at the embedded model's factor-8 latent a star's points are thinner than a latent
#: cell unless the star is large, and a star fitted to a small blob pulls it towards a star the
#: decoder cannot draw; 14 px at 64 px is the top of the world's star sizes (8-13.8 px). Measured
#: on the text task of seeds 0-2 (21 stars, 20 steps): 20 stars with the floor, 16 without, 19
#: with 12 px (docs/embedded-model-history.md, "The star floor").
MIN_RADIUS = {"star": 14 / 64}


def unit_vertices(shape: str, angle: float) -> torch.Tensor | None:
    """[K, 2] vertices (x, y) of `shape` at circumradius 1 turned `angle` degrees; None for a circle."""
    if shape == "square":
        ang, rad = [angle + 45 + 90 * k for k in range(4)], [1.0] * 4
    elif shape == "triangle":
        ang, rad = [angle - 90 + 120 * k for k in range(3)], [1.0] * 3
    elif shape == "star":
        ang, rad = [angle - 90 + 36 * k for k in range(10)], [1.0 if k % 2 == 0 else STAR_INNER for k in range(10)]
    elif shape == "circle":
        return None
    else:
        raise ValueError(f"unknown shape {shape!r}")
    a = torch.tensor(ang, dtype=torch.float32).deg2rad()
    r = torch.tensor(rad, dtype=torch.float32)
    return torch.stack([r * a.cos(), r * a.sin()], 1)


def unit_area(shape: str) -> float:
    """Area of `shape` at circumradius 1."""
    v = unit_vertices(shape, 0.0)
    if v is None:
        return math.pi
    x, y = v[:, 0], v[:, 1]
    return float(0.5 * (x * y.roll(-1) - x.roll(-1) * y).sum().abs())


def pixel_offsets(centres: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x offsets [T, 1, W], y offsets [T, H, 1]) in px of each pixel from its frame's point in
    `centres` [T, 2] (x, y; pixel centres at integers); they broadcast to [T, H, W]."""
    ys = torch.arange(height, dtype=centres.dtype, device=centres.device)
    xs = torch.arange(width, dtype=centres.dtype, device=centres.device)
    return xs.view(1, 1, -1) - centres[:, 0].view(-1, 1, 1), ys.view(1, -1, 1) - centres[:, 1].view(-1, 1, 1)


def signed_distance(shape: str, angle: float, radius: torch.Tensor, centres: torch.Tensor,
                    height: int, width: int) -> torch.Tensor:
    """[T, H, W] signed distance (px, negative inside) to `shape` of circumradius `radius` (px)
    centred at `centres` [T, 2] (x, y px; pixel centres at integers)."""
    qx, qy = pixel_offsets(centres, height, width)
    v = unit_vertices(shape, angle)
    if v is None:
        return (qx.pow(2) + qy.pow(2)).sqrt() - radius
    v = v.to(centres.device) * radius
    ax, ay = v[:, 0].view(-1, 1, 1, 1), v[:, 1].view(-1, 1, 1, 1)
    w = v.roll(-1, 0)
    bx, by = w[:, 0].view(-1, 1, 1, 1), w[:, 1].view(-1, 1, 1, 1)
    ex, ey = bx - ax, by - ay
    px, py = qx.unsqueeze(0) - ax, qy.unsqueeze(0) - ay  # [K, T, H, W]
    s = ((px * ex + py * ey) / (ex * ex + ey * ey)).clamp(0, 1)
    dist = ((px - s * ex).pow(2) + (py - s * ey).pow(2)).sqrt().amin(0)
    crosses = ((ay > qy) != (by > qy)) & (qx < ex * (qy - ay) / torch.where(ey == 0, torch.ones_like(ey), ey) + ax)
    inside = crosses.sum(0) % 2 == 1
    return torch.where(inside, -dist, dist)


def template(shape: str, angle: float, radius: torch.Tensor, centres: torch.Tensor, height: int, width: int,
             edge: float = EDGE) -> torch.Tensor:
    """[T, H, W] in (0, 1): the soft outline of `shape`."""
    return torch.sigmoid(-signed_distance(shape, angle, radius, centres, height, width) / edge)


def fitted_template(mask: torch.Tensor, shape: str, counted: torch.Tensor) -> torch.Tensor:
    """The template of `shape` nearest the soft object mask [T, H, W] (detached): per frame at the
    mask's centroid, one size for the clip (the median area of `counted` frames, at least
    MIN_RADIUS of the frame's shorter side), one rotation (of ANGLES, the one that agrees best with the mask)."""
    from vcomp.model.shape_critic import crop_boxes

    m = mask.detach().float()
    _, h, w = m.shape
    centres, _, area = crop_boxes(m)
    radius = (area[counted].median() / unit_area(shape)).sqrt().clamp(min=MIN_RADIUS.get(shape, 0.0) * min(h, w))
    if shape == "circle":
        return template(shape, 0.0, radius, centres, h, w)
    best = None
    for angle in ANGLES:
        tmpl = template(shape, angle, radius, centres, h, w)
        err = float(((tmpl - m)[counted]).pow(2).sum())
        if best is None or err < best[0]:
            best = (err, tmpl)
    return best[1]
