"""Recipes: what each command takes from its inputs, as a ConditionSet (+ the source frames).

Every generating command is the same pipeline with a different recipe (see ../shared/design.md):

    t2v              text (+ image, single sketch, style, depth video, hand-drawn motion path)
    motion-transfer  motion vectors of SRC (+ image, style)
    inpaint          mask sequence + masked SRC (+ motion of SRC)
    translate        depth and/or sketch sequence of SRC (+ its motion)
    stylize          structure of SRC + style image

Conditions are extracted at an analysis size (short side >= ANALYSIS_SHORT_SIDE, the output's
aspect), where H.264 blocks resolve motion well; the model adapter then scales them (and the motion
vectors) to the model's size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vcomp.conditions.condition_set import ConditionSet
from vcomp.errors import InputError
from vcomp.io import Clip, Sampling, read_clip, read_image

ANALYSIS_SHORT_SIDE = 256
STRUCTURES = ("depth", "sketch")


@dataclass
class Recipe:
    """A ready-to-generate request: conditions, the source frames (inpainting) and what went in."""

    conditions: ConditionSet
    source_frames: np.ndarray | None = None  # RGB uint8 [T,H,W,3] at the analysis size
    fps: float = 8.0
    inputs: dict = field(default_factory=dict)  # recorded in the sidecar


def analysis_size(size: tuple[int, int]) -> tuple[int, int]:
    """`size` scaled up so its short side is at least ANALYSIS_SHORT_SIDE (even numbers)."""
    scale = max(1.0, ANALYSIS_SHORT_SIDE / min(size))
    return (2 * math.ceil(size[0] * scale / 2), 2 * math.ceil(size[1] * scale / 2))


def default_sampling(src: str | os.PathLike, frames: int, fps: float | None = None) -> Sampling:
    """`frames` frames of SRC: at `fps` if given, else spread over at most 4 s of the source
    (the published model saw clips sampled at 4 fps), never skipping more than needed."""
    from vcomp.io import probe

    if fps is not None:
        return Sampling(frames=frames, fps=fps)
    info = probe(src)
    spread = max(1, info.frame_count // frames) if info.frame_count else 1
    return Sampling(frames=frames, stride=max(1, min(spread, round(info.fps / 4) or 1)))


def read_source(src: str | os.PathLike, frames: int, size: tuple[int, int], fps: float | None = None) -> Clip:
    """The sampled source clip at the analysis size; fewer frames than asked is an error."""
    clip = read_clip(src, default_sampling(src, frames, fps), analysis_size(size))
    if len(clip.frames) < frames:
        raise InputError(f"{src} has only {len(clip.frames)} frames at this sampling but {frames} are needed; "
                         f"use --frames {len(clip.frames)} or a lower --fps")
    return clip


def _meta(clip: Clip | None, size, extractors: dict) -> dict:
    meta = {"size": list(size), "extractors": extractors}
    if clip is not None:
        meta.update(fps=clip.fps, frame_indices=clip.indices, source=clip.source.to_dict(),
                    source_size=[clip.source.width, clip.source.height])
    return meta


def _motion(clip: Clip) -> tuple[np.ndarray, dict]:
    from vcomp.conditions.motion import extractor_info, motion_from_frames

    return motion_from_frames(clip.frames, clip.fps), extractor_info(method="reencode-sampled")


def _structure(names, frames: np.ndarray, weights_dir) -> tuple[dict, dict]:
    from vcomp.conditions import depth, sketch

    arrays, extractors = {}, {}
    for name in names:
        if name == "depth":
            arrays[name], extractors[name] = depth.estimate_depth(frames, weights_dir)
        elif name == "sketch":
            arrays[name], extractors[name] = sketch.extract_sketch(frames, weights_dir=weights_dir)
    return arrays, extractors


def parse_structure(text: str | None) -> list[str]:
    names = [n.strip().lower() for n in (text or "depth").split(",") if n.strip()]
    bad = [n for n in names if n not in STRUCTURES]
    if bad or not names:
        raise InputError(f"unknown --structure {bad[0] if bad else text!r}; use depth, sketch or depth,sketch")
    return names


def _style(path, weights_dir) -> tuple[np.ndarray, dict]:
    from vcomp.conditions.style import style_embedding

    embedding, info = style_embedding(read_image(path), weights_dir)
    return embedding, {**info, "source": str(path)}


def _image(path, size) -> tuple[np.ndarray, dict]:
    from vcomp.conditions.image import image_condition

    return image_condition(read_image(path, size)), {"extractor": "file", "source": str(path)}


def _optional_spatial(arrays, extractors, size, weights_dir, image=None, sketch=None, style=None) -> None:
    if image is not None:
        arrays["image"], extractors["image"] = _image(image, size)
    if sketch is not None:
        from vcomp.conditions.sketch import load_sketch_image

        arrays["single_sketch"], extractors["single_sketch"] = load_sketch_image(sketch, size)
    if style is not None:
        arrays["style"], extractors["style"] = _style(style, weights_dir)


def path_motion(path: str, frames: int, size: tuple[int, int], radius: float = 0.18) -> np.ndarray:
    """A hand-drawn trajectory "x0,y0 x1,y1 ..." (relative coordinates) -> motion `[T,2,H,W]`.

    A point travels the polyline at constant speed over the clip; frame t's field is its
    velocity (pixels per frame) inside a disc of `radius` x the short side around its position,
    zero elsewhere, like the hand-crafted motion of the paper's Fig. 6."""
    points = parse_path(path)
    w, h = size
    xy = points * np.array([w, h], np.float32)
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    along = np.linspace(0.0, arc[-1], frames)
    pos = np.stack([np.interp(along, arc, xy[:, 0]), np.interp(along, arc, xy[:, 1])], axis=1)  # [T, 2]
    velocity = np.diff(pos, axis=0, prepend=pos[:1])  # frame 0: zero
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r = radius * min(w, h)
    inside = ((xs[None] - pos[:, 0, None, None]) ** 2 + (ys[None] - pos[:, 1, None, None]) ** 2) <= r * r
    return (inside[:, None] * velocity[:, :, None, None]).astype(np.float32)


def parse_path(text: str) -> np.ndarray:
    """'x0,y0 x1,y1 ...' in [0, 1] -> float32 [N, 2] (at least two points)."""
    try:
        points = np.array([[float(v) for v in p.split(",")] for p in str(text).replace(";", " ").split()], np.float32)
    except ValueError:
        points = np.zeros((0, 3))
    if points.ndim != 2 or points.shape[1:] != (2,) or len(points) < 2:
        raise InputError(f"--path {text!r} must be at least two points 'x,y x,y ...' in relative coordinates, "
                         "e.g. '0.1,0.5 0.9,0.5'")
    if not np.isfinite(points).all() or points.min() < 0 or points.max() > 1:
        raise InputError(f"--path {text!r}: coordinates must be between 0 and 1")
    return points


# -- the recipes ------------------------------------------------------------------------------
def t2v(*, frames: int, size: tuple[int, int], image=None, sketch=None, style=None, depth=None,
        path: str | None = None, fps: float = 8.0, weights_dir=None) -> Recipe:
    """Text to video, optionally with an image, a single sketch, a style, a depth video or a path."""
    asize = analysis_size(size)
    arrays, extractors = {}, {}
    _optional_spatial(arrays, extractors, asize, weights_dir, image, sketch, style)
    clip = None
    if depth is not None:
        clip = read_source(depth, frames, size)
        more, info = _structure(["depth"], clip.frames, weights_dir)
        arrays.update(more)
        extractors.update(info)
    if path is not None:
        arrays["motion"] = path_motion(path, frames, asize)
        extractors["motion"] = {"extractor": "hand-drawn-path", "path": path}
    meta = _meta(clip, asize, extractors)
    meta["fps"] = fps
    return Recipe(ConditionSet(**arrays, meta=meta), None, fps,
                  {"image": image, "sketch": sketch, "style": style, "depth": depth, "path": path})


def motion_transfer(src, *, frames: int, size: tuple[int, int], fps: float | None = None, image=None,
                    style=None, weights_dir=None) -> Recipe:
    """New content that moves like SRC: SRC's motion vectors between the sampled frames."""
    clip = read_source(src, frames, size, fps)
    arrays, extractors = {}, {}
    arrays["motion"], extractors["motion"] = _motion(clip)
    _optional_spatial(arrays, extractors, clip.size, weights_dir, image, None, style)
    return Recipe(ConditionSet(**arrays, meta=_meta(clip, clip.size, extractors)), None, clip.fps,
                  {"src": str(src), "image": image, "style": style})


def inpaint(src, *, frames: int, size: tuple[int, int], mask=None, box=None, fps: float | None = None,
            motion: bool = True, weights_dir=None) -> Recipe:
    """Regenerate the masked region of SRC (mask video/image of any size and length, or a box)."""
    from vcomp.conditions import mask as masks

    if (mask is None) == (box is None):
        raise InputError("inpaint needs exactly one of --mask FILE or --box x,y,w,h")
    if box is not None:
        masks.parse_box(box)
    clip = read_source(src, frames, size, fps)
    arrays, extractors = {}, {}
    if mask is not None:
        arrays["mask"] = masks.mask_from_video_or_image(mask, frames, clip.size)
        extractors["mask"] = {"extractor": "file", "source": str(mask)}
    else:
        arrays["mask"] = masks.mask_from_box(box, frames, clip.size)
        extractors["mask"] = {"extractor": "box", "box": box}
    if arrays["mask"].max() == 0:
        raise InputError("the mask is empty (nothing to regenerate): white marks the region to regenerate; "
                         "check the mask file or --box")
    if motion:
        arrays["motion"], extractors["motion"] = _motion(clip)
    return Recipe(ConditionSet(**arrays, meta=_meta(clip, clip.size, extractors)), clip.frames, clip.fps,
                  {"src": str(src), "mask": None if mask is None else str(mask), "box": box})


def translate(src, *, frames: int, size: tuple[int, int], structure: str | None = None,
              fps: float | None = None, motion: bool = True, weights_dir=None) -> Recipe:
    """Same structure (depth/sketch) and motion as SRC, new appearance from the prompt."""
    names = parse_structure(structure)
    clip = read_source(src, frames, size, fps)
    arrays, extractors = _structure(names, clip.frames, weights_dir)
    if motion:
        arrays["motion"], extractors["motion"] = _motion(clip)
    return Recipe(ConditionSet(**arrays, meta=_meta(clip, clip.size, extractors)), None, clip.fps,
                  {"src": str(src), "structure": names})


def stylize(src, *, style, frames: int, size: tuple[int, int], structure: str | None = None,
            fps: float | None = None, weights_dir=None) -> Recipe:
    """SRC's structure rendered in the style image's look."""
    recipe = translate(src, frames=frames, size=size, structure=structure, fps=fps, weights_dir=weights_dir)
    embedding, info = _style(style, weights_dir)
    cs = recipe.conditions
    cs = cs.replace(style=embedding, meta={**cs.meta, "extractors": {**cs.meta["extractors"], "style": info}})
    return Recipe(cs, None, recipe.fps, {**recipe.inputs, "style": str(style)})


def from_folder(folder, *, frames: int | None = None) -> Recipe:
    """A `vcomp extract` folder as a recipe (`--conditions DIR`)."""
    cs = ConditionSet.load(folder)
    if frames is not None and cs.num_frames is not None and cs.num_frames != frames:
        raise InputError(f"{folder} holds {cs.num_frames} frames but --frames {frames} was given; "
                         f"re-extract with --frames {frames}")
    return Recipe(cs, None, float(cs.meta.get("fps") or 8.0), {"conditions": str(Path(folder))})
