"""Deterministic synthetic clips with known motion, and encoders for them (shared test helpers).

Everything is plain numpy (seeded) plus PyAV, so any test or benchmark can build a clip whose
true motion is known exactly:

    frames, truth = moving_square()              # textured square on a textured background
    frames, truth = camera_pan()                 # the whole textured image translating
    encode(frames, tmp_path / "a.mp4", X264_ONE_REF)

`truth` is a `Truth`: the per-frame content velocity (pixels per frame, + = right/down) and,
for each frame, the boolean region where that velocity holds (the square's interior, or the
whole frame minus the border the pan uncovers) and the static background region.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

# libx264 option sets (values are strings, as PyAV wants them)
X264_ONE_REF = {"bf": "0", "refs": "1", "crf": "18", "preset": "veryfast"}  # every vector spans 1 frame
X264_DEFAULTS = {"crf": "18"}  # x264 defaults: B-frames + b-pyramid, 3 references
X264_MULTI_REF = {"bf": "0", "refs": "3", "crf": "18", "preset": "medium"}  # no B-frames, 3 references


def texture(height: int, width: int, seed: int = 0, grain: int = 2) -> np.ndarray:
    """Random RGB texture `[H,W,3]` uint8: uniform noise drawn at 1/`grain` resolution, upsampled
    and box-blurred, so it has detail at a few-pixel scale and no repeating pattern."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-height // grain) + 2, -(-width // grain) + 2, 3)).astype(np.float32)
    big = np.repeat(np.repeat(small, grain, 0), grain, 1)
    # 3x3 box blur with edge padding, in numpy
    padded = np.pad(big, ((1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[dy:dy + big.shape[0], dx:dx + big.shape[1]] for dy in range(3) for dx in range(3)) / 9
    return np.clip(blurred[:height, :width], 0, 255).astype(np.uint8)


@dataclass
class Truth:
    """Known motion of a synthetic clip."""

    velocity: tuple[float, float]  # (vx, vy) of the moving content, pixels per frame
    moving: np.ndarray  # [T, H, W] bool: where the content moves with `velocity`
    static: np.ndarray  # [T, H, W] bool: where nothing moves (empty for a pan)

    def interior(self, t: int, margin: int) -> np.ndarray:
        """`moving[t]` eroded by `margin` pixels (away from the edges where blocks straddle)."""
        m = self.moving[t]
        if margin <= 0:
            return m.copy()
        out = m.copy()
        out[:margin] = out[-margin:] = False
        out[:, :margin] = out[:, -margin:] = False
        for axis in (0, 1):
            for shift in range(1, margin + 1):
                out &= np.roll(m, shift, axis) & np.roll(m, -shift, axis)
        return out


def moving_square(frames: int = 20, size: tuple[int, int] = (160, 128), square: int = 48,
                  start: tuple[int, int] = (16, 24), velocity: tuple[int, int] = (3, 1),
                  seed: int = 0) -> tuple[np.ndarray, Truth]:
    """A textured square moving `velocity` (integer px/frame) over a static textured background.
    Returns `([T,H,W,3] uint8, Truth)`; (W, H) = `size`."""
    w, h = size
    background = texture(h, w, seed)
    patch = texture(square, square, seed + 1000)
    clip = np.empty((frames, h, w, 3), np.uint8)
    moving = np.zeros((frames, h, w), bool)
    for t in range(frames):
        x, y = start[0] + velocity[0] * t, start[1] + velocity[1] * t
        clip[t] = background
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + square, w), min(y + square, h)
        if x1 > x0 and y1 > y0:
            clip[t, y0:y1, x0:x1] = patch[y0 - y:y1 - y, x0 - x:x1 - x]
            moving[t, y0:y1, x0:x1] = True
    static = ~moving
    # pixels the square covered in the previous frame are newly revealed background: not static
    static[1:] &= ~moving[:-1]
    return clip, Truth((float(velocity[0]), float(velocity[1])), moving, static)


def pan_frames(frames: int, size: tuple[int, int], velocity: tuple[int, int] = (2, 1),
               seed: int = 0) -> Iterator[np.ndarray]:
    """Frames of a camera pan, one at a time (for long/large clips): the content moves by
    `velocity` px/frame, i.e. the view window moves by -velocity over a big texture."""
    w, h = size
    vx, vy = velocity
    big = texture(h + abs(vy) * frames + 1, w + abs(vx) * frames + 1, seed)
    x_first = abs(vx) * frames if vx > 0 else 0
    y_first = abs(vy) * frames if vy > 0 else 0
    for t in range(frames):
        x, y = x_first - vx * t, y_first - vy * t
        yield np.ascontiguousarray(big[y:y + h, x:x + w])


def camera_pan(frames: int = 20, size: tuple[int, int] = (160, 128), velocity: tuple[int, int] = (2, 1),
               seed: int = 0) -> tuple[np.ndarray, Truth]:
    """The whole (textured) picture translating by `velocity` px/frame. The strips entering at
    the borders have no source in the previous frame and are left out of `moving`."""
    w, h = size
    clip = np.stack(list(pan_frames(frames, size, velocity, seed)))
    moving = np.ones((frames, h, w), bool)
    vx, vy = velocity
    if vx > 0:
        moving[:, :, :vx] = False
    elif vx < 0:
        moving[:, :, w + vx:] = False
    if vy > 0:
        moving[:, :vy] = False
    elif vy < 0:
        moving[:, h + vy:] = False
    return clip, Truth((float(vx), float(vy)), moving, np.zeros_like(moving))


def encode(frames, path, options: dict | None = None, *, codec: str = "libx264", fps: float = 25,
           pix_fmt: str | None = None) -> Path:
    """Encode RGB uint8 frames (an array `[T,H,W,3]` or any iterable of `[H,W,3]`) with PyAV.

    `codec` "libx264" (options e.g. X264_ONE_REF / X264_DEFAULTS / X264_MULTI_REF), "mpeg4",
    "gif", ...; the container follows the file suffix. Returns `path`."""
    import av

    path = Path(path)
    if pix_fmt is None:
        pix_fmt = {"gif": "rgb8", "mjpeg": "yuvj420p"}.get(codec, "yuv420p")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        first = True
        for frame in frames:
            if first:
                stream.height, stream.width = frame.shape[:2]
                first = False
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def frame_types(path) -> str:
    """Picture types of a file's frames in display order, e.g. 'IPPBBP...' (for assertions)."""
    import av

    letters = {1: "I", 2: "P", 3: "B"}
    with av.open(str(path)) as container:
        return "".join(letters.get(int(f.pict_type), "?") for f in container.decode(video=0))
