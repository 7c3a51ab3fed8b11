"""Evaluation: metrics, world checks validated on the renderer's own frames, the suite and `vcomp eval`."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from vcomp.evaluation import metrics as M
from vcomp.evaluation import suite as S
from vcomp.evaluation import world_checks as W
from vcomp.train.synthetic import COLOURS, DIRECTIONS, PALETTE, SHAPES, parse_caption, render, sample_scene

DIRECTION_NAMES = tuple(DIRECTIONS)


def _scene(i: int, size: int = 64, frames: int = 16, **kw):
    """One-object scene i: shapes and directions cycle so 40 scenes cover all 20 (shape, direction)
    pairs that i % 4, i % 10 reach, every shape and every direction; colours and backgrounds random."""
    rng = np.random.default_rng([123, i])
    colour, bg = rng.choice(COLOURS, 2, replace=False)
    primary = (str(colour), SHAPES[i % 4], DIRECTION_NAMES[i % 10], str(bg))
    return sample_scene(rng, "train", num_objects=1, size=size, frames=frames, primary=primary, **kw)


@pytest.fixture(scope="module")
def renders():
    return [render(_scene(i), motion="none") for i in range(40)]


@pytest.fixture(scope="module")
def moving():
    """Two clips with extracted motion: one moving right, one in a circle."""
    scenes = [_scene(1), _scene(8)]
    assert [s.primary.direction for s in scenes] == ["right", "in a circle"]
    return [render(s) for s in scenes]


# ---------------------------------------------------------------------------------------------- checks
def test_colour_shape_direction_are_exact_on_clean_renders(renders):
    wrong = []
    for s in renders:
        o, bg = s.scene.primary, s.scene.background
        a = W.analyse_object(s.frames)
        got = (a["bg_colour"], a["colour"], a["shape"], a["direction"])
        if got != (bg.colour, o.colour, o.shape, o.direction):
            wrong.append((s.caption, got))
        # the same checks on the renderer's ground truth: masks and centre tracks
        assert W.shape_class(s.object_masks[:, 0]) == o.shape, s.caption
        assert W.direction_of_motion(s.tracks[0]) == o.direction, s.caption
        assert W.centroid_track(a["mask"]) == pytest.approx(s.tracks[0], abs=1.0)
        cosine = W.direction_cosine(a["track"], o.direction)
        assert (cosine is None) == (o.direction not in W.MOVING) and (cosine is None or cosine > 0.98), s.caption
    assert not wrong, wrong
    assert {s.scene.primary.shape for s in renders} == set(SHAPES)
    assert {s.scene.primary.direction for s in renders} == set(DIRECTIONS)
    assert {s.scene.background.kind for s in renders} == {"solid", "gradient", "textured"}


def _degrade(frames: np.ndarray, rng: np.random.Generator, blur=1.0, noise=8.0, shift=8.0) -> np.ndarray:
    """What a decoder may add: blur, per-pixel noise and a global colour cast."""
    import cv2

    cast = rng.normal(0, shift, 3)
    out = [cv2.GaussianBlur(f.astype(np.float32), (0, 0), blur) + rng.normal(0, noise, f.shape) + cast for f in frames]
    return np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8)


def test_checks_survive_blur_noise_and_a_colour_cast(renders):
    rng = np.random.default_rng(0)
    right = {"colour": 0, "shape": 0, "direction": 0}
    for s in renders:
        a = W.analyse_object(_degrade(s.frames, rng))
        o = s.scene.primary
        for key in right:
            right[key] += a[key] == getattr(o, key)
    assert min(right.values()) >= 0.95 * len(renders), right


def test_counter_examples_are_detected(renders):
    s = next(r for r in renders if r.scene.primary.texture is None and r.scene.primary.direction in ("left", "up"))
    o = s.scene.primary
    # a wrong colour: paint the object another palette colour
    other = next(c for c in COLOURS if c not in (o.colour, s.scene.background.colour))
    painted = s.frames.copy()
    painted[s.object_masks[:, 0] > 0.5] = PALETTE[other]
    assert W.analyse_object(painted)["colour"] == other != o.colour
    # a wrong shape: the same scene with another shape
    shape = next(x for x in SHAPES if x != o.shape)
    reshaped = render(dataclasses.replace(s.scene, objects=(dataclasses.replace(o, shape=shape),)), motion="none")
    assert W.analyse_object(reshaped.frames)["shape"] == shape
    # a wrong direction: the clip played backwards; a frozen clip stands still
    opposite = {"left": "right", "up": "down"}[o.direction]
    assert W.analyse_object(s.frames[::-1])["direction"] == opposite
    assert W.analyse_object(np.repeat(s.frames[:1], 16, 0))["direction"] == "still"
    # no object at all: nothing to classify
    empty = W.analyse_object(np.repeat(s.frames[:1] * 0 + np.uint8(PALETTE["blue"]), 16, 0))
    assert (empty["colour"], empty["shape"], empty["direction"]) == (None, None, None)


def test_direction_rules_on_synthetic_tracks():
    t = np.arange(16.0)[:, None]
    for name, vec in DIRECTIONS.items():
        if vec is None or name == "still":
            continue
        track = 32 + 1.2 * t * np.array(vec) + np.random.default_rng(0).normal(0, 0.2, (16, 2))
        assert W.direction_of_motion(track) == name
    angle = 0.4 * t[:, 0]
    assert W.direction_of_motion(np.stack([32 + 6 * np.cos(angle), 32 + 6 * np.sin(angle)], 1)) == "in a circle"
    assert W.direction_of_motion(np.full((16, 2), 30.0) + np.random.default_rng(1).normal(0, 0.3, (16, 2))) == "still"
    assert W.direction_of_motion(np.full((16, 2), np.nan)) is None


def test_direction_cosine_gives_partial_credit():
    t = np.arange(16.0)[:, None]
    noise = np.random.default_rng(2).normal(0, 0.2, (16, 2))
    rightwards = 32 + 1.5 * t * np.array([1.0, 0.0]) + noise
    assert W.direction_cosine(rightwards, "right") == pytest.approx(1.0, abs=0.02)
    assert W.direction_cosine(rightwards, "left") == pytest.approx(-1.0, abs=0.02)
    assert W.direction_cosine(rightwards, "up") == pytest.approx(0.0, abs=0.05)
    # one of the 8 directions off: wrong for direction_of_motion, 0.71 here
    assert W.direction_of_motion(rightwards) != "down-right"
    assert W.direction_cosine(rightwards, "down-right") == pytest.approx(math.sqrt(0.5), abs=0.03)
    # no motion read: no credit; a prompt without a straight direction: not scored
    still = np.full((16, 2), 30.0) + noise
    assert W.direction_cosine(still, "right") == 0.0
    assert W.direction_cosine(np.full((16, 2), np.nan), "right") == 0.0
    assert W.direction_cosine(rightwards, "still") is None
    assert W.direction_cosine(rightwards, "in a circle") is None


def test_depth_and_edge_agreement_follow_the_own_condition(renders):
    own_d, other_d, own_e, other_e = [], [], [], []
    for s, prev in zip(renders[1:13], renders[:12], strict=True):
        own_d.append(W.depth_order_agreement(s.frames, s.depth))
        other_d.append(W.depth_order_agreement(s.frames, prev.depth))
        own_e.append(W.edge_agreement(s.frames, s.sketch)["f1"])
        other_e.append(W.edge_agreement(s.frames, prev.sketch)["f1"])
    assert min(own_d) > 0.9 and np.mean(own_d) > 0.97 and np.mean(other_d) < 0.65  # misses: anti-aliased rims
    assert np.mean(own_e) > 0.9 and np.mean(other_e) < 0.3
    # a flat clip has no edges and puts nothing in front
    flat = np.zeros_like(renders[0].frames) + np.uint8(PALETTE["red"])
    assert W.edge_agreement(flat, renders[0].sketch) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert W.depth_order_agreement(flat, renders[0].depth) == pytest.approx(0.5)


def test_style_palette_match():
    case = S.make_case(0, 3)
    style, target = case.style_image, case.style_colour
    base = _scene(5)
    obj = dataclasses.replace(base.primary, colour=next(c for c in COLOURS if c != target))

    def with_background(colour):
        return render(dataclasses.replace(base, objects=(obj,), background=dataclasses.replace(
            base.background, colour=colour)), motion="none")

    same = with_background(target)
    region = ~W.dilate(same.depth[:, 0] > 0.3)  # the background, as the suite takes it
    assert W.style_palette_match(same.frames, style, region) == {"match": True, "output": target, "style": target}
    other = with_background(next(c for c in COLOURS if c not in (target, obj.colour)))
    assert W.style_palette_match(other.frames, style, region)["match"] is False


# ---------------------------------------------------------------------------------------------- metrics
def test_psnr_known_values():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    assert M.psnr(a, a) == math.inf
    b = a + np.uint8(10)  # MSE 100
    assert M.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    c = b.copy()
    c[:, :4] = 0  # identical in the top half
    mask = np.zeros((2, 1, 8, 8), np.float32)
    mask[:, :, :4] = 1  # ConditionSet layout is accepted
    assert M.psnr(a, c, mask) == math.inf
    assert M.psnr(a, c, ~mask[:, 0].astype(bool)) == pytest.approx(28.1308, abs=1e-3)
    assert math.isnan(M.psnr(a, c, np.zeros((8, 8), bool)))


def test_motion_control_error(moving):
    for s in moving:
        assert M.motion_control_error(s.frames, s.motion) == 0.0  # the extractor is deterministic
        static = np.repeat(s.frames[:1], len(s.frames), 0)
        err = M.motion_control_error(static, s.motion)
        assert err == pytest.approx(float(np.sqrt((s.motion[1:] ** 2).sum(1)).mean()), rel=1e-5) and err > 0.1
    # the condition may come at another size: it is rescaled (vectors too)
    from vcomp.conditions.motion import resize_motion

    s = moving[0]
    assert M.motion_control_error(s.frames, resize_motion(s.motion, (128, 128))) < 0.05
    with pytest.raises(Exception, match="frames"):
        M.motion_control_error(s.frames[:8], s.motion)


def test_frame_consistency(moving, tmp_path, monkeypatch):
    monkeypatch.setenv("VCOMP_HOME", str(tmp_path))  # no CLIP weights here: the fallback
    embedder = M.frame_embedder()
    assert embedder.name == M.FALLBACK and not embedder.clip
    clip = moving[0].frames
    static = np.repeat(clip[:1], 16, 0)
    noise = np.random.default_rng(0).integers(0, 256, clip.shape, dtype=np.uint8)
    fc_static, fc_clip, fc_noise = (M.frame_consistency(x, embedder) for x in (static, clip, noise))
    assert fc_static == pytest.approx(1.0, abs=1e-5)
    assert fc_static > fc_clip > fc_noise + 0.3
    # any callable frames -> [T, D] serves as an embedder
    assert M.frame_consistency(noise, lambda f: np.ones((len(f), 4))) == pytest.approx(1.0)
    emb = M.fallback_embedding(clip[:2])
    assert emb.shape == (2, 64 + 2 * 16 * 16) and np.allclose(np.linalg.norm(emb, axis=1), 1)


# ---------------------------------------------------------------------------------------------- suite
def test_cases_are_deterministic_heldout_and_consistent():
    a, b, c = S.make_case(5, 0), S.make_case(5, 0), S.make_case(6, 0)
    assert a.sample.caption == b.sample.caption and a.seed == b.seed
    assert np.array_equal(a.sample.frames, b.sample.frames) and np.array_equal(a.style_image, b.style_image)
    assert (a.sample.caption, a.seed) != (c.sample.caption, c.seed)
    scene = a.sample.scene
    assert scene.split == "heldout" and len(scene.objects) == 1
    assert a.inpaint_colour not in (scene.primary.colour, scene.background.colour)
    parsed = parse_caption(S.recoloured_caption(scene, a.inpaint_colour))
    assert parsed["objects"][0]["colour"] == a.inpaint_colour
    assert parsed["objects"][0]["shape"] == scene.primary.shape
    # the style image's dominant colour is the style colour, not the scene's background
    assert W.dominant_colour(a.style_image[None], shade_max=W.BACKGROUND_SHADE_MAX) == a.style_colour
    assert a.style_colour != scene.background.colour
    # the hole covers the object (dilated) and nothing else
    obj = a.sample.object_masks[:, 0] > 0.5
    hole = a.inpaint_hole[:, 0] > 0.5
    assert hole[obj].all() and hole.sum() < 3 * obj.sum()


def test_aggregate_pass_fail_logic():
    def case(ok, mce, base, d, db, f1, f1b, psnr, style):
        return {"text": {"colour_ok": ok, "shape_ok": ok, "direction_ok": ok, "bg_ok": ok, "frame_consistency": 0.9,
                         "motion_error": base, "direction_cosine": 0.5 if ok else None},
                "motion": {"colour_ok": ok, "shape_ok": ok, "direction_ok": ok, "motion_error": mce,
                           "direction_cosine": 1.0, "reconstruction_motion_error": 0.25 * base,
                           "reconstruction_shape_ok": not ok,
                           "baseline_motion_error": base, "frame_consistency": 0.9},
                "depth": {"depth_order_agreement": d, "baseline": db, "frame_consistency": 0.9},
                "sketch": {"f1": f1, "baseline": f1b, "frame_consistency": 0.9},
                "inpaint": {"outside_psnr_db": psnr, "inside_colour_ok": ok, "frame_consistency": 0.9},
                "style": {"palette_match": style, "baseline": False, "frame_consistency": 0.9}}

    good = S.aggregate([case(True, 0.1, 1.0, 0.9, 0.6, 0.7, 0.2, 100.0, True)] * 3, S.TASKS)
    assert all(r["passed"] for r in good if r["passed"] is not None)
    assert sum(r["passed"] is not None for r in good) == len(S.TARGETS)
    rows = {(r["task"], r["metric"]): r for r in good}
    assert rows[("motion", "motion_error_ratio")]["value"] == pytest.approx(0.1)
    floor = rows[("motion", "reconstruction_ratio")]  # a reference: no target of its own
    assert floor["value"] == pytest.approx(0.25) and floor["passed"] is None
    ceiling = rows[("motion", "reconstruction_shape_accuracy")]  # a reference too
    assert ceiling["value"] == 0.0 and ceiling["passed"] is None and ceiling["n"] == 3
    assert rows[("depth", "depth_order_agreement")]["baseline"] == pytest.approx(0.6)
    assert rows[("text", "direction_cosine")]["value"] == pytest.approx(0.5)
    assert rows[("text", "direction_cosine")]["n"] == 3 and rows[("text", "direction_cosine")]["passed"] is None
    bad = S.aggregate([case(True, 0.5, 1.0, 0.65, 0.6, 0.25, 0.2, 30.0, False)] * 3, S.TASKS)
    failed = {(r["task"], r["metric"]) for r in bad if r["passed"] is False}
    assert failed == {("motion", "motion_error_ratio"), ("depth", "depth_order_agreement"),
                      ("sketch", "edge_f1"), ("inpaint", "outside_psnr_min_db"), ("style", "palette_match")}
    assert S.parse_tasks("sketch, text") == ("text", "sketch")
    with pytest.raises(Exception, match="unknown task"):
        S.parse_tasks("text,colour")


def test_eval_cli_smoke_json(tmp_path, monkeypatch, capsys):
    """`vcomp eval --suite world --n 2 --steps 2 --json` with a random tiny model: structure only
    (4 frames per clip and one thread to keep the test short on a shared machine)."""
    from vcomp.cli import main

    monkeypatch.setenv("VCOMP_ALLOW_RANDOM", "1")
    monkeypatch.setenv("VCOMP_HOME", str(tmp_path / "home"))
    code = main(["eval", "--suite", "world", "--n", "2", "--steps", "2", "--frames", "4", "--threads", "1",
                 "--json", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert isinstance(report["all_passed"], bool) and report["n"] == 2 and len(report["cases"]) == 2
    assert report["frame_embedder"] == M.FALLBACK and report["model"]["preset"] == "tiny"
    assert report["timings"]["generations"] == 14  # 6 tasks + the style baseline, per scene
    tasks = {r["task"] for r in report["metrics"]}
    assert tasks == set(S.TASKS) | {"source"}
    judged = [r for r in report["metrics"] if r["passed"] is not None]
    assert len(judged) == len(S.TARGETS) and all(r["target"] for r in judged)
    assert report["cases"][0]["scores"]["inpaint"]["outside_psnr_db"] >= 35  # the source is pasted back
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"results.json", "sheet_text.png", "case000_source.mp4", "case001_style.mp4"} <= written
    # the table mode prints the same rows
    from vcomp.cli.eval import print_table

    print_table(report)
    table = capsys.readouterr().out
    assert "colour_accuracy" in table and "motion_error_ratio" in table and "pass" in table
    assert "reconstruction_ratio" in table and "…" not in table  # nothing cut off on 80 columns
    assert report["cases"][0]["scores"]["motion"]["reconstruction_motion_error"] >= 0
    assert "reconstruction_shape_accuracy" in table
    assert isinstance(report["cases"][0]["scores"]["motion"]["reconstruction_shape_ok"], bool)
    assert f"guidance={report['guidance']:g}" in table  # results at another w are not comparable
    # same seed, same scenes
    assert [c["caption"] for c in report["cases"]] == [S.make_case(0, i, 64, 4).sample.caption for i in range(2)]


def test_the_suite_runs_each_job_at_the_models_default_for_what_it_guides(monkeypatch, capsys):
    """With no --guidance, the style job runs at the model's style default and its no-style
    baseline at the plain default; the report and the table say so. --guidance overrides both."""
    from vcomp.cli.eval import print_table
    from vcomp.pipeline import Pipeline

    pipe = Pipeline.load(device="cpu", preset="tiny", allow_random=True)
    monkeypatch.setattr(pipe, "default_guidance", 3.0)
    monkeypatch.setattr(pipe, "guidance_by_guide", {"style": 7.0})
    run = dict(n=1, steps=1, frames=4, tasks="style", embedder=M.FrameEmbedder(M.FALLBACK, M.fallback_embedding))
    report = S.run_world_suite(pipe, **run)
    assert report["guidance"] == 3.0 and report["guidance_by_guide"] == {"style": 7.0}
    assert report["cases"][0]["guidance"] == {"style": 7.0, "style_baseline": 3.0}
    explicit = S.run_world_suite(pipe, guidance=5.0, **run)
    assert explicit["guidance_by_guide"] == {} and explicit["cases"][0]["guidance"] == {"style": 5.0,
                                                                                         "style_baseline": 5.0}
    print_table(report)
    assert "guidance=3 (style 7)" in capsys.readouterr().out


def test_frame_consistency_uses_clip_when_its_weights_are_found(tmp_path, monkeypatch):
    """The CLIP branch, with a stand-in for the 4 GB model: found file -> image tower, batched."""
    import torch

    import vcomp.conditions.style as style

    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"stand-in")
    calls = []

    class Tower:
        def encode_image(self, batch):
            calls.append(batch.shape[0])
            return batch.mean((2, 3))  # [B, 3]

    def preprocess(image):
        return torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)

    monkeypatch.setattr(style, "_load_clip", lambda path, device: (Tower(), preprocess))
    embedder = M.frame_embedder(tmp_path)
    assert embedder.clip and embedder.name == "open_clip-ViT-H-14"
    frames = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    assert 0.0 < M.frame_consistency(frames, embedder) <= 1.0
    assert calls == [16, 4]
    assert M.frame_embedder(tmp_path, use_clip=False).name == M.FALLBACK
