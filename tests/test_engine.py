"""vcomp.engine: DDIM settings, compositional guidance in one batch, determinism."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from vcomp.engine import (
    SCHEDULER_CONFIG,
    Branch,
    KnownRegion,
    denoise,
    draw_noise,
    get_noise,
    get_scheduler,
    guided_eps,
    make_eps_fn,
    scheduler_config,
    share_across_frames,
    stack_branches,
)
from vcomp.model import create_model, get_config

B, T, H, W = 1, 4, 8, 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model(get_config("tiny"))
    with torch.no_grad():  # make the zero-initialised output layers matter
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x, t, **kwargs):
        self.batches.append(x.shape[0])
        return self.inner(x, t, **kwargs)


def branches(model, seed=1):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(1, 1, T, 4 * H, 4 * W, generator=g)
    with torch.inference_mode():
        feats = model.encode_conditions({"depth": depth}, 1, T, (H, W))
    text = torch.randn(1, cfg.text_len, cfg.context_dim, generator=g)
    null = torch.randn(1, cfg.text_len, cfg.context_dim, generator=g)
    style = torch.randn(1, 1, cfg.style_dim, generator=g)
    cond = Branch(text, style, feats)
    uncond = Branch(null, torch.zeros_like(style), feats)
    return cond, uncond


def test_scheduler_matches_published_ddim():
    s = get_scheduler(50)
    cfg = s.config
    for key, value in SCHEDULER_CONFIG.items():
        assert cfg[key] == value, key
    assert [int(t) for t in s.timesteps] == list(range(981, 0, -20))  # 981, 961, ..., 1 as published
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(s.betas.double(), betas, rtol=1e-6, atol=1e-9)
    assert float(s.final_alpha_cumprod) == pytest.approx(float(s.alphas_cumprod[0]))  # last step -> alpha_bar[0]
    assert [int(t) for t in get_scheduler(10).timesteps][:2] == [901, 801]
    with pytest.raises(ValueError):
        get_scheduler(0)


def test_zero_terminal_snr_scheduler_reaches_pure_noise_and_starts_there():
    """The zero-SNR variant: alpha_bar(999) = 0 (the published schedule keeps 0.0047 of the clip's
    power there), trailing steps from t = 999, a scheduler that steps on v; the published one is unchanged."""
    zero, published = get_scheduler(20, zero_terminal_snr=True), get_scheduler(20)
    assert float(published.alphas_cumprod[-1]) == pytest.approx(0.00466, rel=0.01)
    assert float(zero.alphas_cumprod[-1]) == 0.0
    assert float(zero.alphas_cumprod[0]) == pytest.approx(float(published.alphas_cumprod[0]), rel=1e-4)
    assert bool((zero.alphas_cumprod[1:] < published.alphas_cumprod[1:]).all())  # more noise at every t > 0
    assert [int(t) for t in zero.timesteps][:2] == [999, 949] and int(zero.timesteps[-1]) == 49
    assert zero.config.prediction_type == "v_prediction"
    assert dict(published.config)["timestep_spacing"] == "leading" and published.config.prediction_type == "epsilon"
    assert scheduler_config(True)["rescale_betas_zero_snr"] and "rescale_betas_zero_snr" not in scheduler_config()


def test_ddim_step_is_the_eta0_formula():
    s = get_scheduler(50)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    t, t_prev = 981, 961
    a, a_prev = s.alphas_cumprod[t], s.alphas_cumprod[t_prev]
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    got = s.step(eps, torch.tensor(t), x, eta=0.0, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_noise_is_seeded_on_cpu():
    a = get_noise((1, 48, T, H, W), seed=7)
    assert torch.equal(a, get_noise((1, 48, T, H, W), seed=7))
    assert not torch.equal(a, get_noise((1, 48, T, H, W), seed=8))
    assert a.dtype == torch.float32 and a.device.type == "cpu"


def test_shared_noise_correlates_frames_and_keeps_unit_variance():
    shape = (2, 8, 16, 16, 16)
    iid = get_noise(shape, seed=3)
    mixed = get_noise(shape, seed=3, shared=0.5)
    # shared 0 is the old stream exactly: models without the prior sample the same noise as before
    assert torch.equal(iid, get_noise(shape, seed=3, shared=0.0))
    assert torch.equal(iid, draw_noise(shape, torch.Generator().manual_seed(3)))

    def frame_corr(x):  # mean correlation of frame 0 with the other frames
        f = x.transpose(1, 2).reshape(shape[0], shape[2], -1)
        f = (f - f.mean(-1, keepdim=True)) / f.std(-1, keepdim=True)
        return float((f[:, :1] * f[:, 1:]).mean(-1).mean())

    assert abs(frame_corr(iid)) < 0.03
    assert frame_corr(mixed) == pytest.approx(0.5, abs=0.05)
    assert float(mixed.std()) == pytest.approx(1.0, abs=0.02)
    # the same per-frame and common draws, mixed by the documented formula
    common = torch.randn(2, 8, 1, 16, 16)
    torch.testing.assert_close(share_across_frames(iid, common, 0.25), 0.75 ** 0.5 * iid + 0.5 * common)
    with pytest.raises(ValueError):
        share_across_frames(iid, common, 1.0)


def test_guided_eps_formula():
    u, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    torch.testing.assert_close(guided_eps(u, c, 9.0), u + 9.0 * (c - u))
    torch.testing.assert_close(guided_eps(u, c, 1.0), c)
    torch.testing.assert_close(guided_eps(u, c, 0.0), u)


def test_guidance_one_equals_conditional_pass(model):
    cond, uncond = branches(model)
    x = get_noise((B, model.cfg.in_dim, T, H, W), seed=3)
    t = torch.tensor(501)
    with torch.inference_mode():
        guided = make_eps_fn(model, cond, uncond, guidance=1.0)(x, t)
        plain = make_eps_fn(model, cond, None)(x, t)
        torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-5)
        # ... and over a whole (short) sampling run
        a = denoise(make_eps_fn(model, cond, uncond, 1.0), x, get_scheduler(3))
        b = denoise(make_eps_fn(model, cond, None), x, get_scheduler(3))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        # w != 1 really extrapolates
        assert not torch.allclose(make_eps_fn(model, cond, uncond, 9.0)(x, t), plain, atol=1e-4)


def test_guided_passes_run_as_one_batch(model):
    cond, uncond = branches(model)
    counting = CountingModel(model)
    x = get_noise((B, model.cfg.in_dim, T, H, W), seed=3)
    with torch.inference_mode():
        eps_fn = make_eps_fn(counting, cond, uncond, guidance=9.0)
        denoise(eps_fn, x, get_scheduler(3))
    assert counting.batches == [2 * B] * 3  # one call per step, uncond + cond stacked
    # the batched call equals two separate calls
    with torch.inference_mode():
        t = torch.tensor(701)
        e_u = model(x, t, context=uncond.context, style=uncond.style, cond_features=uncond.cond_features)
        e_c = model(x, t, context=cond.context, style=cond.style, cond_features=cond.cond_features)
        torch.testing.assert_close(eps_fn(x, t), guided_eps(e_u, e_c, 9.0), rtol=1e-4, atol=1e-4)


def test_stack_branches_fills_absent_features_with_zeros():
    feats = torch.ones(1, 8, T, H, W)
    stacked = stack_branches(Branch(torch.zeros(1, 2, 3)), Branch(torch.ones(1, 2, 3), cond_features=feats))
    assert stacked.context.shape == (2, 2, 3) and stacked.style is None
    assert torch.equal(stacked.cond_features[0], torch.zeros(8, T, H, W))
    with pytest.raises(ValueError, match="style"):
        stack_branches(Branch(style=torch.zeros(1, 1, 4)), Branch())


def test_same_seed_same_result_different_seed_different(model):
    cond, uncond = branches(model)
    eps_fn = make_eps_fn(model, cond, uncond, guidance=9.0)
    shape = (B, model.cfg.in_dim, T, H, W)
    steps = []

    def run(seed, eta=0.0):
        gen = torch.Generator().manual_seed(seed + 1) if eta else None
        with torch.inference_mode():
            return denoise(eps_fn, get_noise(shape, seed), get_scheduler(2), eta=eta, generator=gen,
                           callback=lambda done, total: steps.append((done, total)))

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert steps[:2] == [(1, 2), (2, 2)]
    assert torch.equal(run(0, eta=1.0), run(0, eta=1.0))  # stochastic DDIM is seeded too
    assert not torch.allclose(run(0, eta=1.0), a)


def test_known_region_is_kept(model):
    cond, _ = branches(model)
    shape = (B, model.cfg.in_dim, T, H, W)
    known_latent = torch.rand(shape) * 2 - 1
    keep = torch.zeros(1, 1, T, H, W)
    keep[..., : H // 2, :] = 1  # keep the top half
    noise = get_noise(shape, 5)
    with torch.inference_mode():
        out = denoise(make_eps_fn(model, cond), noise, get_scheduler(3), known=KnownRegion(known_latent, keep, noise))
    assert torch.equal(out[..., : H // 2, :], known_latent[..., : H // 2, :])
    assert not torch.allclose(out[..., H // 2 :, :], known_latent[..., H // 2 :, :])
    assert np.isfinite(out.numpy()).all()


def test_max_steps_is_the_most_ddim_steps_the_schedule_allows():
    from diffusers import DDIMScheduler

    from vcomp.engine.sampling import MAX_STEPS, SCHEDULER_CONFIG

    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    sched.set_timesteps(MAX_STEPS)
    assert int(sched.timesteps.max()) == 999 and len(set(sched.timesteps.tolist())) == MAX_STEPS
    sched.set_timesteps(MAX_STEPS + 1)  # stride 1: sampling would start at t = 501, far from pure noise
    assert int(sched.timesteps.max()) == MAX_STEPS + 1
    sched.set_timesteps(1000)
    assert int(sched.timesteps.max()) == 1000  # past alphas_cumprod's last index (999)


def test_bf16_flags_are_read_from_cpuinfo():
    from vcomp.train.cpu import cpuinfo_has_bf16

    zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
    skylake = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
    sapphire = "flags\t\t: avx512f amx_tile amx_bf16 amx_int8\nflags\t\t: \n"
    assert cpuinfo_has_bf16(zen4) and cpuinfo_has_bf16(sapphire)
    assert not cpuinfo_has_bf16(skylake)
    assert not cpuinfo_has_bf16("Features\t: fp asimd\n")  # no x86 flags line (ARM)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_applies_on_glibc_and_sampling_still_matches(model):
    """The allocator setting changes speed only: the same seed gives the same latent."""
    import platform

    from vcomp.train.cpu import keep_freed_memory

    cond, _ = branches(model)

    def run():
        with torch.inference_mode():
            return denoise(make_eps_fn(model, cond), get_noise((1, model.cfg.in_dim, T, H, W), seed=3),
                           get_scheduler(3))

    before = run()
    if platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True
    assert torch.equal(run(), before)


def test_prepare_cpu_training_flushes_subnormals_and_sets_threads():
    """Training processes flush subnormal floats to zero (they slowed a stage run 3x) and use
    the threads asked for; the test restores both settings for the tests after it."""
    from vcomp.train.cpu import prepare_cpu_training

    threads = torch.get_num_threads()
    torch.set_flush_denormal(False)  # torch's default (a trainer run in this process may have set it)
    assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() != 0.0  # a subnormal, kept
    try:
        prepare_cpu_training(1)
        assert torch.get_num_threads() == 1
        assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() == 0.0
        assert (torch.tensor([1e-30]) * torch.tensor([1e-7])).item() != 0.0  # normal values untouched
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
