"""`vcomp eval`: measure how well the model follows each condition (a table, or one JSON object)."""

from __future__ import annotations

from pathlib import Path

import typer

from vcomp.cli import console

EPILOG = """
Examples:\n
  vcomp eval --suite world --n 50                         # the full suite, table on stdout\n
  vcomp eval --suite world --n 8 --steps 20 --tasks text,motion --json\n
  vcomp eval --suite world --n 4 --out eval_samples/      # also save the clips and contact sheets\n
Exit status 0 even when targets are missed (it is a measurement): read "all_passed" or the table.
"""

SUITES = ("world",)


def evaluate(
    suite: str = typer.Option("world", "--suite", help="What to evaluate on: world (held-out scenes of the procedural world)."),
    seed: int = typer.Option(0, "--seed", help="Picks the scenes and the generation noise; the same seed gives the same suite."),
    n: int = typer.Option(50, "--n", help="Number of held-out scenes."),
    steps: int = typer.Option(50, "--steps", help="DDIM sampling steps per generation."),
    guidance: float = typer.Option(None, "--guidance", "-w", help="Guidance weight. Default: the model's (9.0 published; the shipped embedded model's 4.0, or 16.0 when a style is guided; `vcomp models` shows it)."),
    shape_guidance: float = typer.Option(None, "--shape-guidance", help="Strength of shape guidance for a model with a shape critic (0 = off). Default: the model's.", show_default=False),
    track_guidance: float = typer.Option(None, "--track-guidance", help="Strength of track guidance for a model with a shape critic (0 = off). Default: the model's.", show_default=False),
    motion_guidance: float = typer.Option(None, "--motion-guidance", help="Strength of motion guidance where a motion condition is given (0 = off). Default: the model's.", show_default=False),
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated: text,motion,depth,sketch,inpaint,style. Default: all."),
    frames: int = typer.Option(16, "--frames", help="Frames per scene and generation."),
    inpaint_keep: str = typer.Option("both", "--inpaint-keep", help="Inpainting task: both (as `vcomp inpaint`: the source is pasted back outside the mask) or latent (measures the model's own preservation of the outside)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (1 is fastest on a machine busy with other jobs). Default: torch's."),
    weights: Path = typer.Option(None, "--weights", help="Folder with published weights (the official model; OpenCLIP for frame consistency), or a `vcomp train --export` folder (that embedded model). Default: $VCOMP_HOME or ~/.cache/vcomp; without them the embedded model runs."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write every generated clip, the sources, a contact sheet per task and results.json to this folder."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (metrics, per-scene results, timings, all_passed) on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or log output."),
) -> None:
    """Measure how well the model follows each condition, on held-out world scenes.

    Scores colour, shape and direction of the object, motion-control error, depth/sketch adherence,
    inpainting PSNR and colour, style colour and frame consistency, against the targets they must meet."""
    from vcomp import api
    from vcomp.errors import InputError
    from vcomp.evaluation.suite import parse_tasks, run_world_suite

    console.set_quiet(quiet)
    if suite not in SUITES:
        raise InputError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    if not 2 <= frames <= 64:
        raise InputError(f"--frames must be between 2 and 64 (got {frames})")
    task_names = parse_tasks(tasks)
    if inpaint_keep not in ("both", "latent", "pixels", "none"):
        raise InputError(f"--inpaint-keep must be both, latent, pixels or none (got {inpaint_keep!r})")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1 (got {threads})")
    import torch

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with console.progress("loading model") as update:
            update(0, None)
            pipeline = api.load_pipeline(weights=weights, device=device)
        for note in pipeline.notes:
            console.warn(note)
        with console.progress(f"eval {suite}") as update:
            report = run_world_suite(pipeline, seed=seed, n=n, steps=steps, guidance=guidance, tasks=task_names,
                                     progress=update, frames=frames, weights_dir=weights, out_dir=out,
                                     inpaint_keep=inpaint_keep, log=console.log, shape_guidance=shape_guidance,
                                     track_guidance=track_guidance, motion_guidance=motion_guidance)
    finally:
        torch.set_num_threads(previous_threads)  # in-process callers (tests, batch) keep their setting
    report["threads"] = torch.get_num_threads() if not threads else threads
    if json_out:
        console.print_json(report)
    else:
        print_table(report)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def guidance_label(report: dict) -> str:
    """"4" or "4 (style 6)": the w the jobs ran at, per-guide defaults included (reports from
    before they existed have none)."""
    extra = ", ".join(f"{name} {w:g}" for name, w in report.get("guidance_by_guide", {}).items())
    return f"{report['guidance']:g}" + (f" ({extra})" if extra else "")


def print_table(report: dict) -> None:
    """The metrics as a Rich table on stdout, then a summary line."""
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False, soft_wrap=True)
    title = (f"vcomp eval --suite {report['suite']}: n={report['n']} seed={report['seed']} steps={report['steps']} "
             f"guidance={guidance_label(report)} model={report['model']['preset']} "
             f"frame embedder={report['frame_embedder']}")
    table = Table(title=title, title_justify="left")
    for column in ("task", "metric", "value", "baseline", "target", "pass"):  # on 80 columns, the target wraps
        table.add_column(column, no_wrap=column != "target", overflow="fold" if column == "target" else "ellipsis",
                         min_width={"value": 5, "baseline": 5, "pass": 4}.get(column))
    notes = []
    for row in report["metrics"]:
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: ""}[row["passed"]]
        metric = row["metric"]
        if row.get("note"):
            notes.append(row["note"])
            metric += f" [{len(notes)}]"
        table.add_row(row["task"], metric, _fmt(row["value"]), _fmt(row["baseline"]), row["target"] or "", mark)
    out.print(table)
    for i, note in enumerate(notes, 1):
        out.print(f"[{i}] {note}", markup=False)
    t = report["timings"]
    verdict = "[green]all targets met[/]" if report["all_passed"] else "[red]some targets missed[/]"
    out.print(f"{verdict}; {t['generations']} generations in {t['total_s']:.0f} s "
              f"({t['per_generation_s']:.2f} s each, {t['per_step_s']:.3f} s per step)")
    if report.get("out_dir"):
        out.print(f"samples and results.json in {report['out_dir']}")


def register(app: typer.Typer) -> None:
    app.command("eval", epilog=EPILOG)(evaluate)
