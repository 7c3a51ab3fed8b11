"""Video I/O: reading every supported container, sampling, geometry and atomic writes."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from vcomp.errors import InputError
from vcomp.io import (
    SafetensorsWriter,
    Sampling,
    VideoWriter,
    atomic_dir,
    atomic_file,
    contact_sheet,
    cover_geometry,
    encode_h264,
    parse_size,
    probe,
    read_clip,
    resize_cover,
    write_video,
)


def ramp_frames(n: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame i is a flat grey of level 10 + 20 i: a frame's index can be read back from its mean."""
    levels = 10 + 20 * np.arange(n)
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).astype(np.uint8).copy()


def index_of(frame: np.ndarray) -> int:
    return int(round((frame.mean() - 10) / 20))


def encode_with(codec: str, path, frames, fps=10, pix_fmt="yuv420p", fmt=None):
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture
def ramp_mp4(tmp_path):
    return encode_h264(ramp_frames(), tmp_path / "ramp.mp4", 10, crf=0)


def test_probe_reports_size_fps_and_count(ramp_mp4):
    info = probe(ramp_mp4)
    assert (info.width, info.height, info.frame_count, info.codec) == (64, 48, 12, "h264")
    assert info.fps == pytest.approx(10)


@pytest.mark.parametrize("sampling, expected", [
    (Sampling(), list(range(12))),
    (Sampling(frames=4), [0, 1, 2, 3]),
    (Sampling(stride=3), [0, 3, 6, 9]),
    (Sampling(frames=3, stride=2, start=1), [1, 3, 5]),
    (Sampling(fps=5), [0, 2, 4, 6, 8, 10]),
    (Sampling(fps=4), [0, 2, 5, 8, 10]),
    (Sampling(fps=100), list(range(12))),
])
def test_sampling_picks_the_right_source_frames(ramp_mp4, sampling, expected):
    clip = read_clip(ramp_mp4, sampling)
    assert clip.indices == expected
    assert [index_of(f) for f in clip.frames] == expected
    assert clip.fps == pytest.approx(10 / sampling.step(10))


@pytest.mark.parametrize("bad", [dict(frames=0), dict(stride=0), dict(fps=-1), dict(stride=2, fps=3)])
def test_bad_sampling_is_an_input_error(bad):
    with pytest.raises(InputError):
        Sampling(**bad)


@pytest.mark.parametrize("codec, suffix, pix_fmt, fmt", [
    ("libx264", ".mov", "yuv420p", "mov"),
    ("libvpx-vp9", ".webm", "yuv420p", "webm"),
    ("mpeg4", ".mkv", "yuv420p", "matroska"),
    ("gif", ".gif", "rgb8", "gif"),
])
def test_reads_other_containers_and_codecs(tmp_path, codec, suffix, pix_fmt, fmt):
    frames = ramp_frames(6)
    path = encode_with(codec, tmp_path / f"clip{suffix}", frames, pix_fmt=pix_fmt, fmt=fmt)
    clip = read_clip(path)
    assert clip.frames.shape == (6, 48, 64, 3)
    assert [index_of(f) for f in clip.frames] == list(range(6))


def test_reads_a_folder_of_images(tmp_path):
    frames = ramp_frames(5)
    write_video(tmp_path / "frames", frames, 8)
    clip = read_clip(tmp_path / "frames", Sampling(stride=2))
    assert clip.indices == [0, 2, 4]
    assert [index_of(f) for f in clip.frames] == [0, 2, 4]


def test_real_clip_reads_at_requested_size():
    clip = read_clip("../shared/media/blackswan.mp4", Sampling(frames=5, stride=4), size=(128, 96))
    assert clip.frames.shape == (5, 96, 128, 3) and clip.frames.dtype == np.uint8
    assert clip.source.width == 854 and clip.indices == [0, 4, 8, 12, 16]


def test_resize_cover_keeps_aspect_and_centre_crops():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255  # centre half is white
    out = resize_cover(image, (50, 50))
    assert out.shape == (50, 50, 3)
    assert out[:, 2:-2].min() == 255  # the crop keeps exactly the white centre
    scale, scaled, offset = cover_geometry((200, 100), (50, 50))
    assert scale == 0.5 and scaled == (100, 50) and offset == (25, 0)


@pytest.mark.parametrize("text, size", [("256x128", (256, 128)), ("64", (64, 64)), (" 32X16 ", (32, 16))])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["abc", "0x10", "10x", "100x99999"])
def test_parse_size_rejects_garbage(text):
    with pytest.raises(InputError):
        parse_size(text)


def test_parse_size_multiple_of_8():
    with pytest.raises(InputError, match="multiples of 8"):
        parse_size("250x256", multiple=8)


@pytest.mark.parametrize("name", ["out.mp4", "out.gif", "out"])
def test_write_video_round_trips(tmp_path, name):
    frames = ramp_frames(6, 32, 48)
    path = write_video(tmp_path / name, frames, 6)
    clip = read_clip(path)
    assert clip.frames.shape == frames.shape
    assert np.abs(clip.frames.astype(int) - frames).mean() < 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp files left


def test_odd_sizes_are_cropped_to_even_for_h264(tmp_path):
    path = write_video(tmp_path / "odd.mp4", ramp_frames(3, 33, 45), 5)
    assert (probe(path).width, probe(path).height) == (44, 32)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "a.mp4") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), VideoWriter(tmp_path / "b.mp4", 10) as writer:
        writer.write(ramp_frames(3))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_existing_only_on_success(tmp_path):
    target = tmp_path / "conds"
    with atomic_dir(target) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "v2").write_text("2")
        raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["v1"]
    with atomic_dir(target) as tmp:
        (tmp / "v3").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["v3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conds"]


def test_output_path_that_is_a_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="is a directory"), atomic_file(tmp_path):
        pass


def test_contact_sheet_layout():
    clip = ramp_frames(16, 10, 20)
    sheet = contact_sheet(clip, max_columns=4)
    assert sheet.shape == (2 * 12 + 2, 4 * 22 + 2, 3)  # a single clip wraps onto two rows
    rows = contact_sheet([ramp_frames(8, 10, 20), ramp_frames(8, 10, 20)], max_columns=8)
    assert rows.shape == (2 * 12 + 2, 8 * 22 + 2, 3)


def test_streaming_safetensors_matches_whole_array(tmp_path):
    from safetensors.numpy import load_file

    motion = np.random.default_rng(0).normal(size=(7, 2, 5, 6)).astype(np.float32)
    with SafetensorsWriter(tmp_path) as writer:
        for i in range(0, 7, 3):
            writer.append("motion", motion[i:i + 3])
        writer.put("style", np.arange(4, dtype=np.float32))
        writer.finish(tmp_path / "c.safetensors", metadata={"source": "x"})
    loaded = load_file(tmp_path / "c.safetensors")
    assert np.array_equal(loaded["motion"], motion) and loaded["style"].tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "empty"),
    (b"hello, I am text, not a video\n" * 20, "not a readable video"),
])
def test_unreadable_inputs_are_input_errors(tmp_path, content, message):
    path = tmp_path / "x.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_clip(path)


def test_truncated_mp4_is_an_input_error(tmp_path, ramp_mp4):
    data = ramp_mp4.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        read_clip(cut)
