"""The `vcomp` command line: a thin Typer layer over `vcomp.api`.

Exit codes: 0 ok, 1 internal error, 2 bad input or usage, 3 missing or invalid weights,
4 some jobs of a batch failed, 130 interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

import typer

from vcomp import __version__

app = typer.Typer(
    name="vcomp",
    help="Compositional video synthesis and editing (VideoComposer) from the command line.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vcomp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Compositional video synthesis and editing (VideoComposer) from the command line."""


def _register() -> None:
    from vcomp.cli import batch, eval, extract, generate, models, train

    extract.register(app)
    generate.register(app)
    batch.register(app)
    models.register(app)
    train.register(app)
    eval.register(app)


def _terminate(signum, frame):  # SIGTERM behaves like Ctrl-C: temp files are cleaned up
    raise KeyboardInterrupt


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's usage errors (Typer may vendor its own copy of click)."""
    types = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            types.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn known errors into one line and an exit code."""
    from vcomp.errors import VcompError

    usage_errors = _usage_error_types()

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VCOMP_DEBUG") == "1"
    signal.signal(signal.SIGTERM, _terminate)
    # the CLI reports unknown words itself (as one warning line, hidden by --quiet)
    warnings.filterwarnings("ignore", message="words not in the embedded model's vocabulary")
    _register()
    try:
        result = app(args=argv, prog_name="vcomp", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except usage_errors as exc:
        exc.show()
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except VcompError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: {exc}\n")
        code = exc.exit_code
    except Exception as exc:  # a bug, not a user mistake
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc} "
                         "(re-run with --debug for the traceback and please report it)\n")
        code = 1
    if code == 130:  # Ctrl-C / SIGTERM (Typer returns it as the exit code 130, older ones raised)
        sys.stderr.write("vcomp: interrupted; no partial output was written\n")
    return code


def run() -> None:
    sys.exit(main())
