"""vcomp.engine: DDIM sampling with compositional guidance (tensors in, tensors out)."""

from vcomp.engine.sampling import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    SCHEDULER_CONFIG,
    Branch,
    KnownRegion,
    denoise,
    draw_noise,
    get_noise,
    get_scheduler,
    guided_eps,
    make_eps_fn,
    scheduler_config,
    share_across_frames,
    stack_branches,
)

__all__ = [
    "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "SCHEDULER_CONFIG", "Branch", "KnownRegion", "denoise", "draw_noise",
    "get_noise", "get_scheduler", "guided_eps", "make_eps_fn", "scheduler_config", "share_across_frames", "stack_branches",
]
