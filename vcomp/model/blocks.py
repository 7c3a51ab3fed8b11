"""The layers of the 3D UNet. Tensors between layers are frames, `[(b f), c, h, w]`; the
temporal layers take `batch` to unfold them into clips, `[b, c, f, h, w]`.

Module and key names follow the published `unet_sd.py`, including its typo
`ResBlock.temopral_conv`, so the official checkpoint loads without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vcomp.model.attention import BasicTransformerBlock, CrossAttention


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B] -> [B, dim], cos first then sin (the published order)."""
    half = dim // 2
    t = t.float()
    freqs = torch.pow(10000, -torch.arange(half, device=t.device, dtype=t.dtype).div(half))
    args = torch.outer(t, freqs)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class TemporalConvBlock(nn.Module):
    """Published `TemporalConvBlock_v2`: four (GroupNorm, SiLU, [Dropout], Conv3d (3,1,1))
    stages along time, added to the input. The last conv starts at zero (an identity block).
    Keys: conv1.{0,2}, conv{2,3,4}.{0,3}."""

    def __init__(self, dim: int, groups: int = 32, dropout: float = 0.1):
        super().__init__()

        def conv(with_dropout: bool) -> nn.Sequential:
            layers = [nn.GroupNorm(groups, dim), nn.SiLU()]
            layers += [nn.Dropout(dropout)] if with_dropout else []
            return nn.Sequential(*layers, nn.Conv3d(dim, dim, (3, 1, 1), padding=(1, 0, 0)))

        self.conv1 = conv(False)
        self.conv2 = conv(True)
        self.conv3 = conv(True)
        self.conv4 = conv(True)
        zero_module(self.conv4[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [b, c, f, h, w] -> same"""
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """2D residual block with the time embedding added, then a temporal conv stack.
    Keys: in_layers.{0,2}, emb_layers.1, out_layers.{0,3}, skip_connection, temopral_conv."""

    def __init__(self, in_ch, emb_dim, out_ch=None, dropout=0.0, groups=32, temporal_dropout=0.1):
        super().__init__()
        out_ch = out_ch or in_ch
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_ch),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if out_ch == in_ch else nn.Conv2d(in_ch, out_ch, 1)
        self.temopral_conv = TemporalConvBlock(out_ch, groups, temporal_dropout)  # sic

    def forward(self, x, emb, batch: int):
        """x [(b f), c, h, w], emb [(b f), emb_dim]"""
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        h = rearrange(h, "(b f) c h w -> b c f h w", b=batch)
        h = self.temopral_conv(h)
        return rearrange(h, "b c f h w -> (b f) c h w")


class SpatialTransformer(nn.Module):
    """SD-2.1 transformer over the pixels of each frame, with cross-attention to the context
    tokens (text + style). Linear proj_in/proj_out (`use_linear=True`)."""

    def __init__(self, dim, heads, dim_head, context_dim, depth=1, dropout=0.0, groups=32):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout) for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Linear(inner, dim))

    def forward(self, x, context):
        """x [(b f), c, h, w], context [(b f), L, context_dim]"""
        h, w = x.shape[-2:]
        y = rearrange(self.norm(x), "n c h w -> n (h w) c")
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y)
        return x + rearrange(y, "n (h w) c -> n c h w", h=h, w=w)


class RelativePositionBias(nn.Module):
    """Learned per-head bias for frame distance j - i, clipped to +-max_distance (optional;
    the published temporal transformer has none). Starts at zero."""

    def __init__(self, heads: int, max_distance: int):
        super().__init__()
        self.max_distance = max_distance
        self.table = nn.Embedding(2 * max_distance + 1, heads)
        nn.init.zeros_(self.table.weight)

    def forward(self, frames: int) -> torch.Tensor:
        pos = torch.arange(frames, device=self.table.weight.device)
        rel = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance)
        return rearrange(self.table(rel + self.max_distance), "i j h -> h i j")


def frame_positions(frames: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Sinusoidal embedding of the frame indices 0..frames-1 -> [frames, dim] (any clip length)."""
    return timestep_embedding(torch.arange(frames, device=device), dim).to(dtype or torch.float32)


#: the clip coordinates TextCoordinates multiplies the caption with, each in [-1, 1]: the frame's
#: place in the clip (f) times the cell's x and y, then f, x and y alone
COORDINATE_BASIS = ("f*x", "f*y", "f", "x", "y")


def clip_coordinates(frames: int, height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """[len(COORDINATE_BASIS), frames, height, width]; a 1-frame clip has f = 0."""
    def axis(n):
        return torch.linspace(-1, 1, n, device=device) if n > 1 else torch.zeros(1, device=device)

    f, y, x = torch.meshgrid(axis(frames), axis(height), axis(width), indexing="ij")
    return torch.stack([f * x, f * y, f, x, y]).to(dtype or torch.float32)


class TextCoordinates(nn.Module):
    """Features of the caption times the clip's coordinates, added to the UNet's first feature map.

    Why: "moving left" says where an object is in each frame - right of centre early, left late,
    a term in f * x - so drawing it takes a product of the caption, the frame index and the cell's
    position. Built from zero-initialised parts that product is a saddle: the gradient of each
    factor is proportional to the others, all ~0, and the embedded model learnt no direction words
    in thousands of steps. Here the product is formed first, with fixed coordinates and a random
    (not zero) map of the caption; only the output map starts at zero, and its gradient is then
    first-order. Zero at initialisation, so it is addable to a trained model.

    The caption's features are max-pooled over its tokens (is any word firing this feature?): a
    mean over 32 tokens left the direction word 0.5% of the pooled features of the embedded model
    (whose text encoder barely tells "left" from "right"), too little signal to learn from.
    """

    def __init__(self, context_dim: int, channels: int, rank: int = 32):
        super().__init__()
        self.norm = nn.LayerNorm(context_dim)
        self.text = nn.Linear(context_dim, rank)
        k = len(COORDINATE_BASIS)
        self.weight = nn.Parameter(torch.zeros(channels, rank, k))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, context: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """context [B, L, C] -> features [B * frames, channels, height, width]."""
        caption = F.gelu(self.text(self.norm(context))).amax(1)  # per token, then pooled: [B, rank]
        basis = clip_coordinates(frames, height, width, context.device, context.dtype)
        out = torch.einsum("br,crk,kfhw->bfchw", caption, self.weight.to(context.dtype), basis)
        out = out + self.bias.to(context.dtype).view(1, 1, -1, 1, 1)
        return rearrange(out, "b f c h w -> (b f) c h w")


class TemporalTransformer(nn.Module):
    """Self-attention along time for every pixel (published `TemporalTransformer` with
    `only_self_att=True`: both attn1 and attn2 attend over frames; context is unused).
    GroupNorm over the whole clip, Conv1d k=1 proj_in/proj_out. `frame_pos`: absolute frame
    positions enter the tokens through a zero-initialised linear map (`ModelConfig.temporal_frame_pos`).
    `text_context_dim`: the tokens first attend to the text/style context through a zero-initialised
    output map (`ModelConfig.temporal_text_attention`)."""

    def __init__(self, dim, heads, dim_head, depth=1, dropout=0.0, groups=32, rel_pos_max_distance=None,
                 frame_pos=False, text_context_dim=None):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Conv1d(dim, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, None, dropout) for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Conv1d(inner, dim, 1))
        self.rel_pos = RelativePositionBias(heads, rel_pos_max_distance) if rel_pos_max_distance else None
        self.frame_pos = zero_module(nn.Linear(inner, inner)) if frame_pos else None
        self.text_norm = nn.LayerNorm(inner) if text_context_dim else None
        self.text_attn = CrossAttention(inner, text_context_dim, heads, dim_head, dropout) if text_context_dim else None
        if self.text_attn is not None:
            zero_module(self.text_attn.to_out[0])

    def forward(self, x, batch: int, context=None):
        """x [(b f), c, h, w] -> same; context [(b f), L, context_dim], the same for every frame of a
        clip (read only with `text_context_dim`)"""
        x = rearrange(x, "(b f) c h w -> b c f h w", b=batch)
        b, _, f, h, w = x.shape
        y = rearrange(self.norm(x), "b c f h w -> (b h w) c f")
        y = rearrange(self.proj_in(y), "n c f -> n f c")
        if self.frame_pos is not None:
            y = y + self.frame_pos(frame_positions(f, y.shape[-1], y.device, y.dtype))
        if self.text_attn is not None and context is not None:
            # every (pixel, frame) token of a clip attends to that clip's context: one query row per clip
            q = rearrange(self.text_norm(y), "(b n) f c -> b (n f) c", b=b)
            clip_context = rearrange(context, "(b f) l c -> b f l c", b=b)[:, 0]
            y = y + rearrange(self.text_attn(q, clip_context), "b (n f) c -> (b n) f c", f=f)
        bias = self.rel_pos(f) if self.rel_pos is not None else None
        for block in self.transformer_blocks:
            y = block(y, bias=bias)
        y = self.proj_out(rearrange(y, "n f c -> n c f"))
        x = x + rearrange(y, "(b h w) c f -> b c f h w", b=b, h=h, w=w)
        return rearrange(x, "b c f h w -> (b f) c h w")


class Downsample(nn.Module):
    """3x3 conv, stride 2. Key: op"""

    def __init__(self, dim):
        super().__init__()
        self.op = nn.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2, then 3x3 conv. Key: conv"""

    def __init__(self, dim):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
