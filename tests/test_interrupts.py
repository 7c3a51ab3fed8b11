"""A training step finishes (weights, counter, log line) before Ctrl-C / SIGTERM is delivered."""

import os
import signal

import pytest

from vcomp.train.interrupts import deferred_interrupts


@pytest.fixture
def sigterm_raises():
    """SIGTERM raises KeyboardInterrupt, as the CLI sets it up."""

    def terminate(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, terminate)
    yield terminate
    signal.signal(signal.SIGTERM, old)


def test_a_signal_inside_the_block_is_delivered_when_the_block_ends(sigterm_raises):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("log line")
    assert done == ["log line"]
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_a_second_signal_is_delivered_at_once(sigterm_raises):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("never")
    assert done == []
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_no_signal_no_change(sigterm_raises):
    with deferred_interrupts():
        value = 1
    assert value == 1
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_a_one_module_trainer_saves_the_finished_step_on_ctrl_c(tmp_path, sigterm_raises):
    """Ctrl-C during a step of `vcomp train-autoencoder` (or a refiner): that step finishes, is
    logged and saved, then the run stops; nothing trained is lost."""
    import json
    from types import SimpleNamespace

    import torch

    from vcomp.train.module_loop import run_module_steps

    cfg = SimpleNamespace(steps=100, lr=1e-2, warmup=1, min_lr_ratio=0.1, log_every=1, ckpt_every=1000,
                          max_minutes=None)
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([weight], lr=1e-2)
    saved = []

    def loss_at(step):
        if step == 4:  # the fifth step: Ctrl-C arrives while its loss is computed
            os.kill(os.getpid(), signal.SIGTERM)  # (SIGINT may be ignored in a test worker)
        return weight.pow(2).sum(), {}

    with pytest.raises(KeyboardInterrupt):
        run_module_steps(cfg, 0, [weight], opt, loss_at, out=tmp_path, save=saved.append, evaluate=dict,
                         eval_every=1000, on_event=lambda *a: None)
    logged = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert saved == [5] and logged == [1, 2, 3, 4, 5]
