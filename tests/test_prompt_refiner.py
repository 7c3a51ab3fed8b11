"""The prompt refiner (vcomp.model.prompt_refiner), its training (`vcomp train-prompt-refiner`) and
how an embedded model carries it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vcomp.errors import InputError
from vcomp.model.prompt_refiner import PromptRefiner
from vcomp.train.prompt_refiner import PromptRefinerTrainConfig, swapped_scene, train_prompt_refiner

TINY = dict(steps=3, batch=1, frames=4, width=8, log_every=1, ckpt_every=2, threads=1, warmup=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random embedded model with a learned (AutoencoderKL) latent and a temporal refiner."""
    from vcomp.model.temporal_refiner import TemporalRefiner
    from vcomp.weights.embedded import random_embedded, save_embedded

    folder = tmp_path_factory.mktemp("model")
    emb = random_embedded()
    emb.autoencoder.refiner = TemporalRefiner(4, 2)
    save_embedded(folder, emb.unet, emb.text_encoder, autoencoder=emb.autoencoder, sampling={"guidance": 3.0})
    return folder


def test_an_untrained_prompt_refiner_is_the_identity_and_checks_its_input():
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    stage = PromptRefiner(context_dim=12, width=8)
    assert torch.equal(stage(video, torch.randn(2, 5, 12)), video)  # zero-initialised last layer
    assert stage.config() == {"context_dim": 12, "width": 8}
    with pytest.raises(ValueError, match="multiples of 4"):
        stage(torch.zeros(1, 3, 3, 18, 16), torch.zeros(1, 5, 12))
    with pytest.raises(ValueError, match="text tokens"):
        stage(video, torch.zeros(2, 5, 7))
    with pytest.raises(ValueError, match="width"):
        PromptRefiner(width=4)


def outlined(kind: str, n: int, t: int = 3, size: int = 16) -> torch.Tensor:
    """n clips of a grey frame with a white object at the centre: a filled square ("square"), the
    same square with its corners cut into a plus ("plus") or a soft blob between the two ("blob")."""
    video = torch.full((n, 3, t, size, size), -0.5)
    c = size // 2
    if kind in ("square", "blob"):
        video[..., c - 4:c + 4, c - 4:c + 4] = 0.9 if kind == "square" else 0.5
    if kind in ("plus", "blob"):
        video[..., c - 4:c + 4, c - 2:c + 2] = 0.9
        video[..., c - 2:c + 2, c - 4:c + 4] = 0.9
    return video


def test_the_stage_learns_to_draw_the_outline_its_tokens_name():
    """The same blob in, two prompts (two token sequences): after training, each prompt gets its own
    outline, which only the cross-attention to the tokens can tell apart."""
    torch.manual_seed(0)
    words = {"square": torch.randn(1, 4, 12), "plus": torch.randn(1, 4, 12)}
    stage = PromptRefiner(context_dim=12, width=8)
    opt = torch.optim.AdamW(stage.parameters(), lr=3e-3, weight_decay=0.0)
    blob = outlined("blob", 2)
    for _ in range(200):
        loss = sum(((stage(blob, tokens.expand(2, -1, -1)) - outlined(kind, 2)) ** 2).mean()
                   for kind, tokens in words.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = {kind: stage(outlined("blob", 1), tokens) for kind, tokens in words.items()}
    for kind, other in (("square", "plus"), ("plus", "square")):
        to_own = float((out[kind] - outlined(kind, 1)).abs().mean())
        to_other = float((out[kind] - outlined(other, 1)).abs().mean())
        assert to_own < 0.5 * to_other, (kind, to_own, to_other)


def test_swapped_scenes_change_only_the_shapes():
    from vcomp.train.synthetic import sample_scene

    rng = np.random.default_rng(0)
    for _ in range(10):
        scene = sample_scene(rng, "train", 2)
        other = swapped_scene(scene, rng, 1.0)
        for a, b in zip(scene.objects, other.objects):
            assert a.shape != b.shape
            assert (a.colour, a.direction, a.start, a.size, a.layer) == (b.colour, b.direction, b.start, b.size, b.layer)
        assert other.background == scene.background
        assert swapped_scene(scene, rng, 0.0) == scene


def test_a_redraw_from_timestep_zero_is_the_clip_and_from_higher_ones_follows_the_caption(model_dir):
    """`redrawn` noises the clips' latents to a timestep and denoises them with the UNet: from t = 0
    there is little to redraw (nearly the clean decode comes back; this random UNet's eps is large,
    and alpha_bar(0) is not quite 1), from mid noise the UNet's drawing
    replaces the clip's, and it depends on the caption (the guided text branch) and the noise."""
    from vcomp.train.prompt_refiner import redrawn, world_pairs
    from vcomp.weights.embedded import load_embedded

    emb = load_embedded(model_dir)
    truth, _, _, captions = world_pairs(np.random.default_rng(0), 2, 64, 4, 1.0, 0.0)
    with torch.no_grad():
        still, clean = redrawn(emb, truth, captions, 0, 2, torch.Generator().manual_seed(0))
        assert still.shape == clean.shape == truth.shape
        mid, clean_again = redrawn(emb, truth, captions, 500, 2, torch.Generator().manual_seed(0))
        assert torch.equal(clean, clean_again)
        assert float((still - clean).abs().mean()) < 0.4 * float((mid - clean).abs().mean())
        same, _ = redrawn(emb, truth, captions, 500, 2, torch.Generator().manual_seed(0))
        other_noise, _ = redrawn(emb, truth, captions, 500, 2, torch.Generator().manual_seed(1))
        other_words, _ = redrawn(emb, truth, ["a green star", "a white circle"], 500, 2, torch.Generator().manual_seed(0))
    assert torch.equal(mid, same)  # deterministic for a seed
    assert not torch.allclose(mid, other_noise) and not torch.allclose(mid, other_words)


def test_a_run_with_redrawn_inputs_trains_and_scores_them(model_dir, tmp_path):
    out = tmp_path / "run"
    summary = train_prompt_refiner(PromptRefinerTrainConfig(
        init=str(model_dir), out=str(out), redraw=0.5, redraw_t_min=300, redraw_t_max=400, redraw_steps=2,
        **{**TINY, "batch": 2, "steps": 2}))
    assert summary["step"] == 2
    assert 0 <= summary["redrawn_input_shape"] <= 1 and 0 <= summary["redrawn_refined_shape"] <= 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(entry["loss"]) and entry["loss"] > 0 for entry in log)
    for bad, word in ((dict(redraw=1.5), "--redraw"), (dict(redraw_t_max=950), "--redraw-t"),
                      (dict(redraw_t_min=400, redraw_t_max=300), "--redraw-t"), (dict(redraw_steps=0), "--redraw-steps")):
        with pytest.raises(InputError, match=word):
            train_prompt_refiner(PromptRefinerTrainConfig(init=str(model_dir), out=str(tmp_path / "bad"), **bad, **TINY))


def test_train_prompt_refiner_exports_the_model_with_it_and_resumes(model_dir, tmp_path):
    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import load_embedded

    out = tmp_path / "run"
    summary = train_prompt_refiner(PromptRefinerTrainConfig(init=str(model_dir), out=str(out), **TINY))
    assert summary["step"] == 3 and set(summary) >= {"input_shape", "refined_shape", "refined_l1", "export"}
    emb, base = load_embedded(out / "export"), load_embedded(model_dir)
    stage = emb.autoencoder.prompt_refiner
    assert stage is not None and stage.config() == {"context_dim": emb.text_encoder.dim, "width": 8}
    assert emb.record["autoencoder"]["prompt_refiner"] == stage.config()
    assert emb.record["training"]["prompt_refiner"]["steps"] == 3
    assert emb.record["sampling"] == {"guidance": 3.0}
    for mine, theirs in ((emb.unet, base.unet), (emb.text_encoder, base.text_encoder),
                         (emb.autoencoder.vae, base.autoencoder.vae), (emb.autoencoder.refiner, base.autoencoder.refiner)):
        for k, v in theirs.state_dict().items():  # everything else is untouched
            assert torch.equal(mine.state_dict()[k], v), k
    latent = torch.randn(1, emb.autoencoder.latent_channels, 4, 8, 8)
    tokens, _ = emb.text_encoder.encode(["a red circle moving left on a blue background"])
    with torch.no_grad():
        without, with_text = emb.autoencoder.decode(latent), emb.autoencoder.decode(latent, context=tokens)
    assert torch.equal(without, base.autoencoder.decode(latent)) and not torch.equal(without, with_text)
    pipe = Pipeline.load(device="cpu", preset="tiny", assets=out / "export")
    a = pipe.generate(None, "a red circle", steps=1, size=(32, 32), num_frames=4, seed=3)
    b = Pipeline.load(device="cpu", preset="tiny", assets=model_dir).generate(
        None, "a red circle", steps=1, size=(32, 32), num_frames=4, seed=3)
    assert a.frames.shape == (4, 32, 32, 3) and not np.array_equal(a.frames, b.frames)  # generation runs the stage
    with pytest.raises(InputError, match="--resume"):
        train_prompt_refiner(PromptRefinerTrainConfig(init=str(model_dir), out=str(out), **TINY))
    again = train_prompt_refiner(PromptRefinerTrainConfig(out=str(out), resume=True, **{**TINY, "steps": 4}))
    assert again["step"] == 4
    assert load_embedded(out / "export").record["training"]["prompt_refiner"]["config"]["init"] == str(model_dir)


def test_a_prompt_refiner_without_its_description_or_weights_is_a_weights_error(model_dir, tmp_path):
    from stages import assert_stage_needs_weights_and_description

    from vcomp.weights.embedded import load_embedded

    emb = load_embedded(model_dir)
    assert_stage_needs_weights_and_description(emb, "prompt_refiner", PromptRefiner(emb.text_encoder.dim, 8), tmp_path)


def test_cli_trains_a_prompt_refiner_moves_it_and_rejects_bad_settings(model_dir, tmp_path, capsys):
    import shutil

    from vcomp.cli import main
    from vcomp.weights.embedded import load_embedded, random_embedded, save_embedded

    sibling = tmp_path / "sibling"
    shutil.copytree(model_dir, sibling)
    args = ["train-prompt-refiner", "--init", str(model_dir), "--out", str(tmp_path / "p"), "--steps", "2",
            "--batch", "1", "--frames", "4", "--width", "8", "--threads", "1", "-q"]
    assert main([*args, "--apply-to", str(sibling), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["applied_to"] == str(sibling)
    trained = load_embedded(summary["export"]).autoencoder.prompt_refiner.state_dict()
    applied = load_embedded(sibling)
    assert all(torch.equal(applied.autoencoder.prompt_refiner.state_dict()[k], v) for k, v in trained.items())
    assert main(["models", "--weights", summary["export"], "--json"]) == 0  # `vcomp models` says it is there
    embedded = next(f for f in json.loads(capsys.readouterr().out)["files"] if f["key"] == "embedded")
    assert embedded["prompt_refiner"]["width"] == 8
    assert main(args) == 2  # the run exists: a one-line error, not a traceback
    assert "--resume" in capsys.readouterr().err
    # a resumed run keeps its own options unless they are typed again
    assert main(["train-prompt-refiner", "--out", str(tmp_path / "p"), "--resume", "--steps", "3", "--lr", "0.0005",
                 "-q"]) == 0
    ran = json.loads((tmp_path / "p" / "checkpoint" / "train.json").read_text())["config"]
    assert (ran["steps"], ran["lr"], ran["batch"], ran["frames"], ran["threads"]) == (3, 0.0005, 1, 4, None)
    assert main(["train-prompt-refiner", "--init", str(model_dir), "--out", str(tmp_path / "bad"), "--swap", "2",
                 "-q"]) == 2
    assert "--swap" in capsys.readouterr().err
    stranger = random_embedded(seed=1)  # another autoencoder: refused, and left as it was
    save_embedded(tmp_path / "stranger", stranger.unet, stranger.text_encoder, autoencoder=stranger.autoencoder)
    assert main([*args[:4], str(tmp_path / "p"), "--resume", "--steps", "2", "--apply-to",
                 str(tmp_path / "stranger"), "-q"]) == 3
    assert "autoencoder" in capsys.readouterr().err
    assert load_embedded(tmp_path / "stranger").autoencoder.prompt_refiner is None


def test_a_unet_fine_tune_leaves_the_prompt_refiner_out_and_says_so(model_dir, tmp_path):
    """`vcomp train --init MODEL` trains MODEL's text encoder, whose tokens the prompt refiner reads:
    the export must not carry a stage trained on other tokens (nor fail to load for want of it)."""
    from vcomp.train.loop import TrainConfig, train
    from vcomp.weights.embedded import load_embedded

    train_prompt_refiner(PromptRefinerTrainConfig(init=str(model_dir), out=str(tmp_path / "p"), **TINY))
    events = []
    fast = dict(batch=1, frames_curriculum="4", size_curriculum="64", workers=0, threads=1, warmup=0, log_every=1,
                ckpt_every=1000, stage="2")
    train(TrainConfig(out=str(tmp_path / "unet"), init=str(tmp_path / "p" / "export"), steps=1,
                      export=str(tmp_path / "unet_export"), **fast), on_event=lambda kind, info: events.append((kind, info)))
    emb = load_embedded(tmp_path / "unet_export")
    assert emb.autoencoder.prompt_refiner is None and emb.autoencoder.refiner is not None
    assert any(kind == "note" and "train-prompt-refiner" in info["message"] for kind, info in events)
