"""Depth sequence: RGB frames `[T,H,W,3]` uint8 -> `[T,1,H,W]` float32 in [0, 1], near = 1.

Published annotator: MiDaS DPT-Large (`midas_v3_dpt_large.pth`, VideoComposer's own re-implementation
with its own state-dict names). Its loader is not implemented yet (TODO below), so depth always comes
from the classical fallback, `heuristic-depth-v1`, and `info` says so (it ends up in meta.json).

heuristic-depth-v1 (deterministic, no model) combines three monocular cues, each computed per frame
at a working resolution of at most 256 px and normalised over the whole clip (robust 2nd..98th
percentiles), never per frame, so a static scene gets the same depth in every frame:

    vertical    0 at the top row .. 1 at the bottom row ("lower in the frame = nearer", ground plane)
    sharpness   log of the local RMS of the Laplacian (Gaussian window): in-focus, finely textured
                surfaces are usually the subject, nearer than a defocused or hazy background
    colour      local contrast (std of grey) and HSV saturation: aerial perspective makes distant
                things flatter and greyer

    d = 0.50 vertical + 0.30 sharpness + 0.10 contrast + 0.10 saturation

`d` is then smoothed edge-aware (a guided filter with the grey frame as guide, so depth edges snap to
image edges), smoothed over time with a [1, 2, 1] / 4 kernel, mapped to [0, 1] by the clip's 1st..99th
percentiles and upsampled to the frame size. It is a relative, ordinal guess, not metric depth, and it
is wrong wherever the cues are (a sharp background behind a bokeh subject, a sky at the bottom).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vcomp.errors import InputError

MIDAS_FILE = "midas_v3_dpt_large.pth"
HEURISTIC = "heuristic-depth-v1"
WORK_SIZE = 256  # longest side of the working resolution of the heuristic
WEIGHTS = {"vertical": 0.50, "sharpness": 0.30, "contrast": 0.10, "saturation": 0.10}
GUIDE_RADIUS, GUIDE_EPS = 0.04, 1e-2  # guided filter: window (fraction of the longest side), eps


# -- weights lookup (shared with sketch.py and style.py) ----------------------------------------
def weights_home(weights_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding optional annotator weights: `weights_dir`, else $VCOMP_HOME, else
    ~/.cache/vcomp."""
    if weights_dir is not None:
        folder = Path(weights_dir).expanduser()
        if not folder.is_dir():
            raise InputError(f"weights folder {folder} does not exist; create it or point --weights-dir / VCOMP_HOME at the folder with the weights")
        return folder
    return Path(os.environ.get("VCOMP_HOME") or "~/.cache/vcomp").expanduser()


def find_weights(filename: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """`<home>/<filename>` or `<home>/model_weights/<filename>` (the published layout), else None."""
    home = weights_home(weights_dir)
    for candidate in (home / filename, home / "model_weights" / filename):
        if candidate.is_file():
            return candidate
    return None


def check_frames(frames: np.ndarray, what: str = "frames") -> np.ndarray:
    """Frames must be RGB uint8 `[T,H,W,3]` (a single `[H,W,3]` frame is promoted to T = 1)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise InputError(f"{what} must be RGB uint8 [T,H,W,3], got {frames.dtype} {list(frames.shape)}")
    return frames


# -- public API ------------------------------------------------------------------------------
def estimate_depth(frames: np.ndarray, weights_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """`[T,H,W,3]` uint8 RGB -> (`[T,1,H,W]` float32 in [0, 1] with near = 1, info).

    info: {"extractor", "fallback", "near", "normalisation", ...}; it goes into meta.json.
    """
    frames = check_frames(frames)
    info = {"extractor": HEURISTIC, "fallback": True, "near": 1, "normalisation": "per-clip"}
    midas = find_weights(MIDAS_FILE, weights_dir)
    if midas is not None:
        # TODO(midas): build VideoComposer's DPT-Large (ViT-L/16-384 + DPT neck [256,512,1024,1024],
        # fusion 256, ReLU head), load with torch.load(weights_only=True), run on [-1, 1] input at
        # 384 px and map the disparity with clamp(d / 20, 0, 10) -> [0, 1]. Not done: its state-dict
        # names are not known here and nothing could be checked against the real file.
        info["weights_found"] = str(midas)
        info["note"] = "midas weights found but the DPT loader is not implemented yet; using fallback"
    return heuristic_depth(frames), info


def heuristic_depth(frames: np.ndarray) -> np.ndarray:
    """heuristic-depth-v1 (see the module docstring): `[T,H,W,3]` uint8 -> `[T,1,H,W]` in [0, 1]."""
    import cv2

    frames = check_frames(frames)
    t, h, w = frames.shape[:3]
    scale = min(1.0, WORK_SIZE / max(h, w))
    ws, hs = max(8, round(w * scale)), max(8, round(h * scale))
    sigma = 0.03 * float(np.hypot(ws, hs))  # cue window: 3 % of the diagonal
    radius = max(2, round(GUIDE_RADIUS * max(ws, hs)))  # guided-filter window

    greys, cues = [], {k: [] for k in ("sharpness", "contrast", "saturation")}
    for frame in frames:
        small = cv2.resize(frame, (ws, hs), interpolation=cv2.INTER_AREA) if (ws, hs) != (w, h) else frame
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
        energy = cv2.GaussianBlur(lap * lap, (0, 0), sigma)
        cues["sharpness"].append(np.log1p(100.0 * np.sqrt(np.maximum(energy, 0.0))))
        mean = cv2.GaussianBlur(grey, (0, 0), sigma)
        var = cv2.GaussianBlur(grey * grey, (0, 0), sigma) - mean * mean
        cues["contrast"].append(np.sqrt(np.maximum(var, 0.0)))
        sat = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32) / 255.0
        cues["saturation"].append(cv2.GaussianBlur(sat, (0, 0), sigma))
        greys.append(grey)

    vertical = np.broadcast_to(np.linspace(0.0, 1.0, hs, dtype=np.float32)[:, None], (hs, ws))
    depth = WEIGHTS["vertical"] * vertical[None]
    for name, values in cues.items():
        depth = depth + WEIGHTS[name] * _clip_normalise(np.stack(values), 2, 98)

    depth = np.stack([_guided_filter(g, d, radius, GUIDE_EPS) for g, d in zip(greys, depth, strict=True)])
    depth = _temporal_smooth(depth)
    depth = _clip_normalise(depth, 1, 99)
    if (ws, hs) != (w, h):
        depth = np.stack([cv2.resize(d, (w, h), interpolation=cv2.INTER_LINEAR) for d in depth])
    return np.clip(depth, 0.0, 1.0).astype(np.float32)[:, None]


# -- helpers --------------------------------------------------------------------------------
def _clip_normalise(values: np.ndarray, lo_pct: float, hi_pct: float) -> np.ndarray:
    """Map the clip's lo..hi percentiles to 0..1 (clipped); a constant input maps to zeros."""
    lo, hi = np.percentile(values, [lo_pct, hi_pct])
    if hi - lo < 1e-6:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of `src` following the edges of `guide` (He et al., 2010)."""
    import cv2

    k = (2 * radius + 1, 2 * radius + 1)

    def box(x):
        return cv2.boxFilter(x, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT)

    mean_g, mean_s = box(guide), box(src)
    var_g = box(guide * guide) - mean_g * mean_g
    cov = box(guide * src) - mean_g * mean_s
    a = cov / (var_g + eps)
    b = mean_s - a * mean_g
    return box(a) * guide + box(b)


def _temporal_smooth(depth: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 along time (edges replicated): damps flicker, barely blurs motion."""
    if len(depth) < 3:
        return depth
    padded = np.concatenate([depth[:1], depth, depth[-1:]])
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
