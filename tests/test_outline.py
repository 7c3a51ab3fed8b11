"""Outline templates (vcomp.engine.outline): the world's shapes drawn softly in torch, checked
against the renderer and the evaluation's own shape reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcomp.engine import outline
from vcomp.evaluation.world_checks import shape_class
from vcomp.train import synthetic

SHAPES = ("circle", "square", "triangle", "star")


def rendered(shape: str, angle: float, size: float = 10.0, frames: int = 4):
    """A still object of `shape` rendered by the world, its mask [T, H, W] and its spec."""
    rng = np.random.default_rng(0)
    scene = synthetic.sample_scene(rng, "train", num_objects=1, size=64, frames=frames,
                                   primary=("red", shape, "still", "blue"))
    obj = scene.objects[0]
    obj = type(obj)(**{**obj.__dict__, "angle": angle, "size": size, "texture": None, "start": (30.0, 33.0)})
    scene = type(scene)(**{**scene.__dict__, "objects": (obj,)})
    sample = synthetic.render(scene, motion="none")
    return torch.from_numpy(sample.object_masks[:, 0]), obj


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


def test_constants_agree_with_the_world():
    assert outline.STAR_INNER == synthetic.STAR_INNER and outline.SHAPES == synthetic.SHAPES
    assert max(abs(a) for a in outline.ANGLES) >= 20  # the world turns objects by up to 20 degrees


@pytest.mark.parametrize("shape", SHAPES)
def test_templates_draw_the_world_shapes(shape):
    mask, obj = rendered(shape, angle=12.0)
    radius = torch.tensor(obj.size * synthetic.SHAPE_SCALE[shape])
    centres = torch.tensor([obj.start] * len(mask), dtype=torch.float32)
    tmpl = outline.template(shape, 12.0, radius, centres, 64, 64)
    assert iou(tmpl, mask) > 0.85
    assert shape_class(tmpl.numpy()) == shape  # the evaluation reads the template as its shape
    area = float(tmpl.sum((1, 2)).mean())
    assert area == pytest.approx(outline.unit_area(shape) * float(radius) ** 2, rel=0.05)


@pytest.mark.parametrize("shape", ["square", "triangle", "star"])
def test_the_fitted_template_finds_place_size_and_turn(shape):
    mask, obj = rendered(shape, angle=-15.0, size=13.0)  # a star of 15 px: above its MIN_RADIUS
    fitted = outline.fitted_template(mask, shape, torch.ones(len(mask), dtype=torch.bool))
    assert iou(fitted, mask) > 0.85
    upright = outline.template(shape, 0.0, torch.tensor(13.0 * synthetic.SHAPE_SCALE[shape]),
                               torch.tensor([obj.start] * len(mask), dtype=torch.float32), 64, 64)
    assert iou(fitted, mask) > iou(upright, mask)  # the turn was found, not left upright


def test_a_small_star_is_fitted_a_template_at_least_min_radius_wide():
    """A star smaller than MIN_RADIUS is pulled towards a star of MIN_RADIUS (centred on it, so
    the small one lies inside); other shapes keep their own size."""
    counted = torch.ones(4, dtype=torch.bool)
    floor = outline.MIN_RADIUS["star"] * 64
    star, _ = rendered("star", angle=0.0, size=8.0)  # circumradius 9.2 px
    fitted = outline.fitted_template(star, "star", counted)
    assert float(fitted[0].sum()) == pytest.approx(outline.unit_area("star") * floor**2, rel=0.08)
    assert float((star * fitted).sum() / star.sum()) > 0.9  # the small star lies inside the big one
    square, _ = rendered("square", angle=0.0, size=8.0)
    assert iou(outline.fitted_template(square, "square", counted), square) > 0.85
    assert set(outline.MIN_RADIUS) <= set(SHAPES)


def test_each_shape_fits_its_own_template_best():
    for shape in SHAPES:
        mask, _ = rendered(shape, angle=5.0)
        counted = torch.ones(len(mask), dtype=torch.bool)
        errors = {other: float((outline.fitted_template(mask, other, counted) - mask).pow(2).sum())
                  for other in SHAPES}
        assert min(errors, key=errors.get) == shape, errors


def test_unit_areas():
    assert outline.unit_area("circle") == pytest.approx(np.pi)
    assert outline.unit_area("square") == pytest.approx(2.0)
    assert outline.unit_area("triangle") == pytest.approx(3 * np.sqrt(3) / 4)
    with pytest.raises(ValueError, match="unknown shape"):
        outline.unit_vertices("hexagon", 0.0)


def world_frames(shape: str) -> tuple[torch.Tensor, object]:
    """A red `shape` on blue as the decoder would hand it over: [T, 3, H, W] in [-1, 1]."""
    rng = np.random.default_rng(1)
    scene = synthetic.sample_scene(rng, "train", num_objects=1, size=64, frames=4,
                                   primary=("red", shape, "still", "blue"))
    obj = scene.objects[0]
    obj = type(obj)(**{**obj.__dict__, "texture": None, "start": (30.0, 33.0), "size": 10.0})
    scene = type(scene)(**{**scene.__dict__, "objects": (obj,),
                           "background": type(scene.background)(colour="blue", kind="solid")})
    frames = synthetic.render(scene, motion="none").frames
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1, scene


def test_the_outline_error_names_the_drawn_shape_and_its_gradient_redraws_the_outline():
    from vcomp.engine.shape_guidance import ShapeTarget, outline_error
    from vcomp.evaluation.world_checks import shape_features

    frames, _ = world_frames("square")
    rgb = [tuple(c / 127.5 - 1 for c in synthetic.PALETTE[name]) for name in ("red", "blue")]

    def error(frames, shape):
        return outline_error(frames, [ShapeTarget(rgb[0], rgb[1], SHAPES.index(shape))], SHAPES)

    errors = {shape: float(error(frames, shape)) for shape in SHAPES}
    assert min(errors, key=errors.get) == "square", errors
    # steps down the circle's outline error round the square off (its edge pixels: solid colour sits
    # where the soft mask saturates), and the contour reading agrees
    moved = frames.clone().requires_grad_(True)
    for _ in range(30):
        (grad,) = torch.autograd.grad(error(moved, "circle"), moved)
        moved = (moved - 0.1 * grad / grad.abs().amax()).clamp(-1, 1).detach().requires_grad_(True)
    assert float(error(moved, "circle").detach()) < 0.85 * errors["circle"]
    mask = (moved.detach() - torch.tensor(rgb[0]).view(1, 3, 1, 1)).norm(dim=1) < 0.9
    before = shape_features((frames - torch.tensor(rgb[0]).view(1, 3, 1, 1)).norm(dim=1)[0].numpy() < 0.9)
    after = shape_features(mask[0].numpy())
    assert after["circle_fill"] > before["circle_fill"] + 0.03
    other = ShapeTarget(rgb[0], rgb[1], 0)  # a critic of other shapes: no outline, no term
    assert float(outline_error(frames, [other], ("hexagon",))) == 0.0
    tiny = frames.clone()
    tiny[:] = torch.tensor(rgb[1]).view(1, 3, 1, 1)  # no object: nothing to redraw
    assert float(error(tiny, "circle")) == 0.0


def test_the_outline_term_joins_the_shape_step_only_in_its_timesteps():
    from vcomp.engine.shape_guidance import OUTLINE_RANGE, T_RANGE, ShapeTarget, shape_guided
    from vcomp.model.shape_critic import ShapeCritic

    torch.manual_seed(0)
    critic = ShapeCritic(shapes=SHAPES).eval().requires_grad_(False)
    frames, _ = world_frames("square")
    x = frames.transpose(0, 1)[None]  # the latent is the picture (decode = identity)
    zero = torch.zeros_like(x)
    alphas = torch.linspace(0.999, 0.01, 1000)
    rgb = [tuple(c / 127.5 - 1 for c in synthetic.PALETTE[name]) for name in ("red", "blue")]
    target = ShapeTarget(rgb[0], rgb[1], SHAPES.index("circle"))

    def step(t: int, outline: float) -> torch.Tensor:
        guided = shape_guided(lambda x_, t_: zero, lambda z: z, critic, [target], alphas, 0.1, outline=outline)
        with torch.inference_mode():
            return guided(x, torch.tensor(t))

    inside = (OUTLINE_RANGE[0] + OUTLINE_RANGE[1]) // 2
    assert not torch.allclose(step(inside, 1.0), step(inside, 0.0))
    outside = OUTLINE_RANGE[1] + 50
    assert T_RANGE[0] <= outside <= T_RANGE[1]  # the critic still acts there, the outline not
    assert torch.equal(step(outside, 1.0), step(outside, 0.0))
