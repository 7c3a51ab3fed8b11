"""Frame geometry: parse sizes, scale-to-cover and centre-crop."""

from __future__ import annotations

import re

import numpy as np

from vcomp.errors import InputError


def parse_size(text: str | None, *, multiple: int = 1) -> tuple[int, int] | None:
    """Parse 'WxH' (or a single 'N' for a square) into (W, H); None passes through."""
    if text is None or text == "":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", str(text))
    if not match:
        raise InputError(f"--size {text!r} is not WIDTHxHEIGHT (e.g. 256x256)")
    w = int(match.group(1))
    h = int(match.group(2) or match.group(1))
    if w < 2 or h < 2 or w > 8192 or h > 8192:
        raise InputError(f"--size {text!r} is out of range: each side must be 2..8192 pixels")
    if multiple > 1 and (w % multiple or h % multiple):
        raise InputError(f"--size {text!r}: width and height must be multiples of {multiple} (e.g. {w // multiple * multiple or multiple}x{h // multiple * multiple or multiple})")
    return w, h


def cover_geometry(src: tuple[int, int], dst: tuple[int, int]) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """Scale factor, scaled size and crop offset that make `src` (W,H) cover `dst` (W,H)."""
    sw, sh = src
    dw, dh = dst
    scale = max(dw / sw, dh / sh)
    scaled = (max(dw, int(round(sw * scale))), max(dh, int(round(sh * scale))))
    offset = ((scaled[0] - dw) // 2, (scaled[1] - dh) // 2)
    return scale, scaled, offset


def resize_cover(image: np.ndarray, size: tuple[int, int], interpolation: int | None = None) -> np.ndarray:
    """Resize `[H,W,...]` so it covers `size` (W,H) keeping aspect, then centre-crop to it."""
    import cv2

    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image
    _, scaled, (ox, oy) = cover_geometry((w, h), size)
    if interpolation is None:
        interpolation = cv2.INTER_AREA if scaled[0] < w else cv2.INTER_LINEAR
    resized = cv2.resize(image, scaled, interpolation=interpolation)
    if resized.ndim < image.ndim:
        resized = resized[..., None]
    return resized[oy:oy + size[1], ox:ox + size[0]]


def resize_frames(frames: np.ndarray, size: tuple[int, int], interpolation: int | None = None) -> np.ndarray:
    """`resize_cover` for every frame of `[T,H,W,...]`."""
    if (frames.shape[2], frames.shape[1]) == tuple(size):
        return frames
    return np.stack([resize_cover(f, size, interpolation) for f in frames])
