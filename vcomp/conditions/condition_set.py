"""The ConditionSet: every condition of one generation, with fixed layouts, plus metadata.

The same object comes out of `vcomp extract` (saved as a folder) and goes into every generator.
Arrays are numpy float32 so extraction never needs torch; model adapters convert them.

Layouts (T frames, H x W pixels of the clip):
    motion         [T, 2, H, W]  pixels per frame step, x then y; + = content moves right/down
                                 between frame t-1 and t; frame 0 is zeros
    depth          [T, 1, H, W]  in [0, 1], near = 1
    sketch         [T, 1, H, W]  in [0, 1], 1 = edge/stroke
    mask           [T, 1, H, W]  in {0, 1}, 1 = region to regenerate
    image          [3, H, W]     RGB in [0, 1] (appearance / first frame)
    single_sketch  [1, H, W]     in [0, 1], 1 = stroke
    style          [D]           image embedding (CLIP image tower, or the colour-statistics fallback)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vcomp.errors import InputError

TEMPORAL = ("motion", "depth", "sketch", "mask")
SPATIAL = ("image", "single_sketch")
NAMES = TEMPORAL + SPATIAL + ("style",)
CHANNELS = {"motion": 2, "depth": 1, "sketch": 1, "mask": 1, "image": 3, "single_sketch": 1}
TENSORS_FILE = "conditions.safetensors"
META_FILE = "meta.json"


@dataclass
class ConditionSet:
    """Named condition arrays (None = absent) and metadata (source, fps, size, frame indices,
    which extractor produced each condition)."""

    motion: np.ndarray | None = None
    depth: np.ndarray | None = None
    sketch: np.ndarray | None = None
    mask: np.ndarray | None = None
    image: np.ndarray | None = None
    single_sketch: np.ndarray | None = None
    style: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in NAMES:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.ascontiguousarray(value, dtype=np.float32))
        self.validate()

    # -- shape bookkeeping -------------------------------------------------------------
    def present(self) -> list[str]:
        """Names of the conditions that are set, in canonical order."""
        return [n for n in NAMES if getattr(self, n) is not None]

    def arrays(self) -> dict[str, np.ndarray]:
        return {n: getattr(self, n) for n in self.present()}

    @property
    def num_frames(self) -> int | None:
        counts = {getattr(self, n).shape[0] for n in TEMPORAL if getattr(self, n) is not None}
        return counts.pop() if counts else None

    @property
    def size(self) -> tuple[int, int] | None:
        """(W, H) shared by every spatial array."""
        for name in TEMPORAL + SPATIAL:
            value = getattr(self, name)
            if value is not None:
                return int(value.shape[-1]), int(value.shape[-2])
        return None

    def validate(self) -> None:
        """Raise InputError when a layout is wrong or frame counts / sizes disagree."""
        for name in TEMPORAL:
            value = getattr(self, name)
            if value is not None and (value.ndim != 4 or value.shape[1] != CHANNELS[name]):
                raise InputError(f"condition {name!r} must be [T,{CHANNELS[name]},H,W], got {list(value.shape)}")
        for name in SPATIAL:
            value = getattr(self, name)
            if value is not None and (value.ndim != 3 or value.shape[0] != CHANNELS[name]):
                raise InputError(f"condition {name!r} must be [{CHANNELS[name]},H,W], got {list(value.shape)}")
        if self.style is not None and self.style.ndim != 1:
            raise InputError(f"condition 'style' must be a 1-D embedding, got {list(self.style.shape)}")
        frames = {getattr(self, n).shape[0] for n in TEMPORAL if getattr(self, n) is not None}
        if len(frames) > 1:
            raise InputError(f"temporal conditions disagree on frame count: {sorted(frames)}")
        sizes = {tuple(getattr(self, n).shape[-2:]) for n in TEMPORAL + SPATIAL if getattr(self, n) is not None}
        if len(sizes) > 1:
            raise InputError(f"conditions disagree on size (H, W): {sorted(sizes)}")

    def replace(self, **changes) -> ConditionSet:
        """A copy with some conditions (or meta) changed; None removes a condition."""
        return dataclasses.replace(self, **changes)

    def select(self, names) -> ConditionSet:
        """A copy keeping only `names` (unknown names are an InputError)."""
        names = parse_names(names)
        return self.replace(**{n: (getattr(self, n) if n in names else None) for n in NAMES})

    def describe(self) -> dict:
        """Shapes, value ranges and extractors, for --json output and logs."""
        extractors = self.meta.get("extractors", {})
        return {
            name: {"shape": list(value.shape), "min": float(value.min()) if value.size else 0.0,
                   "max": float(value.max()) if value.size else 0.0,
                   "extractor": extractors.get(name)}
            for name, value in self.arrays().items()
        }

    # -- disk format ---------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write `conditions.safetensors` + `meta.json` into an existing folder."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        save_file(self.arrays(), str(folder / TENSORS_FILE))
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ConditionSet:
        """Read a folder written by `save` / `vcomp extract` (validated)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        tensors_path = folder / TENSORS_FILE
        if not tensors_path.is_file():
            raise InputError(f"{folder} is not a conditions folder (no {TENSORS_FILE}); create one with `vcomp extract SRC -o {folder}`")
        try:
            arrays = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{tensors_path} is corrupt ({exc}); re-run `vcomp extract`") from None
        unknown = sorted(set(arrays) - set(NAMES))
        if unknown:
            raise InputError(f"{tensors_path} has unknown conditions {unknown}; expected names among {list(NAMES)}")
        meta_path = folder / META_FILE
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta_path} is not valid JSON ({exc}); re-run `vcomp extract`") from None
        return cls(**arrays, meta=meta)


def parse_names(names) -> list[str]:
    """'motion,depth' or a list -> validated canonical names (InputError on unknown ones)."""
    if isinstance(names, str):
        names = [n for n in names.replace(" ", ",").split(",") if n]
    names = [n.strip().lower().replace("-", "_") for n in names]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise InputError(f"unknown condition {unknown[0]!r}; choose from {', '.join(NAMES)}")
    return [n for n in NAMES if n in names]
