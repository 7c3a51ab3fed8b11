"""A corpus of bad inputs run through the CLI (in-process): each gives exit 2 (input/usage) or 3
(weights), nothing on stdout, one `error:` line on stderr (click's usage block for usage errors)
with no traceback, and no output file, contact sheet, sidecar or temp file. `--debug` shows the
traceback; a full disk and SIGTERM leave nothing partial. `extract`'s own corpus is in
test_extract.py. Generation uses a randomly initialised tiny model (VCOMP_ALLOW_RANDOM=1)."""

from __future__ import annotations

import errno
import os
import pathlib
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vcomp.cli import main
from vcomp.io import encode_h264, write_png, write_video

FAST = ["--steps", "1", "--frames", "4", "--no-preview", "-q"]
PROMPT = "a red circle"


@pytest.fixture(autouse=True)
def random_model(monkeypatch):
    monkeypatch.setenv("VCOMP_ALLOW_RANDOM", "1")
    monkeypatch.delenv("VCOMP_DEBUG", raising=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _zero_frame_mkv(path: Path) -> Path:
    container = av.open(str(path), "w", format="matroska")
    stream = container.add_stream("libx264", rate=Fraction(8))
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Inputs shared by every case: a good 8-frame clip and bad files of every kind."""
    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    clip = np.repeat(np.repeat(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8), 4, 1), 4, 2)
    for t in range(8):
        clip[t, 8 + 3 * t:32 + 3 * t, 8:32] = 255
    encode_h264(clip, d / "src.mp4", 8, bf=0, refs=1, crf=18)
    data = (d / "src.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 3])
    (d / "text.mp4").write_bytes(b"not a video\n" * 50)
    (d / "text.png").write_bytes(b"not an image\n")
    (d / "mask.txt").write_text("white = regenerate\n")
    (d / "empty.mp4").write_bytes(b"")
    _zero_frame_mkv(d / "zero.mkv")
    (d / "not-conditions").mkdir()
    mask = np.zeros((30, 50, 3), np.uint8)  # another size and aspect than the 64x64 output
    mask[8:22, 10:40] = 255
    write_png(d / "mask-other-size.png", mask)
    write_png(d / "mask-black.png", np.zeros((16, 16, 3), np.uint8))
    video_mask = np.zeros((3, 48, 80, 3), np.uint8)  # 3 frames for a 4-frame output, other size
    video_mask[:, 10:40, 20:60] = 255
    write_video(d / "mask-3-frames.mp4", video_mask, 8)
    write_png(d / "style.png", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    return d


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, expected: int) -> None:
    assert code == expected, err
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if any(line.startswith("Error:") for line in lines):  # click's usage error: usage, hint, Error: ...
        assert lines[-1].startswith("Error:"), err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err


def leftovers(folder: Path, keep: set[str] = frozenset()) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if not any(str(p.relative_to(folder)).startswith(k) for k in keep))


def _dir_with_file(work: Path) -> Path:
    (work / "keep").mkdir()
    (work / "keep" / "notes.txt").write_text("mine")
    return work / "keep"


# name -> (arguments; `m` = media folder, `o` = output path, `w` = work folder), expected exit code
CASES = {
    # t2v: prompt and option values
    "t2v empty prompt": (lambda m, o, w: ["t2v", "  ", "-o", o], 2),
    "t2v size not a multiple of 8": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--size", "100x100"], 2),
    "t2v size zero": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--size", "0x8"], 2),
    "t2v size not WxH": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--size", "big"], 2),
    "t2v size not a multiple of the model cell": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--size", "40x40"], 2),
    "t2v zero steps": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--steps", "0"], 2),
    "t2v more steps than DDIM has": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--steps", "501"], 2),
    "t2v zero frames": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--frames", "0"], 2),
    "t2v too many frames": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--frames", "999"], 2),
    "t2v unknown guide": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--guide", "bogus"], 2),
    "t2v guide motion without motion": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--guide", "motion"], 2),
    "t2v negative guidance": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--guidance", "-1"], 2),
    "t2v negative eta": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--eta", "-1"], 2),
    "t2v zero fps": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--fps", "0"], 2),
    "t2v seed not a number": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--seed", "abc"], 2),
    "t2v unknown device": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--device", "tpu"], 2),
    "t2v path of one point": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--path", "0.1,0.5"], 2),
    "t2v path out of range": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--path", "0.1,0.5 1.5,0.5"], 2),
    "t2v path not numbers": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--path", "left right"], 2),
    "t2v path nan": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--path", "nan,0.5 0.5,0.5"], 2),
    "t2v image missing": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--image", m / "nope.png"], 2),
    "t2v image not an image": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--image", m / "text.png"], 2),
    "t2v style is a video": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--style", m / "src.mp4"], 2),
    "t2v depth not a video": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--depth", m / "text.mp4"], 2),
    "t2v conditions not from extract": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--conditions", m / "not-conditions"], 2),
    "t2v weights folder missing": (lambda m, o, w: ["t2v", PROMPT, "-o", o, "--weights", m / "nope"], 2),
    # outputs
    "output is an existing directory": (lambda m, o, w: ["t2v", PROMPT, "-o", (w / "dir.mp4").mkdir() or w / "dir.mp4"], 2),
    "output folder holds other files": (lambda m, o, w: ["t2v", PROMPT, "-o", _dir_with_file(w)], 2),
    "output extension avi": (lambda m, o, w: ["t2v", PROMPT, "-o", w / "o.avi"], 2),
    "output unwritable": (lambda m, o, w: ["t2v", PROMPT, "-o", "/proc/vcomp-test/o.mp4"], 2),
    "output under a file": (lambda m, o, w: ["t2v", PROMPT, "-o", m / "style.png" / "o.mp4"], 2),
    # motion-transfer: sources
    "motion-transfer missing source": (lambda m, o, w: ["motion-transfer", m / "nope.mp4", "-p", PROMPT, "-o", o], 2),
    "motion-transfer text file named .mp4": (lambda m, o, w: ["motion-transfer", m / "text.mp4", "-p", PROMPT, "-o", o], 2),
    "motion-transfer empty file": (lambda m, o, w: ["motion-transfer", m / "empty.mp4", "-p", PROMPT, "-o", o], 2),
    "motion-transfer truncated mp4": (lambda m, o, w: ["motion-transfer", m / "cut.mp4", "-p", PROMPT, "-o", o], 2),
    "motion-transfer zero-frame video": (lambda m, o, w: ["motion-transfer", m / "zero.mkv", "-p", PROMPT, "-o", o], 2),
    "motion-transfer too few frames": (lambda m, o, w: ["motion-transfer", m / "src.mp4", "-p", PROMPT, "-o", o, "--frames", "30"], 2),
    "motion-transfer empty prompt": (lambda m, o, w: ["motion-transfer", m / "src.mp4", "-p", "", "-o", o], 2),
    "motion-transfer no prompt": (lambda m, o, w: ["motion-transfer", m / "src.mp4", "-o", o], 2),
    "motion-transfer negative motion guidance": (lambda m, o, w: ["motion-transfer", m / "src.mp4", "-p", PROMPT, "-o", o,
                                                                   "--motion-guidance", "-0.5"], 2),
    "motion-transfer negative fps": (lambda m, o, w: ["motion-transfer", m / "src.mp4", "-p", PROMPT, "-o", o, "--fps", "-3"], 2),
    # inpaint: masks
    "inpaint mask is text named .png": (lambda m, o, w: ["inpaint", m / "src.mp4", "-p", PROMPT, "--mask", m / "text.png", "-o", o], 2),
    "inpaint mask is a text file": (lambda m, o, w: ["inpaint", m / "src.mp4", "-p", PROMPT, "--mask", m / "mask.txt", "-o", o], 2),
    "inpaint mask missing": (lambda m, o, w: ["inpaint", m / "src.mp4", "-p", PROMPT, "--mask", m / "nope.png", "-o", o], 2),
    "inpaint mask all black": (lambda m, o, w: ["inpaint", m / "src.mp4", "-p", PROMPT, "--mask", m / "mask-black.png", "-o", o], 2),
    "inpaint neither mask nor box": (lambda m, o, w: ["inpaint", m / "src.mp4", "-p", PROMPT, "-o", o], 2),
    "inpaint box of two numbers": (lambda m, o, w: ["inpaint", m / "src.mp4", "-p", PROMPT, "--box", "0.1,0.1", "-o", o], 2),
    # translate / stylize
    "translate unknown structure": (lambda m, o, w: ["translate", m / "src.mp4", "-p", PROMPT, "--structure", "foo", "-o", o], 2),
    "translate source is an empty folder": (lambda m, o, w: ["translate", m / "not-conditions", "-p", PROMPT, "-o", o], 2),
    "stylize style missing": (lambda m, o, w: ["stylize", m / "src.mp4", "--style", m / "nope.png", "-o", o], 2),
    "stylize style not an image": (lambda m, o, w: ["stylize", m / "src.mp4", "--style", m / "text.png", "-o", o], 2),
    "stylize unknown structure": (lambda m, o, w: ["stylize", m / "src.mp4", "--style", m / "style.png", "--structure", "edges", "-o", o], 2),
    # models / batch
    "models weights is a file": (lambda m, o, w: ["models", "--weights", m / "style.png"], 2),
    "batch job file missing": (lambda m, o, w: ["batch", m / "nope.jsonl"], 2),
    "batch job file empty": (lambda m, o, w: ["batch", m / "empty.mp4"], 2),
    "batch job file is a folder": (lambda m, o, w: ["batch", m / "not-conditions"], 2),
    "batch job file is binary": (lambda m, o, w: ["batch", m / "src.mp4"], 2),
    "batch shard out of range": (lambda m, o, w: ["batch", m / "mask.txt", "--shard", "3/2"], 2),
    "batch shard malformed": (lambda m, o, w: ["batch", m / "mask.txt", "--shard", "half"], 2),
}
GENERATING = ("t2v", "motion-transfer", "inpaint", "translate", "stylize")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, media, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    build, expected = CASES[case]
    args = [str(a) for a in build(media, work / "o.mp4", work)]
    if args[0] in GENERATING:
        args[1:1] = FAST  # options first: a case's own value of --steps / --frames wins
    before = leftovers(work)
    code, out, err = run_cli(capsys, *args)
    assert_one_line_error(code, out, err, expected)
    assert leftovers(work) == before, "output, sheet, sidecar or temp file left behind"
    if case == "output folder holds other files":
        assert (work / "keep" / "notes.txt").read_text() == "mine"


def test_device_cuda_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = run_cli(capsys, "t2v", PROMPT, *FAST, "--device", "cuda", "-o", tmp_path / "o.mp4")
    assert_one_line_error(code, out, err, 2)
    assert "--device cpu" in err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("mask", ["mask-other-size.png", "mask-3-frames.mp4"])
def test_mask_of_another_size_or_length_is_resampled(mask, media, tmp_path, capsys):
    """Positive controls: masks that do not match the output are resampled, not refused."""
    code, out, err = run_cli(capsys, "inpaint", media / "src.mp4", "-p", PROMPT, "--mask", media / mask,
                             *FAST, "-o", tmp_path / "o.mp4")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.mp4"]


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, out, err = run_cli(capsys, "--debug", "t2v", PROMPT, *FAST, "--size", "100x100", "-o", tmp_path / "o.mp4")
    assert code == 2 and out == ""
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: --size")


# -- a full disk ------------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["video", "sidecar"])
def test_disk_full_leaves_nothing(where, tmp_path, capsys, monkeypatch):
    from vcomp.io.video import H264Encoder

    if where == "video":
        monkeypatch.setattr(H264Encoder, "write", _enospc)
    else:  # the video is complete when the sidecar fails: it must be removed again
        real = pathlib.Path.write_text
        monkeypatch.setattr(pathlib.Path, "write_text",
                            lambda self, *a, **k: _enospc() if self.suffix == ".json" else real(self, *a, **k))
    code, out, err = run_cli(capsys, "t2v", PROMPT, *FAST, "-o", tmp_path / "o.mp4")
    assert_one_line_error(code, out, err, 2)
    assert "no space left" in err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_writing_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    from vcomp.io.video import H264Encoder

    real = H264Encoder.write

    def write_then_interrupt(self, frames):
        real(self, frames[:1])  # the temp file has started
        raise KeyboardInterrupt

    monkeypatch.setattr(H264Encoder, "write", write_then_interrupt)
    code, out, err = run_cli(capsys, "t2v", PROMPT, *FAST, "-o", tmp_path / "o.mp4")
    assert code == 130 and out == "" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# -- weights: corrupt, tampered, with code, absent --------------------------------------------
@pytest.fixture
def assets(tmp_path, monkeypatch) -> Path:
    """A VCOMP_ASSETS folder holding a (random) embedded model; tests then damage it."""
    from vcomp.weights.embedded import random_embedded, save_embedded

    folder = tmp_path / "assets"
    emb = random_embedded()
    save_embedded(folder, emb.unet, emb.text_encoder, autoencoder=emb.autoencoder)
    monkeypatch.setenv("VCOMP_ASSETS", str(folder))
    monkeypatch.delenv("VCOMP_ALLOW_RANDOM")
    return folder


def _truncate(folder: Path) -> None:
    path = folder / "embedded.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _tamper(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "embedded.safetensors"
    tensors = load_file(path)
    name = next(k for k in tensors if k.startswith("unet.") and tensors[k].ndim == 2)
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, path)


def _garble_json(folder: Path) -> None:
    (folder / "embedded.json").write_text('{"format": "vcomp-embedded-v1", "model": ')


def _remove(folder: Path) -> None:
    (folder / "embedded.safetensors").unlink()


@pytest.mark.parametrize("damage", [_truncate, _tamper, _garble_json, _remove], ids=lambda f: f.__name__[1:])
def test_bad_embedded_model_is_exit_3(damage, assets, tmp_path, capsys):
    damage(assets)
    weights = tmp_path / "weights"  # a folder of its own: a pipeline cached by another test is not reused
    weights.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_cli(capsys, "t2v", PROMPT, *FAST, "--weights", weights, "-o", out_dir / "o.mp4")
    assert_one_line_error(code, out, err, 3)
    assert list(out_dir.iterdir()) == []


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_checkpoint_with_code_is_refused_unrun(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {"input_blocks.0.0.weight": _Payload(marker)}}, weights / "non_ema_228000.pth")
    (weights / "v2-1_512-ema-pruned.ckpt").write_bytes(b"stand-in")
    (weights / "open_clip_pytorch_model.bin").write_bytes(b"stand-in")
    code, out, err = run_cli(capsys, "t2v", PROMPT, *FAST, "--weights", weights, "-o", tmp_path / "o.mp4")
    assert_one_line_error(code, out, err, 3)
    assert "contains code" in err and "non_ema_228000.pth" in err
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "o.mp4").exists()


# -- interrupted --------------------------------------------------------------------------------
# `vcomp` run as usual, plus a marker file touched when generation starts, so the signal lands mid-run
# (a signal during `import torch` can make CPython exit by SIGINT whatever the handler does).
_MARKED_RUN = """
import os, pathlib
from vcomp.pipeline import Pipeline
real = Pipeline.generate
def generate(*args, **kwargs):
    pathlib.Path(os.environ["SAMPLING_MARKER"]).touch()
    return real(*args, **kwargs)
Pipeline.generate = generate
from vcomp.cli import run
run()
"""


def test_sigterm_during_generation_leaves_no_partial_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "sampling"
    env = {**os.environ, "VCOMP_ALLOW_RANDOM": "1", "VCOMP_HOME": str(tmp_path / "home"),
           "SAMPLING_MARKER": str(marker), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _MARKED_RUN, "t2v", PROMPT, "--steps", "500", "--frames", "16",
                             "-o", str(out / "o.mp4"), "-q"], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.02)
    time.sleep(0.5)  # into the 500 sampling steps
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert marker.exists(), err
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted; no partial output was written" in err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("flag, value, says", [
    ("--dropout-json", '{"p_singel": 0.3}', "p_single"),  # a typo: the valid fields are listed
    ("--dropout-json", '{"p_single": 0.95}', "at most 1"),
    ("--dropout-json", "[0.4]", "JSON object"),
    ("--model-json", "[1]", "JSON object"),
    ("--model-json", "{style_scale: 8}", "not valid JSON"),
])
def test_bad_train_json_is_one_line_and_starts_nothing(flag, value, says, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", flag, value, "--out", tmp_path / "run", "--steps", 1)
    assert_one_line_error(code, out, err, 2)
    assert says in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--latent-noise", "--grad-weight", "--contrast-ref"])
def test_negative_autoencoder_weight_is_one_line_and_starts_nothing(flag, tmp_path, capsys):
    code, out, err = run_cli(capsys, "train-autoencoder", flag, "-0.1", "--out", tmp_path / "vae", "--steps", 1)
    assert_one_line_error(code, out, err, 2)
    assert flag in err
    assert not (tmp_path / "vae").exists()


def test_contrast_ref_without_object_weight_is_one_line_and_starts_nothing(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train-autoencoder", "--contrast-ref", "1.5", "--out", tmp_path / "vae", "--steps", 1)
    assert_one_line_error(code, out, err, 2)
    assert "--object-weight" in err
    assert not (tmp_path / "vae").exists()
