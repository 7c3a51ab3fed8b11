"""The generating commands as functions: what the CLI and `vcomp batch` both call.

Each takes a loaded `Pipeline` first, then keyword arguments named exactly like the command's CLI
options (dashes as underscores), and returns the sidecar record of what it wrote. Sizes may be
given as "WxH" strings or (W, H) tuples; list options accept one value or a list.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from vcomp import recipes
from vcomp.errors import InputError
from vcomp.generate import GenerateOptions, check_output, check_prompt, numbered, run, run_grid


def _size(size) -> tuple[int, int] | None:
    from vcomp.io import parse_size

    if size is None or isinstance(size, (tuple, list)):
        return tuple(size) if size else None
    return parse_size(str(size), multiple=8)


def _listed(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _options(steps=50, guidance=None, guide=None, seed=0, eta=0.0, negative_prompt="", preview=True,
             keep_known="both", shape_guidance=None, track_guidance=None, motion_guidance=None) -> GenerateOptions:
    from vcomp.engine.sampling import MAX_STEPS

    if not 1 <= int(steps) <= MAX_STEPS:
        raise InputError(f"--steps must be between 1 and {MAX_STEPS} (got {steps})")
    if guidance is not None and not float(guidance) >= 0:
        raise InputError(f"--guidance must be >= 0 (got {guidance})")
    for flag, value in (("--shape-guidance", shape_guidance), ("--track-guidance", track_guidance),
                        ("--motion-guidance", motion_guidance)):
        if value is not None and not float(value) >= 0:
            raise InputError(f"{flag} must be >= 0 (got {value})")
    return GenerateOptions(steps=int(steps), guidance=None if guidance is None else float(guidance), guide=guide, seed=int(seed), eta=float(eta),
                           negative_prompt=negative_prompt or "", keep_known=keep_known, preview=bool(preview),
                           shape_guidance=None if shape_guidance is None else float(shape_guidance),
                           track_guidance=None if track_guidance is None else float(track_guidance),
                           motion_guidance=None if motion_guidance is None else float(motion_guidance))


def _frames(frames) -> int:
    frames = int(frames)
    if not 1 <= frames <= 256:
        raise InputError(f"--frames must be between 1 and 256 (got {frames})")
    return frames


def _fps(fps) -> float | None:
    if fps is not None and not (math.isfinite(float(fps)) and float(fps) > 0):
        raise InputError(f"--fps must be a positive number (got {fps})")
    return None if fps is None else float(fps)


def _model_size(pipeline, size) -> tuple[int, int]:
    return _size(size) or tuple(pipeline.default_size)


def _run_all(pipeline, command, prompts, motions, output, options, *, grid, frames, size, fps, progress):
    """One output per prompt x motion (numbered OUT-1, OUT-2 ...), or one grid with --grid."""
    if grid:
        return run_grid(pipeline, command, prompts, motions, output, options, frames=frames, size=size,
                        fps=fps, progress=progress)
    records = []
    count = len(prompts) * len(motions)
    for i, prompt in enumerate(prompts):
        for j, (_, recipe) in enumerate(motions):
            target = numbered(output, i * len(motions) + j, count)
            records.append(run(pipeline, command, recipe, prompt, target, options, frames=frames, size=size,
                               fps=fps, progress=progress))
    return records[0] if len(records) == 1 else {"outputs": records}


def t2v(pipeline, prompt, output, *, image=None, sketch=None, style=None, depth=None, path=None, grid=False,
        conditions=None, frames=16, size=None, fps=None, weights=None,
        progress: Callable[[int, int], None] | None = None, **sampling) -> dict:
    """Text to video; several prompts and/or several --path trajectories make a content x motion set."""
    check_output(output)
    prompts = [check_prompt(p) for p in _listed(prompt)] or [check_prompt("")]
    frames, options, fps = _frames(frames), _options(**sampling), _fps(fps)
    size = _model_size(pipeline, size)
    out_fps = float(fps or 8.0)
    if conditions is not None:
        motions = [(str(conditions), recipes.from_folder(conditions, frames=frames))]
    else:
        paths = _listed(path) or [None]
        motions = [(p or "no motion", recipes.t2v(frames=frames, size=size, image=image, sketch=sketch, style=style,
                                                 depth=depth, path=p, fps=out_fps, weights_dir=weights))
                   for p in paths]
    return _run_all(pipeline, "t2v", prompts, motions, output, options, grid=grid, frames=frames, size=size,
                    fps=out_fps, progress=progress)


def motion_transfer(pipeline, src, output, *, prompt, image=None, style=None, grid=False, conditions=None,
                    frames=16, size=None, fps=None, weights=None, progress=None, **sampling) -> dict:
    """New content that moves like each SRC; several prompts/sources make a content x motion set."""
    check_output(output)
    prompts = [check_prompt(p) for p in _listed(prompt)] or [check_prompt("")]
    frames, options, fps = _frames(frames), _options(**sampling), _fps(fps)
    size = _model_size(pipeline, size)
    if conditions is not None:
        motions = [(str(conditions), recipes.from_folder(conditions, frames=frames))]
    else:
        sources = _listed(src)
        if not sources:
            raise InputError("motion-transfer needs a source video (SRC)")
        motions = [(Path(s).name, recipes.motion_transfer(s, frames=frames, size=size, fps=fps, image=image,
                                                          style=style, weights_dir=weights)) for s in sources]
    return _run_all(pipeline, "motion-transfer", prompts, motions, output, options, grid=grid, frames=frames,
                    size=size, fps=fps, progress=progress)


def inpaint(pipeline, src, output, *, prompt, mask=None, box=None, conditions=None, no_motion=False,
            frames=16, size=None, fps=None, weights=None, progress=None, **sampling) -> dict:
    """Regenerate the masked region of SRC from the prompt; the rest is kept from SRC."""
    check_output(output)
    prompt = check_prompt(prompt)
    frames, options, fps = _frames(frames), _options(**sampling), _fps(fps)
    size = _model_size(pipeline, size)
    recipe = recipes.inpaint(src, frames=frames, size=size, mask=mask, box=box, fps=fps, motion=not no_motion,
                             weights_dir=weights)
    if conditions is not None:  # extra conditions from a folder join the mask and source
        extra = recipes.from_folder(conditions, frames=frames).conditions
        merged = {n: getattr(recipe.conditions, n) if getattr(recipe.conditions, n) is not None else getattr(extra, n)
                  for n in extra.present() + recipe.conditions.present()}
        recipe.conditions = recipe.conditions.replace(**merged)
    return run(pipeline, "inpaint", recipe, prompt, output, options, frames=frames, size=size, fps=fps,
               progress=progress)


def translate(pipeline, src, output, *, prompt, structure=None, no_motion=False, conditions=None, frames=16,
              size=None, fps=None, weights=None, progress=None, **sampling) -> dict:
    """SRC's structure (depth / sketch) and motion with a new appearance from the prompt."""
    check_output(output)
    prompt = check_prompt(prompt)
    frames, options, fps = _frames(frames), _options(**sampling), _fps(fps)
    size = _model_size(pipeline, size)
    if conditions is not None:
        recipe = recipes.from_folder(conditions, frames=frames)
    else:
        recipe = recipes.translate(src, frames=frames, size=size, structure=structure, fps=fps,
                                   motion=not no_motion, weights_dir=weights)
    return run(pipeline, "translate", recipe, prompt, output, options, frames=frames, size=size, fps=fps,
               progress=progress)


def stylize(pipeline, src, output, *, style, prompt="", structure=None, frames=16, size=None, fps=None,
            weights=None, progress=None, **sampling) -> dict:
    """SRC's structure in the look of the style image (the prompt is optional)."""
    check_output(output)
    prompt = check_prompt(prompt, required=False)
    frames, options, fps = _frames(frames), _options(**sampling), _fps(fps)
    size = _model_size(pipeline, size)
    recipe = recipes.stylize(src, style=style, frames=frames, size=size, structure=structure, fps=fps,
                             weights_dir=weights)
    return run(pipeline, "stylize", recipe, prompt, output, options, frames=frames, size=size, fps=fps,
               progress=progress)


COMMANDS: dict[str, Callable[..., dict]] = {
    "t2v": t2v,
    "motion-transfer": motion_transfer,
    "inpaint": inpaint,
    "translate": translate,
    "stylize": stylize,
}
