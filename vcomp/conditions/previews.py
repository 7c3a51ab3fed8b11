"""Condition previews: each condition as RGB uint8 frames `[T,H,W,3]`, a labelled contact sheet, and
`write_previews`, which writes them next to a saved ConditionSet.

    depth          TURBO colormap (near = red, far = blue)
    sketch         black strokes on white
    mask           the regenerated region tinted red over the source frames, or white on black
    motion         `vcomp.conditions.motion.motion_to_rgb` (skipped when that module is missing)
    image          the image itself
    single_sketch  like sketch
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vcomp.conditions.condition_set import ConditionSet

MASK_TINT = np.array([255, 40, 40], np.float32)
VIDEOS = ("motion", "depth", "sketch", "mask")
IMAGES = ("image", "single_sketch")


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(values, np.float32) * 255.0), 0, 255).astype(np.uint8)


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
    """`[T,1,H,W]` in [0, 1] (near = 1) -> `[T,H,W,3]` uint8, TURBO colormap (near = red)."""
    import cv2

    grey = _to_uint8(depth[:, 0])
    return np.stack([cv2.cvtColor(cv2.applyColorMap(g, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB) for g in grey])


def sketch_to_rgb(sketch: np.ndarray) -> np.ndarray:
    """`[T,1,H,W]` strokes in [0, 1] -> `[T,H,W,3]` uint8, black strokes on white paper."""
    paper = 255 - _to_uint8(sketch[:, 0])
    return np.repeat(paper[..., None], 3, axis=-1)


def mask_to_rgb(mask: np.ndarray, source_frames: np.ndarray | None = None, strength: float = 0.55) -> np.ndarray:
    """`[T,1,H,W]` in {0, 1} -> `[T,H,W,3]` uint8: white (regenerate) on black, or, with source
    frames `[T',H',W',3]` (resized / resampled in time to the mask), the region tinted red."""
    m = np.asarray(mask, np.float32)[:, 0]
    if source_frames is None:
        return np.repeat(_to_uint8(m)[..., None], 3, axis=-1)
    from vcomp.io import resize_frames

    frames = resize_frames(np.asarray(source_frames), (m.shape[2], m.shape[1]))
    picks = np.rint(np.linspace(0, len(frames) - 1, len(m))).astype(int)
    frames = frames[picks].astype(np.float32)
    alpha = strength * m[..., None]
    return np.clip(np.rint(frames * (1 - alpha) + MASK_TINT * alpha), 0, 255).astype(np.uint8)


def image_to_rgb(image: np.ndarray) -> np.ndarray:
    """`[3,H,W]` in [0, 1] -> `[H,W,3]` uint8."""
    return _to_uint8(np.asarray(image).transpose(1, 2, 0))


def motion_preview(motion: np.ndarray) -> np.ndarray | None:
    """`[T,2,H,W]` -> `[T,H,W,3]` uint8 via `vcomp.conditions.motion.motion_to_rgb` (one frame at a
    time, one speed scale for the whole clip: its 99th-percentile speed), or None if unavailable."""
    try:
        from vcomp.conditions.motion import motion_to_rgb
    except ImportError:
        return None
    motion = np.asarray(motion, np.float32)
    speed = np.hypot(motion[:, 0], motion[:, 1])
    max_mag = max(float(np.percentile(speed, 99)), 1e-3) if speed.size else 1e-3
    frames = np.stack([np.asarray(motion_to_rgb(field, max_mag)) for field in motion])
    return frames if frames.dtype == np.uint8 else _to_uint8(frames)


def condition_previews(condition_set: ConditionSet, source_frames: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """name -> RGB uint8 clip `[T,H,W,3]` (images as one-frame clips), for every present condition
    that can be shown (not `style`; not `motion` without its module)."""
    cs = condition_set
    previews = {}
    if cs.motion is not None:
        motion = motion_preview(cs.motion)
        if motion is not None:
            previews["motion"] = motion
    if cs.depth is not None:
        previews["depth"] = depth_to_rgb(cs.depth)
    if cs.sketch is not None:
        previews["sketch"] = sketch_to_rgb(cs.sketch)
    if cs.mask is not None:
        previews["mask"] = mask_to_rgb(cs.mask, source_frames)
    if cs.image is not None:
        previews["image"] = image_to_rgb(cs.image)[None]
    if cs.single_sketch is not None:
        previews["single_sketch"] = sketch_to_rgb(cs.single_sketch[None])
    return previews


def label(frame: np.ndarray, text: str) -> np.ndarray:
    """A copy of `frame` with `text` in a dark box at its top-left corner."""
    import cv2

    frame = np.ascontiguousarray(frame).copy()
    scale = max(0.35, frame.shape[0] / 400.0)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(frame, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), thickness=-1)
    cv2.putText(frame, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return frame


def condition_sheet(condition_set: ConditionSet, source_frames: np.ndarray | None = None,
                    max_columns: int = 8) -> np.ndarray:
    """One labelled row per condition (the source clip first, if given) -> `[H,W,3]` uint8."""
    from vcomp.io import contact_sheet, resize_frames

    rows = []
    size = condition_set.size
    if source_frames is not None:
        src = np.asarray(source_frames)
        rows.append(("source", resize_frames(src, size) if size else src))
    rows += list(condition_previews(condition_set, source_frames).items())
    if not rows:
        return np.full((8, 8, 3), 255, np.uint8)
    labelled = []
    for name, clip in rows:
        clip = clip.copy()
        clip[0] = label(clip[0], name)
        labelled.append(clip)
    return contact_sheet(labelled, max_columns=max_columns)


def write_previews(condition_set: ConditionSet, folder: str | os.PathLike, fps: float | None = None,
                   source_frames: np.ndarray | None = None) -> dict[str, Path]:
    """Write `<folder>/previews/{motion,depth,sketch,mask}.mp4`, `{image,single_sketch}.png` and
    `sheet.png` for the conditions present; returns name -> path. `fps` defaults to meta["fps"]."""
    from vcomp.io import write_png, write_video

    fps = float(fps or condition_set.meta.get("fps") or 8.0)
    out = Path(folder) / "previews"  # the writers create it (atomically per file)
    written = {}
    for name, clip in condition_previews(condition_set, source_frames).items():
        if name in VIDEOS:
            written[name] = write_video(out / f"{name}.mp4", clip, fps)
        else:
            written[name] = write_png(out / f"{name}.png", clip[0])
    written["sheet"] = write_png(out / "sheet.png", condition_sheet(condition_set, source_frames))
    return written
