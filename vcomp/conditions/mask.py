"""Mask sequences `[T,1,H,W]` float32 in {0, 1}, 1 = region to regenerate (the published "hole").

From a file (`mask_from_video_or_image`): a still image is repeated over time, a video is resampled to
`num_frames` by nearest index; either is scaled to cover `size` and centre-cropped like the clip
(area averaging when shrinking, bilinear when enlarging), and thresholded *after* resizing, so edges
land where the resampled coverage crosses the threshold. The value of a pixel is:

    PNG/TIFF/WebP with a non-constant alpha   alpha (opaque = 1, transparent = 0)
    otherwise                                  max(R, G, B) (white or any bright paint = 1; black = 0)

`invert=True` swaps the meaning (for masks that mark the region to keep).

From a box (`mask_from_box`): "x,y,w,h" as fractions of the frame width and height.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from vcomp.errors import InputError
from vcomp.io.image import read_image_unchanged

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


# -- reading --------------------------------------------------------------------------------
def to_unit_channels(image: np.ndarray) -> np.ndarray:
    """Integer image -> float32 `[H,W,C]` in [0, 1] (C = 1, 3 or 4)."""
    scale = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    image = image.astype(np.float32) / scale
    return image[..., None] if image.ndim == 2 else image


def mask_values(channels: np.ndarray) -> np.ndarray:
    """`[H,W,C]` in [0, 1] -> `[H,W]` coverage: alpha if present and not constant, else max channel."""
    if channels.shape[-1] == 4:
        alpha = channels[..., 3]
        if alpha.max() - alpha.min() > 1e-6:
            return alpha
        channels = channels[..., :3]
    return channels.max(axis=-1)


def mask_from_video_or_image(path: str | os.PathLike, num_frames: int, size: tuple[int, int],
                             threshold: float = 0.5, invert: bool = False) -> np.ndarray:
    """A mask image or video (any size, any frame count) -> `[num_frames,1,H,W]` in {0, 1} at
    `size` (W, H). InputError names the file when it is neither an image nor a video."""
    from vcomp.io import resize_cover

    path = Path(path)
    _check_request(num_frames, size)
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"mask threshold must be in [0, 1) (got {threshold})")
    if not path.exists():
        raise InputError(f"mask {path}: no such file; check the path")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        values = mask_values(to_unit_channels(read_image_unchanged(path)))
        values = resize_cover(np.ascontiguousarray(values), size)
        frames = (values > threshold)[None]
    else:
        frames = _video_mask_frames(path, size, threshold)
    frames = frames[_nearest_indices(len(frames), num_frames)]
    if invert:
        frames = ~frames
    return frames[:, None].astype(np.float32)


def _video_mask_frames(path: Path, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Every frame of a video (or folder of images) as a thresholded `[N,H,W]` bool array."""
    from vcomp.io import Sampling, iter_frames, probe

    try:
        info = probe(path)
        frames = [(frame.max(axis=-1).astype(np.float32) / 255.0) > threshold
                  for _, frame in iter_frames(path, Sampling(), size, info)]
    except InputError:
        raise InputError(f"mask {path} is neither an image nor a video; give a PNG/JPEG mask, a video or a folder of frames") from None
    if not frames:
        raise InputError(f"mask {path} has no decodable frames; give a PNG/JPEG mask or a video")
    return np.stack(frames)


def _nearest_indices(available: int, wanted: int) -> np.ndarray:
    """`wanted` indices into `available` frames spread evenly in time (first -> first, last -> last)."""
    if available == 1 or wanted == 1:
        return np.zeros(wanted, dtype=np.int64)
    return np.rint(np.linspace(0, available - 1, wanted)).astype(np.int64)


# -- boxes ----------------------------------------------------------------------------------
def parse_box(text: str | tuple | list) -> tuple[float, float, float, float]:
    """'x,y,w,h' (fractions of the frame: left, top, width, height) -> floats, validated."""
    if isinstance(text, str):
        parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]
    else:
        parts = list(text)
    hint = "give --box as x,y,w,h fractions of the frame, e.g. 0.25,0.25,0.5,0.5"
    if len(parts) != 4:
        raise InputError(f"box {text!r} needs 4 numbers, got {len(parts)}; {hint}")
    try:
        x, y, w, h = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"box {text!r} is not numeric; {hint}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InputError(f"box {text!r} has a non-finite value; {hint}")
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise InputError(f"box {text!r}: x and y must be in [0, 1]; {hint}")
    if w <= 0.0 or h <= 0.0:
        raise InputError(f"box {text!r} has zero area: w and h must be > 0; {hint}")
    if x + w > 1.0 + 1e-6 or y + h > 1.0 + 1e-6:
        raise InputError(f"box {text!r} reaches outside the frame (x + w and y + h must be <= 1); {hint}")
    return x, y, w, h


def mask_from_box(box: str | tuple | list, num_frames: int, size: tuple[int, int]) -> np.ndarray:
    """A box ('x,y,w,h' fractions) -> `[num_frames,1,H,W]` with 1 inside the box, at `size` (W, H)."""
    _check_request(num_frames, size)
    x, y, w, h = parse_box(box)
    width, height = size
    x0, x1 = round(x * width), min(width, round((x + w) * width))
    y0, y1 = round(y * height), min(height, round((y + h) * height))
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {box!r} covers no pixel of a {width}x{height} frame; make it larger")
    mask = np.zeros((num_frames, 1, height, width), np.float32)
    mask[:, :, y0:y1, x0:x1] = 1.0
    return mask


def _check_request(num_frames: int, size: tuple[int, int]) -> None:
    if int(num_frames) < 1:
        raise InputError(f"a mask needs at least 1 frame (got {num_frames})")
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"mask size must be (W, H) with positive sides (got {size})")
