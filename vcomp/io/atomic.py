"""Atomic writes: every output appears complete or not at all.

Files are written to a hidden temp name in the target folder and renamed on success, so a crash,
Ctrl-C or full disk never leaves a partial or corrupt output behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vcomp.errors import InputError


def check_writable_target(path: str | os.PathLike, *, is_dir: bool = False,
                          replaceable: Callable[[Path], bool] | None = None) -> Path:
    """Fail early, with a fixable message, when `path` cannot be created.

    A folder output replaces an existing folder only if every entry in it is `replaceable`
    (e.g. a previous output of the same kind), so no unrelated file is ever deleted. Writability
    is probed by creating a temp file (permission bits alone say nothing for root)."""
    path = Path(path)
    if not is_dir and path.is_dir():
        raise InputError(f"output {path} is a directory: give a file name such as {path}/out.mp4")
    if is_dir and path.exists() and not path.is_dir():
        raise InputError(f"output {path} exists and is not a folder: choose another -o path")
    if is_dir and path.is_dir() and replaceable is not None and not all(replaceable(p) for p in path.iterdir()):
        raise InputError(f"output {path} is a folder with other files in it, which would be replaced; "
                         "give a new folder name")
    parent = path.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write to {parent}: {existing} is not a folder; choose another -o path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise InputError(f"cannot write to {parent}: {(exc.strerror or str(exc)).lower()}; "
                         "choose another -o path") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _friendly_os_error(exc: OSError, path: Path) -> InputError:
    if exc.errno == errno.ENOSPC:
        return InputError(f"no space left on the device while writing {path}: free some space or choose another -o path")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR):
        return InputError(f"cannot write {path}: {exc.strerror.lower()}; choose another -o path")
    return InputError(f"cannot write {path}: {exc.strerror or exc}; choose another -o path")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix); rename it to `path` when the block succeeds."""
    path = check_writable_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _friendly_os_error(exc, path) from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get normal permissions
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _friendly_os_error(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder beside `path`; swap it in place of `path` when the block succeeds.

    An existing folder at `path` is replaced only after the new one is complete.
    """
    path = check_writable_target(path, is_dir=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise _friendly_os_error(exc, path) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _friendly_os_error(exc, path) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)
