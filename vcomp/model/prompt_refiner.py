"""A prompt refiner: a small text-conditioned stage after the embedded model's decoder that redraws
each object's outline as the prompt names it.

Why: at 64 x 64 the embedded model's latent has 8 x 8 cells, so a 14-24 px object covers two or
three of them and its shape lives in a few channel values. The UNet gets an object's colour,
place and motion right but draws its outline as a blob that settles on a shape at mid noise,
mostly not the named one (docs/embedded-model-history.md, "Where shapes are lost"); every attempt to make
the UNet bind shape words on this machine's budget left it near chance. Cascaded video models
(Imagen Video, Show-1) condition their later, higher-resolution stages on the text too; this is
the smallest such stage: it sees the decoded clip and the prompt's tokens and corrects the clip.
A three-level convolutional U-Net (per-frame 3 x 3 convolutions, one 3-frame temporal mix per
level) whose coarsest level (a quarter of the resolution, so one cell sees a whole object)
cross-attends to the text tokens, so each object can find its own words ("a red star and a blue
circle"). The last layer starts at zero: an untrained refiner is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vcomp.model.attention import CrossAttention


def _spatial(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    kernel = (1, 3, 3) if stride == 1 else (1, 4, 4)
    return nn.Conv3d(cin, cout, kernel, stride=(1, stride, stride), padding=(0, 1, 1), padding_mode="replicate")


class _Block(nn.Module):
    """Residual: per-frame 3 x 3 conv, then a 3-frame temporal conv (keeps an outline steady)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(8, width), width)
        self.spatial = _spatial(width, width)
        self.temporal = nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), padding_mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.spatial(F.silu(self.norm(x)))
        return x + self.temporal(F.silu(h))


class _TextAttention(nn.Module):
    """Cross-attention of every cell of every frame to the prompt's tokens (the UNet's own
    `CrossAttention`, after a group norm), as a residual."""

    def __init__(self, width: int, context_dim: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(min(8, width), width)
        self.attn = CrossAttention(width, context_dim, heads=heads, dim_head=width // heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        q = rearrange(self.norm(x), "b c t h w -> b (t h w) c")
        a = self.attn(q, context.to(q.dtype))
        return x + rearrange(a, "b (t h w) c -> b c t h w", t=t, h=h, w=w)


class PromptRefiner(nn.Module):
    """(video [B, 3, T, H, W] in [-1, 1], text tokens [B, L, context_dim]) -> video + a correction.
    H and W must be multiples of 4."""

    def __init__(self, context_dim: int = 128, width: int = 16):
        super().__init__()
        if width < 8 or context_dim < 1:
            raise ValueError(f"a prompt refiner needs width >= 8 and context_dim >= 1, got {width}, {context_dim}")
        self.context_dim, self.width = int(context_dim), int(width)
        w1, w2, w3 = width, 2 * width, 4 * width
        self.stem = _spatial(3, w1)
        self.enc1 = _Block(w1)
        self.down1 = _spatial(w1, w2, stride=2)
        self.enc2 = _Block(w2)
        self.down2 = _spatial(w2, w3, stride=2)
        self.mid1 = _Block(w3)
        self.attn = _TextAttention(w3, context_dim)
        self.mid2 = _Block(w3)
        self.up2 = _spatial(w3 + w2, w2)
        self.dec2 = _Block(w2)
        self.up1 = _spatial(w2 + w1, w1)
        self.dec1 = _Block(w1)
        # Normalised before the head: without it a run's decoder stream grew to |x| ~ 150, the
        # SiLU in front of the head gave ~0 (subnormal) everywhere and the stage stayed the identity
        self.out_norm = nn.GroupNorm(min(8, w1), w1)
        self.head = nn.Conv3d(w1, 3, (1, 3, 3), padding=(0, 1, 1), padding_mode="replicate")
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def config(self) -> dict:
        return {"context_dim": self.context_dim, "width": self.width}

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[2:], mode="nearest")

    def forward(self, video: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[-1] % 4 or video.shape[-2] % 4:
            raise ValueError(f"expected a video [B, 3, T, H, W] with H, W multiples of 4, got {list(video.shape)}")
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(f"expected text tokens [B, L, {self.context_dim}], got {list(context.shape)}")
        if context.shape[0] != video.shape[0]:
            context = context.expand(video.shape[0], -1, -1)
        s1 = self.enc1(self.stem(video))
        s2 = self.enc2(self.down1(F.silu(s1)))
        m = self.mid2(self.attn(self.mid1(self.down2(F.silu(s2))), context))
        d2 = self.dec2(self.up2(torch.cat([self._up(m, s2), s2], 1)))
        d1 = self.dec1(self.up1(torch.cat([self._up(d2, s1), s1], 1)))
        return video + self.head(F.silu(self.out_norm(d1)))
