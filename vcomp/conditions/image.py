"""Image condition (the published `local_image`): one RGB image `[3,H,W]` float32 in [0, 1].

Not mean/std-normalised (the published pipeline feeds [0, 1] RGB, unlike `masked`, which is in
[-1, 1]). It is the first clip frame, or a user image scaled to cover the clip size and
centre-cropped; the model repeats it over time.
"""

from __future__ import annotations

import os

import numpy as np

from vcomp.errors import InputError


def image_condition(image: np.ndarray) -> np.ndarray:
    """RGB uint8 `[H,W,3]` -> `[3,H,W]` float32 in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise InputError(f"image must be RGB uint8 [H,W,3], got {image.dtype} {list(image.shape)}")
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def first_frame_condition(frames: np.ndarray) -> np.ndarray:
    """Frame 0 of an RGB uint8 clip `[T,H,W,3]` -> `[3,H,W]` in [0, 1]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise InputError(f"frames must be RGB uint8 [T,H,W,3], got {frames.dtype} {list(frames.shape)}")
    return image_condition(frames[0])


def image_condition_from_file(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """A PNG/JPEG at `size` (W, H) (scaled to cover, centre-cropped) -> `[3,H,W]` in [0, 1]."""
    from vcomp.io import read_image

    return image_condition(read_image(path, size))
