"""Motion guidance: steer sampling so the generated clip moves the way the motion condition says,
pixel by pixel, on top of the model's own reading of the condition.

Why: the STC encoder gives the UNet the field, and the embedded model moves its object the right
way (direction 23 of 24 on the world suite) but draws it too large, a few pixels off, or with
its own speed, and the motion-control error counts every codec block whose content moves
differently from the source's. A motion vector says that the content at p in frame t came from
p - v in frame t-1 (the codec's motion-compensated prediction), so at the noisier steps, where
the layout of the clip is decided (t >= 300), the decoded clean prediction x0 is moved down the
gradient of `warp_residual`: how far each frame is from its predecessor moved by the field.

A pixel may also be explained as standing still: a codec block carries one vector for all its
pixels, so the static background (or texture) inside a moving block is not asked to move with it.
An object that is missing where the field moves therefore costs nothing here (the condition
itself asks the model for it), but one that moves where the field is still, or differently from
it, or extends past it, does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vcomp.engine.clean_guidance import SPACING, EpsFn, Spacing, unit_rms, x0_guided

T_RANGE = (300, 999)  #: timesteps at which it acts (measured against 100-999 and 0-999, docs/embedded-model-history.md)


def warp_residual(frames: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Sum over frames 1.. and pixels of min(|x_t - x_{t-1}(p - v_t(p))|^2, |x_t - x_{t-1}|^2):
    how badly frames [T, C, H, W] fail to move as `field` [T, 2, H, W] (px/frame, x then y;
    field[0] unused) says, where a pixel may also stand still. Differentiable in `frames`
    (bilinear sampling; out-of-frame sources read the nearest edge)."""
    t, _, h, w = frames.shape
    if t < 2:
        return frames.new_zeros(())
    ys, xs = torch.meshgrid(torch.arange(h, dtype=frames.dtype, device=frames.device),
                            torch.arange(w, dtype=frames.dtype, device=frames.device), indexing="ij")
    v = field[1:].to(frames)
    grid = torch.stack([(2 * (xs - v[:, 0]) + 1) / w - 1, (2 * (ys - v[:, 1]) + 1) / h - 1], -1)
    warped = F.grid_sample(frames[:-1], grid, mode="bilinear", padding_mode="border", align_corners=False)
    moving = (frames[1:] - warped).pow(2).sum(1)
    still = (frames[1:] - frames[:-1]).pow(2).sum(1)
    return torch.minimum(moving, still).sum()


def field_moves(field: torch.Tensor) -> bool:
    """Whether `field` [T, 2, H, W] moves anything between frames (field[0] is unused)."""
    return bool((field[1:] != 0).any())


def motion_guided(eps_fn: EpsFn, decode: Callable[[torch.Tensor], torch.Tensor], field: torch.Tensor,
                  alphas_cumprod: torch.Tensor, scale: float, output: str = "eps",
                  t_range: tuple[int, int] = T_RANGE, spacing: int = SPACING) -> EpsFn:
    """`eps_fn` with motion guidance: at the timesteps in `t_range` (inclusive, spaced as
    `clean_guidance.Spacing`) x0 moves `scale` (unit RMS, times the spacing weight) down the
    gradient of `warp_residual` of `decode(x0)` against `field` [T, 2, H, W] (px/frame at the
    decoded size). `decode(latent [B, C, T, h, w]) -> video [B, 3, T, H, W]`, differentiable.
    `scale` 0, or a field that moves nowhere, returns `eps_fn` itself: a still field asks only
    that frames stay alike, which the model already does (every still scene of the world suite gives
    a zero error without guidance), while its pull towards identical frames at the noisiest steps
    erased a faint object (an orange triangle on red, seed 0)."""
    if scale <= 0 or not field_moves(field):
        return eps_fn
    schedule = Spacing(spacing)

    def move(x0: torch.Tensor, step: int, weight: float) -> torch.Tensor | None:
        with torch.inference_mode(False), torch.enable_grad():
            z = x0.detach().clone().requires_grad_(True)
            video = decode(z).float()
            residual = sum(warp_residual(video[b].transpose(0, 1), field) for b in range(len(video)))
            if not residual.requires_grad or float(residual.detach()) == 0.0:
                return None
            (grad,) = torch.autograd.grad(residual, z)
        return x0 - scale * weight * unit_rms(grad).to(x0.dtype)

    return x0_guided(eps_fn, alphas_cumprod, output,
                     lambda step: schedule.weight(step, t_range[0] <= step <= t_range[1]), move)
