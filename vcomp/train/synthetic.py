"""The procedural world the embedded model is trained on: coloured shapes moving over backgrounds.

A clip is described by a `Scene` (plain data: objects, background, size, frame count) drawn by
`sample_scene(rng, split)`, rendered by `render(scene)` into a `Sample`: RGB frames and, known
exactly from the scene, per-object depth layers, object masks, outline sketches and the true
per-pixel motion. The frames are also encoded to H.264 and their motion read back by
`vcomp.conditions.motion.motion_from_frames`, the extractor users' videos go through, so
training sees that extractor's output (block vectors, zeros in flat areas), not an idealised
field. `caption(scene)` writes the sentence; `parse_caption` reads one back.

    >>> rng = np.random.default_rng(0)
    >>> scene = sample_scene(rng)
    >>> sample = render(scene)              # frames uint8 [16,64,64,3], motion [16,2,64,64], ...
    >>> sample.caption
    'a purple triangle moving up and a textured red triangle moving left on a blue background'

Caption grammar (every word is in `VOCABULARY`):

    caption    := object (" and " object)* " on " article background
    object     := article ["textured "] colour " " shape " " motion
    motion     := "moving " DIRECTION | "moving in a circle" | "standing still"
    background := ["textured "] colour [" gradient"] " background"
    article    := "a" | "an" (before a vowel: "an orange circle")

Geometry is in output pixels: x right, y down, pixel (row i, column j) centred at (j, i). Speeds
are pixels per frame at the render size (the chord between consecutive positions for the
circular path). Objects translate without rotating, so the true motion of every visible object
pixel is its object's displacement since the previous frame (0 on the background and at frame 0).

Held-out split: `is_heldout(colour, shape, direction, bg_colour)` marks a fixed ~10% of the
(object colour, shape, direction, background colour) combinations by a keyed hash. Training
scenes never contain an object forming a held-out combination with its background; "heldout"
scenes always have a held-out primary (first-named) object. Every single colour, shape,
direction and background colour - and every pair of them - still occurs in training. See
docs/world.md.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------
# vocabulary of the world
# ----------------------------------------------------------------------------------------------
#: colour name -> RGB uint8; also used by evaluation to check the colour of generated objects
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 165, 55),
    "blue": (35, 70, 225),
    "yellow": (245, 215, 30),
    "orange": (250, 130, 20),
    "purple": (135, 45, 185),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: direction name -> unit vector (x right, y down); "in a circle" has no fixed vector
DIRECTIONS: dict[str, tuple[float, float] | None] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
    "in a circle": None,
    "still": (0.0, 0.0),
}
BACKGROUND_KINDS: tuple[str, ...] = ("solid", "gradient", "textured")
OBJECT_TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots")
BACKGROUND_TEXTURES: tuple[str, ...] = ("stripes", "checker", "noise")
SPLITS: tuple[str, ...] = ("train", "heldout")

DEPTH_BACKGROUND = 0.1
DEPTH_LAYERS: tuple[float, ...] = (0.5, 0.75, 1.0)  #: depth of layer 0 (farthest) .. 2 (nearest)
MAX_OBJECTS = len(DEPTH_LAYERS)

REFERENCE_SIZE = 64  #: sizes and speeds below are in pixels at this frame size; they scale with it
RADIUS_RANGE = (7.0, 12.0)  #: circumradius of an object
SPEED_RANGE = (1.0, 3.0)  #: px/frame of straight motion
ORBIT_RADIUS_RANGE = (5.0, 9.0)  #: "in a circle": radius of the path
ORBIT_STEP_RANGE = (0.30, 0.50)  #: "in a circle": radians per frame (0.7-1.2 turns in 16 frames)
EDGE_MARGIN = 0.7  #: an object's centre stays this many radii inside the frame
SHAPE_SCALE = {"circle": 0.85, "square": 0.95, "triangle": 1.1, "star": 1.15}  #: similar areas
STAR_INNER = 0.45
TEXTURE_AMOUNT = 0.3  #: a texture moves a colour this far towards its shade
GRADIENT_AMOUNT = 0.45
HELDOUT_PERCENT = 10
_HASH_KEY = b"vcomp-world-v1"
FPS = 8.0


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _motion_phrase(direction: str) -> str:
    if direction == "still":
        return "standing still"
    return f"moving {direction}"


def _vocabulary() -> list[str]:
    words = {"a", "an", "and", "on", "background", "gradient", "textured", "moving", "standing", "still"}
    words.update(COLOURS)
    words.update(SHAPES)
    for direction in DIRECTIONS:
        words.update(_motion_phrase(direction).split())
    return sorted(words)


#: every word a caption can use, sorted
VOCABULARY: list[str] = _vocabulary()


# ----------------------------------------------------------------------------------------------
# held-out combinations
# ----------------------------------------------------------------------------------------------
def is_heldout(colour: str, shape: str, direction: str, bg_colour: str) -> bool:
    """True for the fixed ~10% of (object colour, shape, direction, background colour)
    combinations kept out of training: blake2b of "colour|shape|direction|bg_colour" keyed with
    "vcomp-world-v1", first 8 bytes big-endian, modulo 100 < 10. Combinations with the object
    colour equal to the background colour never occur and are never held out."""
    if colour == bg_colour:
        return False
    key = f"{colour}|{shape}|{direction}|{bg_colour}".encode()
    digest = hashlib.blake2b(key, digest_size=8, key=_HASH_KEY).digest()
    return int.from_bytes(digest, "big") % 100 < HELDOUT_PERCENT


def _all_combos() -> list[tuple[str, str, str, str]]:
    return [c for c in itertools.product(COLOURS, SHAPES, DIRECTIONS, COLOURS) if c[0] != c[3]]


#: the held-out (colour, shape, direction, bg_colour) combinations, sorted
HELDOUT: tuple[tuple[str, str, str, str], ...] = tuple(sorted(c for c in _all_combos() if is_heldout(*c)))


# ----------------------------------------------------------------------------------------------
# scenes
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectSpec:
    """One object. Lengths in pixels, positions in output pixel coordinates of the scene size.

    direction: a key of DIRECTIONS. speed: px/frame (for "in a circle", the chord between
    consecutive frames). start: centre at frame 0. For "in a circle" the centre runs on a circle
    of radius `orbit_radius` by `orbit_step` radians per frame (sign = sense of rotation),
    starting at angle `orbit_phase`. layer: depth slot, 0 = farthest (see DEPTH_LAYERS); the
    nearer object is drawn last and occludes. texture: None or one of OBJECT_TEXTURES, a pattern
    that moves with the object (period in px, angle in degrees).
    """

    shape: str
    colour: str
    direction: str
    speed: float
    size: float
    start: tuple[float, float]
    layer: int = 0
    angle: float = 0.0
    texture: str | None = None
    texture_period: float = 4.0
    texture_angle: float = 0.0
    orbit_radius: float = 0.0
    orbit_step: float = 0.0
    orbit_phase: float = 0.0

    def centres(self, frames: int) -> np.ndarray:
        """Centre (x, y) at frames 0..frames-1: float64 `[frames, 2]`."""
        t = np.arange(frames, dtype=np.float64)
        x0, y0 = self.start
        if self.direction == "in a circle":
            cx = x0 - self.orbit_radius * math.cos(self.orbit_phase)
            cy = y0 - self.orbit_radius * math.sin(self.orbit_phase)
            a = self.orbit_phase + self.orbit_step * t
            return np.stack([cx + self.orbit_radius * np.cos(a), cy + self.orbit_radius * np.sin(a)], 1)
        ux, uy = DIRECTIONS[self.direction]
        return np.stack([x0 + ux * self.speed * t, y0 + uy * self.speed * t], 1)

    def scaled(self, k: float) -> ObjectSpec:
        """The same object in a frame `k` times larger."""
        return ObjectSpec(**{**asdict(self), "speed": self.speed * k, "size": self.size * k,
                             "start": (self.start[0] * k, self.start[1] * k), "texture_period": self.texture_period * k,
                             "orbit_radius": self.orbit_radius * k})


@dataclass(frozen=True)
class BackgroundSpec:
    """kind: solid | gradient (colour to its shade along `angle`) | textured (`texture` one of
    BACKGROUND_TEXTURES, `period` px, `angle` degrees, `seed` for the noise pattern)."""

    colour: str
    kind: str = "solid"
    texture: str | None = None
    angle: float = 0.0
    period: float = 8.0
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec
    size: int = 64
    frames: int = 16
    split: str = "train"

    @property
    def primary(self) -> ObjectSpec:
        return self.objects[0]

    def combos(self) -> list[tuple[str, str, str, str]]:
        """(colour, shape, direction, bg_colour) of every object."""
        return [(o.colour, o.shape, o.direction, self.background.colour) for o in self.objects]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        objects = tuple(ObjectSpec(**{**o, "start": tuple(o["start"])}) for o in data["objects"])
        return cls(objects=objects, background=BackgroundSpec(**data["background"]),
                   size=int(data["size"]), frames=int(data["frames"]), split=data.get("split", "train"))

    def scaled_to(self, size: int) -> Scene:
        if size == self.size:
            return self
        k = size / self.size
        bg = self.background
        bg = BackgroundSpec(**{**asdict(bg), "period": bg.period * k})
        return Scene(tuple(o.scaled(k) for o in self.objects), bg, size, self.frames, self.split)


def caption(scene: Scene) -> str:
    """The scene's sentence (grammar in the module docstring)."""
    objects = [{"colour": o.colour, "shape": o.shape, "textured": bool(o.texture), "direction": o.direction}
               for o in scene.objects]
    bg = scene.background
    return _caption_text(objects, {"colour": bg.colour, "kind": bg.kind})


def _caption_text(objects: list[dict], background: dict) -> str:
    """The sentence for `parse_caption`'s fields."""
    parts = []
    for o in objects:
        words = (["textured"] if o["textured"] else []) + [o["colour"], o["shape"]]
        parts.append(f"{_article(words[0])} {' '.join(words)} {_motion_phrase(o['direction'])}")
    kind = background["kind"]
    words = (["textured"] if kind == "textured" else []) + [background["colour"]] + (["gradient"] if kind == "gradient" else [])
    return f"{' and '.join(parts)} on {_article(words[0])} {' '.join(words)} background"


#: the direction a counterfactual caption names instead: the one with the negated vector
OPPOSITE = {d: e for d, u in DIRECTIONS.items() if u and any(u)
            for e, v in DIRECTIONS.items() if v == (-u[0], -u[1])}


def counterfactual_caption(text: str, attribute: str) -> str:
    """`text` with every object's `attribute` ("direction", "colour" or "shape") changed: directions
    reversed (circles and still objects stay), colours and shapes replaced by the next in COLOURS /
    SHAPES. Why: the loss of a model given this caption instead of the true one tells whether it
    reads that attribute (`benchmarks/heldout_loss.py`). Raises ValueError like `parse_caption`."""
    parsed = parse_caption(text)
    objects = [dict(o) for o in parsed["objects"]]
    for o in objects:
        if attribute == "direction":
            o["direction"] = OPPOSITE.get(o["direction"], o["direction"])
        elif attribute in ("colour", "shape"):
            names = COLOURS if attribute == "colour" else SHAPES
            o[attribute] = names[(names.index(o[attribute]) + 1) % len(names)]
        else:
            raise ValueError(f"unknown caption attribute {attribute!r}: use direction, colour or shape")
    return _caption_text(objects, parsed["background"])


_DIR_ALT = "|".join(re.escape(d) for d in sorted(DIRECTIONS, key=len, reverse=True) if d != "still")
_OBJECT_RE = re.compile(rf"an? (?P<textured>textured )?(?P<colour>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)}) "
                        rf"(?:moving (?P<direction>{_DIR_ALT})|(?P<still>standing still))")
_CAPTION_RE = re.compile(rf"(?P<objects>.+) on an? (?P<bgtex>textured )?(?P<bg>{'|'.join(COLOURS)})"
                         rf"(?P<gradient> gradient)? background")


def parse_caption(text: str) -> dict:
    """Read a caption back: {"objects": [{"colour", "shape", "direction", "textured"}],
    "background": {"colour", "kind"}}. Raises ValueError when `text` is not in the grammar."""
    text = " ".join(text.strip().lower().split())
    m = _CAPTION_RE.fullmatch(text)
    if m is None or (m["bgtex"] and m["gradient"]):
        raise ValueError(f"not a world caption: {text!r}")
    objects = []
    for part in m["objects"].split(" and "):
        o = _OBJECT_RE.fullmatch(part)
        if o is None:
            raise ValueError(f"not a world caption: {text!r} (object phrase {part!r})")
        objects.append({"colour": o["colour"], "shape": o["shape"], "textured": bool(o["textured"]),
                        "direction": "still" if o["still"] else o["direction"]})
    kind = "textured" if m["bgtex"] else "gradient" if m["gradient"] else "solid"
    return {"objects": objects, "background": {"colour": m["bg"], "kind": kind}}


def _choice(rng: np.random.Generator, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


def _place(rng, direction, speed, size, frames, edge):
    """Object motion parameters and a start position keeping the centre >= `edge` px inside the
    frame for every frame; straight motion too fast to fit is slowed down. Returns a dict of
    ObjectSpec fields."""
    lo, hi = edge, size - 1 - edge
    span = hi - lo
    steps = frames - 1
    if direction == "in a circle":
        step = float(rng.uniform(*ORBIT_STEP_RANGE)) * (1 if rng.random() < 0.5 else -1)
        radius = min(float(rng.uniform(*ORBIT_RADIUS_RANGE)) * size / REFERENCE_SIZE, span / 2)
        phase = float(rng.uniform(0, 2 * math.pi))
        cx, cy = rng.uniform(lo + radius, hi - radius, size=2)
        start = (float(cx + radius * math.cos(phase)), float(cy + radius * math.sin(phase)))
        return dict(start=start, speed=2 * radius * abs(math.sin(step / 2)), orbit_radius=radius,
                    orbit_step=step, orbit_phase=phase)
    ux, uy = DIRECTIONS[direction]
    if steps > 0 and (ux or uy):
        speed = min(speed, span / (steps * max(abs(ux), abs(uy))))
    else:
        speed = 0.0
    dx, dy = ux * speed * steps, uy * speed * steps
    x0 = rng.uniform(lo - min(dx, 0), hi - max(dx, 0))
    y0 = rng.uniform(lo - min(dy, 0), hi - max(dy, 0))
    return dict(start=(float(x0), float(y0)), speed=float(speed))


def _sample_object(rng, colour, shape, direction, size, frames, layer) -> ObjectSpec:
    k = size / REFERENCE_SIZE
    r = float(rng.uniform(*RADIUS_RANGE)) * k
    speed = float(rng.uniform(*SPEED_RANGE)) * k
    texture = _choice(rng, OBJECT_TEXTURES) if rng.random() < 0.3 else None
    placed = _place(rng, direction, speed, size, frames, EDGE_MARGIN * r)
    return ObjectSpec(shape=shape, colour=colour, direction=direction, size=r, layer=layer,
                      angle=float(rng.uniform(-20, 20)), texture=texture,
                      texture_period=float(rng.uniform(3.0, 5.0)) * k, texture_angle=float(rng.uniform(0, 180)),
                      **placed)


def _sample_background(rng, colour, size, kinds: tuple[str, ...] = BACKGROUND_KINDS) -> BackgroundSpec:
    kind = _choice(rng, kinds)
    texture = _choice(rng, BACKGROUND_TEXTURES) if kind == "textured" else None
    return BackgroundSpec(colour=colour, kind=kind, texture=texture, angle=float(rng.uniform(0, 360)),
                          period=float(rng.uniform(5.0, 10.0)) * size / REFERENCE_SIZE,
                          seed=int(rng.integers(2**31)))


def _overlap_ok(objects: list[ObjectSpec], frames: int, want_overlap: bool) -> bool:
    """No object's centre ever comes within 0.9 radii of a nearer object's centre (each stays
    clearly visible); with `want_overlap`, some pair's shapes do meet at some frame."""
    tracks = [o.centres(frames) for o in objects]
    met = False
    for (a, ta), (b, tb) in itertools.combinations(zip(objects, tracks, strict=True), 2):
        d = np.hypot(*(ta - tb).T).min()
        near = a if a.layer > b.layer else b
        if d < 0.9 * near.size:
            return False
        met |= d < 0.8 * (a.size + b.size)
    return met or not want_overlap


def sample_scene(rng: np.random.Generator, split: str = "train", num_objects: int | tuple[int, ...] = (1, 2),
                 size: int = 64, frames: int = 16, primary: tuple[str, str, str, str] | None = None,
                 backgrounds: tuple[str, ...] = BACKGROUND_KINDS) -> Scene:
    """Draw a scene. `num_objects`: a count or choices (uniform). `split`: "train" (no object forms
    a held-out combination with the background) or "heldout" (the primary object's combination is
    held out; the others are unconstrained). `primary` forces the first object's (colour, shape,
    direction, bg_colour). Object colours differ from each other and from the background.
    `backgrounds`: the kinds to draw from (("solid",) gives the simple scenes of a curriculum)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (got {split!r})")
    if not backgrounds or any(k not in BACKGROUND_KINDS for k in backgrounds):
        raise ValueError(f"backgrounds must be some of {BACKGROUND_KINDS} (got {backgrounds!r})")
    counts = (num_objects,) if isinstance(num_objects, int) else tuple(num_objects)
    n = int(_choice(rng, counts))
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be 1..{MAX_OBJECTS} (got {n})")
    if primary is None:
        if split == "heldout":
            primary = _choice(rng, HELDOUT)
        else:
            while True:
                primary = (_choice(rng, COLOURS), _choice(rng, SHAPES), _choice(rng, DIRECTIONS), _choice(rng, COLOURS))
                if primary[0] != primary[3] and not is_heldout(*primary):
                    break
    colour, shape, direction, bg_colour = primary
    if colour == bg_colour:
        raise ValueError(f"object colour and background colour must differ (both {colour})")
    background = _sample_background(rng, bg_colour, size, backgrounds)
    want_overlap = rng.random() < 0.5
    layers = [int(v) for v in rng.permutation(MAX_OBJECTS)[:n]]
    for attempt in range(100):
        objects = [_sample_object(rng, colour, shape, direction, size, frames, layers[0])]
        used = {colour, bg_colour}
        for layer in layers[1:]:
            while True:
                c, s, d = _choice(rng, COLOURS), _choice(rng, SHAPES), _choice(rng, DIRECTIONS)
                if c not in used and not (split == "train" and is_heldout(c, s, d, bg_colour)):
                    break
            used.add(c)
            objects.append(_sample_object(rng, c, s, d, size, frames, layer))
        if n == 1 or _overlap_ok(objects, frames, want_overlap and attempt < 50):
            break
    return Scene(tuple(objects), background, size, frames, split)


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """A rendered clip. T frames of H x W; N objects in scene order.

    frames        uint8 [T,H,W,3] RGB
    depth         float32 [T,1,H,W] in [0,1], near = 1: DEPTH_BACKGROUND, objects DEPTH_LAYERS[layer]
                  (pixel-area averages at the anti-aliased edges)
    mask          float32 [T,1,H,W] {0,1}: union of the visible objects
    object_masks  float32 [T,N,H,W] {0,1}: each object's visible pixels (occlusion applied)
    sketch        float32 [T,1,H,W] {0,1}: 1-px outlines of the visible objects (on the nearer side
                  of each boundary) plus the edges of a stripes/checker background
    true_motion   float32 [T,2,H,W] px/frame: exact displacement since frame t-1 of the object
                  visible at each pixel; 0 on the background and at frame 0
    motion        float32 [T,2,H,W] or None: the H.264 extractor's field (motion="extracted"),
                  true_motion (motion="exact") or None (motion="none")
    tracks        float64 [N,T,2] object centres (x, y) in pixels
    """

    frames: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    object_masks: np.ndarray
    sketch: np.ndarray
    true_motion: np.ndarray
    motion: np.ndarray | None
    tracks: np.ndarray
    caption: str
    scene: Scene
    info: dict = field(default_factory=dict)

    def conditions(self):
        """The sample as a ConditionSet (motion, depth, sketch, mask, image = frame 0,
        single_sketch = sketch of frame 0, style = colour-stats embedding of frame 0)."""
        from vcomp.conditions.condition_set import ConditionSet
        from vcomp.conditions.style import colour_stats_embedding

        return ConditionSet(motion=self.motion, depth=self.depth, sketch=self.sketch, mask=self.mask,
                            image=self.frames[0].transpose(2, 0, 1) / np.float32(255), single_sketch=self.sketch[0],
                            style=colour_stats_embedding(self.frames[0]),
                            meta={"source": "vcomp.train.synthetic", "fps": FPS, "caption": self.caption})


def _shade(rgb: np.ndarray) -> np.ndarray:
    """The colour textures and gradients move towards: black, or grey for (near-)black."""
    return np.full(3, 160.0, np.float32) if rgb.max() < 60 else np.zeros(3, np.float32)


def _pattern(kind: str, a: np.ndarray, b: np.ndarray, period: float) -> np.ndarray:
    """Binary pattern (float32 0/1) at rotated coordinates (a, b)."""
    if kind == "stripes":
        return (np.floor(a / period) % 2).astype(np.float32)
    if kind == "checker":
        return ((np.floor(a / period) + np.floor(b / period)) % 2).astype(np.float32)
    if kind == "dots":
        fa = a / period - np.floor(a / period) - 0.5
        fb = b / period - np.floor(b / period) - 0.5
        return (fa * fa + fb * fb < 0.09).astype(np.float32)
    raise ValueError(f"unknown pattern {kind!r}")


def _rotated(x, y, degrees):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return x * c + y * s, -x * s + y * c


def _background(bg: BackgroundSpec, size: int, ss: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB float32 [S,S,3] at the supersampled size S, hard pattern float32 [S,S] or None)."""
    import cv2

    s = size * ss
    rgb = np.asarray(PALETTE[bg.colour], np.float32)
    shade = _shade(rgb)
    if bg.kind == "solid":
        return np.broadcast_to(rgb, (s, s, 3)).copy(), None
    coord = (np.arange(s, dtype=np.float32) + 0.5) / ss - 0.5
    x, y = coord[None, :], coord[:, None]
    if bg.kind == "gradient":
        a, _ = _rotated(x - (size - 1) / 2, y - (size - 1) / 2, bg.angle)
        half = (size - 1) / 2 * math.sqrt(2)
        g = (a / (2 * half) + 0.5) * GRADIENT_AMOUNT
        return rgb + (shade - rgb) * g[..., None].astype(np.float32), None
    texture = bg.texture or "stripes"
    if texture == "noise":
        grid = np.random.default_rng(bg.seed).random((6, 6)).astype(np.float32)
        p = cv2.resize(grid, (s, s), interpolation=cv2.INTER_CUBIC)
        p = np.clip((p - p.min()) / max(float(np.ptp(p)), 1e-6), 0, 1)
        return rgb + (shade - rgb) * (TEXTURE_AMOUNT * p)[..., None], None
    a, b = _rotated(x, y, bg.angle)
    p = _pattern(texture, a, b, bg.period)
    return rgb + (shade - rgb) * (TEXTURE_AMOUNT * p)[..., None], p


def _polygon(o: ObjectSpec, cx: float, cy: float, ss: int) -> np.ndarray:
    """Vertices in supersampled pixels, fixed point with 4 fractional bits, int32 [K,2]."""
    r = o.size * SHAPE_SCALE[o.shape]
    if o.shape == "square":
        ang = np.radians(o.angle + 45 + 90 * np.arange(4))
        rad = np.full(4, r)
    elif o.shape == "triangle":
        ang = np.radians(o.angle - 90 + 120 * np.arange(3))
        rad = np.full(3, r)
    elif o.shape == "star":
        ang = np.radians(o.angle - 90 + 36 * np.arange(10))
        rad = np.where(np.arange(10) % 2 == 0, r, r * STAR_INNER)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")
    px = (cx + rad * np.cos(ang) + 0.5) * ss - 0.5
    py = (cy + rad * np.sin(ang) + 0.5) * ss - 0.5
    return np.round(np.stack([px, py], 1) * 16).astype(np.int32)


def _block_mean(x: np.ndarray, ss: int) -> np.ndarray:
    """Area-average ss x ss blocks of [T,S,S] or [T,S,S,C] (cv2 INTER_AREA on the frames stacked
    vertically: with S a multiple of ss no block straddles two frames)."""
    import cv2

    t, s = x.shape[:2]
    if ss == 1:
        return x.copy()
    n = s // ss
    flat = x.reshape(t * s, s, *x.shape[3:])
    return cv2.resize(flat, (n, t * n), interpolation=cv2.INTER_AREA).reshape(t, n, n, *x.shape[3:])


def _inner_edges(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Pixels of [T,H,W] `labels` with a 4-neighbour of another label and a lower `rank`
    (the nearer side of every boundary): bool [T,H,W]."""
    r = rank[labels]
    edge = np.zeros(labels.shape, bool)
    for axis in (1, 2):
        n = labels.shape[axis]
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, n - 1), slice(1, n)
        a, b = tuple(a), tuple(b)
        diff = labels[a] != labels[b]
        edge[a] |= diff & (r[a] > r[b])
        edge[b] |= diff & (r[b] > r[a])
    return edge


def render(scene: Scene, size: int | None = None, *, motion: str = "extracted", supersample: int = 2) -> Sample:
    """Render `scene` (optionally rescaled to `size`) into a `Sample`.

    Drawn at `supersample` x the size with integer labels (cv2.fillPoly / cv2.circle, 1/16-pixel
    vertex precision) and area-averaged down, so frames are anti-aliased. `motion`: "extracted"
    (H.264 round trip through `motion_from_frames`), "exact" (= true_motion) or "none".
    """
    import cv2

    if motion not in ("extracted", "exact", "none"):
        raise ValueError(f"motion must be extracted, exact or none (got {motion!r})")
    if size is not None:
        scene = scene.scaled_to(int(size))
    ss, size, t = int(supersample), scene.size, scene.frames
    s = size * ss
    objects = scene.objects
    n = len(objects)
    order = sorted(range(n), key=lambda k: objects[k].layer)  # far to near
    tracks = np.stack([o.centres(t) for o in objects])  # [N,T,2]

    bg_rgb, bg_pattern = _background(scene.background, size, ss)
    bg_u8 = np.clip(np.rint(bg_rgb), 0, 255).astype(np.uint8)
    labels = np.zeros((t, s, s), np.uint8)
    rgb = np.empty((t, s, s, 3), np.uint8)
    for ti in range(t):
        canvas, image = labels[ti], rgb[ti]
        image[:] = bg_u8
        for k in order:
            o = objects[k]
            cx, cy = tracks[k, ti]
            colour = PALETTE[o.colour]
            if o.shape == "circle":
                centre = (round(((cx + 0.5) * ss - 0.5) * 16), round(((cy + 0.5) * ss - 0.5) * 16))
                radius = round(o.size * SHAPE_SCALE["circle"] * ss * 16)
                cv2.circle(canvas, centre, radius, k + 1, -1, cv2.LINE_8, 4)
                cv2.circle(image, centre, radius, colour, -1, cv2.LINE_8, 4)
            else:
                poly = [_polygon(o, cx, cy, ss)]
                cv2.fillPoly(canvas, poly, k + 1, cv2.LINE_8, 4)
                cv2.fillPoly(image, poly, colour, cv2.LINE_8, 4)
    coord = (np.arange(s, dtype=np.float32) + 0.5) / ss - 0.5
    for k, o in enumerate(objects):
        if o.texture is None:
            continue
        ti, yi, xi = np.nonzero(labels == k + 1)
        a, b = _rotated(coord[xi] - tracks[k, ti, 0].astype(np.float32),
                        coord[yi] - tracks[k, ti, 1].astype(np.float32), o.texture_angle)
        p = _pattern(o.texture, a, b, o.texture_period)
        colour = np.asarray(PALETTE[o.colour], np.float32)
        textured = colour + (_shade(colour) - colour) * (TEXTURE_AMOUNT * p)[:, None]
        rgb[ti, yi, xi] = np.rint(textured).astype(np.uint8)
    frames = _block_mean(rgb, ss)

    depth_lut = np.array([DEPTH_BACKGROUND] + [DEPTH_LAYERS[o.layer] for o in objects], np.float32)
    # pixel-area share of each label, in units of 1/full: label k covers `coverage[k] / full` of
    # an output pixel (uint8 area averages of 0/full stay exact integers)
    full = 255 // (ss * ss) * (ss * ss)
    coverage = np.empty((n + 1, t, size, size), np.uint8)
    for k in range(1, n + 1):
        coverage[k] = _block_mean(np.equal(labels, k).view(np.uint8) * np.uint8(full), ss)
    coverage[0] = full - coverage[1:].sum(0, dtype=np.int32) if n else full
    depth = np.zeros((t, size, size), np.float32)
    for k in range(n + 1):
        depth += coverage[k] * np.float32(depth_lut[k] / full)
    depth = np.minimum(depth, np.float32(1.0))[:, None]
    owner = np.zeros((t, size, size), np.uint8)  # label with the largest share (ties: lower label)
    best = coverage[0]
    for k in range(1, n + 1):
        wins = coverage[k] > best
        owner[wins] = k
        best = np.maximum(best, coverage[k])
    object_masks = np.stack([owner == k + 1 for k in range(n)], 1).astype(np.float32)
    mask = (owner > 0)[:, None].astype(np.float32)

    rank = np.zeros(n + 1, np.int16)
    rank[1:] = [o.layer + 1 for o in objects]
    edges = _inner_edges(owner, rank)
    if bg_pattern is not None:
        pat = (_block_mean(bg_pattern[None], ss)[0] >= 0.5).astype(np.uint8)
        bg_edges = _inner_edges(pat[None], np.array([0, 1], np.int16))[0]
        edges |= bg_edges[None] & (owner == 0)
    sketch = edges[:, None].astype(np.float32)

    velocity = np.zeros((n + 1, t, 2), np.float32)  # [label, frame, xy]
    velocity[1:, 1:] = np.diff(tracks, axis=1)
    true_motion = np.zeros((t, 2, size, size), np.float32)
    for k in range(n):
        true_motion += object_masks[:, k, None] * velocity[k + 1, :, :, None, None]

    if motion == "extracted":
        from vcomp.conditions.motion import motion_from_frames

        field_ = motion_from_frames(frames, FPS)
    elif motion == "exact":
        field_ = true_motion.copy()
    else:
        field_ = None
    return Sample(frames=frames, depth=depth, mask=mask, object_masks=object_masks, sketch=sketch,
                  true_motion=true_motion, motion=field_, tracks=tracks, caption=caption(scene), scene=scene,
                  info={"motion": motion, "supersample": ss})


# ----------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------
CACHE_VERSION = 2  #: 2: motion fields with still cells at 0 (conditions.motion.STILL_THRESHOLD)


class WorldDataset:
    """A map-style dataset of world clips, item `i` deterministic from (seed, split, i); works
    with torch's DataLoader (numpy arrays collate to tensors, captions to a list).

    Each item is a dict:
        frames  uint8 [T,H,W,3]      caption  str            index  int     heldout  bool
        motion  float32 [T,2,H,W]    (absent with motion="none")
        depth, sketch, mask  float32 [T,1,H,W]
        image   float32 [3,H,W] in [0,1] (frame 0)    single_sketch  float32 [1,H,W]
        style   float32 [64] colour-stats embedding of frame 0 (with style=True)

    With `cache_dir`, items are stored as compressed npz files under
    `cache_dir/world-v{CACHE_VERSION}-{split}-s{seed}-{size}px-{frames}f-{motion}/` and read back
    on the next request (motion and depth stored as float16: motion vectors are multiples of
    1/4 px, exact in float16; depth to ~1e-3).
    """

    def __init__(self, length: int = 100_000, seed: int = 0, split: str = "train", size: int = 64,
                 frames: int = 16, num_objects: int | tuple[int, ...] = (1, 2), motion: str = "extracted",
                 style: bool = True, cache_dir: str | os.PathLike | None = None, supersample: int = 2,
                 backgrounds: tuple[str, ...] = BACKGROUND_KINDS):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} (got {split!r})")
        if motion not in ("extracted", "exact", "none"):
            raise ValueError(f"motion must be extracted, exact or none (got {motion!r})")
        self.length, self.seed, self.split = int(length), int(seed), split
        self.size, self.frames, self.num_objects = int(size), int(frames), num_objects
        self.motion, self.style, self.supersample = motion, bool(style), int(supersample)
        self.backgrounds = tuple(backgrounds)
        self.cache = None
        if cache_dir is not None:
            name = f"world-v{CACHE_VERSION}-{split}-s{seed}-{size}px-{frames}f-{motion}"
            if num_objects != (1, 2):
                name += "-n" + "".join(str(c) for c in ((num_objects,) if isinstance(num_objects, int) else num_objects))
            if supersample != 2:
                name += f"-ss{supersample}"
            if self.backgrounds != BACKGROUND_KINDS:
                name += "-bg-" + "-".join(self.backgrounds)
            self.cache = Path(cache_dir) / name

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS.index(self.split), int(index)])

    def scene(self, index: int) -> Scene:
        return sample_scene(self.rng(index), self.split, self.num_objects, self.size, self.frames,
                            backgrounds=self.backgrounds)

    def sample(self, index: int) -> Sample:
        return render(self.scene(index), motion=self.motion, supersample=self.supersample)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a WorldDataset of length {self.length}")
        path = self.cache / f"{index:07d}.npz" if self.cache is not None else None
        if path is not None and path.is_file():
            try:
                return self._load(path, index)
            except (OSError, ValueError, KeyError, EOFError):
                pass  # a damaged cache entry is regenerated
        item = self._item(index)
        if path is not None:
            self._store(path, item)
        return item

    def _item(self, index: int) -> dict:
        sample = self.sample(index)
        item = {"frames": sample.frames, "depth": sample.depth, "sketch": sample.sketch, "mask": sample.mask,
                "image": sample.frames[0].transpose(2, 0, 1) / np.float32(255),
                "single_sketch": sample.sketch[0].copy(), "caption": sample.caption, "index": index,
                "heldout": self.split == "heldout"}
        if sample.motion is not None:
            item["motion"] = sample.motion
        if self.style:
            from vcomp.conditions.style import colour_stats_embedding

            item["style"] = colour_stats_embedding(sample.frames[0])
        return item

    def _store(self, path: Path, item: dict) -> None:
        from vcomp.io.atomic import atomic_file

        arrays = {"frames": item["frames"], "depth": item["depth"].astype(np.float16),
                  "sketch": item["sketch"].astype(np.uint8), "mask": item["mask"].astype(np.uint8),
                  "caption": np.array(item["caption"])}
        if "motion" in item:
            arrays["motion"] = item["motion"].astype(np.float16)
        if "style" in item:
            arrays["style"] = item["style"]
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)

    def _load(self, path: Path, index: int) -> dict:
        with np.load(path) as data:
            frames = data["frames"]
            item = {"frames": frames, "depth": data["depth"].astype(np.float32),
                    "sketch": data["sketch"].astype(np.float32), "mask": data["mask"].astype(np.float32),
                    "image": frames[0].transpose(2, 0, 1) / np.float32(255), "caption": str(data["caption"]),
                    "index": index, "heldout": self.split == "heldout"}
            item["single_sketch"] = item["sketch"][0].copy()
            if "motion" in data:
                item["motion"] = data["motion"].astype(np.float32)
            if "style" in data:
                item["style"] = data["style"]
        if (self.motion != "none") != ("motion" in item) or self.style != ("style" in item):
            raise KeyError("cache entry does not match the dataset options")
        return item
