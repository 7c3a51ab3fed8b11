"""Write clips and images atomically: mp4 (H.264), gif, PNG frames and contact sheets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vcomp.errors import InputError
from vcomp.io.atomic import atomic_dir, atomic_file
from vcomp.io.stream import VideoWriter

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv"}


def output_kind(path: str | os.PathLike) -> str:
    """'video', 'gif' or 'frames' (a folder of PNGs) from the output path's extension."""
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix == ".gif":
        return "gif"
    if suffix == "":
        return "frames"
    raise InputError(f"output {path}: unsupported extension {suffix!r}; use .mp4, .mov, .mkv, .gif or a folder name")


def _as_uint8_rgb(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Write `[T,H,W,3]` (uint8, or float in [0,1]) to mp4/mov/mkv, gif or a PNG folder."""
    kind = output_kind(path)
    frames = _as_uint8_rgb(frames)
    if kind == "video":
        with VideoWriter(path, fps, crf=crf) as writer:
            writer.write(frames)
    elif kind == "gif":
        write_gif(path, frames, fps)
    else:
        write_png_frames(path, frames)
    return Path(path)


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """Animated gif with a per-clip palette (Pillow), looping forever."""
    from PIL import Image

    frames = _as_uint8_rgb(frames)
    images = [Image.fromarray(f) for f in frames]
    duration = int(round(1000 / max(fps, 1e-3)))
    with atomic_file(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=duration, loop=0, optimize=False)
    return Path(path)


def encode_png(image: np.ndarray) -> bytes:
    import cv2

    image = _as_uint8_rgb(image[None])[0]
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """One RGB (or grey) image as PNG, atomically."""
    data = encode_png(np.asarray(image))
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_png_frames(folder: str | os.PathLike, frames: np.ndarray) -> Path:
    """A folder of `frame_00000.png`, ...; the folder appears only when every frame is written."""
    frames = _as_uint8_rgb(frames)
    with atomic_dir(folder) as tmp:
        for i, frame in enumerate(frames):
            (tmp / f"frame_{i:05d}.png").write_bytes(encode_png(frame))
    return Path(folder)


def contact_sheet(rows: list[np.ndarray] | np.ndarray, max_columns: int = 8, gap: int = 2,
                  background: int = 255) -> np.ndarray:
    """Tile clips into one image: each clip `[T,H,W,3]` is a row of up to `max_columns` frames
    picked evenly through it (a single clip with more frames wraps onto several rows)."""
    if isinstance(rows, np.ndarray) and rows.ndim == 4:
        clip = _as_uint8_rgb(rows)
        picks = np.linspace(0, len(clip) - 1, min(len(clip), 2 * max_columns)).round().astype(int)
        clip = clip[picks]
        rows = [clip[i:i + max_columns] for i in range(0, len(clip), max_columns)]
    rows = [_as_uint8_rgb(r) for r in rows]
    h = max(r.shape[1] for r in rows)
    w = max(r.shape[2] for r in rows)
    columns = min(max_columns, max(len(r) for r in rows))
    sheet = np.full((len(rows) * (h + gap) + gap, columns * (w + gap) + gap, 3), background, np.uint8)
    for ri, row in enumerate(rows):
        picks = np.linspace(0, len(row) - 1, min(len(row), columns)).round().astype(int)
        for ci, frame in enumerate(row[picks]):
            y, x = gap + ri * (h + gap), gap + ci * (w + gap)
            sheet[y:y + frame.shape[0], x:x + frame.shape[1]] = frame
    return sheet


def write_contact_sheet(path: str | os.PathLike, rows, max_columns: int = 8) -> Path:
    """`contact_sheet` written as a PNG."""
    return write_png(path, contact_sheet(rows, max_columns=max_columns))
