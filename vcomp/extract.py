"""`extract`: a video's conditions saved as a folder (conditions.safetensors, meta.json, previews/).

Frames stream through in chunks, and every array is appended to spool files, so a long HD clip
needs memory for one chunk, not for the whole clip. The output folder is built under a temp name
and appears only when complete.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from vcomp import __version__
from vcomp.conditions.condition_set import META_FILE, TENSORS_FILE, parse_names
from vcomp.errors import InputError
from vcomp.io import SafetensorsWriter, Sampling, VideoWriter, atomic_dir, check_writable_target, iter_frames, probe

#: what `vcomp extract` produces when --conditions is not given (mask needs --mask or --box)
DEFAULT_CONDITIONS = ("motion", "depth", "sketch", "image", "single_sketch", "style")
CHUNK_BYTES = 256 << 20  # working-set budget per chunk of frames
SHEET_HEIGHT = 144  # pixels per frame in the preview contact sheet


@dataclass
class ExtractResult:
    """Where the conditions went and what they are."""

    output: Path
    conditions: dict
    meta: dict
    previews: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    nbytes: int = 0

    def to_dict(self) -> dict:
        return {"output": str(self.output), "tensors": str(self.output / TENSORS_FILE),
                "meta": str(self.output / META_FILE), "conditions": self.conditions,
                "frames": len(self.meta["frame_indices"]), "size": self.meta["size"], "fps": self.meta["fps"],
                "previews": self.previews, "timings": self.timings, "bytes": self.nbytes}

    def summary(self) -> str:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v['shape']))}" for k, v in self.conditions.items())
        return (f"wrote {self.output}/ ({_format_bytes(self.nbytes)}): {shapes} "
                f"in {self.timings.get('total', 0):.1f} s")


def _format_bytes(n: int) -> str:
    from vcomp.conditions.motion import format_nbytes

    return format_nbytes(n)


def _chunk_frames(width: int, height: int) -> int:
    per_frame = width * height * (3 + 4 * 6)  # the frame plus float32 motion, depth, sketch, mask
    return int(np.clip(CHUNK_BYTES // max(per_frame, 1), 8, 256))


def _chunks(items: Iterator[tuple[int, np.ndarray]], size: int) -> Iterator[tuple[list[int], np.ndarray]]:
    batch: list[tuple[int, np.ndarray]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield [i for i, _ in batch], np.stack([f for _, f in batch])
            batch = []
    if batch:
        yield [i for i, _ in batch], np.stack([f for _, f in batch])


class _MotionSource:
    """Motion for successive chunks: the stream's own vectors at the native rate, or the
    vectors of a bf=0/refs=1 encode of the sampled frames when frames are skipped."""

    def __init__(self, src: Path, sampling: Sampling, size, fps: float, native: bool, still_threshold: float):
        from vcomp.conditions import motion

        self.native = native
        self._previous: np.ndarray | None = None
        self.info = motion.extractor_info(units="pixels per sampled frame step", still_threshold=still_threshold)
        if native:
            self.reader = motion.MotionReader(src, size, still_threshold=still_threshold)
            wanted = None
            if sampling.frames is not None:
                wanted = range(sampling.start, sampling.start + sampling.frames)
            self._fields = (f for i, f in self.reader.iter(wanted) if i >= sampling.start)
        else:  # the re-encode is the only reader that needs the rate and threshold after this point
            self._reencode = functools.partial(motion.motion_from_frames, fps=fps, still_threshold=still_threshold)
            self.info.update(method="reencode-sampled", reason="frames are sampled: motion is between sampled frames")

    def next(self, frames: np.ndarray) -> np.ndarray:
        if self.native:
            fields = [next(self._fields) for _ in range(len(frames))]
            self.info.update(method=self.reader.method_used, reason=self.reader.reason)
            return np.stack(fields)
        if self._previous is None:
            out = self._reencode(frames)
        else:  # overlap one frame so motion continues across chunk boundaries
            out = self._reencode(np.concatenate([self._previous, frames]))[1:]
        self._previous = frames[-1:]
        return out


def extract(
    src: str | os.PathLike,
    output: str | os.PathLike,
    *,
    conditions=None,
    sampling: Sampling = Sampling(),
    size: tuple[int, int] | None = None,
    mask: str | os.PathLike | None = None,
    box: str | None = None,
    previews: bool = True,
    weights_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    log: Callable[[str], None] | None = None,
    still_threshold: float | None = None,
) -> ExtractResult:
    """Extract `conditions` (default: all that need no extra input) from `src` into the folder
    `output`. Raises InputError for bad input; nothing is written unless extraction completes.
    `still_threshold`: motion cells whose pixels changed less than this (mean absolute luma
    levels) read 0; None = `motion.STILL_THRESHOLD`, 0 = every vector the codec exported."""
    from vcomp.conditions import depth, image, sketch, style
    from vcomp.conditions import mask as masks
    from vcomp.conditions import motion as motions
    from vcomp.conditions import previews as pv

    still_threshold = motions.checked_still_threshold(
        motions.STILL_THRESHOLD if still_threshold is None else still_threshold)

    started = time.perf_counter()
    src, output = Path(src), Path(output)
    names = parse_names(conditions) if conditions else list(DEFAULT_CONDITIONS)
    if (mask is not None or box is not None) and "mask" not in names:
        names = parse_names([*names, "mask"])
    if "mask" in names and mask is None and box is None:
        raise InputError("the mask condition needs --mask FILE or --box x,y,w,h")
    if mask is not None and box is not None:
        raise InputError("give either --mask or --box, not both")
    check_writable_target(output, is_dir=True, replaceable=lambda p: p.name in (TENSORS_FILE, META_FILE, "previews"))
    info = probe(src)
    out_w, out_h = size or (info.width, info.height)
    step = sampling.step(info.fps)
    fps = info.fps / step
    expected = max(1, -(-max(0, info.frame_count - sampling.start) // max(1, round(step))))
    if sampling.frames:
        expected = min(expected, sampling.frames)
    temporal = [n for n in names if n in ("motion", "depth", "sketch", "mask")]
    if log:
        log(f"{src.name}: {info.width}x{info.height} {info.fps:.2f} fps, ~{expected} frames -> "
            f"{out_w}x{out_h}, conditions: {', '.join(names)} "
            f"(~{_format_bytes(expected * out_w * out_h * 4 * (len(temporal) + ('motion' in names)))})")
    timings = {n: 0.0 for n in names}
    extractors: dict[str, dict] = {}
    mask_full = None
    if "mask" in names:  # before any work: a bad mask fails fast
        t0 = time.perf_counter()
        if mask is not None:
            mask_full = masks.mask_from_video_or_image(mask, expected, (out_w, out_h))
            extractors["mask"] = {"extractor": "file", "source": str(mask)}
        else:
            mask_full = masks.mask_from_box(box, expected, (out_w, out_h))
            extractors["mask"] = {"extractor": "box", "box": box}
        timings["mask"] += time.perf_counter() - t0
    with atomic_dir(output) as tmp, SafetensorsWriter(tmp) as tensors:
        preview_dir = tmp / "previews"
        writers: dict[str, VideoWriter] = {}
        motion_source = None
        if "motion" in names:
            motion_source = _MotionSource(src, sampling, size, fps, native=step == 1.0,
                                          still_threshold=still_threshold)
        indices: list[int] = []
        sheet_rows: dict[str, np.ndarray] = {}
        try:
            for chunk_indices, frames in _chunks(iter_frames(src, sampling, size, info), _chunk_frames(out_w, out_h)):
                first = not indices
                indices += chunk_indices
                arrays: dict[str, np.ndarray] = {}
                if first:
                    still = _spatial(names, frames, tensors, extractors, timings, weights_dir, image, sketch, style)
                for name in temporal:
                    t0 = time.perf_counter()
                    if name == "motion":
                        arrays[name] = motion_source.next(frames)
                        extractors[name] = motion_source.info
                    elif name == "depth":
                        arrays[name], extractors[name] = depth.estimate_depth(frames, weights_dir)
                    elif name == "sketch":  # thresholds of the first chunk hold for the whole clip
                        fixed = extractors.get(name) or {}
                        arrays[name], sketch_info = sketch.extract_sketch(
                            frames, fixed.get("low"), fixed.get("high"), weights_dir=weights_dir)
                        extractors.setdefault(name, sketch_info)
                    else:
                        positions = np.minimum(np.arange(len(indices) - len(frames), len(indices)), len(mask_full) - 1)
                        arrays[name] = mask_full[positions]
                    tensors.append(name, arrays[name])
                    timings[name] += time.perf_counter() - t0
                if previews:
                    _write_preview_chunk(arrays, frames, preview_dir, writers, fps, pv, sheet_rows)
                if progress:
                    progress(len(indices), max(expected, len(indices)))
            if not indices:
                raise InputError(f"{src} has no decodable frames from frame {sampling.start}; "
                                 "give a video with at least one frame")
            for writer in writers.values():
                writer.__exit__(None, None, None)
            writers.clear()
        except BaseException:
            for writer in writers.values():
                writer.__exit__(KeyboardInterrupt, None, None)
            raise
        shapes = tensors.shapes()
        meta = {
            "vcomp_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": info.to_dict(),
            "source_size": [info.width, info.height],
            "fps": fps,
            "size": [out_w, out_h],
            "frame_indices": indices,
            "sampling": {"frames": sampling.frames, "stride": sampling.stride, "fps": sampling.fps,
                         "start": sampling.start},
            "extractors": {n: extractors.get(n) for n in names},
            "shapes": shapes,
        }
        tensors.finish(tmp / TENSORS_FILE, metadata={"format": "vcomp-conditions", "version": __version__})
        (tmp / META_FILE).write_text(__import__("json").dumps(meta, indent=2, default=str) + "\n")
        written = {}
        if previews:
            written = _finish_previews(still, preview_dir, sheet_rows, pv)
        nbytes = tensors.nbytes()
    timings = {k: round(v, 3) for k, v in timings.items()}
    timings["total"] = round(time.perf_counter() - started, 3)
    described = {n: {"shape": shapes[n], "extractor": (extractors.get(n) or {}).get("extractor")} for n in names}
    previews_out = {k: str(output / Path(v).relative_to(tmp)) for k, v in written.items()}
    return ExtractResult(output, described, meta, previews_out, timings, nbytes)


def _spatial(names, frames, tensors, extractors, timings, weights_dir, image, sketch, style) -> dict:
    """The one-image conditions, from the first frame (style: the middle of the first chunk)."""
    out = {}
    if "image" in names:
        t0 = time.perf_counter()
        out["image"] = image.image_condition(frames[0])
        tensors.put("image", out["image"])
        extractors["image"] = {"extractor": "first-frame"}
        timings["image"] += time.perf_counter() - t0
    if "single_sketch" in names:
        t0 = time.perf_counter()
        out["single_sketch"], info = sketch.single_sketch_from_image(frames[0], weights_dir=weights_dir)
        tensors.put("single_sketch", out["single_sketch"])
        extractors["single_sketch"] = {**info, "from": "first frame"}
        timings["single_sketch"] += time.perf_counter() - t0
    if "style" in names:
        t0 = time.perf_counter()
        embedding, info = style.style_embedding(frames[len(frames) // 2], weights_dir)
        tensors.put("style", embedding)
        extractors["style"] = {**info, "from": "middle frame of the first chunk"}
        timings["style"] += time.perf_counter() - t0
    return out


def _write_preview_chunk(arrays, frames, preview_dir, writers, fps, pv, sheet_rows) -> None:
    renderers = {"motion": pv.motion_preview, "depth": pv.depth_to_rgb, "sketch": pv.sketch_to_rgb,
                 "mask": lambda m: pv.mask_to_rgb(m, frames)}
    sheet_rows.setdefault("source", frames)
    for name, array in arrays.items():
        rgb = renderers[name](array)
        if rgb is None:
            continue
        if name not in writers:
            preview_dir.mkdir(exist_ok=True)
            writers[name] = VideoWriter(preview_dir / f"{name}.mp4", fps).__enter__()
        writers[name].write(rgb)
        sheet_rows.setdefault(name, rgb)


def _finish_previews(still, preview_dir, sheet_rows, pv) -> dict[str, Path]:
    """Single-image previews and a labelled contact sheet of the first chunk (frames at most
    SHEET_HEIGHT pixels high, so the sheet stays small for HD sources)."""
    from vcomp.io import contact_sheet, resize_frames, write_png

    written = {n: preview_dir / f"{n}.mp4" for n in sheet_rows if n != "source"}
    if "image" in still:
        written["image"] = write_png(preview_dir / "image.png", pv.image_to_rgb(still["image"]))
    if "single_sketch" in still:
        written["single_sketch"] = write_png(preview_dir / "single_sketch.png",
                                             pv.sketch_to_rgb(still["single_sketch"][None])[0])
    rows = []
    for name, clip in sheet_rows.items():
        h, w = clip.shape[1:3]
        if h > SHEET_HEIGHT:
            clip = resize_frames(clip, (max(2, round(w * SHEET_HEIGHT / h)), SHEET_HEIGHT))
        clip = clip.copy()
        clip[0] = pv.label(clip[0], name)
        rows.append(clip)
    if rows:
        written["sheet"] = write_png(preview_dir / "sheet.png", contact_sheet(rows))
    return written
