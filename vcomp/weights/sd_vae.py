"""The SD-2.1 VAE: LDM (`first_stage_model.*`) key names -> diffusers `AutoencoderKL` names.

The published pipeline loads `v2-1_512-ema-pruned.ckpt["state_dict"]`, keeps the keys that start
with `first_stage_model.` and loads them strictly into LDM's AutoencoderKL. vcomp maps the same
tensors onto diffusers' `AutoencoderKL` (config written locally, `vcomp.model.autoencoder`):

    LDM                                         diffusers
    {en,de}coder.conv_in / conv_out             same
    {en,de}coder.norm_out                       {en,de}coder.conv_norm_out
    encoder.down.N.block.M.*                    encoder.down_blocks.N.resnets.M.*
    decoder.up.N.block.M.*                      decoder.up_blocks.(L-1-N).resnets.M.*   (reversed)
    *.nin_shortcut                              *.conv_shortcut
    encoder.down.N.downsample.conv              encoder.down_blocks.N.downsamplers.0.conv
    decoder.up.N.upsample.conv                  decoder.up_blocks.(L-1-N).upsamplers.0.conv
    {en,de}coder.mid.block_1 / block_2          {en,de}coder.mid_block.resnets.0 / 1
    {en,de}coder.mid.attn_1.norm                {en,de}coder.mid_block.attentions.0.group_norm
    {en,de}coder.mid.attn_1.q / k / v           ...attentions.0.to_q / to_k / to_v   (1x1 conv -> linear)
    {en,de}coder.mid.attn_1.proj_out            ...attentions.0.to_out.0              (1x1 conv -> linear)
    quant_conv / post_quant_conv                same

L is the number of resolution levels (4 for SD). The mapping is checked strictly: every
diffusers key must be produced exactly once and every checkpoint key must be used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from vcomp.errors import WeightsError

LDM_PREFIX = "first_stage_model."

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _rename(key: str, levels: int) -> tuple[str, bool]:
    """(diffusers name, squeeze 1x1 conv to linear?) of one LDM VAE key; KeyError if unknown."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key, False
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        raise KeyError(key)
    part, rest = m.groups()
    if re.fullmatch(r"(conv_in|conv_out)\.(weight|bias)", rest):
        return key, False
    if (m := re.fullmatch(r"norm_out\.(weight|bias)", rest)):
        return f"{part}.conv_norm_out.{m.group(1)}", False
    if (m := re.fullmatch(r"(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", rest)):
        kind, n, j, layer, param = m.groups()
        if (kind == "down") != (part == "encoder"):
            raise KeyError(key)
        n = int(n) if kind == "down" else levels - 1 - int(n)
        layer = "conv_shortcut" if layer == "nin_shortcut" else layer
        return f"{part}.{kind}_blocks.{n}.resnets.{j}.{layer}.{param}", False
    if (m := re.fullmatch(r"(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(weight|bias)", rest)):
        kind, n, sampler, param = m.groups()
        n = int(n) if kind == "down" else levels - 1 - int(n)
        return f"{part}.{kind}_blocks.{n}.{sampler}rs.0.conv.{param}", False
    if (m := re.fullmatch(r"mid\.block_([12])\.(.+)", rest)):
        j, tail = m.groups()
        tail = tail.replace("nin_shortcut", "conv_shortcut")
        return f"{part}.mid_block.resnets.{int(j) - 1}.{tail}", False
    if (m := re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest)):
        layer, param = m.groups()
        return f"{part}.mid_block.attentions.0.{_ATTN[layer]}.{param}", layer != "norm" and param == "weight"
    raise KeyError(key)


def ldm_levels(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Number of resolution levels in an LDM VAE state dict (4 for SD)."""
    found = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.down\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def ldm_vae_to_diffusers(state_dict: Mapping[str, torch.Tensor], levels: int | None = None) -> dict[str, torch.Tensor]:
    """Rename an LDM VAE state dict (prefix already removed) to diffusers' `AutoencoderKL` names.

    Raises WeightsError listing keys it does not know.
    """
    levels = levels or ldm_levels(state_dict)
    out, unknown = {}, []
    for key, value in state_dict.items():
        try:
            name, squeeze = _rename(key, levels)
        except KeyError:
            unknown.append(key)
            continue
        if squeeze and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[name] = value
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown) - 8} more)" if len(unknown) > 8 else "")
        raise WeightsError(f"{len(unknown)} unexpected VAE key(s) not in the LDM AutoencoderKL layout: {shown}")
    return out


def load_sd_vae(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                config: dict | None = None, chunk: int = 16):
    """`KLAutoencoder` with the VAE of an SD checkpoint (`first_stage_model.*`, LDM names) or of a
    diffusers-format VAE state dict (.safetensors with diffusers names)."""
    from vcomp.model.autoencoder import KLAutoencoder, build_kl_vae, sd21_vae_config
    from vcomp.model.loading import load_state_dict_strict
    from vcomp.weights.safe_load import load_file, state_dict_from

    obj = load_file(path, what="VAE")
    sd = state_dict_from(obj, path, what="VAE")
    if any(k.startswith(LDM_PREFIX) for k in sd):
        sd = {k[len(LDM_PREFIX):]: v for k, v in sd.items() if k.startswith(LDM_PREFIX)}
    if any(k.startswith("encoder.down.") for k in sd):  # LDM names
        try:
            sd = ldm_vae_to_diffusers(sd)
        except WeightsError as exc:
            raise WeightsError(f"{path}: {exc}") from None
    elif not any(k.startswith("encoder.down_blocks.") for k in sd):
        raise WeightsError(f"{path} has no VAE weights (no first_stage_model.* or encoder.* keys); "
                           "give the SD-2.1 checkpoint v2-1_512-ema-pruned.ckpt")
    vae = build_kl_vae(config or sd21_vae_config(), device="meta")
    load_state_dict_strict(vae, sd, source=f"VAE weights in {path}")
    vae = vae.to(device=device, dtype=dtype)
    return KLAutoencoder(vae, chunk=chunk)
