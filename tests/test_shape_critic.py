"""The shape critic of `vcomp train --shape-weight`: crops, its training, and the training term."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_train import MICRO_JSON, _write_folder, micro

import vcomp.train.loop as loop
from vcomp.errors import InputError
from vcomp.model.autoencoder import PixelUnshuffleAutoencoder
from vcomp.train.data import collate
from vcomp.train.shape_critic import ShapeCritic, crop_boxes, object_crops, train_shape_critic


def test_crops_are_centred_on_the_object_and_carry_gradients():
    """A white 10 x 10 square at x 30-39, y 20-29: the crop box is its centroid and 1.5 x its side;
    the crop is white in the middle, black at the corners, and differentiable in the frame."""
    frame = -torch.ones(1, 3, 64, 64)
    frame[:, :, 20:30, 30:40] = 1.0
    mask = (frame[:, 0] > 0).float()
    centres, sides, area = crop_boxes(mask)
    assert centres[0].tolist() == pytest.approx([34.5, 24.5])
    assert float(sides[0]) == pytest.approx(15.0) and float(area[0]) == 100
    frame.requires_grad_(True)
    crop = object_crops(frame, centres, sides)
    seen = crop.detach()
    assert seen.shape == (1, 3, 24, 24)
    assert float(seen[0, :, 10:14, 10:14].min()) > 0.9
    assert float(seen[0, :, :2, :2].max()) < -0.9 and float(seen[0, :, -2:, -2:].max()) < -0.9
    crop.sum().backward()
    assert frame.grad[0, :, 20:30, 30:40].abs().sum() > 0 and frame.grad[0, :, 50:, :10].abs().sum() == 0


def test_shape_critic_learns_the_world_shapes():
    """A few hundred steps on world frames through a (lossless) pixel-unshuffle latent tell the four
    shapes apart on held-out frames far above chance (0.25), clean and decoded."""
    critic, record = train_shape_critic(PixelUnshuffleAutoencoder(8), seed=0, steps=250, clips=256, batch=64)
    assert record["clean_accuracy"] > 0.6 and record["decoded_accuracy"] > 0.6
    assert not any(p.requires_grad for p in critic.parameters())


def test_shape_weight_adds_the_critic_cross_entropy(tmp_path, monkeypatch):
    """--shape-weight: the step judges the one-object samples told their shape, logs the critic's
    cross-entropy and accuracy, adds the term to the loss (the MSE stays as it was) and reads the
    run's saved critic; it needs world data, and a negative weight is a one-line input error."""
    monkeypatch.setattr(loop, "SHAPE_T_MAX", 1000)  # judge every timestep: the rows do not depend on t
    plain = loop.Trainer(micro(tmp_path / "a", stage="1", steps=1, min_snr_gamma=None, batch=6)).setup()
    batch = collate([plain.dataset[r] for r in plain.requests(0)])
    a = plain.train_step(0, batch)
    run = tmp_path / "b"
    run.mkdir()
    save_file(ShapeCritic().state_dict(), str(run / "shape_critic.safetensors"))
    shaped = loop.Trainer(micro(run, stage="1", steps=1, min_snr_gamma=None, batch=6, shape_weight=1.0)).setup()
    ids = shaped.model.text.tokenize(batch["caption"])[0]
    rows, labels = shaped._shape_rows(batch, ids, None, torch.zeros(6, dtype=torch.long))
    assert rows == [i for i, c in enumerate(batch["caption"]) if " and " not in c] and len(rows) == len(labels)
    assert rows, "the batch should hold a one-object clip"
    b = shaped.train_step(0, batch)
    assert b["shape_ce"] > 0 and 0 <= b["shape_acc"] <= 1
    assert b["mse"] == pytest.approx(a["mse"], rel=1e-5) and b["loss"] > a["loss"]
    assert a["shape_ce"] is None
    with pytest.raises(InputError, match="--shape-weight"):
        loop.Trainer(micro(tmp_path / "c", stage="1", steps=1, shape_weight=-1.0)).setup()


def test_pixel_and_shape_terms_share_one_decode_of_the_predictions(tmp_path, monkeypatch):
    """With --pixel-weight and --shape-weight both on, the predicted clean latents are decoded once
    for both terms (the critic judges the pixel term's frames): two decoder calls a step, the
    true latents' (no gradient) and the predictions'."""
    monkeypatch.setattr(loop, "SHAPE_T_MAX", 1000)
    run = tmp_path / "run"
    run.mkdir()
    save_file(ShapeCritic().state_dict(), str(run / "shape_critic.safetensors"))
    trainer = loop.Trainer(micro(run, stage="1", steps=1, batch=6, shape_weight=1.0, pixel_weight=1.0)).setup()
    batch = collate([trainer.dataset[r] for r in trainer.requests(0)])
    calls = []
    decode = trainer.autoencoder.decode
    monkeypatch.setattr(trainer.autoencoder, "decode", lambda z, **kw: calls.append(z.shape[0]) or decode(z, **kw))
    out = trainer.train_step(0, batch)
    assert out["shape_ce"] is not None and out["pixel_l1"] is not None
    assert calls == [6, 6]


def test_shape_weight_on_a_folder_is_a_one_line_error(tmp_path, capsys):
    """A user's folder has no shape labels: `vcomp train --data FOLDER --shape-weight` says so and
    exits with the input-error code (2) without a traceback or a run folder's critic."""
    from vcomp.cli import main

    _write_folder(tmp_path / "clips")
    args = ["train", "--data", str(tmp_path / "clips"), "--stage", "1", "--steps", "1", "--batch", "2",
            "--frames-curriculum", "4", "--size-curriculum", "32", "--workers", "0", "--threads", "1",
            "--model-json", MICRO_JSON, "--shape-weight", "0.01", "--out", str(tmp_path / "run"), "-q"]
    assert main(args) == InputError.exit_code
    err = capsys.readouterr().err
    assert "--shape-weight needs the procedural world" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "shape_critic.safetensors").exists()
