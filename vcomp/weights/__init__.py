"""vcomp.weights: locate, load safely and map model weights (no network access, ever).

    >>> from vcomp.weights import inventory, require
    >>> inventory()["generator"]          # which preset `vcomp` would use, and why
    >>> require("unet")                   # path of non_ema_228000.pth, or a WeightsError saying where to put it

Modules: `files` (lookup + registry), `safe_load` (torch.load(weights_only=True) / safetensors),
`sd_vae` (LDM -> diffusers VAE names), `official` (UNet, OpenCLIP), `embedded` (the tiny model).
"""

from vcomp.weights.files import (
    ALLOW_RANDOM_ENV,
    PUBLISHED,
    embedded_available,
    find,
    find_published,
    format_size,
    inventory,
    official_available,
    require,
    resolve_preset,
    weights_home,
)

__all__ = [
    "ALLOW_RANDOM_ENV", "PUBLISHED", "embedded_available", "find", "find_published", "format_size",
    "inventory", "official_available", "require", "resolve_preset", "weights_home",
]
