"""Strict state-dict loading with a message that names every mismatch."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from vcomp.errors import WeightsError


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """None if `state_dict` has exactly the model's keys and shapes, else a one-line summary."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} (weights {list(state_dict[k].shape)} vs model {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = [
        f"{len(items)} {what}: {_listing(items)}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if items
    ]
    return "; ".join(parts) if parts else None


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "weights"
) -> nn.Module:
    """Load `state_dict` into `model`, requiring identical keys and shapes.

    Raises `WeightsError` listing missing, unexpected and mis-shaped keys (lists truncated).
    A model built on the meta device (`create_model(..., device="meta")`) takes the given
    tensors as its parameters (`assign=True`), so nothing is allocated twice; its
    non-persistent buffers (the null text `zero_y`) become zeros on the weights' device
    until set with `UNet3D.set_null_text`.
    """
    problem = state_dict_mismatch(model, state_dict)
    if problem:
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        hint = ""
        if any(k.startswith("module.") for k in state_dict):
            hint = " (keys start with 'module.': strip that DataParallel prefix)"
        elif "state_dict" in state_dict:
            hint = " (the file wraps its weights in a 'state_dict' entry: unwrap it)"
        raise WeightsError(
            f"{source} do not match model {name!r}{hint}: {problem}. "
            "Check that the weights were saved for this model preset."
        )
    meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(state_dict, strict=True, assign=meta)
    if meta:  # buffers outside the state_dict (the null text `zero_y`) are still meta: zero them
        device = next(model.parameters()).device
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and buf.is_meta:
                    module._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype, device=device)
    return model


#: modules a trained model may gain when fine-tuned (`ModelConfig.temporal_frame_pos`,
#: `temporal_text_attention`, `frame_index_embedding`, `text_coordinates`): their output maps are
#: zero-initialised, so a model without them computes what one with them does before training
ADDABLE_MODULES = (".frame_pos.", ".text_norm.", ".text_attn.", "frame_embed.", "text_coords.")


def with_added_modules(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` completed with `model`'s own (zero-initialised) tensors of the ADDABLE_MODULES
    it lacks, for starting a run with such a module from weights trained without it; every other
    key must still match when loaded strictly."""
    added = {k: v for k, v in model.state_dict().items()
             if k not in state_dict and any(name in k for name in ADDABLE_MODULES)}
    return {**added, **state_dict}


def without_removed_modules(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` without the tensors of whole sub-modules `model` does not have, for starting a
    run whose config leaves a trained module out (`attn_scales` without the top level's attention,
    to keep a finer latent grid affordable). Tensors of a module `model` has are kept, so a real
    mismatch still fails the strict load, as does leaving out attention that an up-sampler follows
    (the up-sampler's place in its block moves)."""
    own = model.state_dict()
    present = {k.rsplit(".", i)[0] for k in own for i in range(1, k.count(".") + 1)}
    return {k: v for k, v in state_dict.items() if k in own or k.rsplit(".", 1)[0] in present}


#: the UNet's two convolutions that touch the latent itself: the first (noisy latent + condition
#: features in) and the last (the prediction out); every other tensor is independent of the latent's width
LATENT_INPUT_CONV = "input_blocks.0.0.weight"
LATENT_OUTPUT_CONV = ("out.2.weight", "out.2.bias")


def with_new_latent_channels(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                             old_in_dim: int) -> dict[str, torch.Tensor]:
    """`state_dict` (a UNet trained on a latent of `old_in_dim` channels) made to fit `model`, the
    same UNet on a latent with another channel count, for moving a trained model to a new latent
    space (of any factor) instead of training one from scratch. The latent's own weights start from
    `model`'s fresh initialisation: the first convolution's input channels for the noisy latent
    and the whole last convolution. The first convolution's condition-feature channels, and every
    other tensor (text, conditions, time, the blocks in between), keep their trained values."""
    fresh = model.state_dict()
    out = dict(state_dict)
    old_in, new_in = state_dict[LATENT_INPUT_CONV], fresh[LATENT_INPUT_CONV]
    concat = old_in.shape[1] - old_in_dim
    if concat < 0 or new_in.shape[1] - concat <= 0 or old_in.shape[0] != new_in.shape[0]:
        raise WeightsError(f"cannot move {LATENT_INPUT_CONV} {list(old_in.shape)} to {list(new_in.shape)}")
    merged = new_in.clone()
    if concat:
        merged[:, -concat:] = old_in[:, -concat:]
    out[LATENT_INPUT_CONV] = merged
    for key in LATENT_OUTPUT_CONV:
        out[key] = fresh[key].clone()
    return out
