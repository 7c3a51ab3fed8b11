"""Run generations: recipe + prompt -> pipeline -> output video, contact sheet and JSON sidecar.

Outputs, all written atomically (temp name, renamed when complete):
    OUT.mp4 | OUT.gif | OUT/ (PNG frames)    the video
    OUT.png                                  a contact sheet (skipped with preview=False)
    OUT.json                                 every parameter, seed, model, weights, version, timings
A grid run (content x motion) tiles every prompt x motion into one video and one sheet.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from vcomp import __version__
from vcomp.errors import InputError
from vcomp.io import check_writable_target, output_kind, write_contact_sheet, write_json, write_video
from vcomp.recipes import Recipe


@dataclass
class GenerateOptions:
    """Sampling settings shared by every generating command."""

    steps: int = 50
    guidance: float | None = None  # None: the model's default (pipeline.default_guidance)
    guide: str | None = None  # None: text (+ style when given), as the published model
    seed: int = 0
    eta: float = 0.0
    negative_prompt: str = ""
    keep_known: str = "both"
    preview: bool = True
    shape_guidance: float | None = None  # None: the model's default (with a shape critic), 0: off
    track_guidance: float | None = None  # the same, for track guidance
    motion_guidance: float | None = None  # None: the model's default with a motion condition, 0: off


def sidecar_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """(contact sheet, JSON sidecar) beside `output`: OUT.png and OUT.json."""
    output = Path(output)
    base = output.with_suffix("") if output.suffix else output
    return base.with_name(base.name + ".png"), base.with_name(base.name + ".json")


def check_output(output: str | os.PathLike) -> Path:
    """Validate an output path before any work: extension, not a directory, writable."""
    output = Path(output)
    kind = output_kind(output)
    if kind == "frames" and output.exists() and not output.is_dir():
        raise InputError(f"output {output} exists and is not a folder; give OUT.mp4, OUT.gif or a folder name")
    check_writable_target(output, is_dir=kind == "frames", replaceable=is_frame_file)
    return output


def is_frame_file(path: Path) -> bool:
    """What a PNG-frames output folder holds (and may replace)."""
    return path.name.startswith("frame_") and path.suffix == ".png"


def check_prompt(prompt: str, *, required: bool = True) -> str:
    prompt = (prompt or "").strip()
    if required and not prompt:
        raise InputError("the prompt is empty; describe the video to generate, e.g. --prompt 'a red ball moving right'")
    return prompt


def write_outputs(output: Path, frames: np.ndarray, fps: float, record: dict, preview: bool,
                  sheet_rows: Sequence[np.ndarray] | None = None) -> dict:
    """Write the video, then the sheet and sidecar; on any failure remove what was written."""
    sheet, sidecar = sidecar_paths(output)
    written: list[Path] = []
    try:
        written.append(write_video(output, frames, fps))
        if preview:
            written.append(write_contact_sheet(sheet, list(sheet_rows) if sheet_rows is not None else frames))
        record = {**record, "outputs": {"video": str(output), "sheet": str(sheet) if preview else None,
                                        "sidecar": str(sidecar)}}
        written.append(write_json(sidecar, record))
    except BaseException:
        import shutil

        for path in written:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    return record


def _record(command: str, prompt: str, recipe: Recipe, options: GenerateOptions, info: dict, fps: float) -> dict:
    return {
        "vcomp_version": __version__,
        "command": command,
        "argv": sys.argv[1:],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompt": prompt,
        "inputs": recipe.inputs,
        "options": asdict(options),
        "fps": fps,
        "conditions": recipe.conditions.present(),
        "extractors": recipe.conditions.meta.get("extractors", {}),
        "frame_indices": recipe.conditions.meta.get("frame_indices"),
        "generation": info,
    }


def generate_one(pipeline, recipe: Recipe, prompt: str, options: GenerateOptions, *, frames: int,
                 size: tuple[int, int] | None, progress: Callable[[int, int], None] | None = None):
    """One video from a recipe: `pipeline.generate` with the options (no files)."""
    return pipeline.generate(recipe.conditions, prompt, negative_prompt=options.negative_prompt,
                             steps=options.steps, guidance=options.guidance, guide=options.guide,
                             eta=options.eta, seed=options.seed, num_frames=frames, size=size,
                             source_frames=recipe.source_frames, keep_known=options.keep_known,
                             progress=progress, shape_guidance=options.shape_guidance,
                             track_guidance=options.track_guidance, motion_guidance=options.motion_guidance)


def with_model_defaults(options: GenerateOptions, pipeline, recipe: Recipe) -> GenerateOptions:
    """Options with the model's default guidance for what is guided (its shape and track
    guidance, for a model with a shape critic, and its motion guidance) filled in, so the sidecar
    says what ran."""
    guided = pipeline.guided_names(recipe.conditions, options.guide)
    shape, track = options.shape_guidance, options.track_guidance
    if getattr(pipeline, "shape_critic", None) is not None:
        shape = pipeline.shape_guidance_or_default(shape, recipe.conditions)
        track = pipeline.track_guidance_or_default(track, recipe.conditions)
    return replace(options, guidance=pipeline.guidance_or_default(options.guidance, guided), shape_guidance=shape,
                   track_guidance=track,
                   motion_guidance=pipeline.motion_guidance_or_default(options.motion_guidance, recipe.conditions))


def run(pipeline, command: str, recipe: Recipe, prompt: str, output: str | os.PathLike,
        options: GenerateOptions, *, frames: int, size: tuple[int, int] | None, fps: float | None = None,
        progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate and write one output; returns the sidecar record (also printed by --json)."""
    output = check_output(output)
    options = with_model_defaults(options, pipeline, recipe)
    started = time.perf_counter()
    result = generate_one(pipeline, recipe, prompt, options, frames=frames, size=size, progress=progress)
    fps = float(fps or recipe.fps or 8.0)
    record = _record(command, prompt, recipe, options, result.info, fps)
    record["timings"] = {"total": round(time.perf_counter() - started, 3)}
    return write_outputs(output, result.frames, fps, record, options.preview)


def _label(frame: np.ndarray, text: str) -> np.ndarray:
    from vcomp.conditions.previews import label

    return label(frame, text)


def run_grid(pipeline, command: str, prompts: Sequence[str], motions: Sequence[tuple[str, Recipe]],
             output: str | os.PathLike, options: GenerateOptions, *, frames: int, size: tuple[int, int] | None,
             fps: float | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Every prompt with every motion (same seed): one tiled video (rows = prompts, columns =
    motions) and a sheet with one labelled row per pair: the same content under different motions
    and the same motion with different content, side by side."""
    output = check_output(output)
    options = with_model_defaults(options, pipeline, motions[0][1])
    started = time.perf_counter()
    total = len(prompts) * len(motions) * options.steps
    tiles, rows, cells = [], [], []
    for i, prompt in enumerate(prompts):
        row = []
        for j, (motion_label, recipe) in enumerate(motions):
            done = (i * len(motions) + j) * options.steps
            step_progress = (lambda d, _t, done=done: progress(done + d, total)) if progress else None
            result = generate_one(pipeline, recipe, prompt, options, frames=frames, size=size,
                                  progress=step_progress)
            row.append(result.frames)
            labelled = result.frames.copy()
            labelled[0] = _label(labelled[0], f"{prompt[:40]} | {motion_label}")
            rows.append(labelled)
            cells.append({"prompt": prompt, "motion": motion_label, "inputs": recipe.inputs,
                          "generation": result.info})
        tiles.append(np.concatenate(row, axis=2))
    video = np.concatenate(tiles, axis=1)
    first = motions[0][1]
    fps = float(fps or first.fps or 8.0)
    record = _record(command, " | ".join(prompts), first, options, {"grid": cells}, fps)
    record["grid"] = {"rows": list(prompts), "columns": [m for m, _ in motions]}
    record["timings"] = {"total": round(time.perf_counter() - started, 3)}
    return write_outputs(output, video, fps, record, options.preview, sheet_rows=rows)


def numbered(output: str | os.PathLike, index: int, count: int) -> Path:
    """OUT.mp4 -> OUT-1.mp4, OUT-2.mp4 ... when a command makes several outputs without --grid."""
    output = Path(output)
    if count == 1:
        return output
    return output.with_name(f"{output.stem}-{index + 1}{output.suffix}")
