"""vcomp.model: the VideoComposer 3D UNet, its STC condition encoders and presets.

    >>> from vcomp.model import create_model, count_parameters
    >>> unet = create_model("tiny")                      # random init, CPU, fp32
    >>> big = create_model("official", device="meta")   # 1.41B params, no memory used

torch is imported only when a model is built, so `vcomp.model.config` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vcomp.model.config import PRESETS, ModelConfig, get_config

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vcomp.model.unet3d import UNet3D

__all__ = [
    "PRESETS",
    "ModelConfig",
    "UNet3D",
    "count_parameters",
    "create_model",
    "get_config",
    "load_state_dict_strict",
]


def create_model(
    preset_or_config: str | ModelConfig = "tiny",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> UNet3D:
    """Build a `UNet3D` from a preset name or a `ModelConfig`.

    Parameters are created directly on `device`; `device="meta"` builds the module tree
    with shapes only (instant, no memory), ready for `load_state_dict_strict`, which then
    assigns the loaded tensors.
    """
    import torch

    from vcomp.model.unet3d import UNet3D

    cfg = get_config(preset_or_config)
    with torch.device(device):
        model = UNet3D(cfg)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in seen.values())


def __getattr__(name: str):  # lazy: importing these pulls in torch
    if name == "UNet3D":
        from vcomp.model.unet3d import UNet3D

        return UNet3D
    if name == "load_state_dict_strict":
        from vcomp.model.loading import load_state_dict_strict

        return load_state_dict_strict
    raise AttributeError(f"module 'vcomp.model' has no attribute {name!r}")
