"""Motion vectors from H.264 side data (vcomp.conditions.motion) against clips of known motion.

Clips come from tests/clips.py: a textured square moving (+3, +1) px/frame over a textured
static background, and a camera pan, encoded with (a) bf=0 refs=1, (b) x264 defaults
(B-frames, b-pyramid, 3 references) and (c) refs=3 without B-frames, plus MPEG-4 part 2 and GIF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vcomp.conditions import motion as M
from vcomp.errors import InputError

try:
    from tests import clips
except ImportError:  # tests/ is no package; pytest puts tests/ itself on sys.path
    import clips

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
SIZE = (160, 128)  # (W, H)
VELOCITY = (3, 1)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def assert_motion(field: np.ndarray, truth: clips.Truth, *, scale=(1.0, 1.0), margin: int = 8,
                  tol: float = 0.5, share: float = 0.9, frames=None) -> None:
    """In >= `share` of frames 1.. the median field over the moving interior is within `tol` px
    of the truth (times `scale`), and the static background's median |v| is ~0."""
    assert field.dtype == np.float32 and field.ndim == 4 and field.shape[1] == 2
    assert np.isfinite(field).all()
    assert not field[0].any(), "frame 0 must be zeros"
    want = np.array(truth.velocity) * np.array(scale)
    frames = range(1, field.shape[0]) if frames is None else frames
    good, bad = 0, []
    checked = 0
    for t in frames:
        region = truth.interior(t, margin)
        if region.sum() < 64:
            continue
        checked += 1
        got = np.array([np.median(field[t, 0][region]), np.median(field[t, 1][region])])
        still = truth.static[t]
        background = float(np.median(np.abs(field[t][:, still]))) if still.any() else 0.0
        if np.all(np.abs(got - want) <= tol) and background <= 0.25:
            good += 1
        else:
            bad.append((t, got.round(2).tolist(), round(background, 2)))
    assert checked >= 3, "too few frames to judge"
    assert good >= share * checked, f"{good}/{checked} frames right (want {want.tolist()}); wrong: {bad[:5]}"


def mv_array(rows) -> np.ndarray:
    """AVMotionVector records from (source, w, h, dst_x, dst_y, motion_x, motion_y, scale)."""
    out = np.zeros(len(rows), M.MV_DTYPE)
    for i, (source, w, h, dx, dy, mx, my, scale) in enumerate(rows):
        out[i] = (source, w, h, dx + mx // scale, dy + my // scale, dx, dy, 0, mx, my, scale)
    return out


@pytest.fixture(scope="module")
def square():
    return clips.moving_square(frames=20, size=SIZE, velocity=VELOCITY)


@pytest.fixture(scope="module")
def pan():
    return clips.camera_pan(frames=20, size=SIZE, velocity=(-2, 1))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, square, pan):
    """{(clip, encoding): path} for both clips in the three x264 configurations."""
    folder = tmp_path_factory.mktemp("motion")
    out = {}
    for clip_name, (frames, _) in (("square", square), ("pan", pan)):
        for enc_name, options in (("one_ref", clips.X264_ONE_REF), ("defaults", clips.X264_DEFAULTS),
                                  ("multi_ref", clips.X264_MULTI_REF)):
            out[clip_name, enc_name] = clips.encode(frames, folder / f"{clip_name}_{enc_name}.mp4", options)
    return out


# ----------------------------------------------------------------------------------------------
# vectors -> field: sign convention, block fill, fast path == generic path
# ----------------------------------------------------------------------------------------------
def test_vectors_to_field_sign_and_fill():
    # content moved right 3 / down 1 into the 16x16 block at (32..48, 16..32): the block is
    # predicted from 3 px left, 1 px up in the past frame -> motion_x = -12 (quarter pel)
    mvs = mv_array([(-1, 16, 16, 40, 24, -12, -4, 4),
                    (+1, 8, 8, 4, 4, 6, -2, 4),  # future reference: content will move +1.5, -0.5
                    (-1, 8, 16, 20, 8, 2, 0, 2)])  # half-pel scale (MPEG-4 style)
    field = M.vectors_to_field(mvs, 64, 48)
    assert field.shape == (2, 48, 64) and field.dtype == np.float32
    assert np.all(field[0, 16:32, 32:48] == 3) and np.all(field[1, 16:32, 32:48] == 1)
    assert np.all(field[0, 0:8, 0:8] == 1.5) and np.all(field[1, 0:8, 0:8] == -0.5)
    assert np.all(field[0, 0:16, 16:24] == -1) and np.all(field[1, 0:16, 16:24] == 0)
    covered = np.zeros((48, 64), bool)
    covered[16:32, 32:48] = covered[0:8, 0:8] = covered[0:16, 16:24] = True
    assert not field[:, ~covered].any(), "pixels no block covers must be 0"


def test_bipredicted_blocks_average_and_unaligned_blocks():
    # a B block with both lists: past says +2, future says +4 -> mean 3
    mvs = mv_array([(-1, 16, 16, 8, 8, -8, 0, 4), (+1, 16, 16, 8, 8, 16, 0, 4)])
    assert np.allclose(M.vectors_to_field(mvs, 32, 32)[0, :16, :16], 3)
    # 4x4 blocks (not on the 8-px grid) are filled exactly by vectors_to_field
    mvs = mv_array([(-1, 4, 4, 6, 2, -4, 0, 4), (-1, 4, 4, 2, 6, 0, 8, 4)])
    field = M.vectors_to_field(mvs, 16, 16)
    assert np.all(field[0, 0:4, 4:8] == 1) and np.all(field[1, 4:8, 0:4] == -2)
    assert field[:, 0:4, 0:4].sum() == 0 and field[:, 8:, :].sum() == 0


def test_fast_path_matches_generic(encoded):
    import av

    checked = 0
    for key in (("square", "one_ref"), ("pan", "defaults")):
        with av.open(str(encoded[key])) as container:
            stream = container.streams.video[0]
            stream.codec_context.options = {"flags2": "+export_mvs"}
            vectors = [M._frame_vectors(f) for f in container.decode(stream)]
        vectors = [v for v in vectors if v is not None and len(v)]
        w, h = SIZE
        for mvs in vectors:
            generic = M._grid_generic(mvs, w, h, M.CELL)
            assert np.array_equal(M.vectors_to_grid(mvs, w, h), generic)
        batch = M.vectors_to_grids(vectors, w, h)
        assert np.array_equal(batch, np.stack([M._grid_generic(v, w, h, M.CELL) for v in vectors]))
        checked += len(vectors)
    assert checked > 20


def test_grid_to_field_odd_sizes():
    grid = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    field = M.grid_to_field(grid, 30, 21)  # 4 cells x 3 cells of 8 px, last ones partial
    assert field.shape == (2, 21, 30)
    assert field[1, 20, 29] == grid[1, 2, 3] and field[0, 7, 8] == grid[0, 0, 1]
    bigger = M.grid_to_field(grid, 41, 21)  # a grid one cell short: the last column repeats
    assert np.array_equal(bigger[:, :, 32:], np.repeat(bigger[:, :, 31:32], 9, axis=2))


# ----------------------------------------------------------------------------------------------
# whole clips
# ----------------------------------------------------------------------------------------------
def test_one_reference_stream_is_read_directly(encoded, square, pan):
    for clip_name, (_, truth) in (("square", square), ("pan", pan)):
        path = encoded[clip_name, "one_ref"]
        assert M.direct_read_check(path)[0]
        reader = M.MotionReader(path)
        field = np.stack([f for _, f in reader])
        assert reader.method_used == "direct"
        assert field.shape == (20, 2, SIZE[1], SIZE[0])
        assert_motion(field, truth)


@pytest.mark.parametrize("encoding", ["defaults", "multi_ref"])
def test_multi_reference_streams_are_reencoded(encoded, square, pan, encoding):
    assert "B" in clips.frame_types(encoded["square", "defaults"])
    for clip_name, (_, truth) in (("square", square), ("pan", pan)):
        path = encoded[clip_name, encoding]
        ok, reason = M.direct_read_check(path)
        assert not ok and ("reference" in reason or "B-frames" in reason)
        reader = M.MotionReader(path)
        assert reader.method == "reencode"
        assert_motion(np.stack([f for _, f in reader]), truth)


def test_forced_direct_read_falls_back_at_first_b_frame(encoded, square):
    path = encoded["square", "defaults"]
    reader = M.MotionReader(path, method="direct")
    items = list(reader)
    assert [i for i, _ in items] == list(range(20))
    assert reader.method_used == "direct+reencode" and reader.switched_at is not None
    assert reader.switched_at <= clips.frame_types(path).index("B")
    assert_motion(np.stack([f for _, f in items]), square[1])


def test_what_goes_wrong_without_the_reencode(encoded, square):
    """Why the re-encode exists: the default stream's own vectors, taken as one frame step,
    are wrong on many frames (they span 2-4 frames, or point forward)."""
    import av

    path = encoded["square", "defaults"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        raw = np.stack([M.vectors_to_field(M._frame_vectors(f), *SIZE) for f in container.decode(stream)])
    raw[0] = 0
    with pytest.raises(AssertionError):
        assert_motion(raw, square[1])


def test_midstream_keyframes_get_neighbour_mean(tmp_path, square):
    frames, truth = square
    path = clips.encode(frames, tmp_path / "gop.mp4", {**clips.X264_ONE_REF, "g": "6", "sc_threshold": "0"})
    types = clips.frame_types(path)
    keyframes = [i for i, c in enumerate(types) if c == "I" and i > 0]
    assert keyframes, types
    reader = M.MotionReader(path)
    field = np.stack([f for _, f in reader])
    assert reader.method_used == "direct"
    assert_motion(field, truth)  # includes the keyframes: filled with the neighbours' mean
    assert_motion(field, truth, frames=keyframes, share=1.0)


def test_annexb_stream_sps_from_packets(tmp_path, square):
    frames, truth = square
    path = clips.encode(frames, tmp_path / "raw.h264", clips.X264_ONE_REF)
    ok, reason = M.direct_read_check(path)
    assert ok, reason
    assert_motion(M.extract_motion(path), truth)


@pytest.mark.parametrize("codec,suffix", [("mpeg4", ".mp4"), ("gif", ".gif")])
def test_non_h264_input_is_reencoded(tmp_path, square, codec, suffix):
    frames, truth = square
    path = clips.encode(frames, tmp_path / f"clip{suffix}", {"qscale": "2"} if codec == "mpeg4" else None,
                        codec=codec)
    ok, reason = M.direct_read_check(path)
    assert not ok and codec in reason
    reader = M.MotionReader(path)
    assert reader.method == "reencode"
    field = np.stack([f for _, f in reader])
    assert field.shape == (20, 2, SIZE[1], SIZE[0])
    assert_motion(field, truth)


# ----------------------------------------------------------------------------------------------
# sampled frames, resizing
# ----------------------------------------------------------------------------------------------
def test_motion_from_frames_between_sampled_frames(square):
    frames, truth = square
    field = M.motion_from_frames(frames, 25)
    assert field.shape == (20, 2, SIZE[1], SIZE[0])
    assert_motion(field, truth)
    every2 = M.motion_from_frames(frames[::2], 12.5)  # motion between sampled frames doubles
    sampled = clips.Truth(truth.velocity, truth.moving[::2], truth.static[::2])
    assert_motion(every2, sampled, scale=(2, 2))
    every4 = M.motion_from_frames(frames[::4], 6.25)
    assert_motion(every4, clips.Truth(truth.velocity, truth.moving[::4], truth.static[::4]), scale=(4, 4),
                  share=1.0)


def flat_square(frames: int = 12, size=(96, 64), velocity: int = 3) -> np.ndarray:
    """A flat red 24 px square moving right over a flat grey background: every pixel outside
    its edges is the same in consecutive frames, so any vector there is the encoder's choice."""
    w, h = size
    clip = np.full((frames, h, w, 3), 60, np.uint8)
    for t in range(frames):
        clip[t, 20:44, 8 + velocity * t:32 + velocity * t] = (200, 40, 40)
    return clip


def unchanged_cells(frames: np.ndarray) -> np.ndarray:
    """[T, H, W] bool: pixels of the 8 px cells with no changed pixel since the previous frame."""
    grey = frames.astype(np.int16).sum(-1)
    changed = np.zeros(grey.shape, bool)
    changed[1:] = grey[1:] != grey[:-1]
    t, h, w = changed.shape
    cells = changed.reshape(t, h // 8, 8, w // 8, 8).any((2, 4))
    out = ~np.repeat(np.repeat(cells, 8, 1), 8, 2)
    out[0] = False
    return out


def test_still_cells_read_zero_and_moving_edges_keep_their_motion():
    """The encoder spreads the square's vector over flat cells whose pixels did not change (any
    vector predicts them as well); by default those read 0, while the cells where the square's
    edges move keep vectors pointing its way. still_threshold=0 gives the codec's raw field."""
    frames = flat_square()
    raw = M.motion_from_frames(frames, 8.0, still_threshold=0)
    field = M.motion_from_frames(frames, 8.0)
    unchanged = unchanged_cells(frames)
    assert (np.hypot(raw[:, 0], raw[:, 1])[unchanged] > 0).sum() > 1000  # the spread
    assert not np.hypot(field[:, 0], field[:, 1])[unchanged].any()
    moving = ~unchanged & (np.arange(len(frames)) > 0)[:, None, None]
    assert np.median(field[:, 0][moving & (np.abs(field[:, 0]) > 0)]) == pytest.approx(3.0, abs=0.5)
    assert np.abs(field[:, 1][moving]).max() <= 0.5
    with pytest.raises(InputError, match="still threshold"):
        M.motion_from_frames(frames, 8.0, still_threshold=-1)


@pytest.mark.parametrize("method", ["direct", "reencode"])
def test_still_cells_read_zero_in_video_files(tmp_path, method):
    """Both ways of reading a file drop the spread vectors too (the decoded frames decide what is
    still), and the square's motion still reads right."""
    frames = flat_square()
    path = clips.encode(frames, tmp_path / "flat.mp4", clips.X264_ONE_REF, fps=8)
    unchanged = unchanged_cells(frames)
    raw = M.extract_motion(path, method=method, still_threshold=0)
    field = M.extract_motion(path, method=method)
    spread = [float((np.hypot(f[:, 0], f[:, 1])[unchanged] > 0).mean()) for f in (raw, field)]
    assert spread[0] > 0.05 and spread[1] < 0.01, spread
    moving = ~unchanged & (np.arange(len(frames)) > 0)[:, None, None]
    assert np.median(field[:, 0][moving & (np.abs(field[:, 0]) > 0)]) == pytest.approx(3.0, abs=0.5)


def test_still_cells_average_the_change_per_8_pixel_cell():
    """A cell is still when its mean absolute luma change is under the threshold; a partial edge
    cell (here 4 px wide) counts its own pixels, its last column repeated."""
    previous = np.zeros((16, 20), np.uint8)
    current = previous.copy()
    current[0:8, 0:8] = 1  # mean change 1 < 2: still
    current[0:8, 8:10] = 9  # 2 of 8 columns by 9: mean 2.25: moved
    current[8:16, 16:20] = 3  # the partial cell, all changed by 3: moved
    assert M.still_cells(previous, current).tolist() == [[True, False, True], [True, True, False]]
    assert M.still_cells(previous, current, 0.5).tolist() == [[False, False, True], [True, True, False]]


def test_motion_from_frames_odd_size_and_validation(square):
    frames = square[0][:6, :127, :155]
    field = M.motion_from_frames(frames)
    assert field.shape == (6, 2, 127, 155)
    assert np.array_equal(field[:, :, :, 154], field[:, :, :, 153])
    assert M.motion_from_frames(frames[:1]).shape == (1, 2, 127, 155)
    with pytest.raises(InputError):
        M.motion_from_frames(frames.astype(np.float32))
    with pytest.raises(InputError):
        M.motion_from_frames(frames[..., 0])


def _resized_truth(truth: clips.Truth, size) -> clips.Truth:
    import cv2

    from vcomp.io.transform import resize_cover

    def rs(masks):
        return np.stack([resize_cover(m.astype(np.uint8), size, cv2.INTER_NEAREST) > 0 for m in masks])

    return clips.Truth(truth.velocity, rs(truth.moving), rs(truth.static))


@pytest.mark.parametrize("method", ["direct", "reencode"])
def test_size_rescales_vectors(encoded, square, method):
    from vcomp.io.transform import cover_geometry

    path = encoded["square", "one_ref"]
    size = (64, 64)  # cover: 160x128 -> 80x64 (s = 0.5), crop 8 px each side in x
    s, scaled, _ = cover_geometry(SIZE, size)
    field = M.extract_motion(path, size=size, method=method)
    assert field.shape == (20, 2, 64, 64)
    assert_motion(field, _resized_truth(square[1], size), scale=(scaled[0] / SIZE[0], scaled[1] / SIZE[1]),
                  margin=4, tol=0.3)
    wide = M.extract_motion(path, size=(320, 96), method=method)  # upscale x2 in x, crop in y
    assert wide.shape == (20, 2, 96, 320)
    assert_motion(wide, _resized_truth(square[1], (320, 96)), scale=(2, 2), margin=12, tol=1.0)


def test_resize_motion_matches_grid_resize(encoded):
    path = encoded["pan", "one_ref"]
    full = M.extract_motion(path)
    for size in [(64, 64), (100, 60), (256, 200)]:
        dense = M.resize_motion(full, size)
        direct = M.extract_motion(path, size=size)
        assert dense.shape == direct.shape == (20, 2, size[1], size[0])
        inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
        assert np.median(np.abs(dense[inner] - direct[inner])) < 0.05
    single = M.resize_motion(full[3], (80, 64))
    assert single.shape == (2, 64, 80) and np.allclose(np.median(single[0]), -1.0)


# ----------------------------------------------------------------------------------------------
# streaming API, errors, preview, helpers
# ----------------------------------------------------------------------------------------------
def test_iter_motion_streams_and_indices(encoded, square):
    path = encoded["square", "one_ref"]
    items = list(M.iter_motion(path))
    assert [i for i, _ in items] == list(range(20))
    assert all(f.shape == (2, SIZE[1], SIZE[0]) and f.dtype == np.float32 for _, f in items)
    some = list(M.iter_motion(path, indices=[3, 7, 8]))
    assert [i for i, _ in some] == [3, 7, 8]
    assert np.array_equal(some[1][1], items[7][1])
    calls = []
    picked = M.extract_motion(path, indices=[8, 3, 8], progress=lambda d, t: calls.append((d, t)))
    assert picked.shape == (3, 2, SIZE[1], SIZE[0]) and calls[-1] == (2, 2)  # 2 distinct frames
    assert np.array_equal(picked[0], items[8][1]) and np.array_equal(picked[1], items[3][1])
    with pytest.raises(InputError):
        M.extract_motion(path, indices=[5, 99])
    with pytest.raises(InputError):
        M.extract_motion(path, indices=[-1])


def test_streamed_fields_are_never_overwritten(encoded, monkeypatch):
    """Batches are reused only when nothing references them, with or without the worker thread."""
    path = encoded["pan", "one_ref"]
    copies = [f.copy() for _, f in M.iter_motion(path)]  # fields dropped as we go: buffers reused
    for threshold in (1 << 60, 1):  # expansion on the calling thread / on the worker thread
        monkeypatch.setattr(M, "THREAD_FIELD_BYTES", threshold)
        kept = list(M.iter_motion(path))
        assert len(kept) == 20
        assert all(np.array_equal(f, c) for (_, f), c in zip(kept, copies))
        assert all(np.array_equal(f, c) for (_, f), c in zip(M.iter_motion(path, size=(80, 64)),
                                                               M.resize_motion(np.stack(copies), (80, 64))))


def test_indices_stop_decoding_early(tmp_path, monkeypatch):
    frames, _ = clips.camera_pan(frames=48, size=(64, 48))
    path = clips.encode(frames, tmp_path / "long.mp4", clips.X264_ONE_REF)
    read = []
    original = M._frame_vectors
    monkeypatch.setattr(M, "_frame_vectors", lambda frame: read.append(1) or original(frame))
    assert [i for i, _ in M.iter_motion(path, indices=[2, 4])] == [2, 4]
    assert len(read) <= M.GRID_BATCH < 48  # one batch of vectors, not the whole video
    assert M.extract_motion(path, indices=[]).shape == (0, 2, 48, 64)


def test_input_errors(tmp_path):
    with pytest.raises(InputError):
        M.extract_motion(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError):
        M.extract_motion(bad)
    with pytest.raises(InputError):
        M.MotionReader(bad)
    with pytest.raises(InputError):
        M.extract_motion(tmp_path)  # a folder (no images): not a video
    with pytest.raises(InputError):
        M.MotionReader(tmp_path / "missing.mp4", method="optical-flow")


def test_motion_to_rgb():
    field = np.zeros((2, 64, 96), np.float32)
    still = M.motion_to_rgb(field)
    assert still.shape == (64, 96, 3) and still.dtype == np.uint8 and (still == 255).all()
    field[0, :, 48:] = 4  # right half moves right
    rgb = M.motion_to_rgb(field)
    assert (rgb[:, :40] == 255).all()  # still half: white, no arrows
    assert rgb[:, 56:].std() > 0 and (rgb[:, 56:].min(axis=-1) < 100).any()  # colour + dark arrows
    plain = M.motion_to_rgb(field, max_mag=8, arrows=False)
    assert plain[10, 60, 0] == 255 and plain[10, 60, 1] < 255  # hue 0 (right) = red-ish, half saturated
    with pytest.raises(ValueError):
        M.motion_to_rgb(np.zeros((3, 4, 4)))


def test_nbytes():
    assert M.motion_nbytes(16, 256, 256) == 16 * 2 * 256 * 256 * 4
    assert M.format_nbytes(M.motion_nbytes(100, 1280, 720)) == "703.1 MiB"
    assert M.format_nbytes(512) == "512 B"


def test_sps_parser(encoded):
    import av

    from vcomp.conditions._motion_h264 import sps_from_bytes

    expected = {"one_ref": 1, "multi_ref": 3}
    for enc_name, refs in expected.items():
        with av.open(str(encoded["square", enc_name])) as container:
            sps = sps_from_bytes(container.streams.video[0].codec_context.extradata)
        assert [s.max_num_ref_frames for s in sps] == [refs]
    with av.open(str(encoded["square", "defaults"])) as container:
        assert sps_from_bytes(container.streams.video[0].codec_context.extradata)[0].max_num_ref_frames > 1


# ----------------------------------------------------------------------------------------------
# real clips
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not (MEDIA / "blackswan.mp4").exists(), reason="shared media not present")
def test_real_clip_blackswan():
    path = MEDIA / "blackswan.mp4"  # 854x480, 42 frames, x264 with B-frames -> re-encode
    reader = M.MotionReader(path, (256, 256))
    assert reader.method == "reencode"
    field = np.stack([f for _, f in reader])
    assert field.shape == (42, 2, 256, 256) and np.isfinite(field).all()
    speed = np.hypot(field[1:, 0], field[1:, 1])
    # the camera follows the swan: a few px per frame at this size, nothing absurd
    assert 0.3 < np.median(speed) < 10 and np.percentile(speed, 99) < 40
    assert not field[0].any()


@pytest.mark.skipif(not (MEDIA / "video_8800.mp4").exists(), reason="shared media not present")
def test_real_clip_native_size():
    path = MEDIA / "video_8800.mp4"
    field = M.extract_motion(path, indices=range(0, 24))
    assert field.shape[0] == 24 and field.shape[1] == 2 and np.isfinite(field).all()
    assert np.abs(field).max() < 200


def test_a_still_grid_of_another_size_is_fitted_to_the_vector_grid():
    """A still-cell grid that does not match the vector grid (a decoder padding its planes another
    way) is mapped cell to nearest cell instead of being skipped."""
    still = np.array([[True, False], [False, True]])
    assert M._fitted(still, (2, 2)) is still
    fitted = M._fitted(still, (4, 4))
    assert fitted.dtype == bool and fitted.shape == (4, 4)
    assert fitted[:2, :2].all() and fitted[2:, 2:].all() and not fitted[:2, 2:].any() and not fitted[2:, :2].any()


def test_midstream_keyframes_keep_their_still_cells_at_zero(tmp_path):
    """A keyframe mid-stream has no vectors and is filled with its neighbours' mean field; the
    cells of it whose pixels did not change still read 0, as in every other frame."""
    frames = flat_square()
    path = clips.encode(frames, tmp_path / "gop.mp4", {**clips.X264_ONE_REF, "g": "5", "sc_threshold": "0"}, fps=8)
    keyframes = [i for i, c in enumerate(clips.frame_types(path)) if c == "I" and i > 0]
    assert keyframes
    reader = M.MotionReader(path)
    field = np.stack([f for _, f in reader])
    assert reader.method_used == "direct"
    speed = np.hypot(field[:, 0], field[:, 1])
    unchanged = unchanged_cells(frames)
    for k in keyframes:
        assert not speed[k][unchanged[k]].any()  # the background of the filled frame
        assert speed[k][~unchanged[k]].max() > 1  # the square's edges keep the neighbours' motion
