"""Benchmark: motion vectors from H.264 side data vs plain decoding vs OpenCV Farneback flow.

    .venv/bin/python benchmarks/motion_vectors.py [--frames 90] [--repeat 5] [--sizes 256x256,1280x720]

For each size a synthetic clip (a random-noise texture panning (+2, +1) px/frame, tests/clips.py;
the worst case: every block moves and nothing compresses) and, with `--real` (default: the shared
demo clip ../shared/media/motion_transfer.mp4 when present), a real clip cover-resized to the size
are each encoded with libx264 crf 23, preset medium, bf=0 refs=1 (every vector spans one frame: vcomp
reads it directly) and with x264 defaults (B-frames, 3 references: vcomp re-encodes). Rows, per
frame:

    (a)  PyAV decode only (thread_type AUTO, no pixel conversion)
    (a2) decode with flags2=+export_mvs and the side data read (MotionVectors.to_ndarray)
    (b)  vcomp.conditions.motion.iter_motion: probe, SPS check, decode, dense [2,H,W] field
    (b0) the same with still_threshold=0 (every exported vector kept: the cost of the still filter)
    (b') the same, cell grids only (MotionReader.iter_grids, no dense field)
    (c)  OpenCV Farneback on consecutive grayscale pairs (decode + cvtColor included)
    (d)  iter_motion on the x264-defaults clip (in-memory bf=0/refs=1 re-encode), native size
    (d') the same with size=256x256 (frames are cover-resized before the re-encode)

Each row is timed `--repeat` times, interleaved; the median and the minimum are shown, and the
speed ratios (frames/s) are computed from both (the minimum is the better estimate on a machine
other jobs share).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import clips  # noqa: E402
from vcomp.conditions import motion as M  # noqa: E402


def decode_only(path) -> int:
    import av

    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            n += 1
    return n


def decode_vectors(path) -> int:
    import av

    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.options = {"flags2": "+export_mvs"}
        for frame in container.decode(stream):
            sd = frame.side_data.get("MOTION_VECTORS")
            if sd is not None:
                sd.to_ndarray()
            n += 1
    return n


def vcomp_fields(path, size=None, still_threshold=M.STILL_THRESHOLD) -> int:
    return sum(1 for _ in M.iter_motion(path, size, still_threshold=still_threshold))


def vcomp_grids(path) -> int:
    return sum(1 for _ in M.MotionReader(path).iter_grids())


def farneback(path, pairs: int) -> int:
    import av
    import cv2

    previous, n = None, 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            gray = cv2.cvtColor(frame.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)
            if previous is not None:
                cv2.calcOpticalFlowFarneback(previous, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                n += 1
                if n >= pairs:
                    break
            previous = gray
    return n


def timed(fn, *args) -> float:
    """Seconds per frame of one run."""
    start = time.perf_counter()
    n = fn(*args)
    return (time.perf_counter() - start) / max(n, 1)


DEMO_CLIP = ROOT.parent / "shared" / "media" / "motion_transfer.mp4"
ONE_REF = {"bf": "0", "refs": "1", "crf": "23"}  # x264's default crf and preset (medium)
DEFAULTS = {"crf": "23"}


def source_frames(size: tuple[int, int], frames: int, real: Path | None) -> np.ndarray:
    """The noise pan (worst case: every block moves, nothing compresses), or `frames` frames of a
    real clip cover-resized to `size` (played forwards then backwards when it is shorter)."""
    if real is None:
        return np.asarray(list(clips.pan_frames(frames, size, (2, 1))))
    from vcomp.io.video import read_clip

    clip = read_clip(real, size=size).frames
    loop = np.concatenate([clip, clip[::-1]])
    return np.resize(loop, (frames, *loop.shape[1:])) if len(loop) < frames else loop[:frames]


def make_clips(folder: Path, size: tuple[int, int], frames: int, real: Path | None = None) -> tuple[Path, Path]:
    tag = f"{real.stem if real else 'pan'}_{size[0]}"
    video = source_frames(size, frames, real)
    one = clips.encode(video, folder / f"one_{tag}.mp4", ONE_REF)
    default = clips.encode(video, folder / f"def_{tag}.mp4", DEFAULTS)
    return one, default


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="256x256,1280x720")
    parser.add_argument("--farneback-pairs", type=int, default=20)
    parser.add_argument("--real", default=str(DEMO_CLIP) if DEMO_CLIP.is_file() else None,
                        help="also time a real clip, re-encoded at each size (default: the shared demo clip "
                             "motion_transfer.mp4 when it is there; 'none' to skip)")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    sources = [None] + ([Path(args.real)] if args.real and args.real != "none" else [])

    import av
    import cv2

    print(f"av {av.__version__}, numpy {np.__version__}, opencv {cv2.__version__} "
          f"(threads {cv2.getNumThreads()}), {args.frames} frames, median of {args.repeat} runs")
    with tempfile.TemporaryDirectory() as tmp:
        for real, size in itertools.product(sources, sizes):
            one, default = make_clips(Path(tmp), size, args.frames, real)
            reader = M.MotionReader(one)
            assert reader.method == "direct", reader.reason
            assert M.MotionReader(default).method == "reencode"
            rows = {
                "(a)  decode only": (decode_only, one),
                "(a2) decode + export_mvs + to_ndarray": (decode_vectors, one),
                "(b)  vcomp iter_motion, dense field": (vcomp_fields, one),
                "(b0) the same, still cells kept (raw vectors)": (vcomp_fields, one, None, 0.0),
                "(b') vcomp cell grids only": (vcomp_grids, one),
                "(c)  Farneback (gray pairs)": (farneback, one, args.farneback_pairs),
                "(d)  vcomp, x264-default clip (re-encode)": (vcomp_fields, default),
            }
            if size != (256, 256):
                rows["(d') same, size=256x256"] = (vcomp_fields, default, (256, 256))
            samples: dict[str, list[float]] = {name: [] for name in rows}
            for _ in range(args.repeat):
                for name, (fn, *fn_args) in rows.items():
                    samples[name].append(timed(fn, *fn_args))
            ms = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
            best = {name: min(v) * 1e3 for name, v in samples.items()}
            what = f"{real.name}, cover-resized" if real else "noise pan (+2, +1) px/frame"
            print(f"\n{size[0]}x{size[1]} {what} ({args.frames} frames, bf=0 refs=1 clip "
                  f"{one.stat().st_size // 1024} KiB; x264-default clip {default.stat().st_size // 1024} KiB)")
            print(f"  {'path':44s} {'ms/frame':>9s} {'frames/s':>9s} {'min ms':>8s}")
            for name in rows:
                print(f"  {name:44s} {ms[name]:9.3f} {1e3 / ms[name]:9.1f} {min(samples[name]) * 1e3:8.3f}")
            for label, t in (("median", ms), ("min", best)):
                a, a2, b, raw, grids, c = (t[name] for name in list(rows)[:6])
                print(f"  speed ratios ({label:6s}): b/a2 = {a2 / b:.2f} (target >= 0.9), b/a = {a / b:.2f} "
                      f"(>= 0.75), b/c = {c / b:.0f}x (>= 30x); dense fill {b - grids:+.3f} ms/frame, "
                      f"still cells {b - raw:+.3f} ms/frame")


if __name__ == "__main__":
    main()
