"""Read still images (PNG, JPEG, ...) as RGB uint8 arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vcomp.errors import InputError
from vcomp.io.transform import resize_cover


def read_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """`[H,W,3]` uint8 RGB, optionally scaled to cover `size` (W,H) and centre-cropped."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file; check the path")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"{path} is not a readable image; give a PNG or JPEG file")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return resize_cover(image, size) if size else image
