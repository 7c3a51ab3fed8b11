"""vcomp.pipeline + vcomp.model.adapters + `vcomp models`, on a randomly initialised tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vcomp.conditions.condition_set import ConditionSet
from vcomp.errors import InputError, WeightsError
from vcomp.model.adapters import OfficialAdapter, TinyAdapter, block_centre_mask
from vcomp.pipeline import Pipeline

T, S = 8, 32  # frames, output size (tiny: multiple of 16 px)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(device="cpu", preset="tiny", allow_random=True)


def make_conditions(t=T, h=24, w=40, seed=0, **extra) -> ConditionSet:
    rng = np.random.default_rng(seed)
    mask = np.zeros((t, 1, h, w), np.float32)
    mask[:, :, 6:18, 10:30] = 1
    arrays = dict(
        motion=rng.normal(size=(t, 2, h, w)).astype(np.float32),
        depth=rng.random((t, 1, h, w), np.float32),
        sketch=(rng.random((t, 1, h, w)) > 0.9).astype(np.float32),
        image=rng.random((3, h, w), np.float32),
        single_sketch=(rng.random((1, h, w)) > 0.9).astype(np.float32),
        style=rng.random(64, np.float32),
        mask=mask,
    )
    arrays.update(extra)
    return ConditionSet(**{k: v for k, v in arrays.items() if v is not None})


def source(t=T, h=24, w=40, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_generate_from_several_conditions(pipe):
    steps = []
    cs = make_conditions()
    with pytest.warns(UserWarning, match="zorblax"):
        result = pipe.generate(cs, "a red circle moving left zorblax", steps=2, seed=3, size=(S, S),
                               source_frames=source(), progress=lambda done, total: steps.append((done, total)))
    frames = result.frames
    assert frames.shape == (T, S, S, 3) and frames.dtype == np.uint8
    assert steps == [(1, 2), (2, 2)]
    info = result.info
    assert info["model"] == "tiny" and info["seed"] == 3 and info["steps"] == 2 and info["guidance"] == 4.0  # the embedded default
    assert info["guide"] == ["text", "style"]  # published default: text and style
    assert info["unknown_words"] == ["zorblax"]
    assert set(info["model_conditions"]) == {"depth", "local_image", "masked", "motion", "single_sketch", "sketch"}
    assert {"text", "conditions", "sampling", "per_step", "decode", "total"} <= set(info["timings"])
    json.dumps(info)  # serialisable for --json


def test_same_seed_identical_different_seed_different(pipe):
    cs = make_conditions(mask=None)
    run = lambda seed: pipe.generate(cs, "a blue square", steps=2, seed=seed, size=(S, S)).frames  # noqa: E731
    a, b, c = run(5), run(5), run(6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_cond_and_uncond_run_as_one_batch(pipe):
    batches = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        cs = make_conditions(mask=None)
        pipe.generate(cs, "a red circle", steps=3, size=(S, S), guide="text,motion")
        assert batches == [2, 2, 2]
        batches.clear()
        pipe.generate(cs, "a red circle", steps=2, size=(S, S), guidance=1.0)  # w = 1: conditional pass only
        assert batches == [1, 1]
    finally:
        handle.remove()


def test_guide_choice_changes_the_unconditional_branch(pipe):
    cs = make_conditions(mask=None, style=None)
    base = pipe.generate(cs, "a red circle", steps=2, size=(S, S), guide=("text",)).frames
    with_motion = pipe.generate(cs, "a red circle", steps=2, size=(S, S), guide=("text", "motion")).frames
    assert not np.array_equal(base, with_motion)
    with pytest.raises(InputError, match="style"):
        pipe.generate(cs, "a red circle", steps=1, size=(S, S), guide="text,style")  # no style given
    with pytest.raises(InputError, match="cannot guide 'canny'"):
        pipe.generate(cs, "a red circle", steps=1, size=(S, S), guide="canny")


@pytest.fixture(scope="module")
def pixel_pipe():
    """A random tiny model on the parameter-free pixel-unshuffle latent (the first release's)."""
    from vcomp.weights.embedded import random_embedded
    from vcomp.weights.files import EMBEDDED_GUIDANCE

    emb = random_embedded(0, in_dim=48, out_dim=48, latent_scale=4)
    return Pipeline(emb.unet, emb.autoencoder, emb.text_encoder, TinyAdapter(style_dim=emb.unet.cfg.style_dim),
                    preset="tiny", device="cpu", size=(64, 64), num_frames=16, guidance=EMBEDDED_GUIDANCE)


def test_inpainting_keeps_the_source_outside_the_mask(pixel_pipe):
    pipe = pixel_pipe
    src = source(h=S, w=S)
    mask = np.zeros((T, 1, S, S), np.float32)
    mask[:, :, 8:24, 8:24] = 1
    cs = ConditionSet(mask=mask)
    frames = pipe.generate(cs, "a red circle", steps=2, size=(S, S), source_frames=src, keep_known="pixels").frames
    outside = mask[:, 0] == 0
    assert np.array_equal(frames[outside], src[outside])
    assert not np.array_equal(frames[~outside], src[~outside])
    latent_only = pipe.generate(cs, "a red circle", steps=2, size=(S, S), source_frames=src, keep_known="latent").frames
    # pixel-unshuffle latent: replacing the kept latent cells keeps those pixels exactly
    assert np.abs(latent_only[outside].astype(int) - src[outside]).max() <= 1
    with pytest.raises(InputError, match="source"):
        pipe.generate(cs, "a red circle", steps=1, size=(S, S))
    with pytest.raises(InputError, match="keep_known"):
        pipe.generate(cs, "a red circle", steps=1, size=(S, S), source_frames=src, keep_known="sometimes")


def test_bad_requests_are_input_errors(pipe):
    with pytest.raises(InputError, match="8 frames but 4"):
        pipe.generate(make_conditions(mask=None), "circle", steps=1, num_frames=4, size=(S, S))
    with pytest.raises(InputError, match="1024-d"):
        pipe.generate(ConditionSet(style=np.zeros(1024, np.float32)), "circle", steps=1, num_frames=2, size=(S, S))
    with pytest.raises(InputError, match="must be a multiple of 32 pixels"):  # 8 px per latent cell, 2 down-samplings
        pipe.generate(None, "circle", steps=1, num_frames=2, size=(40, 40))
    assert pipe.generate(None, "circle", steps=1, num_frames=2, size=(S, S)).frames.shape == (2, S, S, 3)


def test_load_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("VCOMP_ALLOW_RANDOM", raising=False)
    empty = tmp_path / "assets"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no generator available"):
        Pipeline.load(weights_dir=tmp_path, assets=empty, device="cpu")
    with pytest.raises(WeightsError, match="embedded model is not in this installation"):
        Pipeline.load(weights_dir=tmp_path, assets=empty, device="cpu", preset="tiny")
    with pytest.raises(WeightsError, match="non_ema_228000.pth"):
        Pipeline.load(weights_dir=tmp_path, device="cpu", preset="official")
    monkeypatch.setenv("VCOMP_ALLOW_RANDOM", "1")
    assert Pipeline.load(weights_dir=tmp_path, assets=empty, device="cpu").preset == "tiny"


def test_pipeline_loads_a_saved_embedded_model(tmp_path, pipe):
    from vcomp.weights.embedded import save_embedded

    # fp32 storage: the loaded model is the saved one, bit for bit
    save_embedded(tmp_path, pipe.unet, pipe.text_encoder, training={"note": "test"}, autoencoder=pipe.autoencoder,
                  dtype=torch.float32)
    loaded = Pipeline.load(assets=tmp_path, device="cpu", allow_random=False)
    assert loaded.weights["embedded"].endswith("embedded.safetensors")
    cs = make_conditions(mask=None)
    a = pipe.generate(cs, "a red circle", steps=1, size=(S, S), seed=2).frames
    b = loaded.generate(cs, "a red circle", steps=1, size=(S, S), seed=2).frames
    assert np.array_equal(a, b)


def test_embedded_model_is_stored_in_fp16_and_computed_in_fp32(tmp_path, pipe):
    from safetensors.torch import load_file

    from vcomp.weights.embedded import save_embedded

    weights, _ = save_embedded(tmp_path, pipe.unet, pipe.text_encoder, autoencoder=pipe.autoencoder)  # default: fp16
    stored = load_file(str(weights))
    # UNet and text encoder in fp16; a learned autoencoder stays fp32 (its decoder sets the output's quality)
    assert {v.dtype for k, v in stored.items() if v.is_floating_point() and not k.startswith("vae.")} == {torch.float16}
    assert {v.dtype for k, v in stored.items() if k.startswith("vae.")} <= {torch.float32}
    loaded = Pipeline.load(assets=tmp_path, device="cpu", allow_random=False)
    for name, p in loaded.unet.state_dict().items():
        if p.is_floating_point():
            assert p.dtype == torch.float32
            assert torch.equal(p, pipe.unet.state_dict()[name].half().float()), name


# ---------------------------------------------------------------- adapters


def test_tiny_adapter_layouts():
    cs = make_conditions(h=32, w=64)
    out = TinyAdapter().prepare(cs, T, (S, S), source_frames=source(h=32, w=64))
    c = out.conditions
    assert c["motion"].shape == (1, 2, T, S, S) and c["depth"].shape == (1, 1, T, S, S)
    assert c["local_image"].shape == (1, 3, S, S) and c["single_sketch"].shape == (1, 1, S, S)
    assert c["masked"].shape == (1, 4, T, S, S) and out.style.shape == (1, 1, 64)
    # motion vectors are rescaled to output pixels (here 64x32 -> 32x32 is a crop: scale 1; then 2x)
    field = np.zeros((T, 2, 32, 64), np.float32)
    field[:, 0] = 4.0
    scaled = TinyAdapter().prepare(ConditionSet(motion=field), T, (S, S)).conditions["motion"]
    torch.testing.assert_close(scaled[0, 0], torch.full((T, S, S), 4.0))  # cover scale = max(32/64, 32/32) = 1
    doubled = TinyAdapter().prepare(ConditionSet(motion=field[..., :16, :16]), T, (S, S)).conditions["motion"]
    torch.testing.assert_close(doubled[0, 0], torch.full((T, S, S), 8.0))
    # masked: RGB in [-1, 1] with hole = 0, then keep = 1 - mask
    keep = c["masked"][0, 3]
    assert set(torch.unique(keep).tolist()) == {0.0, 1.0}
    assert torch.all(c["masked"][0, :3][:, keep == 0] == 0)
    assert c["masked"][0, :3].min() >= -1 and c["masked"][0, :3].max() <= 1
    assert out.known.shape == (1, 3, T, S, S) and out.hole.shape == (1, 1, T, S, S)


def test_official_adapter_published_formats():
    t, h, w = 4, 64, 64
    depth = np.full((t, 1, h, w), 0.5, np.float32)
    image = np.full((3, h, w), 0.25, np.float32)
    motion = np.zeros((t, 2, h, w), np.float32)
    motion[1:, 0] = 2.0  # 2 px/frame to the right at 64 px
    meta = {"source_size": [640, 640], "fps": 8.0, "extractors": {}}
    cs = ConditionSet(depth=depth, image=image, motion=motion, style=np.ones(1024, np.float32), meta=meta)
    out = OfficialAdapter().prepare(cs, t, (256, 256))
    c = out.conditions
    assert c["depth"].shape == (1, 1, t, 384, 384) and c["local_image"].shape == (1, 3, 384, 384)
    torch.testing.assert_close(c["depth"], torch.full_like(c["depth"], 0.5 * 30 / 20))  # clamp(d*30/20, 0, 10)
    torch.testing.assert_close(c["local_image"], torch.full_like(c["local_image"], 0.25))  # [0, 1], unchanged
    m = c["motion"]
    assert m.shape == (1, 2, t, 256, 256) and out.style.shape == (1, 1, 1024)
    # source pixels (x10) per 4 fps step (x2), only at block centres: 640/16 = 40 blocks per side
    nonzero = m[0, 0, 1] != 0
    assert int(nonzero.sum()) == 40 * 40
    torch.testing.assert_close(m[0, 0, 1][nonzero], torch.full((1600,), 40.0))
    assert torch.all(m[0, :, 0] == 0) and torch.all(m[0, 1] == 0)
    assert any("estimated scale" in n for n in out.notes)
    # a depth extractor that records the raw disparity scale is used as is (and clamped at 10)
    cs2 = ConditionSet(depth=np.ones((t, 1, h, w), np.float32),
                       meta={"extractors": {"depth": {"disparity_scale": 400.0}}})
    assert float(OfficialAdapter().prepare(cs2, t, (256, 256)).conditions["depth"].max()) == 10.0
    with pytest.raises(InputError, match="64-d"):
        OfficialAdapter().prepare(ConditionSet(style=np.ones(64, np.float32)), t, (256, 256))


def test_block_centre_mask_geometry():
    mask = block_centre_mask((256, 256), (256, 256), (256, 256))
    ys, xs = np.nonzero(mask)
    assert sorted(set(xs.tolist())) == list(range(8, 256, 16)) and mask.sum() == 16 * 16


# ---------------------------------------------------------------- `vcomp models`


def test_models_json_with_empty_weights_dir(tmp_path, capsys, monkeypatch):
    from vcomp.cli import main
    from vcomp.weights.files import embedded_available

    monkeypatch.delenv("VCOMP_ALLOW_RANDOM", raising=False)
    assert main(["models", "--weights", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["weights_dir"] == str(tmp_path)
    published = [f for f in report["files"] if f["key"] != "embedded"]
    assert {f["file"] for f in published} >= {"non_ema_228000.pth", "open_clip_pytorch_model.bin",
                                              "v2-1_512-ema-pruned.ckpt", "midas_v3_dpt_large.pth",
                                              "table5_pidinet.pth"}
    assert all(not f["found"] and f["path"] is None for f in published)
    embedded = next(f for f in report["files"] if f["key"] == "embedded")
    assert embedded["found"] == embedded_available()
    assert report["generator"]["preset"] == ("tiny" if embedded["found"] else None)
    assert report["extractors"]["style"].startswith("colour-stats-v1")

    assert main(["models", "--weights", str(tmp_path)]) == 0
    assert "non_ema_228000.pth" in capsys.readouterr().out
    assert main(["models", "--weights", str(tmp_path / "nope")]) == 2


def test_official_wiring_with_small_stand_ins(tmp_path):
    """The official path (OpenCLIP text tokens, KL VAE, OfficialAdapter) end to end, with small
    randomly initialised stand-ins for the 1.4B UNet, the SD VAE and ViT-H-14."""
    import open_clip

    from vcomp.model import create_model, get_config
    from vcomp.model.autoencoder import KLAutoencoder, build_kl_vae, sd21_vae_config
    from vcomp.model.embedders import OpenCLIPEmbedder

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (tmp_path / "vcomp-wiring-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "vcomp-wiring-clip.json")
    torch.manual_seed(0)
    clip = OpenCLIPEmbedder.from_state_dict(open_clip.create_model("vcomp-wiring-clip").state_dict(), "vcomp-wiring-clip")
    unet = create_model(get_config("tiny", name="official-standin", in_dim=4, out_dim=4, latent_scale=2,
                                   context_dim=32, text_len=77, style_dim=1024, temporal_rel_pos_bias=False))
    with torch.no_grad():
        for p in unet.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.02)
    vae = KLAutoencoder(build_kl_vae(sd21_vae_config(block_out_channels=[32, 32], layers_per_block=1)), chunk=3)
    pipe = Pipeline(unet, vae, clip, OfficialAdapter(), preset="official", size=(32, 32), num_frames=4)
    assert torch.allclose(unet.zero_y, clip.encode_text([""]))  # null text = encoding of ""

    t, h, w = 4, 40, 40
    mask = np.zeros((t, 1, h, w), np.float32)
    mask[:, :, 10:30, 10:30] = 1
    cs = ConditionSet(motion=np.ones((t, 2, h, w), np.float32), depth=np.full((t, 1, h, w), 0.5, np.float32),
                      image=np.full((3, h, w), 0.5, np.float32), mask=mask, style=np.ones(1024, np.float32),
                      meta={"source_size": [320, 320], "fps": 4})
    src = source(t=t, h=h, w=w)
    result = pipe.generate(cs, "a red circle", steps=2, seed=0, source_frames=src)
    assert result.frames.shape == (t, 32, 32, 3) and result.info["guide"] == ["text", "style"]
    assert result.info["model"] == "official"
    again = pipe.generate(cs, "a red circle", steps=2, seed=0, source_frames=src)
    assert np.array_equal(result.frames, again.frames)


def test_default_guidance_is_the_models(tmp_path, pipe):
    import json as _json

    from vcomp.weights.embedded import save_embedded

    assert pipe.default_guidance == 4.0  # the embedded model's (9.0 over-saturates it)
    cs = make_conditions(mask=None)
    default = pipe.generate(cs, "a red circle", steps=1, size=(S, S), seed=2)
    explicit = pipe.generate(cs, "a red circle", steps=1, size=(S, S), seed=2, guidance=4.0)
    nine = pipe.generate(cs, "a red circle", steps=1, size=(S, S), seed=2, guidance=9.0)
    assert default.info["guidance"] == 4.0 and np.array_equal(default.frames, explicit.frames)
    assert not np.array_equal(default.frames, nine.frames)
    _, config = save_embedded(tmp_path, pipe.unet, pipe.text_encoder, autoencoder=pipe.autoencoder)
    record = _json.loads(config.read_text())
    config.write_text(_json.dumps({**record, "sampling": {"guidance": 2.5}}))  # a model may carry its own
    assert Pipeline.load(assets=tmp_path, device="cpu", allow_random=False).default_guidance == 2.5


def with_sampling(tmp_path, pipe, sampling: dict):
    """The pipe's model saved to tmp_path with `sampling` as its embedded.json block."""
    from vcomp.weights.embedded import save_embedded

    _, config = save_embedded(tmp_path, pipe.unet, pipe.text_encoder, autoencoder=pipe.autoencoder)
    config.write_text(json.dumps({**json.loads(config.read_text()), "sampling": sampling}))
    return tmp_path


def test_a_per_guide_default_guidance_applies_only_when_that_condition_is_guided(tmp_path, pipe):
    """Style needs a stronger push than text or motion tolerate, so a model may carry a default
    per guided condition; an explicit --guidance still wins."""
    assets = with_sampling(tmp_path, pipe, {"guidance": 3.0, "guidance_by_guide": {"style": 7.0}})
    styled_pipe = Pipeline.load(assets=assets, device="cpu", allow_random=False)
    assert styled_pipe.describe()["guidance"] == {"default": 3.0, "by_guide": {"style": 7.0}}
    cs = make_conditions(mask=None)  # has a style: guided with the text by default

    def run(conditions, **kw):
        return styled_pipe.generate(conditions, "a red circle", steps=1, size=(S, S), seed=2, **kw)

    styled = run(cs)
    assert styled.info["guide"] == ["text", "style"] and styled.info["guidance"] == 7.0
    assert np.array_equal(styled.frames, run(cs, guidance=7.0).frames)
    assert not np.array_equal(styled.frames, run(cs, guidance=3.0).frames)
    assert run(cs, guidance=2.0).info["guidance"] == 2.0
    assert run(cs, guide="text").info["guidance"] == 3.0  # the style not guided: the model's default
    assert run(make_conditions(mask=None, style=None)).info["guidance"] == 3.0


def test_vcomp_models_shows_the_embedded_models_default_guidance(tmp_path, pipe, capsys):
    from vcomp.cli import main

    with_sampling(tmp_path, pipe, {"guidance": 3.0, "guidance_by_guide": {"style": 7.0}})
    assert main(["models", "--weights", str(tmp_path), "--json"]) == 0
    embedded = next(f for f in json.loads(capsys.readouterr().out)["files"] if f["key"] == "embedded")
    assert embedded["default_guidance"] == {"default": 3.0, "by_guide": {"style": 7.0}}
    assert main(["models", "--weights", str(tmp_path)]) == 0
    assert "default guidance (--guidance): 3, 7 when style is guided" in capsys.readouterr().out


@pytest.mark.parametrize("sampling, problem", [
    ({"guidance": "strong"}, "malformed"),
    ({"guidance_by_guide": {"style": None}}, "malformed"),
    ({"guidance_by_guide": ["style", 6]}, "malformed"),
    ({"guidance_by_guide": {"colour": 6}}, "'colour'"),
])
def test_a_malformed_sampling_block_is_a_weights_error_naming_it(tmp_path, pipe, sampling, problem):
    assets = with_sampling(tmp_path, pipe, sampling)
    with pytest.raises(WeightsError, match=problem):
        Pipeline.load(assets=assets, device="cpu", allow_random=False)
