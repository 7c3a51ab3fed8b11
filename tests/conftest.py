"""Test isolation: no test sees the developer's published weights (~/.cache/vcomp) or the
embedded model shipped in vcomp/assets, so the suite behaves the same on every machine; tests
that need a model use a randomly initialised one (VCOMP_ALLOW_RANDOM=1) or build their own."""

from __future__ import annotations

import pytest
import torch


def _isolate(patch: pytest.MonkeyPatch, tmp_path_factory) -> None:
    patch.setenv("VCOMP_HOME", str(tmp_path_factory.mktemp("vcomp-home")))
    patch.setenv("VCOMP_ASSETS", str(tmp_path_factory.mktemp("no-embedded-model")))


@pytest.fixture(autouse=True, scope="session")
def isolated_session(tmp_path_factory):
    """For module- and session-scoped fixtures, which are built before any function-scoped one
    (a module's shared pipeline would otherwise load the shipped model)."""
    patch = pytest.MonkeyPatch()
    _isolate(patch, tmp_path_factory)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def isolated_weights(monkeypatch, tmp_path_factory):
    """Fresh, empty folders for every test."""
    _isolate(monkeypatch, tmp_path_factory)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`): the
    tiny model is fastest on one thread, and much faster on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Trainers set torch's thread count (the micro runs use one: on a busy 2-core VM two threads
    spin-wait on each other, 10x slower); put the process's setting back for the tests that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
