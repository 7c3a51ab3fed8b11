"""Track guidance (vcomp.engine.track_guidance): reading each object's named motion, the track it
should follow, the error the guided step descends, and the step itself through `shape_guided`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vcomp.engine.shape_guidance import ShapeTarget, shape_guided, soft_centroids
from vcomp.engine.track_guidance import TrackTarget, track_error, track_targets, wanted_track
from vcomp.train.synthetic import PALETTE, SHAPES

RED, BLUE = (220, 30, 35), (35, 70, 225)
S = math.sqrt(0.5)


def rgb(values) -> tuple[float, float, float]:
    return tuple(v / 127.5 - 1 for v in values)


def test_the_motions_are_the_worlds():
    from vcomp.engine import track_guidance
    from vcomp.train import synthetic

    assert track_guidance.DIRECTION_VECTORS == synthetic.DIRECTIONS
    assert track_guidance.REFERENCE == synthetic.REFERENCE_SIZE
    assert track_guidance.SPEED_RANGE == synthetic.SPEED_RANGE
    assert track_guidance.ORBIT_RADIUS_RANGE == synthetic.ORBIT_RADIUS_RANGE
    assert track_guidance.ORBIT_STEP_RANGE == synthetic.ORBIT_STEP_RANGE


def test_prompts_name_each_objects_motion():
    def read(prompt):
        return [(t.object.colour, t.direction) for t in track_targets(prompt, SHAPES, PALETTE)]

    red, blue = rgb(PALETTE["red"]), rgb(PALETTE["blue"])
    assert read("a red circle moving down-left on a blue background") == [(red, (-S, S))]
    assert read("A textured red star moving in a circle on an orange gradient background") == [(red, None)]
    assert read("a red square standing still on a white background") == [(red, (0.0, 0.0))]
    assert read("a red star moving left and a blue circle standing still on a white background") == [
        (red, (-1.0, 0.0)), (blue, (0.0, 0.0))]
    # an object without a motion phrase is left to the model; its neighbour keeps its own motion
    assert read("a red star and a blue circle moving up") == [(blue, (0.0, -1.0))]
    assert track_targets("a red star on a blue background", SHAPES, PALETTE) == []
    assert track_targets("a cat moving left", SHAPES, PALETTE) == []
    target = track_targets("a red circle moving right on a blue background", SHAPES, PALETTE)[0]
    assert target.object.background == blue and target.object.shape == SHAPES.index("circle")


def test_the_wanted_track_moves_the_named_way_near_the_object():
    t = torch.arange(16, dtype=torch.float32)
    wobble = torch.stack([torch.sin(t), torch.cos(1.7 * t)], 1)
    rightwards = torch.stack([10 + 2 * t, 30 + 0 * t], 1) + wobble
    want = wanted_track(rightwards, (1.0, 0.0), 64)
    steps = want[1:] - want[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-4)  # straight, constant speed
    assert abs(float(steps[0, 0]) - 2.0) < 0.2 and abs(float(steps[0, 1])) < 1e-4
    assert torch.allclose(want.mean(0), rightwards.mean(0), atol=1e-4)  # where the object is
    # told "down-left" while it moves right: along the named way at the slowest speed of the world
    diagonal = wanted_track(rightwards, (-S, S), 64)
    step = diagonal[1] - diagonal[0]
    assert torch.allclose(step, torch.tensor([-S, S]), atol=1e-4)
    assert torch.allclose(wanted_track(rightwards, (1.0, 0.0), 128)[1] - want[0], want[1] - want[0], atol=0.2)
    fast = wanted_track(torch.stack([5 * t, 0 * t], 1), (1.0, 0.0), 64)
    assert abs(float(fast[1, 0] - fast[0, 0]) - 3.0) < 1e-4  # clamped to the fastest
    still = wanted_track(rightwards, (0.0, 0.0), 64)
    assert torch.allclose(still, rightwards.mean(0).expand(16, 2), atol=1e-4)
    # frames where the object is not found (NaN) are ignored
    gaps = rightwards.clone()
    gaps[3:6] = float("nan")
    assert torch.isfinite(wanted_track(gaps, (1.0, 0.0), 64)).all()


def test_the_wanted_circle_keeps_the_objects_sense_and_a_worldly_radius():
    t = torch.arange(16, dtype=torch.float32)
    for sense in (1.0, -1.0):
        orbit = torch.stack([32 + 7 * torch.cos(sense * 0.4 * t), 30 + 7 * torch.sin(sense * 0.4 * t)], 1)
        want = wanted_track(orbit, None, 64)
        assert torch.allclose(want, orbit, atol=1e-3)  # already a circle of the world: unchanged
    line = torch.stack([10 + 2 * t, 30 + 0 * t], 1)
    want = wanted_track(line, None, 64)
    radius = (want - line.mean(0)).norm(dim=1)  # far from round: a circle around where it is
    assert torch.allclose(radius, radius[0].expand(16), atol=1e-3) and 5 - 1e-3 <= float(radius[0]) <= 9 + 1e-3
    angles = torch.atan2(*(want - line.mean(0)).flip(1).T)
    turns = torch.remainder(angles[1:] - angles[:-1] + math.pi, 2 * math.pi) - math.pi
    assert torch.all(turns.abs() >= 0.3 - 1e-4) and torch.all(turns.abs() <= 0.5 + 1e-4)


def scene(t: int = 8, size: int = 32, dx: int = 1, dy: int = 0) -> torch.Tensor:
    """[T, 3, size, size] blue frames with a red 6 x 6 square moving (dx, dy) px per frame, its
    edges blurred as a decoded prediction's are (on exact colours the soft mask is flat)."""
    frames = torch.tensor(rgb(BLUE)).view(1, 3, 1, 1).repeat(t, 1, size, size)
    for i in range(t):
        x, y = 8 + dx * i, 12 + dy * i
        frames[i, :, y:y + 6, x:x + 6] = torch.tensor(rgb(RED)).view(3, 1, 1)
    return torch.nn.functional.avg_pool2d(frames, 3, 1, 1, count_include_pad=False)


def test_the_track_error_is_small_for_the_named_motion_and_falls_along_its_gradient():
    red = ShapeTarget(rgb(RED), rgb(BLUE), 0)
    frames = scene()  # moving right at 1 px/frame (at 32 px wide: 2 px/frame at the 64 px reference)
    right, down = TrackTarget(red, (1.0, 0.0)), TrackTarget(red, (0.0, 1.0))
    assert float(track_error(frames, right)) < 0.01
    wrong = float(track_error(frames, down))
    assert wrong > 2.0
    x = frames.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(track_error(x, down), x)
    assert float(track_error(frames - 0.02 * grad / grad.pow(2).mean().sqrt(), down)) < wrong
    missing = TrackTarget(ShapeTarget(rgb(PALETTE["green"]), rgb(BLUE), 0), (1.0, 0.0))
    assert float(track_error(frames, missing)) == 0.0  # not found: nothing to steer


@pytest.mark.parametrize("output", ["eps", "v"])
def test_a_guided_step_moves_the_track_towards_the_named_motion(output):
    red = ShapeTarget(rgb(RED), rgb(BLUE), 0)
    down = TrackTarget(red, (0.0, 1.0))
    x0 = scene().transpose(0, 1)[None]  # [1, 3, T, H, W]; the decoder is the identity here
    alphas = torch.linspace(0.999, 0.01, 1000)
    a = alphas[600]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x = a.sqrt() * x0 + (1 - a).sqrt() * noise
    pred = noise if output == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
    guided = shape_guided(lambda x_, t_: pred, lambda z: z, None, [], alphas, 0.0, output=output,
                          tracks=[down], track_scale=0.05, track_range=(500, 900))
    with torch.inference_mode():
        new = guided(x, torch.tensor(600))
        assert torch.equal(guided(x, torch.tensor(400)), pred)  # outside its timesteps
    moved = (x - (1 - a).sqrt() * new) / a.sqrt() if output == "eps" else a.sqrt() * x - (1 - a).sqrt() * new
    before, after = float(track_error(x0[0].transpose(0, 1), down)), float(track_error(moved[0].transpose(0, 1), down))
    assert after < before
    track = soft_centroids(moved[0].transpose(0, 1), red)
    assert float(track[-1, 1] - track[0, 1]) > 0  # it starts to move down
    assert shape_guided(len, len, None, [], alphas, 0.0, tracks=[down], track_scale=0.0) is len


def test_generation_steers_tracks_by_default_only_when_the_prompt_sets_the_layout(tmp_path):
    from vcomp.conditions.condition_set import ConditionSet
    from vcomp.errors import InputError
    from vcomp.model.shape_critic import ShapeCritic
    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import random_embedded, save_embedded

    emb = random_embedded()
    torch.manual_seed(0)
    emb.autoencoder.shape_critic = ShapeCritic(shapes=SHAPES, colours=PALETTE)
    save_embedded(tmp_path, emb.unet, emb.text_encoder, autoencoder=emb.autoencoder,
                  sampling={"guidance": 3.0, "shape_guidance": 0.0, "track_guidance": 1.0})
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=tmp_path)
    assert pipe.default_track_guidance == 1.0 and pipe.describe()["track_guidance"] == 1.0

    def run(prompt, conditions=None, **kw):
        return pipe.generate(conditions, prompt, steps=4, size=(32, 32), num_frames=4, seed=3, **kw)

    guided, plain = run("a red star moving left"), run("a red star moving left", track_guidance=0)
    assert guided.info["track_guidance"] == 1.0 and plain.info["track_guidance"] == 0.0
    assert guided.info["shape_guidance"] == 0.0  # the model's default: off
    assert run("a red star").info["track_guidance"] == 0.0  # no motion named
    depth = ConditionSet(depth=np.ones((4, 1, 32, 32), np.float32))
    assert pipe.track_guidance_or_default(None, depth) == 0.0 and pipe.track_guidance_or_default(2.0, depth) == 2.0
    with pytest.raises(InputError, match="track guidance"):
        run("a red star moving left", track_guidance=-1)


def test_track_steps_come_before_shape_steps_and_share_the_spacing():
    """At 20 DDIM steps (timesteps 50 apart) the track acts at t >= 650 and the shape at t <= 800; at
    50 (20 apart) the guided steps stay at least 50 apart across both."""
    from vcomp.model.shape_critic import ShapeCritic

    torch.manual_seed(0)
    critic = ShapeCritic(shapes=SHAPES).eval().requires_grad_(False)
    x = (scene(t=4) + 0.05 * torch.randn(scene(t=4).shape, generator=torch.Generator().manual_seed(2))).transpose(0, 1)[None]
    zero, alphas = torch.zeros_like(x), torch.full((1000,), 0.99)  # x0 ~ x at every t: the object is found
    red = ShapeTarget(rgb(RED), rgb(BLUE), 0)

    def acted(timesteps, shape=0.1, track=0.1):
        guided = shape_guided(lambda x_, t_: zero, lambda z: z, critic, [red], alphas, shape,
                              tracks=[TrackTarget(red, (1.0, 0.0))], track_scale=track)
        with torch.inference_mode():
            return [t for t in timesteps if not torch.equal(guided(x, torch.tensor(t)), zero)]

    assert acted(range(999, 0, -50), shape=0.0) == list(range(999, 649, -50))
    assert acted(range(999, 0, -50)) == list(range(999, 299, -50))
    assert acted(range(999, 0, -20)) == [999, 939, 879, 819, 759, 699, 639, 579, 519, 459, 399, 339]


def test_a_second_patch_of_the_colour_costs_and_the_step_fades_it():
    """A jump of the largest blob to a second patch of the object's colour reads as "in a circle":
    the error counts that patch (beyond OBJECT_RADIUS of where the object should be), and a step
    down its gradient fades the patch (the error itself is not smooth: its target is re-fitted)."""
    from vcomp.engine.shape_guidance import object_masks

    red = ShapeTarget(rgb(RED), rgb(BLUE), 0)
    right = TrackTarget(red, (1.0, 0.0))
    clean = scene(t=8, size=64)
    patched = clean.clone()
    patched[4:, :, 50:58, 50:58] = torch.tensor(rgb(RED)).view(3, 1, 1)
    patched = torch.nn.functional.avg_pool2d(patched, 3, 1, 1, count_include_pad=False)
    assert float(track_error(patched, right)) > float(track_error(clean, right)) + 20
    x = patched.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(track_error(x, right), x)
    stepped = patched - 0.1 * grad / grad.pow(2).mean().sqrt()
    patch_mass = lambda f: float(object_masks(f, red)[4:, 48:60, 48:60].sum())  # noqa: E731
    assert patch_mass(stepped) < 0.8 * patch_mass(patched)
