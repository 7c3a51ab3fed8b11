"""Attention: one `attention()` function (PyTorch SDPA) and the SD-style transformer block.

`attention()` uses `torch.nn.functional.scaled_dot_product_attention`, which picks a flash /
memory-efficient kernel on CUDA and a fused kernel on CPU. xformers is used only when it is
installed, the tensors are on CUDA and no bias is given; it is never required.

Memory: `set_attention_chunk_size(n)` splits the batch axis of every attention call into
chunks of n ("attention slicing"), trading speed for peak memory.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

_CHUNK_SIZE: int | None = None


def set_attention_chunk_size(n: int | None) -> None:
    """Process attention in chunks of at most `n` batch rows; None = all at once."""
    global _CHUNK_SIZE
    if n is not None and n < 1:
        raise ValueError("chunk size must be >= 1 or None")
    _CHUNK_SIZE = n


@functools.cache
def _xformers_ops():
    try:
        import xformers.ops  # type: ignore[import-not-found]
    except Exception:  # not installed, or a broken build: SDPA is the default anyway
        return None
    return xformers.ops


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head attention on packed heads.

    q: [B, N, H*D], k and v: [B, M, H*D]; bias: additive [H, N, M], shared by the batch.
    Returns [B, N, H*D]. Scale is 1/sqrt(D), as in the published model.
    """
    xops = _xformers_ops() if q.is_cuda and bias is None and _CHUNK_SIZE is None else None
    if xops is not None:
        q, k, v = (rearrange(t, "b n (h d) -> b n h d", h=heads).contiguous() for t in (q, k, v))
        out = xops.memory_efficient_attention(q, k, v)
        return rearrange(out, "b n h d -> b n (h d)")

    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    if bias is not None:
        bias = bias.to(q.dtype)
    if _CHUNK_SIZE is None or q.shape[0] <= _CHUNK_SIZE:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    q[i : i + _CHUNK_SIZE],
                    k[i : i + _CHUNK_SIZE],
                    v[i : i + _CHUNK_SIZE],
                    attn_mask=bias,
                )
                for i in range(0, q.shape[0], _CHUNK_SIZE)
            ]
        )
    return rearrange(out, "b h n d -> b n (h d)")


class CrossAttention(nn.Module):
    """Attention of x to `context` (self-attention when context is None). Keys: to_q/k/v, to_out.0"""

    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x, context=None, bias=None):
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, bias)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP, 4x wide. Keys: net.0.proj, net.2"""

    def __init__(self, dim, mult=4, dropout=0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, attention to context, feed-forward (SD 2.1).

    With `context=None` the second attention is a second self-attention; that is how the
    published TemporalTransformer uses it (its attn2.to_k/to_v are dim -> dim).
    Sub-modules are created in the published order (attn1, ff, attn2, norm1-3) so the
    state_dict lists keys in the same order as the official checkpoint.
    """

    def __init__(self, dim, heads, dim_head, context_dim=None, dropout=0.0):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context=None, bias=None):
        x = x + self.attn1(self.norm1(x), bias=bias)
        x = x + self.attn2(self.norm2(x), context, bias=bias if context is None else None)
        return x + self.ff(self.norm3(x))
