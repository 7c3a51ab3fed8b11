"""A temporal refiner: residual 3D convolutions over a decoded clip that remove frame-to-frame flicker.

Why: the embedded model's autoencoder decodes each frame on its own, and the latents a sampler
produces differ from frame to frame (by ~0.06 per value) even where the scene is still. The
decoder turns that jitter into flicker, which H.264 reads as motion: on held-out world clips,
decoding the source's own latents plus 0.06 of per-frame noise raised the motion error from 0.59
to 1.48 px/frame (a frozen frame scores 0.29). Stable Video Diffusion answers the same problem
with temporal layers inside its decoder (diffusers' `AutoencoderKLTemporalDecoder`); this is the
smallest version of that idea that leaves a trained decoder, and the UNet's latent space,
untouched: a few 3 x 3 x 3 convolutions after the decoder, whose receptive field (2L + 1 frames)
lets it tell a still background from a moving object, trained to map noisy decodes back to the
clean clip (`vcomp.train.refiner`). The last layer starts at zero, so an untrained refiner is
the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class TemporalRefiner(nn.Module):
    """video [B, 3, T, H, W] in [-1, 1] -> the same shape: video + a learned correction."""

    def __init__(self, width: int = 16, layers: int = 4):
        super().__init__()
        if width < 1 or layers < 2:
            raise ValueError(f"a temporal refiner needs width >= 1 and layers >= 2, got {width}, {layers}")
        self.width, self.layers = int(width), int(layers)

        def conv(cin: int, cout: int) -> nn.Conv3d:  # replicate padding: no dark border, no fade at the clip ends
            return nn.Conv3d(cin, cout, 3, padding=1, padding_mode="replicate")

        body: list[nn.Module] = [conv(3, width)]
        for _ in range(layers - 2):
            body += [nn.SiLU(), conv(width, width)]
        body += [nn.SiLU(), conv(width, 3)]
        self.net = nn.Sequential(*body)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def config(self) -> dict:
        return {"width": self.width, "layers": self.layers}

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected a video [B, 3, T, H, W], got {list(video.shape)}")
        return video + self.net(video)
