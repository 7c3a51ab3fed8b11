"""`vcomp extract` end to end through the CLI: outputs, motion on a clip with known motion,
streaming in chunks, and one-line errors with exit code 2 and no partial output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vcomp import extract as extract_module
from vcomp.cli import main
from vcomp.conditions.condition_set import ConditionSet
from vcomp.conditions.sketch import extract_sketch
from vcomp.io import Sampling, encode_h264, read_clip

SHARED = Path(__file__).resolve().parents[2] / "shared"
BLACKSWAN = SHARED / "media" / "blackswan.mp4"
VX, VY = 3, 1  # the square's motion in pixels per frame


def moving_square(frames: int = 12, size: int = 96, square: int = 32, seed: int = 0) -> np.ndarray:
    """A noise-textured square moving (+3, +1) px per frame over a static noise background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    background = np.repeat(np.repeat(background[::4, ::4], 4, 0), 4, 1)  # 4-px texture: codable
    texture = np.repeat(np.repeat(rng.integers(0, 256, (square // 4, square // 4, 3), dtype=np.uint8), 4, 0), 4, 1)
    clip = np.repeat(background[None], frames, 0)
    for t in range(frames):
        x, y = 16 + VX * t, 24 + VY * t
        clip[t, y:y + square, x:x + square] = texture
    return clip


@pytest.fixture(scope="module")
def square_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "square.mp4"
    return encode_h264(moving_square(), path, 10, bf=0, refs=1, crf=12)


def run_cli(*args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def square_interior(t: int, scale: float = 1.0) -> tuple[slice, slice]:
    x, y = 16 + VX * t, 24 + VY * t
    return slice(int((y + 8) * scale), int((y + 24) * scale)), slice(int((x + 8) * scale), int((x + 24) * scale))


def test_extract_writes_folder_and_json(square_clip, tmp_path, capsys):
    out = tmp_path / "conds"
    code, stdout, err = run_cli("extract", square_clip, "-o", out, "--json", "--box", "0.25,0.25,0.5,0.5", capsys=capsys)
    assert code == 0, err
    report = json.loads(stdout)  # stdout holds exactly one JSON object
    assert report["frames"] == 12 and report["size"] == [96, 96]
    assert set(report["conditions"]) == {"motion", "depth", "sketch", "mask", "image", "single_sketch", "style"}
    cs = ConditionSet.load(out)
    assert cs.motion.shape == (12, 2, 96, 96) and cs.depth.shape == (12, 1, 96, 96)
    assert cs.image.shape == (3, 96, 96) and cs.single_sketch.shape == (1, 96, 96) and cs.style.ndim == 1
    assert cs.mask[:, 0, 24:72, 24:72].min() == 1 and cs.mask.sum() == 12 * 48 * 48
    assert 0 <= cs.depth.min() and cs.depth.max() <= 1
    meta = json.loads((out / "meta.json").read_text())
    assert meta["frame_indices"] == list(range(12))
    assert meta["extractors"]["depth"]["fallback"] is True
    previews = {p.name for p in (out / "previews").iterdir()}
    assert {"motion.mp4", "depth.mp4", "sketch.mp4", "mask.mp4", "image.png", "sheet.png"} <= previews
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def measured(motion: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Median (x, y) motion over the square's interior, frames 1.. (frame 0 has no motion)."""
    return np.array([np.median(motion[t][:, *square_interior(t, scale)].reshape(2, -1), axis=1)
                     for t in range(1, len(motion))])


def test_native_rate_motion_matches_the_truth(square_clip, tmp_path, capsys):
    code, _, err = run_cli("extract", square_clip, "-o", tmp_path / "c", "-c", "motion", "--no-previews", capsys=capsys)
    assert code == 0, err
    motion = ConditionSet.load(tmp_path / "c").motion
    assert np.abs(motion[0]).max() == 0
    good = np.all(np.abs(measured(motion) - [VX, VY]) <= 0.5, axis=1)
    assert good.mean() >= 0.9
    assert np.abs(np.median(motion[1:, :, :, 88:], axis=(0, 2, 3))).max() < 0.25  # static right edge


@pytest.mark.parametrize("extra", [[], ["--stride", "2"]])
def test_still_threshold_sets_which_cells_read_zero(square_clip, tmp_path, capsys, extra):
    """--still-threshold reaches both motion readers (the stream's own vectors, and the re-encode
    of sampled frames) and the metadata: a threshold above any pixel change makes every cell
    still, so the field is all zero; 0 keeps the square's vectors."""
    fields = {}
    for threshold in ("0", "1000"):
        out = tmp_path / f"t{threshold}"
        code, _, err = run_cli("extract", square_clip, "-o", out, "-c", "motion", "--no-previews",
                               "--still-threshold", threshold, *extra, capsys=capsys)
        assert code == 0, err
        fields[threshold] = ConditionSet.load(out).motion
        meta = json.loads((out / "meta.json").read_text())
        assert meta["extractors"]["motion"]["still_threshold"] == float(threshold)
    assert np.abs(fields["0"][1:]).max() > 1 and np.abs(fields["1000"]).max() == 0
    code, _, err = run_cli("extract", square_clip, "-o", tmp_path / "d", "-c", "depth", "--no-previews",
                           "--still-threshold", "0", *extra, capsys=capsys)
    assert code == 0 and "motion only" in err  # said, not silently ignored


def test_stride_doubles_motion_and_size_scales_it(square_clip, tmp_path, capsys):
    code, _, err = run_cli("extract", square_clip, "-o", tmp_path / "s", "-c", "motion", "--stride", "2",
                           "--no-previews", capsys=capsys)
    assert code == 0, err
    cs = ConditionSet.load(tmp_path / "s")
    assert cs.meta["frame_indices"] == [0, 2, 4, 6, 8, 10]
    per_step = np.array([np.median(cs.motion[k][:, *square_interior(2 * k)].reshape(2, -1), axis=1)
                         for k in range(1, 6)])
    assert np.all(np.abs(per_step - [2 * VX, 2 * VY]) <= 0.5)

    code, _, err = run_cli("extract", square_clip, "-o", tmp_path / "h", "-c", "motion", "--size", "48x48",
                           "--no-previews", capsys=capsys)
    assert code == 0, err
    half = ConditionSet.load(tmp_path / "h").motion
    assert half.shape == (12, 2, 48, 48)
    good = np.all(np.abs(measured(half, 0.5) - [VX / 2, VY / 2]) <= 0.5, axis=1)
    assert good.mean() >= 0.9


@pytest.mark.parametrize("extra", [[], ["--stride", "2"]])
def test_chunked_streaming_gives_the_same_arrays(square_clip, tmp_path, monkeypatch, extra):
    whole = extract_module.extract(square_clip, tmp_path / "whole", conditions="motion,sketch",
                                   sampling=extract_module.Sampling(stride=int(extra[1]) if extra else None))
    monkeypatch.setattr(extract_module, "CHUNK_BYTES", 1)  # -> 8-frame chunks
    chunked = extract_module.extract(square_clip, tmp_path / "chunked", conditions="motion,sketch",
                                     sampling=extract_module.Sampling(stride=int(extra[1]) if extra else None))
    a, b = ConditionSet.load(whole.output), ConditionSet.load(chunked.output)
    thresholds = b.meta["extractors"]["sketch"]  # one pair for the whole clip, from the first chunk
    clip = read_clip(square_clip, Sampling(stride=int(extra[1]) if extra else None))
    assert np.array_equal(b.sketch, extract_sketch(clip.frames, thresholds["low"], thresholds["high"])[0])
    assert np.allclose(a.motion, b.motion, atol=1.0)  # a re-encode of other frames may differ by a block
    assert np.abs(a.motion - b.motion).mean() < 0.05


def test_blackswan_shapes_and_ranges(tmp_path, capsys):
    code, stdout, err = run_cli("extract", BLACKSWAN, "-o", tmp_path / "bs", "-n", "8", "--fps", "10",
                                "--size", "128x128", "--json", capsys=capsys)
    assert code == 0, err
    cs = ConditionSet.load(tmp_path / "bs")
    assert cs.motion.shape == (8, 2, 128, 128) and np.isfinite(cs.motion).all()
    assert np.abs(cs.motion).max() < 64  # plausible: under half the frame per step
    assert cs.meta["frame_indices"] == [0, 2, 4, 6, 8, 10, 12, 14]
    assert 0 < cs.sketch.mean() < 0.5


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert "vcomp" in capsys.readouterr().out
    assert main(["extract", "--help"]) == 0
    assert "Examples" in capsys.readouterr().out


def _zero_frame_mkv(path: Path) -> Path:
    container = av.open(str(path), "w", format="matroska")
    stream = container.add_stream("libx264", rate=Fraction(10))
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    return path


BAD_INPUTS = {
    "missing file": lambda d, clip: ["extract", d / "nope.mp4"],
    "text file named .mp4": lambda d, clip: ["extract", _write(d / "text.mp4", b"not a video\n" * 50)],
    "empty file": lambda d, clip: ["extract", _write(d / "empty.mp4", b"")],
    "zero-frame video": lambda d, clip: ["extract", _zero_frame_mkv(d / "zero.mkv")],
    "truncated mp4": lambda d, clip: ["extract", _write(d / "cut.mp4", clip.read_bytes()[: clip.stat().st_size // 3])],
    "unknown condition": lambda d, clip: ["extract", clip, "-c", "motion,colour"],
    "unwritable output": lambda d, clip: ["extract", clip, "-o", "/proc/vcomp-test/out"],
    "output is a file": lambda d, clip: ["extract", clip, "-o", _write(d / "file", b"x") / "sub"],
    "bad size": lambda d, clip: ["extract", clip, "--size", "big"],
    "bad box": lambda d, clip: ["extract", clip, "--box", "0.5,0.5,0.9"],
    "mask without source": lambda d, clip: ["extract", clip, "-c", "mask"],
    "mask not an image": lambda d, clip: ["extract", clip, "--mask", _write(d / "mask.png", b"no image here")],
    "start past the end": lambda d, clip: ["extract", clip, "--start", "500"],
    "stride and fps": lambda d, clip: ["extract", clip, "--stride", "2", "--fps", "4"],
    "zero frames requested": lambda d, clip: ["extract", clip, "-n", "0"],
    "negative still threshold": lambda d, clip: ["extract", clip, "-c", "motion", "--still-threshold", "-1"],
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_output(case, square_clip, tmp_path, capsys):
    work = tmp_path / "in"
    work.mkdir()
    args = BAD_INPUTS[case](work, square_clip)
    if "-o" not in args:
        args += ["-o", tmp_path / "out"]
    code, stdout, err = run_cli(*args, capsys=capsys)
    assert code == 2, err
    assert stdout == ""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith(("error:", "Error:")), err
    assert "Traceback" not in err
    if "Error:" not in err:  # our own errors are exactly one line
        assert len(lines) == 1, err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.rglob(".*") if p.is_dir()], "temp folder left behind"


def test_sigterm_leaves_no_partial_output(tmp_path):
    # long enough (600 frames) that extraction is still running when the signal lands, even on a busy machine
    frames = np.concatenate([moving_square(50, 256, 64, seed=s) for s in range(12)])
    clip = encode_h264(frames, tmp_path / "long.mp4", 30, bf=0, refs=1)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vcomp", "extract", str(clip), "-o", str(out), "-q"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 60
    # wait until the first chunk's previews are being written: past the lazy imports of the extractors
    # (a signal during `import torch` can make CPython exit by SIGINT whatever the handler does)
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob(".out.*/previews/*")):
        time.sleep(0.02)
    assert proc.poll() is None, "extraction ended before the signal"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4"]


def test_an_unrelated_folder_is_never_replaced(square_clip, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    code, _, err = run_cli("extract", square_clip, "-o", folder, capsys=capsys)
    assert code == 2 and "other files" in err
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"]
    # a previous conditions folder is replaced
    assert run_cli("extract", square_clip, "-o", tmp_path / "c", "-c", "sketch", capsys=capsys)[0] == 0
    assert run_cli("extract", square_clip, "-o", tmp_path / "c", "-c", "depth", capsys=capsys)[0] == 0
    assert ConditionSet.load(tmp_path / "c").present() == ["depth"]
