"""The Spatio-Temporal Condition encoder (STC-encoder) of VideoComposer.

One per condition (depth, motion, masked, sketch, single_sketch, local_image):

    cond [B, C, T, H, W]
      -> per frame: conv3x3 -> SiLU -> AdaptiveAvgPool -> conv3x3/2 -> SiLU -> conv3x3/2
      -> [B, concat_dim, T, h, w]      (h, w = the latent grid)
      -> per pixel: a small pre-norm transformer along time (`Transformer_v2`)
      -> [B, concat_dim, T, h, w]

In the published state_dict the two halves are separate top-level modules, e.g.
`depth_embedding.{0,3,5}.*` (the conv stack, `FrameEncoder`) and
`depth_embedding_after.layers.0.{0,1}.*` (the temporal transformer, `TemporalMixer`).
The masked-video encoder is the odd one: `masked_embedding` + `mask_embedding_after`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vcomp.model.attention import attention


def module_names(condition: str) -> tuple[str, str]:
    """State-dict names of a condition's conv stack and temporal transformer."""
    after = "mask" if condition == "masked" else condition  # published quirk
    return f"{condition}_embedding", f"{after}_embedding_after"


class FrameEncoder(nn.Sequential):
    """conv3x3 -> SiLU -> pool -> conv3x3 s2 -> SiLU -> conv3x3 s2, applied frame by frame.

    The pool is `AdaptiveAvgPool2d(pool_size)` as published (128 for 256^2 video); with
    `pool_size=None` it pools to 4x the requested output grid, so any input resolution
    lands on the latent grid. Keys: 0 (conv), 3 (conv), 5 (conv).
    """

    def __init__(self, in_ch: int, hidden: int, out_ch: int, pool_size: int | None):
        pool = pool_size if pool_size is not None else 1  # placeholder, sized in forward
        super().__init__(
            nn.Conv2d(in_ch, hidden, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(pool),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, out_ch, 3, stride=2, padding=1),
        )
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x [N, C, H, W] -> [N, out_ch, *grid]"""
        pool = (self.pool_size,) * 2 if self.pool_size is not None else (4 * grid[0], 4 * grid[1])
        x = F.silu(self[0](x))
        x = F.adaptive_avg_pool2d(x, pool)
        x = F.silu(self[3](x))
        return self[5](x)


class _Attention(nn.Module):
    """Keys: to_qkv (no bias), to_out.0"""

    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x):
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        return self.to_out(attention(q, k, v, self.heads))


class _PreNormAttention(nn.Module):
    """x + attn(LayerNorm(x)). Keys: norm, fn"""

    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return x + self.fn(self.norm(x))


class _FeedForward(nn.Module):
    """Linear (4x) -> GELU -> Linear (no norm; the caller adds the residual).
    Keys: net.0.0, net.2"""

    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU()),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
        )

    def forward(self, x):
        return self.net(x)


class TemporalMixer(nn.Module):
    """The published `Transformer_v2`: self-attention over the frames of each pixel."""

    def __init__(self, dim, heads=2, dim_head=None, ff_mult=4, depth=1, dropout=0.05):
        super().__init__()
        dim_head = dim_head or dim
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    _PreNormAttention(dim, _Attention(dim, heads, dim_head, dropout)),
                    _FeedForward(dim, ff_mult * dim, dropout),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, T, C] -> [N, T, C]"""
        for attn, ff in self.layers:
            x = attn(x)
            x = x + ff(x)
        return x


def stc_encode(
    frame_encoder: FrameEncoder,
    mixer: TemporalMixer,
    cond: torch.Tensor,
    frames: int,
    grid: tuple[int, int],
) -> torch.Tensor:
    """Encode one condition: [B, C, T, H, W] (or [B, C, H, W]) -> [B, concat_dim, frames, *grid].

    A 4-D input, or a 5-D input with T == 1, is one image for the whole clip. It is encoded
    once and broadcast over `frames`; this equals encoding the image repeated `frames` times
    (the published way), since attention over identical frames returns each frame unchanged.
    """
    if cond.ndim == 4:
        cond = cond.unsqueeze(2)
    b, t = cond.shape[0], cond.shape[2]
    x = frame_encoder(rearrange(cond, "b c t h w -> (b t) c h w"), grid)
    h, w = x.shape[-2:]  # == grid unless a fixed pool size does not fit it (checked by the caller)
    x = rearrange(x, "(b t) c h w -> (b h w) t c", b=b)
    x = mixer(x)
    x = rearrange(x, "(b h w) t c -> b c t h w", b=b, h=h, w=w)
    return x.expand(-1, -1, frames, -1, -1) if t == 1 and frames != 1 else x
