"""The generating commands: t2v, motion-transfer, inpaint, translate, stylize.

Each parses its arguments, loads the pipeline once and calls `vcomp.commands`; nothing else.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import typer

from vcomp.cli import console

# options every generating command shares (Typer reads these as metadata, so one object serves all)
OUTPUT = typer.Option(None, "-o", "--output", help="Output: .mp4 (H.264), .gif or a folder name (PNG frames). A contact sheet OUT.png and a JSON sidecar OUT.json are written beside it. Default: <command>.mp4.")
SEED = typer.Option(0, "--seed", help="Random seed; the same seed on the same device gives the same video.")
STEPS = typer.Option(50, "--steps", help="DDIM sampling steps.")
GUIDANCE = typer.Option(None, "--guidance", "-w", help="Guidance weight w in eps = eps(c1) + w (eps(c2) - eps(c1)). Default: the model's (9.0 published; the shipped embedded model's 4.0, or 16.0 when a style is guided; `vcomp models` shows it).", show_default=False)
GUIDE = typer.Option(None, "--guide", help="Conditions the guidance pushes towards (dropped in the unconditional pass), e.g. text,motion. Default: text (+ style when given).")
ETA = typer.Option(0.0, "--eta", help="DDIM eta (0 = deterministic sampling).")
SHAPE_GUIDANCE = typer.Option(None, "--shape-guidance", help="Strength of shape guidance: a model with a shape critic steers each '{colour} {shape}' the prompt names towards that shape (0 = off). Default: the model's (the shipped embedded model's 1.0; `vcomp models` shows it).", show_default=False)
TRACK_GUIDANCE = typer.Option(None, "--track-guidance", help="Strength of track guidance: a model with a shape critic moves each '{colour} {shape} moving {direction}' (or 'standing still') the prompt names along a track that moves that way (0 = off). Default: the model's (`vcomp models` shows it).", show_default=False)
MOTION_GUIDANCE = typer.Option(None, "--motion-guidance", help="Strength of motion guidance: with a motion condition, the video is steered to move as its motion vectors say, pixel by pixel (0 = off). Default: the model's (the shipped embedded model's 0.35; `vcomp models` shows it).", show_default=False)
NEGATIVE = typer.Option("", "--negative-prompt", help="Text for the unconditional pass.")
FRAMES = typer.Option(16, "--frames", "-n", help="Number of frames to generate.")
SIZE = typer.Option(None, "--size", help="Output size WxH, multiples of 8. Default: the model's (64x64 embedded, 256x256 published).")
FPS = typer.Option(None, "--fps", help="Frame rate: sampling rate of the source video and of the output. Default: spread 16 frames over up to 4 s of the source; 8 for t2v.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
WEIGHTS = typer.Option(None, "--weights", help="Folder with published weights, or a `vcomp train --export` folder (runs that embedded model). Default: $VCOMP_HOME or ~/.cache/vcomp; without them the embedded model runs.")
CONDITIONS = typer.Option(None, "--conditions", help="Use the conditions saved by `vcomp extract` in this folder instead of extracting them.")
PREVIEW = typer.Option(True, "--preview/--no-preview", help="Write the contact sheet OUT.png.")
JSON = typer.Option(False, "--json", help="Print one JSON object (the sidecar record) on stdout and nothing else.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress, logs or warnings on stderr.")
IMAGE = typer.Option(None, "--image", help="Appearance image (first frame / local image condition).")
STYLE = typer.Option(None, "--style", help="Style image: its look (colours) guides the video.")
SOURCE = typer.Argument(..., help="Source video.", show_default=False)
NO_MOTION = typer.Option(False, "--no-motion", help="Do not condition on SRC's motion.")
STRUCTURE = typer.Option("depth", "--structure", help="depth, sketch or depth,sketch.")


# name, type, option: appended to every generating command's own parameters
COMMON = (
    ("output", Path, OUTPUT), ("conditions", Path, CONDITIONS), ("seed", int, SEED), ("steps", int, STEPS),
    ("guidance", float, GUIDANCE), ("guide", str, GUIDE), ("eta", float, ETA), ("negative_prompt", str, NEGATIVE),
    ("shape_guidance", float, SHAPE_GUIDANCE), ("track_guidance", float, TRACK_GUIDANCE),
    ("motion_guidance", float, MOTION_GUIDANCE),
    ("frames", int, FRAMES), ("size", str, SIZE), ("fps", float, FPS), ("device", str, DEVICE),
    ("weights", Path, WEIGHTS), ("preview", bool, PREVIEW), ("json_out", bool, JSON), ("quiet", bool, QUIET),
)


def _finish(record: dict, json_out: bool) -> None:
    records = record.get("outputs") if isinstance(record.get("outputs"), list) else [record]
    generations = [g for r in records for g in r["generation"].get("grid", [{"generation": r["generation"]}])]
    notes = dict.fromkeys(n for g in generations for n in g["generation"].get("notes", []))
    unknown = dict.fromkeys(w for g in generations for w in g["generation"].get("unknown_words") or [])
    for note in notes:
        console.warn(note)
    if unknown:
        console.warn(f"words the model does not know (ignored): {', '.join(unknown)}")
    if json_out:
        console.print_json(record)
    elif not console.is_quiet():
        for r in records:
            typer.echo(r["outputs"]["video"])


def _run(name: str, *, json_out: bool, quiet: bool, weights, device, output, **kwargs) -> None:
    """Load the pipeline once and run the command (official weights if found, else embedded)."""
    from vcomp import api
    from vcomp.commands import COMMANDS

    console.set_quiet(quiet)
    with console.progress("loading model") as update:
        update(0, None)
        pipeline = api.load_pipeline(weights=weights, device=device)
    with console.progress(name) as update:
        record = COMMANDS[name](pipeline, output=output or Path(f"{name}.mp4"), weights=weights,
                                progress=update, **kwargs)
    _finish(record, json_out)


def generating_command(name: str, skip: tuple[str, ...] = ()):
    """Turn a function declaring a command's own arguments (and returning them as a dict) into the
    Typer command with the shared options of COMMON appended (except `skip`)."""

    def decorate(own):
        signature = inspect.signature(own, eval_str=True)
        shared = [(n, t, o) for n, t, o in COMMON if n not in skip]
        parameters = list(signature.parameters.values()) + [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t) for n, t, o in shared]

        @functools.wraps(own)
        def command(**kwargs):
            common = {n: kwargs.pop(n) for n, _, _ in shared}
            _run(name, **own(**kwargs), **common)

        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate


@generating_command("t2v")
def t2v(
    prompt: list[str] = typer.Argument(..., help="What to generate; several prompts make several videos (or a --grid).", show_default=False),
    image: Path = IMAGE,
    sketch: Path = typer.Option(None, "--sketch", help="A single sketch image (strokes on paper) for the layout."),
    style: Path = STYLE,
    depth: Path = typer.Option(None, "--depth", help="A video whose depth sequence sets the structure."),
    path: list[str] = typer.Option(None, "--path", help="Hand-drawn trajectory 'x0,y0 x1,y1 ...' (relative 0..1) turned into a motion field; repeat for several motions."),
    grid: bool = typer.Option(False, "--grid", help="Render every prompt with every --path into one tiled video and contact sheet."),
) -> dict:
    """Text to video, optionally guided by an image, a sketch, a style, a depth video or a motion path."""
    return dict(prompt=prompt, image=image, sketch=sketch, style=style, depth=depth, path=path or None, grid=grid)


@generating_command("motion-transfer")
def motion_transfer(
    src: list[Path] = typer.Argument(..., help="Source video(s) whose motion vectors drive the new video.", show_default=False),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="The new content; repeat for several.", show_default=False),
    image: Path = IMAGE, style: Path = STYLE,
    grid: bool = typer.Option(False, "--grid", help="Render every prompt with every SRC's motion into one tiled video and contact sheet."),
) -> dict:
    """New content that moves like SRC (motion vectors read from the H.264 bitstream)."""
    return dict(src=src, prompt=prompt, image=image, style=style, grid=grid)


@generating_command("inpaint")
def inpaint(
    src: Path = SOURCE,
    prompt: str = typer.Option(..., "--prompt", "-p", help="What the masked region becomes.", show_default=False),
    mask: Path = typer.Option(None, "--mask", help="Mask video or image, white = regenerate; any size or length (resampled)."),
    box: str = typer.Option(None, "--box", help="Region to regenerate as x,y,w,h in relative coordinates, instead of --mask."),
    no_motion: bool = NO_MOTION,
) -> dict:
    """Regenerate the masked region of SRC from the prompt; everything outside the mask is kept."""
    return dict(src=src, prompt=prompt, mask=mask, box=box, no_motion=no_motion)


@generating_command("translate")
def translate(
    src: Path = SOURCE,
    prompt: str = typer.Option(..., "--prompt", "-p", help="The new appearance.", show_default=False),
    structure: str = STRUCTURE,
    no_motion: bool = NO_MOTION,
) -> dict:
    """Same structure and motion as SRC, new appearance from the prompt."""
    return dict(src=src, prompt=prompt, structure=structure, no_motion=no_motion)


@generating_command("stylize", skip=("conditions",))
def stylize(
    src: Path = SOURCE,
    style: Path = typer.Option(..., "--style", help="Style image.", show_default=False),
    prompt: str = typer.Option("", "--prompt", "-p", help="Optional text."),
    structure: str = STRUCTURE,
) -> dict:
    """SRC's structure in the style image's look."""
    return dict(src=src, style=style, prompt=prompt, structure=structure)


EPILOGS = {
    "t2v": """Examples:\n
  vcomp t2v "a red circle moving right on a blue background" -o red.mp4\n
  vcomp t2v "a green star moving up on a white background" --path "0.5,0.9 0.5,0.1" -o star.gif\n
  vcomp t2v "a red circle" "a blue square" --path "0.1,0.5 0.9,0.5" --path "0.5,0.1 0.5,0.9" --grid -o grid.mp4""",
    "motion-transfer": """Examples:\n
  vcomp motion-transfer src.mp4 --prompt "a yellow star on a purple background" -o out.mp4\n
  vcomp motion-transfer a.mp4 b.mp4 -p "a red circle" -p "a white square" --grid -o grid.mp4""",
    "inpaint": """Examples:\n
  vcomp inpaint src.mp4 --mask mask.mp4 --prompt "a green square" -o out.mp4\n
  vcomp inpaint src.mp4 --box 0.25,0.25,0.5,0.5 --prompt "a red circle" -o out.mp4""",
    "translate": """Examples:\n
  vcomp translate src.mp4 --prompt "a white star on a black background" -o out.mp4\n
  vcomp translate src.mp4 --prompt "..." --structure depth,sketch --seed 3 -o out.gif""",
    "stylize": """Examples:\n
  vcomp stylize src.mp4 --style painting.jpg -o out.mp4\n
  vcomp stylize src.mp4 --style painting.jpg --prompt "a blue circle" --structure sketch -o out.mp4""",
}


def register(app: typer.Typer) -> None:
    for name, function in (("t2v", t2v), ("motion-transfer", motion_transfer), ("inpaint", inpaint),
                           ("translate", translate), ("stylize", stylize)):
        app.command(name, epilog=EPILOGS[name])(function)
