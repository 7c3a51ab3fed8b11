"""Read videos (any container/codec PyAV decodes, or a folder of images) and encode H.264.

Frames are RGB uint8 arrays `[H, W, 3]`; clips are `[T, H, W, 3]`. Reading streams frame by
frame so long or HD inputs never have to be held whole unless the caller collects them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from vcomp.errors import InputError
from vcomp.io.image import read_image
from vcomp.io.transform import resize_cover

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_SEQUENCE_FPS = 8.0


@dataclass(frozen=True)
class VideoInfo:
    """What a source is: size, frame rate, frame count (exact or estimated) and codec."""

    path: str
    width: int
    height: int
    fps: float
    frame_count: int
    frame_count_exact: bool
    codec: str
    duration: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Sampling:
    """Which frames to take: at most `frames`, every `stride`-th or at a target `fps`, from `start`."""

    frames: int | None = None
    stride: int | None = None
    fps: float | None = None
    start: int = 0

    def __post_init__(self):
        if self.stride is not None and self.fps is not None:
            raise InputError("give either --stride or --fps, not both")
        if self.frames is not None and self.frames < 1:
            raise InputError(f"--frames must be at least 1 (got {self.frames})")
        if self.stride is not None and self.stride < 1:
            raise InputError(f"--stride must be at least 1 (got {self.stride})")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise InputError(f"--fps must be a positive number (got {self.fps})")
        if self.start < 0:
            raise InputError(f"--start must be >= 0 (got {self.start})")

    def step(self, source_fps: float) -> float:
        """Source frames per sampled frame (>= 1)."""
        if self.stride is not None:
            return float(self.stride)
        if self.fps is not None and source_fps > 0:
            return max(1.0, source_fps / self.fps)
        return 1.0

    def indices(self, source_fps: float) -> Iterator[int]:
        """The (endless, increasing) source frame indices to keep; the reader stops at the end."""
        step, j, last = self.step(source_fps), 0, -1
        while self.frames is None or j < self.frames:
            index = self.start + int(round(j * step))
            if index > last:
                yield index
                last = index
            j += 1


@dataclass
class Clip:
    """Sampled frames with where they came from."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    fps: float  # frame rate of the sampled clip
    indices: list[int]  # source frame index of each sampled frame
    source: VideoInfo
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def _image_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir() and not _image_files(path):
        raise InputError(f"{path} is a folder with no images in it; give a video file or a folder of PNG/JPEG frames")
    if not path.is_dir() and not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied; make the file readable")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); give a video file")


def _av():
    import av

    return av


def _open_container(path: Path):
    av = _av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path} is not a readable video ({_short(exc)}); give an mp4/mov/webm/mkv/gif file or a folder of frames") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"{path} has no video stream; give a video file")
    return container


def _short(exc: Exception) -> str:
    """FFmpeg's reason without errno numbers or the file name (the message names the file)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text.split(": '")[0])
    return text[:120].lower()


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a source's metadata without decoding it (the frame count may be estimated)."""
    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        files = _image_files(path)
        h, w = read_image(files[0]).shape[:2]
        return VideoInfo(str(path), w, h, DEFAULT_SEQUENCE_FPS, len(files), True, "images",
                         len(files) / DEFAULT_SEQUENCE_FPS)
    with _open_container(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 25.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        exact = bool(stream.frames)
        count = int(stream.frames) if exact else int(round((duration or 0) * fps))
        return VideoInfo(str(path), int(ctx.width), int(ctx.height), fps, count, exact, ctx.name, duration)


def _decode_frames(path: Path) -> Iterator[np.ndarray]:
    if path.is_dir():
        for file in _image_files(path):
            yield read_image(file)
        return
    av = _av()
    with _open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise InputError(f"{path} is truncated or corrupt ({_short(exc)}); re-export or re-download it") from None


def iter_frames(
    path: str | os.PathLike,
    sampling: Sampling = Sampling(),
    size: tuple[int, int] | None = None,
    info: VideoInfo | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(source_index, frame)` for the sampled frames, resized/cropped to `size` (W, H)."""
    path = Path(path)
    info = info or probe(path)
    wanted = sampling.indices(info.fps)
    target = next(wanted, None)
    for index, frame in enumerate(_decode_frames(path)):
        if target is None:
            return
        if index == target:
            yield index, (resize_cover(frame, size) if size else frame)
            target = next(wanted, None)


def read_clip(
    path: str | os.PathLike,
    sampling: Sampling = Sampling(),
    size: tuple[int, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Clip:
    """Decode the sampled frames of a source into memory (raises InputError if none decode)."""
    path = Path(path)
    info = probe(path)
    frames, indices = [], []
    expected = _expected_count(info, sampling)
    for index, frame in iter_frames(path, sampling, size, info):
        frames.append(frame)
        indices.append(index)
        if progress:
            progress(len(frames), expected)
    if not frames:
        where = f" from frame {sampling.start}" if sampling.start else ""
        raise InputError(f"{path} has no decodable frames{where}; give a video with at least one frame")
    fps = info.fps / sampling.step(info.fps)
    return Clip(np.stack(frames), fps, indices, info)


def _expected_count(info: VideoInfo, sampling: Sampling) -> int:
    available = max(0, info.frame_count - sampling.start)
    count = int(math.ceil(available / sampling.step(info.fps)))
    return min(count, sampling.frames) if sampling.frames else count


def x264_options(*, bf: int | None = None, refs: int | None = None, crf: int = 18,
                 preset: str = "medium", gop: int | None = None, scenecut: bool = True) -> dict[str, str]:
    """libx264 codec options. `bf=0, refs=1` makes every motion vector span exactly one frame;
    None keeps x264's defaults (B-frames, 3 references)."""
    options = {"crf": str(crf), "preset": preset}
    if bf is not None:
        options["bf"] = str(bf)
    if refs is not None:
        options["refs"] = str(refs)
    if gop is not None:
        options["g"] = str(gop)
    if not scenecut:
        options["sc_threshold"] = "0"
    return options


class H264Encoder:
    """Encode RGB uint8 frames to H.264 yuv420p as they come (odd sizes lose a last row/column)."""

    def __init__(self, path: str | os.PathLike, fps: float, options: dict[str, str] | None = None):
        self.path, self.fps = Path(path), fps
        self.options = options or x264_options()
        self._container = self._stream = None
        self.frames_written = 0

    def _open(self, height: int, width: int) -> None:
        av = _av()
        if height < 2 or width < 2:
            raise InputError("frames are too small to encode (need at least 2x2 pixels)")
        self._container = av.open(str(self.path), "w", format=_container_format(self.path))
        rate = Fraction(self.fps).limit_denominator(1001) if self.fps > 0 else Fraction(25)
        self._stream = self._container.add_stream("libx264", rate=rate, options=self.options)
        self._stream.width, self._stream.height = width // 2 * 2, height // 2 * 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, frames: np.ndarray) -> None:
        """Append `[T,H,W,3]` (or one `[H,W,3]`) RGB uint8 frames."""
        av = _av()
        frames = np.asarray(frames, dtype=np.uint8)
        if frames.ndim == 3:
            frames = frames[None]
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
        h, w = self._stream.height, self._stream.width
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array[:h, :w]), format="rgb24")
            self._container.mux(self._stream.encode(frame))
            self.frames_written += 1

    def close(self, flush: bool = True) -> None:
        if self._container is not None:
            if flush:
                self._container.mux(self._stream.encode())
            self._container.close()
            self._container = None


def encode_h264(frames: np.ndarray, path: str | os.PathLike, fps: float, **options) -> Path:
    """Encode RGB frames `[T,H,W,3]` to H.264 at `path` (not atomic: see io.write);
    `options` go to `x264_options` (bf, refs, crf, preset, gop, scenecut)."""
    encoder = H264Encoder(path, fps, x264_options(**options))
    try:
        encoder.write(frames)
    finally:
        encoder.close()
    return Path(path)


def _container_format(path) -> str | None:
    suffix = Path(path).suffix.lower()
    return {".mov": "mov", ".mkv": "matroska"}.get(suffix, "mp4")
