"""The paper's video metrics, plus PSNR.

- **Frame consistency** (VideoComposer, sec. 4): the mean cosine similarity of the image
  embeddings of consecutive frames. With `open_clip_pytorch_model.bin` (OpenCLIP ViT-H-14) in the
  weights folder the embedding is CLIP's `encode_image`, as in the paper. Without it, a documented
  fallback, `frame-stats-v1` (see `fallback_embedding`): a colour-statistics + layout descriptor.
  Fallback values are only comparable with other fallback values, not with the paper's numbers
  (CLIP similarities of natural consecutive frames sit near 0.9-0.99; the fallback's scale is its
  own). `frame_embedder()` says which one is in use.
- **Motion-control error**: the mean per-pixel Euclidean distance between the motion field of the
  generated video and the conditioning field. The generated field is extracted exactly like a
  condition (`vcomp.conditions.motion.motion_from_frames`: H.264 round trip, codec block vectors),
  at the size of the generated frames (the condition is rescaled to it if needed); the mean runs
  over frames 1..T-1 (frame 0 has no motion) and all pixels, in pixels per frame.
- **PSNR** in dB with peak 255, optionally over a mask (inf for identical inputs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vcomp.errors import InputError

FALLBACK = "frame-stats-v1"
LAYOUT_SIZE = 16  #: grey level and edge maps are pooled to 16 x 16
FALLBACK_WEIGHTS = (0.5, 0.6, 0.6)  #: colour statistics, grey layout, edge layout


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames must be RGB uint8 [T,H,W,3], got {frames.dtype} {list(frames.shape)}")
    return frames


# ----------------------------------------------------------------------------------------------
# frame consistency
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameEmbedder:
    """`embed(frames [T,H,W,3] uint8) -> [T,D] float32, unit rows`, and its name."""

    name: str
    embed: Callable[[np.ndarray], np.ndarray]
    clip: bool = False


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def fallback_embedding(frames: np.ndarray) -> np.ndarray:
    """`frame-stats-v1`: `[T,H,W,3]` uint8 -> `[T, 64 + 2*16*16]` float32, unit rows.

    Per frame, three blocks, each unit length before weighting (0.5, 0.6, 0.6), then the whole
    vector L2-normalised:
      - the `colour-stats-v1` palette embedding (`vcomp.conditions.style.colour_stats_embedding`);
      - the grey level pooled to 16 x 16 (area average), minus its mean (the layout of light/dark);
      - the Sobel gradient magnitude of the grey frame pooled to 16 x 16, minus its mean (where the
        edges are).
    A block that is constant (a flat frame) is zeros. Identical frames score 1; frames of
    independent noise share their palette but not their layout and score about 0.2-0.3.
    """
    import cv2

    from vcomp.conditions.style import colour_stats_embedding

    frames = _check_frames(frames)
    wc, wg, we = FALLBACK_WEIGHTS
    rows = []
    for frame in frames:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        blocks = []
        for plane in (grey, np.sqrt(gx * gx + gy * gy)):
            pooled = cv2.resize(plane, (LAYOUT_SIZE, LAYOUT_SIZE), interpolation=cv2.INTER_AREA).ravel()
            pooled = pooled - pooled.mean()
            norm = float(np.linalg.norm(pooled))
            blocks.append(pooled / norm if norm > 1e-6 else np.zeros_like(pooled))
        rows.append(np.concatenate([wc * colour_stats_embedding(frame), wg * blocks[0], we * blocks[1]]))
    return _unit(np.stack(rows))


def _clip_embed(path: str, device: str) -> Callable[[np.ndarray], np.ndarray]:
    def embed(frames: np.ndarray) -> np.ndarray:
        import torch
        from PIL import Image

        from vcomp.conditions.style import _load_clip  # the same cached model the style extractor uses

        model, preprocess = _load_clip(path, device)
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), 16):
                batch = torch.stack([preprocess(Image.fromarray(f)) for f in frames[start:start + 16]]).to(device)
                out.append(model.encode_image(batch).float().cpu().numpy())
        return _unit(np.concatenate(out))

    return embed


def frame_embedder(weights_dir: str | os.PathLike | None = None, device: str = "cpu",
                   use_clip: bool = True) -> FrameEmbedder:
    """CLIP ViT-H-14's image tower when `open_clip_pytorch_model.bin` is found (vcomp.weights
    lookup: --weights, $VCOMP_HOME, ~/.cache/vcomp), else the `frame-stats-v1` fallback."""
    if use_clip:
        from vcomp.weights.files import find_published

        path = find_published("clip", weights_dir)
        if path is not None:
            return FrameEmbedder("open_clip-ViT-H-14", _clip_embed(str(path), str(device)), clip=True)
    return FrameEmbedder(FALLBACK, fallback_embedding)


def frame_consistency(frames: np.ndarray, embedder: FrameEmbedder | Callable | None = None) -> float:
    """Mean cosine similarity of the embeddings of consecutive frames (1.0 for a single frame).
    `embedder`: a FrameEmbedder, a callable frames -> [T,D], or None for `frame_embedder()`."""
    frames = _check_frames(frames)
    if len(frames) < 2:
        return 1.0
    embedder = frame_embedder() if embedder is None else embedder
    embed = embedder.embed if isinstance(embedder, FrameEmbedder) else embedder
    e = _unit(np.asarray(embed(frames), np.float32))
    return float((e[1:] * e[:-1]).sum(-1).mean())


# ----------------------------------------------------------------------------------------------
# motion control
# ----------------------------------------------------------------------------------------------
def motion_control_error(generated_frames: np.ndarray, condition_motion: np.ndarray, fps: float = 8.0,
                         generated_motion: np.ndarray | None = None) -> float:
    """Mean over frames 1.. and pixels of ||m_gen - m_cond||_2 (pixels per frame).

    m_gen = `motion_from_frames(generated_frames, fps)` (the H.264 extractor conditions come from;
    pass `generated_motion` to reuse one already extracted); the condition `[T,2,H,W]` is rescaled
    to the generated size when it differs. Frame counts must match."""
    from vcomp.conditions.motion import motion_from_frames, resize_motion

    frames = _check_frames(generated_frames)
    cond = np.asarray(condition_motion, np.float32)
    if cond.ndim != 4 or cond.shape[1] != 2:
        raise InputError(f"condition motion must be [T,2,H,W], got {list(cond.shape)}")
    if len(cond) != len(frames):
        raise InputError(f"generated video has {len(frames)} frames but the motion condition {len(cond)}")
    h, w = frames.shape[1:3]
    if cond.shape[-2:] != (h, w):
        cond = resize_motion(cond, (w, h))
    gen = motion_from_frames(frames, fps) if generated_motion is None else np.asarray(generated_motion, np.float32)
    if len(frames) < 2:
        return 0.0
    diff = gen[1:] - cond[1:]
    return float(np.sqrt((diff * diff).sum(1)).mean())


# ----------------------------------------------------------------------------------------------
# PSNR
# ----------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, peak: float = 255.0) -> float:
    """PSNR (dB) of `a` against `b` (same shape, [..., H, W, C] with values in 0..peak) over the
    pixels where `mask` is true (broadcast to a.shape[:-1]; a ConditionSet-style [T,1,H,W] mask is
    accepted for [T,H,W,C] frames). inf when identical there; nan when the mask is empty."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise InputError(f"psnr needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    sq = ((a - b) ** 2).mean(-1)  # per pixel, over channels
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim == sq.ndim + 1 and mask.shape[1] == 1:  # [T,1,H,W]
            mask = mask[:, 0]
        sel = np.broadcast_to(mask.astype(bool), sq.shape)
        if not sel.any():
            return float("nan")
        sq = sq[sel]
    mse = float(sq.mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)
