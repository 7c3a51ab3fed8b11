"""Shape guidance (vcomp.engine.shape_guidance): reading the prompt's objects, finding them by
colour, the guided step itself, how a model carries its shape critic, and the options that
reach it (`generate(shape_guidance=...)`, `--shape-guidance`, `vcomp train-shape-critic`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vcomp.engine.shape_guidance import (
    ShapeTarget,
    object_masks,
    shape_guided,
    shape_log_prob,
    shape_targets,
    soft_centroids,
    without_moves,
)
from vcomp.errors import InputError
from vcomp.model.shape_critic import SHAPE_NAMES, ShapeCritic
from vcomp.train.synthetic import PALETTE, SHAPES

RED, BLUE = (220, 30, 35), (35, 70, 225)


def rgb(values) -> tuple[float, float, float]:
    return tuple(v / 127.5 - 1 for v in values)


def test_the_critic_knows_the_worlds_shapes_in_its_order():
    assert SHAPE_NAMES == SHAPES  # its classes are the labels the trainer gives (synthetic.SHAPES.index)
    critic = ShapeCritic(shapes=SHAPES, colours=PALETTE)
    assert critic.config()["shapes"] == list(SHAPES) and critic.config()["colours"]["red"] == list(PALETTE["red"])
    assert critic(torch.zeros(2, 3, 24, 24)).shape == (2, len(SHAPES))
    with pytest.raises(ValueError, match="width"):
        ShapeCritic(width=6)


def test_prompts_name_their_objects_colours_and_background():
    two = shape_targets("a textured red star moving left and a blue circle standing still on a white gradient "
                        "background", SHAPES, PALETTE)
    assert [(t.colour, t.shape) for t in two] == [(rgb(PALETTE["red"]), SHAPES.index("star")),
                                                  (rgb(PALETTE["blue"]), SHAPES.index("circle"))]
    assert all(t.background == rgb(PALETTE["white"]) for t in two)
    one = shape_targets("A Purple Square on a textured black background", SHAPES, PALETTE)
    assert [(t.colour, t.shape, t.background) for t in one] == [
        (rgb(PALETTE["purple"]), SHAPES.index("square"), rgb(PALETTE["black"]))]
    assert shape_targets("a green triangle", SHAPES, PALETTE)[0].background is None
    for nothing in ("a cat on a sofa", "a star on a red background", ""):
        assert shape_targets(nothing, SHAPES, PALETTE) == []
    assert shape_targets("a red star", SHAPES, {}) == []  # a critic without colours guides nothing


def scene(t: int = 3, size: int = 32, left: int = 8) -> torch.Tensor:
    """[T, 3, size, size] blue frames with a red 8 x 8 square whose left edge is at `left` + frame."""
    frames = torch.tensor(rgb(BLUE)).view(1, 3, 1, 1).repeat(t, 1, size, size)
    for i in range(t):
        frames[i, :, 12:20, left + i:left + i + 8] = torch.tensor(rgb(RED)).view(3, 1, 1)
    return frames


def test_objects_are_found_by_their_named_colour_and_their_centroids_follow_them():
    frames = scene()
    target = ShapeTarget(rgb(RED), rgb(BLUE), 0)
    masks = object_masks(frames, target)
    for i in range(3):
        expected = torch.zeros(32, 32)
        expected[12:20, 8 + i:16 + i] = 1
        assert torch.equal(masks[i], expected)
    centres = soft_centroids(frames, target)
    assert torch.allclose(centres, torch.tensor([[11.5 + i, 15.5] for i in range(3)]), atol=0.05)
    assert object_masks(frames, ShapeTarget(rgb(PALETTE["green"]), rgb(BLUE), 0)).sum() == 0


def test_removing_moves_leaves_a_step_orthogonal_to_each_frames_moves():
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(2, 4, 3, 5, 5, generator=g)
    moves = [torch.randn(2, 4, 3, 5, 5, generator=g) for _ in range(3)]
    kept = without_moves(grad, moves)
    for move in moves:
        dots = (kept * move).sum((1, 3, 4))  # per sample and frame
        assert dots.abs().max() < 1e-4
    assert (kept - grad).abs().max() > 0.1
    assert torch.allclose(without_moves(grad, []), grad)


def guided_step(output: str, keep_places: bool = True, scale: float = 0.2):
    """One guided prediction at t = 500 on a latent that is the picture itself (decode = identity):
    the clean sample before and after guidance, as the returned prediction implies it."""
    torch.manual_seed(0)
    critic = ShapeCritic(shapes=SHAPES).eval().requires_grad_(False)
    grain = 0.05 * torch.randn(scene().shape, generator=torch.Generator().manual_seed(2))  # as a decoder's output
    x0 = (scene() + grain).transpose(0, 1)[None]  # [1, 3, T, H, W]
    target = ShapeTarget(rgb(RED), rgb(BLUE), 0)
    with torch.no_grad():
        start = shape_log_prob(critic, x0[0].transpose(0, 1), [target])
    alphas = torch.linspace(0.999, 0.01, 1000)
    a = alphas[500]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x = a.sqrt() * x0 + (1 - a).sqrt() * noise
    pred = noise if output == "eps" else a.sqrt() * noise - (1 - a).sqrt() * x0
    guided = shape_guided(lambda x_, t_: pred, lambda z: z, critic, [target], alphas, scale, output=output,
                          keep_places=keep_places)
    with torch.inference_mode():
        new = guided(x, torch.tensor(500))
        untouched = guided(x, torch.tensor(100))  # outside the timesteps guidance acts at
    assert torch.equal(untouched, pred)
    moved = (x - (1 - a).sqrt() * new) / a.sqrt() if output == "eps" else a.sqrt() * x - (1 - a).sqrt() * new
    return critic, target, x0, moved, start


def test_a_guided_step_raises_the_critics_belief_in_the_named_shape_and_keeps_the_object_in_place():
    critic, target, x0, moved, start = guided_step("eps")
    with torch.no_grad():
        after = shape_log_prob(critic, moved[0].transpose(0, 1), [target])
    assert after > start + 0.01
    _, _, _, moved_v, _ = guided_step("v")  # a "v" model's prediction is rewritten to the same clean sample
    assert torch.allclose(moved_v, moved, atol=1e-4)

    def shift(sample):
        return float((soft_centroids(sample[0].transpose(0, 1), target) - soft_centroids(x0[0].transpose(0, 1), target))
                     .abs().max())

    # to first order (a small step) the object's centroids stay put only when told to keep places
    kept, free = guided_step("eps", scale=0.002)[3], guided_step("eps", keep_places=False, scale=0.002)[3]
    assert shift(kept) < 0.5 * shift(free)
    assert shape_guided(len, len, critic, [target], torch.ones(1000), 0.0) is len  # off: the same function
    assert shape_guided(len, len, critic, [], torch.ones(1000), 1.0) is len  # nothing named: the same


@pytest.fixture(scope="module")
def critic_model(tmp_path_factory):
    """A random embedded model (learned latent) with an untrained shape critic, shape guidance 1."""
    from vcomp.weights.embedded import random_embedded, save_embedded

    folder = tmp_path_factory.mktemp("critic_model")
    emb = random_embedded()
    torch.manual_seed(0)
    emb.autoencoder.shape_critic = ShapeCritic(shapes=SHAPES, colours=PALETTE)
    save_embedded(folder, emb.unet, emb.text_encoder, autoencoder=emb.autoencoder,
                  sampling={"guidance": 3.0, "shape_guidance": 1.0})
    return folder


def test_a_model_carries_its_shape_critic_and_generation_uses_it(critic_model, tmp_path):
    from stages import assert_stage_needs_weights_and_description

    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import load_embedded, random_embedded, save_embedded

    emb = load_embedded(critic_model)
    assert emb.record["autoencoder"]["shape_critic"]["shapes"] == list(SHAPES)
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=critic_model)
    assert pipe.shape_critic is not None and pipe.default_shape_guidance == 1.0
    assert pipe.describe()["shape_guidance"] == 1.0

    def run(prompt, conditions=None, **kw):
        return pipe.generate(conditions, prompt, steps=3, size=(32, 32), num_frames=4, seed=3, **kw)

    plain, guided = run("a red star", shape_guidance=0), run("a red star")
    assert plain.info["shape_guidance"] == 0.0 and guided.info["shape_guidance"] == 1.0
    assert not np.array_equal(plain.frames, guided.frames)
    assert pipe.shape_outline == 0.0 and guided.info["shape_outline"] == 0.0  # the model's record has none
    pipe.shape_outline = 1.0  # as a record with sampling.shape_outline 1 loads
    outlined = run("a red star")
    assert outlined.info["shape_outline"] == 1.0 and not np.array_equal(outlined.frames, guided.frames)
    assert run("a red star", shape_guidance=0).info["shape_outline"] == 0.0
    pipe.shape_outline = 0.0
    from vcomp.conditions.condition_set import ConditionSet

    depth = ConditionSet(depth=np.ones((4, 1, 32, 32), np.float32))  # a condition that sets the layout
    assert pipe.shape_guidance_or_default(None, depth) == 0.0 and pipe.shape_guidance_or_default(0.5, depth) == 0.5
    assert pipe.shape_guidance_or_default(None, ConditionSet(style=np.ones(64, np.float32))) == 1.0
    assert run("a red star", conditions=depth).info["shape_guidance"] == 0.0
    assert run("a red star", conditions=depth, shape_guidance=1.0).info["shape_guidance"] == 1.0
    nothing = run("a cat")  # no colour-and-shape pair: sampled as without guidance
    assert nothing.info["shape_guidance"] == 0.0
    assert np.array_equal(nothing.frames, run("a cat", shape_guidance=0).frames)
    with pytest.raises(InputError, match="shape guidance"):
        run("a red star", shape_guidance=-1)
    bare = random_embedded()
    save_embedded(tmp_path / "bare", bare.unet, bare.text_encoder, autoencoder=bare.autoencoder)
    no_critic = Pipeline.load(device="cpu", preset="tiny", assets=tmp_path / "bare")
    with pytest.raises(InputError, match="shape critic"):
        no_critic.generate(None, "a red star", steps=1, size=(32, 32), num_frames=2, shape_guidance=1.0)
    assert no_critic.generate(None, "a red star", steps=1, size=(32, 32), num_frames=2).info["shape_guidance"] == 0.0
    # weights without the description, or the reverse: a corrupt model, not a silent loss
    assert_stage_needs_weights_and_description(emb, "shape_critic", emb.autoencoder.shape_critic, tmp_path / "copy")


def test_cli_adds_a_critic_reports_it_and_passes_the_strength_on(critic_model, tmp_path, capsys):
    from vcomp.cli import main
    from vcomp.weights.embedded import load_embedded

    out = tmp_path / "with_critic"
    assert main(["train-shape-critic", "--init", str(critic_model), "--out", str(out), "--steps", "3", "--clips", "4",
                 "--shape-guidance", "0.5", "--track-guidance", "0.25", "--shape-outline", "0.5",
                 "--motion-guidance", "0.75", "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["export"] == str(out) and summary["shape_guidance"] == 0.5 and summary["steps"] == 3
    assert summary["track_guidance"] == 0.25 and summary["shape_outline"] == 0.5 and summary["motion_guidance"] == 0.75
    assert 0 <= summary["decoded_accuracy"] <= 1
    emb = load_embedded(out)
    assert emb.record["sampling"] == {"guidance": 3.0, "shape_guidance": 0.5, "track_guidance": 0.25,
                                      "shape_outline": 0.5, "motion_guidance": 0.75}
    assert emb.record["training"]["shape_critic"]["clips"] == 4
    before = load_embedded(critic_model).autoencoder.shape_critic.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in emb.autoencoder.shape_critic.state_dict().items())
    assert main(["models", "--weights", str(out), "--json"]) == 0
    embedded = next(f for f in json.loads(capsys.readouterr().out)["files"] if f["key"] == "embedded")
    assert embedded["shape_critic"]["shape_guidance"] == 0.5 and embedded["shape_critic"]["shapes"] == list(SHAPES)
    assert embedded["shape_critic"]["track_guidance"] == 0.25 and embedded["shape_critic"]["shape_outline"] == 0.5
    assert embedded["motion_guidance"] == 0.75
    video = tmp_path / "v.mp4"
    assert main(["t2v", "a red star moving left", "-o", str(video), "--weights", str(out), "--steps", "3",
                 "--frames", "4", "--size", "32x32", "--json", "-q"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["options"]["shape_guidance"] == 0.5 and record["generation"]["shape_guidance"] == 0.5
    assert record["options"]["track_guidance"] == 0.25 and record["generation"]["track_guidance"] == 0.25
    assert record["generation"]["shape_outline"] == 0.5
    assert main(["t2v", "a red star", "-o", str(tmp_path / "w.mp4"), "--weights", str(out), "--shape-guidance", "-1",
                 "-q"]) == 2
    assert "--shape-guidance" in capsys.readouterr().err and not (tmp_path / "w.mp4").exists()
    assert main(["t2v", "a red star", "-o", str(tmp_path / "w.mp4"), "--weights", str(out), "--track-guidance", "-2",
                 "-q"]) == 2
    assert "--track-guidance" in capsys.readouterr().err and not (tmp_path / "w.mp4").exists()
    assert main(["train-shape-critic", "--init", str(critic_model), "--out", str(tmp_path / "plain"), "--steps", "2",
                 "--clips", "2", "-q"]) == 0  # the one-line summary
    assert load_embedded(tmp_path / "plain").record["sampling"]["shape_guidance"] == 1.0  # the --init model's
    assert load_embedded(tmp_path / "plain").record["sampling"]["track_guidance"] == 1.0  # the default
    assert load_embedded(tmp_path / "plain").record["sampling"]["shape_outline"] == 1.0  # the default
    assert load_embedded(tmp_path / "plain").record["sampling"]["motion_guidance"] == 0.35  # the default
    assert main(["train-shape-critic", "--init", str(critic_model), "--out", str(tmp_path / "bad"), "--clips", "0",
                 "-q"]) == 2
    assert "--clips" in capsys.readouterr().err
    assert main(["train-shape-critic", "--init", str(critic_model), "--out", str(tmp_path / "bad"), "--shape-outline",
                 "-1", "-q"]) == 2
    assert "--shape-outline" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_guidance_acts_once_per_spacing_whatever_the_number_of_steps():
    """At 20 DDIM steps (timesteps 50 apart) every step in 300-800 is guided; at 50 (20 apart) one
    in three, each with the strength of the gap it covers: the push and the cost stay put."""
    torch.manual_seed(0)
    critic = ShapeCritic(shapes=SHAPES).eval().requires_grad_(False)
    grain = 0.05 * torch.randn(scene().shape, generator=torch.Generator().manual_seed(2))
    x = (scene() + grain).transpose(0, 1)[None]
    zero = torch.zeros_like(x)
    alphas = torch.linspace(0.999, 0.01, 1000)
    target = ShapeTarget(rgb(RED), rgb(BLUE), 0)

    def acted(timesteps):
        guided = shape_guided(lambda x_, t_: zero, lambda z: z, critic, [target], alphas, 0.1)
        with torch.inference_mode():
            return [t for t in timesteps if not torch.equal(guided(x, torch.tensor(t)), zero)]

    assert acted(range(999, 0, -50)) == list(range(799, 299, -50))
    assert acted(range(999, 0, -20)) == [799, 739, 679, 619, 559, 499, 439, 379, 319]
