"""`vcomp batch`: many jobs from a JSON-lines file, one pipeline.

    {"command": "motion-transfer", "src": "a.mp4", "prompt": "a red circle", "output": "out/a.mp4", "seed": 1}
    {"command": "extract", "src": "b.mp4", "output": "conds/b", "conditions": "motion,depth"}

One JSON object per line; blank lines and lines starting with `#` are ignored. `command` is a
generating command (`vcomp.commands.COMMANDS`) or `extract`; every other key is one of that
command's argument or option names (dashes may be written as underscores), checked against the
command function's signature. `output` is required (each job writes its own files). Relative
paths resolve against the job file's folder (the current folder for stdin).

The pieces, each usable on its own:
    parse_jobs(lines, base)       -> [Job]           (a bad line becomes a Job with `error` set)
    read_jobs(path_or_dash)       -> ([Job], base)   (InputError when the file itself is unusable)
    parse_shard("2/3"), select_shard(jobs, 2, 3)     (1-based: shard i of n takes jobs i, i+n, ...)
    is_done(job)                                     (--skip-existing: every output and OUT.json exist)
    run_jobs(pipeline, jobs, on_result, ...) -> [JobResult]   (one job's failure never stops the others)
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vcomp.errors import InputError, VcompError

#: keys whose values are file or folder paths (resolved against the job file's folder)
PATH_KEYS = frozenset({"src", "output", "image", "sketch", "style", "depth", "mask", "conditions"})
#: keys that take one value or a list (several prompts / sources / paths make several outputs)
LIST_KEYS = {"t2v": frozenset({"prompt", "path"}), "motion-transfer": frozenset({"src", "prompt"}),
             "extract": frozenset({"conditions"})}
#: parameters that are not job keys: the pipeline and its settings belong to the whole batch
BATCH_LEVEL = frozenset({"pipeline", "progress", "weights", "device", "log"})
#: sampling options that the generating commands take through **kwargs (see vcomp.commands._options)
SAMPLING_KEYS = ("seed", "steps", "guidance", "guide", "eta", "negative_prompt", "preview", "shape_guidance",
                "track_guidance", "motion_guidance")
EXAMPLE = '{"command": "t2v", "prompt": "a red circle moving right", "output": "out/a.mp4"}'


def extract_job(src, output, *, conditions=None, frames=None, stride=None, fps=None, start=0, size=None,
                mask=None, box=None, previews=True, weights=None, progress=None) -> dict:
    """An `extract` job: `vcomp.api.extract` with `vcomp extract`'s option names; its JSON report."""
    from vcomp import api
    from vcomp.io import parse_size

    sampling = api.Sampling(frames=frames, stride=stride, fps=fps, start=start)
    result = api.extract(src, output, conditions=conditions, sampling=sampling, size=parse_size(size),
                         mask=mask, box=box, previews=previews, weights_dir=weights, progress=progress)
    return result.to_dict()


def job_functions() -> dict[str, Callable[..., dict]]:
    """command name -> function(pipeline?, **job keys) -> record."""
    from vcomp.commands import COMMANDS

    return {**COMMANDS, "extract": extract_job}


def generating(command: str | None) -> bool:
    """Does this command need the pipeline (the model)?"""
    return command is not None and command != "extract"


_EMPTY = inspect.Parameter.empty


def job_keys(command: str) -> dict[str, object]:
    """The keys a job of `command` may have -> default (`inspect.Parameter.empty` = required)."""
    from vcomp import commands

    fn = job_functions()[command]
    keys: dict[str, object] = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in BATCH_LEVEL:
            continue
        if p.kind is p.VAR_KEYWORD:  # the sampling options, forwarded to commands._options
            defaults = inspect.signature(commands._options).parameters
            keys.update({k: defaults[k].default for k in SAMPLING_KEYS})
        elif p.kind is not p.VAR_POSITIONAL:
            keys[name] = p.default
    return keys


# -- parsing ---------------------------------------------------------------------------------
@dataclass
class Job:
    """One line of a job file: a runnable job, or (with `error`) why the line is not one."""

    line: int  # 1-based line number in the file
    command: str | None = None
    kwargs: dict = field(default_factory=dict)
    error: str | None = None
    number: int = 0  # 1-based position among the file's jobs (what --shard counts)

    @property
    def output(self) -> str | None:
        out = self.kwargs.get("output")
        return None if out is None else str(out)

    def outputs(self) -> list[Path]:
        """Every output this job writes: the videos (OUT-1.mp4 ... for several prompts/sources
        without --grid), or the extract folder."""
        from vcomp.generate import numbered

        if self.error or self.output is None:
            return []
        out = Path(self.output)
        count = 1
        if self.command in ("t2v", "motion-transfer") and not self.kwargs.get("grid"):
            prompts = _listed(self.kwargs.get("prompt"))
            motions = [] if self.kwargs.get("conditions") is not None else \
                _listed(self.kwargs.get("path" if self.command == "t2v" else "src"))
            count = max(1, len(prompts)) * max(1, len(motions))
        return [numbered(out, i, count) for i in range(count)]

    def files(self) -> list[Path]:
        """outputs() plus their contact sheets and JSON sidecars (generating jobs)."""
        from vcomp.generate import sidecar_paths

        if not generating(self.command):
            return self.outputs()
        return [p for out in self.outputs() for p in (out, *sidecar_paths(out))]


def _listed(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _kind(command: str, key: str, default) -> str:
    if key in LIST_KEYS.get(command, ()):
        return "texts"
    if key in PATH_KEYS and not (command == "extract" and key == "conditions"):
        return "text"
    if key == "size":
        return "size"
    if key == "fps":
        return "number"
    if key == "guide":
        return "texts"
    if key in ("frames", "stride") and default is None:
        return "int"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    return "text"


def _is_text(v) -> bool:
    return isinstance(v, str)


_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "text": (_is_text, "a string"),
    "texts": (lambda v: _is_text(v) or (isinstance(v, list) and bool(v) and all(map(_is_text, v))),
              "a string or a list of strings"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "size": (lambda v: _is_text(v) or (isinstance(v, list) and len(v) == 2
                                       and all(isinstance(x, int) and not isinstance(x, bool) for x in v)),
             '"WxH" or [W, H]'),
}


def _resolve(value: str, base: Path | None) -> str:
    path = Path(os.path.expanduser(value))
    return str(path if base is None or path.is_absolute() else base / path)


def parse_job(text: str, line: int, base: str | os.PathLike | None = None) -> Job:
    """One line -> a Job; problems set `error` (a one-line reason saying how to fix it)."""
    job = Job(line)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        job.error = f"invalid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line, e.g. {EXAMPLE}"
        return job
    if not isinstance(obj, dict):
        job.error = f"a job must be a JSON object, not {type(obj).__name__}; e.g. {EXAMPLE}"
        return job
    functions = job_functions()
    command = obj.pop("command", None)
    if not isinstance(command, str) or not command:
        job.error = f'no "command" (or not a string); add "command": one of {", ".join(functions)}'
        return job
    command = command.strip().lower().replace("_", "-")
    if command not in functions:
        job.error = f"unknown command {command!r}; choose from {', '.join(functions)}"
        return job
    job.command = command
    allowed = job_keys(command)
    kwargs = {str(k).replace("-", "_"): v for k, v in obj.items()}
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        batch_level = [k for k in unknown if k in BATCH_LEVEL]
        hint = (f" ({', '.join(batch_level)} is set for the whole batch: vcomp batch --{batch_level[0]})"
                if batch_level else "")
        job.error = (f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for {command}"
                     f"{hint}; allowed: {', '.join(allowed)}")
        return job
    missing = [k for k, d in allowed.items() if d is _EMPTY and kwargs.get(k) is None]
    if missing:
        job.error = (f"{command} job needs {', '.join(map(repr, missing))}, e.g. "
                     + ", ".join(f'"{k}": "..."' for k in missing))
        return job
    for key, value in kwargs.items():
        if value is None and allowed[key] is not _EMPTY:
            continue  # null = the default
        check, expected = _KINDS[_kind(command, key, allowed[key])]
        if not check(value):
            job.error = f"{key!r} must be {expected} (got {json.dumps(value)})"
            return job
    empty = [k for k, v in kwargs.items() if _kind(command, k, allowed[k]) == "text" and k in PATH_KEYS and v == ""]
    if empty:
        job.error = f"{empty[0]!r} is empty; give a path"
        return job
    if isinstance(kwargs.get("size"), list):
        kwargs["size"] = "{}x{}".format(*kwargs["size"])
    base = None if base is None else Path(base)
    for key in PATH_KEYS - ({"conditions"} if command == "extract" else set()):
        value = kwargs.get(key)
        if isinstance(value, str):
            kwargs[key] = _resolve(value, base)
        elif isinstance(value, list):
            kwargs[key] = [_resolve(v, base) for v in value]
    job.kwargs = kwargs
    return job


def parse_jobs(lines: Iterable[str], base: str | os.PathLike | None = None) -> list[Job]:
    """Every job of a job file (blank and `#` lines skipped), numbered; a job whose output is
    another job's output is an error (both would write the same files)."""
    jobs: list[Job] = []
    owners: dict[str, int] = {}
    for line_no, text in enumerate(lines, 1):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        job = parse_job(text, line_no, base)
        job.number = len(jobs) + 1
        for out in job.outputs():
            key = os.path.normcase(os.path.abspath(out))
            if key in owners and not job.error:
                job.error = f"output {out} is also written by line {owners[key]}; give each job its own output"
            owners.setdefault(key, line_no)
        jobs.append(job)
    return jobs


def read_jobs(source: str | os.PathLike, stdin=None) -> tuple[list[Job], Path]:
    """Read and parse a job file (`-` = stdin); (jobs, base folder). InputError (exit 2) when the
    file cannot be read or holds no jobs at all."""
    import sys

    name = str(source)
    try:
        if name == "-":
            base = Path(".")
            text = (stdin or sys.stdin).read()
        else:
            path = Path(source)
            if path.is_dir():
                raise InputError(f"job file {path} is a directory; give a .jsonl file with one JSON job per line")
            base = path.parent
            text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"job file {name}: no such file; check the path") from None
    except UnicodeDecodeError:
        raise InputError(f"job file {name} is not UTF-8 text; write one JSON job per line, e.g. {EXAMPLE}") from None
    except OSError as exc:
        raise InputError(f"cannot read job file {name}: {exc.strerror or exc}") from None
    jobs = parse_jobs(text.splitlines(), base)
    if not jobs:
        shown = "stdin" if name == "-" else f"job file {name}"
        raise InputError(f"{shown} has no jobs; write one JSON object per line, e.g. {EXAMPLE}")
    return jobs, base


# -- sharding and resuming -------------------------------------------------------------------
def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' (1-based: 1/2 and 2/2 are the two halves) -> (i, n); None passes through."""
    if text is None:
        return None
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r} is not i/n (e.g. --shard 1/4 for the first of four machines)") from None
    if n < 1 or not 1 <= i <= n:
        raise InputError(f"--shard {text!r}: i must be between 1 and n (shards are numbered from 1), e.g. 1/{max(n, 2)}")
    return i, n


def select_shard(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """Shard `index` of `count` (1-based): the jobs numbered index, index + count, ... Bad lines
    are counted too, so each one is reported by exactly one shard."""
    return [j for j in jobs if (j.number - 1) % count == index - 1]


def is_done(job: Job) -> bool:
    """Has this job already run (--skip-existing)? Every output exists, with its OUT.json
    sidecar (written last, so it marks a complete output); for extract, OUT/meta.json."""
    from vcomp.generate import sidecar_paths

    outputs = job.outputs()
    if not outputs:
        return False
    if generating(job.command):
        return all(out.exists() and sidecar_paths(out)[1].is_file() for out in outputs)
    return all((out / "meta.json").is_file() for out in outputs)


# -- running ---------------------------------------------------------------------------------
@dataclass
class JobResult:
    job: Job
    status: str  # "ok", "failed", "skipped" (already done) or "not run" (after --fail-fast)
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0  # what the same job would exit with on its own
    record: dict | None = None
    traceback: str | None = None  # for --debug

    def written(self) -> list[str]:
        """The files (or extract folder) this job wrote."""
        if self.record is None:
            return []
        if "tensors" in self.record:
            return [self.record["output"]]
        records = self.record["outputs"] if isinstance(self.record.get("outputs"), list) else [self.record]
        return [p for r in records for p in r["outputs"].values() if p]

    def warnings(self) -> list[str]:
        """Notes from the generation (e.g. a random model) and words the model does not know."""
        if self.record is None or "tensors" in self.record:
            return []
        records = self.record["outputs"] if isinstance(self.record.get("outputs"), list) else [self.record]
        gens = [g for r in records for g in r["generation"].get("grid", [{"generation": r["generation"]}])]
        notes = list(dict.fromkeys(n for g in gens for n in g["generation"].get("notes", [])))
        unknown = list(dict.fromkeys(w for g in gens for w in g["generation"].get("unknown_words") or []))
        return notes + ([f"words the model does not know (ignored): {', '.join(unknown)}"] if unknown else [])

    def to_dict(self) -> dict:
        return {"line": self.job.line, "number": self.job.number, "command": self.job.command,
                "status": self.status, "output": self.job.output, "written": self.written(),
                "error": self.error, "exit_code": self.exit_code, "seconds": round(self.seconds, 3)}


def _remove_new(paths: Sequence[Path], existed: set[Path]) -> None:
    """Remove the outputs a failed job created (files that were there before are left alone)."""
    for path in paths:
        if path in existed:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)


def _resolved(pipeline):
    """A pipeline, or a zero-argument function that returns one (called now)."""
    return pipeline() if callable(pipeline) and not hasattr(pipeline, "generate") else pipeline


def run_job(pipeline, job: Job, *, weights=None, progress=None) -> JobResult:
    """Run one job; its failure is a `failed` JobResult, never an exception (Ctrl-C excepted).
    A failed job leaves none of its outputs (atomic writes; a multi-output job's finished
    outputs are removed too)."""
    started = time.perf_counter()
    if job.error:
        return JobResult(job, "failed", 0.0, job.error, 2)
    files = job.files()
    existed = {p for p in files if p.exists()}
    kwargs = dict(job.kwargs)
    fn = job_functions()[job.command]
    try:
        if generating(job.command):
            record = fn(_resolved(pipeline), weights=weights, progress=progress, **kwargs)
        else:
            record = fn(weights=weights, progress=progress, **kwargs)
    except VcompError as exc:
        _remove_new(files, existed)
        return JobResult(job, "failed", time.perf_counter() - started, str(exc), exc.exit_code,
                         traceback=traceback.format_exc())
    except Exception as exc:  # a bug: reported for this job, the batch goes on
        _remove_new(files, existed)
        return JobResult(job, "failed", time.perf_counter() - started,
                         f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback "
                         "and please report it)", 1, traceback=traceback.format_exc())
    except BaseException:  # Ctrl-C / SIGTERM: nothing partial stays behind
        _remove_new(files, existed)
        raise
    return JobResult(job, "ok", time.perf_counter() - started, record=record)


def run_jobs(pipeline, jobs: Sequence[Job], on_result: Callable[[int, JobResult], None] | None = None, *,
             weights=None, skip_existing: bool = False, fail_fast: bool = False,
             on_start: Callable[[int, Job], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> list[JobResult]:
    """Run `jobs` in order with one pipeline (or a zero-argument function returning it, called
    only when a generating job runs). `on_result(k, result)` is called as each job ends (k is
    1-based). Errors of a job, even unexpected ones, fail that job only; with `fail_fast` the
    jobs after the first failure are `not run`."""
    results: list[JobResult] = []
    loaded: dict = {}

    def get_pipeline():  # load once; a load that failed fails every generating job the same way
        if "pipeline" not in loaded:
            try:
                loaded["pipeline"] = _resolved(pipeline)
            except VcompError as exc:
                loaded["pipeline"] = exc
        if isinstance(loaded["pipeline"], VcompError):
            raise loaded["pipeline"]
        return loaded["pipeline"]

    stop = False
    for k, job in enumerate(jobs, 1):
        if stop:
            result = JobResult(job, "not run", error="not run: an earlier job failed (--fail-fast)")
        elif skip_existing and not job.error and is_done(job):
            result = JobResult(job, "skipped")
        else:
            if on_start:
                on_start(k, job)
            result = run_job(get_pipeline, job, weights=weights, progress=progress)
            stop = fail_fast and result.status == "failed"
        results.append(result)
        if on_result:
            on_result(k, result)
    return results


def summary(results: Sequence[JobResult]) -> dict:
    counts = {"jobs": len(results), "ok": 0, "failed": 0, "skipped": 0, "not_run": 0}
    for r in results:
        counts[r.status.replace(" ", "_")] += 1
    return counts


def needs_pipeline(jobs: Sequence[Job], skip_existing: bool = False) -> bool:
    """Will any of these jobs generate (so the model must be loaded)?"""
    return any(generating(j.command) and not j.error and not (skip_existing and is_done(j)) for j in jobs)
