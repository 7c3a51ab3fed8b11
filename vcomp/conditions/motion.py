"""Motion vectors read straight from the codec (H.264 side data through PyAV), not optical flow.

Convention (the `motion` layout of a ConditionSet):

    motion[T, 2, H, W] float32, pixels per frame step, channel 0 = x, channel 1 = y.
    motion[t, :, y, x] is how far the content shown at (x, y) in frame t moved since frame t-1
    (positive = right / down), i.e. it came from (x, y) - motion[t, :, y, x].
    Frame 0 is zeros. A later frame without motion vectors (an I-frame in the middle of a
    stream) gets the mean of its neighbours' fields (the previous one alone at the end).
    Intra-coded blocks inside a P-frame carry no vector and read 0.
    An 8-pixel cell whose pixels did not change since the previous frame reads 0 (`STILL_THRESHOLD`).

Every field is block-constant: the codec's blocks (16x16 down to 8x8 for H.264 as FFmpeg
exports them) are rasterised on an 8-pixel cell grid and expanded to pixels.

Why the re-encode: FFmpeg exports each block's vector but not which reference picture it uses.
With x264's defaults (3 references, B-frames, b-pyramid) a P-frame vector may span 1-4 frames
and a B-frame vector 1-2 in either direction, chosen per block, so the distance is unknowable.
vcomp therefore reads a stream's own vectors only when every vector provably spans one frame
(H.264, no reordering, SPS max_num_ref_frames == 1, no B-frames or future-reference vectors
observed), and otherwise re-encodes the decoded frames in memory with libx264 `bf=0, refs=1`,
one keyframe and no scene cuts, and reads the vectors of that. See docs/motion.md.

Why still cells read 0: a cell whose content is the same as in the previous frame (a flat
background, a static area) is predicted equally well by any vector that lands on the same
content, and the encoder then picks whichever costs fewest bits: usually the median of its
neighbours' vectors, so an object's motion spreads into the flat background around it. Those
vectors say nothing about motion; on the procedural world they put the raw field as far from
the true motion as an all-zero field is, and they are what a re-rendered clip cannot reproduce
(docs/motion.md#still-cells).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from vcomp.errors import InputError

#: numpy layout of FFmpeg's AVMotionVector (what PyAV's MotionVectors.to_ndarray returns)
MV_DTYPE = np.dtype(
    [
        ("source", "<i4"), ("w", "u1"), ("h", "u1"),
        ("src_x", "<i2"), ("src_y", "<i2"), ("dst_x", "<i2"), ("dst_y", "<i2"),
        ("flags", "<u8"), ("motion_x", "<i4"), ("motion_y", "<i4"), ("motion_scale", "<u2"),
    ],
    align=True,
)
CELL = 8  #: pixels per grid cell; H.264 and MPEG-4 part 2 blocks are multiples of 8 when exported
REENCODE_PRESET = "veryfast"
REENCODE_CRF = 18
REENCODE_MERANGE = 32

Size = tuple[int, int]  # (W, H)


# ----------------------------------------------------------------------------------------------
# vectors -> cell grid -> dense field
# ----------------------------------------------------------------------------------------------
def block_motion(mvs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Content motion (x, y) of each exported block in pixels, float32.

    FFmpeg: `src = dst + motion / motion_scale`; the block at `dst` in this frame is predicted
    from `src` in the reference. For a past reference (source < 0) the content therefore moved
    by `dst - src = -motion / scale`; for a future reference (source > 0) it will move by
    `src - dst = +motion / scale`. Both are per *reference distance*, which the caller must
    know (1 in every stream vcomp reads directly or re-encodes).
    """
    source = mvs["source"]
    scale = np.maximum(mvs["motion_scale"], 1).astype(np.float32)
    factor = np.where(source > 0, np.float32(1), np.float32(-1)) / scale
    return mvs["motion_x"].astype(np.float32) * factor, mvs["motion_y"].astype(np.float32) * factor


def _field_view(mvs: np.ndarray, offset: int, dtype, count: int = 2) -> np.ndarray:
    """`count` consecutive `dtype` members of every AVMotionVector, as an [n, count] view."""
    return np.ndarray((len(mvs), count), dtype, buffer=mvs, offset=offset,
                      strides=(MV_DTYPE.itemsize, np.dtype(dtype).itemsize))


@functools.lru_cache(maxsize=16)
def _macroblock_tables(qw: int, qh: int) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables for blocks laid out like FFmpeg's H.264 / MPEG-4 export (partitions of
    16x16 macroblocks: 16x16, 16x8, 8x16, 8x8), indexed by the block centre on a 4-pixel
    lattice (`qw` x `qh` points). A centre's position modulo 16 fixes the block's size:
    x = 8 (mod 16) means 16 wide, x = 4 or 12 means 8 wide (likewise y); x = 0 means no block.

    Returns (the expected `w | h << 8` per lattice point, 0 = none; the 4 flat 8-pixel cells
    each block covers on a grid `qw // 2` cells wide, repeated for blocks smaller than 16x16).
    """
    qx, qy = np.arange(qw), np.arange(qh)
    mx, my = (qx * 4) % 16, (qy * 4) % 16
    bw = np.where(mx == 8, 16, np.where(mx % 8 == 4, 8, 0))
    bh = np.where(my == 8, 16, np.where(my % 8 == 4, 8, 0))
    expected = (bw[None, :] | (bh[:, None] << 8)) * ((bw[None, :] > 0) & (bh[:, None] > 0))
    x0 = np.maximum(qx * 4 - bw // 2, 0) // CELL  # first cell column of the block
    y0 = np.maximum(qy * 4 - bh // 2, 0) // CELL
    x1 = x0 + np.maximum(bw // CELL - 1, 0)  # last cell column (== x0 for 8-wide blocks)
    y1 = y0 + np.maximum(bh // CELL - 1, 0)
    stride = qw // 2
    cells = np.stack(np.broadcast_arrays(
        y0[:, None] * stride + x0[None, :], y0[:, None] * stride + x1[None, :],
        y1[:, None] * stride + x0[None, :], y1[:, None] * stride + x1[None, :]), -1)
    return expected.astype(np.uint16).ravel(), cells.reshape(-1, 4).astype(np.intp)


def _raw_concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate AVMotionVector arrays as bytes (numpy copies structured records slowly)."""
    if len(arrays) == 1:
        return arrays[0]
    return np.concatenate([a.view(np.uint8) for a in arrays]).view(MV_DTYPE)


def _grids_fast(arrays: list[np.ndarray], slots: list[int], count: int, width: int,
                height: int) -> tuple[np.ndarray, int] | None:
    """Grids of several frames in one pass of ~20 numpy calls, for the common case: one
    reference direction and one motion_scale across the batch, and blocks that are macroblock
    partitions (checked exactly against `_macroblock_tables`). Returns
    (grids[count, 2, hg, wg], source sign) or None when the vectors are anything else. Frames
    not in `slots` are zeros."""
    allm = _raw_concat(arrays)
    source, scale = allm["source"], allm["motion_scale"]
    s0, sc0 = int(source[0]), int(scale[0])
    if sc0 <= 0 or not (source == s0).all() or not (scale == sc0).all():
        return None
    qw, qh = -(-width // 16) * 4, -(-height // 16) * 4
    qx = allm["dst_x"] >> 2  # block centres on the 4-px lattice
    qy = allm["dst_y"] >> 2
    if min(qx.min(), qy.min()) < 0 or qx.max() >= qw or qy.max() >= qh:
        return None
    key = qy.astype(np.intp)
    key *= qw
    key += qx
    expected, cells = _macroblock_tables(qw, qh)
    if (expected[key] != _field_view(allm, 4, np.uint16, 1)[:, 0]).any():
        return None
    per = (qh // 2) * (qw // 2)
    idx = cells.take(key, axis=0)  # (much faster than cells[key])
    if count > 1:
        idx += np.repeat(np.asarray(slots, np.intp) * per, [len(a) for a in arrays])[:, None]
    # (motion_x, motion_y) copied out as one 8-byte item, then converted contiguously
    v = np.ascontiguousarray(_field_view(allm, 24, np.int64, 1)[:, 0]).view(np.int32).astype(np.float32)
    v *= np.float32((1.0 if s0 > 0 else -1.0) / sc0)
    grid = np.zeros(count * per, np.int64)  # (x, y) float32 pairs moved as one 8-byte item
    grid[idx.ravel()] = np.repeat(v.view(np.int64), 4)
    grids = grid.view(np.float32).reshape(count, qh // 2, qw // 2, 2).transpose(0, 3, 1, 2)
    return grids[:, :, :-(-height // CELL), :-(-width // CELL)], s0


def _block_cells(gx0, gy0, kx, ky, stride: int):
    """Flat cell indices covered by each block, grouped by block shape: yields (selection, idx)
    with idx[n, kx*ky] for the blocks `selection` (None = all) spanning kx x ky cells from
    (gx0, gy0) on a grid `stride` cells wide. Loops over the few distinct shapes, not blocks."""
    kx0, ky0 = int(kx[0]), int(ky[0])
    if (kx == kx0).all() and (ky == ky0).all():
        classes = [(None, kx0, ky0)]
    else:
        code = kx.astype(np.intp) * 4096 + ky
        classes = [(np.flatnonzero(code == c), int(c) // 4096, int(c) % 4096)
                   for c in np.flatnonzero(np.bincount(code))]
    flat0 = gy0.astype(np.intp) * stride + gx0
    for sel, a, b in classes:
        offsets = (np.arange(b)[:, None] * stride + np.arange(a)).ravel()
        yield sel, (flat0 if sel is None else flat0[sel])[:, None] + offsets


def _grid_generic(mvs: np.ndarray, width: int, height: int, cell: int) -> np.ndarray:
    """`vectors_to_grid` for any block layout, sign mix and cell size."""
    hg, wg = -(-height // cell), -(-width // cell)
    vx, vy = block_motion(mvs)
    w = mvs["w"].astype(np.int32)
    h = mvs["h"].astype(np.int32)
    x0 = mvs["dst_x"] - (w >> 1)
    y0 = mvs["dst_y"] - (h >> 1)
    if x0.min() < 0 or y0.min() < 0:  # never produced by FFmpeg; drop rather than wrap around
        keep = (x0 >= 0) & (y0 >= 0)
        mvs, vx, vy, w, h, x0, y0 = mvs[keep], vx[keep], vy[keep], w[keep], h[keep], x0[keep], y0[keep]
        if not len(mvs):
            return np.zeros((2, hg, wg), np.float32)
    aligned = not ((w | h | x0 | y0) & (cell - 1)).any()
    gx0, gy0 = x0 // cell, y0 // cell
    if aligned:
        kx, ky = w // cell, h // cell
    else:  # snap outward to whole cells
        kx = -(-(x0 + w) // cell) - gx0
        ky = -(-(y0 + h) // cell) - gy0
    wp = max(wg, int((gx0 + kx).max()))  # pad so every block fits; cropped at the end
    hp = max(hg, int((gy0 + ky).max()))
    grid = np.zeros((2, hp * wp), np.float32)
    source = mvs["source"]
    if aligned and (source == source[0]).all():
        # one vector per partition and list: cells never overlap -> plain assignment
        for sel, idx in _block_cells(gx0, gy0, kx, ky, wp):
            grid[0][idx] = (vx if sel is None else vx[sel])[:, None]
            grid[1][idx] = (vy if sel is None else vy[sel])[:, None]
    else:
        parts = list(_block_cells(gx0, gy0, kx, ky, wp))
        flat = np.concatenate([idx.ravel() for _, idx in parts])
        n = hp * wp
        count = np.bincount(flat, minlength=n).astype(np.float32)
        np.maximum(count, 1, out=count)
        for c, v in enumerate((vx, vy)):
            vals = np.concatenate([np.repeat(v if sel is None else v[sel], idx.shape[1])
                                   for sel, idx in parts])
            grid[c] = np.bincount(flat, weights=vals, minlength=n) / count
    return grid.reshape(2, hp, wp)[:, :hg, :wg]


def _vectors_to_grids(mvs_list, width: int, height: int) -> tuple[np.ndarray, bool]:
    """(grids[K, 2, hg, wg] on 8-pixel cells, whether any vector uses a future reference)."""
    hg, wg = -(-height // CELL), -(-width // CELL)
    slots = [k for k, m in enumerate(mvs_list) if m is not None and len(m)]
    if not slots:
        return np.zeros((len(mvs_list), 2, hg, wg), np.float32), False
    arrays = [mvs_list[k] for k in slots]
    if all(a.dtype == MV_DTYPE and a.flags.c_contiguous for a in arrays):
        fast = _grids_fast(arrays, slots, len(mvs_list), width, height)
        if fast is not None:
            return fast[0], fast[1] > 0
    grids = np.zeros((len(mvs_list), 2, hg, wg), np.float32)
    future = False
    for k, a in zip(slots, arrays):
        grids[k] = _grid_generic(a, width, height, CELL)
        future = future or bool((a["source"] > 0).any())
    return grids, future


def vectors_to_grids(mvs_list: list[np.ndarray | None], width: int, height: int) -> np.ndarray:
    """`vectors_to_grid` for several frames at once (vectorised over frames and blocks):
    float32 `[K, 2, ceil(H/8), ceil(W/8)]`."""
    return _vectors_to_grids(mvs_list, width, height)[0]


def vectors_to_grid(mvs: np.ndarray | None, width: int, height: int, cell: int = CELL) -> np.ndarray:
    """Rasterise exported blocks on a `cell`-pixel grid: float32 `[2, ceil(H/cell), ceil(W/cell)]`.

    Blocks aligned to the grid (always, for H.264/MPEG-4 with cell=8) are filled exactly; a
    block that is not is snapped outward to whole cells. Where several vectors land on one cell
    (bi-predicted B blocks, or snapped blocks) the cell gets their mean; cells no vector covers
    (intra blocks) are 0. Blocks reaching past the frame (the coded size is a whole number of
    16x16 macroblocks) are cut off. The sign follows `source` (see `block_motion`).
    """
    if cell == CELL:
        return _vectors_to_grids([mvs], width, height)[0][0]
    if mvs is None or not len(mvs):
        return np.zeros((2, -(-height // cell), -(-width // cell)), np.float32)
    return _grid_generic(mvs, width, height, cell)


def grids_to_fields(grids: np.ndarray, width: int, height: int, cell: int = CELL,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Expand cell grids `[K, 2, hg, wg]` to dense float32 fields `[K, 2, H, W]` (each cell ->
    cell x cell pixels). A grid smaller than the frame (a frame encoded one row/column smaller
    because of an odd size) is extended by repeating its last row/column. `out`, if given, must
    be a C-contiguous float32 `[K, 2, H, W]`."""
    k = grids.shape[0]
    hg, wg = -(-height // cell), -(-width // cell)
    if grids.shape[2] < hg or grids.shape[3] < wg:
        grids = np.pad(grids, ((0, 0), (0, 0), (0, max(0, hg - grids.shape[2])),
                               (0, max(0, wg - grids.shape[3]))), mode="edge")
    if out is None:
        out = np.empty((k, 2, height, width), np.float32)
    # each row of cells once (small), then every pixel row copied from it (contiguous, fast)
    rows = np.empty((k, 2, hg, wg, cell), np.float32)
    rows[...] = grids[:, :, :hg, :wg, None]
    rows = rows.reshape(k, 2, hg, wg * cell)[..., :width]
    full = height // cell
    if full:
        s0, s1, s2, s3 = out.strides
        view = np.lib.stride_tricks.as_strided(out, (k, 2, full, cell, width),
                                               (s0, s1, cell * s2, s2, s3), writeable=True)
        view[...] = rows[:, :, :full, None, :]
    if height > full * cell:
        out[:, :, full * cell:, :] = rows[:, :, full, None, :]
    return out


def grid_to_field(grid: np.ndarray, width: int, height: int, cell: int = CELL,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Expand one cell grid `[2, hg, wg]` to a dense float32 field `[2, H, W]`."""
    return grids_to_fields(grid[None], width, height, cell, None if out is None else out[None])[0]


def vectors_to_field(mvs: np.ndarray | None, width: int, height: int,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Dense `[2, H, W]` float32 field: every exported block filled with its content motion.

    `mvs` is a structured array in FFmpeg's AVMotionVector layout (`MV_DTYPE`, PyAV's
    `frame.side_data.get("MOTION_VECTORS").to_ndarray()`); None or empty gives zeros. The sign
    follows `source` (see `block_motion`); pixels no block covers are 0; bi-predicted blocks get
    the mean of their two vectors. Assumes each vector spans one frame step.
    """
    cell = CELL
    if mvs is not None and len(mvs):
        w = mvs["w"].astype(np.int32)
        h = mvs["h"].astype(np.int32)
        bits = np.bitwise_or.reduce(w | h | (mvs["dst_x"] - (w >> 1)) | (mvs["dst_y"] - (h >> 1)))
        bits = int(bits) | CELL
        cell = bits & -bits  # largest power of two (<= 8) dividing every block edge
    return grid_to_field(vectors_to_grid(mvs, width, height, cell), width, height, cell, out)


# ----------------------------------------------------------------------------------------------
# resizing (scale to cover, then centre crop: the geometry frames get in vcomp.io)
# ----------------------------------------------------------------------------------------------
def _cover(src: Size, dst: Size):
    from vcomp.io.transform import cover_geometry

    return cover_geometry(src, dst)


def resize_motion(field: np.ndarray, size: Size) -> np.ndarray:
    """Scale a `[2,H,W]` (or `[T,2,H,W]`) field to cover `size` (W, H), centre-crop, and rescale
    the vectors to output pixels: x by scaled_W / W and y by scaled_H / H (both equal to the
    cover factor s = max(W'/W, H'/H) up to rounding). Same geometry as `vcomp.io.resize_cover`
    (INTER_AREA when shrinking, INTER_LINEAR when enlarging).
    """
    import cv2

    field = np.asarray(field, np.float32)
    if field.ndim == 4:
        return np.stack([resize_motion(f, size) for f in field])
    _, h, w = field.shape
    if (w, h) == tuple(size):
        return field.copy()
    _, (sw, sh), (ox, oy) = _cover((w, h), size)
    interp = cv2.INTER_AREA if sw < w else cv2.INTER_LINEAR
    out = np.empty((2, size[1], size[0]), np.float32)
    for c, factor in ((0, sw / w), (1, sh / h)):
        resized = cv2.resize(field[c], (sw, sh), interpolation=interp)
        np.multiply(resized[oy:oy + size[1], ox:ox + size[0]], np.float32(factor), out=out[c])
    return out


class _GridResizer:
    """Cell grids of `src`-sized frames -> cover-resized, centre-cropped `dst` fields, directly.

    Each output pixel takes the cell under its centre (the dense block-constant field sampled
    at that point), so no full-resolution field is ever built. When an output pixel is larger
    than a cell, the grid is first box-averaged by the integer factor that makes cells at least
    as large as output pixels.
    """

    def __init__(self, src: Size, dst: Size, cell: int, grid_shape: tuple[int, int]):
        w, h = src
        _, (sw, sh), (ox, oy) = _cover(src, dst)
        self.factor = np.array([sw / w, sh / h], np.float32).reshape(1, 2, 1, 1)
        self.pool = max(1, int(min(w / sw, h / sh) // cell))
        hg, wg = grid_shape
        self.pooled = (-(-hg // self.pool), -(-wg // self.pool))
        size = cell * self.pool
        u = (np.arange(dst[0]) + ox + 0.5) * (w / sw)
        v = (np.arange(dst[1]) + oy + 0.5) * (h / sh)
        self.cols = np.clip((u // size).astype(np.intp), 0, self.pooled[1] - 1)
        self.rows = np.clip((v // size).astype(np.intp), 0, self.pooled[0] - 1)

    def __call__(self, grids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """[K, 2, hg, wg] -> [K, 2, H', W']."""
        if self.pool > 1:
            p = self.pool
            hp, wp = self.pooled
            k = grids.shape[0]
            grids = np.pad(grids, ((0, 0), (0, 0), (0, hp * p - grids.shape[2]),
                                   (0, wp * p - grids.shape[3])), mode="edge")
            grids = grids.reshape(k, 2, hp, p, wp, p).mean(axis=(3, 5))
        fields = grids.take(self.rows, axis=2).take(self.cols, axis=3)
        if out is None:
            fields *= self.factor
            return fields
        np.multiply(fields, self.factor, out=out)
        return out


# ----------------------------------------------------------------------------------------------
# reading vectors: directly, or through an in-memory bf=0/refs=1 re-encode
# ----------------------------------------------------------------------------------------------
GRID_BATCH = 16  #: at most this many frames' vectors are rasterised in one vectorised pass,
GRID_BATCH_BLOCKS = 8192  #: or fewer once they hold this many blocks (big batches leave the cache)
FIELD_BATCH_BYTES = 1 << 20  #: dense fields expanded per pass (small batches stay in cache)


def _frame_vectors(frame) -> np.ndarray | None:
    sd = frame.side_data.get("MOTION_VECTORS")
    if sd is None:
        return None
    return np.frombuffer(sd, dtype=MV_DTYPE)


#: an 8-pixel cell whose luma changed by less than this on average (0-255 levels) since the
#: previous frame reads 0 (`still_cells`); 0 keeps every vector the codec exported
STILL_THRESHOLD = 2.0


def extractor_info(**extra) -> dict:
    """What a motion condition's metadata records about how it was read."""
    return {"extractor": "h264-side-data", "still_threshold": STILL_THRESHOLD, **extra}


def frame_luma(frame) -> np.ndarray:
    """The luma plane of a decoded av.VideoFrame, uint8 [H, W] (a view for 8-bit planar YUV)."""
    if frame.format.name in ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"):
        plane = frame.planes[0]
        return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]
    return frame.to_ndarray(format="gray")


def still_cells(previous: np.ndarray, current: np.ndarray, threshold: float = STILL_THRESHOLD) -> np.ndarray:
    """bool [ceil(H/8), ceil(W/8)]: the 8-pixel cells whose luma ([H, W] uint8 planes of a frame
    and its reference) changed by less than `threshold` on average. A partial cell at the right
    or bottom edge is averaged with its last column/row repeated. (OpenCV: ~0.5 ms at 720p.)"""
    import cv2

    h, w = current.shape
    hc, wc = -(-h // CELL), -(-w // CELL)
    change = cv2.absdiff(np.ascontiguousarray(previous), np.ascontiguousarray(current))
    if (hc * CELL, wc * CELL) != (h, w):
        change = cv2.copyMakeBorder(change, 0, hc * CELL - h, 0, wc * CELL - w, cv2.BORDER_REPLICATE)
    return cv2.resize(change.astype(np.float32), (wc, hc), interpolation=cv2.INTER_AREA) < threshold


#: what the vector readers yield per decoded frame: (index, the exported vectors or None, the
#: `still_cells` grid against the previous frame or None); `_batched_grids` zeroes still cells
FrameVectors = tuple[int, "np.ndarray | None", "np.ndarray | None"]


def checked_still_threshold(threshold: float) -> float:
    """`threshold` as a float; a negative or NaN one is an InputError (before any decoding)."""
    if not threshold >= 0:
        raise InputError(f"the still threshold must be 0 or more (got {threshold})")
    return float(threshold)


class _StillFilter:
    """`(vectors, still cells)` of decoded frames one after another: remembers the previous
    frame's luma, the reference of every vector vcomp reads (one reference, no B-frames)."""

    def __init__(self, threshold: float = STILL_THRESHOLD):
        self.threshold = checked_still_threshold(threshold)
        self.previous: tuple | None = None

    def __call__(self, frame) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The vectors of the decoded `frame` and its still cells (None: none to drop)."""
        mvs = _frame_vectors(frame)
        if not self.threshold:
            return mvs, None
        luma, still = frame_luma(frame), None
        if self.previous is not None and self.previous[1].shape == luma.shape:  # also vector-less frames: filled later
            still = still_cells(self.previous[1], luma, self.threshold)
        self.previous = (frame, luma)  # the frame keeps its buffer (and so the luma view) alive
        return mvs, still


def reencode_options(preset: str = REENCODE_PRESET, crf: int = REENCODE_CRF) -> dict[str, str]:
    """libx264 options under which every motion vector spans exactly one frame step."""
    return {
        "bf": "0", "refs": "1",  # no B-frames, one reference: every vector points one frame back
        "sc_threshold": "0",
        # one I-frame only; uneven multi-hexagon search over +-32 px so that large motion
        # (sampled frames far apart) is found, not just what the predictors suggest
        "x264-params": f"keyint=infinite:scenecut=0:me=umh:merange={REENCODE_MERANGE}",
        "preset": preset, "crf": str(crf),
    }


def _fps_fraction(fps: float) -> Fraction:
    if fps and fps > 0 and math.isfinite(fps):
        return Fraction(fps).limit_denominator(1001)
    return Fraction(25)


class _Reencoder:
    """libx264 (bf=0, refs=1) encoder wired straight into an H.264 decoder exporting vectors.

    `push(index, frame)` takes an av.VideoFrame and returns the `FrameVectors` that came out;
    `flush()` returns the rest. Nothing touches the disk.
    """

    def __init__(self, width: int, height: int, fps: float, preset: str = REENCODE_PRESET,
                 crf: int = REENCODE_CRF, still_threshold: float = STILL_THRESHOLD):
        import av

        self.width, self.height = width, height
        rate = _fps_fraction(fps)
        self.enc = av.CodecContext.create("libx264", "w")
        self.enc.width, self.enc.height = width, height
        self.enc.pix_fmt = "yuv420p"
        self.enc.time_base = 1 / rate
        self.enc.framerate = rate
        self.enc.options = reencode_options(preset, crf)
        self.dec = av.CodecContext.create("h264", "r")
        self.dec.options = {"flags2": "+export_mvs"}
        self.pending: list[int] = []
        self.count = 0
        self.vectors = _StillFilter(still_threshold)

    def _drain(self, packets) -> list[FrameVectors]:
        out = []
        for packet in packets:
            for frame in self.dec.decode(packet):
                out.append((self.pending.pop(0), *self.vectors(frame)))
        return out

    def push(self, index: int, frame) -> list[FrameVectors]:
        if frame.format.name != "yuv420p" or frame.width != self.width or frame.height != self.height:
            frame = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        frame.pts = self.count
        frame.pict_type = 0  # never force a keyframe because the source frame was one
        self.count += 1
        self.pending.append(index)
        return self._drain(self.enc.encode(frame))

    def flush(self) -> list[FrameVectors]:
        out = self._drain(self.enc.encode(None))
        for frame in self.dec.decode(None):
            out.append((self.pending.pop(0), *self.vectors(frame)))
        return out


def _even(n: int) -> int:
    return max(2, n - (n & 1))


def _rgb_to_videoframe(array: np.ndarray, width: int, height: int):
    import av

    if array.shape[1] != width or array.shape[0] != height:
        array = array[:height, :width]
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")


class _NotDirect(Exception):
    """The stream's own vectors cannot be used from frame `index` on."""

    def __init__(self, index: int, reason: str):
        super().__init__(reason)
        self.index = index


def _fitted(still: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A still-cell grid on the vector grid's cells: the same grid, or (a decoder that pads its
    planes differently) the nearest cell of it, rather than silently not filtering."""
    if still.shape == tuple(shape):
        return still
    import cv2

    return cv2.resize(still.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


#: what the grid stages yield per frame: (index, grid [2, hg, wg] or None when the frame has no
#: vectors, None or that vector-less frame's still cells, for `_fill_missing`)
FrameGrid = tuple[int, "np.ndarray | None", "np.ndarray | None"]


def _batched_grids(items: Iterable[FrameVectors], width: int, height: int,
                   strict: bool = False) -> Iterator[FrameGrid]:
    """(index, vectors, still cells) -> `FrameGrid`s, still cells at 0, rasterising GRID_BATCH frames per vectorised pass. `strict`: a batch with any future-reference vector
    raises _NotDirect at its first frame (none of the batch is yielded). A _NotDirect raised by
    `items` is re-raised after the frames before it are yielded."""

    def run(batch):
        grids, future = _vectors_to_grids([m for _, m, _ in batch], width, height)
        if strict and future:
            raise _NotDirect(batch[0][0], "future-reference (B) vectors")
        for k, (index, mvs, still) in enumerate(batch):
            if mvs is None or not len(mvs):
                yield index, None, still
                continue
            if still is not None:
                grids[k][:, _fitted(still, grids.shape[2:])] = 0
            yield index, grids[k], None

    batch: list = []
    blocks = 0
    try:
        for item in items:
            batch.append(item)
            blocks += 0 if item[1] is None else len(item[1])
            if len(batch) == GRID_BATCH or blocks >= GRID_BATCH_BLOCKS:
                yield from run(batch)
                batch, blocks = [], 0
    except _NotDirect:
        if batch:
            yield from run(batch)
        raise
    if batch:
        yield from run(batch)


def _fill_missing(grids: Iterable[FrameGrid], shape: tuple[int, int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """Frame 0 -> zeros; a later frame without vectors -> mean of the previous and next grids
    (the previous alone when the stream ends), its own still cells at 0 as in any other frame."""
    previous = None
    waiting: list[tuple[int, np.ndarray | None]] = []

    def filled(estimate: np.ndarray, still: np.ndarray | None) -> np.ndarray:
        if still is None:
            return estimate
        out = estimate.copy()
        out[:, _fitted(still, shape[1:])] = 0
        return out

    for index, grid, still in grids:
        if previous is None:
            previous = np.zeros(shape, np.float32)
            yield index, previous
            continue
        if grid is None:
            waiting.append((index, still))
            continue
        if waiting:
            mean = (previous + grid) * np.float32(0.5)
            for w, cells in waiting:
                yield w, filled(mean, cells)
            waiting = []
        previous = grid
        yield index, grid
    for w, cells in waiting:
        yield w, filled(previous, cells)


def motion_from_frames(frames: np.ndarray, fps: float = 8.0, *, preset: str = REENCODE_PRESET,
                       crf: int = REENCODE_CRF, still_threshold: float = STILL_THRESHOLD) -> np.ndarray:
    """Motion between consecutive *given* frames: `[T,H,W,3]` uint8 RGB -> `[T,2,H,W]` float32.

    The frames are encoded in memory with libx264 (bf=0, refs=1, a single I-frame) and the
    decoder's exported vectors are read back, so motion[t] is between frames[t-1] and frames[t]
    whatever their spacing in the source (sample every 2nd frame and the vectors double).
    Odd sizes are encoded one row/column smaller; the last row/column repeats its neighbour.
    Cells that did not change read 0 (`still_threshold`; 0 keeps every exported vector).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be [T,H,W,3] RGB (got shape {tuple(frames.shape)})")
    if frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8 RGB (got {frames.dtype}); convert with (x*255).astype(np.uint8)")
    t, h, w = frames.shape[:3]
    if w < 16 or h < 16:
        raise InputError(f"frames are {w}x{h}; motion vectors need at least 16x16 pixels")
    out = np.zeros((t, 2, h, w), np.float32)
    if t < 2:
        return out
    ew, eh = _even(w), _even(h)
    coder = _Reencoder(ew, eh, fps, preset, crf, still_threshold)

    def vectors():
        for i, array in enumerate(frames):
            yield from coder.push(i, _rgb_to_videoframe(array, ew, eh))
        yield from coder.flush()

    shape = (2, -(-eh // CELL), -(-ew // CELL))
    grids = [g for _, g in _fill_missing(_batched_grids(vectors(), ew, eh), shape)]
    return grids_to_fields(np.stack(grids), w, h, CELL, out=out)


# ----------------------------------------------------------------------------------------------
# whole videos
# ----------------------------------------------------------------------------------------------
def _open(path: Path):
    from vcomp.io.video import _open_container, _require_exists

    _require_exists(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder of images; motion vectors need a video file "
                         "(or read the frames and use motion_from_frames)")
    return _open_container(path)


def direct_read_check(path: str | os.PathLike) -> tuple[bool, str]:
    """Can the stream's own vectors be used (every vector spans exactly one frame)?

    Returns (ok, reason). True only for H.264 with no frame reordering
    (`codec_context.has_b_frames == 0`) whose every SPS (from the extradata, or the first
    packets of an Annex-B stream) has `max_num_ref_frames == 1`. Decoding re-checks each frame
    (no B-frames, no future-reference vectors, no two vector-less frames in a row) and switches
    to the re-encode from the first frame that fails.
    """
    with _open(Path(path)) as container:
        return _check_container(container)[:2]


def _check_container(container) -> tuple[bool, str, bool]:
    """`direct_read_check` on an open container, plus whether packets were read from it (only
    when the SPS is not in the extradata; the container must then be reopened to decode)."""
    from vcomp.conditions._motion_h264 import sps_from_bytes

    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx.name != "h264":
        return False, f"codec is {ctx.name}, not h264", False
    if ctx.has_b_frames:
        return False, "stream reorders frames (B-frames)", False
    extradata = ctx.extradata
    sps = sps_from_bytes(extradata)
    demuxed = not sps
    if not sps:
        avcc = bool(extradata) and extradata[0] == 1
        for n, packet in enumerate(container.demux(stream)):
            sps = sps_from_bytes(bytes(packet), avcc_packets=avcc)
            if sps or n >= 8:
                break
    if not sps:
        return False, "no readable SPS", demuxed
    refs = max(s.max_num_ref_frames for s in sps)
    if refs != 1:
        return False, f"SPS allows {refs} reference frames", demuxed
    return True, "h264, no B-frames, 1 reference frame", demuxed


def _decode_error(path, exc) -> InputError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(f"{path} is truncated or corrupt ({text[:120]}); re-export or re-download it")


def _direct_vectors(path: Path, container=None,
                    still_threshold: float = STILL_THRESHOLD) -> Iterator[FrameVectors]:
    """`FrameVectors` of every frame, read from the stream itself (from `container` if given,
    unread, else a fresh open); raises _NotDirect(i) when frame i shows the stream is not
    one-reference/no-B after all (nothing from i on is yielded)."""
    import av

    with container if container is not None else _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.options = {"flags2": "+export_mvs"}
        vectors = _StillFilter(still_threshold)
        held: tuple | None = None  # a vector-less frame (index, still cells) waits for its successor
        try:
            for index, frame in enumerate(container.decode(stream)):
                if frame.pict_type == 3:  # AV_PICTURE_TYPE_B
                    raise _NotDirect(index if held is None else held[0], "B-frame")
                mvs, still = vectors(frame)
                if index and (mvs is None or not len(mvs)):
                    if held is not None:
                        raise _NotDirect(held[0], "two frames in a row without vectors")
                    held = (index, still)
                    continue
                if held is not None:
                    yield held[0], None, held[1]
                    held = None
                yield index, mvs, still
        except av.error.FFmpegError as exc:
            raise _decode_error(path, exc) from None
        if held is not None:
            yield held[0], None, held[1]


def _reencoded_vectors(path: Path, start: int, size: Size | None, fps: float, src: Size,
                       still_threshold: float = STILL_THRESHOLD) -> Iterator[FrameVectors]:
    """`FrameVectors` for frames >= start, from an in-memory bf=0/refs=1 re-encode of the
    decoded frames (frame start-1 is encoded first, as the I-frame, so frame `start` has
    vectors). With `size`, frames are cover-resized to it before encoding."""
    import av

    if size is not None:
        _, (sw, sh), (ox, oy) = _cover(src, size)
        ew, eh = _even(size[0]), _even(size[1])
    else:
        ew, eh = _even(src[0]), _even(src[1])
    crop = size is not None or (ew, eh) != tuple(src)
    coder = _Reencoder(ew, eh, fps, still_threshold=still_threshold)
    first = max(0, start - 1)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index < first:
                    continue
                if crop:
                    if size is not None:
                        rgb = frame.reformat(width=sw, height=sh, format="rgb24").to_ndarray()
                        rgb = rgb[oy:oy + size[1], ox:ox + size[0]]
                    else:
                        rgb = frame.to_ndarray(format="rgb24")
                    frame = _rgb_to_videoframe(rgb, ew, eh)
                for item in coder.push(index, frame):
                    if item[0] >= start:
                        yield item
        except av.error.FFmpegError as exc:
            raise _decode_error(path, exc) from None
    for item in coder.flush():
        if item[0] >= start:
            yield item


def _probe(container) -> tuple[Size, float, int, str]:
    stream = container.streams.video[0]
    ctx = stream.codec_context
    fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 0) or 25.0
    count = int(stream.frames or 0)
    if not count and stream.duration and stream.time_base:
        count = int(round(float(stream.duration * stream.time_base) * fps))
    return (int(ctx.width), int(ctx.height)), fps, count, ctx.name


class MotionReader:
    """Streams the motion field of a video at its native frame rate.

    `method`: "auto" (direct when `direct_read_check` passes, else re-encode), "direct" (the
    stream's own vectors; still switches to the re-encode from the first frame that proves them
    unusable) or "reencode". After iterating, `.method_used` says which path produced the
    vectors, `.switched_at` the frame where a direct read fell back (None if it did not) and
    `.reason` why. `still_threshold`: cells whose pixels changed less than this since the previous
    frame read 0 (`still_cells`; 0 keeps every exported vector).

    With `size` (W, H) the re-encode path encodes frames already cover-resized to `size`
    (cheaper, and the vectors are then in output pixels); the direct path resizes the cell grid
    (`_GridResizer`). Memory: a few batches of cell grids plus at most one batch of fields
    (FIELD_BATCH_BYTES) are alive at a time, whatever the length of the video.
    """

    def __init__(self, path: str | os.PathLike, size: Size | None = None, *, method: str = "auto",
                 still_threshold: float = STILL_THRESHOLD):
        if method not in ("auto", "direct", "reencode"):
            raise InputError(f"motion method {method!r} is not one of auto, direct, reencode")
        self.still_threshold = checked_still_threshold(still_threshold)
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1])) if size is not None else None
        if self.size is not None and (self.size[0] < 16 or self.size[1] < 16):
            raise InputError(f"motion size {self.size[0]}x{self.size[1]} is too small; give at least 16x16")
        # one open serves the probe, the check and (direct path) the first decoding pass: opening
        # costs milliseconds, as much as decoding dozens of small frames
        self._container = container = _open(self.path)
        try:
            self.src, self.fps, self.frame_count, self.codec = _probe(container)
            if self.src[0] < 16 or self.src[1] < 16:
                raise InputError(f"{self.path} is {self.src[0]}x{self.src[1]}; motion vectors need "
                                 "at least 16x16 pixels")
            self.reason, demuxed = f"method={method} requested", False
            if method == "auto":
                ok, self.reason, demuxed = _check_container(container)
                method = "direct" if ok else "reencode"
        except BaseException:
            self.close()
            raise
        if method != "direct" or demuxed:
            self.close()
        self.method = method
        self.method_used = method
        self.switched_at: int | None = None
        # the frame size the cell grid refers to, and whether that already is the output size
        if method == "reencode" and self.size is not None:
            self.grid_src, self.grid_at_out = self.size, True
        else:
            self.grid_src, self.grid_at_out = self.src, self.size is None
        self.grid_shape = (2, -(-self.grid_src[1] // CELL), -(-self.grid_src[0] // CELL))

    def close(self) -> None:
        """Close the file kept open between the check and the first pass (iterating does it)."""
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()

    def __del__(self):
        self.close()

    def __enter__(self) -> MotionReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def out_size(self) -> Size:
        return self.size if self.size is not None else self.src

    def nbytes(self, frames: int | None = None) -> int:
        """Bytes of the float32 `[T,2,H,W]` array for `frames` (default: the whole video)."""
        w, h = self.out_size
        return motion_nbytes(self.frame_count if frames is None else frames, w, h)

    def _raw_grids(self) -> Iterator[FrameGrid]:
        start, size = 0, self.size if self.grid_at_out else None
        if self.method == "direct":
            try:
                container, self._container = self._container, None
                yield from _batched_grids(_direct_vectors(self.path, container, self.still_threshold), *self.src,
                                          strict=True)
                return
            except _NotDirect as exc:
                self.switched_at = start = exc.index
                self.method_used = "direct+reencode"
                self.reason = f"fell back to the re-encode at frame {exc.index}: {exc}"
                size = None  # keep the grid geometry of the frames already read
        w, h = size or self.src
        _, hg, wg = self.grid_shape
        vectors = _reencoded_vectors(self.path, start, size, self.fps, self.src, self.still_threshold)
        for index, grid, still in _batched_grids(vectors, _even(w), _even(h)):
            if grid is not None and grid.shape != self.grid_shape:  # encoded 1 px smaller (odd size)
                grid = np.pad(grid[:, :hg, :wg], ((0, 0), (0, hg - min(hg, grid.shape[1])),
                                                  (0, wg - min(wg, grid.shape[2]))), mode="edge")
            yield index, grid, still

    def iter_grids(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield `(frame_index, grid[2, hg, wg])`: the 8-pixel cell grid of each frame (of the
        source, or of `size` when the re-encode encoded at `size`), vector-less frames filled."""
        wanted = None if indices is None else {int(i) for i in indices}
        last = max(wanted, default=-1) if wanted is not None else None
        if last == -1:
            return
        for index, grid in _fill_missing(self._raw_grids(), self.grid_shape):
            if wanted is None or index in wanted:
                yield index, grid
            if last is not None and index >= last:
                return  # stop decoding after the last frame asked for

    def _expander(self) -> _GridResizer | None:
        if not self.grid_at_out and getattr(self, "_resizer", None) is None:
            self._resizer = _GridResizer(self.grid_src, self.size, CELL, self.grid_shape[1:])
        return getattr(self, "_resizer", None)

    def _expand(self, grids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if self.grid_at_out:
            w, h = self.out_size
            return grids_to_fields(grids, w, h, CELL, out=out)
        return self._expander()(grids, out=out)

    def field_batch(self) -> int:
        w, h = self.out_size
        return max(1, min(16, FIELD_BATCH_BYTES // motion_nbytes(1, w, h)))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        return self.iter()

    def iter(self, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield `(frame_index, field[2,H,W] float32)` in frame order; with `indices`, only
        those frames (the vectors of the others are still read: cheap, and vector-less frames
        need their neighbours; decoding stops after the last one).

        Fields are expanded a few frames at a time (each yielded field is a view into its
        batch); fields of THREAD_FIELD_BYTES or more are expanded on a worker thread while the
        next frames decode (numpy releases the GIL while it copies). A batch nobody references
        any more (reference count) is reused for a later one: a kept field stays valid."""
        w, h = self.out_size
        batch = self.field_batch()
        pool = _BatchPool()
        self._expander()  # built here, not lazily on the worker
        executor = None
        if motion_nbytes(1, w, h) >= THREAD_FIELD_BYTES:
            from concurrent.futures import ThreadPoolExecutor

            executor = ThreadPoolExecutor(1, thread_name_prefix="vcomp-motion")
        pending = None
        buf: list = []
        try:
            for item in self.iter_grids(indices):
                buf.append(item)
                if len(buf) == batch:
                    submitted = self._submit(buf, pool, executor)
                    if pending is not None:
                        yield from self._collect(*pending, pool)
                    pending, buf = submitted, []
            if buf:
                submitted = self._submit(buf, pool, executor)
                if pending is not None:
                    yield from self._collect(*pending, pool)
                pending = submitted
            if pending is not None:
                yield from self._collect(*pending, pool)
        finally:
            pending = None
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)

    def _submit(self, buf, pool, executor):
        grids = np.stack([g for _, g in buf])
        out = pool.take((len(buf), 2, self.out_size[1], self.out_size[0]))
        if executor is None:
            return [i for i, _ in buf], self._expand(grids, out)
        return [i for i, _ in buf], executor.submit(self._expand, grids, out)

    @staticmethod
    def _collect(indices, fields, pool) -> Iterator[tuple[int, np.ndarray]]:
        if not isinstance(fields, np.ndarray):
            fields = fields.result()
        pool.give(fields)
        for k, index in enumerate(indices):
            yield index, fields[k]


THREAD_FIELD_BYTES = 1 << 20  #: fields this big (>= ~360x360) are expanded on a worker thread


class _BatchPool:
    """Output batches handed out again only when nothing else references them, so a caller that
    keeps fields never sees them overwritten, and one that drops them costs no new allocation
    (fresh arrays are page-faulted in: ~30% slower to fill). Three rotate: one being filled,
    one being consumed, and the previous one, whose last field a plain `for i, f in ...` loop
    still holds while the next is built."""

    def __init__(self, keep: int = 3):
        self.keep = keep
        self.spares: list[np.ndarray] = []

    def give(self, fields: np.ndarray) -> None:
        self.spares.append(fields)
        if len(self.spares) > self.keep:
            self.spares.pop(0)

    def take(self, shape) -> np.ndarray | None:
        for k in range(len(self.spares)):
            # references: the list and getrefcount's argument -> 2 means no one else holds it
            if self.spares[k].shape == shape and sys.getrefcount(self.spares[k]) == 2:
                return self.spares.pop(k)
        return None


def iter_motion(path: str | os.PathLike, size: Size | None = None, *, method: str = "auto",
                indices: Iterable[int] | None = None,
                still_threshold: float = STILL_THRESHOLD) -> Iterator[tuple[int, np.ndarray]]:
    """Stream `(frame_index, field[2,H,W] float32)` for every frame of a video at its native
    rate (or only `indices`), resized to `size` (W, H; cover + centre crop) if given. Memory
    stays bounded (a batch of fields) however long the video, unless the caller keeps them."""
    return MotionReader(path, size, method=method, still_threshold=still_threshold).iter(indices)


def extract_motion(path: str | os.PathLike, *, size: Size | None = None,
                   indices: Iterable[int] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   method: str = "auto", still_threshold: float = STILL_THRESHOLD) -> np.ndarray:
    """Motion field `[T,2,H,W]` float32 of a video at its native frame rate (all frames, or the
    frames `indices` in the order given), resized to `size` (W, H) if given.

    Reads the stream's own vectors when each provably spans one frame (see
    `direct_read_check`), else re-encodes in memory with bf=0/refs=1. `progress(done, total)`
    is called per distinct frame read. Holds the whole result (`motion_nbytes(T, W, H)` bytes; only the small
    cell grids are collected before it is allocated): stream with `iter_motion` instead for long
    HD videos.
    """
    reader = MotionReader(path, size, method=method, still_threshold=still_threshold)
    w, h = reader.out_size
    order = None if indices is None else [int(i) for i in indices]
    if order is not None and any(i < 0 for i in order):
        raise InputError(f"frame indices must be >= 0 (got {min(order)})")
    total = len(set(order)) if order is not None else reader.frame_count
    grids: dict[int, np.ndarray] = {}
    for n, (index, grid) in enumerate(reader.iter_grids(order), 1):
        grids[index] = grid
        if progress:
            progress(n, max(total, n))
    if order is None:
        order = sorted(grids)
        if not order:
            raise InputError(f"{path} has no decodable frames; give a video with at least one frame")
    missing = [i for i in order if i not in grids]
    if missing:
        raise InputError(f"{path} has {len(grids) and max(grids) + 1} frames, so there is no frame "
                         f"{missing[0]}; pick frame indices below that")
    out = np.empty((len(order), 2, h, w), np.float32)
    step = reader.field_batch()
    for i in range(0, len(order), step):
        chunk = order[i:i + step]
        reader._expand(np.stack([grids[j] for j in chunk]), out=out[i:i + len(chunk)])
    return out


def motion_nbytes(frames: int, width: int, height: int) -> int:
    """Bytes of a float32 motion array `[frames, 2, height, width]` (for display / limits)."""
    return int(frames) * 2 * int(height) * int(width) * 4


def format_nbytes(n: int) -> str:
    """'1.2 GiB'-style text for a byte count."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


# ----------------------------------------------------------------------------------------------
# preview
# ----------------------------------------------------------------------------------------------
def motion_to_rgb(field: np.ndarray, max_mag: float | None = None, *, arrows: bool = True,
                  step: int | None = None) -> np.ndarray:
    """Colour-code a `[2,H,W]` field: hue = direction, saturation = speed (white = still),
    speed `max_mag` (default: 99th percentile, at least 1e-3) or more = full colour; plus dark
    arrows on a coarse grid (mean motion of each grid cell, longest arrow ~ one grid step).
    Returns uint8 `[H,W,3]` RGB."""
    import cv2

    field = np.asarray(field, np.float32)
    if field.ndim != 3 or field.shape[0] != 2:
        raise ValueError(f"motion field must be [2,H,W] (got {field.shape})")
    _, h, w = field.shape
    mag, ang = cv2.cartToPolar(field[0], field[1], angleInDegrees=True)
    if max_mag is None:
        max_mag = float(np.percentile(mag, 99)) if mag.size else 0.0
    max_mag = max(float(max_mag), 1e-3)
    hsv = np.empty((h, w, 3), np.uint8)
    hsv[..., 0] = (ang * 0.5).astype(np.uint8) % 180
    hsv[..., 1] = np.clip(mag * (255.0 / max_mag), 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if arrows:
        step = step or max(8, min(h, w) // 16)
        gh, gw = h // step, w // step
        if gh and gw:
            cells = field[:, :gh * step, :gw * step].reshape(2, gh, step, gw, step).mean(axis=(2, 4))
            length = np.hypot(cells[0], cells[1])
            keep = length > 0.05 * max_mag
            if keep.any():
                ys, xs = np.nonzero(keep)
                k = np.float32(0.9 * step / max_mag)
                dx = np.clip(cells[0][keep] * k, -step, step)
                dy = np.clip(cells[1][keep] * k, -step, step)
                cx = xs * step + step / 2
                cy = ys * step + step / 2
                tail = np.stack([cx - dx / 2, cy - dy / 2], -1)
                tip = np.stack([cx + dx / 2, cy + dy / 2], -1)
                shaft = tip - tail
                norm = np.maximum(np.hypot(shaft[:, 0], shaft[:, 1]), 1e-6)[:, None]
                unit = shaft / norm
                head = np.minimum(norm, step) * 0.35
                perp = np.stack([-unit[:, 1], unit[:, 0]], -1)
                left = tip - unit * head + perp * head * 0.6
                right = tip - unit * head - perp * head * 0.6
                lines = np.stack([tail, tip, left, tip, right], 1)
                pts = np.round(lines * 16).astype(np.int32)  # 4 fractional bits
                cv2.polylines(rgb, list(pts), False, (20, 20, 20), 1, cv2.LINE_AA, shift=4)
    return rgb
