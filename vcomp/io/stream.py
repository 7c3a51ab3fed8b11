"""Streaming writers: outputs of any length with bounded memory, still atomic.

`VideoWriter` encodes frames as they come; `SafetensorsWriter` appends frames of named arrays
to raw spool files and assembles a standard safetensors file (8-byte header length, JSON header,
raw little-endian data) at the end, so a long HD clip's motion field never sits in RAM.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

from vcomp.io.atomic import atomic_file
from vcomp.io.video import H264Encoder, x264_options

_DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("uint8"): "U8",
           np.dtype("int32"): "I32", np.dtype("int64"): "I64"}


class VideoWriter:
    """H.264 mp4 written frame by frame to a temp file and renamed when the block ends cleanly;
    an exception inside the block (or no frames at all) leaves nothing behind."""

    def __init__(self, path: str | os.PathLike, fps: float, crf: int = 18, preset: str = "medium"):
        self.path, self.fps, self.crf, self.preset = Path(path), fps, crf, preset
        self._atomic = atomic_file(self.path)

    def __enter__(self) -> VideoWriter:
        tmp = self._atomic.__enter__()
        self._encoder = H264Encoder(tmp, self.fps, x264_options(crf=self.crf, preset=self.preset))
        return self

    def write(self, frames: np.ndarray) -> None:
        """Append RGB uint8 frames `[T,H,W,3]` (or one `[H,W,3]`)."""
        self._encoder.write(frames)

    @property
    def frames_written(self) -> int:
        return self._encoder.frames_written

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and self._encoder.frames_written == 0:
                raise ValueError(f"no frames were written to {self.path}")
            self._encoder.close(flush=exc_type is None)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self._atomic.__exit__(exc_type, exc, tb)


class SafetensorsWriter:
    """Append chunks along axis 0 of named arrays; `finish(path)` writes one safetensors file.

    Arrays given whole (`put`) are stored as they are. Spool files live in a temp folder beside
    the target and are removed in every case.
    """

    def __init__(self, spool_dir: str | os.PathLike):
        self._dir = Path(tempfile.mkdtemp(prefix=".spool.", dir=spool_dir))
        self._files: dict[str, object] = {}
        self._shapes: dict[str, list[int]] = {}
        self._dtypes: dict[str, np.dtype] = {}

    def append(self, name: str, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk)
        if name not in self._files:
            self._files[name] = open(self._dir / name, "wb")
            self._shapes[name] = [0, *chunk.shape[1:]]
            self._dtypes[name] = chunk.dtype
        if list(chunk.shape[1:]) != self._shapes[name][1:] or chunk.dtype != self._dtypes[name]:
            raise ValueError(f"chunk of {name!r} has shape {chunk.shape} {chunk.dtype}, expected "
                             f"[*, {self._shapes[name][1:]}] {self._dtypes[name]}")
        self._files[name].write(chunk.astype(chunk.dtype.newbyteorder("<"), copy=False).tobytes())
        self._shapes[name][0] += chunk.shape[0]

    def put(self, name: str, array: np.ndarray) -> None:
        self.append(name, np.asarray(array)[None])
        self._shapes[name] = self._shapes[name][1:]

    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in self._shapes.items()}

    def nbytes(self) -> int:
        return sum(int(np.prod(s)) * self._dtypes[n].itemsize for n, s in self._shapes.items())

    def finish(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Assemble the safetensors file at `path` (not atomic by itself: the caller's folder is)."""
        for f in self._files.values():
            f.close()
        header, offset = {}, 0
        names = sorted(self._files)
        for name in names:
            size = int(np.prod(self._shapes[name])) * self._dtypes[name].itemsize
            header[name] = {"dtype": _DTYPES[self._dtypes[name]], "shape": self._shapes[name],
                            "data_offsets": [offset, offset + size]}
            offset += size
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            for name in names:
                with open(self._dir / name, "rb") as spool:
                    shutil.copyfileobj(spool, out, 16 << 20)
        return Path(path)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
