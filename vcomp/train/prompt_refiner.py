"""Train an embedded model's prompt refiner (`vcomp train-prompt-refiner`): the text-conditioned
stage after its decoder that redraws objects as the prompt names them (vcomp.model.prompt_refiner).

The encoder, decoder, temporal refiner, text encoder and UNet stay frozen. Each step renders
world clips and a counterfactual of each in which every object has, with probability
`swap`, another shape (same colour, place, size, motion and layer); the counterfactual goes
through the autoencoder with per-frame latent noise of std U(0, `latent_noise`) and the
temporal refiner, which is what a sampled clip with a wrongly drawn outline looks like to this
stage, and the refiner learns to return the true clip as the same path renders it (same noise,
so the two differ only where the shapes do, not by what the autoencoder cannot keep), given the
true caption's tokens:

    loss = (1 + `object_weight` x object masks of both) weighted MSE + `temporal_weight` x MSE of
           (frame differences - the target's)

Squared errors, not L1: where the stage is unsure which pixels the named shape covers, L1's
optimum is to change nothing (the median), so an L1 stage never leaves the identity (measured:
flat held-out L1 over 1,150 steps), while MSE rewards every step towards the named outline.

A share `redraw` of the clips instead goes in as the UNet itself redraws it: the true clip's
latent noised to a timestep in [`redraw_t_min`, `redraw_t_max`] and brought back in
`redraw_steps` guided DDIM steps with the true caption. That is a generation's look (the UNet's
blob, colours and texture, where shapes are lost at t >= 200) with the clip's layout, so the
target (the true clip through the autoencoder) is still known; the swapped renders alone are
sharp wrong outlines, which a stage can learn to fix while leaving real generations as they are
(run pr6: 5 of 12 held-out swaps fixed, 0 of 48 generations changed).

A share `empty` of the clips has the empty prompt and no swap (the style task's and users'
empty prompts): there the stage learns to leave the clip as it is. The export is the whole embedded model with the
prompt refiner added (`OUT/export`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from vcomp.errors import InputError
from vcomp.train.module_loop import StageTrainConfig


@dataclass
class PromptRefinerTrainConfig(StageTrainConfig):
    out: str = "runs/prompt_refiner"
    steps: int = 2000
    lr: float = 1e-3
    latent_noise: float = 0.3
    temporal_weight: float = 0.5
    swap: float = 0.6  # chance that an object of a training clip is drawn with another shape
    empty: float = 0.1  # share of clips with the empty prompt and no swap
    redraw: float = 0.0  # share of clips whose input is the UNet's redraw of the true clip
    redraw_t_min: int = 200
    redraw_t_max: int = 500
    redraw_steps: int = 3


def swapped_scene(scene, rng: np.random.Generator, swap: float):
    """`scene` with each object's shape replaced, with probability `swap`, by another of SHAPES."""
    from vcomp.train.synthetic import SHAPES

    objects = tuple(dataclasses.replace(o, shape=str(rng.choice([s for s in SHAPES if s != o.shape])))
                    if rng.random() < swap else o for o in scene.objects)
    return dataclasses.replace(scene, objects=objects)


def world_pairs(rng: np.random.Generator, n: int, size: int, frames: int, swap: float, empty: float,
                split: str = "train", num_objects=(1, 2)):
    """`n` (true clip, counterfactual clip, mask of the objects of both, caption) for training or
    held-out scoring: clips [n, 3, T, size, size] in [-1, 1], masks [n, 1, T, size, size]."""
    from vcomp.train.refiner import sample_tensors
    from vcomp.train.synthetic import caption, render, sample_scene

    truth, fake, masks, captions = [], [], [], []
    for _ in range(n):
        scene = sample_scene(rng, split, num_objects, size, frames)
        blank = rng.random() < empty
        other = scene if blank else swapped_scene(scene, rng, swap)
        x, m = sample_tensors(render(scene, motion="none"))
        y, my = sample_tensors(render(other, motion="none"))
        truth.append(x), fake.append(y), masks.append(torch.maximum(m, my))
        captions.append("" if blank else caption(scene))
    return torch.stack(truth), torch.stack(fake), torch.stack(masks), captions


@torch.no_grad()
def stage_inputs(autoencoder, clips: torch.Tensor, levels: torch.Tensor, generator: torch.Generator,
                 also: torch.Tensor | None = None):
    """What the prompt refiner sees: `clips` encoded, with per-frame latent noise of std
    `levels[b]`, decoded and passed through the temporal refiner (if the model has one). With
    `also`, the same for those clips with the same noise: the training target, so that the input
    and the target differ only where the shapes do (not by what the autoencoder cannot keep)."""
    videos = clips if also is None else torch.cat([clips, also])
    latent = autoencoder.encode(videos)
    noise = torch.randn(clips.shape[:1] + latent.shape[1:], generator=generator) * levels.view(-1, 1, 1, 1, 1)
    decoded = autoencoder.decode(latent + noise.repeat(len(videos) // len(clips), 1, 1, 1, 1))  # no tokens: no stage
    return decoded if also is None else decoded.chunk(2)


@torch.no_grad()
def redrawn(emb, clips: torch.Tensor, captions: list[str], t_start: int, steps: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(`clips` as the UNet redraws them from timestep `t_start` in `steps` DDIM steps, guided
    with their captions against the empty prompt at the model's sampling guidance; the clean
    clips through the autoencoder), both decoded as the prompt refiner sees clips."""
    from vcomp.engine.parameterization import schedule_alphas_cumprod, to_x0
    from vcomp.engine.sampling import Branch, make_eps_fn
    from vcomp.weights.files import sampling_defaults

    unet, autoencoder = emb.unet, emb.autoencoder
    alphas = schedule_alphas_cumprod(bool(getattr(unet.cfg, "zero_terminal_snr", False))).float()
    latent = autoencoder.encode(clips)
    tokens, _ = emb.text_encoder.encode(list(captions) + [""])
    guidance = sampling_defaults(emb.record.get("sampling") or {}, emb.source).guidance  # what generation uses
    eps_fn = make_eps_fn(unet, Branch(context=tokens[:-1]), Branch(context=tokens[-1:].expand(len(clips), -1, -1)),
                         guidance=guidance, alphas_cumprod=alphas)
    x = alphas[t_start].sqrt() * latent + (1 - alphas[t_start]).sqrt() * torch.randn(latent.shape, generator=generator)
    times = np.linspace(t_start, 0, steps + 1).round().astype(int)
    for t, t_next in zip(times[:-1], times[1:]):
        eps = eps_fn(x, torch.tensor(int(t)))
        x0 = to_x0(eps, x, torch.full((len(x),), int(t)), "eps", alphas)
        a_next = alphas[t_next] if t_next > 0 else torch.tensor(1.0)
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps  # deterministic DDIM (eta 0)
    return autoencoder.decode(x), autoencoder.decode(latent)


def _shapes_right(video: torch.Tensor, wanted: list[str]) -> float:
    """Share of the clips in `video` whose object the eval suite's classifier reads as `wanted`,
    reading each as generation writes frames."""
    from vcomp.evaluation.world_checks import analyse_object
    from vcomp.pipeline import _uint8_frames

    frames = [_uint8_frames(video[i:i + 1]) for i in range(len(video))]
    return float(np.mean([analyse_object(f)["shape"] == s for f, s in zip(frames, wanted, strict=True)]))


def _wanted_shapes(captions: list[str]) -> list[str]:
    from vcomp.train.synthetic import parse_caption

    return [parse_caption(c)["objects"][0]["shape"] for c in captions]


@torch.no_grad()
def evaluate(autoencoder, refiner, text_encoder, held: tuple, level: float = 0.1) -> dict:
    """Held-out one-object scenes whose object was drawn with a wrong shape: how often the input
    and the refined clip read as the captioned shape (the eval suite's classifier), and the L1 to
    the true clips."""
    truth, fake, _, captions = held
    g = torch.Generator().manual_seed(0)
    inputs = stage_inputs(autoencoder, fake, torch.full((len(fake),), level), g)
    tokens, _ = text_encoder.encode(captions)
    refined = refiner(inputs, tokens).clamp(-1, 1)
    wanted = _wanted_shapes(captions)
    return {"input_shape": _shapes_right(inputs, wanted), "refined_shape": _shapes_right(refined, wanted),
            "input_l1": float((inputs - truth).abs().mean()), "refined_l1": float((refined - truth).abs().mean())}


@torch.no_grad()
def evaluate_redrawn(emb, refiner, held: tuple, t_start: int = 400, steps: int = 3) -> dict:
    """The same held-out scenes' true clips as the UNet redraws them from `t_start` (`redrawn`):
    how often the input and the refined clip read as the captioned shape, nearer to what the
    stage meets after a generation than the swapped outlines of `evaluate`."""
    truth, _, _, captions = held
    inputs, _ = redrawn(emb, truth, captions, t_start, steps, torch.Generator().manual_seed(1))
    tokens, _ = emb.text_encoder.encode(captions)
    wanted = _wanted_shapes(captions)
    return {"redrawn_input_shape": _shapes_right(inputs, wanted),
            "redrawn_refined_shape": _shapes_right(refiner(inputs, tokens).clamp(-1, 1), wanted)}


def stage_loss(refined: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, object_weight: float,
               temporal_weight: float) -> tuple[torch.Tensor, dict]:
    """Object-weighted MSE to the target plus `temporal_weight` x MSE of the frame differences'
    error (see the module docstring for why squared errors)."""
    err = refined - target
    w = (1.0 + object_weight * masks).expand_as(err)
    mse = (err.pow(2) * w).sum() / w.sum()
    temporal = (err[:, :, 1:] - err[:, :, :-1]).pow(2).mean() if err.shape[2] > 1 else err.new_zeros(())
    return mse + temporal_weight * temporal, {"mse": mse.item(), "temporal": temporal.item()}


def check_config(cfg: PromptRefinerTrainConfig) -> None:
    cfg.check()
    if cfg.width is not None and cfg.width < 8:
        raise InputError(f"--width must be at least 8, got {cfg.width}")
    if not 0 <= cfg.redraw_t_min <= cfg.redraw_t_max <= 900:
        raise InputError(f"--redraw-t-min/--redraw-t-max must satisfy 0 <= min <= max <= 900, "
                         f"got {cfg.redraw_t_min}, {cfg.redraw_t_max}")
    if cfg.redraw_steps < 1:
        raise InputError(f"--redraw-steps must be at least 1, got {cfg.redraw_steps}")
    for name in ("swap", "empty", "redraw"):
        if not 0 <= getattr(cfg, name) <= 1:
            raise InputError(f"--{name} must be between 0 and 1, got {getattr(cfg, name)}")


def train_prompt_refiner(cfg: PromptRefinerTrainConfig, on_event=None, explicit: set[str] | None = None) -> dict:
    """Train (or resume) a prompt refiner for the embedded model in `cfg.init`, and export the
    model with it to `cfg.out/export`. Returns a summary dict. `explicit`: see `open_stage_run`."""
    from vcomp.model.prompt_refiner import PromptRefiner
    from vcomp.train.checkpoint import save_module_checkpoint
    from vcomp.train.module_loop import export_stage, keep_architecture, open_stage_run, restore, run_module_steps

    on_event = on_event or (lambda kind, info: None)
    run = open_stage_run(cfg, "prompt refiner", explicit)
    check_config(cfg)
    autoencoder, out = run.emb.autoencoder, run.out
    text_encoder = run.emb.text_encoder.eval().requires_grad_(False)
    run.emb.unet.eval().requires_grad_(False)
    size = int(run.emb.unet.cfg.default_size)
    if size % 4:
        raise InputError(f"--init {cfg.init}: its frames ({size} px) are not a multiple of 4")
    keep_architecture(cfg, run, {"width": 16})
    torch.manual_seed(cfg.seed)
    refiner = PromptRefiner(int(text_encoder.dim), cfg.width).train()
    opt = torch.optim.AdamW(refiner.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, wall, sessions = restore(run, refiner, opt)
    session = {"command": cfg.command, "config": cfg.to_dict(), "start_step": start}
    held = world_pairs(np.random.default_rng([cfg.seed, 7]), 12, size, cfg.frames, swap=1.0, empty=0.0,
                       split="heldout", num_objects=1)
    t0 = time.monotonic()

    def save(step_now: int) -> None:
        save_module_checkpoint(out, "prompt_refiner", step_now, refiner, opt, cfg.to_dict(),
                               wall + time.monotonic() - t0, sessions + [{**session, "end_step": step_now}])

    def loss_at(step_now: int):
        rng = np.random.default_rng([cfg.seed, 1, step_now])
        truth, fake, masks, captions = world_pairs(rng, cfg.batch, size, cfg.frames, cfg.swap, cfg.empty)
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        k = round(cfg.batch * cfg.redraw)  # the first k clips go in as the UNet redraws them
        inputs, target = stage_inputs(autoencoder, fake[k:], torch.rand(cfg.batch - k, generator=g) * cfg.latent_noise,
                                      g, also=truth[k:])
        if k:
            t_start = int(rng.integers(cfg.redraw_t_min, cfg.redraw_t_max + 1))
            drawn, clean = redrawn(run.emb, truth[:k], captions[:k], t_start, cfg.redraw_steps, g)
            blank = torch.tensor([c == "" for c in captions[:k]]).view(-1, 1, 1, 1, 1)
            inputs, target = torch.cat([drawn, inputs]), torch.cat([torch.where(blank, drawn, clean), target])
        with torch.no_grad():
            tokens, _ = text_encoder.encode(captions)
        return stage_loss(refiner(inputs, tokens), target, masks, cfg.object_weight, cfg.temporal_weight)

    def held_out() -> dict:
        refiner.eval()
        scores = {**evaluate(autoencoder, refiner, text_encoder, held), **evaluate_redrawn(run.emb, refiner, held)}
        refiner.train()
        return scores

    step = run_module_steps(cfg, start, list(refiner.parameters()), opt, loss_at, out=out, save=save,
                            evaluate=held_out, eval_every=cfg.log_every * 10, on_event=on_event)
    stats = held_out()
    autoencoder.prompt_refiner = refiner.eval().requires_grad_(False)
    export = export_stage(run, cfg, "prompt_refiner", step, wall + time.monotonic() - t0, sessions, stats)
    summary = {"step": step, **stats, "export": str(export)}
    on_event("done", summary)
    return summary
