"""The Python API shared by the CLI and library users.

    from vcomp import api
    result = api.extract("clip.mp4", "conds/", conditions="motion,depth", size=(256, 256))
    cs = api.load_conditions("conds/")
"""

from __future__ import annotations

import functools
import os

from vcomp.conditions.condition_set import ConditionSet
from vcomp.extract import DEFAULT_CONDITIONS, ExtractResult, extract
from vcomp.generate import GenerateOptions
from vcomp.io import Sampling

load_conditions = ConditionSet.load


@functools.lru_cache(maxsize=4)
def _cached_pipeline(weights: str | None, device: str, preset: str | None, dtype: str | None):
    from vcomp.pipeline import Pipeline

    return Pipeline.load(weights_dir=weights, device=device, preset=preset, dtype=dtype)


def load_pipeline(weights: str | os.PathLike | None = None, device: str = "auto", preset: str | None = None,
                  dtype: str | None = None):
    """The generation pipeline (official weights if found, else the embedded model), loaded once
    per (weights, device, preset, dtype) and reused by later calls, batch jobs included."""
    return _cached_pipeline(None if weights is None else str(weights), str(device), preset, dtype)


def run_command(name: str, pipeline=None, **kwargs) -> dict:
    """Run a generating command by name (`t2v`, `motion-transfer`, `inpaint`, `translate`,
    `stylize`) with its CLI option names as keywords; returns the sidecar record."""
    from vcomp.commands import COMMANDS
    from vcomp.errors import InputError

    if name not in COMMANDS:
        raise InputError(f"unknown command {name!r}; choose from {', '.join(COMMANDS)}")
    if pipeline is None:
        pipeline = load_pipeline(kwargs.get("weights"), kwargs.pop("device", "auto"))
    return COMMANDS[name](pipeline, **kwargs)


__all__ = ["DEFAULT_CONDITIONS", "ConditionSet", "ExtractResult", "GenerateOptions", "Sampling", "extract",
           "load_conditions", "load_pipeline", "run_command"]
