"""Autoencoders between video pixels and the latent the UNet denoises.

Both share one small interface (`VideoAutoencoder`):

    encode(video [B, 3, T, H, W] in [-1, 1]) -> latent [B, C, T, H/f, W/f]   (already scaled)
    decode(latent [B, C, T, h, w])           -> video  [B, 3, T, h*f, w*f]   (about [-1, 1])

`PixelUnshuffleAutoencoder` (the embedded `tiny` preset): no parameters. Each f x f pixel block
becomes 3 * f * f channels (`F.pixel_unshuffle`), so 64 x 64 RGB -> 48 x 16 x 16 at f = 4; decode
is the exact inverse. The latent is the pixels themselves, in [-1, 1] (scaling_factor 1).

`KLAutoencoder` (the `official` preset): Stable Diffusion 2.1's VAE as diffusers' `AutoencoderKL`,
built from a config written here (`sd21_vae_config`), never fetched from the hub. The latent is
`posterior.mean * 0.18215`: the published pipeline scales by 0.18215 too (it draws
`posterior.sample()`, but only to shape the noise; vcomp encodes only for the inpainting
"replace" trick, where the mean is the better estimate). Frames go through the VAE in chunks
of `chunk` frames to bound memory (the published decoder uses chunks of 16).

This module knows nothing about files: `vcomp.weights.sd_vae` loads the published checkpoint.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

SD_SCALING_FACTOR = 0.18215


class VideoAutoencoder(Protocol):
    factor: int  # pixels per latent cell along each side
    latent_channels: int

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor, refine: bool = True, context: torch.Tensor | None = None) -> torch.Tensor:
        """`refine=False`: without the refiners, where the autoencoder has them; `context`: the
        prompt's text tokens, for a prompt refiner (none given: it is skipped)."""
        ...


def _check_video(video: torch.Tensor, channels: int, factor: int, what: str) -> None:
    if video.ndim != 5 or video.shape[1] != channels:
        raise ValueError(f"{what} must be [B, {channels}, T, H, W], got {list(video.shape)}")
    if factor > 1 and (video.shape[-1] % factor or video.shape[-2] % factor):
        raise ValueError(f"{what} height and width must be multiples of {factor}, got {list(video.shape[-2:])}")


class PixelUnshuffleAutoencoder(nn.Module):
    """Parameter-free latent: pixel (un)shuffle by `factor` (64^2 RGB -> 48 x 16^2 at 4)."""

    def __init__(self, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.latent_channels = 3 * factor * factor
        self.scaling_factor = 1.0

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        _check_video(video, 3, self.factor, "video")
        b = video.shape[0]
        x = F.pixel_unshuffle(rearrange(video, "b c t h w -> (b t) c h w"), self.factor)
        return rearrange(x, "(b t) c h w -> b c t h w", b=b)

    def decode(self, latent: torch.Tensor, refine: bool = True, context: torch.Tensor | None = None) -> torch.Tensor:
        """`refine` and `context` are accepted for the `VideoAutoencoder` interface: no refiner here."""
        _check_video(latent, self.latent_channels, 1, "latent")
        b = latent.shape[0]
        x = F.pixel_shuffle(rearrange(latent, "b c t h w -> (b t) c h w"), self.factor)
        return rearrange(x, "(b t) c h w -> b c t h w", b=b)

    def describe(self) -> dict:
        return {"type": "pixel_unshuffle", "factor": self.factor, "latent_channels": self.latent_channels}


def sd21_vae_config(**overrides) -> dict:
    """diffusers `AutoencoderKL` config of the SD-2.1 VAE (LDM `ddconfig`: ch 128,
    ch_mult (1, 2, 4, 4), 2 res-blocks, z 4; `embed_dim` 4), written out locally."""
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": SD_SCALING_FACTOR,
    }
    config.update(overrides)
    n = len(config["block_out_channels"])
    config["down_block_types"] = ["DownEncoderBlock2D"] * n
    config["up_block_types"] = ["UpDecoderBlock2D"] * n
    return config


#: vcomp's one extension of the diffusers config: ResNet blocks per decoder level when the decoder
#: is deeper than the encoder (`deepen_decoder`); absent = diffusers' own (the encoder's depth)
DECODER_DEPTH_KEY = "decoder_layers_per_block"


def build_kl_vae(config: dict | None = None, device: str | torch.device = "cpu"):
    """A randomly initialised diffusers `AutoencoderKL` (on `device`; "meta" for shapes only) from
    its config, keys starting with "_" ignored; `DECODER_DEPTH_KEY` gives the decoder its own depth
    (and stays in `vae.config`, so a saved config builds the same model again)."""
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import Decoder

    config = {k: v for k, v in (config or sd21_vae_config()).items() if not k.startswith("_")}
    depth = config.pop(DECODER_DEPTH_KEY, None)
    with torch.device(device):
        vae = AutoencoderKL(**config)
        if depth is not None and int(depth) != vae.config.layers_per_block:
            c = vae.config
            vae.decoder = Decoder(in_channels=c.latent_channels, out_channels=c.out_channels,
                                  up_block_types=c.up_block_types, block_out_channels=c.block_out_channels,
                                  layers_per_block=int(depth), norm_num_groups=c.norm_num_groups, act_fn=c.act_fn,
                                  mid_block_add_attention=c.mid_block_add_attention)
    if depth is not None:
        vae.register_to_config(**{DECODER_DEPTH_KEY: int(depth)})
    return vae


def decoder_depth(vae) -> int:
    """ResNet blocks per decoder level of a diffusers `AutoencoderKL` built by `build_kl_vae`."""
    return int(vae.config.get(DECODER_DEPTH_KEY) or vae.config.layers_per_block)


def deepen_decoder(vae, layers_per_block: int):
    """A copy of `vae` whose decoder has `layers_per_block` ResNet blocks per level (more than
    now), computing exactly the same function: every tensor is kept and each new block starts as
    the identity (its last convolution zero, so the residual adds nothing).

    Why: the embedded model's decoder is its latent space's only renderer, and its 0.6 M
    parameters trade small objects' outlines (star points) against colour; a deeper decoder
    fine-tuned on the frozen encoder (`vcomp train-autoencoder --decoder-only --decoder-layers N`)
    starts from the shipped one's quality instead of from scratch, and the UNet stays valid."""
    now = decoder_depth(vae)
    if layers_per_block < now:
        raise ValueError(f"the decoder already has {now} ResNet blocks per level; it cannot lose any")
    deeper = build_kl_vae({**dict(vae.config), DECODER_DEPTH_KEY: int(layers_per_block)})
    target = deeper.state_dict()
    kept = vae.state_dict()
    target.update({k: v.to(target[k].dtype) for k, v in kept.items()})
    for name, resnets in ((f"decoder.up_blocks.{i}", b.resnets) for i, b in enumerate(deeper.decoder.up_blocks)):
        for j in range(now + 1, len(resnets)):  # diffusers' decoder levels hold layers_per_block + 1 blocks
            for part in ("weight", "bias"):
                target[f"{name}.resnets.{j}.conv2.{part}"] = torch.zeros_like(target[f"{name}.resnets.{j}.conv2.{part}"])
    deeper.load_state_dict(target)
    dtype = next(vae.parameters()).dtype
    return (deeper if dtype == torch.float32 else deeper.to(dtype)).train(vae.training)


class KLAutoencoder(nn.Module):
    """Video wrapper around a diffusers `AutoencoderKL`, frame-chunked; with an optional
    `TemporalRefiner` run over the whole decoded clip (the embedded model's deflicker) and an
    optional `PromptRefiner` after it (the text-conditioned stage that redraws outlines). A
    `ShapeCritic` of this decoder's output may travel with it (it does not change the output:
    sampling's shape guidance reads it)."""

    def __init__(self, vae, chunk: int = 16, refiner: nn.Module | None = None,
                 prompt_refiner: nn.Module | None = None, shape_critic: nn.Module | None = None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.refiner = refiner.eval().requires_grad_(False) if refiner is not None else None
        self.prompt_refiner = prompt_refiner.eval().requires_grad_(False) if prompt_refiner is not None else None
        self.shape_critic = shape_critic.eval().requires_grad_(False) if shape_critic is not None else None
        cfg = vae.config
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_channels = cfg.latent_channels
        self.scaling_factor = float(cfg.scaling_factor)
        self.chunk = chunk

    def _frames(self, video: torch.Tensor, fn) -> torch.Tensor:
        b = video.shape[0]
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        out = torch.cat([fn(frames[i : i + self.chunk]) for i in range(0, frames.shape[0], self.chunk)])
        return rearrange(out, "(b t) c h w -> b c t h w", b=b)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        _check_video(video, 3, self.factor, "video")
        dtype = self.vae.dtype
        return self._frames(
            video, lambda x: self.vae.encode(x.to(dtype)).latent_dist.mean * self.scaling_factor
        )

    def decode(self, latent: torch.Tensor, refine: bool = True, context: torch.Tensor | None = None) -> torch.Tensor:
        """Frames from latents; `refine=False` skips the refiners (what the temporal one is trained
        on). The prompt refiner runs only when given the prompt's text tokens `context`."""
        _check_video(latent, self.latent_channels, 1, "latent")
        dtype = self.vae.dtype
        video = self._frames(latent, lambda z: self.vae.decode(z.to(dtype) / self.scaling_factor).sample)
        if refine and self.refiner is not None:
            refiner_dtype = next(self.refiner.parameters()).dtype
            video = self.refiner(video.to(refiner_dtype)).to(video.dtype)
        if refine and context is not None and self.prompt_refiner is not None:
            stage_dtype = next(self.prompt_refiner.parameters()).dtype
            video = self.prompt_refiner(video.to(stage_dtype), context.to(stage_dtype)).to(video.dtype)
        return video

    def describe(self) -> dict:
        return {
            "type": "AutoencoderKL",
            "factor": self.factor,
            "latent_channels": self.latent_channels,
            "scaling_factor": self.scaling_factor,
            "chunk": self.chunk,
            **({"temporal_refiner": self.refiner.config()} if self.refiner is not None else {}),
            **({"prompt_refiner": self.prompt_refiner.config()} if self.prompt_refiner is not None else {}),
            **({"shape_critic": self.shape_critic.config()} if self.shape_critic is not None else {}),
        }
