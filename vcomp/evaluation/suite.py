"""`vcomp eval --suite world`: generate from held-out world scenes and measure each condition.

For case i of a suite, a held-out scene (one object; `sample_scene(rng, "heldout")` with rng from
(seed, i), so the same seed gives the same scenes) is rendered at the model's size with its
conditions, and the model generates, all from the same noise seed (paired comparisons):

  task      prompt                      conditions                      measured
  text      the caption                 none                            object colour, shape, direction
  motion    the caption                 motion of the rendered clip     direction; motion-control error
  depth     the caption                 depth sequence                  depth-order agreement (AUC)
  sketch    the caption                 sketch sequence                 edge F1 (tolerance 1 px)
  inpaint   caption, new object colour  mask (object, dilated 1 px)     PSNR outside the mask vs the
                                        + masked source + its motion    source; colour inside
  style     "" (the style decides)      style image + depth + motion    dominant background colour
                                        (the `stylize` recipe)          = the style image's

Baselines, generated without the condition under test (same seed): the text generation for
motion (motion-control error of the same prompts without motion), depth and sketch; for style,
the same depth + motion without the style image. Thresholds are the issue's (see TARGETS); for
depth and sketch "clearly above the unconditioned baseline" is taken to mean a mean at least
0.10 above it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vcomp.errors import InputError

TASKS = ("text", "motion", "depth", "sketch", "inpaint", "style")
PSNR_CAP = 100.0  #: identical regions (PSNR = inf) are reported as 100 dB (JSON has no inf)
MARGIN = 0.10  #: "clearly above the baseline": mean at least this much higher
NEAR_DEPTH = 0.3  #: conditioning depth above this is an object, below the background

#: (task, metric, comparison, target); comparison "baseline+" means value >= baseline + target
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("text", "colour_accuracy", ">=", 0.95),
    ("text", "shape_accuracy", ">=", 0.90),
    ("text", "direction_accuracy", ">=", 0.90),
    ("motion", "direction_accuracy", ">=", 0.95),
    ("motion", "motion_error_ratio", "<=", 0.30),
    ("depth", "depth_order_agreement", "baseline+", MARGIN),
    ("sketch", "edge_f1", "baseline+", MARGIN),
    ("inpaint", "outside_psnr_min_db", ">=", 35.0),
    ("inpaint", "inside_colour_accuracy", ">=", 0.90),
    ("style", "palette_match", ">=", 0.80),
)


def parse_tasks(tasks: str | Sequence[str] | None) -> tuple[str, ...]:
    """'text,motion' or a list -> validated task names in canonical order (all when None)."""
    if tasks is None:
        return TASKS
    if isinstance(tasks, str):
        tasks = [t for t in tasks.replace(" ", ",").split(",") if t]
    names = [t.strip().lower() for t in tasks]
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        raise InputError(f"unknown task {bad[0]!r}; choose from {', '.join(TASKS)}" if bad
                         else f"no task given; choose from {', '.join(TASKS)}")
    return tuple(t for t in TASKS if t in names)


# ----------------------------------------------------------------------------------------------
# cases: scenes and what each task feeds the model
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Job:
    """One generation: prompt, conditions, source frames (inpainting)."""

    prompt: str
    conditions: object  # ConditionSet
    source_frames: np.ndarray | None = None


@dataclasses.dataclass
class Case:
    index: int
    seed: int  # the noise seed of every generation of this case
    sample: object  # vcomp.train.synthetic.Sample
    inpaint_colour: str
    inpaint_hole: np.ndarray  # float32 [T,1,H,W], 1 = regenerate
    style_colour: str
    style_image: np.ndarray  # uint8 [H,W,3]


def case_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), int(stream)])


def make_case(seed: int, index: int, size: int = 64, frames: int = 16) -> Case:
    """Case `index` of the suite with `seed`: a held-out one-object scene rendered at `size`, the
    inpainting colour and mask, and the style image (frame 0 of another scene whose background is
    the style colour)."""
    from vcomp.evaluation.world_checks import dilate
    from vcomp.train.synthetic import COLOURS, render, sample_scene

    scene = sample_scene(case_rng(seed, index, 0), "heldout", num_objects=1, size=size, frames=frames)
    sample = render(scene, motion="extracted")
    rng = case_rng(seed, index, 1)
    bg, obj = scene.background.colour, scene.primary.colour
    inpaint_colour = str(rng.choice([c for c in COLOURS if c not in (bg, obj)]))
    hole = dilate(sample.object_masks[:, 0] > 0.5)[:, None].astype(np.float32)
    style_colour = str(rng.choice([c for c in COLOURS if c != bg]))
    style_scene = sample_scene(rng, "train", num_objects=1, size=size, frames=1,
                               primary=(str(rng.choice([c for c in COLOURS if c != style_colour])),
                                        str(rng.choice(["circle", "square", "triangle", "star"])), "still",
                                        style_colour))
    style_image = render(style_scene, motion="none").frames[0]
    return Case(index, int(case_rng(seed, index, 2).integers(2**31)), sample, inpaint_colour, hole,
                style_colour, style_image)


def recoloured_caption(scene, colour: str) -> str:
    """The scene's caption with the primary object's colour replaced."""
    from vcomp.train.synthetic import caption

    objects = (dataclasses.replace(scene.primary, colour=colour),) + tuple(scene.objects[1:])
    return caption(dataclasses.replace(scene, objects=objects))


def style_vector(image: np.ndarray, pipeline, weights_dir=None) -> np.ndarray:
    """The style embedding the pipeline's model takes: colour statistics (64-d, embedded model)
    or OpenCLIP ViT-H-14 (1024-d, published model)."""
    from vcomp.conditions.style import colour_stats_embedding, style_embedding

    if getattr(pipeline.adapter, "style_dim", 64) == 64:
        return colour_stats_embedding(image)
    return style_embedding(image, weights_dir)[0]


def jobs_for(case: Case, tasks: Sequence[str], pipeline, weights_dir=None) -> dict[str, Job]:
    """The generations a case needs for `tasks`, baselines included, by name."""
    from vcomp.conditions.condition_set import ConditionSet
    from vcomp.train.synthetic import FPS

    s = case.sample
    meta = {"source": "vcomp.evaluation.suite", "fps": FPS, "caption": s.caption}

    def cs(**arrays):
        return ConditionSet(**arrays, meta=meta)

    jobs: dict[str, Job] = {}
    if {"text", "motion", "depth", "sketch"} & set(tasks):
        jobs["text"] = Job(s.caption, cs())
    if "motion" in tasks:
        jobs["motion"] = Job(s.caption, cs(motion=s.motion))
    if "depth" in tasks:
        jobs["depth"] = Job(s.caption, cs(depth=s.depth))
    if "sketch" in tasks:
        jobs["sketch"] = Job(s.caption, cs(sketch=s.sketch))
    if "inpaint" in tasks:
        jobs["inpaint"] = Job(recoloured_caption(s.scene, case.inpaint_colour),
                              cs(mask=case.inpaint_hole, motion=s.motion), s.frames)
    if "style" in tasks:
        style = style_vector(case.style_image, pipeline, weights_dir)
        jobs["style"] = Job("", cs(depth=s.depth, motion=s.motion, style=style))
        jobs["style_baseline"] = Job("", cs(depth=s.depth, motion=s.motion))
    return jobs


# ----------------------------------------------------------------------------------------------
# scoring one case
# ----------------------------------------------------------------------------------------------
def _background_region(depth: np.ndarray) -> np.ndarray:
    """bool [T,H,W]: pixels the conditioning depth puts in the background, 1 px away from objects."""
    from vcomp.evaluation.world_checks import dilate

    return ~dilate(depth[:, 0] > NEAR_DEPTH)


def score_case(case: Case, outputs: dict[str, np.ndarray], embedder) -> dict:
    """Per-task measurements of one case from its generated frames (`outputs` by job name)."""
    from vcomp.evaluation import world_checks as W
    from vcomp.evaluation.metrics import frame_consistency, motion_control_error, psnr
    from vcomp.train.synthetic import FPS

    s, scene = case.sample, case.sample.scene
    obj = scene.primary
    out: dict[str, dict] = {}
    consistency = {name: frame_consistency(frames, embedder) for name, frames in outputs.items()}

    def object_checks(frames):
        a = W.analyse_object(frames)
        return {"colour": a["colour"], "shape": a["shape"], "direction": a["direction"], "bg_colour": a["bg_colour"],
                "colour_ok": a["colour"] == obj.colour, "shape_ok": a["shape"] == obj.shape,
                "direction_ok": a["direction"] == obj.direction, "bg_ok": a["bg_colour"] == scene.background.colour,
                "direction_cosine": W.direction_cosine(a["track"], obj.direction, frames.shape[2])}

    if "text" in outputs:
        out["text"] = {**object_checks(outputs["text"]), "frame_consistency": consistency["text"],
                       "motion_error": motion_control_error(outputs["text"], s.motion, FPS)}
    if "motion" in outputs:
        out["motion"] = {**object_checks(outputs["motion"]), "frame_consistency": consistency["motion"],
                         "motion_error": motion_control_error(outputs["motion"], s.motion, FPS),
                         "baseline_motion_error": out["text"]["motion_error"]}
    if "depth" in outputs:
        out["depth"] = {"depth_order_agreement": W.depth_order_agreement(outputs["depth"], s.depth),
                        "baseline": W.depth_order_agreement(outputs["text"], s.depth),
                        "frame_consistency": consistency["depth"]}
    if "sketch" in outputs:
        out["sketch"] = {**W.edge_agreement(outputs["sketch"], s.sketch),
                         "baseline": W.edge_agreement(outputs["text"], s.sketch)["f1"],
                         "frame_consistency": consistency["sketch"]}
    if "inpaint" in outputs:
        frames = outputs["inpaint"]
        keep = case.inpaint_hole[:, 0] < 0.5
        inside = W.object_colour(frames, s.object_masks[:, 0] > 0.5)
        value = psnr(frames, s.frames, keep)
        out["inpaint"] = {"outside_psnr_db": min(value, PSNR_CAP) if not math.isnan(value) else None,
                          "inside_colour": inside, "target_colour": case.inpaint_colour,
                          "inside_colour_ok": inside == case.inpaint_colour,
                          "frame_consistency": consistency["inpaint"]}
    if "style" in outputs:
        region = _background_region(s.depth)
        match = W.style_palette_match(outputs["style"], case.style_image, region)
        base = W.style_palette_match(outputs["style_baseline"], case.style_image, region)
        out["style"] = {"output_colour": match["output"], "style_colour": match["style"],
                        "palette_match": match["match"], "baseline_colour": base["output"],
                        "baseline": base["match"], "frame_consistency": consistency["style"]}
    return out


def reconstruction_checks(pipeline, case: Case) -> dict:
    """The case's own source clip after a round trip through the model's latent space
    (`Pipeline.reconstruct`): its motion-control error and whether its object keeps its shape.
    Why: latents exactly right give back no better than this, so these are the floor of the
    motion task's error and the ceiling of its (and the text task's) shape accuracy."""
    from vcomp.evaluation import world_checks as W
    from vcomp.evaluation.metrics import motion_control_error
    from vcomp.train.synthetic import FPS

    frames = pipeline.reconstruct(case.sample.frames)
    shape = W.analyse_object(frames)["shape"]
    return {"reconstruction_motion_error": motion_control_error(frames, case.sample.motion, FPS),
            "reconstruction_shape": shape, "reconstruction_shape_ok": shape == case.sample.scene.primary.shape}


# ----------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else None


def _row(task: str, metric: str, value, baseline=None, n: int = 0, note: str = "") -> dict:
    rule = next(((op, t) for tk, m, op, t in TARGETS if tk == task and m == metric), None)
    target, passed = None, None
    if rule is not None:
        op, t = rule
        if op == "baseline+":
            target = f">= baseline+{t:g}"
            passed = value is not None and baseline is not None and value >= baseline + t
        else:
            target = f"{op} {t:g}"
            passed = value is not None and (value >= t if op == ">=" else value <= t)
    return {"task": task, "metric": metric, "value": value, "baseline": baseline, "target": target,
            "passed": passed, "n": n, "note": note}


def aggregate(per_case: list[dict], tasks: Sequence[str]) -> list[dict]:
    """Rates and means over the cases, one row per (task, metric), with targets and pass/fail."""
    rows = []

    def col(task, key):
        return [c[task][key] for c in per_case if task in c]

    for task in tasks:
        n = sum(task in c for c in per_case)
        if task in ("text", "motion"):
            checks = ("colour", "shape", "direction", "bg") if task == "text" else ("direction", "colour", "shape")
            for check in checks:
                name = "background_accuracy" if check == "bg" else f"{check}_accuracy"
                rows.append(_row(task, name, _mean(col(task, f"{check}_ok")), n=n))
            cosines = [v for v in col(task, "direction_cosine") if v is not None]
            rows.append(_row(task, "direction_cosine", _mean(cosines), n=len(cosines),
                             note="straight-motion scenes: cosine of fitted vs prompted direction; 1 = exact, 0 = none"))
        if task == "motion":
            err, base = _mean(col("motion", "motion_error")), _mean(col("motion", "baseline_motion_error"))
            rows.append(_row(task, "motion_control_error", err, base, n, "px/frame, mean over pixels and frames 1.."))
            ratio = err / base if err is not None and base else None
            rows.append(_row(task, "motion_error_ratio", ratio, None, n, "error with / without the motion condition"))
            floor = _mean(col("motion", "reconstruction_motion_error"))
            if floor is not None:  # reconstruction_checks gives both rows from one round trip
                rows.append(_row(task, "reconstruction_ratio", floor / base if base else None, None, n,
                                 "the source clips through the latent space: the lowest ratio it allows"))
                rows.append(_row(task, "reconstruction_shape_accuracy", _mean(col(task, "reconstruction_shape_ok")),
                                 None, n, "the source clips through the latent space: the highest shape accuracy it allows"))
        if task == "depth":
            value, base = _mean(col(task, "depth_order_agreement")), _mean(col(task, "baseline"))
            wins = _mean([a > b for a, b in zip(col(task, "depth_order_agreement"), col(task, "baseline"), strict=True)])
            rows.append(_row(task, "depth_order_agreement", value, base, n, f"AUC, 0.5 = chance; beats baseline in {_pct(wins)}"))
        if task == "sketch":
            value, base = _mean(col(task, "f1")), _mean(col(task, "baseline"))
            wins = _mean([a > b for a, b in zip(col(task, "f1"), col(task, "baseline"), strict=True)])
            rows.append(_row(task, "edge_f1", value, base, n, f"tolerance 1 px; beats baseline in {_pct(wins)}"))
        if task == "inpaint":
            psnrs = [v for v in col(task, "outside_psnr_db") if v is not None]
            rows.append(_row(task, "outside_psnr_min_db", min(psnrs) if psnrs else None, None, n,
                             f"mean {_mean(psnrs):.1f} dB, capped at {PSNR_CAP:g}" if psnrs else ""))
            rows.append(_row(task, "inside_colour_accuracy", _mean(col(task, "inside_colour_ok")), n=n))
        if task == "style":
            rows.append(_row(task, "palette_match", _mean(col(task, "palette_match")), _mean(col(task, "baseline")), n,
                             "baseline: same depth + motion, no style image"))
        rows.append(_row(task, "frame_consistency", _mean(col(task, "frame_consistency")), n=n))
    return rows


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


# ----------------------------------------------------------------------------------------------
# the suite
# ----------------------------------------------------------------------------------------------
def run_world_suite(pipeline, seed: int = 0, n: int = 50, steps: int = 50, guidance: float | None = None,
                    tasks: Sequence[str] | str = TASKS, progress: Callable[[int, int], None] | None = None,
                    *, frames: int = 16, weights_dir: str | os.PathLike | None = None,
                    out_dir: str | os.PathLike | None = None, embedder=None, inpaint_keep: str = "both",
                    log: Callable[[str], None] | None = None, shape_guidance: float | None = None,
                    track_guidance: float | None = None, motion_guidance: float | None = None) -> dict:
    """Run the world suite with a loaded `Pipeline`; returns a JSON-ready dict (see
    docs/evaluation.md): "metrics" rows (task, metric, value, baseline, target, passed),
    "cases" (per-scene measurements), "timings", "all_passed".

    progress(done, total) after every generation; out_dir: also write every generated clip
    (mp4), the rendered sources and one contact sheet per task there. inpaint_keep: the
    pipeline's `keep_known` for the inpainting task: "both" (what `vcomp inpaint` does: the source
    is pasted back outside the mask, so the outside PSNR checks the paste) or "latent" (the
    model's own preservation of the known region). shape_guidance, track_guidance, motion_guidance:
    the pipeline's `generate(shape_guidance=..., track_guidance=..., motion_guidance=...)` for every
    job (None: the model's default)."""
    from vcomp.evaluation.metrics import frame_consistency, frame_embedder

    tasks = parse_tasks(tasks)
    requested = guidance  # None: every job runs at the model's default for what it guides
    guidance = pipeline.guidance_or_default(guidance)
    by_guide = dict(pipeline.guidance_by_guide) if requested is None else {}
    if n < 1:
        raise InputError(f"--n must be at least 1 (got {n})")
    from vcomp.engine.sampling import MAX_STEPS

    if not 1 <= int(steps) <= MAX_STEPS:
        raise InputError(f"--steps must be in 1..{MAX_STEPS} (got {steps})")
    width, height = pipeline.default_size
    if width != height:
        raise InputError(f"the world suite renders square scenes; the model's size is {width}x{height}")
    embedder = embedder or frame_embedder(weights_dir, str(pipeline.device))
    start = time.perf_counter()
    cases = [make_case(seed, i, width, frames) for i in range(n)]
    render_s = time.perf_counter() - start
    all_jobs = [jobs_for(c, tasks, pipeline, weights_dir) for c in cases]
    total = sum(len(j) for j in all_jobs)
    done = 0
    gen_times, step_times, score_s, per_case = [], [], 0.0, []
    sheets: dict[str, list[np.ndarray]] = {}
    out = Path(out_dir) if out_dir is not None else None
    if progress:
        progress(0, total)
    used_guidance = []  # per case: the w each job ran at (differs by job under per-guide defaults)
    for case, jobs in zip(cases, all_jobs, strict=True):
        outputs, used = {}, {}
        for name, job in jobs.items():
            t0 = time.perf_counter()
            keep = {"keep_known": inpaint_keep} if job.source_frames is not None else {}
            result = pipeline.generate(job.conditions, job.prompt, steps=steps, guidance=requested, seed=case.seed,
                                       num_frames=frames, size=(width, height), source_frames=job.source_frames,
                                       shape_guidance=shape_guidance, track_guidance=track_guidance,
                                       motion_guidance=motion_guidance, **keep)
            gen_times.append(time.perf_counter() - t0)
            step_times.append(result.info["timings"]["per_step"])
            outputs[name] = result.frames
            used[name] = result.info["guidance"]
            done += 1
            if progress:
                progress(done, total)
        t0 = time.perf_counter()
        scores = score_case(case, outputs, embedder)
        if "motion" in scores:
            scores["motion"].update(reconstruction_checks(pipeline, case))
        score_s += time.perf_counter() - t0
        per_case.append(scores)
        used_guidance.append(used)
        if out is not None:
            _save_case(out, case, outputs, sheets)
        if log:
            log(f"case {case.index}: {case.sample.caption}")
    rows = aggregate(per_case, tasks)
    source_consistency = _mean(frame_consistency(c.sample.frames, embedder) for c in cases)
    rows.append({"task": "source", "metric": "frame_consistency", "value": source_consistency, "baseline": None,
                 "target": None, "passed": None, "n": n, "note": "the rendered clips themselves (reference)"})
    gens_per_case = total / n
    mean_gen = float(np.mean(gen_times))
    mean_step = float(np.mean(step_times))
    overhead = max(mean_gen - mean_step * steps, 0.0)
    timings = {"total_s": time.perf_counter() - start, "render_s": render_s, "scoring_s": score_s,
               "generations": total, "generations_per_case": gens_per_case, "per_generation_s": mean_gen,
               "per_step_s": mean_step, "per_generation_overhead_s": overhead,
               "estimate_n50_steps50_s": 50 * gens_per_case * (50 * mean_step + overhead + score_s / total)
               + 50 * render_s / n}
    report = {
        "suite": "world", "seed": int(seed), "n": int(n), "steps": int(steps), "guidance": float(guidance),
        "guidance_by_guide": by_guide, "shape_guidance": shape_guidance,
        "track_guidance": track_guidance, "motion_guidance": motion_guidance, "frames": int(frames), "size": [width, height], "tasks": list(tasks), "inpaint_keep": inpaint_keep,
        "model": pipeline.describe(),
        "notes": list(pipeline.notes), "frame_embedder": embedder.name if hasattr(embedder, "name") else "custom",
        "metrics": rows,
        "cases": [_case_record(c, j, s, g) for c, j, s, g in zip(cases, all_jobs, per_case, used_guidance, strict=True)],
        "timings": {k: round(v, 4) if isinstance(v, float) else v for k, v in timings.items()},
        "all_passed": all(r["passed"] for r in rows if r["passed"] is not None),
    }
    if out is not None:
        from vcomp.io import write_contact_sheet, write_json

        for name, rows_ in sheets.items():
            write_contact_sheet(out / f"sheet_{name}.png", rows_)
        write_json(out / "results.json", report)
        report["out_dir"] = str(out)
    return report


def _case_record(case: Case, jobs: dict[str, Job], scores: dict, guidance: dict[str, float]) -> dict:
    o = case.sample.scene.primary
    return {"index": case.index, "seed": case.seed, "caption": case.sample.caption,
            "object": {"colour": o.colour, "shape": o.shape, "direction": o.direction},
            "background": case.sample.scene.background.colour,
            "prompts": {name: job.prompt for name, job in jobs.items()},
            "conditions": {name: job.conditions.present() for name, job in jobs.items()}, "guidance": guidance,
            "inpaint_colour": case.inpaint_colour, "style_colour": case.style_colour, "scores": scores}


def _save_case(out: Path, case: Case, outputs: dict[str, np.ndarray], sheets: dict[str, list]) -> None:
    from vcomp.io import write_png, write_video
    from vcomp.train.synthetic import FPS

    out.mkdir(parents=True, exist_ok=True)
    stem = f"case{case.index:03d}"
    write_video(out / f"{stem}_source.mp4", case.sample.frames, FPS)
    sheets.setdefault("source", []).append(case.sample.frames)
    if "style" in outputs:
        write_png(out / f"{stem}_style_image.png", case.style_image)
    for name, frames in outputs.items():
        write_video(out / f"{stem}_{name}.mp4", frames, FPS)
        sheets.setdefault(name, []).append(frames)
