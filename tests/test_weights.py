"""vcomp.weights: lookup, safe loading, strict key/shape checks and the SD-VAE key mapping.

No published weights are needed: every checkpoint here is synthetic, written to tmp_path.
"""

from __future__ import annotations

import re

import pytest
import torch

from vcomp.errors import InputError, WeightsError
from vcomp.weights import files
from vcomp.weights.safe_load import load_file, load_state_dict

# ---------------------------------------------------------------- lookup


def test_find_prefers_safetensors_and_model_weights_subfolder(tmp_path):
    sub = tmp_path / "model_weights"
    sub.mkdir()
    (sub / "non_ema_228000.pth").write_bytes(b"x")
    assert files.find("non_ema_228000.pth", tmp_path) == sub / "non_ema_228000.pth"
    (tmp_path / "non_ema_228000.safetensors").write_bytes(b"x")
    assert files.find("non_ema_228000.pth", tmp_path) == tmp_path / "non_ema_228000.safetensors"
    assert files.find("midas_v3_dpt_large.pth", tmp_path) is None


def test_weights_home_and_require(tmp_path, monkeypatch):
    monkeypatch.setenv("VCOMP_HOME", str(tmp_path))
    assert files.weights_home() == tmp_path
    with pytest.raises(InputError, match="does not exist"):
        files.weights_home(tmp_path / "nope")
    with pytest.raises(WeightsError) as err:
        files.require("unet")
    msg = str(err.value)
    assert "non_ema_228000.pth" in msg and str(tmp_path) in msg and "vcomp models" in msg


def test_resolve_preset(tmp_path, monkeypatch):
    monkeypatch.delenv(files.ALLOW_RANDOM_ENV, raising=False)
    empty_assets = tmp_path / "assets"
    empty_assets.mkdir()
    preset, reason = files.resolve_preset(tmp_path, empty_assets)
    assert preset is None and "non_ema_228000.pth" in reason
    assert files.resolve_preset(tmp_path, empty_assets, allow_random=True)[0] == "tiny"
    for key in files.OFFICIAL_KEYS:
        (tmp_path / files.BY_KEY[key].filename).write_bytes(b"x")
    assert files.resolve_preset(tmp_path, empty_assets)[0] == "official"


# ---------------------------------------------------------------- safe loading


class Evil:
    """Pickles as a call to print(): must never run when loading."""

    def __reduce__(self):
        return (print, ("PWNED-by-vcomp-test",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path, capsys):
    path = tmp_path / "non_ema_228000.pth"
    torch.save({"weight": torch.zeros(2), "payload": Evil()}, path)
    capsys.readouterr()
    with pytest.raises(WeightsError) as err:
        load_file(path)
    msg = str(err.value)
    assert "refusing to load" in msg and str(path) in msg and "contains code" in msg
    assert "PWNED" not in capsys.readouterr().out


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(64, 64)}, good)
    assert torch.equal(load_state_dict(good)["w"], torch.load(good, weights_only=True)["w"])
    truncated = tmp_path / "v2-1_512-ema-pruned.ckpt"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "open_clip_pytorch_model.bin"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    bad_st = tmp_path / "x.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    for path in (truncated, garbage, bad_st):
        with pytest.raises(WeightsError, match="corrupt or truncated") as err:
            load_file(path)
        assert str(path) in str(err.value)
    with pytest.raises(WeightsError, match="does not exist"):
        load_file(tmp_path / "missing.pth")


def test_state_dict_unwrapping(tmp_path):
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {"module.a": torch.zeros(1), "module.b": torch.ones(2)}, "epoch": 3}, path)
    assert sorted(load_state_dict(path)) == ["a", "b"]
    torch.save({"state_dict": {"first_stage_model.x": torch.zeros(1), "model.y": torch.zeros(1)}}, path)
    assert list(load_state_dict(path, prefix="first_stage_model.")) == ["x"]
    with pytest.raises(WeightsError, match="no keys starting with"):
        load_state_dict(path, prefix="cond_stage_model.")


# ---------------------------------------------------------------- strict loading: official UNet, embedded


def test_official_unet_checkpoint_with_bad_keys_names_them(tmp_path):
    from vcomp.weights.official import load_official_unet

    path = tmp_path / "non_ema_228000.pth"
    sd = {k: torch.zeros(1) for k in ("out.2.bias", "extra.weight")}  # out.2.bias should be [4]
    torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        load_official_unet(path)
    msg = str(err.value)
    assert str(path) in msg and "out.2.bias" in msg and "extra.weight" in msg
    assert "missing" in msg and "mis-shaped" in msg and "unexpected" in msg
    assert "time_embed.0.weight" in msg  # first of the 1573 missing keys


def test_embedded_roundtrip_and_tampering(tmp_path):
    from safetensors.torch import load_file as st_load
    from safetensors.torch import save_file

    from vcomp.weights.embedded import load_embedded, random_embedded, save_embedded

    emb = random_embedded(seed=1)
    save_embedded(tmp_path / "fp32", emb.unet, emb.text_encoder, autoencoder=emb.autoencoder, dtype=torch.float32)
    exact = load_embedded(tmp_path / "fp32")
    weights_path, config_path = save_embedded(tmp_path, emb.unet, emb.text_encoder, training={"steps": 0},
                                              autoencoder=emb.autoencoder)
    loaded = load_embedded(tmp_path)  # stored fp16 (the default), computed in fp32
    assert loaded.record["training"] == {"steps": 0} and loaded.source == str(weights_path)
    assert weights_path.stat().st_size < 0.6 * (tmp_path / "fp32" / weights_path.name).stat().st_size
    for a, b, c in ((emb.unet, loaded.unet, exact.unet), (emb.text_encoder, loaded.text_encoder, exact.text_encoder)):
        for (k, v), (k2, v2), (_, v3) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items(),
                                             strict=True):
            assert k == k2 and v2.dtype == torch.float32
            assert torch.equal(v, v3) and torch.equal(v.half().float(), v2)
    assert loaded.text_encoder.vocab == emb.text_encoder.vocab

    tensors = st_load(str(weights_path))
    del tensors["unet.out.2.bias"]
    tensors["unet.time_embed.0.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(weights_path))
    with pytest.raises(WeightsError) as err:
        load_embedded(tmp_path)
    msg = str(err.value)
    assert "out.2.bias" in msg and "time_embed.0.weight" in msg and "[3, 3]" in msg and str(weights_path) in msg

    config_path.write_text("{broken")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_embedded(tmp_path)
    with pytest.raises(WeightsError, match="embedded model is not in this installation"):
        load_embedded(tmp_path / "empty")


# ---------------------------------------------------------------- SD VAE: LDM names -> diffusers


SMALL_VAE = {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 32}


def diffusers_to_ldm(key: str, levels: int) -> str:
    """The inverse naming, written independently of vcomp.weights.sd_vae (rules from LDM's
    `Encoder`/`Decoder` module names)."""
    rules = [
        (r"(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
         lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv."),
        (r"mid_block\.resnets\.0\.", "mid.block_1."),
        (r"mid_block\.resnets\.1\.", "mid.block_2."),
        (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
        (r"mid_block\.attentions\.0\.to_q\.", "mid.attn_1.q."),
        (r"mid_block\.attentions\.0\.to_k\.", "mid.attn_1.k."),
        (r"mid_block\.attentions\.0\.to_v\.", "mid.attn_1.v."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
        (r"conv_shortcut\.", "nin_shortcut."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def fake_sd_checkpoint(vae, levels):
    ldm = {}
    for k, v in vae.state_dict().items():
        name = diffusers_to_ldm(k, levels)
        if name.split(".")[-2] in ("q", "k", "v", "proj_out") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM attention projections are 1x1 convs
        ldm["first_stage_model." + name] = v.clone()
    return {"state_dict": {**ldm, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}}


def test_sd_vae_ldm_checkpoint_loads_strictly(tmp_path):
    from vcomp.model.autoencoder import build_kl_vae, sd21_vae_config
    from vcomp.weights.sd_vae import ldm_vae_to_diffusers, load_sd_vae

    config = sd21_vae_config(**SMALL_VAE)
    torch.manual_seed(0)
    vae = build_kl_vae(config).eval()
    ckpt = fake_sd_checkpoint(vae, levels=2)
    assert "first_stage_model.decoder.up.1.upsample.conv.weight" in ckpt["state_dict"]  # reversed up blocks
    assert ckpt["state_dict"]["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    path = tmp_path / "v2-1_512-ema-pruned.ckpt"
    torch.save(ckpt, path)

    ae = load_sd_vae(path, config=config, chunk=3)
    for k, v in vae.state_dict().items():
        assert torch.equal(ae.vae.state_dict()[k], v), k
    assert ae.factor == 2 and ae.latent_channels == 4 and ae.scaling_factor == pytest.approx(0.18215)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.inference_mode():
        latent = ae.encode(video)
        assert latent.shape == (1, 4, 5, 8, 8)
        frame = video[:, :, 2]
        expected = vae.encode(frame).latent_dist.mean * 0.18215
        torch.testing.assert_close(latent[:, :, 2], expected, rtol=1e-4, atol=1e-5)
        assert ae.decode(latent).shape == video.shape

    # cross-check against diffusers' own converter, when this diffusers version has one
    try:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    except ImportError:
        convert_ldm_vae_checkpoint = None
    if convert_ldm_vae_checkpoint is not None:
        theirs = convert_ldm_vae_checkpoint(dict(ckpt["state_dict"]), dict(config))
        ldm = {k.removeprefix("first_stage_model."): v for k, v in ckpt["state_dict"].items()
               if k.startswith("first_stage_model.")}
        ours = ldm_vae_to_diffusers(ldm)
        assert sorted(ours) == sorted(theirs)
        for k in ours:
            assert torch.equal(ours[k], theirs[k].reshape(ours[k].shape)), k


def test_sd_vae_mismatches_are_named(tmp_path):
    from vcomp.model.autoencoder import build_kl_vae, sd21_vae_config
    from vcomp.weights.sd_vae import load_sd_vae

    config = sd21_vae_config(**SMALL_VAE)
    ckpt = fake_sd_checkpoint(build_kl_vae(config), levels=2)
    sd = ckpt["state_dict"]
    del sd["first_stage_model.decoder.conv_out.bias"]
    sd["first_stage_model.encoder.conv_in.weight"] = torch.zeros(5, 3, 3, 3)
    path = tmp_path / "v2-1_512-ema-pruned.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(WeightsError) as err:
        load_sd_vae(path, config=config)
    msg = str(err.value)
    assert "decoder.conv_out.bias" in msg and "encoder.conv_in.weight" in msg and str(path) in msg

    sd["first_stage_model.encoder.mystery.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(WeightsError, match="encoder.mystery.weight"):
        load_sd_vae(path, config=config)

    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, path)
    with pytest.raises(WeightsError, match="no VAE weights"):
        load_sd_vae(path, config=config)


def test_kl_autoencoder_on_meta_has_sd21_shapes():
    from vcomp.model.autoencoder import build_kl_vae

    vae = build_kl_vae(device="meta")
    sd = vae.state_dict()
    assert sd["encoder.conv_in.weight"].shape == (128, 3, 3, 3)
    assert sd["decoder.up_blocks.0.resnets.0.conv1.weight"].shape == (512, 512, 3, 3)
    assert sd["quant_conv.weight"].shape == (8, 8, 1, 1)
    assert vae.config.scaling_factor == pytest.approx(0.18215)


def test_pixel_unshuffle_autoencoder_roundtrip():
    from vcomp.model.autoencoder import PixelUnshuffleAutoencoder

    ae = PixelUnshuffleAutoencoder(4)
    video = torch.rand(2, 3, 3, 64, 32) * 2 - 1
    latent = ae.encode(video)
    assert latent.shape == (2, 48, 3, 16, 8)
    assert torch.equal(ae.decode(latent), video)
    with pytest.raises(ValueError, match="multiples of 4"):
        ae.encode(video[..., :30])


# ---------------------------------------------------------------- OpenCLIP (a tiny config, same code path)


def test_openclip_text_is_penultimate_layer_then_ln_final(tmp_path):
    import json

    import open_clip

    from vcomp.weights.official import load_openclip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3}}
    (tmp_path / "vcomp-test-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "vcomp-test-clip.json")
    torch.manual_seed(0)
    ref = open_clip.create_model("vcomp-test-clip").eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), path)

    emb = load_openclip(path, towers=("text", "image"), model_name="vcomp-test-clip")
    with torch.inference_mode():
        tokens = emb.encode_text(["a red ball", ""])
        x = ref.token_embedding(open_clip.tokenize(["a red ball", ""])) + ref.positional_embedding
        for block in ref.transformer.resblocks[:-1]:
            x = block(x, attn_mask=ref.attn_mask)
        torch.testing.assert_close(tokens, ref.ln_final(x))
        pixels = emb.preprocess(torch.randint(0, 255, (40, 60, 3), dtype=torch.uint8).numpy(), size=32)
        torch.testing.assert_close(emb.encode_image(pixels), ref.encode_image(pixels))
    assert tokens.shape == (2, 77, 32)
    text_only = load_openclip(path, model_name="vcomp-test-clip")
    assert not hasattr(text_only.clip, "visual")

    sd = ref.state_dict()
    sd["ln_final.weight"] = torch.zeros(5)
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="ln_final.weight"):
        load_openclip(path, model_name="vcomp-test-clip")



def test_a_weights_folder_holding_an_exported_embedded_model_runs_that_model(tmp_path, monkeypatch):
    """`--weights my_export/` (a `vcomp train --export` folder) must run that model, not fall back
    to the shipped one without a word."""
    from vcomp.pipeline import Pipeline
    from vcomp.weights.embedded import random_embedded, save_embedded

    monkeypatch.delenv(files.ASSETS_ENV, raising=False)
    emb = random_embedded(seed=2)
    export = tmp_path / "export"
    save_embedded(export, emb.unet, emb.text_encoder, autoencoder=emb.autoencoder)
    preset, reason = files.resolve_preset(export)
    assert preset == "tiny" and str(export) in reason
    listed = {f["key"]: f for f in files.inventory(export)["files"]}
    assert listed["embedded"]["path"] == str(export / files.EMBEDDED_WEIGHTS)
    pipe = Pipeline.load(export, device="cpu")
    assert pipe.weights["embedded"] == str(export / files.EMBEDDED_WEIGHTS)
    # an explicit assets folder still wins
    assert files.assets_for(export, tmp_path / "other") == tmp_path / "other"
