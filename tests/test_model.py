"""vcomp.model: the official UNet matches the published manifest; the tiny UNet runs on CPU."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path

import pytest
import torch

from vcomp.errors import InputError, WeightsError
from vcomp.model import count_parameters, create_model, get_config
from vcomp.model.config import CONDITION_CHANNELS, PRESETS, ModelConfig
from vcomp.model.loading import load_state_dict_strict
from vcomp.model.stc_encoder import module_names, stc_encode

OFFICIAL_PARAMS = 1_413_435_636
B, T, H, W = 2, 4, 8, 8  # batch, frames, latent grid (tiny: 4 px per latent cell -> 32 px)
PX = 32


def shared_dir() -> Path:
    return Path(os.environ.get("VCOMP_SHARED", Path(__file__).resolve().parents[2] / "shared"))


# ---------------------------------------------------------------- official (meta device)


@pytest.fixture(scope="module")
def official():
    return create_model("official", device="meta")


def test_official_state_dict_matches_manifest(official):
    path = shared_dir() / "reference" / "videocomposer_unet_keys.json"
    if not path.exists():
        pytest.skip(f"manifest not found at {path} (set VCOMP_SHARED)")
    manifest = json.loads(path.read_text())
    expected = {k: list(v) for k, v in manifest["state_dict"].items()}
    got = {k: list(v.shape) for k, v in official.state_dict().items()}
    assert list(got) == list(expected)  # same names, same order
    assert got == expected  # same shapes
    n = count_parameters(official)
    print(f"official UNet: {len(got)} keys, {n:,} parameters")
    assert len(got) == manifest["num_keys"] == 1574
    assert n == manifest["total_params"] == OFFICIAL_PARAMS
    assert all(p.is_meta for p in official.parameters())


def test_official_forward_shapes_on_meta(official):
    """Full-size wiring check without compute: published input sizes (latent 32^2,
    conditions at 384^2, motion at 256^2, local_image as one image)."""
    meta = dict(device="meta")
    conds = {n: torch.empty(1, c, 16, 384, 384, **meta) for n, c in CONDITION_CHANNELS.items()}
    conds["motion"] = torch.empty(1, 2, 16, 256, 256, **meta)
    conds["local_image"] = torch.empty(1, 3, 384, 384, **meta)
    with torch.inference_mode():
        out = official.eval()(
            torch.empty(1, 4, 16, 32, 32, **meta),
            torch.tensor([981], **meta),
            context=torch.empty(1, 77, 1024, **meta),
            style=torch.empty(1, 1, 1024, **meta),
            conditions=conds,
        )
    assert out.shape == (1, 4, 16, 32, 32)


def test_presets_and_config_roundtrip():
    assert set(PRESETS) == {"official", "tiny"}
    for cfg in PRESETS.values():
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert not PRESETS["official"].temporal_rel_pos_bias
    assert get_config("tiny", dim=64).dim == 64
    with pytest.raises(InputError, match="unknown model preset"):
        get_config("huge")


# ---------------------------------------------------------------- tiny (CPU)


def perturbed_tiny(seed: int = 0):
    """Tiny model whose zero-initialised layers are made non-zero (so every path matters)."""
    torch.manual_seed(seed)
    model = create_model("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    return perturbed_tiny()


def make_inputs(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_dim, T, H, W, generator=g)
    t = torch.tensor([10, 700])
    context = torch.randn(B, cfg.text_len, cfg.context_dim, generator=g)
    style = torch.randn(B, 1, cfg.style_dim, generator=g)
    conds = {name: torch.rand(B, c, T, PX, PX, generator=g) for name, c in CONDITION_CHANNELS.items()}
    conds["local_image"] = conds["local_image"][:, :, 0]  # one image: [B, 3, H, W]
    conds["single_sketch"] = conds["single_sketch"][:, :, :1]  # T = 1
    return x, t, context, style, conds


def test_tiny_size():
    model = create_model("tiny")
    n = count_parameters(model)
    print(f"tiny UNet: {n:,} parameters")
    assert 1_000_000 < n < 5_000_000


@pytest.mark.parametrize(
    "names",
    [(), *[(n,) for n in CONDITION_CHANNELS], tuple(CONDITION_CHANNELS)],
    ids=lambda names: "+".join(names) or "none",
)
def test_tiny_forward_shapes(tiny, names):
    x, t, context, style, conds = make_inputs(tiny.cfg)
    with torch.inference_mode():
        out = tiny(x, t, context, style, {n: conds[n] for n in names})
    assert out.shape == (B, tiny.cfg.out_dim, T, H, W)
    assert torch.isfinite(out).all()


def test_absent_condition_contributes_zero(tiny):
    """Definition: an absent (None / missing) condition adds exactly zero to the summed
    condition feature map, which is then concatenated to x_t."""
    x, t, context, style, conds = make_inputs(tiny.cfg)
    grid = (H, W)
    with torch.inference_mode():
        assert torch.equal(tiny.encode_conditions(None, B, T, grid), torch.zeros(B, 8, T, H, W))
        assert torch.equal(tiny.encode_conditions({"depth": None}, B, T, grid), torch.zeros(B, 8, T, H, W))
        # the sum: depth + motion == enc(depth) + enc(motion); motion=None == depth alone
        enc = {
            n: stc_encode(*(getattr(tiny, m) for m in module_names(n)), conds[n], T, grid) for n in ("depth", "motion")
        }
        both = tiny.encode_conditions({"depth": conds["depth"], "motion": conds["motion"]}, B, T, grid)
        torch.testing.assert_close(both, enc["depth"] + enc["motion"])
        depth_only = tiny.encode_conditions({"depth": conds["depth"], "motion": None}, B, T, grid)
        torch.testing.assert_close(depth_only, enc["depth"] + 0)
        # an all-zero *input* is not absent: its encoding is the conv biases, not zero
        zero_in = tiny.encode_conditions({"motion": torch.zeros_like(conds["motion"])}, B, T, grid)
        assert zero_in.abs().max() > 0

        # the same definition at the level of the UNet output
        ref = tiny(x, t, context, style, None)
        assert torch.equal(tiny(x, t, context, style, {"motion": None, "depth": None}), ref)
        zeros = torch.zeros(B, tiny.cfg.concat_dim, T, H, W)
        assert torch.equal(tiny(x, t, context, style, cond_features=zeros), ref)
        # precomputed features (computed once per sampling run) == passing the conditions
        some = {"depth": conds["depth"], "local_image": conds["local_image"]}
        feats = tiny.encode_conditions(some, B, T, grid)
        torch.testing.assert_close(tiny(x, t, context, style, cond_features=feats), tiny(x, t, context, style, some))


def test_single_image_is_broadcast_over_frames(tiny):
    _, _, _, _, conds = make_inputs(tiny.cfg)
    img = conds["local_image"]  # [B, 3, H, W]
    repeated = img[:, :, None].expand(-1, -1, T, -1, -1).contiguous()
    with torch.inference_mode():
        a = tiny.encode_conditions({"local_image": img}, B, T, (H, W))
        b = tiny.encode_conditions({"local_image": repeated}, B, T, (H, W))
        shared = tiny.encode_conditions({"local_image": img[:1]}, B, T, (H, W))  # batch 1
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(shared[1], a[0])


def test_single_frame_conditions_at_the_first_frame_only(tiny):
    """`single_frame_at="first"`: the first image and single sketch add their (broadcast) features
    at frame 0 and nothing elsewhere; a one-image video condition (depth) still covers every frame."""
    _, _, _, _, conds = make_inputs(tiny.cfg)
    first = create_model(dataclasses.replace(tiny.cfg, single_frame_at="first"))
    first.load_state_dict(tiny.state_dict())
    first.eval()
    depth_image = conds["depth"][:, :, 0]
    with torch.inference_mode():
        for name, value in (("local_image", conds["local_image"]), ("single_sketch", conds["single_sketch"])):
            every = tiny.encode_conditions({name: value}, B, T, (H, W))
            only = first.encode_conditions({name: value}, B, T, (H, W))
            torch.testing.assert_close(only[:, :, 0], every[:, :, 0])
            assert float(every[:, :, 1:].abs().max()) > 0
            assert float(only[:, :, 1:].abs().max()) == 0.0
        torch.testing.assert_close(first.encode_conditions({"depth": depth_image}, B, T, (H, W)),
                                   tiny.encode_conditions({"depth": depth_image}, B, T, (H, W)))
    with pytest.raises(ValueError, match="single_frame_at"):
        dataclasses.replace(tiny.cfg, single_frame_at="last")


@pytest.mark.parametrize("flag, key", [("temporal_frame_pos", ".frame_pos."),
                                       ("frame_index_embedding", "frame_embed."),
                                       ("text_coordinates", "text_coords.")])
def test_frame_positions_start_as_a_no_op_and_then_tell_frames_apart(tiny, flag, key):
    """`temporal_frame_pos`, `frame_index_embedding` and `text_coordinates` add zero-initialised
    modules: switched on for a trained model (loaded with `with_added_modules`) they compute exactly
    what the model did; once trained (here: perturbed) they change the output, frame by frame
    differently."""
    from vcomp.model.loading import with_added_modules

    cfg = dataclasses.replace(tiny.cfg, **{flag: True})
    grown = create_model(cfg).eval()
    with pytest.raises(WeightsError):
        load_state_dict_strict(grown, tiny.state_dict())  # the new keys are missing
    load_state_dict_strict(grown, with_added_modules(grown, tiny.state_dict()))
    added = [k for k in grown.state_dict() if k not in tiny.state_dict()]
    assert added and all(key in k for k in added)

    x, t, context, style, _ = make_inputs(tiny.cfg)
    with torch.inference_mode():
        before, same = tiny(x, t, context, style, {}), grown(x, t, context, style, {})
    assert torch.equal(before, same)
    with torch.no_grad():
        for name, p in grown.named_parameters():
            if key in name:
                p.add_(0.05 * torch.randn_like(p))
        change = grown(x, t, context, style, {}) - before
    per_frame = change.abs().mean((0, 1, 3, 4))
    assert per_frame.min() > 1e-3 and not torch.allclose(change[:, :, 0], change[:, :, 1], atol=1e-4)


def test_text_coordinates_learn_a_direction_at_first_order():
    """The caption x coordinates product is formed before the only zero-initialised map, so that
    map gets a gradient at once (no saddle), and one gradient step already makes two captions move
    a drawn blob opposite ways: the f*x feature's sign follows the caption."""
    from vcomp.model.blocks import COORDINATE_BASIS, TextCoordinates, clip_coordinates

    torch.manual_seed(0)
    frames, size = 8, 6
    module = TextCoordinates(context_dim=32, channels=4)
    left, right = torch.randn(1, 5, 32), torch.randn(1, 5, 32)
    with torch.no_grad():
        assert float(module(left, frames, size, size).abs().max()) == 0.0  # a no-op when added
    fx = clip_coordinates(frames, size, size)[COORDINATE_BASIS.index("f*x")]  # [F, H, W]
    # "left": the blob right of centre early and left late (-f*x); "right": the opposite
    goal = torch.stack([-fx, fx])[:, :, None].expand(-1, -1, 4, -1, -1).reshape(2 * frames, 4, size, size)
    loss = (module(torch.cat([left, right]), frames, size, size) - goal).pow(2).mean()
    loss.backward()
    assert float(module.weight.grad.abs().max()) > 0  # first order: the output map learns at once
    assert float(module.text.weight.grad.abs().max()) == 0.0  # (the caption map waits for it)
    with torch.no_grad():
        module.weight -= 10.0 * module.weight.grad
        out = module(torch.cat([left, right]), frames, size, size).view(2, frames, 4, size, size)
    slope = (out * fx[None, :, None]).sum((1, 2, 3, 4))  # projection on f*x
    assert float(slope[0]) < 0 < float(slope[1])


def test_temporal_text_attention_starts_as_a_no_op_and_then_reads_the_caption(tiny):
    """`temporal_text_attention` adds zero-initialised attention of the temporal tokens to the text:
    switched on for a trained model it computes exactly what the model did; once trained (here:
    perturbed) the caption changes the output through the temporal layers too."""
    from vcomp.model.loading import with_added_modules

    cfg = dataclasses.replace(tiny.cfg, temporal_text_attention=True)
    grown = create_model(cfg).eval()
    load_state_dict_strict(grown, with_added_modules(grown, tiny.state_dict()))
    added = [k for k in grown.state_dict() if k not in tiny.state_dict()]
    assert added and all(".text_attn." in k or ".text_norm." in k for k in added)
    owners = {type(grown.get_submodule(k.split(".text_")[0])).__name__ for k in added}
    assert owners == {"TemporalTransformer"}

    x, t, context, style, _ = make_inputs(tiny.cfg)
    other = torch.randn_like(context)
    with torch.inference_mode():
        assert torch.equal(tiny(x, t, context, style, {}), grown(x, t, context, style, {}))
        text_effect_before = tiny(x, t, other, style, {}) - tiny(x, t, context, style, {})
    with torch.no_grad():
        for name, p in grown.named_parameters():
            if ".text_attn.to_out" in name:
                p.add_(0.05 * torch.randn_like(p))
        text_effect = grown(x, t, other, style, {}) - grown(x, t, context, style, {})
    assert (text_effect - text_effect_before).abs().mean() > 1e-3


def test_style_and_text_change_output(tiny):
    x, t, context, style, conds = make_inputs(tiny.cfg)
    with torch.inference_mode():
        with_style = tiny(x, t, context, style, conds)
        without = tiny(x, t, context, None, conds)
        null_text = tiny(x, t, None, style, conds)
    assert not torch.allclose(with_style, without)
    assert not torch.allclose(with_style, null_text)


def test_condition_changes_output(tiny):
    x, t, context, style, conds = make_inputs(tiny.cfg)
    with torch.inference_mode():
        a = tiny(x, t, context, style, {"motion": conds["motion"]})
        b = tiny(x, t, context, style, {"motion": conds["motion"].flip(2)})
    assert not torch.allclose(a, b)


def test_deterministic_for_same_seed():
    m1, m2 = perturbed_tiny(seed=3), perturbed_tiny(seed=3)
    x, t, context, style, conds = make_inputs(m1.cfg)
    with torch.inference_mode():
        assert torch.equal(m1(x, t, context, style, conds), m2(x, t, context, style, conds))
    assert not torch.equal(next(perturbed_tiny(seed=4).parameters()), next(m1.parameters()))


def test_bad_inputs_raise_input_error(tiny):
    x, t, context, style, conds = make_inputs(tiny.cfg)
    with pytest.raises(InputError, match="canny"):
        tiny(x, t, context, style, {"canny": conds["sketch"]})
    with pytest.raises(InputError, match="depth"):
        tiny(x, t, context, style, {"depth": conds["motion"]})  # 2 channels, depth takes 1
    with pytest.raises(InputError, match="context"):
        tiny(x, t, context[..., :5], style)
    with pytest.raises(InputError, match="style"):
        tiny(x, t, context, style[..., :5])


def test_training_step_with_dropout_and_checkpointing():
    cfg = dataclasses.replace(get_config("tiny"), use_checkpoint=True, dropout=0.1)
    torch.manual_seed(0)
    model = create_model(cfg).train()
    x, t, context, style, conds = make_inputs(cfg)
    loss = (model(x, t, context, style, conds) - torch.randn_like(x)).square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.out[2].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- loading


def test_load_state_dict_strict_names_bad_keys():
    model = create_model("tiny")
    sd = dict(model.state_dict())
    missing = "out.2.bias"
    misshaped = "time_embed.0.weight"
    del sd[missing]
    sd[misshaped] = torch.zeros(3, 3)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as err:
        load_state_dict_strict(create_model("tiny"), sd)
    msg = str(err.value)
    assert missing in msg and misshaped in msg and "extra.weight" in msg
    assert "[3, 3]" in msg and "\n" not in msg


def test_load_state_dict_strict_truncates_and_roundtrips():
    src = perturbed_tiny(seed=5)
    with pytest.raises(WeightsError, match=r"more\)"):
        load_state_dict_strict(create_model("tiny"), {})
    # a meta-built model takes the loaded tensors as its parameters
    dst = load_state_dict_strict(create_model("tiny", device="meta"), src.state_dict())
    assert not any(p.is_meta for p in dst.parameters())
    x, t, context, style, conds = make_inputs(src.cfg)
    assert torch.equal(dst.zero_y, torch.zeros_like(src.zero_y))  # not in the state_dict
    with torch.inference_mode():
        assert torch.equal(dst.eval()(x, t, context, style, conds), src(x, t, context, style, conds))


def test_combinations_of_two_conditions_sum(tiny):
    """Fusion is a sum: any pair encodes to the sum of the singles."""
    _, _, _, _, conds = make_inputs(tiny.cfg)
    with torch.inference_mode():
        single = {n: tiny.encode_conditions({n: conds[n]}, B, T, (H, W)) for n in conds}
        for a, b in itertools.combinations(["depth", "masked", "single_sketch"], 2):
            pair = tiny.encode_conditions({a: conds[a], b: conds[b]}, B, T, (H, W))
            torch.testing.assert_close(pair, single[a] + single[b])


def test_attention_chunking_and_null_text(tiny):
    from vcomp.model.attention import set_attention_chunk_size

    x, t, context, style, conds = make_inputs(tiny.cfg)
    with torch.inference_mode():
        ref = tiny(x, t, None, style, conds)
        set_attention_chunk_size(3)
        try:
            chunked = tiny(x, t, None, style, conds)
        finally:
            set_attention_chunk_size(None)
        torch.testing.assert_close(chunked, ref)
        # the null text is what `context=None` means
        null = torch.randn(1, tiny.cfg.text_len, tiny.cfg.context_dim)
        old = tiny.zero_y.clone()
        tiny.set_null_text(null)
        try:
            torch.testing.assert_close(tiny(x, t, None, style, conds), tiny(x, t, null.expand(B, -1, -1), style, conds))
        finally:
            tiny.set_null_text(old)
        assert "zero_y" not in tiny.state_dict()


def test_fixed_pool_size_rejects_other_latent_sizes():
    cfg = get_config("tiny", stc_pool_size=32)  # fits an 8 x 8 latent only
    model = create_model(cfg).eval()
    x, t, context, style, conds = make_inputs(cfg)
    with torch.inference_mode():
        assert model(x, t, context, style, {"depth": conds["depth"]}).shape == x.shape
        with pytest.raises(InputError, match="stc_pool_size"):
            model(x[..., :4, :4], t, context, style, {"depth": conds["depth"]})


def test_style_scale_multiplies_the_style_embedding(tiny):
    """style_scale s on a model == the same weights at scale 1 fed s x the style; configs written
    before the field existed load with 1.0 (the published behaviour)."""
    from dataclasses import asdict, replace

    from vcomp.model.config import ModelConfig

    assert tiny.cfg.style_scale == 8.0
    x, t, context, style, _ = make_inputs(tiny.cfg)
    plain = create_model(replace(tiny.cfg, style_scale=1.0))
    plain.load_state_dict(tiny.state_dict())
    plain.eval()
    with torch.inference_mode():
        torch.testing.assert_close(tiny(x, t, context, style), plain(x, t, context, 8.0 * style))
        assert not torch.allclose(tiny(x, t, context, style), plain(x, t, context, style))
    old = {k: v for k, v in asdict(tiny.cfg).items() if k != "style_scale"}
    assert ModelConfig.from_dict(old).style_scale == 1.0


def test_latent_patch_folds_each_two_by_two_block_of_cells_into_channels():
    """latent_patch=2: the first convolution sees the latent's 2 x 2 blocks as channels (in
    pixel_unshuffle's order) beside the conditions on the halved grid, and the last one's output
    is unfolded the same way, so every latent cell gets its own prediction back in place."""
    cfg = get_config("tiny", latent_patch=2)
    model = create_model(cfg).eval()
    torch.nn.init.normal_(model.out[-1].weight, std=0.02)  # not the zero init: outputs differ per cell
    x, t, context, style, conds = make_inputs(cfg)
    assert model.condition_grid((H, W)) == (H // 2, W // 2)
    seen = {}
    first = model.input_blocks[0][0]
    first.register_forward_hook(lambda m, args, out: seen.update(x_in=args[0]))
    model.out.register_forward_hook(lambda m, args, out: seen.update(out=out))
    with torch.inference_mode():
        out = model(x, t, context, style, {"depth": conds["depth"]})
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert first.in_channels == 4 * cfg.in_dim + cfg.concat_dim
    frames = x.transpose(1, 2).reshape(B * T, cfg.in_dim, H, W)  # (b f) c h w, as the UNet runs
    folded = torch.nn.functional.pixel_unshuffle(frames, 2)
    assert torch.equal(seen["x_in"][:, : 4 * cfg.in_dim], folded)
    unfolded = torch.nn.functional.pixel_shuffle(seen["out"], 2).reshape(B, T, cfg.out_dim, H, W).transpose(1, 2)
    assert torch.equal(out, unfolded)
    # a cell moved within its block changes the prediction there: sub-cell position is not lost
    shifted = x.clone()
    shifted[..., 0, 0], shifted[..., 0, 1] = x[..., 0, 1], x[..., 0, 0]
    with torch.inference_mode():
        assert not torch.allclose(model(shifted, t, context, style)[..., :2, :2], model(x, t, context, style)[..., :2, :2])
    with pytest.raises(InputError, match="latent_patch"):
        model(x[..., :7, :7], t, context, style)  # an odd grid does not fold
    with pytest.raises(ValueError, match="latent_patch"):
        get_config("tiny", latent_patch=0)
