"""The temporal refiner (vcomp.model.temporal_refiner), its training (`vcomp train-refiner`) and how
an embedded model carries it."""

from __future__ import annotations

import json

import pytest
import torch

from vcomp.errors import InputError
from vcomp.model.temporal_refiner import TemporalRefiner
from vcomp.train.refiner import RefinerTrainConfig, refiner_loss, train_refiner

TINY = dict(steps=3, batch=1, frames=4, width=4, layers=2, log_every=1, ckpt_every=2, threads=1, warmup=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random embedded model with a learned (AutoencoderKL) latent, saved to a folder."""
    from vcomp.weights.embedded import random_embedded, save_embedded

    folder = tmp_path_factory.mktemp("model")
    emb = random_embedded()
    save_embedded(folder, emb.unet, emb.text_encoder, autoencoder=emb.autoencoder,
                  sampling={"guidance": 3.0})
    return folder


def test_an_untrained_refiner_is_the_identity_and_checks_its_input():
    video = torch.rand(2, 3, 5, 8, 8) * 2 - 1
    refiner = TemporalRefiner(width=4, layers=3)
    assert torch.equal(refiner(video), video)  # zero-initialised last layer
    assert refiner.config() == {"width": 4, "layers": 3}
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        refiner(torch.zeros(2, 4, 5, 8, 8))
    with pytest.raises(ValueError, match="layers"):
        TemporalRefiner(layers=1)


def flickering_clips(generator: torch.Generator, n: int = 4, t: int = 8, size: int = 16):
    """A bright square moving right over a still gradient, and the same clip with per-frame flicker
    (a random brightness offset and per-pixel noise on every frame)."""
    ys, xs = torch.meshgrid(torch.linspace(-0.5, 0.5, size), torch.linspace(-0.5, 0.5, size), indexing="ij")
    clean = (ys + xs).expand(n, 3, t, size, size).clone()
    for f in range(t):
        clean[:, :, f, 5:10, 1 + f:6 + f] = 0.9
    masks = (clean[:, :1] == 0.9).float()
    flicker = 0.08 * torch.randn(n, 1, t, 1, 1, generator=generator) + 0.03 * torch.randn(clean.shape, generator=generator)
    return clean, clean + flicker, masks


def test_the_refiner_learns_to_remove_flicker_and_keeps_the_moving_object():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    refiner = TemporalRefiner(width=8, layers=3)
    opt = torch.optim.AdamW(refiner.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(150):
        clean, noisy, masks = flickering_clips(g)
        loss, _ = refiner_loss(refiner(noisy), clean, masks, object_weight=4.0, temporal_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    clean, noisy, masks = flickering_clips(torch.Generator().manual_seed(99))
    with torch.no_grad():
        refined = refiner(noisy)

    def temporal(video):  # how much the frame differences deviate from the clean clip's
        err = video - clean
        return float((err[:, :, 1:] - err[:, :, :-1]).abs().mean())

    assert temporal(refined) < 0.5 * temporal(noisy)
    assert float((refined - clean).abs().mean()) < float((noisy - clean).abs().mean())
    on_object = masks.expand_as(clean).bool()
    assert float((refined - clean).abs()[on_object].mean()) < 0.1  # the square is still where it was


def test_train_refiner_exports_the_model_with_it_and_resumes(model_dir, tmp_path):
    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import load_embedded

    out = tmp_path / "run"
    summary = train_refiner(RefinerTrainConfig(init=str(model_dir), out=str(out), **TINY))
    assert summary["step"] == 3 and set(summary) >= {"decoded_temporal", "refined_temporal", "export"}
    emb = load_embedded(out / "export")
    refiner = emb.autoencoder.refiner
    assert refiner is not None and refiner.config() == {"width": 4, "layers": 2}
    assert emb.record["autoencoder"]["temporal_refiner"] == {"width": 4, "layers": 2}
    assert emb.record["training"]["refiner"]["steps"] == 3
    assert emb.record["sampling"] == {"guidance": 3.0}  # the model's own defaults travel with it
    base = load_embedded(model_dir)
    for k, v in base.unet.state_dict().items():  # the UNet and the autoencoder are untouched
        assert torch.equal(emb.unet.state_dict()[k], v), k
    for k, v in base.autoencoder.vae.state_dict().items():
        assert torch.equal(emb.autoencoder.vae.state_dict()[k], v), k
    latent = torch.randn(1, emb.autoencoder.latent_channels, 4, 4, 4)
    with torch.no_grad():
        plain, refined = emb.autoencoder.decode(latent, refine=False), emb.autoencoder.decode(latent)
    assert torch.equal(plain, base.autoencoder.decode(latent)) and not torch.equal(plain, refined)
    result = Pipeline.load(device="cpu", preset="tiny", assets=out / "export").generate(
        None, "a red circle", steps=1, size=(32, 32), num_frames=4)
    assert result.frames.shape == (4, 32, 32, 3)
    # a finished run is continued only on purpose, and then from its own --init
    with pytest.raises(InputError, match="--resume"):
        train_refiner(RefinerTrainConfig(init=str(model_dir), out=str(out), **TINY))
    again = train_refiner(RefinerTrainConfig(out=str(out), resume=True, **{**TINY, "steps": 4}))
    assert again["step"] == 4
    assert load_embedded(out / "export").record["training"]["refiner"]["config"]["init"] == str(model_dir)


def test_a_refiner_without_its_description_or_weights_is_a_weights_error(model_dir, tmp_path):
    from stages import assert_stage_needs_weights_and_description

    from vcomp.weights.embedded import load_embedded

    assert_stage_needs_weights_and_description(load_embedded(model_dir), "refiner", TemporalRefiner(4, 2), tmp_path)


def test_cli_trains_a_refiner_and_rejects_bad_settings(model_dir, tmp_path, capsys):
    from vcomp.cli import main

    args = ["train-refiner", "--init", str(model_dir), "--out", str(tmp_path / "r"), "--steps", "2", "--batch", "1",
            "--frames", "4", "--width", "4", "--layers", "2", "--threads", "1", "--json", "-q"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["export"].endswith("export")
    assert main(["models", "--weights", summary["export"], "--json"]) == 0  # `vcomp models` says it is there
    embedded = next(f for f in json.loads(capsys.readouterr().out)["files"] if f["key"] == "embedded")
    assert embedded["temporal_refiner"] == {"width": 4, "layers": 2}
    assert main(args) == 2  # the run exists: a one-line error, not a traceback
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--steps", "3", "--width", "8"]) == 2  # the run's architecture is fixed
    assert "--width 8" in capsys.readouterr().err
    assert main([a for a in args if a != "--json"] + ["--resume", "--steps", "3"]) == 0  # the one-line summary
    assert main(["train-refiner", "--init", str(model_dir), "--out", str(tmp_path / "bad"), "--layers", "1", "-q"]) == 2
    assert "--layers" in capsys.readouterr().err


def test_a_refiner_moves_only_to_models_with_its_autoencoder(model_dir, tmp_path, capsys):
    """`--apply-to`: a UNet fine-tuned from the refiner's model shares its autoencoder and takes
    the refiner; a model with another autoencoder is refused with a one-line error."""
    import shutil

    from vcomp.cli import main
    from vcomp.weights.embedded import load_embedded, random_embedded, save_embedded

    sibling = tmp_path / "sibling"
    shutil.copytree(model_dir, sibling)
    stranger = random_embedded(seed=1)
    save_embedded(tmp_path / "stranger", stranger.unet, stranger.text_encoder, autoencoder=stranger.autoencoder)
    args = ["train-refiner", "--init", str(model_dir), "--out", str(tmp_path / "r"), "--steps", "2", "--batch", "1",
            "--frames", "4", "--width", "4", "--layers", "2", "--threads", "1", "-q"]
    assert main([*args, "--apply-to", str(sibling), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied_to"] == str(sibling)
    trained = load_embedded(tmp_path / "r" / "export").autoencoder.refiner.state_dict()
    applied = load_embedded(sibling)
    assert all(torch.equal(applied.autoencoder.refiner.state_dict()[k], v) for k, v in trained.items())
    assert applied.record["training"]["refiner"]["steps"] == 2
    assert main([*args[:4], str(tmp_path / "r"), "--resume", "--steps", "2", "--apply-to", str(tmp_path / "stranger"),
                 "-q"]) == 3  # a weights error
    assert "autoencoder" in capsys.readouterr().err
    assert load_embedded(tmp_path / "stranger").autoencoder.refiner is None  # left as it was


def test_a_unet_fine_tune_of_a_refined_model_keeps_its_refiner(model_dir, tmp_path):
    """`vcomp train --init MODEL` freezes MODEL's autoencoder; its refiner belongs to that
    autoencoder and must reach the export (and survive --resume) unchanged, not come back as an
    untrained identity."""
    from vcomp.train.loop import TrainConfig, train
    from vcomp.weights.embedded import load_embedded

    train_refiner(RefinerTrainConfig(init=str(model_dir), out=str(tmp_path / "r"), **TINY))
    refined = tmp_path / "r" / "export"
    trained = load_embedded(refined).autoencoder.refiner.state_dict()
    run, export = tmp_path / "unet", tmp_path / "unet_export"
    fast = dict(batch=1, frames_curriculum="4", size_curriculum="64", workers=0, threads=1, warmup=0, log_every=1,
                ckpt_every=1000, stage="2")
    train(TrainConfig(out=str(run), init=str(refined), steps=1, export=str(export), **fast))
    train(TrainConfig(out=str(run), resume=True, steps=2, **fast), explicit={"steps"})
    emb = load_embedded(export)
    assert emb.record["training"]["steps"] == 2
    assert all(torch.equal(emb.autoencoder.refiner.state_dict()[k], v) for k, v in trained.items())
    # and so does the record of how it was trained, at the top level where `vcomp models` reads it
    assert emb.record["training"]["refiner"] == load_embedded(refined).record["training"]["refiner"]
    assert emb.record["training"]["refiner"]["steps"] == TINY["steps"]
    # one hop further: a run whose --init is that run's checkpoint folder, not its export
    train(TrainConfig(out=str(tmp_path / "next"), init=str(run), steps=1, export=str(tmp_path / "next_export"),
                      **fast))
    hop = load_embedded(tmp_path / "next_export")
    assert all(torch.equal(hop.autoencoder.refiner.state_dict()[k], v) for k, v in trained.items())
    assert hop.record["training"]["refiner"] == emb.record["training"]["refiner"]
