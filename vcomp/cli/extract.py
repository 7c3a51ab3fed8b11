"""`vcomp extract`: save a video's conditions (motion, depth, sketch, mask, image, style) to a folder."""

from __future__ import annotations

from pathlib import Path

import typer

from vcomp.cli import console

EPILOG = """
Examples:\n
  vcomp extract clip.mp4 -o conds/\n
  vcomp extract clip.mp4 -o conds/ --conditions motion,depth --frames 16 --fps 4 --size 256x256\n
  vcomp extract clip.mp4 -o conds/ --box 0.25,0.25,0.5,0.5 --json\n
  vcomp extract clip.mp4 -o conds/ -c motion --still-threshold 0   (the codec's raw vectors)
"""


def extract(
    src: Path = typer.Argument(..., help="Input video (mp4, mov, webm, mkv, gif) or a folder of frames.", show_default=False),
    output: Path = typer.Option(None, "-o", "--output", help="Output folder. Default: <SRC name>_conditions in the current folder."),
    conditions: str = typer.Option(None, "--conditions", "-c", help="Comma-separated: motion,depth,sketch,mask,image,single_sketch,style. Default: all that need no extra input (mask is added when --mask/--box is given)."),
    frames: int = typer.Option(None, "--frames", "-n", help="Take at most N frames. Default: all."),
    stride: int = typer.Option(None, "--stride", help="Take every K-th frame (motion is then between the sampled frames)."),
    fps: float = typer.Option(None, "--fps", help="Sample at this frame rate instead of --stride."),
    start: int = typer.Option(0, "--start", help="First source frame to take."),
    size: str = typer.Option(None, "--size", help="Output size WxH (scale to cover, centre-crop); motion vectors are rescaled. Default: source size."),
    mask: Path = typer.Option(None, "--mask", help="Mask video or image (white = region to regenerate); any size or length."),
    box: str = typer.Option(None, "--box", help="Mask box x,y,w,h in relative coordinates (0..1)."),
    still_threshold: float = typer.Option(None, "--still-threshold", help="Motion: an 8-pixel cell whose pixels changed less than this since the previous frame (mean absolute luma levels, 0-255) reads 0; the encoder gives flat background near a moving object that object's vector. 0 = every vector the codec exported. Default: 2."),
    previews: bool = typer.Option(True, "--previews/--no-previews", help="Write preview videos and a contact sheet."),
    weights: Path = typer.Option(None, "--weights", help="Folder with optional extractor weights (MiDaS, PiDiNet, OpenCLIP). Default: $VCOMP_HOME or ~/.cache/vcomp."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (paths, shapes, extractors, timings) on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or log output."),
) -> None:
    """Extract conditions from a video into a folder: conditions.safetensors, meta.json, previews/."""
    from vcomp import api
    from vcomp.conditions.condition_set import parse_names
    from vcomp.io import Sampling, parse_size

    console.set_quiet(quiet)
    if still_threshold is not None and conditions and "motion" not in parse_names(conditions):
        console.warn("--still-threshold applies to motion only, which is not among --conditions")
    sampling = Sampling(frames=frames, stride=stride, fps=fps, start=start)
    output = output or Path(f"{src.stem}_conditions")
    with console.progress(f"extracting {src.name}") as update:
        result = api.extract(src, output, conditions=conditions, sampling=sampling, size=parse_size(size),
                             mask=mask, box=box, previews=previews, weights_dir=weights, progress=update,
                             log=console.log, still_threshold=still_threshold)
    if json_out:
        console.print_json(result.to_dict())
    else:
        console.log(result.summary())


def register(app: typer.Typer) -> None:
    app.command("extract", epilog=EPILOG)(extract)
