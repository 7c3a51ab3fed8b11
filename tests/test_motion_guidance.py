"""Motion guidance (vcomp.engine.motion_guidance): the warp residual it descends, the guided step,
the shared clean-prediction machinery (vcomp.engine.clean_guidance) and the pipeline's option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcomp.engine.clean_guidance import Spacing, x0_guided
from vcomp.engine.motion_guidance import T_RANGE, motion_guided, warp_residual
from vcomp.engine.parameterization import schedule_alphas_cumprod

FRAMES, SIZE, SPEED, CELL = 6, 32, 2, 8
BG, RED = (-0.6, -0.6, 0.8), (0.9, -0.8, -0.8)


def moving_square(speed: int = SPEED, left: int = 6, top: int = 12, side: int = 8) -> torch.Tensor:
    """[T, 3, H, W]: a red square moving right by `speed` px a frame on a blue ground."""
    frames = torch.tensor(BG).view(1, 3, 1, 1).repeat(FRAMES, 1, SIZE, SIZE)
    for t in range(FRAMES):
        x = left + speed * t
        frames[t, :, top:top + side, x:x + side] = torch.tensor(RED).view(3, 1, 1)
    return frames


def block_field(vx: float, left: int = 6, top: int = 12, side: int = 8, speed: int = SPEED) -> torch.Tensor:
    """[T, 2, H, W]: (vx, 0) on every CELL x CELL block the square covers at t or t-1 (as a codec's
    block vectors do: the background inside those blocks carries the vector too), 0 elsewhere."""
    field = torch.zeros(FRAMES, 2, SIZE, SIZE)
    for t in range(1, FRAMES):
        x0, x1 = left + speed * (t - 1), left + speed * t + side
        cols = slice(x0 // CELL * CELL, -(-x1 // CELL) * CELL)
        rows = slice(top // CELL * CELL, -(-(top + side) // CELL) * CELL)
        field[t, 0, rows, cols] = vx
    return field


def test_a_clip_that_moves_as_its_field_leaves_no_residual_and_other_motions_do():
    clip = moving_square()
    assert float(warp_residual(clip, block_field(SPEED))) < 1e-6  # block background may stand still
    still = float(warp_residual(clip, torch.zeros(FRAMES, 2, SIZE, SIZE)))
    assert still > 1.0
    assert float(warp_residual(clip, block_field(-SPEED))) > 0.5 * still  # the wrong way
    assert float(warp_residual(moving_square(speed=4), block_field(SPEED))) > 1.0  # too fast for the field
    assert float(warp_residual(moving_square(side=14), block_field(SPEED))) > 1.0  # larger than the moving blocks
    assert float(warp_residual(clip[:1], block_field(SPEED)[:1])) == 0.0  # one frame: nothing to move


def test_a_guided_step_moves_the_clean_prediction_towards_the_field():
    """A model that predicts the square moving twice as fast as the field says: at a guided
    timestep the rewritten prediction implies a clip with less residual against the field; outside
    T_RANGE and at scale 0 nothing changes."""
    alphas = schedule_alphas_cumprod(True)
    fast = moving_square(speed=2 * SPEED).transpose(0, 1)[None]  # [1, 3, T, H, W]: the decode is the identity
    field = block_field(SPEED)
    for output in ("eps", "v"):
        torch.manual_seed(0)
        noise = torch.randn_like(fast)

        def predict(x, t, output=output):  # the prediction that implies x0 = the fast clip exactly
            a = alphas[int(t)].float()
            eps = (x - a.sqrt() * fast) / (1 - a).sqrt()
            return a.sqrt() * eps - (1 - a).sqrt() * fast if output == "v" else eps

        def implied_x0(pred, x, t, output=output):
            a = alphas[int(t)].float()
            return a.sqrt() * x - (1 - a).sqrt() * pred if output == "v" else (x - (1 - a).sqrt() * pred) / a.sqrt()

        # a unit-RMS step: with the identity decode only the square's edges have a gradient, so
        # the step is small here (through a decoder it spreads over the latent)
        guided = motion_guided(predict, lambda z: z, field, alphas, 0.1, output=output)
        t = torch.tensor(700)
        a = alphas[700].float()
        x = a.sqrt() * fast + (1 - a).sqrt() * noise
        before = float(warp_residual(fast[0].transpose(0, 1), field))
        after = float(warp_residual(implied_x0(guided(x, t), x, t)[0].transpose(0, 1), field))
        assert after < 0.5 * before, output
        low = torch.tensor(T_RANGE[0] - 100)
        assert torch.equal(guided(x, low), predict(x, low))  # below the range: the model's own
    assert motion_guided(predict, lambda z: z, field, alphas, 0.0) is predict
    assert motion_guided(predict, lambda z: z, torch.zeros_like(field), alphas, 0.35) is predict  # nothing moves


def test_spacing_keeps_the_total_push_whatever_the_number_of_steps():
    def weights(timesteps):
        schedule = Spacing(50)
        return [(t, w) for t in timesteps if (w := schedule.weight(t, 300 <= t <= 999)) is not None]

    twenty = weights(range(999, -1, -50))
    assert [t for t, _ in twenty] == list(range(999, 299, -50)) and all(w == 1.0 for _, w in twenty)
    fifty = weights(range(999, -1, -20))
    assert all(b - a <= -50 for (b, _), (a, _) in zip(fifty[1:], fifty, strict=False))
    assert abs(sum(w for _, w in fifty) - sum(w for _, w in twenty)) <= 1.0


def test_x0_guided_rewrites_only_where_it_moves():
    alphas = schedule_alphas_cumprod(False)
    x = torch.randn(1, 4, 2, 4, 4)

    def predict(x_, t):
        return 0.5 * x_

    target = torch.zeros_like(x)
    fn = x0_guided(predict, alphas, "eps", lambda t: 1.0 if t > 500 else None, lambda x0, t, w: target)
    a = alphas[800].float()
    assert torch.allclose((x - (1 - a).sqrt() * fn(x, torch.tensor(800))) / a.sqrt(), target, atol=1e-5)
    assert torch.equal(fn(x, torch.tensor(100)), predict(x, 100))
    untouched = x0_guided(predict, alphas, "eps", lambda t: 1.0, lambda x0, t, w: None)
    assert torch.equal(untouched(x, torch.tensor(800)), predict(x, 800))
    with pytest.raises(ValueError, match="output"):
        x0_guided(predict, alphas, "x0", lambda t: 1.0, lambda x0, t, w: None)


def test_the_pipeline_takes_its_default_from_the_model_and_acts_only_with_a_motion_condition(tmp_path):
    from vcomp.conditions.condition_set import ConditionSet
    from vcomp.errors import InputError
    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import random_embedded, save_embedded

    emb = random_embedded(in_dim=48, out_dim=48, latent_scale=4)  # a pixel-unshuffle latent: quick to differentiate
    save_embedded(tmp_path, emb.unet, emb.text_encoder, autoencoder=emb.autoencoder,
                  sampling={"guidance": 3.0, "motion_guidance": 0.5})
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=tmp_path)
    assert pipe.default_motion_guidance == 0.5 and pipe.describe()["motion_guidance"] == 0.5
    field = np.zeros((4, 2, 32, 32), np.float32)
    field[1:, 0, 8:24, 8:24] = 2.0
    motion = ConditionSet(motion=field, meta={"fps": 8})

    def run(conditions, **kw):
        return pipe.generate(conditions, "a red square", steps=4, size=(32, 32), num_frames=4, seed=3, **kw)

    guided, plain = run(motion), run(motion, motion_guidance=0)
    assert guided.info["motion_guidance"] == 0.5 and plain.info["motion_guidance"] == 0.0
    assert not np.array_equal(guided.frames, plain.frames)
    assert run(None).info["motion_guidance"] == 0.0  # nothing to steer towards
    still = run(ConditionSet(motion=np.zeros_like(field), meta={"fps": 8}))
    assert still.info["motion_guidance"] == 0.0  # a field that moves nowhere is not guided
    assert np.array_equal(still.frames, run(ConditionSet(motion=np.zeros_like(field), meta={"fps": 8}),
                                            motion_guidance=0).frames)
    assert pipe.motion_guidance_or_default(2.0, ConditionSet()) == 0.0
    with pytest.raises(InputError, match="motion guidance"):
        run(motion, motion_guidance=-1)
