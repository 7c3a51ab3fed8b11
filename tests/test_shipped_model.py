"""The embedded model shipped in vcomp/assets: present, loadable, small, and trained (it follows
the prompt's background colour, which an untrained model cannot: chance is 1 in 8)."""

from __future__ import annotations

import json

import pytest

from vcomp.weights.files import ASSETS, EMBEDDED_CONFIG, EMBEDDED_WEIGHTS

MAX_BYTES = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def shipped():
    from vcomp.pipeline import Pipeline

    return Pipeline.load(preset="tiny", assets=ASSETS, device="cpu", allow_random=False)


def test_the_embedded_model_is_in_the_package_small_and_documented():
    weights, config = ASSETS / EMBEDDED_WEIGHTS, ASSETS / EMBEDDED_CONFIG
    assert weights.is_file() and config.is_file(), "vcomp/assets must hold the embedded model"
    assert weights.stat().st_size <= MAX_BYTES
    record = json.loads(config.read_text())
    assert record["model"]["name"] == "tiny" and record["model"]["prediction"] == "v"
    training = record["training"]  # how to reproduce it: commands, seed, lineage of --init weights
    assert training["steps"] >= 1000 and training["commands"] and "seed" in training
    assert training["init"]["commands"], "the run it started from is recorded too"
    if record["autoencoder"]["type"] == "AutoencoderKL":  # a learned latent: how it was trained, too
        assert training["autoencoder"]["commands"] and training["autoencoder"]["steps"] >= 1000
        decoder = training.get("decoder")  # a decoder fine-tuned afterwards (encoder frozen)
        assert decoder is None or (decoder["config"]["decoder_only"] and decoder["commands"])


def test_the_shipped_model_loads_as_the_default_generator(shipped):
    assert shipped.preset == "tiny" and shipped.default_size == (64, 64) and shipped.default_frames == 16
    assert shipped.weights["embedded"].endswith(EMBEDDED_WEIGHTS)


def test_the_shipped_model_paints_the_prompted_background(shipped):
    """At least 3 of 4 prompted backgrounds right (chance: 1 in 8 each; the eval suite measures
    the rest, docs/embedded-model.md)."""
    from vcomp.evaluation.world_checks import background_colour

    found = {}
    for background in ("blue", "green", "yellow", "purple"):
        prompt = f"a white circle standing still on a {background} background"
        frames = shipped.generate(None, prompt, steps=15, seed=0).frames  # its default: 16 frames
        assert frames.shape == (16, 64, 64, 3)
        found[background] = background_colour(frames)
    assert sum(want == got for want, got in found.items()) >= 3, found


def test_the_shipped_latent_space_gives_back_a_moving_world_clip(shipped):
    """`Pipeline.reconstruct` (encode, decode, refine: the round trip `vcomp eval` takes as the motion
    task's floor) keeps held-out clips close (PSNR) and their objects' direction of motion; a frame
    array of the wrong kind is a one-line input error."""
    import numpy as np

    from vcomp.errors import InputError
    from vcomp.evaluation.metrics import psnr
    from vcomp.evaluation.suite import make_case
    from vcomp.evaluation.world_checks import analyse_object

    for i in range(3):
        sample = make_case(0, i, 64, 16).sample
        back = shipped.reconstruct(sample.frames)
        assert back.shape == sample.frames.shape and back.dtype == np.uint8
        assert psnr(back, sample.frames) > 25.0
        assert analyse_object(back)["direction"] == sample.scene.primary.direction
    with pytest.raises(InputError, match="uint8 frames"):
        shipped.reconstruct(sample.frames.astype(np.float32))
    with pytest.raises(InputError, match="multiple of 8"):
        shipped.reconstruct(sample.frames[:, :60])


def test_the_shipped_model_guides_shapes_with_a_critic_that_reads_its_decoder(shipped):
    """Shape guidance is on by default and its critic reads the world's shapes through this
    model's decoder (the suite measures what guidance gives, docs/embedded-model.md)."""
    from vcomp.train.shape_critic import critic_accuracy

    assert shipped.shape_critic is not None and shipped.default_shape_guidance > 0
    assert critic_accuracy(shipped.shape_critic, shipped.autoencoder, seed=5, clips=24)["decoded_accuracy"] >= 0.8
    prompt = "a yellow star moving right on a purple background"
    guided = shipped.generate(None, prompt, steps=10, seed=1)
    assert guided.info["shape_guidance"] == shipped.default_shape_guidance
    assert not (guided.frames == shipped.generate(None, prompt, steps=10, seed=1, shape_guidance=0).frames).all()


def test_the_shipped_model_moves_objects_the_way_their_prompts_say(shipped):
    """Track guidance is on by default for prompt-led generations, and the object's centroid track
    (read as the suite reads it) follows the direction word closely."""
    from vcomp.evaluation.world_checks import analyse_object, direction_cosine, direction_of_motion

    assert shipped.default_track_guidance > 0
    for prompt, direction in [("a yellow star moving right on a purple background", "right"),
                              ("a white circle moving up on a red background", "up"),
                              ("a green square moving down-left on a blue background", "down-left")]:
        result = shipped.generate(None, prompt, steps=20, seed=1)
        assert result.info["track_guidance"] == shipped.default_track_guidance
        track = analyse_object(result.frames)["track"]
        assert direction_of_motion(track) == direction and direction_cosine(track, direction) > 0.98, prompt


def test_the_shipped_model_draws_the_shapes_its_prompts_name(shipped):
    """Shape guidance with its outline term is on by default for prompt-led generations, and the
    suite's contour reading finds the named shape; with the critic alone the triangle's tip splits
    and it reads as a star (measured: seed 1)."""
    from vcomp.evaluation.world_checks import analyse_object

    assert shipped.default_shape_guidance > 0 and shipped.shape_outline > 0
    prompts = {"a red circle moving right on a blue background": "circle",
               "a yellow square moving down on a purple background": "square",
               "a green triangle moving up on a white background": "triangle",
               "a white star moving left on a green background": "star"}
    for prompt, shape in prompts.items():
        result = shipped.generate(None, prompt, steps=20, seed=1)
        assert result.info["shape_outline"] == shipped.shape_outline
        assert analyse_object(result.frames)["shape"] == shape, prompt
    outline = shipped.shape_outline
    try:
        shipped.shape_outline = 0.0
        critic_alone = shipped.generate(None, "a green triangle moving up on a white background", steps=20, seed=1)
    finally:
        shipped.shape_outline = outline
    assert analyse_object(critic_alone.frames)["shape"] != "triangle"


def test_the_shipped_model_follows_a_motion_field_closer_with_motion_guidance(shipped):
    """Motion guidance is on by default with a motion condition: on two held-out world scenes (their
    H.264 fields, as the suite gives them) the motion-control error against the field is well below
    the same generations' without it (measured at 20 steps: 0.129 against 0.379 and 0.045 against
    0.367 px/frame on the suite's seed 0)."""
    from vcomp.conditions.condition_set import ConditionSet
    from vcomp.evaluation.metrics import motion_control_error
    from vcomp.evaluation.suite import make_case
    from vcomp.train.synthetic import FPS

    assert shipped.default_motion_guidance > 0
    errors = {"guided": [], "plain": []}
    for index in (2, 19):
        case = make_case(0, index)
        conditions = ConditionSet(motion=case.sample.motion, meta={"fps": FPS})
        for name, strength in (("guided", None), ("plain", 0.0)):
            result = shipped.generate(conditions, case.sample.caption, steps=20, seed=case.seed,
                                      motion_guidance=strength)
            assert result.info["motion_guidance"] == (shipped.default_motion_guidance if strength is None else 0.0)
            errors[name].append(motion_control_error(result.frames, case.sample.motion, FPS))
    assert sum(errors["guided"]) < 0.6 * sum(errors["plain"]), errors
