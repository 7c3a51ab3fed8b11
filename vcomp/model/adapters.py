"""Condition adapters: a `ConditionSet` (vcomp's clean numpy conventions) -> a model's inputs.

One adapter per preset, so the rest of vcomp never deals with a model's quirks:

===============  ================================  ========================================================
ConditionSet     tiny (embedded model)             official (published VideoComposer weights)
===============  ================================  ========================================================
motion           `motion`, px/frame at the output  `motion` at the output size (256^2): sparse map, values
                 size (vectors rescaled)           only at the centres of the 16 x 16 blocks of the source
                                                   video, in source-video pixels per 4 fps step (not
                                                   rescaled to 256; `meta["source_size"]`, `meta["fps"]`)
depth [0, 1]     `depth`, [0, 1], near = 1         `depth` at 1.5x output (384^2): clamp(d * S / 20, 0, 10),
                                                   S = MiDaS disparity of d = 1 (default 30, see below)
sketch           `sketch` [0, 1], lines = 1        `sketch` at 384^2, same values
mask + source    `masked`: [RGB in [-1, 1] with    same at 384^2
                 hole pixels 0, keep = 1 - mask]
image [0, 1]     `local_image` [1, 3, H, W]        `local_image` at 384^2, [0, 1] (not [-1, 1])
single_sketch    `single_sketch` [1, 1, H, W]      `single_sketch` at 384^2
style [D]        [1, 1, 64] colour statistics      [1, 1, 1024] OpenCLIP ViT-H-14 `encode_image`
===============  ================================  ========================================================

Reference for the published formats: ../shared/reference/videocomposer_conditions.md (sections 5-9).
Every spatial array is scaled to cover the target size and centre-cropped (area averaging when
shrinking, bilinear when enlarging), the same geometry as `vcomp.io.resize_cover`.

Depth scale: the published model saw `clamp(MiDaS_disparity / 20, 0, 10)` with no normalisation,
while a ConditionSet holds relative depth in [0, 1]. When the depth extractor records
`"disparity_scale"` in `meta["extractors"]["depth"]` (the raw disparity of d = 1), that is used;
otherwise `disparity_max=30` (DPT-Large disparities on 384^2 frames are reported in roughly the
20-30 range; not verified against the published model), so d = 1 -> 1.5.

Inpainting needs the source frames (RGB uint8 `[T, H, W, 3]`): the `source_frames` argument, or
an in-memory array in `meta["source_frames"]`. The adapter also returns them at the output size
(`known`, in [-1, 1]) and the mask (`hole`, 1 = regenerate) for the pipeline's "replace" and
"paste" options.

This module knows nothing of files; it imports torch and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vcomp.conditions.condition_set import ConditionSet
from vcomp.errors import InputError

# ConditionSet name -> UNet condition name
MODEL_NAMES = {
    "motion": "motion",
    "depth": "depth",
    "sketch": "sketch",
    "mask": "masked",
    "image": "local_image",
    "single_sketch": "single_sketch",
}
PUBLISHED_FPS = 4.0  # frames per second of the published motion / clips
PUBLISHED_BLOCK = 16  # mpeg4 macroblock size of the published motion vectors
DEPTH_STD, DEPTH_CLAMP = 20.0, 10.0  # published depth scaling
DEFAULT_DISPARITY_MAX = 30.0


@dataclass
class ModelInputs:
    """A ConditionSet in a model's layout (batch 1, float32 torch tensors on the CPU)."""

    conditions: dict[str, torch.Tensor] = field(default_factory=dict)  # UNet names -> [1,C,T,H,W] / [1,C,H,W]
    style: torch.Tensor | None = None  # [1, 1, D]
    known: torch.Tensor | None = None  # source video [1, 3, T, H, W] in [-1, 1] at the output size
    hole: torch.Tensor | None = None  # [1, 1, T, H, W] at the output size, 1 = regenerate
    notes: list[str] = field(default_factory=list)  # conversions applied (for the result's info)


# ---------------------------------------------------------------- numpy helpers


def resize_stack(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`[T, C, H, W]` (or `[C, H, W]`) float32 -> same at `size` (W, H): cover + centre crop."""
    from vcomp.io import resize_cover

    if arr.ndim == 3:
        return resize_stack(arr[None], size)[0]
    if (arr.shape[-1], arr.shape[-2]) == tuple(size):
        return np.ascontiguousarray(arr, np.float32)
    out = [resize_cover(np.ascontiguousarray(f.transpose(1, 2, 0)), size) for f in arr]
    return np.stack([o.reshape(size[1], size[0], -1).transpose(2, 0, 1) for o in out]).astype(np.float32)


def block_centre_mask(src_size: tuple[int, int], cond_size: tuple[int, int], out_size: tuple[int, int],
                      block: int = PUBLISHED_BLOCK) -> np.ndarray:
    """`[H_out, W_out]` float32: 1 at the pixels nearest to the centres (16 i + 8) of the source
    video's blocks once mapped to the output grid (cover + centre crop of the condition size)."""
    from vcomp.io import cover_geometry

    sw, sh = src_size
    cw, ch = cond_size
    _, (scaled_w, scaled_h), (ox, oy) = cover_geometry(cond_size, out_size)
    mask = np.zeros((out_size[1], out_size[0]), np.float32)

    def coords(n_src, n_cond, n_scaled, offset, n_out):
        centres = np.arange(block // 2, n_src, block, dtype=np.float64)  # source pixels
        pos = (centres * (n_cond / n_src) + 0.5) * (n_scaled / n_cond) - 0.5 - offset
        pos = np.round(pos).astype(np.int64)
        return np.unique(pos[(pos >= 0) & (pos < n_out)])

    ys = coords(sh, ch, scaled_h, oy, out_size[1])
    xs = coords(sw, cw, scaled_w, ox, out_size[0])
    mask[np.ix_(ys, xs)] = 1.0
    return mask


def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = (value.get("width") or value.get("w"), value.get("height") or value.get("h"))
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def source_size_from_meta(meta: dict) -> tuple[int, int] | None:
    """(W, H) of the source video: `meta["source_size"]`, or `meta["source"]["size"]`."""
    size = _pair(meta.get("source_size"))
    if size is None and isinstance(meta.get("source"), dict):
        size = _pair(meta["source"].get("size"))
    return size


# ---------------------------------------------------------------- adapters


class ConditionAdapter:
    """Base adapter: spatial sizes, frame checks, mask -> masked video, style shape."""

    name = "base"
    style_dim = 64
    style_extractor = "colour-stats-v1"
    misc_scale = 1.0  # size of the spatial conditions relative to the output

    def misc_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return (round(size[0] * self.misc_scale), round(size[1] * self.misc_scale))

    def prepare(self, cs: ConditionSet, num_frames: int, size: tuple[int, int],
                source_frames: np.ndarray | None = None) -> ModelInputs:
        """ConditionSet -> `ModelInputs` for a video of `num_frames` frames at `size` (W, H)."""
        if cs.num_frames is not None and cs.num_frames != num_frames:
            raise InputError(f"the conditions have {cs.num_frames} frames but {num_frames} were asked for; "
                             f"extract them with --frames {num_frames} (or generate {cs.num_frames} frames)")
        misc = self.misc_size(size)
        out = ModelInputs()
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]  # noqa: E731
        if cs.depth is not None:
            out.conditions["depth"] = t(self.depth(resize_stack(cs.depth, misc), cs.meta, out.notes))
        if cs.image is not None:
            out.conditions["local_image"] = t(np.clip(resize_stack(cs.image, misc), 0, 1))
        if cs.motion is not None:
            out.conditions["motion"] = t(self.motion(cs.motion, cs.meta, size, out.notes))
        if cs.sketch is not None:
            out.conditions["sketch"] = t(np.clip(resize_stack(cs.sketch, misc), 0, 1))
        if cs.single_sketch is not None:
            out.conditions["single_sketch"] = t(np.clip(resize_stack(cs.single_sketch, misc), 0, 1))
        if cs.mask is not None:
            source = source_frames if source_frames is not None else cs.meta.get("source_frames")
            if not isinstance(source, np.ndarray):
                raise InputError("the mask condition (inpainting) needs the source video frames: pass "
                                 "source_frames (RGB uint8 [T,H,W,3]) along with the conditions")
            source = _check_source(source, num_frames)
            mask = (resize_stack(cs.mask, misc) > 0.5).astype(np.float32)
            rgb = resize_stack(source, misc) * 2.0 - 1.0  # [T, 3, H, W] in [-1, 1]
            keep = 1.0 - mask
            out.conditions["masked"] = t(np.concatenate([rgb * keep, keep], axis=1).transpose(1, 0, 2, 3))
            out.known = t(resize_stack(source, size) * 2.0 - 1.0).permute(0, 2, 1, 3, 4).contiguous()
            out.hole = t((resize_stack(cs.mask, size) > 0.5).astype(np.float32)).permute(0, 2, 1, 3, 4).contiguous()
        for name in ("depth", "motion", "sketch"):
            if name in out.conditions:  # [1, T, C, H, W] -> [1, C, T, H, W]
                out.conditions[name] = out.conditions[name].permute(0, 2, 1, 3, 4).contiguous()
        if cs.style is not None:
            if cs.style.shape[0] != self.style_dim:
                extractor = cs.meta.get("extractors", {}).get("style", {}).get("extractor", "unknown")
                raise InputError(
                    f"the style embedding is {cs.style.shape[0]}-d ({extractor}) but the {self.name} model takes "
                    f"{self.style_dim}-d ({self.style_extractor}); re-extract the style with the matching weights"
                )
            out.style = torch.from_numpy(cs.style.astype(np.float32)).view(1, 1, -1)
        return out

    def depth(self, depth: np.ndarray, meta: dict, notes: list[str]) -> np.ndarray:
        return depth

    def motion(self, field: np.ndarray, meta: dict, size: tuple[int, int], notes: list[str]) -> np.ndarray:
        from vcomp.conditions.motion import resize_motion

        return resize_motion(field, size)


def _check_source(frames: np.ndarray, num_frames: int) -> np.ndarray:
    """RGB uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in [0, 1] (a single frame is repeated)."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"source frames must be RGB uint8 [T,H,W,3], got {frames.dtype} {list(frames.shape)}")
    if frames.shape[0] == 1:
        frames = np.repeat(frames, num_frames, axis=0)
    if frames.shape[0] != num_frames:
        raise InputError(f"{frames.shape[0]} source frames for {num_frames} frames to generate")
    return frames.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)


class TinyAdapter(ConditionAdapter):
    """The embedded model: every condition at the output size in vcomp's own units."""

    name = "tiny"

    def __init__(self, style_dim: int = 64):
        self.style_dim = style_dim


class OfficialAdapter(ConditionAdapter):
    """The published VideoComposer model (see the module docstring for each conversion)."""

    name = "official"
    misc_scale = 1.5  # 384^2 conditions for 256^2 video
    style_dim = 1024
    style_extractor = "OpenCLIP ViT-H-14 encode_image"

    def __init__(self, disparity_max: float = DEFAULT_DISPARITY_MAX):
        self.disparity_max = disparity_max

    def depth(self, depth: np.ndarray, meta: dict, notes: list[str]) -> np.ndarray:
        info = meta.get("extractors", {}).get("depth", {}) if isinstance(meta.get("extractors"), dict) else {}
        scale = info.get("disparity_scale") if isinstance(info, dict) else None
        if scale is None:
            scale = self.disparity_max
            notes.append(f"depth: relative [0, 1] mapped to MiDaS disparity [0, {scale:g}] (estimated scale), "
                         f"then /{DEPTH_STD:g} clamped to [0, {DEPTH_CLAMP:g}]")
        return np.clip(depth * float(scale) / DEPTH_STD, 0.0, DEPTH_CLAMP)

    def motion(self, field: np.ndarray, meta: dict, size: tuple[int, int], notes: list[str]) -> np.ndarray:
        cond_size = (field.shape[-1], field.shape[-2])
        src = source_size_from_meta(meta)
        if src is None:
            src = cond_size
            notes.append("motion: meta has no source_size; the conditions' size is taken as the source size")
        fps = meta.get("fps")
        try:
            fps = float(fps) if fps is not None else None
        except (TypeError, ValueError):
            fps = None
        if fps is None:
            notes.append("motion: meta has no fps; frame steps are taken as 4 fps steps")
        step = (fps / PUBLISHED_FPS) if fps else 1.0  # px/frame -> px per 1/4 s
        factor = np.array([src[0] / cond_size[0], src[1] / cond_size[1]], np.float32).reshape(1, 2, 1, 1)
        in_source_px = field * factor * np.float32(step)
        resized = resize_stack(in_source_px, size)  # values NOT rescaled (as published)
        return resized * block_centre_mask(src, cond_size, size)[None, None]


ADAPTERS = {"tiny": TinyAdapter, "official": OfficialAdapter}


def get_adapter(preset: str, **kwargs) -> ConditionAdapter:
    try:
        return ADAPTERS[preset](**kwargs)
    except KeyError:
        raise InputError(f"no condition adapter for preset {preset!r}; choose one of {sorted(ADAPTERS)}") from None
