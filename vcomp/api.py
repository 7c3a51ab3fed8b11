"""The Python API shared by the CLI and library users.

    from vcomp import api
    result = api.extract("clip.mp4", "conds/", conditions="motion,depth", size=(256, 256))
    cs = api.load_conditions("conds/")
"""

from __future__ import annotations

from vcomp.conditions.condition_set import ConditionSet
from vcomp.extract import DEFAULT_CONDITIONS, ExtractResult, extract
from vcomp.io import Sampling

load_conditions = ConditionSet.load

__all__ = ["DEFAULT_CONDITIONS", "ConditionSet", "ExtractResult", "Sampling", "extract", "load_conditions"]
