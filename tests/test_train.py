"""vcomp.train: data order, condition dropout, the two-stage loop, checkpoints/resume, export,
user folders, `vcomp train` and torchrun data parallelism, on a micro model (seconds on a CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vcomp.errors import InputError
from vcomp.train.checkpoint import LOG_FILE, load_checkpoint
from vcomp.train.data import FolderSource, Request, TrainDataset, WorldSource, collate, plan_step, random_mask
from vcomp.train.dropout import DropoutConfig, sample_keep
from vcomp.train.loop import (
    Schedule,
    TrainConfig,
    Trainer,
    caption_contrast_loss,
    decoded_x0_loss,
    focus_weights,
    parse_curriculum,
    temporal_difference_loss,
    train,
)
from vcomp.train.synthetic import counterfactual_caption

# A micro UNet (~0.45 M parameters) on 4 frames of 32 x 32 px: a training step takes ~0.2 s. It denoises
# the parameter-free pixel-unshuffle latent (48 channels at factor 4), so no autoencoder has to be trained.
MICRO = {"in_dim": 48, "out_dim": 48, "latent_scale": 4, "dim": 16, "dim_mult": (1, 2), "num_res_blocks": 1, "attn_scales": (0.5,), "head_dim": 16,
         "norm_groups": 4, "context_dim": 32, "stc_hidden": 8, "concat_dim": 4}
MICRO_JSON = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in MICRO.items()})
FAST = {"batch": 2, "frames_curriculum": "4", "size_curriculum": "32", "workers": 0, "threads": 1, "model": MICRO,
        "text_depth": 1, "text_heads": 2, "warmup": 0, "log_every": 1, "ckpt_every": 1000}


def micro(tmp: Path, **kw) -> TrainConfig:
    return TrainConfig(out=str(tmp), **{**FAST, **kw})


def read_log(run: Path) -> dict[int, dict]:
    lines = [json.loads(x) for x in (run / LOG_FILE).read_text().splitlines()]
    return {e["step"]: e for e in lines if "loss" in e}


# ---------------------------------------------------------------- pure pieces


def test_curriculum_and_schedule():
    assert parse_curriculum("8,16", 1000, 16) == ((8, 500), (16, None))
    assert parse_curriculum("8:300,16:600,32", 1000, 16) == ((8, 300), (16, 600), (32, None))
    assert parse_curriculum(None, 10, 64) == ((64, None),)
    with pytest.raises(InputError):
        parse_curriculum("8:300,16:200,32", 1000, 16)
    s = Schedule(1000, 300, ((8, 500), (16, None)), ((32, 200), (64, None)), 1e-3, 100, "cosine", 0.1)
    assert [s.stage(k) for k in (0, 299, 300)] == [1, 1, 2]
    assert (s.frames_at(499), s.frames_at(500), s.size_at(199), s.size_at(200)) == (8, 16, 32, 64)
    assert s.lr_at(0) == pytest.approx(1e-5) and s.lr_at(100) == pytest.approx(1e-3)
    assert s.lr_at(1000) == pytest.approx(1e-4)


def test_data_order_is_a_pure_function_of_seed_step_rank():
    world = WorldSource(seed=3)
    a = plan_step(3, 7, 0, 2, 4, world, 16, 64, True)
    assert a == plan_step(3, 7, 0, 2, 4, world, 16, 64, True)
    b = plan_step(3, 7, 1, 2, 4, world, 16, 64, True)
    assert {r.index for r in a}.isdisjoint({r.index for r in b})  # ranks see different clips
    assert [r.index for r in a] == [56, 57, 58, 59]  # (step * world + rank) * batch + i

    class Five:  # a finite, shuffled source: every clip once per epoch
        shuffle = True

        def __len__(self):
            return 5

    epoch = [r.index for s in range(5) for r in plan_step(0, s, 0, 1, 1, Five(), 8, 32, False)]
    assert sorted(epoch) == [0, 1, 2, 3, 4]


def test_condition_dropout_rates():
    cfg = DropoutConfig()
    g = torch.Generator().manual_seed(0)
    n = 40_000
    keep = sample_keep(n, ["motion", "depth", "style"], 2, cfg, g)
    k = torch.stack([keep["motion"], keep["depth"], keep["style"]]).float()
    all_kept, all_dropped = k.prod(0).mean().item(), (1 - k).prod(0).mean().item()
    # keep-all 0.1 + 0.8 * 0.5^3 by chance; drop-all 0.1 + 0.8 * 0.5^3
    assert all_kept == pytest.approx(0.1 + 0.8 / 8, abs=0.01)
    assert all_dropped == pytest.approx(0.1 + 0.8 / 8, abs=0.01)
    assert k[0].mean().item() == pytest.approx(0.1 + 0.8 * 0.5, abs=0.01)
    assert keep["text"].float().mean().item() == pytest.approx(1 - 0.1 * 0.5 - 0.8 * 0.1, abs=0.01)
    text_only = keep["text"] & ~k.bool().any(0)  # pure text-to-video samples survive stage 2
    assert text_only.float().mean().item() == pytest.approx(0.05 + 0.8 * 0.9 / 8, abs=0.01)
    stage1 = sample_keep(n, ["motion"], 1, cfg, g)
    assert set(stage1) == {"text"} and stage1["text"].float().mean().item() == pytest.approx(0.9, abs=0.01)


def test_text_is_dropped_beside_a_kept_style():
    """Samples with a style and no caption (what `vcomp stylize` with an empty prompt asks for) are
    ~2% of stage 2 without the rule and p_text_with_style of the style-kept ones with it."""
    from vcomp.train.dropout import drop_text_beside_style

    g = torch.Generator().manual_seed(1)
    n = 40_000
    keep = sample_keep(n, ["depth", "style"], 2, DropoutConfig(), g)
    before = (keep["style"] & ~keep["text"]).float().mean().item()
    text = drop_text_beside_style(keep["text"], keep["style"], DropoutConfig(p_text_with_style=0.5), g)
    after = (keep["style"] & ~text).float().mean().item()
    style_kept = keep["style"].float().mean().item()  # 0.1 + 0.8 * 0.5
    assert before == pytest.approx(0.8 * 0.5 * 0.1, abs=0.01)
    assert after == pytest.approx(before + 0.5 * (style_kept - before), abs=0.01)
    assert not (text & ~keep["text"]).any()  # it only drops
    assert torch.equal(drop_text_beside_style(keep["text"], keep["style"], DropoutConfig(p_text_with_style=0.0), g),
                       keep["text"])


def test_single_condition_samples_keep_exactly_one():
    """p_single: text + one condition (what motion-transfer and stylize give) becomes a common
    sample instead of ~1%, every condition and "none" about equally often; p_single 0 leaves
    the random stream of the paper's recipe untouched."""
    names = ["motion", "depth", "sketch", "style"]
    n = 40_000
    keep = sample_keep(n, names, 2, DropoutConfig(p_single=0.5), torch.Generator().manual_seed(2))
    k = torch.stack([keep[name] for name in names]).float()
    motion_alone = (k[0] == 1) & (k[1:].sum(0) == 0)
    # by chance 0.4 * 0.5^4; by the rule 0.5 / 5
    assert motion_alone.float().mean().item() == pytest.approx(0.4 / 16 + 0.5 / 5, abs=0.01)
    none = k.sum(0) == 0  # drop-all 0.1 + chance 0.4 / 16 + the rule's "none" 0.5 / 5
    assert none.float().mean().item() == pytest.approx(0.1 + 0.4 / 16 + 0.1, abs=0.01)
    assert keep["text"].float().mean().item() == pytest.approx(1 - 0.1 * 0.5 - 0.9 * 0.1, abs=0.01)
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain, zero = sample_keep(64, names, 2, DropoutConfig(), g0), sample_keep(64, names, 2, DropoutConfig(p_single=0.0), g1)
    assert all(torch.equal(plain[key], zero[key]) for key in plain)
    assert torch.equal(torch.rand(4, generator=g0), torch.rand(4, generator=g1))
    with pytest.raises(ValueError):
        DropoutConfig(p_single=0.9)  # + keep-all 0.1 + drop-all 0.1 > 1


def test_world_items_use_the_inference_adapter():
    from vcomp.model.adapters import TinyAdapter

    data = TrainDataset(WorldSource(seed=0), TinyAdapter())
    item = data[Request(index=3, seed=5, frames=4, size=32, conditions=True)]
    assert item["video"].shape == (3, 4, 32, 32) and -1 <= item["video"].min() and item["video"].max() <= 1
    c = item["conditions"]
    assert set(c) == {"motion", "depth", "sketch", "single_sketch", "local_image", "masked"}
    assert c["motion"].shape == (2, 4, 32, 32) and c["masked"].shape == (4, 4, 32, 32)
    assert c["local_image"].shape == (3, 32, 32) and item["style"].shape == (1, 64)
    keep = c["masked"][3]  # hole pixels of the masked video are zero
    assert torch.all(c["masked"][:3][:, keep == 0] == 0) and (keep == 0).any()
    again = data[Request(index=3, seed=5, frames=4, size=32, conditions=True)]
    assert torch.equal(again["conditions"]["masked"], c["masked"])  # deterministic
    stage1 = data[Request(index=3, seed=5, frames=4, size=32, conditions=False)]
    assert "conditions" not in stage1 and stage1["caption"] == item["caption"]
    batch = collate([item, again])
    assert batch["video"].shape == (2, 3, 4, 32, 32) and batch["style"].shape == (2, 1, 64)

    rng = np.random.default_rng(0)
    box = random_mask(rng, 4, 32)
    assert box.shape == (4, 1, 32, 32) and 0.05 < box.mean() < 0.6


def test_world_items_carry_the_object_focus():
    from vcomp.model.adapters import TinyAdapter

    data = TrainDataset(WorldSource(seed=0), TinyAdapter())
    for conditions in (False, True):
        item = data[Request(index=3, seed=5, frames=4, size=32, conditions=conditions)]
        focus = item["focus"]
        assert focus.shape == (1, 4, 32, 32) and set(focus.unique().tolist()) == {0.0, 1.0}
        assert 0.02 < focus.mean() < 0.5  # the objects: a small part of every frame
        # the focus is where the objects are: their pixels differ from the background colour
        video = item["video"]
        corner = video[:, :, :2, :2].mean(dim=(2, 3), keepdim=True)
        inside = (video - corner).abs().sum(0, keepdim=True)[focus > 0].mean()
        outside = (video - corner).abs().sum(0, keepdim=True)[focus == 0].mean()
        assert inside > 2 * outside
    assert collate([item, item])["focus"].shape == (2, 1, 4, 32, 32)


def background_share(video: torch.Tensor, focus: torch.Tensor) -> float:
    """Share of the pixels off the objects within 0.02 of their median colour."""
    off = video[:, focus[0] == 0]  # [3, N]
    return ((off - off.median(dim=1, keepdim=True).values).abs().amax(0) < 0.02).float().mean().item()


def test_simple_requests_give_one_object_on_a_solid_background():
    """The curriculum's first phase: `simple` world requests draw one object on a one-colour
    background (every pixel the objects don't cover has the background's colour)."""
    from vcomp.model.adapters import TinyAdapter

    data = TrainDataset(WorldSource(seed=0), TinyAdapter())
    full_backgrounds = []
    for index in range(12):
        simple = data[Request(index=index, seed=5, frames=4, size=32, conditions=False, simple=True)]
        assert " and " not in simple["caption"]  # one object
        video, focus = simple["video"], simple["focus"]
        assert background_share(video, focus) > 0.9  # all but the objects' anti-aliased rims
        full = data[Request(index=index, seed=5, frames=4, size=32, conditions=False)]
        full_backgrounds.append(background_share(full["video"], full["focus"]))
    assert min(full_backgrounds) < 0.5  # the full world has gradients and textures


def test_simple_until_switches_the_scenes_and_survives_resume(tmp_path):
    s = Schedule(100, 0, ((16, None),), ((64, None),), 1e-3, 0, "constant", 0.1, simple_until=30)
    assert (s.simple_at(29), s.simple_at(30)) == (True, False)
    run = tmp_path / "run"
    train(micro(run, stage="1", steps=4, simple_until=2, session_steps=2))
    train(TrainConfig(out=str(run), resume=True))
    log = read_log(run)
    assert [log[k]["simple"] for k in (1, 2, 3, 4)] == [True, True, False, False]
    assert load_checkpoint(run / "checkpoint").record["schedule"]["simple_until"] == 2
    with pytest.raises(InputError, match="simple-until"):
        Trainer(micro(tmp_path / "bad", data=str(tmp_path), simple_until=5)).setup()


def test_focus_weights_per_latent_cell():
    focus = torch.zeros(1, 1, 2, 16, 16)
    focus[..., :4, :4] = 1.0  # one whole 4 x 4 cell
    focus[..., 4:6, 4:8] = 1.0  # half of another
    w = focus_weights(focus, (1, 8, 2, 4, 4), object_weight=3.0)
    assert w.shape == (1, 1, 2, 4, 4)
    assert w[0, 0, 0, 0, 0] == 4.0 and w[0, 0, 0, 1, 1] == 2.5 and w[0, 0, 0, 3, 3] == 1.0


def test_the_eval_batch_is_the_same_for_every_run_seed(tmp_path):
    """`eval_mse_ema` of runs with different seeds is measured on the same held-out clips (while the
    training batches differ), so runs compare."""
    one = Trainer(micro(tmp_path / "a", stage="2", steps=1, seed=1)).setup()
    two = Trainer(micro(tmp_path / "b", stage="2", steps=1, seed=2)).setup()
    assert torch.equal(one.eval_batch(0)["video"], two.eval_batch(0)["video"])
    first = [collate([t.dataset[r] for r in t.requests(0)])["video"] for t in (one, two)]
    assert not torch.equal(*first)


def test_object_weight_shifts_the_loss_towards_the_objects(tmp_path):
    """The same step with object weighting on gives a different loss (objects weigh more) and
    leaves the unweighted MSE it logs unchanged."""
    plain = Trainer(micro(tmp_path / "a", stage="1", steps=1)).setup()
    batch = collate([plain.dataset[r] for r in plain.requests(0)])
    weighted = Trainer(micro(tmp_path / "b", stage="1", steps=1, object_weight=4.0)).setup()
    a, b = plain.train_step(0, batch), weighted.train_step(0, batch)
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-5)
    assert abs(a["loss"] - b["loss"]) > 1e-3 * a["loss"]


def test_temporal_difference_loss_ignores_shared_errors_and_weighs_changing_ones():
    """An error every frame shares costs nothing; one that changes between frames costs its change
    (a drift of d per frame costs d**2; alternating +-e costs (2e)**2); cells weigh the frame pairs."""
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(2, 3, 1, 4, 4, generator=g).expand(2, 3, 6, 4, 4)
    assert torch.allclose(temporal_difference_loss(shared), torch.zeros(2), atol=1e-7)
    ramp = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(2, 3, 6, 4, 4) * 0.5
    assert torch.allclose(temporal_difference_loss(shared + ramp), torch.full((2,), 0.25), atol=1e-6)
    flicker = 0.1 * (-1.0) ** torch.arange(6.0).view(1, 1, 6, 1, 1).expand(2, 3, 6, 4, 4)
    assert torch.allclose(temporal_difference_loss(flicker), torch.full((2,), 0.04), atol=1e-6)
    # the change only in one cell, weighted 4x against 1x elsewhere: mean = 4 * 1 / (4 + 15)
    err = torch.zeros(1, 1, 2, 4, 4)
    err[0, 0, 1, 0, 0] = 1.0
    cells = torch.ones(1, 1, 2, 4, 4)
    cells[..., 0, 0] = 4.0
    assert temporal_difference_loss(err, cells).item() == pytest.approx(4.0 / 19.0)
    assert temporal_difference_loss(torch.ones(2, 3, 1, 4, 4)).tolist() == [0.0, 0.0]


def _steps_without_and_with(tmp_path, **term):
    """One stage-1 step of a plain micro run and one of a run with `term` set, on the same batch."""
    plain = Trainer(micro(tmp_path / "a", stage="1", steps=1, min_snr_gamma=None)).setup()
    batch = collate([plain.dataset[r] for r in plain.requests(0)])
    other = Trainer(micro(tmp_path / "b", stage="1", steps=1, min_snr_gamma=None, **term)).setup()
    return plain.train_step(0, batch), other.train_step(0, batch)


def test_temporal_weight_adds_the_frame_difference_term(tmp_path):
    """With --temporal-weight the step's loss grows by the logged frame-difference term (the
    unweighted MSE is unchanged); a negative weight is a one-line input error."""
    a, b = _steps_without_and_with(tmp_path, temporal_weight=2.0)
    assert a["temporal_mse"] is None and b["temporal_mse"] > 0
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-5)
    assert b["loss"] == pytest.approx(a["loss"] + 2.0 * b["temporal_mse"], rel=1e-4)
    with pytest.raises(InputError, match="--temporal-weight"):
        Trainer(micro(tmp_path / "c", stage="1", steps=1, temporal_weight=-1.0)).setup()


def _tiny_kl_autoencoder():
    from diffusers import AutoencoderKL

    from vcomp.model.autoencoder import KLAutoencoder

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=16)
    return KLAutoencoder(vae)


def test_decoded_x0_loss_compares_decoded_frames_and_trains_only_what_feeds_the_latent():
    """Zero for the true latent; an error in the latent costs what it changes in the decoded
    pixels, more on object pixels; gradients reach the predicted latent, never the frozen decoder."""
    ae = _tiny_kl_autoencoder()
    g = torch.Generator().manual_seed(1)
    latent = torch.randn(2, 4, 2, 8, 8, generator=g)
    assert decoded_x0_loss(ae, latent.clone(), latent, None, 0.0).abs().max() < 1e-6
    x0 = (latent + 0.5 * torch.randn(latent.shape, generator=g)).requires_grad_(True)
    plain = decoded_x0_loss(ae, x0, latent, None, 0.0)
    assert plain.shape == (2,) and (plain > 0).all()
    plain.sum().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    assert all(p.grad is None for p in ae.parameters())
    # an error confined to the top-left latent cell: weighting the pixels it decodes to raises the mean
    local = latent.clone()
    local[:, :, :, 0, 0] += 2.0
    focus = torch.zeros(2, 1, 2, 16, 16)
    focus[..., :4, :4] = 1.0
    assert (decoded_x0_loss(ae, local, latent, focus, 8.0) > 2 * decoded_x0_loss(ae, local, latent, None, 0.0)).all()


def test_pixel_weight_adds_the_decoded_term(tmp_path):
    """With --pixel-weight the step logs the decoded-x0 L1 and its loss exceeds the plain one by
    at most weight x that L1 (the term is SNR-weighted, <= 1 per sample); the MSE is unchanged.
    A negative weight is a one-line input error."""
    a, b = _steps_without_and_with(tmp_path, pixel_weight=3.0)
    assert a["pixel_l1"] is None and b["pixel_l1"] > 0
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-5)
    assert a["loss"] < b["loss"] <= a["loss"] + 3.0 * b["pixel_l1"] * (1 + 1e-4)
    with pytest.raises(InputError, match="--pixel-weight"):
        Trainer(micro(tmp_path / "c", stage="1", steps=1, pixel_weight=-1.0)).setup()


def test_caption_contrast_loss_is_a_hinge_with_a_relative_margin():
    true, counter = torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0.9, 1.2, 2.0])
    assert caption_contrast_loss(true, counter, margin=0.05).tolist() == pytest.approx([0.15, 0.0, 0.1])
    true.requires_grad_(True)
    counter.requires_grad_(True)
    caption_contrast_loss(true, counter).sum().backward()
    assert true.grad.tolist() == [1.0, 0.0, 1.0] and counter.grad.tolist() == [-1.0, 0.0, -1.0]


def test_caption_contrast_adds_a_term_for_text_only_samples_with_a_direction(tmp_path):
    """In stage 1 every sample is text-only: with --caption-contrast the step denoises each one also
    given its reversed-direction caption (one forward pass), logs the relative gap, and the loss grows
    by the hinge; the plain MSE is unchanged. A negative weight is a one-line input error."""
    plain = Trainer(micro(tmp_path / "a", stage="1", steps=1, min_snr_gamma=None, batch=4)).setup()
    batch = collate([plain.dataset[r] for r in plain.requests(0)])
    with_directions = [c for c in batch["caption"] if counterfactual_caption(c, "direction") != c]
    assert with_directions  # the world's captions mostly name a direction
    contrast = Trainer(micro(tmp_path / "b", stage="1", steps=1, min_snr_gamma=None, batch=4,
                             caption_contrast=3.0)).setup()
    g = torch.Generator().manual_seed(0)
    _, ids, style, _, drop = contrast._inputs(batch, 1, g, None)
    rows, kinds, counter_ids = contrast._contrast_rows(batch, ids, style, drop)
    assert len(rows) == len(with_directions) and counter_ids.shape == (len(rows), ids.shape[1])
    assert kinds == ["direction"] * len(rows)
    assert not torch.equal(counter_ids, ids[rows])
    # a sample that keeps a moving condition or the style is left out; the first image is kept in
    kept = torch.zeros(len(batch["caption"]))
    kept[rows[0]] = 1.0
    assert rows[0] not in contrast._contrast_rows(batch, ids, None, {"motion": kept})[0]
    assert rows[0] in contrast._contrast_rows(batch, ids, None, {"local_image": kept, "motion": 0 * kept})[0]
    assert rows[0] not in contrast._contrast_rows(batch, ids, kept.view(-1, 1, 1), {"motion": 0 * kept})[0]
    a, b = plain.train_step(0, batch), contrast.train_step(0, batch)
    assert a["contrast_rows"] == 0 and a["contrast_gap"] is None
    assert b["contrast_rows"] == len(rows) and abs(b["contrast_gap"]) < 0.5  # an untrained model: no gap
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-5)
    assert b["loss"] > a["loss"]  # within the margin, the hinge is positive
    wide = Trainer(micro(tmp_path / "w", stage="1", steps=1, min_snr_gamma=None, batch=4, caption_contrast=3.0,
                         contrast_margin=1.0)).setup()
    assert wide.train_step(0, batch)["loss"] > b["loss"]  # --contrast-margin: a wider margin pays for more
    with pytest.raises(InputError, match="--caption-contrast"):
        Trainer(micro(tmp_path / "c", stage="1", steps=1, caption_contrast=-1.0)).setup()
    with pytest.raises(InputError, match="--contrast-margin"):
        Trainer(micro(tmp_path / "m", stage="1", steps=1, caption_contrast=1.0, contrast_margin=-0.1)).setup()


def test_caption_contrast_on_shape_takes_the_attributes_in_turn_and_only_where_no_condition_shows_the_object(tmp_path):
    """--contrast-attributes direction,shape: a text-only sample is contrasted on direction and on
    shape over consecutive steps (a circle or a still object, which have no reversed direction, on
    shape every time); its counterfactual caption names another shape. Any kept condition shows the
    object's shape, so such a sample is contrasted on direction only (the first image) or not at
    all. An unknown attribute is a one-line input error."""
    trainer = Trainer(micro(tmp_path / "a", stage="1", steps=1, min_snr_gamma=None, batch=4, caption_contrast=1.0,
                            contrast_attributes="direction,shape")).setup()
    batch = collate([trainer.dataset[r] for r in trainer.requests(0)])
    g = torch.Generator().manual_seed(0)
    _, ids, style, _, drop = trainer._inputs(batch, 1, g, None)
    n = len(batch["caption"])
    (rows0, kinds0, ids0), (rows1, kinds1, _) = (trainer._contrast_rows(batch, ids, style, drop, step) for step in (0, 1))
    assert rows0 == rows1 == list(range(n))  # every caption has a shape to change
    for i, (k0, k1) in enumerate(zip(kinds0, kinds1)):
        has_direction = counterfactual_caption(batch["caption"][i], "direction") != batch["caption"][i]
        assert {k0, k1} == ({"direction", "shape"} if has_direction else {"shape"})
    i = kinds0.index("shape")
    other = counterfactual_caption(batch["caption"][i], "shape")
    assert other != batch["caption"][i]
    assert torch.equal(ids0[rows0.index(i)], trainer.model.text.tokenize([other])[0][0].to(ids0.device))
    kept = torch.zeros(n)
    kept[0] = 1.0
    rows, kinds, _ = trainer._contrast_rows(batch, ids, None, {"local_image": kept}, 0)
    if counterfactual_caption(batch["caption"][0], "direction") == batch["caption"][0]:
        assert 0 not in rows
    else:
        assert kinds[rows.index(0)] == "direction"
    rows, _, _ = trainer._contrast_rows(batch, ids, None, {"depth": kept}, 0)
    assert 0 not in rows
    out = trainer.train_step(0, batch)
    assert out["contrast_rows"] == n and set(out["contrast_gaps"]) == set(kinds0)
    with pytest.raises(InputError, match="--contrast-attributes"):
        Trainer(micro(tmp_path / "b", stage="1", steps=1, caption_contrast=1.0, contrast_attributes="size")).setup()


def test_pixel_contrast_pays_the_hinge_on_decoded_frames(tmp_path):
    """--pixel-contrast alone (no latent contrast): the step still picks the contrast rows, logs the
    pixel gap per attribute, adds a positive hinge (an untrained model reads both captions alike)
    and leaves the MSE as it was; with --pixel-weight too it reuses that term's frames. A wider
    margin pays for more; a negative weight is a one-line input error."""
    plain = Trainer(micro(tmp_path / "a", stage="1", steps=1, min_snr_gamma=None, batch=4)).setup()
    batch = collate([plain.dataset[r] for r in plain.requests(0)])
    a = plain.train_step(0, batch)
    run = lambda name, **kw: Trainer(micro(tmp_path / name, stage="1", steps=1, min_snr_gamma=None, batch=4,  # noqa: E731
                                           contrast_attributes="shape", **kw)).setup().train_step(0, batch)
    b = run("b", pixel_contrast=2.0)
    assert b["contrast_rows"] == len(batch["caption"]) and set(b["pixel_contrast_gaps"]) == {"shape"}
    assert abs(b["pixel_contrast_gaps"]["shape"]) < 0.5 and b["pixel_l1"] is None
    assert b["mse"] == pytest.approx(a["mse"], rel=1e-5) and b["loss"] > a["loss"]
    assert run("w", pixel_contrast=2.0, contrast_margin=1.0)["loss"] > b["loss"]
    both = run("p", pixel_contrast=2.0, pixel_weight=1.0)
    assert both["pixel_l1"] > 0 and set(both["pixel_contrast_gaps"]) == {"shape"}
    with pytest.raises(InputError, match="--pixel-contrast"):
        Trainer(micro(tmp_path / "c", stage="1", steps=1, pixel_contrast=-1.0)).setup()


def test_snr_floor_weighs_the_noisiest_steps_and_is_checked(tmp_path):
    """--snr-floor changes the loss only through the weights of high-noise samples; bad values are
    one-line input errors."""
    plain = Trainer(micro(tmp_path / "a", stage="1", steps=1, batch=4)).setup()
    floored = Trainer(micro(tmp_path / "b", stage="1", steps=1, batch=4, snr_floor=1.0)).setup()
    batch = collate([plain.dataset[r] for r in plain.requests(0)])
    a, b = plain.train_step(0, batch), floored.train_step(0, batch)
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-5)  # same data, noise and timesteps
    assert b["loss"] >= a["loss"]  # the floor only ever raises a weight
    for bad in ({"snr_floor": 6.0}, {"snr_floor": 1.0, "min_snr_gamma": None}):
        with pytest.raises(InputError, match="--snr-floor"):
            Trainer(micro(tmp_path / "c", stage="1", steps=1, **bad)).setup()


def test_fixed_loss_in_x0_space_at_one_timestep(tmp_path):
    """x0 error = eps error x (1 - ab) / ab: at t = 900 far larger than the eps error, at t = 50 smaller."""
    trainer = Trainer(micro(tmp_path / "run", stage="1", steps=1, batch=2)).setup()
    fixed = collate([trainer.dataset[r] for r in trainer.requests(0)])
    ab = trainer.alphas_cumprod
    for t in (50, 900):
        eps = trainer.fixed_loss(trainer.model, fixed, 1, timestep=t)
        x0 = trainer.fixed_loss(trainer.model, fixed, 1, timestep=t, space="x0")
        assert x0 == pytest.approx(eps * float((1 - ab[t]) / ab[t]), rel=1e-4)
    with pytest.raises(ValueError, match="space"):
        trainer.fixed_loss(trainer.model, fixed, 1, space="v")


def test_precision_auto_follows_the_cpu(tmp_path, monkeypatch):
    """auto = bf16 autocast on a CPU with native bf16, fp32 on one without; an explicit choice wins."""
    import vcomp.train.cpu as host

    monkeypatch.setattr(host, "native_bf16", lambda: True)
    assert Trainer(micro(tmp_path / "a", stage="1", steps=1)).setup().autocast == torch.bfloat16
    monkeypatch.setattr(host, "native_bf16", lambda: False)
    assert Trainer(micro(tmp_path / "b", stage="1", steps=1)).setup().autocast is None
    monkeypatch.setattr(host, "native_bf16", lambda: True)
    assert Trainer(micro(tmp_path / "c", stage="1", steps=1, precision="fp32")).setup().autocast is None
    with pytest.raises(InputError, match="precision"):
        Trainer(micro(tmp_path / "d", stage="1", steps=1, precision="fp16")).setup()


# ---------------------------------------------------------------- training


def test_loss_goes_down(tmp_path):
    cfg = micro(tmp_path / "run", stage="1", steps=60, lr=3e-3, batch=4, world_clips=8)
    trainer = Trainer(cfg).setup()
    fixed = collate([trainer.dataset[r] for r in trainer.requests(0)])
    before = trainer.fixed_loss(trainer.model, fixed, stage=1)
    for step, batch in enumerate(trainer._loader(0, cfg.steps)):
        trainer.train_step(step, batch)
    after = trainer.fixed_loss(trainer.model, fixed, stage=1)
    # v = 0 at initialisation (zero output conv), so eps = sqrt(1 - ab) x_t: the noise at high t,
    # nothing at low t; evenly spread timesteps give an eps MSE well under eps = 0's 1.0
    assert trainer.model_cfg.prediction == "v"
    assert 0.1 < before < 0.6
    assert after < 0.92 * before  # measured: 0.29 -> 0.26 (v learns the hard part; the pass-through is free)


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    kw = {"stage": "both", "stage2_at": 1, "steps": 3, "lr": 2e-3}
    full = train(micro(tmp_path / "full", **kw))
    assert full["step"] == 3 and full["stopped"] == "done"

    part = train(micro(tmp_path / "part", session_steps=1, **kw))
    assert part["step"] == 1 and part["stopped"] == "session-steps"
    with pytest.raises(InputError, match="--resume"):
        train(micro(tmp_path / "part", **kw))
    with pytest.raises(InputError, match="lr"):
        train(micro(tmp_path / "part", resume=True, **{**kw, "lr": 1e-3}), explicit={"lr"})
    resumed = train(micro(tmp_path / "part", resume=True, **kw))
    assert resumed["step"] == 3

    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "part")
    for step in (2, 3):  # stage 2 steps, after the resume
        assert b[step]["stage"] == 2
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-5, abs=1e-7)
    ca, cb = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "part")
    assert ca.step == cb.step == 3 and set(ca.tensors) == set(cb.tensors)
    worst = max((ca.tensors[k] - cb.tensors[k]).abs().max().item() for k in ca.tensors)
    assert worst < 1e-5
    sessions = cb.record["sessions"]
    assert [(s["start_step"], s["end_step"]) for s in sessions] == [(0, 1), (1, 3)]


def test_resume_keeps_the_runs_checkpoint_eval_and_export_settings(tmp_path):
    run, export = tmp_path / "run", str(tmp_path / "export")
    train(micro(run, stage="1", steps=3, session_steps=1, ckpt_every=7, eval_every=5, export=export))
    bare = Trainer(TrainConfig(out=str(run), resume=True)).setup(set())
    assert (bare.cfg.ckpt_every, bare.cfg.eval_every, bare.cfg.export, bare.cfg.threads) == (7, 5, export, 1)
    chosen = Trainer(TrainConfig(out=str(run), resume=True, ckpt_every=3)).setup({"ckpt_every"})
    assert (chosen.cfg.ckpt_every, chosen.cfg.eval_every) == (3, 5)


def test_session_steps_zero_exports_a_stopped_run_without_training(tmp_path):
    """Ctrl-C / SIGTERM leave a checkpoint but no export (an interrupted run must not replace a
    good export); resuming for no steps writes the export of exactly the checkpointed weights."""
    from safetensors.torch import load_file

    run, export = tmp_path / "run", tmp_path / "export"
    train(micro(run, stage="1", steps=6, session_steps=2))
    assert not export.exists()
    summary = train(TrainConfig(out=str(run), resume=True, session_steps=0, export=str(export)),
                    explicit={"session_steps", "export"})
    assert summary["step"] == 2 and load_checkpoint(run).step == 2
    assert sorted(read_log(run)) == [1, 2], "no step may run"
    record = json.loads((export / "embedded.json").read_text())
    assert record["training"]["steps"] == 2
    exported = load_file(str(export / "embedded.safetensors"))
    ema = load_file(str(run / "checkpoint" / "model.safetensors"))
    unet = [k for k in exported if k.startswith("unet.")]  # the export holds the EMA weights
    assert unet and all(torch.equal(exported[k], ema[f"ema.{k}"].to(exported[k].dtype)) for k in unet)


def test_a_fine_tune_keeps_the_init_models_sampling_defaults_through_resume_and_export(tmp_path):
    """A model's guidance is measured for it and lives in embedded.json; an export of a run that
    started from it (and of that run resumed) must carry it, or evaluating the export runs at the
    pipeline's fallback guidance instead."""
    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import load_embedded
    from vcomp.weights.files import EMBEDDED_GUIDANCE

    base = tmp_path / "base"
    train(micro(tmp_path / "run0", stage="1", steps=1, export=str(base)))
    record = json.loads((base / "embedded.json").read_text())
    assert "sampling" not in record  # a run from scratch has no measured defaults to carry
    record["sampling"] = {"guidance": EMBEDDED_GUIDANCE + 1.5, "note": "measured"}
    (base / "embedded.json").write_text(json.dumps(record))

    run = tmp_path / "run1"
    export = tmp_path / "export"
    train(micro(run, init=str(base), stage="2", steps=1, export=str(export)))
    assert load_embedded(export).record["sampling"] == record["sampling"]
    train(micro(run, resume=True, steps=2), explicit={"steps"})  # re-exports at the end
    resumed = load_embedded(export).record
    assert resumed["training"]["steps"] == 2 and resumed["sampling"] == record["sampling"]
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=export)
    assert pipe.default_guidance == EMBEDDED_GUIDANCE + 1.5


@pytest.mark.parametrize("flag, key", [("temporal_frame_pos", ".frame_pos."),
                                       ("temporal_text_attention", ".text_attn.to_out"),
                                       ("frame_index_embedding", "frame_embed.2."),
                                       ("text_coordinates", "text_coords.weight")])
def test_a_fine_tune_can_switch_on_an_addable_module(tmp_path, flag, key):
    """`--model-json '{"temporal_frame_pos": true}'` (or `temporal_text_attention`) on an --init model
    trained without it: the run starts from that model's weights plus the zero-initialised new maps,
    trains them, and exports a model that loads with them."""
    from vcomp.weights.embedded import load_embedded

    base = tmp_path / "base"
    train(micro(tmp_path / "run0", stage="1", steps=1, export=str(base)))
    assert not getattr(load_embedded(base).unet.cfg, flag)
    run, export = tmp_path / "run1", tmp_path / "export"
    train(micro(run, init=str(base), stage="2", steps=2, export=str(export), model={**MICRO, flag: True}))
    assert getattr(load_embedded(export).unet.cfg, flag)
    trained = {k: v for k, v in load_checkpoint(run).tensors.items() if key in k and not k.startswith("ema.")}
    assert trained and any(v.abs().sum() > 0 for v in trained.values())


def test_fresh_text_keeps_the_unet_and_restarts_the_text_encoder(tmp_path):
    from vcomp.weights.embedded import load_embedded

    base = tmp_path / "base"
    train(micro(tmp_path / "run0", stage="1", steps=2, export=str(base)))
    trained = load_embedded(base)
    tuned = Trainer(micro(tmp_path / "run1", init=str(base), stage="2", steps=1, fresh_text=True)).setup()
    unet, text = tuned.model.unet.state_dict(), tuned.model.text.state_dict()
    assert all(torch.equal(unet[k], v) for k, v in trained.unet.state_dict().items())
    old = trained.text_encoder.state_dict()
    assert text.keys() == old.keys() and tuned.model.text.vocab == trained.text_encoder.vocab
    assert not torch.allclose(text["token_embedding.weight"], old["token_embedding.weight"])
    kept = Trainer(micro(tmp_path / "run2", init=str(base), stage="2", steps=1)).setup()
    assert torch.equal(kept.model.text.state_dict()["token_embedding.weight"], old["token_embedding.weight"])
    with pytest.raises(InputError, match="fresh-text"):
        Trainer(micro(tmp_path / "run3", fresh_text=True)).setup()


def _children(pid: int) -> list[int]:
    """Child process ids of `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_sigterm_to_the_data_worker_and_trainer_stops_the_run_with_a_checkpoint(tmp_path):
    """A data worker shares the trainer's command line, so `pkill -f "vcomp train"` (or a signal
    to the group) reaches it too; the run must still end with a checkpoint, not an internal error."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "vcomp", "train", "--out", str(out), "--steps", "10000", "--stage", "1",
           "--batch", "1", "--frames-curriculum", "4", "--size-curriculum", "32", "--workers", "1",
           "--threads", "1", "--log-every", "1", "--model-json", MICRO_JSON]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / LOG_FILE).is_file() and len(read_log(out)) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        # as `pkill -f` may: the worker first (its trainer keeps going), then the trainer
        os.kill(_children(proc.pid)[0], signal.SIGTERM)
        time.sleep(1.0)
        assert proc.poll() is None, "the trainer died with its data worker"
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert "internal error" not in stderr, stderr[-2000:]
    assert load_checkpoint(out).step == max(read_log(out))
    assert f"stopped at step {max(read_log(out))}; checkpoint in" in stderr and "--resume" in stderr


def _write_folder(folder: Path) -> None:
    from vcomp.io import write_video
    from vcomp.train.synthetic import WorldDataset

    folder.mkdir()
    world = WorldDataset(length=2, seed=1, size=48, frames=10, motion="none", style=False)
    write_video(folder / "one.mp4", world[0]["frames"], fps=8)
    (folder / "one.txt").write_text("a red circle moving left\n")
    (folder / "sub").mkdir()
    write_video(folder / "sub" / "two.mp4", world[1]["frames"], fps=8)
    (folder / "captions.jsonl").write_text(json.dumps({"video": "sub/two.mp4", "caption": "a zebra walking"}) + "\n")


def test_folder_dataset(tmp_path):
    from vcomp.model.adapters import TinyAdapter

    _write_folder(tmp_path / "clips")
    assert len(FolderSource(tmp_path / "clips", frames=4, stride=1)) == 4  # 10 frames: clips at 0 and 4
    source = FolderSource(tmp_path / "clips", frames=4, stride=2)  # a clip spans 7 source frames
    assert len(source) == 2
    assert sorted(source.captions()) == ["a red circle moving left", "a zebra walking"]
    data = TrainDataset(source, TinyAdapter())
    item = data[Request(index=0, seed=1, frames=4, size=32, conditions=True)]
    assert item["video"].shape == (3, 4, 32, 32)
    assert set(item["conditions"]) == {"motion", "depth", "sketch", "single_sketch", "local_image", "masked"}
    assert item["caption"] in source.captions()


def test_cli_folder_finetune_export_and_pipeline(tmp_path):
    from vcomp.cli import main
    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import load_embedded

    _write_folder(tmp_path / "clips")
    base = tmp_path / "base"
    train(micro(base, stage="1", steps=1))
    args = ["train", "--data", str(tmp_path / "clips"), "--init", str(base), "--stage", "2", "--steps", "2",
            "--batch", "2", "--frames-curriculum", "4", "--size-curriculum", "32", "--workers", "0",
            "--stride", "2", "--threads", "1", "--out", str(tmp_path / "ft"), "--export", str(tmp_path / "export"), "--json", "-q"]
    assert main(args) == 0
    emb = load_embedded(tmp_path / "export")
    assert "zebra" in emb.text_encoder.vocab  # the user's words joined the vocabulary
    training = emb.record["training"]
    assert training["steps"] == 2 and training["seed"] == 0 and training["weights"] == "EMA"
    assert "--init" in training["command"] and training["hardware"]["torch"] == torch.__version__
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=tmp_path / "export")
    result = pipe.generate(None, "a zebra walking", steps=1, size=(32, 32), num_frames=4)
    assert result.frames.shape == (4, 32, 32, 3)


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vcomp", "train", "--out", str(out), "--steps", "2", "--stage2-at", "1", "--batch", "1",
           "--frames-curriculum", "4", "--size-curriculum", "32", "--workers", "0", "--threads", "1",
           "--model-json", MICRO_JSON, "--json", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["world_size"] == 2 and summary["step"] == 2
    ckpt = load_checkpoint(out)
    assert ckpt.step == 2 and ckpt.record["world_size"] == 2


def test_a_zero_terminal_snr_fine_tune_trains_on_the_rescaled_schedule_and_its_export_samples(tmp_path, monkeypatch,
                                                                                              capsys):
    """`--model-json '{"zero_terminal_snr": true}'` on an --init model: the run adds noise with the
    rescaled schedule (pure noise at t = 999, where the x0-space loss stays finite), its export's notes
    describe its own config, and it samples through the v-stepping scheduler to a finite latent."""
    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import load_embedded

    base, export = tmp_path / "base", tmp_path / "export"
    train(micro(tmp_path / "run0", stage="1", steps=1, export=str(base)))
    trainer = Trainer(micro(tmp_path / "run1", init=str(base), stage="2", steps=1,
                            model={**MICRO, "zero_terminal_snr": True})).setup()
    assert float(trainer.alphas_cumprod[-1]) == 0.0
    batch = collate([trainer.dataset[r] for r in trainer.requests(0)])
    assert np.isfinite(trainer.train_step(0, batch)["loss"])
    assert np.isfinite(trainer.fixed_loss(trainer.model, batch, 2, timestep=999, space="x0"))
    record = json.loads((base / "embedded.json").read_text())
    record["model"]["notes"] = "a stale description"  # free text must not travel through --init
    (base / "embedded.json").write_text(json.dumps(record))
    train(micro(tmp_path / "run2", init=str(base), stage="2", steps=1, export=str(export),
                model={**MICRO, "zero_terminal_snr": True}))
    cfg = load_embedded(export).unet.cfg
    assert cfg.zero_terminal_snr and cfg.notes.startswith("Trained by vcomp train: 64 x 64 px video -> 48 x 16 x 16 latent")
    assert "zero terminal SNR" in cfg.notes
    from vcomp.cli import main

    assert main(["models", "--weights", str(export), "--json"]) == 0  # `vcomp models` tells the schedule
    listed = {f["key"]: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert listed["embedded"]["noise_schedule"] == "zero terminal SNR"
    assert listed["embedded"]["sampling_start"] == {"steps": 50, "timestep": 999, "spacing": "trailing"}
    assert main(["models", "--weights", str(base), "--json"]) == 0
    listed = {f["key"]: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert listed["embedded"]["noise_schedule"] == "published"
    assert listed["embedded"]["sampling_start"] == {"steps": 50, "timestep": 981, "spacing": "leading"}
    import vcomp.engine

    seen = []

    def spy(eps_fn, latent, scheduler, **kw):
        out = denoise(eps_fn, latent, scheduler, **kw)
        seen.append((scheduler.config.prediction_type, int(scheduler.timesteps[0]), bool(torch.isfinite(out).all())))
        return out

    denoise = vcomp.engine.denoise
    monkeypatch.setattr(vcomp.engine, "denoise", spy)
    frames = Pipeline.load(device="cpu", preset="tiny", assets=export).generate(
        None, "a red circle", steps=2, size=(32, 32), num_frames=4).frames
    assert frames.shape == (4, 32, 32, 3) and seen == [("v_prediction", 999, True)]


def test_a_model_json_the_config_refuses_is_an_input_error(tmp_path):
    """--model-json with a width the norm groups do not divide, or an unknown field, is the user's
    one-line input error (it was reported as an internal error)."""
    for bad, word in (({**MICRO, "dim": 12}, "must divide"), ({**MICRO, "no_such_field": 1}, "no_such_field")):
        with pytest.raises(InputError, match=f"--model-json: .*{word}"):
            Trainer(micro(tmp_path / "run", stage="1", steps=1, model=bad)).setup()
