"""Track guidance: steer each named object's centroid track towards the motion the prompt names
("moving down-left", "moving in a circle", "standing still"), alongside shape guidance.

Why: the embedded model moves an object roughly the named way (the straight fit's velocity is
within ~20 degrees of it for most prompts) but often with a bend, a jump or a wobble, which reads
as "in a circle", or one of the eight directions off. The track is a differentiable function of
the decoded clean-latent prediction (soft colour masks), so at the noisiest steps (t >= 650, where
the model lays out where the object goes, mostly before shape guidance's steps) x0 is decoded, its track
compared with the nearest track that moves the named way (same place, the object's own speed
within the world's range) and x0 moved down the gradient of the squared distance between the two,
plus a cost on the object's colour far from where it should be (`track_error`).
Runs inside `shape_guided`, which rewrites the prediction and spaces the guided steps for both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from vcomp.engine.outline import pixel_offsets
from vcomp.engine.shape_guidance import ShapeTarget, object_shows, shape_targets, soft_masks
from vcomp.model.shape_critic import crop_boxes

#: direction word -> unit vector (x right, y down); "still" is (0, 0); "in a circle" is None. This and
#: the ranges below are the procedural world's (vcomp.train.synthetic, which sampling must not import;
#: tests/test_track_guidance.py checks they agree)
DIRECTION_VECTORS: dict[str, tuple[float, float] | None] = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)), "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)), "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
    "in a circle": None, "still": (0.0, 0.0),
}
T_RANGE = (650, 999)  #: timesteps at which it acts (where the embedded model lays out the motion; measured)
REFERENCE = 64.0  #: px: the frame width the speeds below are for (scaled with the frame)
SPEED_RANGE = (1.0, 3.0)  #: px/frame of a straight track
ORBIT_RADIUS_RANGE = (5.0, 9.0)  #: px: the radius of a circling track
ORBIT_STEP_RANGE = (0.30, 0.50)  #: radians per frame of a circling track
WINDOW = 10.0  #: px: the Gaussian window (sigma) the track is read in, around where it should be
OBJECT_RADIUS = 12.0  #: px: the largest object's circumradius: its colour further from where it should be is stray


@dataclass(frozen=True)
class TrackTarget:
    """One object the prompt names (found by colour as in shape guidance) and how it should move:
    a unit vector, (0, 0) for still, None for in a circle."""

    object: ShapeTarget
    direction: tuple[float, float] | None


def track_targets(prompt: str, shapes, colours: dict) -> list[TrackTarget]:
    """The prompt's "{colour} {shape} moving {direction}" / "... moving in a circle" / "... standing
    still" objects, in the order `shape_targets` finds them; objects without a motion phrase are left
    out (their motion is the model's choice)."""
    objects = shape_targets(prompt, shapes, colours)
    motion_alt = "|".join(re.escape(d) for d in sorted(DIRECTION_VECTORS, key=len, reverse=True) if d != "still")
    out, found = [], iter(objects)
    for clause in re.split(r"\band\b|,", prompt.lower()):  # one object per clause, in order
        for _ in shape_targets(clause, shapes, colours):
            target = next(found, None)
            motion = re.search(rf"\bmoving ({motion_alt})\b|\b(still)\b", clause)
            if target is not None and motion:
                out.append(TrackTarget(target, DIRECTION_VECTORS[motion.group(1) or "still"]))
    return out


def wanted_track(track: torch.Tensor, direction: tuple[float, float] | None, width: int) -> torch.Tensor:
    """The nearest track [T, 2] to `track` [T, 2] (px; frames with NaN ignored) that moves as
    `direction` says: same mean place; a straight one at the track's own speed along the direction
    clamped to SPEED_RANGE; a circle around the track's own least-squares centre (its mean when it
    is far from round) at its own radius, sense and angular step clamped to the ORBIT ranges; the
    mean alone for still. Not differentiable (a target)."""
    track = track.detach().double()
    valid = torch.isfinite(track).all(1)
    t = torch.arange(len(track), dtype=track.dtype)
    p, tv = track[valid], t[valid]
    mean, t_mean = p.mean(0), tv.mean()
    scale = width / REFERENCE
    if direction is None:
        centre = _circle_centre(p)
        if centre is None or float((p - centre).norm(dim=1).mean()) > 2 * ORBIT_RADIUS_RANGE[1] * scale:
            centre = mean  # a straight or still track: circle around where it is
        rel = p - centre
        radius = rel.norm(dim=1).mean().clamp(ORBIT_RADIUS_RANGE[0] * scale, ORBIT_RADIUS_RANGE[1] * scale)
        angle = torch.atan2(rel[:, 1], rel[:, 0])
        steps = torch.remainder(angle[1:] - angle[:-1] + math.pi, 2 * math.pi) - math.pi
        per_frame = steps.sum() / (tv[1:] - tv[:-1]).sum().clamp(min=1)
        step = per_frame.abs().clamp(*ORBIT_STEP_RANGE) * (1.0 if per_frame >= 0 else -1.0)
        phase = torch.atan2(torch.sin(angle - step * tv).mean(), torch.cos(angle - step * tv).mean())
        a = phase + step * t
        return (centre + radius * torch.stack([torch.cos(a), torch.sin(a)], 1)).float()
    d = track.new_tensor(direction)
    if float(d.norm()) == 0:
        return mean.expand(len(track), 2).float()
    dt = tv - t_mean
    speed = ((p - mean) @ d * dt).sum() / dt.pow(2).sum().clamp(min=1e-6)
    speed = speed.clamp(SPEED_RANGE[0] * scale, SPEED_RANGE[1] * scale)
    return (mean + (t - t_mean)[:, None] * speed * d).float()


def _circle_centre(points: torch.Tensor) -> torch.Tensor | None:
    """The centre of the least-squares circle through points [N, 2] (x^2 + y^2 + D x + E y + F = 0;
    the mean of part of a turn is not its centre); None when they are too few, far off when they
    are nearly collinear (callers check the radius)."""
    if len(points) < 3:
        return None
    design = torch.cat([points, torch.ones_like(points[:, :1])], 1)
    solution = torch.linalg.lstsq(design, -(points ** 2).sum(1, keepdim=True)).solution[:, 0]
    centre = -solution[:2] / 2
    return centre if bool(torch.isfinite(centre).all()) else None


def _distance_maps(centres: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[T, H, W]: each pixel's distance (px) from its frame's point in `centres` [T, 2] (x, y)."""
    qx, qy = pixel_offsets(centres, h, w)
    return (qx ** 2 + qy ** 2 + 1e-6).sqrt()


def track_error(frames: torch.Tensor, target: TrackTarget) -> torch.Tensor:
    """How far (px^2) the target object in frames [T, 3, H, W] is from moving as named;
    differentiable in `frames`, 0 when it shows in too few frames. Two terms: the mean squared
    distance between its track and `wanted_track`, the track read in a window (Gaussian, WINDOW px)
    around the wanted place found from the whole frame's soft centroids, so a second patch of its
    colour elsewhere does not drag the track; plus its colour's mass-weighted mean squared distance
    beyond OBJECT_RADIUS of the wanted place (that second patch, or a jump, costs)."""
    shown = object_shows(frames, target.object)  # the frames on its track
    if int(shown.sum()) < max(3, len(frames) // 2):
        return frames.new_zeros(())
    mask = soft_masks(frames, target.object)
    _, h, w = mask.shape
    scale = w / REFERENCE

    def wanted(centres: torch.Tensor) -> torch.Tensor:  # from the frames where the object shows
        return wanted_track(torch.where(shown[:, None], centres.detach(), float("nan")), target.direction, w).to(mask)

    want = wanted(crop_boxes(mask)[0])
    window = mask * torch.exp(-_distance_maps(want, h, w).pow(2) / (2 * (WINDOW * scale) ** 2))
    track = crop_boxes(window)[0]
    want = wanted(track)
    beyond = (_distance_maps(want, h, w) - OBJECT_RADIUS * scale).clamp(min=0).pow(2)
    stray = (mask * beyond).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1e-6)
    return (track - want)[shown].pow(2).sum(1).mean() + stray[shown].mean()
