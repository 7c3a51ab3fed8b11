"""Loaders for the published VideoComposer files (the `official` preset).

- `non_ema_228000.pth`: a flat UNet state dict (1574 keys). Built on the meta device with the
  official config (`stc_pool_size=None`: same keys and shapes; the condition encoders then
  follow any latent size, identical to the published 128 pool at 256 x 256), loaded strictly.
- `v2-1_512-ema-pruned.ckpt`: see `vcomp.weights.sd_vae`.
- `open_clip_pytorch_model.bin`: OpenCLIP ViT-H-14, see `vcomp.model.embedders.OpenCLIPEmbedder`.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from vcomp.weights.safe_load import load_state_dict


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs a warning when it builds a model without weights (we load them next)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load_official_unet(path: str | os.PathLike, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None):
    from vcomp.model import create_model, get_config
    from vcomp.model.loading import load_state_dict_strict

    sd = load_state_dict(path, what="UNet")
    model = create_model(get_config("official", stc_pool_size=None), device="meta")
    load_state_dict_strict(model, sd, source=f"UNet weights in {path}")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_openclip(path: str | os.PathLike, towers=("text",), device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, model_name: str | None = None):
    from vcomp.model.embedders import CLIP_MODEL, OpenCLIPEmbedder

    sd = load_state_dict(path, what="OpenCLIP")
    with _quiet_root_logger():
        embedder = OpenCLIPEmbedder.from_state_dict(sd, model_name or CLIP_MODEL, towers=towers,
                                                    source=f"OpenCLIP weights in {path}")
    return embedder.to(device=device, dtype=dtype)
