"""Condition extractors (depth, sketch, mask, image, style) and their previews."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vcomp.conditions import depth as depth_mod
from vcomp.conditions import style as style_mod
from vcomp.conditions.condition_set import ConditionSet
from vcomp.conditions.depth import estimate_depth, find_weights
from vcomp.conditions.image import first_frame_condition, image_condition, image_condition_from_file
from vcomp.conditions.mask import mask_from_box, mask_from_video_or_image, parse_box
from vcomp.conditions.previews import condition_sheet, depth_to_rgb, mask_to_rgb, sketch_to_rgb, write_previews
from vcomp.conditions.sketch import (
    extract_sketch,
    load_sketch_image,
    single_sketch_from_image,
    single_sketch_from_sketch,
)
from vcomp.conditions.style import colour_stats_embedding, style_embedding
from vcomp.errors import InputError, WeightsError
from vcomp.io import Sampling, read_clip, write_png, write_video

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
if not MEDIA.is_dir():
    MEDIA = Path("/work/shared/media")
BLACKSWAN = MEDIA / "blackswan.mp4"


@pytest.fixture(autouse=True)
def _no_user_weights(tmp_path, monkeypatch):
    """Never pick up weights from the developer's ~/.cache/vcomp."""
    home = tmp_path / "vcomp_home"
    home.mkdir()
    monkeypatch.setenv("VCOMP_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def blackswan():
    if not BLACKSWAN.is_file():
        pytest.skip("shared media not available")
    return read_clip(BLACKSWAN, Sampling(frames=8, stride=4), size=(128, 128))


def _write_rgba_png(path: Path, rgba: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert ok
    path.write_bytes(data.tobytes())


# -- depth ----------------------------------------------------------------------------------
def _textured_object_scene(rng) -> np.ndarray:
    """A sharp, finely textured square in front of a defocused (blurred) textured background."""
    background = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (0, 0), 6)
    background = cv2.normalize(background, None, 60, 200, cv2.NORM_MINMAX)
    frame = background.copy()
    frame[32:64, 48:80] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return frame


def test_depth_shape_range_and_info():
    rng = np.random.default_rng(0)
    frames = np.stack([_textured_object_scene(rng) for _ in range(3)])
    depth, info = estimate_depth(frames)
    assert depth.shape == (3, 1, 96, 128) and depth.dtype == np.float32
    assert depth.min() >= 0.0 and depth.max() <= 1.0 and depth.max() - depth.min() > 0.5
    assert info["extractor"] == "heuristic-depth-v1" and info["fallback"] is True and info["near"] == 1
    assert "note" not in info


def test_depth_static_clip_is_temporally_stable():
    frame = _textured_object_scene(np.random.default_rng(1))
    depth, _ = estimate_depth(np.stack([frame] * 5))
    assert np.abs(depth - depth[:1]).max() < 1e-5


def test_depth_sharp_textured_foreground_is_nearer_than_blurred_background():
    frame = _textured_object_scene(np.random.default_rng(2))
    depth, _ = estimate_depth(frame[None])
    d = depth[0, 0]
    inside = d[36:60, 52:76].mean()
    beside = np.concatenate([d[36:60, 4:36], d[36:60, 92:124]], axis=1).mean()  # same rows
    assert inside > beside + 0.15


def test_depth_reports_found_midas_weights_honestly(tmp_path):
    (tmp_path / "midas_v3_dpt_large.pth").write_bytes(b"not a real checkpoint")
    frames = _textured_object_scene(np.random.default_rng(3))[None]
    depth, info = estimate_depth(frames, weights_dir=tmp_path)
    assert info["fallback"] is True and info["extractor"] == "heuristic-depth-v1"
    assert "not implemented" in info["note"] and info["weights_found"].endswith("midas_v3_dpt_large.pth")
    assert np.array_equal(depth, estimate_depth(frames)[0])


def test_weights_lookup(tmp_path, monkeypatch, _no_user_weights):
    assert find_weights("x.pth") is None
    (_no_user_weights / "model_weights").mkdir()
    (_no_user_weights / "model_weights" / "x.pth").write_bytes(b"0")
    assert find_weights("x.pth") == _no_user_weights / "model_weights" / "x.pth"
    with pytest.raises(InputError, match="does not exist"):
        find_weights("x.pth", tmp_path / "missing")


def test_bad_frames_are_input_errors():
    with pytest.raises(InputError, match=r"uint8 \[T,H,W,3\]"):
        estimate_depth(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InputError):
        extract_sketch(np.zeros((2, 8, 8), np.uint8))


# -- sketch ---------------------------------------------------------------------------------
def _rectangle_frame(background=40, fill=200) -> np.ndarray:
    frame = np.full((96, 128, 3), background, np.uint8)
    cv2.rectangle(frame, (30, 20), (89, 69), (fill, fill, fill), thickness=-1)  # x 30..89, y 20..69
    return frame


@pytest.mark.parametrize("background,fill", [(40, 200), (0, 255), (230, 90)])
def test_canny_finds_rectangle_edges_in_place(background, fill):
    sketch, info = extract_sketch(_rectangle_frame(background, fill)[None])
    assert sketch.shape == (1, 1, 96, 128) and set(np.unique(sketch)) <= {0.0, 1.0}
    assert info["extractor"] == "canny" and info["thresholds"] == "auto-median"
    edges = sketch[0, 0] > 0
    outline = np.zeros((96, 128), np.uint8)
    cv2.rectangle(outline, (30, 20), (89, 69), 1, thickness=1)
    near_outline = cv2.dilate(outline, np.ones((5, 5), np.uint8)) > 0  # within 2 px
    assert edges.sum() > 0 and not edges[~near_outline].any()  # no edge elsewhere
    found = cv2.dilate(edges.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    # every side is found: the straight parts of the outline all have an edge within 2 px
    for side in (outline[20, 34:86], outline[69, 34:86], outline[24:66, 30], outline[24:66, 89]):
        assert side.all()
    assert found[20, 34:86].all() and found[69, 34:86].all()
    assert found[24:66, 30].all() and found[24:66, 89].all()


def test_canny_thresholds_given_and_validated():
    frame = _rectangle_frame()[None]
    sketch, info = extract_sketch(frame, low=100, high=200)
    assert info["thresholds"] == "given" and sketch.sum() > 0
    assert extract_sketch(frame, low=5000, high=6000)[0].sum() == 0
    with pytest.raises(InputError):
        extract_sketch(frame, low=10)
    with pytest.raises(InputError):
        extract_sketch(frame, low=50, high=10)
    thick, _ = extract_sketch(frame, thickness=3)
    assert thick.sum() > 2 * sketch.sum()


def test_sketch_reports_found_pidinet_weights_honestly(tmp_path):
    (tmp_path / "table5_pidinet.pth").write_bytes(b"not a real checkpoint")
    sketch, info = extract_sketch(_rectangle_frame()[None], weights_dir=tmp_path)
    assert info["extractor"] == "canny" and info["fallback"] is True
    assert "not implemented" in info["note"]
    assert np.array_equal(sketch, extract_sketch(_rectangle_frame()[None])[0])


def test_single_sketch_helpers():
    single, info = single_sketch_from_image(_rectangle_frame())
    assert single.shape == (1, 96, 128) and info["extractor"] == "canny"
    seq, _ = extract_sketch(np.stack([_rectangle_frame()] * 2))
    assert np.array_equal(single_sketch_from_sketch(seq), seq[0])


def test_user_sketch_polarity(tmp_path):
    paper = np.full((60, 80, 3), 235, np.uint8)
    cv2.line(paper, (10, 30), (70, 30), (20, 20, 20), 3)
    write_png(tmp_path / "dark.png", paper)
    strokes, info = load_sketch_image(tmp_path / "dark.png", (80, 60))
    assert info["polarity"] == "dark-on-light" and strokes.shape == (1, 60, 80)
    assert strokes[0, 30, 40] > 0.95 and strokes[0, 5, 5] < 0.05

    write_png(tmp_path / "light.png", 255 - paper)
    strokes_light, info = load_sketch_image(tmp_path / "light.png", (80, 60))
    assert info["polarity"] == "light-on-dark" and np.abs(strokes_light - strokes).max() < 1e-6

    rgba = np.zeros((60, 80, 4), np.uint8)  # black strokes on a transparent (black RGB) layer
    rgba[28:33, 10:70, 3] = 255
    _write_rgba_png(tmp_path / "alpha.png", rgba)
    strokes_alpha, info = load_sketch_image(tmp_path / "alpha.png", (40, 30))  # resized too
    assert info["polarity"] == "dark-on-light" and strokes_alpha.shape == (1, 30, 40)
    assert strokes_alpha[0, 15, 20] > 0.9 and strokes_alpha[0, 3, 3] < 0.05


def test_published_demo_sketch_is_light_on_dark():
    if not (MEDIA / "src_single_sketch.png").is_file():
        pytest.skip("shared media not available")
    strokes, info = load_sketch_image(MEDIA / "src_single_sketch.png", (128, 128))
    assert info["polarity"] == "light-on-dark" and 0.01 < strokes.mean() < 0.2


# -- mask -----------------------------------------------------------------------------------
def test_mask_from_png_of_another_size_is_resized_and_thresholded(tmp_path):
    image = np.zeros((100, 200), np.uint8)
    image[:, 100:] = 200  # right half: above the threshold
    image[:, :50] = 100  # left quarter: grey below 0.5
    write_png(tmp_path / "m.png", image)
    mask = mask_from_video_or_image(tmp_path / "m.png", 3, (40, 20))
    assert mask.shape == (3, 1, 20, 40) and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask[:, 0, :, 20:].all() and not mask[:, 0, :, :20].any()
    inverted = mask_from_video_or_image(tmp_path / "m.png", 1, (40, 20), invert=True)
    assert np.array_equal(inverted[0], 1 - mask[0])
    assert mask_from_video_or_image(tmp_path / "m.png", 1, (40, 20), threshold=0.3)[0, 0, :, :10].all()


def test_mask_uses_non_constant_alpha(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24, 3] = 255  # opaque square on a transparent layer; RGB black everywhere
    _write_rgba_png(tmp_path / "a.png", rgba)
    mask = mask_from_video_or_image(tmp_path / "a.png", 2, (32, 32))
    assert mask[:, 0, 8:24, 8:24].all() and mask.sum() == 2 * 16 * 16
    rgba[..., 3] = 255  # constant alpha: the colour decides; red paint counts
    rgba[:16, :, 0] = 255
    _write_rgba_png(tmp_path / "b.png", rgba)
    mask = mask_from_video_or_image(tmp_path / "b.png", 1, (32, 32))
    assert mask[0, 0, :16].all() and not mask[0, 0, 16:].any()


def _square_video(tmp_path: Path, count: int) -> tuple[Path, list[np.ndarray]]:
    frames, truth = [], []
    for i in range(count):
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[16:48, 8 * i:8 * i + 24] = 255
        frames.append(frame)
        truth.append(frame[..., 0] > 127)
    path = write_video(tmp_path / "mask.mp4", np.stack(frames), fps=8)
    return path, truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("wanted", [10, 3])
def test_mask_from_video_resampled_in_time_and_space(tmp_path, wanted):
    path, truth = _square_video(tmp_path, 5)
    mask = mask_from_video_or_image(path, wanted, (32, 32))
    assert mask.shape == (wanted, 1, 32, 32) and set(np.unique(mask)) <= {0.0, 1.0}
    expected = {10: [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], 3: [0, 2, 4]}[wanted]
    for j, source in enumerate(expected):
        small = cv2.resize(truth[source].astype(np.uint8), (32, 32), interpolation=cv2.INTER_NEAREST) > 0
        assert _iou(mask[j, 0] > 0, small) > 0.9, (j, source)


def test_mask_file_that_is_neither_image_nor_video(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a mask\n" * 20)
    with pytest.raises(InputError, match="notes.txt is neither an image nor a video"):
        mask_from_video_or_image(bad, 4, (32, 32))
    fake_png = tmp_path / "broken.png"
    fake_png.write_bytes(b"\x89PNG garbage")
    with pytest.raises(InputError, match="broken.png"):
        mask_from_video_or_image(fake_png, 4, (32, 32))
    with pytest.raises(InputError, match="no such file"):
        mask_from_video_or_image(tmp_path / "missing.png", 4, (32, 32))


def test_box_mask_area_and_place():
    mask = mask_from_box("0.25,0.5,0.5,0.25", 4, (64, 32))
    assert mask.shape == (4, 1, 32, 64)
    assert mask[0].sum() == 0.5 * 64 * 0.25 * 32
    assert mask[:, 0, 16:24, 16:48].all()
    assert np.array_equal(mask_from_box((0, 0, 1, 1), 1, (8, 8)), np.ones((1, 1, 8, 8), np.float32))
    assert parse_box(" 0.1 0.2 0.3 0.4 ") == (0.1, 0.2, 0.3, 0.4)


@pytest.mark.parametrize("text", ["0.1,0.2,0.3", "a,b,c,d", "0.5,0.5,0.6,0.2", "0.1,0.1,0,0.5",
                                  "nan,0,0.5,0.5", "-0.1,0,0.5,0.5", "0,0,0.5,0.5,0.1", ""])
def test_bad_box_strings(text):
    with pytest.raises(InputError, match="box"):
        mask_from_box(text, 2, (64, 64))


def test_box_too_small_for_the_frame():
    with pytest.raises(InputError, match="covers no pixel"):
        mask_from_box("0.5,0.5,0.001,0.001", 1, (64, 64))


# -- image ----------------------------------------------------------------------------------
def test_image_condition(tmp_path):
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 0] = 255
    image[1, 2] = (0, 51, 102)
    cond = image_condition(image)
    assert cond.shape == (3, 4, 6) and cond.dtype == np.float32
    assert cond[0, 0, 0] == 1.0 and np.allclose(cond[:, 1, 2], [0.0, 0.2, 0.4])
    frames = np.stack([image, 255 - image])
    assert np.array_equal(first_frame_condition(frames), cond)
    write_png(tmp_path / "i.png", image)
    assert np.array_equal(image_condition_from_file(tmp_path / "i.png", (6, 4)), cond)
    with pytest.raises(InputError):
        image_condition(image.astype(np.float32))


# -- style ----------------------------------------------------------------------------------
def _palette_image(rng, rgb, spread=25) -> np.ndarray:
    noise = rng.normal(0, spread, (64, 64, 3))
    return np.clip(np.asarray(rgb, np.float32) + noise, 0, 255).astype(np.uint8)


def test_style_fallback_separates_palettes():
    rng = np.random.default_rng(0)
    red = _palette_image(rng, (200, 30, 30))
    red2 = np.zeros((64, 64, 3), np.uint8)  # a different reddish image: a red-to-orange gradient
    red2[..., 0] = 220
    red2[..., 1] = np.linspace(20, 90, 64, dtype=np.uint8)[None, :]
    red2[..., 2] = 40
    blue = _palette_image(rng, (30, 40, 200))
    green = _palette_image(rng, (40, 170, 50))
    e_red, info = style_embedding(red)
    assert info == {"extractor": "colour-stats-v1", "fallback": True, "dim": 64, "normalised": True}
    e_red2, e_blue, e_green = (style_embedding(x)[0] for x in (red2, blue, green))
    assert e_red.shape == (64,) and e_red.dtype == np.float32
    assert abs(np.linalg.norm(e_red) - 1) < 1e-5
    close = float(e_red @ e_red2)
    assert close > 0.75
    assert float(e_red @ e_blue) < 0.4 and float(e_red @ e_green) < 0.4
    assert close - float(e_red @ e_blue) > 0.4
    assert np.array_equal(colour_stats_embedding(red), e_red)  # deterministic


def test_style_uses_clip_when_weights_are_present(tmp_path, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    import torch

    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"stand-in")
    calls = {}

    class FakeClip(torch.nn.Module):
        def encode_image(self, pixels):
            calls["shape"] = tuple(pixels.shape)
            return torch.full((pixels.shape[0], 1024), 3.0)

    def fake_create(name, pretrained=None, device="cpu"):
        calls["name"], calls["pretrained"] = name, pretrained
        return FakeClip(), None, lambda pil: torch.zeros(3, 224, 224)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    style_mod._load_clip.cache_clear()
    try:
        embedding, info = style_embedding(np.zeros((50, 70, 3), np.uint8), weights_dir=tmp_path)
    finally:
        style_mod._load_clip.cache_clear()
    assert calls["name"] == "ViT-H-14" and calls["pretrained"].endswith("open_clip_pytorch_model.bin")
    assert calls["shape"] == (1, 3, 224, 224)
    assert embedding.shape == (1024,) and embedding.dtype == np.float32 and embedding[0] == 3.0
    assert info["extractor"] == "open_clip-ViT-H-14" and info["fallback"] is False and info["dim"] == 1024


def test_corrupt_clip_weights_are_a_weights_error(tmp_path, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"stand-in")

    def failing_create(name, pretrained=None, device="cpu"):
        raise RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", failing_create)
    style_mod._load_clip.cache_clear()
    try:
        with pytest.raises(WeightsError, match="open_clip_pytorch_model.bin"):
            style_embedding(np.zeros((8, 8, 3), np.uint8), weights_dir=tmp_path)
    finally:
        style_mod._load_clip.cache_clear()


# -- previews and the round trip from a real clip -------------------------------------------
def test_preview_renderers():
    depth = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    rgb = depth_to_rgb(depth)
    assert rgb.shape == (1, 4, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 3, 3, 0] > rgb[0, 3, 3, 2] and rgb[0, 0, 0, 2] > rgb[0, 0, 0, 0]  # near red, far blue
    sketch = np.zeros((1, 1, 4, 4), np.float32)
    sketch[0, 0, 1] = 1
    paper = sketch_to_rgb(sketch)
    assert (paper[0, 1] == 0).all() and (paper[0, 0] == 255).all()
    mask = np.zeros((2, 1, 4, 4), np.float32)
    mask[:, :, :2] = 1
    assert (mask_to_rgb(mask)[:, :2] == 255).all() and (mask_to_rgb(mask)[:, 2:] == 0).all()
    grey = np.full((3, 8, 8, 3), 128, np.uint8)  # other size and frame count: resampled
    overlay = mask_to_rgb(mask, grey)
    assert overlay.shape == (2, 4, 4, 3)
    assert overlay[0, 0, 0, 0] > 128 > overlay[0, 0, 0, 1] and (overlay[:, 2:] == 128).all()


def test_condition_set_round_trip_and_previews(blackswan, tmp_path):
    frames = blackswan.frames
    assert frames.shape == (8, 128, 128, 3)
    depth, depth_info = estimate_depth(frames)
    sketch, sketch_info = extract_sketch(frames)
    single, _ = single_sketch_from_image(frames[0])
    style, style_info = style_embedding(frames[len(frames) // 2])
    try:
        from vcomp.conditions.motion import motion_from_frames
        motion = motion_from_frames(frames, fps=blackswan.fps)
    except ImportError:  # the motion module is developed separately
        motion = np.zeros((8, 2, 128, 128), np.float32)
    cs = ConditionSet(
        motion=motion,
        depth=depth, sketch=sketch, mask=mask_from_box("0.3,0.3,0.4,0.4", 8, (128, 128)),
        image=first_frame_condition(frames), single_sketch=single, style=style,
        meta={"source": str(BLACKSWAN), "fps": blackswan.fps, "size": [128, 128],
              "extractors": {"depth": depth_info, "sketch": sketch_info, "style": style_info}},
    )
    cs.save(tmp_path)
    loaded = ConditionSet.load(tmp_path)
    assert loaded.present() == list(cs.present())
    for name, value in cs.arrays().items():
        assert np.array_equal(getattr(loaded, name), value), name
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["extractors"]["depth"]["extractor"] == "heuristic-depth-v1"
    assert meta["extractors"]["style"]["dim"] == 64
    assert 0.0 <= loaded.depth.min() and loaded.depth.max() <= 1.0

    written = write_previews(loaded, tmp_path, fps=blackswan.fps, source_frames=frames)
    expected = ["depth", "sketch", "mask", "image", "single_sketch", "sheet"]
    try:
        from vcomp.conditions.motion import motion_to_rgb  # noqa: F401
        expected.append("motion")
    except ImportError:
        pass
    for name in expected:
        assert written[name].is_file() and written[name].parent == tmp_path / "previews", name
    assert {p.suffix for n, p in written.items() if n in ("depth", "sketch", "mask")} == {".mp4"}
    assert read_clip(written["depth"]).frames.shape == (8, 128, 128, 3)
    sheet = cv2.imread(str(written["sheet"]))
    assert sheet is not None and sheet.shape[0] > 5 * 128  # source + >= 5 condition rows
    assert condition_sheet(cs.select(["depth"])).shape[0] < sheet.shape[0]


def test_depth_heuristic_constants_documented():
    doc = depth_mod.__doc__
    for name, weight in depth_mod.WEIGHTS.items():
        assert f"{weight:.2f} {name}" in doc
