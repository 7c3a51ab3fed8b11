"""Shape guidance: steer sampling towards the shapes the prompt names with a shape critic's
gradient (classifier guidance in the manner of Dhariwal & Nichol, applied to the clean-latent
prediction as in "universal guidance", so the UNet is not differentiated).

Why: the embedded model draws an object's colour, place and motion as the prompt says, but its
outline as a blob that settles on a shape at mid noise, mostly not the named one, and no training
recipe on this machine's budget made the UNet bind shape words (docs/embedded-model-history.md). The
shape is decided between t ~ 300 and 800, so at those steps the clean latent x0 the UNet predicts
is decoded, each named object is found by its named colour, the critic scores a crop around it,
and x0 moves `scale` (in units of the gradient's RMS) up the gradient of log p(named shape); the
step's prediction is then rewritten to agree with the moved x0. Prompts that name no known
colour-and-shape pair are sampled as they would be without it.

The critic alone is easily pleased: guided objects it reads as the named shape in 23 of 24 scenes
still had notches, bumps or rounded corners that a contour reading calls another shape (15 of
24). An outline term (`outline` > 0, at t in OUTLINE_RANGE) adds the gradient that pulls each
object's colour mask towards the named shape's own outline (vcomp.engine.outline), fitted to
where the object is, how large and how turned: the critic says which way the shape lies, the
outline says exactly where its edges go.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vcomp.engine.clean_guidance import SPACING, EpsFn, Spacing, unit_rms, x0_guided

T_RANGE = (300, 800)  #: timesteps at which guidance acts (where shapes are decided)
OUTLINE_RANGE = (300, 650)  #: timesteps at which the outline term acts (below track guidance's, whose motion it bent)
MAX_COLOUR_DISTANCE = 0.9  #: in [-1, 1] RGB units: pixels further from a named colour are not its object


@dataclass(frozen=True)
class ShapeTarget:
    """One object the prompt names: its colour and the background's (RGB in [-1, 1]; background
    None when unnamed) and its class index in the critic."""

    colour: tuple[float, float, float]
    background: tuple[float, float, float] | None
    shape: int


def _rgb(values) -> tuple[float, float, float]:
    return tuple(float(v) / 127.5 - 1.0 for v in values)


def shape_targets(prompt: str, shapes: tuple[str, ...] | list[str], colours: dict) -> list[ShapeTarget]:
    """The "{colour} {shape}" pairs of `prompt` ("a textured red star and a blue circle on a
    white background") with the background colour ("on a ... {colour} ... background"), for a
    critic of `shapes` and the world's `colours` (name -> RGB 0-255)."""
    if not shapes or not colours:
        return []
    text = prompt.lower()
    colour_alt = "|".join(re.escape(c) for c in sorted(colours, key=len, reverse=True))
    shape_alt = "|".join(re.escape(s) for s in sorted(shapes, key=len, reverse=True))
    ground = re.search(rf"\bon an? (?:\w+ )*?({colour_alt})\b(?: \w+)*? background\b", text)
    background = _rgb(colours[ground.group(1)]) if ground else None
    objects = text[:ground.start()] if ground else text
    return [ShapeTarget(_rgb(colours[c]), background, list(shapes).index(s))
            for c, s in re.findall(rf"\b({colour_alt})(?: \w+)? ({shape_alt})s?\b", objects)]


def _distances(frames: torch.Tensor, target: ShapeTarget) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per pixel of frames [T, 3, H, W]: RGB distance to the target's colour and to its background's
    (None when unnamed), smoothed at 0, where a plain norm's gradient is undefined."""
    def to(colour) -> torch.Tensor:
        return ((frames - frames.new_tensor(colour).view(1, 3, 1, 1)).pow(2).sum(1) + 1e-4).sqrt()

    return to(target.colour), (to(target.background) if target.background is not None else None)


def object_masks(frames: torch.Tensor, target: ShapeTarget) -> torch.Tensor:
    """[T, H, W] 0/1: the pixels of frames [T, 3, H, W] (in [-1, 1]) nearer the target's colour than
    the background's and within MAX_COLOUR_DISTANCE of it: where its object is."""
    near, far = _distances(frames, target)
    mask = near < MAX_COLOUR_DISTANCE
    if far is not None:
        mask &= near < far
    return mask.float()


def object_shows(frames: torch.Tensor, target: ShapeTarget) -> torch.Tensor:
    """[T] bool: the frames of frames [T, 3, H, W] where the target's object covers at least
    MIN_AREA pixels (the critic's rule for which frames it judges); not differentiable."""
    from vcomp.model.shape_critic import MIN_AREA

    return object_masks(frames.detach(), target).sum((1, 2)) >= MIN_AREA


def soft_masks(frames: torch.Tensor, target: ShapeTarget, softness: float = 0.1) -> torch.Tensor:
    """[T, H, W] in (0, 1): `object_masks` made differentiable (sigmoids of the distance margins
    over `softness`)."""
    near, far = _distances(frames, target)
    weight = torch.sigmoid((MAX_COLOUR_DISTANCE - near) / softness)
    if far is not None:
        weight = weight * torch.sigmoid((far - near) / softness)
    return weight


def soft_centroids(frames: torch.Tensor, target: ShapeTarget, softness: float = 0.1) -> torch.Tensor:
    """[T, 2] (x, y) centroid per frame of the target's pixels in frames [T, 3, H, W], over its
    `soft_masks` so that it is differentiable."""
    from vcomp.model.shape_critic import crop_boxes

    return crop_boxes(soft_masks(frames, target, softness))[0]


def without_moves(grad: torch.Tensor, moves: list[torch.Tensor]) -> torch.Tensor:
    """`grad` [B, C, T, h, w] with, frame by frame, its components along each of `moves` (same
    shape: the gradients of the objects' centroid coordinates) removed (Gram-Schmidt per frame)."""
    def per_frame(v: torch.Tensor) -> torch.Tensor:  # [B, T, C*h*w]
        return v.transpose(1, 2).flatten(2)

    g = per_frame(grad)
    basis: list[torch.Tensor] = []
    for move in moves:
        v = per_frame(move)
        for u in basis:
            v = v - (v * u).sum(-1, keepdim=True) * u
        norm = v.norm(dim=-1, keepdim=True)
        basis.append(torch.where(norm > 1e-8, v / norm.clamp(min=1e-8), torch.zeros_like(v)))
    for u in basis:
        g = g - (g * u).sum(-1, keepdim=True) * u
    b, c, t, h, w = grad.shape
    return g.view(b, t, c, h, w).transpose(1, 2)


def shape_log_prob(critic, frames: torch.Tensor, targets: list[ShapeTarget]) -> torch.Tensor:
    """Sum over targets and frames [T, 3, H, W] (where the object shows) of the critic's log
    probability of the target's shape; differentiable in `frames` (the masks are not)."""
    from vcomp.model.shape_critic import critic_logits

    total = frames.new_zeros(())
    for target in targets:
        logits, counted = critic_logits(critic, frames, object_masks(frames.detach(), target))
        total = total + (F.log_softmax(logits, 1)[:, target.shape] * counted).sum()
    return total


def outline_error(frames: torch.Tensor, targets: list[ShapeTarget], shapes: tuple[str, ...]) -> torch.Tensor:
    """Squared distance between each target's soft colour mask in frames [T, 3, H, W] and the
    outline of its named shape (`shapes[target.shape]`) fitted to it, over the frames where the
    object shows (MIN_AREA pixels); objects that show in fewer than 3 frames, or whose shape has no
    outline here (a critic of other shapes), are left out."""
    from vcomp.engine.outline import SHAPES, fitted_template

    total = frames.new_zeros(())
    for target in targets:
        if shapes[target.shape] not in SHAPES:
            continue
        shows = object_shows(frames, target)
        if int(shows.sum()) < 3:
            continue
        mask = soft_masks(frames, target)
        outline = fitted_template(mask, shapes[target.shape], shows)
        total = total + (mask - outline).pow(2)[shows].sum()
    return total


def _shape_gradient(critic, frames: list[torch.Tensor], targets: list[ShapeTarget], z: torch.Tensor,
                    outline: float) -> torch.Tensor | None:
    """The shape step's direction at the latent `z` the clips `frames` were decoded from: up the
    critic's log-probability of the named shapes, plus `outline` x down the outline error, each at
    unit RMS; None when no object is found. The graph is kept for the centroid gradients."""
    objectives = [(1.0, sum(shape_log_prob(critic, f, targets) for f in frames))]
    if outline > 0:
        objectives.append((outline, -sum(outline_error(f, targets, critic.shapes) for f in frames)))
    steps = [weight * unit_rms(torch.autograd.grad(value, z, retain_graph=True)[0])
             for weight, value in objectives if value.requires_grad]
    return sum(steps) if steps else None


def shape_guided(eps_fn: EpsFn, decode: Callable[[torch.Tensor], torch.Tensor], critic, targets: list[ShapeTarget],
                 alphas_cumprod: torch.Tensor, scale: float, output: str = "eps",
                 t_range: tuple[int, int] = T_RANGE, keep_places: bool = True, spacing: int = SPACING,
                 tracks: list = (), track_scale: float = 0.0, track_range: tuple[int, int] | None = None,
                 outline: float = 0.0, outline_range: tuple[int, int] = OUTLINE_RANGE) -> EpsFn:
    """`eps_fn` with shape guidance at the timesteps in `t_range` (inclusive). `output`: what
    `eps_fn` returns ("eps" or "v"), so x0 is recovered and the prediction rewritten alike.
    `decode(latent [B, C, T, h, w]) -> video [B, 3, T, H, W]` in [-1, 1], differentiable, frame by
    frame. `keep_places`: remove from the step, frame by frame, what would move each object's
    centroid (a reshaped object that also shifts makes its track jitter, which reads as another
    motion). `spacing`: guidance acts at the first step in `t_range` and then at the first step at
    least `spacing` timesteps below the last guided one, with `scale` x (gap / spacing), so the
    total push and the cost do not grow with the number of sampling steps (at 20 steps, as the
    shipped default was measured, every step in the range is guided at `scale`; at 50, every third).
    `outline`: weight of the outline term (`outline_error`, over `outline_range`) beside the
    critic's, each gradient at unit RMS before they are summed.
    `tracks` (vcomp.engine.track_guidance.TrackTarget) with `track_scale` over `track_range`
    (None: track_guidance.T_RANGE): the same decode also moves x0 `track_scale` (unit RMS) down the
    gradient of each object's `track_error`, towards a track that moves the named way; the two
    steps share the spacing rule."""
    from vcomp.engine import track_guidance

    track_range = track_range or track_guidance.T_RANGE
    shaping = scale > 0 and bool(targets)
    tracking = track_scale > 0 and bool(tracks)
    if not shaping and not tracking:
        return eps_fn
    schedule = Spacing(spacing)

    def shape_now(step: int) -> bool:
        return shaping and t_range[0] <= step <= t_range[1]

    def track_now(step: int) -> bool:
        return tracking and track_range[0] <= step <= track_range[1]

    def move(x0: torch.Tensor, step: int, gap: float) -> torch.Tensor | None:
        moved = x0
        with torch.inference_mode(False), torch.enable_grad():
            z = x0.detach().clone().requires_grad_(True)
            video = decode(z).float()
            frames = [video[b].transpose(0, 1) for b in range(len(video))]
            if track_now(step):
                error = sum(track_guidance.track_error(f, tg) for f in frames for tg in tracks)
                if error.requires_grad:
                    (grad,) = torch.autograd.grad(error, z, retain_graph=shape_now(step))
                    moved = moved - track_scale * gap * unit_rms(grad).to(x0.dtype)
            outline_now = outline if outline_range[0] <= step <= outline_range[1] else 0.0
            grad = _shape_gradient(critic, frames, targets, z, outline_now) if shape_now(step) else None
            if grad is not None:  # some object found
                if keep_places:  # reshape each object where it is: no step along its centroid's gradients
                    centres = torch.stack([torch.stack([soft_centroids(f, tg) for tg in targets]) for f in frames])
                    coords = [centres[:, k, :, axis].sum() for k in range(len(targets)) for axis in (0, 1)]
                    moves = [torch.autograd.grad(c, z, retain_graph=i + 1 < len(coords))[0]
                             for i, c in enumerate(coords)]
                    grad = without_moves(grad, moves)
                moved = moved + scale * gap * unit_rms(grad).to(x0.dtype)
        return None if moved is x0 else moved

    return x0_guided(eps_fn, alphas_cumprod, output,
                     lambda step: schedule.weight(step, shape_now(step) or track_now(step)), move)
