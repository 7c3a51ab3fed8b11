"""Checks that read a video of the procedural world with the renderer's own knowledge.

No learned classifier: the world has eight palette colours, four shapes, ten directions and
backgrounds that are one palette colour moved at most 45% towards its "shade" (black, or grey for
black). So every check is a little geometry or colour arithmetic, validated on the renderer's own
clean frames (tests/test_eval.py) and on counter-examples.

    frames  uint8 [T,H,W,3] RGB (a generated or rendered clip)

- `background_colour(frames)`: palette colour of the frame border (majority vote of its pixels).
- `foreground_score` / `foreground_mask`: each pixel (CIE Lab, Delta E 76) against the background's
  colour family {bg + s (shade - bg), 0 <= s <= 0.5}, which covers solid, gradient and textured
  backgrounds alike, and against the nearest other palette family (objects: colour to 30% towards
  its shade). Score 0.5 where both are equally close, ramping to 0 / 1 over +-6 Delta E; 0 within
  6 Delta E of the background family. Mask = score >= 0.5 (`largest_blob` then drops specks). A
  relative rule, so a tinted or noisy generated background stays background (measured: 100% of
  colour, shape and direction on 150 renders with Gaussian noise sigma 15 per channel, or blur
  1 px + noise 8 + a global colour shift of sigma 8; a fixed Delta E threshold got 86-95%).
- `dominant_colour(frames, mask)`: nearest palette *family* in Lab (colour to 30% towards its shade
  for objects, which covers textured objects; 50% for backgrounds), majority vote over the pixels.
- `shape_class(mask)`: contour analysis of the largest blob (upsampled 4x bilinear, blurred
  sigma 0.5 px): solidity (area / convex hull) < 0.82 -> star; area / minimum enclosing triangle
  > 0.72 -> triangle; area / minimum enclosing circle > 0.80 -> circle; else square. Votes over
  the frames where the blob does not touch the frame border. On clean renders the classes are
  separated by wide margins (star solidity <= 0.72 vs >= 0.90; triangle fill >= 0.83 vs <= 0.63;
  circle fill >= 0.86 vs square <= 0.74).
- `direction_of_motion(track)`: the centroid track [T,2]: spread < 1.5 px (at 64 px) -> still;
  RMS residual of a straight constant-velocity fit > 0.3 x spread -> in a circle; else the nearest
  of the 8 directions to the fitted velocity.
- `depth_order_agreement(frames, depth)`: AUC that a pixel the conditioning depth puts in front
  (an object) gets a higher foreground score than one it puts behind (the background): 1 =
  perfect, 0.5 = chance.
- `edge_agreement(frames, sketch)`: precision / recall / F1 of the frames' colour edges
  (`colour_edges`: Canny on the Lab gradient) against the conditioning sketch, a match within
  `tolerance` px (Chebyshev). Not the grey-level Canny of `vcomp extract`: that one finds no edge
  at all between colours of similar lightness (F1 = 0 on 9 of 30 clean renders).
- `style_palette_match(frames, style_image, mask)`: dominant colour of the output (in `mask`)
  equals the style image's dominant colour.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from vcomp.train.synthetic import COLOURS, DIRECTIONS, PALETTE, REFERENCE_SIZE, SHAPES

OBJECT_SHADE_MAX = 0.30  #: textured objects: colour to 30% towards its shade (TEXTURE_AMOUNT)
BACKGROUND_SHADE_MAX = 0.50  #: gradient backgrounds reach 45% (GRADIENT_AMOUNT); a little slack
FG_LOW = 6.0  #: Delta E: this close to the background family is background, whatever else
FG_MARGIN = 6.0  #: Delta E: the foreground score ramps over +-FG_MARGIN around "equally close"
BORDER = 2  #: px of the frame edge used to estimate the background colour
MIN_BLOB = 12  #: px: smaller blobs are noise (an object at 64 px covers ~100-400 px)
STILL_SPREAD = 1.5  #: px (at 64 px): RMS distance of the centroids from their mean below which "still"
CIRCLE_RESIDUAL = 0.30  #: RMS residual of the straight fit / spread above which "in a circle"
STAR_SOLIDITY, TRIANGLE_FILL, CIRCLE_FILL = 0.82, 0.72, 0.80
EDGE_LOW, EDGE_HIGH, EDGE_BLUR = 20.0, 40.0, 0.7  #: colour Canny thresholds (Sobel units of Delta E), blur px
SHAPE_UPSAMPLE, SHAPE_BLUR = 4, 0.5  #: contour analysis on the mask upsampled 4x, blurred sigma 0.5 px
MOVING = tuple(d for d in DIRECTIONS if DIRECTIONS[d] is not None and d != "still")  # the 8 straight ones


# ----------------------------------------------------------------------------------------------
# colour
# ----------------------------------------------------------------------------------------------
def to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB (uint8 or 0..255 float) `[..., 3]` -> CIE Lab float32 (L 0..100)."""
    import cv2

    rgb = np.asarray(rgb, np.float32)
    flat = np.ascontiguousarray(rgb.reshape(-1, 1, 3) / np.float32(255))
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def _shade(rgb: np.ndarray) -> np.ndarray:
    """Where textures and gradients take a colour (as the renderer does): black, grey for black."""
    return np.full(3, 160.0, np.float32) if rgb.max() < 60 else np.zeros(3, np.float32)


@functools.lru_cache(maxsize=8)
def _family_lab(shade_max: float, samples: int = 8) -> np.ndarray:
    """Lab of every palette colour moved 0..shade_max towards its shade: `[C, samples, 3]`."""
    out = []
    for name in COLOURS:
        rgb = np.asarray(PALETTE[name], np.float32)
        steps = np.linspace(0.0, shade_max, samples, dtype=np.float32)[:, None]
        out.append(rgb + steps * (_shade(rgb) - rgb))
    return to_lab(np.stack(out))


def family_distance(lab: np.ndarray, shade_max: float = OBJECT_SHADE_MAX,
                    colours: tuple[str, ...] = COLOURS) -> np.ndarray:
    """Delta E of Lab pixels `[N,3]` to the families of `colours` (each the colour moved 0 ..
    `shade_max` towards its shade, sampled at 8 points): `[N, len(colours)]`."""
    fam = _family_lab(float(shade_max))  # [C,S,3]
    lab = np.asarray(lab, np.float32).reshape(-1, 3)
    out = np.empty((lab.shape[0], len(colours)), np.float32)
    for j, name in enumerate(colours):  # one family at a time keeps the temporaries at [N,S]
        d2 = np.zeros((lab.shape[0], fam.shape[1]), np.float32)
        for k in range(3):
            diff = lab[:, k, None] - fam[COLOURS.index(name), :, k][None]
            d2 += diff * diff
        out[:, j] = np.sqrt(d2.min(1))
    return out


def nearest_colour(rgb, shade_max: float = OBJECT_SHADE_MAX) -> str:
    """Name of the palette family nearest to one RGB colour."""
    return COLOURS[int(family_distance(to_lab(np.asarray(rgb, np.float32)[None]), shade_max)[0].argmin())]


def dominant_colour(frames: np.ndarray, mask: np.ndarray | None = None, *, shade_max: float = OBJECT_SHADE_MAX,
                    exclude: tuple[str, ...] = ()) -> str | None:
    """Most common nearest palette family of the pixels in `mask` (bool, broadcastable to
    [T,H,W]; None = all). None when the mask is empty."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    pixels = frames.reshape(-1, 3) if mask is None else frames[np.broadcast_to(np.asarray(mask, bool), frames.shape[:3])]
    if len(pixels) == 0:
        return None
    if len(pixels) > 40_000:  # a deterministic subsample is plenty for a vote
        pixels = pixels[np.linspace(0, len(pixels) - 1, 40_000).astype(np.int64)]
    d = family_distance(to_lab(pixels), shade_max)
    allowed = [i for i, c in enumerate(COLOURS) if c not in exclude]
    votes = np.bincount(np.asarray(allowed)[d[:, allowed].argmin(1)], minlength=len(COLOURS))
    return COLOURS[int(votes.argmax())]


def object_colour(frames: np.ndarray, mask: np.ndarray) -> str | None:
    """Dominant colour of an object mask [T,H,W], ignoring its anti-aliased rim (1 px erosion)
    when enough pixels remain."""
    import cv2

    mask = np.asarray(mask, bool)
    kernel = np.ones((3, 3), np.uint8)
    eroded = np.stack([cv2.erode(m.astype(np.uint8), kernel).astype(bool) for m in mask.reshape(-1, *mask.shape[-2:])])
    eroded = eroded.reshape(mask.shape)
    use = eroded if eroded.sum() >= max(MIN_BLOB, 0.3 * mask.sum()) else mask
    return dominant_colour(frames, use)


def background_colour(frames: np.ndarray, border: int = BORDER) -> str:
    """Palette colour of the frame border (all frames), by majority vote of its pixels."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    return dominant_colour(frames, _border_ring(frames.shape[1:3], border)[None], shade_max=BACKGROUND_SHADE_MAX)


def _border_ring(shape: tuple[int, int], border: int = BORDER) -> np.ndarray:
    ring = np.ones(shape, bool)
    ring[border:-border, border:-border] = False
    return ring


# ----------------------------------------------------------------------------------------------
# segmentation
# ----------------------------------------------------------------------------------------------
def foreground_score(frames: np.ndarray, bg_colour: str | None = None) -> np.ndarray:
    """float32 [T,H,W] in [0,1]: 0 = the background's colour family, 1 = clearly something else
    (see the module docstring). `bg_colour` None = estimated from the frame border."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    bg_colour = bg_colour or background_colour(frames)
    lab = to_lab(frames).reshape(-1, 3)
    others = tuple(c for c in COLOURS if c != bg_colour)
    d_bg = family_distance(lab, BACKGROUND_SHADE_MAX, (bg_colour,))[:, 0]
    d_other = family_distance(lab, OBJECT_SHADE_MAX, others).min(1)
    # 0.5 where a pixel is as close to another palette family as to the background's
    score = np.clip(0.5 + (d_bg - d_other) / (2.0 * FG_MARGIN), 0.0, 1.0)
    score[d_bg < FG_LOW] = 0.0  # whatever the other families, this close is background
    return score.reshape(frames.shape[:3]).astype(np.float32)


def foreground_mask(frames: np.ndarray, bg_colour: str | None = None, score: np.ndarray | None = None) -> np.ndarray:
    """bool [T,H,W]: foreground score >= 0.5 (no morphology: it would cut the thin points of a
    star; `largest_blob` removes specks)."""
    score = foreground_score(frames, bg_colour) if score is None else score
    return np.asarray(score) >= 0.5


def largest_blob(mask: np.ndarray, min_area: int = MIN_BLOB) -> np.ndarray:
    """The largest 8-connected component of each frame of bool [T,H,W] (or [H,W]); frames
    without one of at least `min_area` px become empty."""
    import cv2

    mask = np.asarray(mask, bool)
    single = mask.ndim == 2
    frames = mask[None] if single else mask
    out = np.zeros_like(frames)
    for i, m in enumerate(frames):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        if n > 1:
            k = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
            if stats[k, cv2.CC_STAT_AREA] >= min_area:
                out[i] = labels == k
    return out[0] if single else out


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Dilate each frame of bool [T,H,W] by a (2r+1)^2 square."""
    import cv2

    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in np.asarray(mask, bool)])


def centroid_track(mask: np.ndarray) -> np.ndarray:
    """Centroid (x, y) of each frame's mask [T,H,W] -> float64 [T,2]; NaN where empty."""
    mask = np.asarray(mask, bool)
    t, h, w = mask.shape
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    area = mask.sum((1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask.sum(1) * xs).sum(1) / area
        cy = (mask.sum(2) * ys).sum(1) / area
    track = np.stack([cx, cy], 1)
    track[area == 0] = np.nan
    return track


# ----------------------------------------------------------------------------------------------
# shape
# ----------------------------------------------------------------------------------------------
def shape_features(mask: np.ndarray, upsample: int = SHAPE_UPSAMPLE) -> dict | None:
    """Contour features of the largest blob of one mask [H,W] (bool or soft in [0,1]), upsampled
    bilinearly and blurred (sigma SHAPE_BLUR px) so the contour is not a staircase: area (px at
    the input scale), solidity (area / convex hull), triangle_fill (area / minimum enclosing
    triangle), circle_fill (area / minimum enclosing circle), rect_fill (area / minimum-area
    rectangle), touches_border; None when there is no blob."""
    import cv2

    m = np.asarray(mask, np.float32)
    h, w = m.shape
    big = cv2.resize(m, (w * upsample, h * upsample), interpolation=cv2.INTER_LINEAR)
    big = cv2.GaussianBlur(big, (0, 0), SHAPE_BLUR * upsample) >= 0.5
    contours, _ = cv2.findContours(big.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(contour))
    if area < MIN_BLOB * upsample * upsample:
        return None
    hull = cv2.convexHull(contour)
    hull_area = max(float(cv2.contourArea(hull)), 1e-6)
    tri_area, _ = cv2.minEnclosingTriangle(hull.astype(np.float32))
    (_, _), (rw, rh), _ = cv2.minAreaRect(contour)
    (_, _), radius = cv2.minEnclosingCircle(contour)
    x, y, bw, bh = cv2.boundingRect(contour)
    touches = x <= 1 or y <= 1 or x + bw >= w * upsample - 1 or y + bh >= h * upsample - 1
    return {"area": area / upsample**2, "solidity": area / hull_area,
            "triangle_fill": area / max(float(tri_area), 1e-6), "rect_fill": area / max(rw * rh, 1e-6),
            "circle_fill": area / max(math.pi * radius * radius, 1e-6),
            "touches_border": bool(touches)}


def classify_shape_features(f: dict) -> str:
    """circle / square / triangle / star from `shape_features` (thresholds in the module docstring)."""
    if f["solidity"] < STAR_SOLIDITY:
        return "star"
    if f["triangle_fill"] > TRIANGLE_FILL:
        return "triangle"
    if f["circle_fill"] > CIRCLE_FILL:
        return "circle"
    return "square"


def shape_class(mask: np.ndarray) -> str | None:
    """Shape of the object in a mask [H,W] or [T,H,W] (bool or soft): majority vote of the frames
    whose blob does not touch the frame border (all frames if every one does). None = no blob."""
    mask = np.asarray(mask)
    frames = mask[None] if mask.ndim == 2 else mask
    feats = [f for f in (shape_features(m) for m in frames) if f is not None]
    if not feats:
        return None
    inside = [f for f in feats if not f["touches_border"]] or feats
    votes = [classify_shape_features(f) for f in inside]
    return max(SHAPES, key=votes.count)


# ----------------------------------------------------------------------------------------------
# motion
# ----------------------------------------------------------------------------------------------
def straight_fit(track: np.ndarray) -> dict | None:
    """Constant-velocity least-squares fit of a centroid track float [T,2] (x, y; NaN = object not
    found): {"velocity": (vx, vy) px/frame, "spread": RMS distance of the centroids from their mean,
    "residual": RMS distance from the fit, "direction": the nearest of the 8 straight directions}.
    None when fewer than half the frames (or fewer than 3) have the object."""
    track = np.asarray(track, np.float64)
    valid = np.isfinite(track).all(1)
    if valid.sum() < max(3, len(track) / 2):
        return None
    t = np.arange(len(track), dtype=np.float64)[valid]
    p = track[valid]
    spread = math.sqrt(float(((p - p.mean(0)) ** 2).sum(1).mean()))
    design = np.stack([np.ones_like(t), t], 1)
    coef, *_ = np.linalg.lstsq(design, p, rcond=None)
    residual = math.sqrt(float(((p - design @ coef) ** 2).sum(1).mean()))
    vx, vy = coef[1]
    angle = math.atan2(vy, vx)
    direction = max(MOVING, key=lambda d: math.cos(angle - math.atan2(DIRECTIONS[d][1], DIRECTIONS[d][0])))
    return {"velocity": (float(vx), float(vy)), "spread": spread, "residual": residual, "direction": direction}


def _reads_still(fit: dict, size: int) -> bool:
    """A straight fit whose centroids stay within STILL_SPREAD (scaled from the 64 px reference)."""
    return fit["spread"] < STILL_SPREAD * (size / REFERENCE_SIZE)


def direction_of_motion(track: np.ndarray, size: int = REFERENCE_SIZE) -> str | None:
    """One of DIRECTIONS from a centroid track float [T,2] (x, y; NaN = object not found):
    "still" below a small spread, "in a circle" when the straight fit leaves a large residual,
    else the fit's direction. None when fewer than half the frames (or fewer than 3) have the object."""
    fit = straight_fit(track)
    if fit is None:
        return None
    if _reads_still(fit, size):
        return "still"
    if fit["residual"] > CIRCLE_RESIDUAL * fit["spread"]:
        return "in a circle"
    return fit["direction"]


def direction_cosine(track: np.ndarray, direction: str, size: int = REFERENCE_SIZE) -> float | None:
    """How well a centroid track float [T,2] follows a prompted straight direction, as a number:
    the cosine between the straight fit's velocity and the direction (1 = exactly, 0.71 = one of the
    8 directions off, 0 = across or no motion read, -1 = backwards). Unlike the 8-way
    `direction_of_motion` it gives partial credit to a nearby direction and ignores wobble, so it
    separates two models on fewer scenes. 0 when the object is not found or still; None when the
    prompted direction is not a straight one (still, in a circle)."""
    want = DIRECTIONS.get(direction)
    if direction not in MOVING or want is None:
        return None
    fit = straight_fit(track)
    if fit is None or _reads_still(fit, size):
        return 0.0
    vx, vy = fit["velocity"]
    speed, norm = math.hypot(vx, vy), math.hypot(*want)
    return (vx * want[0] + vy * want[1]) / (speed * norm) if speed > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# structure adherence
# ----------------------------------------------------------------------------------------------
def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0  # 1-based average rank of each tie group
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat(avg, counts)
    return ranks


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative) + 0.5 P(tie) (Mann-Whitney U / (n1 n0))."""
    positive, negative = np.ravel(positive).astype(np.float64), np.ravel(negative).astype(np.float64)
    n1, n0 = len(positive), len(negative)
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = _average_ranks(np.concatenate([positive, negative]))
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def depth_order_agreement(frames: np.ndarray, depth: np.ndarray, bg_colour: str | None = None,
                          near: float = 0.3) -> float:
    """AUC (0.5 chance, 1 perfect) that pixels the conditioning depth `[T,1,H,W]` (or [T,H,W])
    puts in front (depth > `near`, an object) get a higher foreground score in `frames` than the
    pixels it puts behind (the background, depth 0.1)."""
    score = foreground_score(frames, bg_colour)
    depth = np.asarray(depth, np.float32).reshape(score.shape)
    front = depth > near
    return auc(score[front], score[~front])


def colour_edges(frames: np.ndarray, low: float = EDGE_LOW, high: float = EDGE_HIGH,
                 sigma: float = EDGE_BLUR) -> np.ndarray:
    """Edges of RGB frames [T,H,W,3] -> bool [T,H,W]: Canny (non-maximum suppression and
    hysteresis) on the Sobel derivatives of the CIE Lab image blurred by `sigma` px, OpenCV taking
    the strongest of the three channels at each pixel. Thresholds are in Sobel units of Delta E (a
    sharp step of Delta E d gives about 4 d), so colour edges between colours of equal lightness
    (purple on green, yellow on orange) are found, which a grey-level Canny misses."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    out = np.zeros(frames.shape[:3], bool)
    for i, frame in enumerate(frames):
        lab = to_lab(frame)
        if sigma > 0:
            lab = cv2.GaussianBlur(lab, (0, 0), sigma)
        dx = cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3)
        dy = cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3)
        dx16 = np.clip(np.rint(dx), -32767, 32767).astype(np.int16)
        dy16 = np.clip(np.rint(dy), -32767, 32767).astype(np.int16)
        out[i] = cv2.Canny(dx16, dy16, low, high, L2gradient=True) > 0
    return out


def edge_agreement(frames: np.ndarray, sketch: np.ndarray, tolerance: int = 1) -> dict:
    """Edges of `frames` (`colour_edges`) against a sketch [T,1,H,W] (or [T,H,W]):
    {"precision", "recall", "f1"} pooled over frames; an edge pixel matches when the other map has
    one within `tolerance` px (Chebyshev distance)."""
    gen = colour_edges(frames)
    ref = np.asarray(sketch, np.float32).reshape(gen.shape) > 0.5
    near_ref, near_gen = dilate(ref, tolerance), dilate(gen, tolerance)
    n_gen, n_ref = int(gen.sum()), int(ref.sum())
    precision = float((gen & near_ref).sum() / n_gen) if n_gen else 0.0
    recall = float((ref & near_gen).sum() / n_ref) if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def style_palette_match(frames: np.ndarray, style_image: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """{"match", "output", "style"}: the dominant colour of `frames` (in `mask`, e.g. the
    background) against the dominant colour of the style image (RGB uint8 [H,W,3])."""
    style = dominant_colour(np.asarray(style_image)[None], shade_max=BACKGROUND_SHADE_MAX)
    output = dominant_colour(frames, mask, shade_max=BACKGROUND_SHADE_MAX)
    return {"match": output is not None and output == style, "output": output, "style": style}


# ----------------------------------------------------------------------------------------------
# one clip, one object
# ----------------------------------------------------------------------------------------------
def analyse_object(frames: np.ndarray, bg_colour: str | None = None) -> dict:
    """Everything the text checks need about the single most prominent object of a clip:
    {"bg_colour", "colour", "shape", "direction", "track", "mask"} (None entries when no object
    is found). `bg_colour` None = estimated from the frame border."""
    frames = np.asarray(frames)
    bg = bg_colour or background_colour(frames)
    score = foreground_score(frames, bg)
    blob = largest_blob(foreground_mask(frames, bg, score))
    found = blob.any((1, 2))
    soft = np.where(dilate(blob), score, 0.0) if found.any() else None  # keep the anti-aliased rim
    track = centroid_track(blob)
    return {"bg_colour": bg, "colour": object_colour(frames, blob) if found.any() else None,
            "shape": shape_class(soft[found]) if soft is not None else None,
            "direction": direction_of_motion(track, frames.shape[2]), "track": track, "mask": blob}
