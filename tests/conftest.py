"""Test isolation: no test sees the developer's published weights (~/.cache/vcomp) or the
embedded model shipped in vcomp/assets, so the suite behaves the same on every machine; tests
that need a model use a randomly initialised one (VCOMP_ALLOW_RANDOM=1) or build their own."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_weights(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("VCOMP_HOME", str(tmp_path_factory.mktemp("vcomp-home")))
    monkeypatch.setenv("VCOMP_ASSETS", str(tmp_path_factory.mktemp("no-embedded-model")))
