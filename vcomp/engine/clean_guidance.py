"""Guidance on the clean-sample prediction ("universal guidance"): at chosen steps the x0 that the
step's prediction implies is moved down (or up) some objective's gradient, and the prediction is
rewritten to agree with the moved x0, so the UNet itself is never differentiated.

Shape and track guidance (vcomp.engine.shape_guidance) and motion guidance
(vcomp.engine.motion_guidance) share this: how x0 is recovered and the prediction rewritten, and
which steps act (`Spacing`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SPACING = 50  #: guided steps are at least this many timesteps apart, with strength x (gap / SPACING)


class Spacing:
    """Which steps a guidance acts at: the first step where it is active, then the first at least
    `spacing` timesteps below the last one it acted at, weighted by gap / spacing (at most 2), so
    the total push and the cost do not grow with the number of sampling steps (at 20 steps every
    step 50 apart acts at weight 1; at 50 steps every third). One per sampling run."""

    def __init__(self, spacing: int):
        self.spacing = int(spacing)
        self.last: int | None = None

    def weight(self, step: int, active: bool) -> float | None:
        """The weight the guidance acts with at timestep `step` (None: it does not act)."""
        if not active or (self.last is not None and self.last - step < self.spacing):
            return None
        gap = min(self.last - step, 2 * self.spacing) / self.spacing if self.last is not None else 1.0
        self.last = step
        return gap


def x0_guided(eps_fn: EpsFn, alphas_cumprod: torch.Tensor, output: str,
              weight: Callable[[int], float | None],
              move: Callable[[torch.Tensor, int, float], torch.Tensor | None]) -> EpsFn:
    """`eps_fn` (returning `output`: "eps" or "v") whose prediction, at the timesteps where
    `weight(t)` is not None, implies `move(x0, t, weight)` instead of x0 (None: unchanged)."""
    if output not in ("eps", "v"):
        raise ValueError(f"output must be 'eps' or 'v', got {output!r}")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pred = eps_fn(x, t)
        step = int(t)
        w = weight(step)
        if w is None:
            return pred
        a = alphas_cumprod[step].to(x.device, torch.float32)
        sa, s1 = a.sqrt(), (1 - a).sqrt()
        x0 = sa * x - s1 * pred if output == "v" else (x - s1 * pred) / sa
        moved = move(x0, step, w)
        if moved is None:
            return pred
        return (sa * x - moved) / s1 if output == "v" else (x - sa * moved) / s1

    return guided


def unit_rms(grad: torch.Tensor) -> torch.Tensor:
    """`grad` scaled to unit root-mean-square, so a guidance strength is a step size in x0's units."""
    return grad / grad.pow(2).mean().sqrt().clamp(min=1e-12)
