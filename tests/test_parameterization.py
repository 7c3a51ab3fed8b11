"""vcomp.engine.parameterization: eps and v predictions, and the engine's conversion to eps."""

from __future__ import annotations

import types

import pytest
import torch

from vcomp.engine import Branch, denoise, get_scheduler, make_eps_fn
from vcomp.engine.parameterization import min_snr_weights, schedule_alphas_cumprod, target, to_eps, to_x0

AB = schedule_alphas_cumprod()  # the published schedule


def _sample(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 48, 4, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([5, 500, 990])[:b]
    ab = AB.float()[t].reshape(-1, 1, 1, 1, 1)
    return x0, noise, t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def test_a_perfect_v_prediction_gives_the_exact_noise():
    x0, noise, t, x_t = _sample()
    v = target(x0, noise, t, "v", AB)
    assert not torch.allclose(v, noise, atol=0.1)  # v is not eps ...
    assert torch.allclose(to_eps(v, x_t, t, "v", AB), noise, atol=1e-5)  # ... but converts to it
    assert torch.equal(target(x0, noise, t, "eps", AB), noise)
    assert torch.equal(to_eps(noise, x_t, t, "eps", AB), noise)
    with pytest.raises(ValueError, match="unknown prediction"):
        to_eps(v, x_t, t, "x0", AB)


def test_to_x0_gives_back_the_clean_sample_of_a_perfect_prediction():
    x0, noise, t, x_t = _sample()
    for kind in ("v", "eps"):
        assert torch.allclose(to_x0(target(x0, noise, t, kind, AB), x_t, t, kind, AB), x0, atol=2e-3)
    wrong = to_x0(target(x0, noise, t, "v", AB) + 0.1, x_t, t, "v", AB)
    assert not torch.allclose(wrong, x0, atol=0.05)
    with pytest.raises(ValueError, match="unknown prediction"):
        to_x0(noise, x_t, t, "x0", AB)


def test_v_error_reaches_x0_unamplified_at_high_noise():
    """The reason the embedded model predicts v: the same prediction error costs ~14x less in x0."""
    x0, noise, t, x_t = _sample()
    err = 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    ab = AB.float()[t].reshape(-1, 1, 1, 1, 1)

    def x0_error(eps_hat):
        return ((x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt() - x0).abs().mean(dim=(1, 2, 3, 4))

    via_eps = x0_error(noise + err)
    via_v = x0_error(to_eps(target(x0, noise, t, "v", AB) + err, x_t, t, "v", AB))
    assert via_eps[2] > 10 * via_v[2]  # t = 990
    assert torch.allclose(via_eps[0], via_v[0], rtol=0.1)  # t = 5: about the same


def test_min_snr_weights_weigh_the_x0_error_alike():
    t = torch.tensor([1, 100, 400, 999])
    ab = AB.float()
    snr = ab[t] / (1 - ab[t])
    w_eps, w_v = min_snr_weights(ab, t, 5.0, "eps"), min_snr_weights(ab, t, 5.0, "v")
    assert torch.allclose(w_eps * snr, w_v * (snr + 1), rtol=1e-4)
    assert torch.equal(min_snr_weights(ab, t, None, "v"), torch.ones(4))


def test_snr_floor_raises_only_the_noisiest_steps():
    """clamp(SNR, floor, gamma) as the x0 weight: t = 900 (SNR 0.014) goes up to 1, t <= 400 keeps min-SNR."""
    t = torch.tensor([1, 100, 400, 900])
    ab = AB.float()
    snr = ab[t] / (1 - ab[t])
    plain, floored = min_snr_weights(ab, t, 5.0, "v"), min_snr_weights(ab, t, 5.0, "v", floor=0.5)
    assert torch.equal(plain[:3], floored[:3])  # SNR >= 0.5 there
    assert floored[3] * (snr[3] + 1) == pytest.approx(0.5, rel=1e-4)
    assert floored[3] > 30 * plain[3]
    with pytest.raises(ValueError, match="floor"):
        min_snr_weights(ab, t, None, "v", floor=1.0)
    with pytest.raises(ValueError, match="floor"):
        min_snr_weights(ab, t, 5.0, "v", floor=6.0)


class OracleV(torch.nn.Module):
    """Predicts the exact v of a known clean latent: a perfect v model for that latent."""

    def __init__(self, x0, alphas_cumprod=None):
        super().__init__()
        self.x0, self.cfg = x0, types.SimpleNamespace(prediction="v")
        self.ab = AB if alphas_cumprod is None else alphas_cumprod

    def forward(self, x, t, context=None, style=None, cond_features=None):
        ab = self.ab.float()[t.long()].reshape(-1, 1, 1, 1, 1)
        noise = (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        return target(self.x0.expand_as(x), noise, t, "v", self.ab)


def test_engine_samples_a_v_model_to_its_clean_latent():
    x0, _, _, _ = _sample(b=1)
    start = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    ctx = torch.zeros(1, 2, 8)
    eps_fn = make_eps_fn(OracleV(x0), Branch(ctx), Branch(ctx), guidance=9.0)
    out = denoise(eps_fn, start, get_scheduler(10))
    # DDIM ends on alpha_bar[0] = 0.99915 (as published), so a trace of the noise (~0.03) remains
    assert (out - x0).abs().mean() < 0.05 < (start - x0).abs().mean()


def test_make_eps_fn_converts_on_the_schedule_the_model_names():
    """Without alphas_cumprod, a v model's output becomes eps on its own config's schedule: a
    zero-terminal-SNR model is not converted with the published schedule's coefficients."""
    x0, noise, _, _ = _sample(b=1)
    zero = schedule_alphas_cumprod(True)
    oracle = OracleV(x0, zero)
    oracle.cfg.zero_terminal_snr = True
    t = torch.tensor([700])
    ab = zero.float()[t].reshape(-1, 1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    branch = Branch(torch.zeros(1, 2, 8))
    assert torch.allclose(make_eps_fn(oracle, branch)(x_t, t), noise, atol=1e-4)
    oracle.cfg.zero_terminal_snr = False  # the same output read on the published schedule
    assert not torch.allclose(make_eps_fn(oracle, branch)(x_t, t), noise, atol=1e-2)


def test_a_zero_terminal_snr_schedule_samples_on_v_from_pure_noise():
    """At alpha_bar = 0 eps is x_t itself and says nothing of x0, so the engine hands the scheduler
    the guided v; an eps model cannot be sampled (or configured) so."""
    from vcomp.model.config import ModelConfig

    x0, _, _, _ = _sample(b=1)
    start = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    ctx = torch.zeros(1, 2, 8)
    scheduler = get_scheduler(10, zero_terminal_snr=True)
    oracle = OracleV(x0, scheduler.alphas_cumprod)
    out = denoise(make_eps_fn(oracle, Branch(ctx), Branch(ctx), 9.0, None, scheduler.alphas_cumprod, output="v"),
                  start, scheduler)
    assert (out - x0).abs().mean() < 0.05 < (start - x0).abs().mean()
    eps_model = types.SimpleNamespace(cfg=types.SimpleNamespace(prediction="eps"))
    with pytest.raises(ValueError, match="cannot give 'v'"):
        make_eps_fn(eps_model, Branch(ctx), output="v")
    with pytest.raises(ValueError, match="zero_terminal_snr needs prediction 'v'"):
        ModelConfig(zero_terminal_snr=True, prediction="eps")
