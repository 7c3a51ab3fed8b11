"""Sketch conditions: edge maps `[T,1,H,W]` / `[1,H,W]` float32 in [0, 1], 1 = stroke.

Published annotator: PiDiNet (`table5_pidinet.pth`) followed by the sketch-simplification GAN
(`sketch_simplification_gan.pth`), giving soft white-on-black lines. Their loaders are not implemented
yet (TODO below), so sketches come from the classical fallback, Canny, and `info` says so.

Canny (`extractor: "canny"`): grey frame, Gaussian blur (sigma = max(0.8, min(H, W) / 384)),
`cv2.Canny` with the L2 gradient. Unless given, the thresholds come from the clip's median grey level
m (one pair for the whole clip, so edges don't flicker): low = clip(0.66 m, 10, 170), high = 2 low.
The output is binary, {0, 1}; `thickness` > 1 dilates the 1-px lines (PiDiNet lines are ~2-4 px at
384 px).

A user sketch image is read as-is (not re-run through an edge detector, unlike the published
pipeline): its polarity is detected from the median (light paper -> dark strokes become 1), and the
paper level maps to 0 and the darkest ink to 1.
"""

from __future__ import annotations

import os

import numpy as np

from vcomp.conditions.depth import check_frames, find_weights
from vcomp.errors import InputError

PIDINET_FILE = "table5_pidinet.pth"
CLEANER_FILE = "sketch_simplification_gan.pth"


def canny_thresholds(grey: np.ndarray) -> tuple[float, float]:
    """(low, high) from the median of a uint8 grey image or clip."""
    median = float(np.median(grey))
    low = float(np.clip(0.66 * median, 10.0, 170.0))
    return low, 2.0 * low


def extract_sketch(frames: np.ndarray, low: float | None = None, high: float | None = None,
                   thickness: int = 1, weights_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """`[T,H,W,3]` uint8 RGB -> (`[T,1,H,W]` float32 in {0, 1}, 1 = edge, info)."""
    import cv2

    frames = check_frames(frames)
    if (low is None) != (high is None):
        raise InputError("give both Canny thresholds (low and high) or neither")
    if low is not None and not (0 <= low <= high):
        raise InputError(f"Canny thresholds must satisfy 0 <= low <= high (got {low}, {high})")
    if thickness < 1:
        raise InputError(f"sketch thickness must be at least 1 pixel (got {thickness})")
    t, h, w = frames.shape[:3]
    sigma = max(0.8, min(h, w) / 384.0)
    greys = np.stack([cv2.GaussianBlur(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (0, 0), sigma) for f in frames])
    auto = low is None
    if auto:
        low, high = canny_thresholds(greys[:, ::2, ::2])
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thickness, thickness)) if thickness > 1 else None
    edges = []
    for grey in greys:
        e = cv2.Canny(grey, low, high, L2gradient=True)
        edges.append(cv2.dilate(e, kernel) if kernel is not None else e)
    sketch = (np.stack(edges)[:, None] > 0).astype(np.float32)
    info = {"extractor": "canny", "fallback": True, "low": float(low), "high": float(high),
            "thresholds": "auto-median" if auto else "given", "thickness": thickness}
    pidinet = find_weights(PIDINET_FILE, weights_dir)
    if pidinet is not None:
        # TODO(pidinet): build PiDiNet (60 ch, carv4 converted to vanilla convs, dil 24, sa) and the
        # sketch-simplification cleaner, load with torch.load(weights_only=True), run on ImageNet-
        # normalised RGB and return 1 - cleaner(1 - pidinet(x)). Not done: nothing to check it against.
        info["weights_found"] = str(pidinet)
        info["note"] = "pidinet weights found but the PiDiNet loader is not implemented yet; using fallback"
    return sketch, info


def single_sketch_from_image(image: np.ndarray, **kwargs) -> tuple[np.ndarray, dict]:
    """One RGB uint8 `[H,W,3]` image -> (`[1,H,W]` sketch, info), as `extract_sketch` on one frame."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise InputError(f"image must be RGB uint8 [H,W,3], got {image.dtype} {list(image.shape)}")
    sketch, info = extract_sketch(image[None], **kwargs)
    return sketch[0], info


def single_sketch_from_sketch(sketch: np.ndarray) -> np.ndarray:
    """The published `single_sketch`: frame 0 of a `[T,1,H,W]` sketch sequence -> `[1,H,W]`."""
    return np.ascontiguousarray(sketch[0], dtype=np.float32)


def sketch_from_grey(grey: np.ndarray) -> tuple[np.ndarray, str]:
    """A drawn sketch as grey levels `[H,W]` in [0, 1] -> (`[1,H,W]` strokes in [0, 1], polarity).

    The median is the paper: light paper -> dark strokes are 1 ("dark-on-light"), dark paper ->
    light strokes are 1 ("light-on-dark"). Paper maps to 0 and the most extreme ink (1st / 99th
    percentile) to 1, so a grey scan still gives full-strength strokes.
    """
    grey = np.asarray(grey, dtype=np.float32)
    paper = float(np.median(grey))
    if paper >= 0.5:
        polarity, ink = "dark-on-light", float(np.percentile(grey, 1))
        strokes = (paper - grey) / max(paper - ink, 1e-3)
    else:
        polarity, ink = "light-on-dark", float(np.percentile(grey, 99))
        strokes = (grey - paper) / max(ink - paper, 1e-3)
    if abs(ink - paper) < 1e-3:  # blank page
        strokes = np.zeros_like(grey)
    return np.clip(strokes, 0.0, 1.0).astype(np.float32)[None], polarity


def load_sketch_image(path: str | os.PathLike, size: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """A user's sketch image (PNG/JPEG, any size; alpha composited over white) -> (`[1,H,W]`, info)
    at `size` (W, H), scaled to cover and centre-cropped."""
    from vcomp.conditions.mask import to_unit_channels
    from vcomp.io import resize_cover
    from vcomp.io.image import read_image_unchanged

    channels = to_unit_channels(read_image_unchanged(path))
    if channels.shape[-1] == 4:  # over white paper, so transparent = paper whatever its RGB
        alpha = channels[..., 3:]
        channels = channels[..., :3] * alpha + (1.0 - alpha)
    grey = channels[..., :3].mean(axis=-1) if channels.shape[-1] >= 3 else channels[..., 0]
    grey = resize_cover(np.ascontiguousarray(grey, dtype=np.float32), size)
    strokes, polarity = sketch_from_grey(grey)
    return strokes, {"extractor": "user-sketch", "fallback": False, "polarity": polarity, "source": str(path)}
