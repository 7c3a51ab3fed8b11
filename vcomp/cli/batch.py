"""`vcomp batch`: run a JSON-lines file of jobs with one loaded pipeline (see docs/pipelines.md)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import typer

from vcomp.cli import console

EPILOG = """
Job file: one JSON object per line, "command" plus the command's argument and option names (dashes as underscores); relative paths are relative to the job file's folder. See docs/pipelines.md.\n
  {"command": "motion-transfer", "src": "a.mp4", "prompt": "a red circle", "output": "out/a.mp4", "seed": 1}\n
  {"command": "extract", "src": "b.mp4", "output": "conds/b", "conditions": "motion,depth"}\n
Examples:\n
  vcomp batch jobs.jsonl\n
  vcomp batch jobs.jsonl --shard 2/4 --skip-existing --json > report-2.json\n
  make-jobs.sh | vcomp batch - --quiet\n
Exit codes: 0 every job ok (or skipped), 4 some jobs failed (the others completed), 2 the job file cannot be read or has no jobs, 3 the model cannot be loaded, 130 interrupted.
"""


@contextlib.contextmanager
def _bars(total: int) -> Iterator[tuple]:
    """(job_done(k), job_started(label), step(done, total)): Rich bars on a TTY, no-ops otherwise."""
    if not console.interactive() or total == 0:
        noop = lambda *a, **k: None  # noqa: E731
        yield noop, noop, noop
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console.err, transient=True) as bar:
        jobs = bar.add_task("jobs", total=total)
        steps = bar.add_task("", total=None, visible=False)

        def job_done(k: int) -> None:
            bar.update(jobs, completed=k)
            bar.update(steps, visible=False)

        def job_started(label: str) -> None:
            bar.reset(steps, total=None, description=label[-50:], visible=True)

        def step(done: int, total: int | None = None) -> None:
            bar.update(steps, completed=done, total=total)

        yield job_done, job_started, step


def _say(text: str) -> None:
    console.err.print(text, markup=False, highlight=False)


def _job_line(k: int, n: int, result) -> str:
    job = result.job
    if result.status == "ok":
        return f"ok   {k}/{n} {job.output} {result.seconds:.1f} s"
    if result.status == "skipped":
        return f"skip {k}/{n} {job.output} (already done)"
    if result.status == "not run":
        return f"--   {k}/{n} line {job.line}: not run (--fail-fast)"
    return f"FAIL {k}/{n} line {job.line}: {result.error}"


def batch(
    ctx: typer.Context,
    jobs: str = typer.Argument(..., metavar="JOBS", help="Job file: JSON lines, one job per line; - reads stdin.", show_default=False),
    shard: str = typer.Option(None, "--shard", metavar="i/n", help="Run only shard i of n (1-based): jobs i, i+n, i+2n ... of the file, so n machines can split it."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Skip jobs whose outputs and OUT.json sidecars already exist (resume a batch)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed job (the rest are reported as not run)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (for every job)."),
    weights: Path = typer.Option(None, "--weights", help="Folder with published weights (or a `vcomp train --export` folder: that embedded model), for every job. Default: $VCOMP_HOME or ~/.cache/vcomp; without them the embedded model runs."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON report (every job's status, outputs, error, time; the counts) on stdout at the end."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only failures on stderr: no progress, ok lines, warnings or summary."),
) -> None:
    """Run many generate/extract jobs from a JSON-lines file with one loaded model.

    Each job is reported as it ends; a failed job never stops the others and leaves no output."""
    from vcomp import batch as b
    from vcomp.errors import BatchError

    console.set_quiet(quiet)
    debug = bool(ctx.find_root().params.get("debug")) or os.environ.get("VCOMP_DEBUG") == "1"
    started = time.perf_counter()
    spec = b.parse_shard(shard)
    all_jobs, _ = b.read_jobs(jobs)
    selected = b.select_shard(all_jobs, *spec) if spec else all_jobs
    n = len(selected)

    from vcomp import api

    pipeline, load_s = None, None
    if b.needs_pipeline(selected, skip_existing):
        t0 = time.perf_counter()
        with console.progress("loading model") as update:  # once, for every job; WeightsError = exit 3
            update(0, None)
            pipeline = api.load_pipeline(weights=weights, device=device)
        load_s = time.perf_counter() - t0

    warned: set[str] = set()
    with _bars(n) as (job_done, job_started, step):
        def on_start(k, job):
            job_started(f"{k}/{n} {job.output or f'line {job.line}'}")

        def on_result(k, result):
            if result.status == "failed" or not quiet:
                _say(_job_line(k, n, result))
            if debug and result.traceback and result.status == "failed":
                _say(result.traceback.rstrip())
            for note in result.warnings():
                if note not in warned:
                    warned.add(note)
                    console.warn(note if "model does not know" not in note else f"line {result.job.line}: {note}")
            job_done(k)

        done: list = []  # results so far, also when interrupted
        try:
            b.run_jobs(pipeline if pipeline is not None else lambda: api.load_pipeline(weights=weights, device=device),
                       selected, lambda k, r: (done.append(r), on_result(k, r)), weights=weights,
                       skip_existing=skip_existing, fail_fast=fail_fast, on_start=on_start, progress=step)
        except KeyboardInterrupt:
            counts = b.summary(done)
            _say(f"batch interrupted after {len(done)} of {n} jobs ({counts['ok']} ok, {counts['failed']} failed); "
                 "re-run with --skip-existing to resume")
            raise

    counts = b.summary(done)
    total_s = time.perf_counter() - started
    where = f", shard {spec[0]}/{spec[1]} of {len(all_jobs)}" if spec else ""
    if not quiet:
        parts = [f"{counts['ok']} ok", f"{counts['failed']} failed"]
        parts += [f"{counts[k]} {k.replace('_', ' ')}" for k in ("skipped", "not_run") if counts[k]]
        _say(f"batch: {', '.join(parts)} ({n} jobs{where}) in {total_s:.1f} s")
    if json_out:
        console.print_json({
            "jobs_file": jobs, "shard": f"{spec[0]}/{spec[1]}" if spec else None,
            "summary": counts,
            "timings": {"load": None if load_s is None else round(load_s, 3), "total": round(total_s, 3)},
            "pipeline": pipeline.describe() if pipeline is not None else None,
            "jobs": [r.to_dict() for r in done],
        })
    if counts["failed"]:
        lines = [str(r.job.line) for r in done if r.status == "failed"]
        shown = ", ".join(lines[:10]) + (", ..." if len(lines) > 10 else "")
        raise BatchError(f"{counts['failed']} of {n} jobs failed (line{'s' if len(lines) > 1 else ''} {shown}); "
                         "fix them and re-run with --skip-existing to run only what is missing")


def register(app: typer.Typer) -> None:
    app.command("batch", epilog=EPILOG)(batch)
