"""Load tensors from weight files without ever running code from them.

- `.safetensors`: `safetensors.torch.load_file` (a JSON header and raw bytes; no pickle at all).
- anything else (`.pth`, `.ckpt`, `.bin`): `torch.load(path, map_location="cpu", weights_only=True)`,
  memory-mapped when the file is in the zip format (big checkpoints then cost no RAM up front).
  `weights_only=True` only rebuilds tensors and plain containers; a pickle that names any other
  callable is refused before anything runs, and reported as "contains code".

Every failure is a `WeightsError` that names the file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from vcomp.errors import WeightsError


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower()


def _unsupported_global(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if "unsupported global" in line.lower() or "unsupported operand" in line.lower():
            return line.strip().split(". Please use")[0]  # drop torch's advice to allowlist it
    return _first_line(exc)


def load_file(path: str | os.PathLike, what: str = "weights") -> object:
    """Everything in a weight file (usually a dict of tensors), loaded safely on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as st_load

        try:
            return st_load(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{what} file {path} is corrupt or truncated ({_first_line(exc)}); "
                               "re-download it") from None
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _refused(exc):
            raise WeightsError(
                f"refusing to load {path}: it contains code or objects other than tensors "
                f"({_unsupported_global(exc)}); only plain state dicts are loaded. If you trust the file, "
                f"convert it to {path.with_suffix('.safetensors').name} (vcomp prefers that name when present)"
            ) from None
        raise WeightsError(f"{what} file {path} is corrupt or truncated ({_first_line(exc)}); re-download it") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{what} file {path} is corrupt or truncated ({_first_line(exc)}); re-download it") from None


def state_dict_from(obj: object, path: str | os.PathLike, prefix: str | None = None,
                    what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint as a flat `{name: tensor}` dict.

    Unwraps a top-level `"state_dict"` (Lightning / LDM checkpoints) and a DataParallel
    `module.` prefix; with `prefix`, keeps only the keys that start with it (prefix removed).
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{what} file {path} holds a {type(obj).__name__}, not a state dict of tensors")
    sd = {str(k): v for k, v in obj.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if prefix is not None:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sd:
            raise WeightsError(f"{what} file {path} has no keys starting with {prefix!r}; is it the right file?")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{what} file {path}: entries that are not tensors: {', '.join(bad[:5])}")
    return sd


def load_state_dict(path: str | os.PathLike, prefix: str | None = None, what: str = "weights") -> dict[str, torch.Tensor]:
    """`load_file` + `state_dict_from`."""
    return state_dict_from(load_file(path, what), path, prefix, what)
