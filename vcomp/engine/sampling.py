"""DDIM sampling with compositional guidance, as a handful of small functions.

    scheduler = get_scheduler(steps=50)                       # diffusers DDIMScheduler, SD betas
    x = get_noise((1, C, T, h, w), seed=0, device=device)     # CPU generator: same noise on any device
                                                              # (shared=cfg.noise_shared for a model trained so)
    eps_fn = make_eps_fn(model, cond, uncond, guidance=9.0)   # cond + uncond in ONE batch per step
    x = denoise(eps_fn, x, scheduler, eta=0.0, callback=cb)   # -> clean latent

A model may predict eps or v (`ModelConfig.prediction`); `make_eps_fn` always returns eps.

Scheduler (`SCHEDULER_CONFIG`): 1000 training steps, "scaled_linear" betas 0.00085..0.012 (the
published `linear_sd` schedule), epsilon prediction, no sample clipping, `set_alpha_to_one=False`
(the last step lands on alpha_bar[0], as published) and `steps_offset=1` with "leading" spacing,
so 50 steps visit t = 981, 961, ..., 1 -- the published DDIM timesteps.
A model with `ModelConfig.zero_terminal_snr` gets the same betas rescaled to alpha_bar = 0 at
t = 999, "trailing" steps (999, 979, ..., 19 at 50 steps) and a scheduler stepping on v
(`scheduler_config(True)`; `make_eps_fn(..., output="v")`): at alpha_bar = 0 x0 cannot be
recovered from eps.

Compositional guidance: `eps = eps(c1) + w * (eps(c2) - eps(c1))`, where c2 (`cond`) has every
given condition and c1 (`uncond`) drops the guided ones. The two branches are stacked on the batch
axis and go through the model in one call, uncond first.

This module takes tensors and a model and returns tensors; it knows nothing of files or the CLI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# DDIM steps at most: "leading" spacing with steps_offset 1 gives timesteps k * (1000 // steps) + 1.
# Above 500 steps the stride is 1, so sampling starts at t = steps, not near 999, and at 1000 steps
# it indexes past the schedule (an IndexError a 1000-step run hit).
MAX_STEPS = 500

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
#: what a zero-terminal-SNR model's scheduler changes (`ModelConfig.zero_terminal_snr`)
ZERO_SNR_OVERRIDES = {
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "steps_offset": 0,
    "prediction_type": "v_prediction",
}
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 9.0  # hard-coded in the published inference scripts (their config's 6.0 is unused)

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int], None]


def scheduler_config(zero_terminal_snr: bool = False) -> dict:
    """The DDIMScheduler settings: the published ones, or their zero-terminal-SNR variant."""
    return {**SCHEDULER_CONFIG, **ZERO_SNR_OVERRIDES} if zero_terminal_snr else dict(SCHEDULER_CONFIG)


def get_scheduler(steps: int = DEFAULT_STEPS, device: str | torch.device | None = None,
                  zero_terminal_snr: bool = False):
    """A diffusers `DDIMScheduler` (see `scheduler_config`) set to `steps` sampling steps."""
    from diffusers import DDIMScheduler

    if not 1 <= steps <= SCHEDULER_CONFIG["num_train_timesteps"]:
        raise ValueError(f"steps must be in 1..{SCHEDULER_CONFIG['num_train_timesteps']}, got {steps}")
    scheduler = DDIMScheduler(**scheduler_config(zero_terminal_snr))
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def share_across_frames(noise: torch.Tensor, common: torch.Tensor, shared: float) -> torch.Tensor:
    """Per-frame noise [B, C, T, h, w] mixed with one draw common to all frames [B, C, 1, h, w],
    so that a `shared` fraction of every frame's noise variance is the same in each frame (the
    "mixed" video noise prior of PYoCo, Ge et al. 2023); the variance stays 1.

    Why: with independent noise every frame starts from its own random layout and the UNet must
    reconcile them; a small model does not always manage, and its objects wobble, split in two or
    jump between frames. A model trained with this prior must also sample with it
    (`ModelConfig.noise_shared`); 0 is independent noise, as published.
    """
    if not shared:
        return noise
    if not 0.0 <= shared < 1.0:
        raise ValueError(f"shared must be in [0, 1), got {shared}")
    return (1.0 - shared) ** 0.5 * noise + shared ** 0.5 * common


def draw_noise(shape: Sequence[int], generator: torch.Generator, shared: float = 0.0) -> torch.Tensor:
    """Standard normal noise [B, C, T, h, w] from `generator`, `shared` of its variance common to
    all frames (`share_across_frames`). With shared 0 it draws exactly `torch.randn(shape)`, so
    models without the prior keep their random stream."""
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if not shared:
        return noise
    b, c, _, *grid = shape
    common = torch.randn((b, c, 1, *grid), generator=generator, dtype=torch.float32)
    return share_across_frames(noise, common, shared)


def get_noise(shape: Sequence[int], seed: int, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, shared: float = 0.0) -> torch.Tensor:
    """Starting noise from a CPU generator seeded with `seed`, moved to `device`: the same seed
    gives the same starting noise on every device. `shared`: see `share_across_frames`."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return draw_noise(shape, generator, shared).to(device=device, dtype=dtype)


def guided_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """eps(c1) + w * (eps(c2) - eps(c1))."""
    return eps_uncond + guidance * (eps_cond - eps_uncond)


@dataclass
class Branch:
    """The model inputs of one guidance branch (everything but x_t and t)."""

    context: torch.Tensor | None = None  # text tokens [B, L, D]; None = the model's null text
    style: torch.Tensor | None = None  # [B, 1, S]; None = no style token
    cond_features: torch.Tensor | None = None  # [B, concat_dim, T, h, w]; None = no conditions

    @property
    def batch(self) -> int | None:
        for value in (self.context, self.style, self.cond_features):
            if value is not None:
                return value.shape[0]
        return None


def _cat(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> torch.Tensor | None:
    if a is None and b is None:
        return None
    if what == "cond_features":  # an absent map is zeros: fill it in
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
    elif a is None or b is None:
        raise ValueError(f"both guidance branches must give `{what}`, or neither")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"`{what}` differs in shape between the branches: {list(a.shape)} vs {list(b.shape)}")
    return torch.cat([a, b])


def stack_branches(uncond: Branch, cond: Branch) -> Branch:
    """One batch: uncond rows first, then cond rows."""
    return Branch(*(_cat(getattr(uncond, n), getattr(cond, n), n) for n in ("context", "style", "cond_features")))


def make_eps_fn(model: torch.nn.Module, cond: Branch, uncond: Branch | None = None, guidance: float = DEFAULT_GUIDANCE,
                autocast_dtype: torch.dtype | None = None, alphas_cumprod: torch.Tensor | None = None,
                output: str = "eps") -> EpsFn:
    """`eps_fn(x, t)` for `denoise`: the guided noise prediction for latent x [B, ...] (the guided v
    with `output="v"`, for a scheduler that steps on v; guidance is affine, so either is the same).

    With `uncond`, x is doubled and both branches run as one batch (one model call per step);
    without it (or when the caller decided guidance is not needed) only the conditional pass runs.
    `autocast_dtype` (CUDA): run the model under `torch.autocast` in that dtype.
    A model whose config predicts "v" is converted to eps with `alphas_cumprod` (default: the
    schedule its config names, published or zero terminal SNR); see `vcomp.engine.parameterization`.
    """
    from vcomp.engine.parameterization import schedule_alphas_cumprod, to_eps

    branch = stack_branches(uncond, cond) if uncond is not None else cond
    cfg = getattr(model, "cfg", None)
    kind = getattr(cfg, "prediction", "eps")
    if alphas_cumprod is None:
        alphas_cumprod = schedule_alphas_cumprod(bool(getattr(cfg, "zero_terminal_snr", False)))
    if output not in ("eps", "v") or (output == "v" and kind != "v"):
        raise ValueError(f"cannot give {output!r} from a model predicting {kind!r}")

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = 2 if uncond is not None else 1
        x_in = torch.cat([x] * n) if n > 1 else x
        t_in = torch.as_tensor(t, device=x.device).reshape(-1).expand(x_in.shape[0])
        ctx = (torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            pred = model(x_in, t_in, context=branch.context, style=branch.style, cond_features=branch.cond_features)
        pred = pred.float() if output == "v" else to_eps(pred.float(), x_in, t_in, kind, alphas_cumprod)
        if n == 1:
            return pred
        pred_uncond, pred_cond = pred.chunk(2)
        return guided_eps(pred_uncond, pred_cond, guidance)  # affine: the same formula for eps or v

    return eps_fn


@dataclass
class KnownRegion:
    """Inpainting "replace" trick: after each step, the kept region of x_t is replaced by the
    known latent noised to the same timestep (with the initial noise), so only the hole is
    generated and it stays consistent with its surroundings."""

    latent: torch.Tensor  # clean latent of the source video [B, C, T, h, w]
    keep: torch.Tensor  # [B or 1, 1, T, h, w]: 1 = keep the known latent, 0 = generate
    noise: torch.Tensor  # the initial noise (same shape as latent)

    def apply(self, x: torch.Tensor, scheduler, t: int | None) -> torch.Tensor:
        known = self.latent if t is None else scheduler.add_noise(
            self.latent, self.noise, torch.tensor([int(t)], device=self.latent.device))
        return self.keep * known.to(x.dtype) + (1 - self.keep) * x


def denoise(eps_fn: EpsFn, latent: torch.Tensor, scheduler, *, eta: float = 0.0,
            generator: torch.Generator | None = None, known: KnownRegion | None = None,
            callback: Callback | None = None) -> torch.Tensor:
    """Run the scheduler's timesteps from noise `latent` to a clean latent.

    eta: DDIM stochasticity (0 = deterministic). For eta > 0 pass a CPU `generator` so the
    per-step noise is reproducible across devices. `callback(done, total)` after every step.
    """
    timesteps = [int(t) for t in scheduler.timesteps]
    x = latent * scheduler.init_noise_sigma
    if known is not None:
        x = known.apply(x, scheduler, timesteps[0])
    for i, t in enumerate(timesteps):
        eps = eps_fn(x, torch.tensor(t, device=x.device))
        x = scheduler.step(eps, t, x, eta=eta, generator=generator, return_dict=False)[0]
        if known is not None:
            x = known.apply(x, scheduler, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        if callback is not None:
            callback(i + 1, len(timesteps))
    return x
