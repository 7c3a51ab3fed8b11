"""The learned latent space: `vcomp train-autoencoder`, its export, and a UNet trained on it
(`vcomp train --autoencoder`), exported as an embedded model the pipeline runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vcomp.errors import InputError, WeightsError
from vcomp.train.autoencoder import (
    AutoencoderTrainConfig,
    evaluate,
    load_autoencoder,
    random_crops,
    train_autoencoder,
    world_frames,
)

# two levels (factor 2), 4 latent channels: a few thousand parameters, milliseconds per step
MICRO_VAE = {"block_out_channels": [8, 16], "norm_num_groups": 4, "latent_channels": 4}


def latent_free_model(fast: dict) -> dict:
    """The fast test UNet without the fields an autoencoder sets (channels in and out, latent scale)."""
    return {k: v for k, v in fast["model"].items() if k not in ("in_dim", "out_dim", "latent_scale")}


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    cfg = AutoencoderTrainConfig(out=str(out), steps=60, batch=8, crop=16, size=32, lr=1e-3, warmup=5, min_lr_ratio=1.0,
                                 log_every=10, ckpt_every=20, threads=1, vae=MICRO_VAE)
    return out, train_autoencoder(cfg)


def test_world_frames_and_crops():
    x = world_frames(np.random.default_rng(0), 5, 32)
    assert x.shape == (5, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.1  # real scenes, not a constant
    y = random_crops(x, 16, np.random.default_rng(1))
    assert y.shape == (5, 3, 16, 16)
    # a crop is a window of its frame
    f = x[0].unfold(1, 16, 1).unfold(2, 16, 1)  # [3, 17, 17, 16, 16]
    assert (f - y[0][:, None, None]).abs().amax(dim=(0, 3, 4)).min() == 0


def test_training_improves_reconstruction_and_exports(vae_run):
    out, summary = vae_run
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log]
    assert summary["step"] == 60 and len(losses) == 6 and any("eval_psnr_db" in e for e in log)
    vae, record = load_autoencoder(out / "export")
    assert record["type"] == "AutoencoderKL" and record["training"]["steps"] == 60
    held = world_frames(np.random.default_rng(5), 8, 32, split="heldout")
    fresh = AutoencoderTrainConfig(vae=MICRO_VAE)
    from vcomp.train.autoencoder import _build

    untrained = evaluate(_build(fresh)[0], held)["psnr_db"]
    assert evaluate(vae, held)["psnr_db"] > untrained + 1  # 60 steps already beat the random network
    # the scaling factor makes the latents unit-std (SD's recipe)
    with torch.no_grad():
        z = vae.encode(world_frames(np.random.default_rng(6), 32, 32)).latent_dist.mean * vae.config.scaling_factor
    assert 0.6 < float(z.std()) < 1.6


def test_resume_and_refusal(vae_run, tmp_path):
    out, _ = vae_run
    with pytest.raises(InputError, match="--resume"):
        train_autoencoder(AutoencoderTrainConfig(out=str(out), steps=61, vae=MICRO_VAE))
    with pytest.raises(InputError, match="train-autoencoder"):
        load_autoencoder(tmp_path)
    (tmp_path / "autoencoder.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "autoencoder.json").write_text(json.dumps({"type": "AutoencoderKL", "config": {"latent_channels": 4}}))
    with pytest.raises(WeightsError):
        load_autoencoder(tmp_path)


def test_unet_on_the_learned_latent_exports_and_generates(vae_run, tmp_path):
    from test_train import FAST

    from vcomp.pipeline import Pipeline
    from vcomp.train.loop import TrainConfig, train
    from vcomp.weights.embedded import load_embedded

    out, _ = vae_run
    micro = latent_free_model(FAST)
    cfg = TrainConfig(out=str(tmp_path / "run"), **{**FAST, "model": micro}, steps=2, stage2_at=1,
                      autoencoder=str(out / "export"), export=str(tmp_path / "export"))
    summary = train(cfg)
    assert summary["step"] == 2
    emb = load_embedded(tmp_path / "export")
    assert emb.record["autoencoder"]["type"] == "AutoencoderKL"
    assert emb.record["training"]["autoencoder"]["steps"] == 60  # the latent space's own training record
    assert (emb.unet.cfg.in_dim, emb.unet.cfg.latent_scale) == (4, 2)
    # the exported autoencoder is the trained one, bit for bit
    vae, _ = load_autoencoder(out / "export")
    for k, v in vae.state_dict().items():
        assert torch.equal(emb.autoencoder.vae.state_dict()[k], v), k
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=tmp_path / "export")
    result = pipe.generate(None, "a red circle moving left on a blue background", steps=2, size=(32, 32),
                           num_frames=4)
    assert result.frames.shape == (4, 32, 32, 3)
    # resuming keeps the latent space (it travels in the checkpoint)
    again = train(TrainConfig(out=str(tmp_path / "run"), **{**FAST, "model": micro}, steps=3, resume=True), explicit={"steps"})
    assert again["step"] == 3


def test_decoder_only_keeps_the_latent_space_and_replaces_the_models_decoder(vae_run, tmp_path):
    """--decoder-only --init: the encoder (so every latent a UNet was trained on) and the scaling
    factor stay bit-identical, the decoder changes; with_decoder then swaps it into an embedded
    model trained in that latent, and refuses an autoencoder with another encoder."""
    from test_train import FAST

    from vcomp.train.loop import TrainConfig, train
    from vcomp.weights.embedded import load_embedded, with_decoder

    out, _ = vae_run
    base, _ = load_autoencoder(out / "export")
    cfg = AutoencoderTrainConfig(out=str(tmp_path / "dec"), steps=6, batch=4, crop=32, size=32, lr=1e-3, warmup=1,
                                 log_every=3, threads=1, init=str(out / "export"), decoder_only=True, object_weight=4.0)
    summary = train_autoencoder(cfg)
    tuned, record = load_autoencoder(summary["export"])
    assert record["training"]["init"]["steps"] == 60 and record["config"]["scaling_factor"] == base.config.scaling_factor
    old, new = base.state_dict(), tuned.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)

    micro = latent_free_model(FAST)
    train(TrainConfig(out=str(tmp_path / "run"), **{**FAST, "model": micro}, steps=1,
                      autoencoder=str(out / "export"), export=str(tmp_path / "model")))
    before = load_embedded(tmp_path / "model")
    with_decoder(tmp_path / "model", tuned, tmp_path / "swapped", history=record["training"])
    after = load_embedded(tmp_path / "swapped")
    for k, v in tuned.state_dict().items():
        assert torch.equal(after.autoencoder.vae.state_dict()[k], v), k
    for k, v in before.unet.state_dict().items():
        assert torch.equal(after.unet.state_dict()[k], v), k
    assert after.record["training"]["decoder"]["init"]["steps"] == 60
    other = AutoencoderTrainConfig(out=str(tmp_path / "other"), steps=1, batch=2, crop=32, size=32, threads=1,
                                   vae=MICRO_VAE, seed=9)
    stranger, _ = load_autoencoder(train_autoencoder(other)["export"])
    with pytest.raises(WeightsError, match="encoder"):
        with_decoder(tmp_path / "model", stranger)
    with pytest.raises(InputError, match="--init"):
        train_autoencoder(AutoencoderTrainConfig(out=str(tmp_path / "x"), steps=1, decoder_only=True))


def test_object_weight_moves_the_reconstruction_loss_to_the_objects():
    from vcomp.train.autoencoder import autoencoder_loss

    x, focus = world_frames(np.random.default_rng(2), 4, 32, masks=True)
    assert focus.shape == (4, 1, 32, 32) and 0 < focus.mean() < 0.5
    torch.manual_seed(0)
    from diffusers import AutoencoderKL

    from vcomp.train.autoencoder import world_vae_config

    vae = AutoencoderKL(**world_vae_config(**MICRO_VAE))
    torch.manual_seed(1)
    plain, _ = autoencoder_loss(vae, x, 0.0, 0.0)
    torch.manual_seed(1)
    same, _ = autoencoder_loss(vae, x, 0.0, 0.0, focus, 0.0)
    torch.manual_seed(1)
    weighted, _ = autoencoder_loss(vae, x, 0.0, 0.0, focus, 9.0)
    assert same == plain and abs(weighted - plain) > 1e-4


def test_contrast_gain_weighs_an_object_on_a_near_colour_more():
    """A red square on orange (a near pair of the palette) gains about twice the weight of the
    same square on blue, which stays at 1; the gain is capped at CONTRAST_MAX_GAIN."""
    from vcomp.train.autoencoder import CONTRAST_MAX_GAIN, contrast_gain
    from vcomp.train.synthetic import PALETTE

    def frame(ground: str, thing: str) -> torch.Tensor:
        image = torch.tensor(PALETTE[ground], dtype=torch.float32).view(3, 1, 1).expand(3, 16, 16).clone()
        image[:, 4:10, 4:10] = torch.tensor(PALETTE[thing], dtype=torch.float32).view(3, 1, 1)
        return image / 127.5 - 1.0

    focus = torch.zeros(1, 16, 16)
    focus[:, 4:10, 4:10] = 1
    x = torch.stack([frame("orange", "red"), frame("blue", "red"), frame("red", "red")])
    gain = contrast_gain(x, focus.expand(3, 1, 16, 16), 1.5).flatten().tolist()
    assert 1.6 < gain[0] < 2.0  # red / orange: 0.83 apart
    assert gain[1] == 1.0  # red / blue: far apart
    assert gain[2] == CONTRAST_MAX_GAIN  # no contrast at all: capped


def test_contrast_ref_moves_more_of_the_loss_to_low_contrast_objects():
    from diffusers import AutoencoderKL

    from vcomp.train.autoencoder import autoencoder_loss, world_vae_config

    x, focus = world_frames(np.random.default_rng(2), 4, 32, masks=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(**world_vae_config(**MICRO_VAE))
    torch.manual_seed(1)
    weighted, _ = autoencoder_loss(vae, x, 0.0, 0.0, focus, 4.0)
    torch.manual_seed(1)
    off, _ = autoencoder_loss(vae, x, 0.0, 0.0, focus, 4.0, contrast_ref=0.0)
    torch.manual_seed(1)
    gained, _ = autoencoder_loss(vae, x, 0.0, 0.0, focus, 4.0, contrast_ref=100.0)  # every frame at the cap
    torch.manual_seed(1)
    capped, _ = autoencoder_loss(vae, x, 0.0, 0.0, focus, 16.0)
    assert off == weighted and abs(gained - weighted) > 1e-4
    assert torch.allclose(gained, capped)  # 4 x the cap of 4 is an object weight of 16


def test_tiny_preset_without_autoencoder_says_how_to_fix(tmp_path):
    from test_train import FAST

    from vcomp.train.loop import TrainConfig, train

    micro = latent_free_model(FAST)
    with pytest.raises(InputError, match="--autoencoder"):
        train(TrainConfig(out=str(tmp_path / "run"), **{**FAST, "model": micro}, steps=1))


def test_learning_rate_warms_up_then_decays_to_the_floor():
    from vcomp.train.autoencoder import lr_at

    cfg = AutoencoderTrainConfig(steps=1000, lr=1e-3, warmup=100, min_lr_ratio=0.05)
    lrs = [lr_at(cfg, s) for s in range(0, 1001, 50)]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[-1] == pytest.approx(5e-5)


def test_cli_trains_exports_and_records_its_command(tmp_path, capsys):
    from vcomp.cli import main

    out = tmp_path / "vae"
    args = ["train-autoencoder", "--out", str(out), "--steps", "2", "--batch", "2", "--crop", "16", "--size", "32",
            "--threads", "1", "--json", "-q"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["scaling_factor"] > 0
    vae, record = load_autoencoder(out / "export")
    assert record["training"]["commands"][-1][:2] == ["vcomp", "train-autoencoder"]
    assert "--json" in record["training"]["commands"][-1]
    assert main(args) == 2  # the run exists: --resume or another --out, a one-line error


def test_latent_noise_perturbs_the_decoders_input_within_its_level():
    """`latent_noise` s decodes latent + N(0, u^2), u ~ U(0, s) per sample, in the UNet's scaled
    units; s = 0 leaves the loss (and the random stream) as before."""
    from diffusers import AutoencoderKL

    from vcomp.train.autoencoder import autoencoder_loss, world_vae_config

    x = world_frames(np.random.default_rng(3), 6, 32)
    torch.manual_seed(0)
    vae = AutoencoderKL(**world_vae_config(**MICRO_VAE))
    vae.register_to_config(scaling_factor=0.5)
    seen = []
    decode = vae.decode
    vae.decode = lambda z, *a, **k: (seen.append(z.detach().clone()), decode(z, *a, **k))[1]
    losses = []
    for level in (0.0, 0.0, 0.4):
        torch.manual_seed(1)
        losses.append(float(autoencoder_loss(vae, x, 0.0, 0.0, latent_noise=level)[0].detach()))
    assert losses[0] == losses[1] and losses[2] != losses[0]
    assert torch.equal(seen[0], seen[1])
    noise_std = (seen[2] - seen[0]).flatten(1).std(dim=1) * 0.5  # back in scaled units
    assert (noise_std > 0).all() and (noise_std < 0.4 * 1.1).all()
    assert float(noise_std.std()) > 0.02  # a different level per sample


def test_a_trained_unet_moves_to_a_latent_of_another_width(vae_run, tmp_path):
    """--init a model --autoencoder a wider latent: the UNet keeps every trained tensor but the latent's
    own convolution weights (fresh), including the condition channels of its first convolution; on
    another factor too, and without the modules its new config leaves out."""
    from test_train import FAST

    from vcomp.model.loading import LATENT_INPUT_CONV, LATENT_OUTPUT_CONV
    from vcomp.train.loop import TrainConfig, train
    from vcomp.weights.embedded import load_embedded

    out, _ = vae_run
    micro = latent_free_model(FAST)
    micro["attn_scales"] = (1.0, 0.5)  # attention at the top level too, for the move below to leave out
    base = {**FAST, "model": micro, "stage2_at": 0}
    train(TrainConfig(out=str(tmp_path / "a"), **base, steps=2, autoencoder=str(out / "export"),
                      export=str(tmp_path / "a_export")))
    wide = AutoencoderTrainConfig(out=str(tmp_path / "vae6"), steps=2, batch=2, crop=16, size=32, threads=1,
                                  vae={**MICRO_VAE, "latent_channels": 6})
    train_autoencoder(wide)
    cfg = TrainConfig(out=str(tmp_path / "b"), **base, steps=1, lr=1e-4, init=str(tmp_path / "a_export"),
                      autoencoder=str(tmp_path / "vae6" / "export"), export=str(tmp_path / "b_export"))
    summary = train(cfg)
    assert summary["step"] == 1
    before, after = load_embedded(tmp_path / "a_export"), load_embedded(tmp_path / "b_export")
    assert (before.unet.cfg.in_dim, after.unet.cfg.in_dim, after.unet.cfg.out_dim) == (4, 6, 6)
    assert after.autoencoder.latent_channels == 6
    assert after.record["training"]["init"]["latent_channels_moved"] == [4, 6]
    old, new = before.unet.state_dict(), after.unet.state_dict()
    kept = [k for k in old if old[k].shape == new[k].shape and old[k].is_floating_point()]
    assert len(kept) > 0.9 * len(old)
    for k in kept:  # one step at lr 1e-4 (and the EMA) moves a kept tensor by far less than a re-draw would
        assert (old[k] - new[k]).abs().max() < 5e-3, k
    concat = old[LATENT_INPUT_CONV].shape[1] - 4
    assert torch.allclose(old[LATENT_INPUT_CONV][:, 4:], new[LATENT_INPUT_CONV][:, 6:], atol=5e-3)
    assert new[LATENT_INPUT_CONV].shape[1] == 6 + concat
    # another factor moves too (the blocks are convolutions, they run on the finer grid); a config that
    # leaves the attention out drops those trained tensors, the rest still loads strictly
    other = AutoencoderTrainConfig(out=str(tmp_path / "vae_f4"), steps=1, batch=2, crop=16, size=32, threads=1,
                                   vae={"block_out_channels": [8, 16, 16], "norm_num_groups": 4, "latent_channels": 6})
    train_autoencoder(other)
    no_attention = {**base, "model": {**micro, "attn_scales": (0.5,)}}  # none at the top level
    train(TrainConfig(out=str(tmp_path / "c"), **no_attention, steps=1, lr=1e-4, init=str(tmp_path / "a_export"),
                      autoencoder=str(tmp_path / "vae_f4" / "export"), export=str(tmp_path / "c_export")))
    moved = load_embedded(tmp_path / "c_export")
    assert (moved.unet.cfg.latent_scale, tuple(moved.unet.cfg.attn_scales)) == (4, (0.5,))
    assert moved.record["training"]["init"]["latent_factor_moved"] == [2, 4]
    finer = moved.unet.state_dict()
    assert len(finer) < len(old) and all(k in old for k in finer)
    for k in finer:
        if k not in (LATENT_INPUT_CONV, *LATENT_OUTPUT_CONV) and old[k].is_floating_point():
            assert (old[k] - finer[k]).abs().max() < 5e-3, k
    # a module the config keeps but with other tensors is still a one-line refusal, not a silent drop
    wider = {**base, "model": {**micro, "stc_hidden": 12}}
    with pytest.raises(WeightsError):
        train(TrainConfig(out=str(tmp_path / "d"), **wider, steps=1, init=str(tmp_path / "a_export")))


def test_a_trained_unet_moves_to_latent_patches(vae_run, tmp_path):
    """--init a model --model-json '{"latent_patch": 2}': the UNet folds 2 x 2 latent cells into
    channels, keeps every trained tensor but the latent's own convolutions (the first one's
    condition channels kept), records the move, and the export generates at the old frame size."""
    from test_train import FAST

    from vcomp.model.loading import LATENT_INPUT_CONV, LATENT_OUTPUT_CONV
    from vcomp.pipeline import Pipeline
    from vcomp.train.loop import TrainConfig, train
    from vcomp.weights.embedded import load_embedded

    out, _ = vae_run
    base = {**FAST, "model": latent_free_model(FAST), "stage2_at": 0}
    train(TrainConfig(out=str(tmp_path / "a"), **base, steps=2, autoencoder=str(out / "export"),
                      export=str(tmp_path / "a_export")))
    patched = {**base, "model": {"latent_patch": 2}}
    train(TrainConfig(out=str(tmp_path / "b"), **patched, steps=1, lr=1e-4, init=str(tmp_path / "a_export"),
                      export=str(tmp_path / "b_export")))
    before, after = load_embedded(tmp_path / "a_export"), load_embedded(tmp_path / "b_export")
    assert (after.unet.cfg.latent_patch, after.unet.cfg.in_dim) == (2, before.unet.cfg.in_dim)
    assert after.record["training"]["init"]["latent_patch_moved"] == [1, 2]
    assert "2 x 2 patches" in after.unet.cfg.notes
    old, new = before.unet.state_dict(), after.unet.state_dict()
    channels = before.unet.cfg.in_dim
    assert new[LATENT_INPUT_CONV].shape[1] == old[LATENT_INPUT_CONV].shape[1] + 3 * channels
    assert torch.allclose(old[LATENT_INPUT_CONV][:, channels:], new[LATENT_INPUT_CONV][:, 4 * channels:], atol=5e-3)
    for k in old:
        if k not in (LATENT_INPUT_CONV, *LATENT_OUTPUT_CONV) and old[k].is_floating_point():
            assert (old[k] - new[k]).abs().max() < 5e-3, k
    frames = Pipeline.load(device="cpu", preset="tiny", assets=tmp_path / "b_export").generate(
        None, "a red circle moving left on a blue background", steps=2, size=(32, 32), num_frames=4, seed=0).frames
    assert frames.shape == (4, 32, 32, 3)

def test_cli_latent_channels_shapes_a_fresh_latent_only(tmp_path, capsys):
    from vcomp.cli import main

    out = tmp_path / "vae"
    assert main(["train-autoencoder", "--out", str(out), "--steps", "1", "--batch", "2", "--crop", "16", "--size",
                 "32", "--threads", "1", "--latent-channels", "12", "-q"]) == 0
    vae, _ = load_autoencoder(out / "export")
    assert vae.config.latent_channels == 12
    common = ["--out", str(out), "--resume", "--batch", "2", "--crop", "16", "--size", "32", "--threads", "1", "-q"]
    assert main(["train-autoencoder", "--steps", "2", *common]) == 0  # a resumed run keeps its own width
    vae, record = load_autoencoder(out / "export")
    assert vae.config.latent_channels == 12 and record["training"]["steps"] == 2
    capsys.readouterr()
    assert main(["train-autoencoder", "--steps", "3", "--latent-channels", "4", *common]) == 2
    err = capsys.readouterr().err
    assert "latent_channels" in err and len(err.strip().splitlines()) == 1
    assert main(["train-autoencoder", "--out", str(tmp_path / "again"), "--init", str(out / "export"),
                 "--latent-channels", "16", "--steps", "1", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--latent-channels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "again").exists()


def test_a_resumed_decoder_only_run_keeps_its_init_and_frozen_encoder(vae_run, tmp_path, capsys):
    """Resuming a decoder-only run without repeating --init / --decoder-only must not train the
    encoder (that would invalidate the UNet whose latent it is); --apply-to works on the resume;
    contradicting the run's structure is a one-line error."""
    from test_train import FAST

    from vcomp.cli import main
    from vcomp.train.loop import TrainConfig, train
    from vcomp.weights.embedded import load_embedded

    out, _ = vae_run
    base, _ = load_autoencoder(out / "export")
    micro = latent_free_model(FAST)
    train(TrainConfig(out=str(tmp_path / "run"), **{**FAST, "model": micro}, steps=1,
                      autoencoder=str(out / "export"), export=str(tmp_path / "model")))
    dec = tmp_path / "dec"
    common = ["--out", str(dec), "--batch", "2", "--crop", "32", "--size", "32", "--threads", "1", "-q"]
    assert main(["train-autoencoder", "--init", str(out / "export"), "--decoder-only", "--steps", "2",
                 "--object-weight", "4", "--grad-weight", "2", "--latent-noise", "0.1", "--contrast-ref", "1.5",
                 "--lr", "5e-4", *common]) == 0
    assert main(["train-autoencoder", "--resume", "--steps", "4", "--apply-to", str(tmp_path / "model"), *common]) == 0
    tuned, record = load_autoencoder(dec / "export")
    assert record["training"]["steps"] == 4
    recipe = record["training"]["config"]  # the phase's recipe is the run's unless given again
    assert (recipe["object_weight"], recipe["grad_weight"], recipe["latent_noise"], recipe["contrast_ref"],
            recipe["lr"], recipe["decoder_only"]) == (4, 2, 0.1, 1.5, 5e-4, True)
    old, new = base.state_dict(), tuned.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith(("decoder.", "post_quant_conv.")) for k in changed)
    applied = load_embedded(tmp_path / "model").autoencoder.vae.state_dict()
    assert all(torch.equal(applied[k], v) for k, v in new.items())

    capsys.readouterr()
    assert main(["train-autoencoder", "--resume", "--init", str(tmp_path / "model"), "--steps", "5", *common]) == 2
    err = capsys.readouterr().err
    assert "--init" in err and len(err.strip().splitlines()) == 1
    full = tmp_path / "full"
    assert main(["train-autoencoder", "--out", str(full), "--steps", "1", "--batch", "2", "--crop", "16", "--size",
                 "32", "--threads", "1", "--latent-channels", "4", "-q"]) == 0
    capsys.readouterr()
    assert main(["train-autoencoder", "--out", str(full), "--resume", "--decoder-only", "--steps", "2", "--batch", "2",
                 "--crop", "16", "--size", "32", "--threads", "1", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--decoder-only" in err and len(err.strip().splitlines()) == 1


def test_cli_factor_sets_the_latent_grid_of_a_fresh_latent(tmp_path, capsys):
    """--factor 4: one level fewer than the default, so 32 px frames become an 8 x 8 latent (4 x 4
    at the default 8); a factor that is not a power of 2 is a one-line error and no run folder."""
    from vcomp.cli import main

    out = tmp_path / "vae4"
    assert main(["train-autoencoder", "--out", str(out), "--steps", "1", "--batch", "2", "--crop", "16", "--size",
                 "32", "--threads", "1", "--factor", "4", "--latent-channels", "4", "-q"]) == 0
    vae, _ = load_autoencoder(out / "export")
    assert list(vae.config.block_out_channels) == [16, 32, 64]
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean
    assert z.shape == (1, 4, 8, 8)
    capsys.readouterr()
    assert main(["train-autoencoder", "--out", str(tmp_path / "bad"), "--steps", "1", "--factor", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--factor" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_a_deeper_decoder_starts_as_the_old_one_trains_resumes_and_swaps_into_the_model(vae_run, tmp_path, capsys):
    """--decoder-only --decoder-layers N: the new ResNet blocks start as the identity (same frames
    from the same latents), training changes only the decoder, the export and the embedded model
    it is applied to rebuild the deeper decoder from their config, and a resume keeps the depth;
    shrinking, or deepening without --decoder-only, is a one-line error."""
    from test_train import FAST

    from vcomp.cli import main
    from vcomp.model.autoencoder import DECODER_DEPTH_KEY, decoder_depth, deepen_decoder
    from vcomp.pipeline import Pipeline
    from vcomp.train.loop import TrainConfig, train
    from vcomp.weights.embedded import load_embedded

    out, _ = vae_run
    base, _ = load_autoencoder(out / "export")
    deeper = deepen_decoder(base, 3)
    assert (decoder_depth(base), decoder_depth(deeper)) == (1, 3)
    assert len(deeper.decoder.up_blocks[0].resnets) == 4 and len(deeper.encoder.down_blocks[0].resnets) == 1
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(base.decode(z).sample, deeper.decode(z).sample)
    with pytest.raises(ValueError, match="cannot lose"):
        deepen_decoder(deeper, 2)

    train(TrainConfig(out=str(tmp_path / "run"), **{**FAST, "model": latent_free_model(FAST)}, steps=1,
                      autoencoder=str(out / "export"), export=str(tmp_path / "model")))
    dec = tmp_path / "dec"
    common = ["--out", str(dec), "--batch", "2", "--crop", "32", "--size", "32", "--threads", "1", "-q"]
    assert main(["train-autoencoder", "--init", str(out / "export"), "--decoder-only", "--decoder-layers", "2",
                 "--steps", "2", *common]) == 0
    assert main(["train-autoencoder", "--resume", "--steps", "3", "--apply-to", str(tmp_path / "model"), *common]) == 0
    tuned, record = load_autoencoder(dec / "export")
    assert record["config"][DECODER_DEPTH_KEY] == 2 and record["training"]["steps"] == 3
    assert record["training"]["config"]["decoder_layers"] == 2
    old, new = base.state_dict(), tuned.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith(("decoder.", "post_quant_conv.")))
    model = load_embedded(tmp_path / "model")
    assert decoder_depth(model.autoencoder.vae) == 2
    assert all(torch.equal(model.autoencoder.vae.state_dict()[k], v) for k, v in new.items())
    frames = Pipeline.load(device="cpu", preset="tiny", assets=tmp_path / "model").generate(
        None, "a red circle", steps=1, size=(32, 32), num_frames=2).frames
    assert frames.shape == (2, 32, 32, 3)

    fresh = ["--out", str(tmp_path / "fresh"), *common[2:]]
    for args, words in ((["--resume", "--decoder-only", "--decoder-layers", "3", "--steps", "4", *common],
                         "--decoder-layers"),
                        (["--init", str(out / "export"), "--decoder-layers", "2", "--steps", "1", *fresh],
                         "--decoder-only")):
        capsys.readouterr()
        assert main(["train-autoencoder", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
    capsys.readouterr()
    assert main(["train-autoencoder", "--init", str(dec / "export"), "--decoder-only", "--decoder-layers", "1",
                 "--steps", "1", "--out", str(tmp_path / "shrink"), "--batch", "2", "--crop", "32", "--size", "32",
                 "--threads", "1", "-q"]) == 2
    assert "can only grow" in capsys.readouterr().err
    # a decoder tuned from the model keeps the model's own decoder history in its record
    assert main(["train-autoencoder", "--init", str(tmp_path / "model"), "--decoder-only", "--steps", "1",
                 "--out", str(tmp_path / "again"), "--batch", "2", "--crop", "32", "--size", "32", "--threads", "1",
                 "-q"]) == 0
    _, again = load_autoencoder(tmp_path / "again" / "export")
    assert again["training"]["init"]["decoder"]["steps"] == 3 and again["training"]["init"]["steps"] == 60
    assert again["config"][DECODER_DEPTH_KEY] == 2
