"""What the UNet predicts, and how that becomes eps: "eps" (the noise) or "v" (velocity).

With x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (ab = alpha_bar_t of the sampler's schedule):

    v   = sqrt(ab) eps - sqrt(1 - ab) x0          (the training target of a "v" model)
    eps = sqrt(ab) v + sqrt(1 - ab) x_t           (what the sampler and guidance consume)

The sampler, guidance and inpainting all work on eps; a "v" model is converted right after its
forward pass. Guidance commutes with the conversion (it is affine in the prediction with the
same x_t), so eps(c1) + w (eps(c2) - eps(c1)) is the same whichever the model predicts.

Why "v" for the embedded model: in pixel space at high noise an eps model must reproduce x_t
almost exactly, and its errors there reach x0 multiplied by sqrt(1 - ab) / sqrt(ab) (~14 at
t = 981); a v model gets the pass-through for free and its error reaches x0 unamplified.
"""

from __future__ import annotations

import functools

import torch

from vcomp.model.config import PREDICTIONS


@functools.lru_cache(maxsize=2)
def schedule_alphas_cumprod(zero_terminal_snr: bool = False) -> torch.Tensor:
    """alpha_bar of the sampler's schedule (`scheduler_config`: the published one, or its
    zero-terminal-SNR variant), float64 on the CPU. The functions below take alpha_bar from the
    caller instead of defaulting to either: a model's config decides its schedule."""
    from vcomp.engine.sampling import get_scheduler

    return get_scheduler(zero_terminal_snr=zero_terminal_snr).alphas_cumprod.double()


def _coefficients(t: torch.Tensor, like: torch.Tensor, alphas_cumprod: torch.Tensor):
    ab = alphas_cumprod.double()[torch.as_tensor(t).reshape(-1).long().cpu()]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return (ab.sqrt().to(like.device, torch.float32).reshape(shape),
            (1 - ab).sqrt().to(like.device, torch.float32).reshape(shape))


def _v_combination(kind: str, t: torch.Tensor, like: torch.Tensor, alphas_cumprod: torch.Tensor,
                   p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sqrt(ab) p + sqrt(1 - ab) q, the one formula both directions of a "v" model need."""
    if kind != "v":
        raise ValueError(f"unknown prediction {kind!r}; expected one of {PREDICTIONS}")
    a, s = _coefficients(t, like, alphas_cumprod)
    return a * p + s * q


def to_eps(prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, kind: str,
           alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The model's output as eps (identity for an "eps" model)."""
    if kind == "eps":
        return prediction
    return _v_combination(kind, t, x_t, alphas_cumprod, prediction, x_t.float())


def to_x0(prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, kind: str,
          alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The clean sample the model's output implies: sqrt(ab) x_t - sqrt(1 - ab) v for a "v" model,
    (x_t - sqrt(1 - ab) eps) / sqrt(ab) for an "eps" one."""
    if kind == "eps":
        a, s = _coefficients(t, x_t, alphas_cumprod)
        return (x_t.float() - s * prediction) / a
    return _v_combination(kind, t, x_t, alphas_cumprod, x_t.float(), -prediction)


def target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, kind: str,
           alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """What a model of this kind is trained to output for x_t = add_noise(x0, noise, t)."""
    return noise if kind == "eps" else _v_combination(kind, t, x0, alphas_cumprod, noise, -x0)


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float | None,
                    kind: str = "eps", floor: float = 0.0) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR for an
    eps model, min(SNR, gamma) / (SNR + 1) for a v model (the same weighting of the x0 error);
    ones without gamma.

    `floor` raises the x0 weight of the noisiest steps to at least this (clamp(SNR, floor, gamma)).
    Plain min-SNR weighs the x0 error at t = 900 by 0.014: the steps that decide a clip's layout,
    and so where its objects go from frame to frame, are then hardly trained at all."""
    if gamma is None:
        if floor:
            raise ValueError("an SNR floor needs min-SNR weighting (a gamma)")
        return torch.ones(t.shape, dtype=torch.float32)
    if not 0 <= floor <= gamma:
        raise ValueError(f"the SNR floor must be between 0 and gamma={gamma} (got {floor})")
    ab = alphas_cumprod[t.cpu()].float()
    snr = ab / (1 - ab)
    return torch.clamp(snr, min=floor, max=gamma) / (snr + 1 if kind == "v" else snr)
