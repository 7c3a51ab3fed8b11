"""Read still images (PNG, JPEG, ...) as RGB(A) arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vcomp.errors import InputError
from vcomp.io.transform import resize_cover


def read_image_unchanged(path: str | os.PathLike) -> np.ndarray:
    """An image file as stored: `[H,W]` grey or `[H,W,C]` with C = 3 (RGB) or 4 (RGBA);
    uint8 or uint16. Masks and sketches need the alpha channel and bit depth kept."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file; check the path")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise InputError(f"{path} is not a readable image; give a PNG or JPEG file")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    return image


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Any `read_image_unchanged` result -> `[H,W,3]` uint8 RGB (alpha composited over white)."""
    if np.issubdtype(image.dtype, np.integer) and image.dtype != np.uint8:
        image = (image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)).round().astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255.0
        image = (image[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(image)


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """`[H,W,3]` uint8 RGB, optionally scaled to cover `size` (W,H) and centre-cropped."""
    image = to_rgb8(read_image_unchanged(path))
    return resize_cover(image, size) if size else image
