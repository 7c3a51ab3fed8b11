"""`vcomp models`: which model files are found, where, how big, and what vcomp will use."""

from __future__ import annotations

from pathlib import Path

import typer

from vcomp.cli import console

EPILOG = """
Examples:\n
  vcomp models\n
  vcomp models --weights /data/model_weights --json
"""


def models(
    weights: Path = typer.Option(None, "--weights", help="Folder with the published weight files. Default: $VCOMP_HOME or ~/.cache/vcomp."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """List the model files vcomp looks for and which model and extractors will be used.

    Found or missing, path and size of each file. Never downloads anything; safe to run with no weights."""
    from vcomp.weights import format_size, inventory

    report = inventory(weights)
    if json_out:
        console.print_json(report)
        return

    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False, soft_wrap=True)
    home = report["weights_dir"]
    where = home + ("" if report["weights_dir_exists"] else " (does not exist yet)")
    any_found = any(f["found"] for f in report["files"])
    table = Table(title=f"Model files in {where}", title_justify="left")
    for column in ("file", "status", "size", "used for") + (("path",) if any_found else ()):
        table.add_column(column, overflow="fold")
    for f in report["files"]:
        status = "[green]found[/]" if f["found"] else "[yellow]missing[/]"
        row = [f["file"], status, format_size(f["size"]), f["used_for"]]
        table.add_row(*row, *((f["path"] or "-",) if any_found else ()))
    out.print(table)
    if not all(f["found"] for f in report["files"] if f["key"] != "embedded"):
        out.print(f"Missing files go in {home} (or {home}/model_weights); nothing is downloaded.")
    gen = report["generator"]
    preset = gen["preset"] or "[red]none[/]"
    out.print(f"generator: [bold]{preset}[/] - {gen['reason']}")
    embedded = next(f for f in report["files"] if f["key"] == "embedded")
    if gen["preset"] == "tiny" and embedded.get("default_guidance"):
        g = embedded["default_guidance"]
        by_guide = "".join(f", {w:g} when {name} is guided" for name, w in g["by_guide"].items())
        default = f"{g['default']:g}" if g["default"] is not None else "the pipeline's"
        out.print(f"default guidance (--guidance): {default}{by_guide}")
    if gen["preset"] == "tiny" and embedded.get("temporal_refiner"):
        r = embedded["temporal_refiner"]
        out.print(f"temporal refiner: {r['layers']} 3D convolutions of width {r['width']} after the decoder (deflicker)")
    if gen["preset"] == "tiny" and embedded.get("prompt_refiner"):
        r = embedded["prompt_refiner"]
        out.print(f"prompt refiner: a text-conditioned U-Net of width {r['width']} after it (redraws outlines as "
                  "the prompt names them)")
    if gen["preset"] == "tiny" and embedded.get("shape_critic"):
        c = embedded["shape_critic"]
        out.print(f"shape critic: classifies {', '.join(c['shapes'])}; shape guidance (--shape-guidance) "
                  f"{c['shape_guidance']:g} and track guidance (--track-guidance) {c.get('track_guidance', 0):g} "
                  "by default when the prompt alone sets the layout"
                  + (f"; shape guidance's outline term weighs {c['shape_outline']:g}" if c.get("shape_outline") else ""))
    if gen["preset"] == "tiny" and embedded.get("motion_guidance"):
        out.print(f"motion guidance (--motion-guidance): {embedded['motion_guidance']:g} by default when a motion "
                  "condition is given (the video is steered to move as its vectors say)")
    if gen["preset"] == "tiny" and embedded.get("noise_schedule"):
        start = embedded.get("sampling_start")
        when = (f" ({start['steps']} DDIM steps start at t = {start['timestep']}, {start['spacing']} spacing)"
                if start else "")
        out.print(f"noise schedule: {embedded['noise_schedule']}{when}")
    for name, extractor in report["extractors"].items():
        out.print(f"{name} extractor: {extractor}")


def register(app: typer.Typer) -> None:
    app.command("models", epilog=EPILOG)(models)
