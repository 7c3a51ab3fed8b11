"""Where the CLI writes: results on stdout, progress and logs on stderr (Rich)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator

from rich.console import Console

_state = {"quiet": False}
err = Console(stderr=True, highlight=False, soft_wrap=True)


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def interactive() -> bool:
    """Progress bars only for a person watching: a TTY on stderr and no --quiet."""
    return not _state["quiet"] and err.is_terminal


def log(message: str) -> None:
    """A status line on stderr, for a person watching (hidden without a TTY or with --quiet)."""
    if interactive():
        err.print(message)


def print_json(obj) -> None:
    """The one JSON object of --json mode, on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def progress_bar(*extra_columns, transient: bool = True):
    """vcomp's Rich progress bar on stderr: description, bar, n/total, `extra_columns`, times."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=transient)


@contextlib.contextmanager
def progress(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """Yield `update(done, total)`; renders a Rich bar when interactive, nothing otherwise."""
    if not interactive():
        yield lambda done, total=None: None
        return
    with progress_bar() as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None = None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def warn(message: str) -> None:
    """A warning on stderr: shown without a TTY too, hidden only by --quiet."""
    if not _state["quiet"]:
        err.print(f"[yellow]warning:[/] {message}")


def is_quiet() -> bool:
    return _state["quiet"]
