"""Style condition: an image embedding `[D]` float32 from a style image (RGB uint8 `[H,W,3]`).

Published: OpenCLIP ViT-H-14 `encode_image` (1024-d, projected, *not* L2-normalised) of the image
after open_clip's validation preprocessing (short side 224 bicubic, centre crop 224, OpenAI mean/std).
Used here when `open_clip_pytorch_model.bin` is in the weights folder.

Fallback, `colour-stats-v1` (D = 64, L2-normalised), a palette descriptor computed in CIE Lab on the
image shrunk to at most 128 px:

    [0:49)   joint (a, b) chroma histogram, 7 x 7 bins over [-80, 80]^2, bilinear soft binning
    [49:57)  lightness histogram, 8 bins over [0, 100], linear soft binning
    [57:64)  mean and std of L, a, b and the mean chroma, scaled to about [-1, 1]

Histograms enter as square roots (Hellinger), the three blocks are weighted 0.8 / 0.45 / 0.4 and the
whole vector is L2-normalised, so a dot product is a cosine similarity: images with the same palette
score near 1, different palettes (red vs blue) near 0. It captures colour only, not texture or brush
strokes, and it lives in a different space from CLIP: a model trained on one cannot use the other.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from vcomp.conditions.depth import find_weights
from vcomp.errors import InputError, WeightsError

CLIP_FILE = "open_clip_pytorch_model.bin"
CLIP_MODEL = "ViT-H-14"
FALLBACK = "colour-stats-v1"
AB_BINS, AB_RANGE, L_BINS = 7, 80.0, 8
FALLBACK_DIM = AB_BINS * AB_BINS + L_BINS + 7  # 64
BLOCK_WEIGHTS = (0.8, 0.45, 0.4)


def style_embedding(image: np.ndarray, weights_dir: str | os.PathLike | None = None,
                    device: str = "cpu") -> tuple[np.ndarray, dict]:
    """RGB uint8 `[H,W,3]` -> (`[D]` float32 embedding, info). CLIP ViT-H-14 if its weights are
    found locally (D = 1024), else the colour-statistics fallback (D = 64)."""
    image = _check_image(image)
    clip_path = find_weights(CLIP_FILE, weights_dir)
    if clip_path is not None:
        embedding = clip_image_embedding(image, clip_path, device)
        return embedding, {"extractor": f"open_clip-{CLIP_MODEL}", "fallback": False,
                           "dim": int(embedding.shape[0]), "normalised": False, "weights": str(clip_path)}
    return colour_stats_embedding(image), {"extractor": FALLBACK, "fallback": True, "dim": FALLBACK_DIM,
                                           "normalised": True}


# -- CLIP --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _load_clip(path: str, device: str):
    import open_clip

    try:  # open_clip loads local checkpoints with torch.load(weights_only=True)
        model, _, preprocess = open_clip.create_model_and_transforms(CLIP_MODEL, pretrained=path, device=device)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError) as exc:
        raise WeightsError(f"{path} is not a loadable OpenCLIP {CLIP_MODEL} checkpoint ({str(exc).splitlines()[0][:160]}); "
                           f"re-download it or remove it to use the colour-statistics style fallback") from None
    model.eval()
    return model, preprocess


def clip_image_embedding(image: np.ndarray, path: str | Path, device: str = "cpu") -> np.ndarray:
    """OpenCLIP ViT-H-14 `encode_image` of one RGB uint8 image -> `[1024]` float32 (not normalised)."""
    import torch
    from PIL import Image

    model, preprocess = _load_clip(str(path), device)
    pixels = preprocess(Image.fromarray(image)).unsqueeze(0).to(device)
    with torch.inference_mode():
        embedding = model.encode_image(pixels)
    return embedding[0].float().cpu().numpy().astype(np.float32)


# -- colour-statistics fallback ---------------------------------------------------------------
def colour_stats_embedding(image: np.ndarray) -> np.ndarray:
    """`colour-stats-v1` (see the module docstring): RGB uint8 `[H,W,3]` -> `[64]`, unit length."""
    import cv2

    image = _check_image(image)
    h, w = image.shape[:2]
    scale = min(1.0, 128.0 / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    lightness, a, b = lab[:, 0], lab[:, 1], lab[:, 2]

    ua = _bin_coordinate(a, -AB_RANGE, AB_RANGE, AB_BINS)
    ub = _bin_coordinate(b, -AB_RANGE, AB_RANGE, AB_BINS)
    ab_hist = _soft_histogram_2d(ua, ub, AB_BINS)
    l_hist = _soft_histogram_1d(_bin_coordinate(lightness, 0.0, 100.0, L_BINS), L_BINS)
    chroma = np.hypot(a, b)
    moments = np.array([lightness.mean() / 100.0, lightness.std() / 50.0, a.mean() / AB_RANGE, a.std() / AB_RANGE,
                        b.mean() / AB_RANGE, b.std() / AB_RANGE, chroma.mean() / AB_RANGE], np.float32)
    wa, wl, wm = BLOCK_WEIGHTS
    vector = np.concatenate([wa * np.sqrt(ab_hist), wl * np.sqrt(l_hist), wm * moments]).astype(np.float32)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _bin_coordinate(values: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    """Continuous bin coordinate in [0, bins-1] (bin centres at integers, ends clipped)."""
    return np.clip((values - lo) / (hi - lo) * (bins - 1), 0.0, bins - 1)


def _split(u: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    low = np.minimum(np.floor(u).astype(np.int64), bins - 2)
    frac = (u - low).astype(np.float32)
    return low, low + 1, frac


def _soft_histogram_1d(u: np.ndarray, bins: int) -> np.ndarray:
    i0, i1, f = _split(u, bins)
    hist = np.bincount(i0, 1.0 - f, bins) + np.bincount(i1, f, bins)
    return hist / max(hist.sum(), 1e-12)


def _soft_histogram_2d(u: np.ndarray, v: np.ndarray, bins: int) -> np.ndarray:
    i0, i1, fu = _split(u, bins)
    j0, j1, fv = _split(v, bins)
    size = bins * bins
    hist = (np.bincount(i0 * bins + j0, (1 - fu) * (1 - fv), size) + np.bincount(i0 * bins + j1, (1 - fu) * fv, size)
            + np.bincount(i1 * bins + j0, fu * (1 - fv), size) + np.bincount(i1 * bins + j1, fu * fv, size))
    return hist / max(hist.sum(), 1e-12)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise InputError(f"style image must be RGB uint8 [H,W,3], got {image.dtype} {list(image.shape)}")
    return image
