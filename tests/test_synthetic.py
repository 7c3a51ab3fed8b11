"""The procedural training world: scenes, captions, rendering, held-out split, dataset."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from vcomp.conditions.condition_set import ConditionSet
from vcomp.train import synthetic as W
from vcomp.train.synthetic import (
    COLOURS,
    DEPTH_BACKGROUND,
    DEPTH_LAYERS,
    DIRECTIONS,
    HELDOUT,
    PALETTE,
    SHAPES,
    VOCABULARY,
    BackgroundSpec,
    ObjectSpec,
    Scene,
    WorldDataset,
    caption,
    counterfactual_caption,
    is_heldout,
    parse_caption,
    render,
    sample_scene,
)


def _obj(shape="circle", colour="red", direction="right", speed=2.0, size=10.0, start=(20.0, 32.0), layer=0, **kw):
    return ObjectSpec(shape=shape, colour=colour, direction=direction, speed=speed, size=size, start=start,
                      layer=layer, **kw)


def _scene(*objects, bg="blue", kind="solid", **kw):
    return Scene(tuple(objects), BackgroundSpec(colour=bg, kind=kind, **kw))


def _erode(mask, px=1):
    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


@pytest.fixture(scope="module")
def train_scenes():
    rng = np.random.default_rng(1234)
    return [sample_scene(rng, "train") for _ in range(2000)]


# -- captions ------------------------------------------------------------------------------------
def test_caption_grammar_examples():
    assert caption(_scene(_obj(direction="left"))) == "a red circle moving left on a blue background"
    assert caption(_scene(_obj(direction="still", speed=0))) == "a red circle standing still on a blue background"
    circ = _obj(direction="in a circle", orbit_radius=6.0, orbit_step=0.4)
    assert caption(_scene(circ)) == "a red circle moving in a circle on a blue background"
    two = _scene(_obj(direction="left"), _obj("star", "green", "up", layer=1), bg="white")
    assert caption(two) == "a red circle moving left and a green star moving up on a white background"
    assert caption(_scene(_obj(direction="up-left"), kind="gradient")) == \
        "a red circle moving up-left on a blue gradient background"
    assert caption(_scene(_obj(colour="orange", texture="stripes"), bg="green", kind="textured", texture="checker")) == \
        "a textured orange circle moving right on a textured green background"
    assert caption(_scene(_obj(colour="orange"), bg="purple")).startswith("an orange circle")
    assert caption(_scene(_obj(), bg="orange")).endswith("on an orange background")


def test_captions_parse_back_to_the_scene(train_scenes):
    words = set()
    for scene in train_scenes[:500]:
        text = caption(scene)
        words.update(text.split())
        parsed = parse_caption(text)
        assert [(o["colour"], o["shape"], o["direction"], o["textured"]) for o in parsed["objects"]] == \
            [(o.colour, o.shape, o.direction, o.texture is not None) for o in scene.objects]
        assert parsed["background"] == {"colour": scene.background.colour, "kind": scene.background.kind}
    assert words <= set(VOCABULARY)
    assert VOCABULARY == sorted(set(VOCABULARY))
    for bad in ("a red circle moving sideways on a blue background", "a red circle moving left",
                "a pink circle moving left on a blue background", "hello"):
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_counterfactual_captions_change_one_attribute_of_every_object(train_scenes):
    for scene in train_scenes[:200]:
        text = caption(scene)
        true = parse_caption(text)
        for attribute in ("direction", "colour", "shape"):
            other = parse_caption(counterfactual_caption(text, attribute))
            assert other["background"] == true["background"]
            for o, t in zip(other["objects"], true["objects"], strict=True):
                for key in ("colour", "shape", "direction", "textured"):
                    if key != attribute:
                        assert o[key] == t[key]
                if attribute == "direction" and t["direction"] in ("in a circle", "still"):
                    assert o["direction"] == t["direction"]
                elif attribute == "direction":
                    np.testing.assert_allclose(DIRECTIONS[o["direction"]], -np.asarray(DIRECTIONS[t["direction"]]))
                else:
                    assert o[attribute] != t[attribute]
    with pytest.raises(ValueError, match="unknown caption attribute"):
        counterfactual_caption(caption(train_scenes[0]), "size")


# -- held-out split ------------------------------------------------------------------------------
def test_heldout_set_is_fixed_and_about_ten_percent():
    total = len(COLOURS) * (len(COLOURS) - 1) * len(SHAPES) * len(DIRECTIONS)
    assert len(HELDOUT) == 235  # pinned: changing the rule changes what evaluation means
    assert 0.07 < len(HELDOUT) / total < 0.13
    assert all(is_heldout(*combo) for combo in HELDOUT)
    assert not any(is_heldout(c, s, d, c) for c in COLOURS for s in SHAPES for d in DIRECTIONS)
    assert is_heldout(*HELDOUT[0]) and HELDOUT == tuple(sorted(HELDOUT))


def test_training_never_shows_a_heldout_combination(train_scenes):
    heldout = set(HELDOUT)
    for scene in train_scenes:
        assert not heldout & set(scene.combos())
    rng = np.random.default_rng(7)
    for _ in range(300):
        scene = sample_scene(rng, "heldout")
        assert scene.combos()[0] in heldout
        assert scene.split == "heldout"


def test_training_covers_every_value_and_pair(train_scenes):
    objects = [(o, s.background) for s in train_scenes for o in s.objects]
    assert {o.colour for o, _ in objects} == set(COLOURS)
    assert {o.shape for o, _ in objects} == set(SHAPES)
    assert {o.direction for o, _ in objects} == set(DIRECTIONS)
    assert {bg.colour for _, bg in objects} == set(COLOURS)
    assert {bg.kind for _, bg in objects} == set(W.BACKGROUND_KINDS)
    assert {bg.texture for _, bg in objects} >= set(W.BACKGROUND_TEXTURES)
    assert {o.texture for o, _ in objects} == set(W.OBJECT_TEXTURES) | {None}
    assert {len(s.objects) for s in train_scenes} == {1, 2}
    # only whole combinations are held out: every pair of attributes is seen in training
    fields = [lambda o, bg: o.colour, lambda o, bg: o.shape, lambda o, bg: o.direction, lambda o, bg: bg.colour]
    values = [COLOURS, SHAPES, tuple(DIRECTIONS), COLOURS]
    for (i, fi), (j, fj) in itertools.combinations(enumerate(fields), 2):
        seen = {(fi(o, bg), fj(o, bg)) for o, bg in objects}
        expected = {(a, b) for a in values[i] for b in values[j] if not (i == 0 and j == 3 and a == b)}
        assert seen == expected, (i, j, expected - seen)


def test_scenes_keep_objects_in_frame_and_colours_distinct(train_scenes):
    for scene in train_scenes[:500]:
        colours = [o.colour for o in scene.objects] + [scene.background.colour]
        assert len(set(colours)) == len(colours)
        assert len({o.layer for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            c = o.centres(scene.frames)
            margin = W.EDGE_MARGIN * o.size - 1e-6
            assert c.min() >= margin and c.max() <= scene.size - 1 - margin


# -- rendering -----------------------------------------------------------------------------------
def test_render_layouts_and_conditionset():
    sample = render(sample_scene(np.random.default_rng(0), num_objects=2))
    assert sample.frames.shape == (16, 64, 64, 3) and sample.frames.dtype == np.uint8
    for name in ("depth", "mask", "sketch"):
        assert getattr(sample, name).shape == (16, 1, 64, 64)
    assert sample.object_masks.shape == (16, 2, 64, 64)
    assert sample.motion.shape == sample.true_motion.shape == (16, 2, 64, 64)
    assert not sample.motion[0].any() and not sample.true_motion[0].any()
    assert set(np.unique(sample.mask)) <= {0.0, 1.0} and set(np.unique(sample.sketch)) <= {0.0, 1.0}
    np.testing.assert_array_equal(sample.object_masks.max(1, keepdims=True), sample.mask)
    assert (sample.object_masks.sum(1) <= 1).all()
    conditions = sample.conditions()
    assert isinstance(conditions, ConditionSet) and conditions.num_frames == 16 and conditions.size == (64, 64)
    big = render(sample.scene, size=128, motion="none")
    assert big.frames.shape == (16, 128, 128, 3) and big.motion is None
    assert big.caption == sample.caption
    three = render(sample_scene(np.random.default_rng(1), num_objects=3), motion="none")
    assert three.object_masks.shape == (16, 3, 64, 64) and len(parse_caption(three.caption)["objects"]) == 3


@pytest.mark.parametrize("shape", SHAPES)
def test_object_colour_and_background_match_palette(shape):
    scene = _scene(_obj(shape, "yellow", "down-right", speed=1.5, start=(24.0, 22.0)), bg="purple")
    sample = render(scene, motion="none")
    inside = _erode(sample.mask[:, 0].reshape(-1, 64)).reshape(16, 64, 64)
    outside = _erode(1 - sample.mask[:, 0].reshape(-1, 64)).reshape(16, 64, 64)
    assert inside.sum() > 16 * 40
    assert np.abs(sample.frames[inside].astype(int) - PALETTE["yellow"]).max() <= 1
    assert np.abs(sample.frames[outside].astype(int) - PALETTE["purple"]).max() <= 1


def test_textured_object_is_still_its_colour():
    names = list(PALETTE)
    table = np.array([PALETTE[n] for n in names], float)
    for texture, colour in zip(W.OBJECT_TEXTURES, ("red", "white", "blue"), strict=True):
        scene = _scene(_obj("square", colour, texture=texture, texture_period=3.0, size=12), bg="green",
                       kind="textured", texture="stripes", period=6.0)
        sample = render(scene, motion="none")
        inside = _erode(sample.mask[:, 0].reshape(-1, 64)).reshape(16, 64, 64)
        pixels = sample.frames[inside].astype(float)
        nearest = np.argmin(((pixels[:, None] - table[None]) ** 2).sum(-1), 1)
        assert np.mean(np.array(names)[nearest] == colour) > 0.9, texture
        assert pixels.std(0).max() > 10  # the texture is there


def _centroids(mask):
    """Centroid (x, y) of a [T,H,W] mask per frame, and which frames leave it clear of the border."""
    ys, xs = np.mgrid[:mask.shape[1], :mask.shape[2]]
    area = mask.sum((1, 2))
    centroid = np.stack([(mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area], 1)
    inside = ~(mask[:, 0].any(1) | mask[:, -1].any(1) | mask[:, :, 0].any(1) | mask[:, :, -1].any(1))
    return centroid, inside


@pytest.mark.parametrize("direction", [d for d in DIRECTIONS if d != "in a circle"])
def test_object_centroid_moves_in_the_captioned_direction(direction):
    u = np.asarray(DIRECTIONS[direction])
    for shape, speed in (("star", 2.5), ("triangle", 1.0)):
        start = 32 - u * speed * 7.5
        scene = _scene(_obj(shape, "red", direction, speed=speed, size=9, start=(start[0], start[1])), bg="black")
        assert parse_caption(caption(scene))["objects"][0]["direction"] == direction
        sample = render(scene, motion="none")
        centroid, inside = _centroids(sample.mask[:, 0])
        assert inside.all()
        np.testing.assert_allclose(np.diff(centroid, axis=0).mean(0), u * speed, atol=0.05)
        np.testing.assert_allclose(centroid, sample.tracks[0], atol=0.8)


def test_sampled_objects_move_at_their_speed_along_their_track():
    rng = np.random.default_rng(0)
    for direction in DIRECTIONS:
        scene = sample_scene(rng, num_objects=1, primary=("white", "square", direction, "blue"))
        o = scene.primary
        if direction not in ("still", "in a circle"):
            assert 1.0 - 1e-6 <= o.speed <= 3.0 + 1e-6
        steps = np.hypot(*np.diff(o.centres(16), axis=0).T)
        np.testing.assert_allclose(steps, o.speed, rtol=1e-6, atol=1e-9)
        sample = render(scene, motion="none")
        centroid, inside = _centroids(sample.mask[:, 0])
        np.testing.assert_allclose(centroid[inside], sample.tracks[0, inside], atol=0.8)


def test_circular_path_follows_its_track():
    scene = sample_scene(np.random.default_rng(5), num_objects=1, primary=("green", "circle", "in a circle", "white"))
    sample = render(scene, motion="none")
    centroid, inside = _centroids(sample.mask[:, 0])
    assert inside.sum() >= 8
    np.testing.assert_allclose(centroid[inside], sample.tracks[0, inside], atol=0.8)
    track = sample.tracks[0] - sample.tracks[0].mean(0)
    radius = np.hypot(*track.T)
    assert radius.std() < 0.15 * radius.mean()  # a circle, not a line
    assert abs(scene.primary.orbit_step) * 15 > 2 * np.pi * 0.7


def test_depth_masks_sketch_and_true_motion_are_exact():
    near = _obj("square", "red", "right", speed=2.0, start=(20.0, 32.0), layer=2)
    far = _obj("circle", "white", "left", speed=1.0, start=(40.0, 32.0), layer=0)
    sample = render(_scene(near, far, bg="black"), motion="none")
    bg = sample.mask[:, 0] == 0
    np.testing.assert_allclose(sample.depth[:, 0][_erode(bg.reshape(-1, 64)).reshape(bg.shape)], DEPTH_BACKGROUND)
    for k, o in enumerate((near, far)):
        m = _erode(sample.object_masks[:, k].reshape(-1, 64)).reshape(16, 64, 64)
        assert m.any()
        np.testing.assert_allclose(sample.depth[:, 0][m], DEPTH_LAYERS[o.layer], atol=1e-6)
        v = np.asarray(DIRECTIONS[o.direction]) * o.speed
        for t in range(1, 16):
            visible = sample.object_masks[t, k] > 0
            np.testing.assert_allclose(sample.true_motion[t][:, visible].T, np.broadcast_to(v, (visible.sum(), 2)),
                                       atol=1e-5)
    assert (sample.depth[:, 0][sample.mask[:, 0] > 0] > DEPTH_BACKGROUND + 0.2).all()
    assert np.all(sample.true_motion.transpose(0, 2, 3, 1)[bg] == 0)
    # sketch: 1-px outlines on the object side of the boundary, every object outlined each frame
    mask = sample.mask[:, 0].astype(bool)
    edge = sample.sketch[:, 0].astype(bool)
    assert (edge <= mask).all()
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    for k in range(2):
        own = sample.object_masks[:, k].reshape(-1, 64).astype(np.uint8)
        rim = (own - cv2.erode(own, cross, borderValue=1)).reshape(mask.shape).astype(bool)
        assert not (edge & (sample.object_masks[:, k] > 0) & ~rim).any()  # only on the object's rim
    for t in range(16):
        for k in range(2):
            assert (edge[t] & (sample.object_masks[t, k] > 0)).any()
        perimeter = mask[t] & ~_erode(mask[t])
        assert edge[t].sum() <= perimeter.sum() + 4 * 64  # outlines plus the occlusion boundary


def test_nearer_object_occludes():
    for near_first in (True, False):
        a = _obj("square", "red", "right", speed=1.0, start=(26.0, 32.0), size=12, layer=2 if near_first else 0)
        b = _obj("circle", "green", "left", speed=1.0, start=(38.0, 32.0), size=12, layer=0 if near_first else 2)
        sample = render(_scene(a, b, bg="white"), motion="none")
        near_k = 0 if near_first else 1
        near_colour = PALETTE[("red", "green")[near_k]]
        # where both shapes cover a pixel, the nearer one is drawn, owns the pixel and sets the depth
        both = render(_scene(a), motion="none").mask[:, 0].astype(bool) & \
            render(_scene(b), motion="none").mask[:, 0].astype(bool)
        both = _erode(both.reshape(-1, 64)).reshape(both.shape)
        assert both.sum() > 100
        assert (sample.object_masks[:, near_k][both] == 1).all()
        assert (sample.object_masks[:, 1 - near_k][both] == 0).all()
        assert np.abs(sample.frames[both].astype(int) - near_colour).max() <= 1
        np.testing.assert_allclose(sample.depth[:, 0][both], DEPTH_LAYERS[2])


def test_textured_background_adds_its_edges_only():
    scene = _scene(_obj(), bg="green", kind="textured", texture="stripes", period=6.0, angle=0.0)
    sample = render(scene, motion="none")
    bg_edges = sample.sketch[:, 0].astype(bool) & (sample.mask[:, 0] == 0)
    assert bg_edges.sum() > 16 * 64 * 5  # the vertical stripes' edges
    for kind in ("solid", "gradient"):
        plain = render(_scene(_obj(), bg="green", kind=kind, angle=30.0), motion="none")
        assert not (plain.sketch[:, 0].astype(bool) & (plain.mask[:, 0] == 0)).any()


def test_extracted_motion_agrees_with_true_motion():
    rng = np.random.default_rng(11)
    agree = total = 0
    for direction in [d for d in DIRECTIONS if d != "still"]:
        colour = _pick(rng, ("red", "yellow", "white", "green"))
        scene = sample_scene(rng, num_objects=1, primary=(colour, _pick(rng, SHAPES), direction, _pick(rng, ("black", "blue"))))
        sample = render(scene)
        for t in range(1, 16):
            m = sample.mask[t, 0] > 0
            true = sample.true_motion[t][:, m].mean(1)
            got = sample.motion[t][:, m].mean(1)
            total += 1
            agree += float(true @ got) > 0.5 * np.linalg.norm(true) * np.linalg.norm(got) and np.linalg.norm(got) > 0.3
    assert total >= 100 and agree / total > 0.8, agree / total
    still = render(sample_scene(rng, num_objects=1, primary=("red", "square", "still", "blue")))
    assert np.abs(still.motion).mean() < 0.05


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


# -- dataset -------------------------------------------------------------------------------------
def test_dataset_is_deterministic():
    a = WorldDataset(length=10, seed=3)
    b = WorldDataset(length=10, seed=3)
    x, y = a[4], b[4]
    assert x.keys() == y.keys() >= {"frames", "motion", "depth", "sketch", "mask", "image", "single_sketch",
                                    "style", "caption"}
    for key, value in x.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, y[key], err_msg=key)
        else:
            assert value == y[key]
    assert not np.array_equal(a[5]["frames"], x["frames"])
    assert not np.array_equal(WorldDataset(length=10, seed=4)[4]["frames"], x["frames"])
    assert WorldDataset(length=10, seed=3, split="heldout").scene(4) != a.scene(4)
    with pytest.raises(IndexError):
        a[10]


def test_dataset_modes_and_cache(tmp_path):
    exact = WorldDataset(length=4, seed=1, motion="exact", style=False)
    item = exact[2]
    np.testing.assert_array_equal(item["motion"], exact.sample(2).true_motion)
    assert "style" not in item and item["heldout"] is False
    assert "motion" not in WorldDataset(length=4, seed=1, motion="none")[0]

    cached = WorldDataset(length=4, seed=1, cache_dir=tmp_path)
    first = cached[1]
    files = list(tmp_path.rglob("*.npz"))
    assert len(files) == 1 and files[0].name == "0000001.npz"
    again = WorldDataset(length=4, seed=1, cache_dir=tmp_path)[1]
    assert again["caption"] == first["caption"]
    np.testing.assert_array_equal(again["frames"], first["frames"])
    np.testing.assert_array_equal(again["motion"], first["motion"])  # quarter-pel vectors, exact in fp16
    np.testing.assert_allclose(again["depth"], first["depth"], atol=1e-3)
    for key in ("sketch", "mask", "style", "single_sketch", "image"):
        np.testing.assert_allclose(again[key], first[key], atol=1e-6, err_msg=key)
    files[0].write_bytes(b"damaged")
    np.testing.assert_array_equal(WorldDataset(length=4, seed=1, cache_dir=tmp_path)[1]["frames"], first["frames"])


def test_scene_round_trips_through_a_dict():
    scene = sample_scene(np.random.default_rng(2), num_objects=2)
    assert Scene.from_dict(scene.to_dict()) == scene
