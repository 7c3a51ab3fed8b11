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
