"""Two-stage training of the embedded model (or any preset): the loop behind `vcomp train`.

    cfg = TrainConfig(data="world", stage="both", steps=20_000, out="runs/tiny")
    summary = Trainer(cfg).run()          # resumable: TrainConfig(..., resume=True) continues

Stage 1 (text to video): the UNet and the word-level text encoder learn from captions alone.
Stage 2 (compositional): every condition the preset has (motion, depth, sketch, masked video,
first image, single sketch, style), built by the same `ConditionAdapter` the pipeline uses, with
the paper's condition dropout (`vcomp.train.dropout`). `stage="both"` switches at `stage2_at`.

Objective: MSE of the preset's prediction (eps, or v for the tiny preset: see
`vcomp.engine.parameterization`) on x_t = diffusers `add_noise` under the sampler's own schedule
(`vcomp.engine.sampling.SCHEDULER_CONFIG`: 1000 steps, scaled-linear 0.00085..0.012), t uniform,
optionally weighted by min-SNR-gamma (w = min(SNR, gamma) / SNR). AdamW (no decay on biases,
norms and embeddings), linear warm-up then constant or cosine learning rate, gradient clipping,
an EMA of the weights (what gets exported), a curriculum over frame count and frame size.

Reproducible and resumable: the model starts from `seed`; step s draws its noise, timesteps and
dropout from a generator seeded by (seed, s, rank), and its clips from `plan_step` (a pure
function of seed, step, rank), so `--resume` continues at the exact step with the exact batches.

Distributed: under `torchrun` (WORLD_SIZE > 1) every process joins a process group (gloo on CPU,
nccl on CUDA), the model is wrapped in DistributedDataParallel, each process trains on its own
shard of every step, and only rank 0 writes checkpoints, logs and exports.

This module prints nothing: it reports through `on_event(kind, info)` (the CLI draws progress).
"""

from __future__ import annotations

import copy
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from vcomp.engine.parameterization import min_snr_weights, target, to_eps, to_x0
from vcomp.engine.sampling import draw_noise, get_scheduler
from vcomp.errors import InputError
from vcomp.train.checkpoint import (
    FORMAT,
    append_log,
    find_checkpoint,
    load_checkpoint,
    load_init,
    prefixed,
    save_checkpoint,
)
from vcomp.train.data import (
    StepSampler,
    TrainDataset,
    collate,
    mix_seed,
    plan_step,
    worker_init,
)
from vcomp.train.dropout import DropoutConfig, drop_captions, drop_text_beside_style, sample_keep
from vcomp.train.interrupts import deferred_interrupts
from vcomp.weights.embedded import autoencoder_spec, autoencoder_tensors, refiner_tensors

if TYPE_CHECKING:
    from vcomp.model.config import ModelConfig

Event = Callable[[str, dict], None]

# Fields that may change when a run is resumed (how and for how long this session runs);
# every other field is the run's identity and comes from its checkpoint.
SESSION_FIELDS = ("steps", "max_minutes", "session_steps", "device", "precision", "workers", "threads",
                  "export", "ckpt_every", "log_every", "eval_every", "out", "resume", "init", "command")
# Session fields a resumed run keeps from its checkpoint unless this session sets them: a bare
# `--resume` checkpoints, logs, evaluates and exports as the run did (it fell back to the defaults,
# so a run started with --ckpt-every 200 checkpointed every 500 steps once resumed).
CARRIED_SESSION_FIELDS = ("device", "precision", "workers", "threads", "export", "ckpt_every", "log_every",
                          "eval_every")
TRAIN_DROPOUT_OFF = {"misc_dropout": 0.0, "p_all_zero": 0.0, "p_all_keep": 0.0}


#: the loss with a counterfactual caption must exceed the true caption's by this fraction of it
#: before `caption_contrast_loss` stops pushing them apart
CONTRAST_MARGIN = 0.05


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults are the shipped embedded model's recipe."""

    data: str = "world"  # "world" or a folder of captioned videos
    preset: str = "tiny"
    stage: str = "both"  # "1", "2" or "both"
    steps: int = 20_000  # total optimiser steps (all stages)
    stage2_at: int | None = None  # first stage-2 step with stage="both" (default: 30% of steps)
    batch: int = 16  # clips per process per step
    lr: float = 3e-4
    lr_schedule: str = "constant"  # "constant" or "cosine" (to min_lr_ratio * lr at `steps`)
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999  # EMA decay (warmed up as min(ema, (1 + s) / (10 + s)))
    min_snr_gamma: float | None = 5.0  # None: plain MSE
    snr_floor: float = 0.0  # lowest x0 weight of min-SNR weighting (raises the noisiest steps; 0: plain min-SNR)
    object_weight: float = 0.0  # extra loss weight on the latent cells the objects cover (world data; 0: plain mean)
    temporal_weight: float = 0.0  # weight of the frame-difference term (temporal_difference_loss; 0: off)
    pixel_weight: float = 0.0  # weight of the decoded-x0 pixel term (decoded_x0_loss; 0: off)
    caption_contrast: float = 0.0  # weight of the counterfactual-caption term (caption_contrast_loss; 0: off)
    contrast_attributes: str = "direction"  # what the counterfactual captions change: direction, shape, colour (comma list)
    contrast_margin: float = CONTRAST_MARGIN  # --contrast-margin
    pixel_contrast: float = 0.0  # weight of the same hinge on decoded pixels (decoded_x0_loss; 0: off)
    shape_weight: float = 0.0  # weight of the shape critic's cross-entropy on decoded x0 (world data; 0: off)
    frames_curriculum: str = "16"  # "8,16" (even split of the steps) or "8:4000,16" (until step 4000)
    size_curriculum: str | None = None  # e.g. "32,64"; default: the preset's size (64 for tiny)
    simple_until: int = 0  # world data: steps before this one see simple scenes (one object, solid background)
    seed: int = 0
    ckpt_every: int = 500
    log_every: int = 10
    eval_every: int = 0  # loss of the EMA weights on a fixed held-out batch every N steps (0: off)
    max_minutes: float | None = None
    session_steps: int | None = None  # stop this session after this many steps (then resume)
    device: str = "auto"
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with native bf16, else fp32), fp32, bf16
    workers: int = 1  # DataLoader worker processes (0: build batches in the training process)
    threads: int | None = None  # torch CPU threads per process (default: cores / processes)
    out: str = "runs/tiny"
    resume: bool = False
    init: str | None = None
    fresh_text: bool = False  # with init: the text encoder starts from fresh weights (the UNet from init's)
    autoencoder: str | None = None  # a `vcomp train-autoencoder` export (the latent space; frozen here)
    export: str | None = None
    world_clips: int | None = None  # a finite pool of world clips (default: every clip is new)
    cache: str | None = None  # npz cache for world pools / folder clips
    stride: int | None = None  # folder data: source frames per clip frame (default: ~8 fps)
    user_path_prob: float = 0.25  # world stage 2: depth + sketch from the user-video extractors
    text_len: int | None = None  # text tokens (default: enough for the longest caption)
    text_depth: int = 2
    text_heads: int = 4
    model: dict = field(default_factory=dict)  # ModelConfig overrides (tests, experiments)
    dropout: dict = field(default_factory=lambda: DropoutConfig().to_dict())
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("model"), dict):  # JSON lists back to the tuples ModelConfig uses
            d["model"] = {k: tuple(v) if isinstance(v, list) else v for k, v in d["model"].items()}
        return cls(**d)


# ---------------------------------------------------------------- schedule


def parse_curriculum(text: str | int | None, steps: int, default: int) -> tuple[tuple[int, int | None], ...]:
    """"8,16" -> ((8, steps // 2), (16, None)); "8:3000,16" -> ((8, 3000), (16, None))."""
    if text is None or str(text).strip() == "":
        return ((int(default), None),)
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        phases = [(int(p.split(":")[0]), int(p.split(":")[1]) if ":" in p else None) for p in parts]
    except ValueError:
        raise InputError(f"bad curriculum {text!r}: use values like 8,16 or 8:3000,16") from None
    explicit = any(u is not None for u, in [(u,) for _, u in phases[:-1]])
    if not explicit:
        n = len(phases)
        phases = [(v, (steps * (i + 1)) // n if i < n - 1 else None) for i, (v, _) in enumerate(phases)]
    if any(u is None for _, u in phases[:-1]) or phases[-1][1] is not None:
        raise InputError(f"bad curriculum {text!r}: every phase but the last needs ':until_step'")
    ends = [u for _, u in phases[:-1]]
    if ends != sorted(ends):
        raise InputError(f"bad curriculum {text!r}: phase ends must increase")
    return tuple(phases)


def curriculum_text(phases) -> str:
    return ",".join(f"{v}:{u}" if u is not None else f"{v}" for v, u in phases)


def _phase(phases, step: int) -> int:
    for value, until in phases:
        if until is None or step < until:
            return value
    return phases[-1][0]


@dataclass(frozen=True)
class Schedule:
    """What each step trains: stage, frame count, frame size, learning rate."""

    steps: int
    stage2_at: int
    frames: tuple
    sizes: tuple
    lr: float
    warmup: int
    lr_schedule: str
    min_lr_ratio: float
    simple_until: int = 0

    def stage(self, step: int) -> int:
        return 2 if step >= self.stage2_at else 1

    def frames_at(self, step: int) -> int:
        return _phase(self.frames, step)

    def size_at(self, step: int) -> int:
        return _phase(self.sizes, step)

    def simple_at(self, step: int) -> bool:
        return step < self.simple_until

    def lr_at(self, step: int) -> float:
        if self.warmup > 0 and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.lr_schedule == "cosine":
            progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
            return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        return self.lr


# ---------------------------------------------------------------- model pieces


class Denoiser(nn.Module):
    """UNet + text encoder as one module (what DDP wraps); its state_dict keys are the embedded
    model's ("unet.*", "text.*")."""

    def __init__(self, unet: nn.Module, text: nn.Module):
        super().__init__()
        self.unet, self.text = unet, text

    def forward(self, x_t, t, ids, style=None, conditions=None, drop=None):
        context = self.text.forward_ids(ids)
        feats = None
        if conditions:
            b, _, f, h, w = x_t.shape
            feats = self.unet.encode_conditions(conditions, b, f, self.unet.condition_grid((h, w)), drop)
        return self.unet(x_t, t, context=context, style=style, cond_features=feats)


@torch.no_grad()
def focus_weights(focus: torch.Tensor, latent_shape, object_weight: float) -> torch.Tensor:
    """Loss weight per latent cell, `1 + object_weight x` the fraction of the cell the objects cover.

    Why: in the world the objects fill 4-11% of a frame, so a plain mean spends ~90% of the loss on
    backgrounds, which are learnt first; the object's colour, shape and path, which the text names
    and the evaluation reads, then get a small share of every step. `focus` is [B, 1, T, H, W] in
    [0, 1]; the result [B, 1, T, h, w] broadcasts over the latent's channels."""
    h, w = latent_shape[-2:]
    fy, fx = focus.shape[-2] // h, focus.shape[-1] // w
    cover = F.avg_pool3d(focus.float(), kernel_size=(1, fy, fx))
    return 1.0 + object_weight * cover


PIXEL_FRAMES = 2  #: frames per clip the decoded-x0 term decodes (random ones each step)


def decoded_x0_loss(autoencoder, x0: torch.Tensor, latent: torch.Tensor, focus: torch.Tensor | None,
                    object_weight: float, decoded: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample object-weighted L1 [B] between the frames the frozen decoder makes of the
    predicted clean latent `x0` and of the true one (`latent`; both [B, C, T, h, w], scaled).

    Why: the latent MSE weighs every channel alike, and what tells a star from a square (a few
    pixels at the points, in latent directions of small norm) costs almost nothing there, so the
    model learns colour (a large latent difference) and not shape (shape words move its loss by
    ~1%). Seen through the decoder those directions are as large as the pixels they move. The
    decoder is frozen: gradients reach the UNet only. `focus` [B, 1, T, H, W] weighs object pixels
    1 + `object_weight`. `decoded`: the decoder's frames of `x0` when the caller has them already
    (the shape critic judges the same frames), so they are decoded once."""
    # without the temporal refiner: it smooths over frames, and only two are decoded here
    with torch.no_grad():
        want = autoencoder.decode(latent.float(), refine=False)
    got = autoencoder.decode(x0, refine=False) if decoded is None else decoded
    err = (got.float() - want.float()).abs()
    dims = tuple(range(1, err.ndim))
    if focus is None or not object_weight:
        return err.mean(dims)
    w = (1.0 + object_weight * focus.float()).expand_as(err)
    return (err * w).sum(dims) / w.sum(dims)


def pixel_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """min(SNR, gamma) / gamma: the decoded-x0 term counts where x0 is predictable (the min-SNR
    weighting of an x0 loss, scaled to at most 1), and fades out at high noise, where the decoded
    guess is an average of many clips whatever the model does."""
    ab = alphas_cumprod[t.cpu()].float()
    return torch.clamp(ab / (1 - ab), max=gamma) / gamma


def weighted_mean(values: torch.Tensor, cells: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean of `values` [B, ...] weighted by `cells` (broadcasting; None: plain mean)."""
    dims = tuple(range(1, values.ndim))
    if cells is None:
        return values.mean(dim=dims)
    return (values * cells).mean(dim=dims) / cells.expand_as(values).mean(dim=dims)


#: the --shape-weight term judges timesteps below this one: above it (zero terminal SNR at 999)
#: the model cannot know where the object is, and the crop at its true place would judge a guess
SHAPE_T_MAX = 800


#: conditions that show one frame, so say nothing about which way objects move: a sample with one
#: of them and its caption still learns direction words from the caption (and learns more: given
#: the first frame, the direction word says where the object is in every later one)
STILL_CONDITIONS = ("local_image", "single_sketch")

#: caption attributes `--contrast-attributes` may change (synthetic.counterfactual_caption)
CONTRAST_ATTRIBUTES = ("direction", "shape", "colour")


def parse_contrast_attributes(text: str) -> tuple[str, ...]:
    """'direction,shape' -> ("direction", "shape"); an unknown or empty list is an InputError."""
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    bad = [n for n in names if n not in CONTRAST_ATTRIBUTES]
    if bad or not names:
        raise InputError(f"--contrast-attributes takes a comma list of {', '.join(CONTRAST_ATTRIBUTES)} "
                         f"(got {text!r})")
    return names


def caption_contrast_loss(true_loss: torch.Tensor, counter_loss: torch.Tensor,
                          margin: float = CONTRAST_MARGIN) -> torch.Tensor:
    """Per-sample hinge max(0, true - counter + margin * true) on the losses of the same noisy clips
    denoised given their captions and given counterfactual ones (every direction reversed).

    Why: the embedded model's loss was the same whichever way its captions said the objects move
    (benchmarks/heldout_loss.py: ratio 0.999): the plain loss rewards reading a direction word
    too little to be learnt. This term pays for exactly that until the true caption is `margin`
    better, and then stops, so it cannot pull the model away from the plain loss's optimum for long.
    """
    return torch.relu(true_loss - counter_loss + margin * true_loss.detach())


def relative_gaps(true_loss: torch.Tensor, counter_loss: torch.Tensor,
                  kinds: list[str]) -> tuple[float, dict[str, float]]:
    """How much worse (a fraction of the true caption's loss) the counterfactual captions did: the
    mean, and the mean per contrasted attribute (`kinds`, one per sample), for the log."""
    rel = ((counter_loss - true_loss) / true_loss.clamp_min(1e-12)).detach().float()
    per = {k: round(float(rel[[j for j, x in enumerate(kinds) if x == k]].mean()), 4) for k in sorted(set(kinds))}
    return float(rel.mean()), per


def temporal_difference_loss(err: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean square of the frame-to-frame change of the signed error `err` [B, C, T, H, W].

    Why: the plain MSE is dominated by what every frame shares (the background, where the object
    is on average), so an error that differs between frames (the object drifting the wrong way,
    wobbling, flicker) is a small share of it. The square of the error's difference between
    consecutive frames is blind to an error every frame shares and weighs one that changes over
    time: it is the residual-vector objective of VMC (Jeong et al., 2023) applied to the whole
    prediction. `cells` (the object weights, [B, 1, T, h, w]) are averaged over each frame pair."""
    if err.shape[2] < 2:
        return err.new_zeros(err.shape[0])
    change = (err[:, :, 1:] - err[:, :, :-1]).pow(2)
    pair_cells = None if cells is None else 0.5 * (cells[:, :, 1:] + cells[:, :, :-1])
    return weighted_mean(change, pair_cells)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_p = [p for p in ema.parameters()]
    src_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, src_p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def extend_vocab(text: nn.Module, words: list[str]) -> nn.Module:
    """A text encoder with `words` appended to its vocabulary (new rows ~ N(0, 0.02))."""
    from vcomp.model.embedders import WordTextEncoder

    new = [w for w in dict.fromkeys(words) if w not in text.index]
    if not new:
        return text
    bigger = WordTextEncoder(list(text.vocab) + new, **text.config())
    sd = text.state_dict()
    with torch.no_grad():
        emb = bigger.token_embedding.weight
        emb[: len(text.vocab)] = sd.pop("token_embedding.weight")
        bigger.load_state_dict({**sd, "token_embedding.weight": emb.clone()})
    return bigger


def hardware(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": str(device),
            "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the trainer


#: picks the held-out clips of `eval_mse_ema`: fixed, so that runs with different seeds compare
EVAL_SEED = 0


def _overridden(make: Callable[[], ModelConfig]) -> ModelConfig:
    """A model config with the run's --model-json overrides; one that the config refuses (an
    unknown field, a width the norm groups do not divide) is the user's input error."""
    try:
        return make()
    except (TypeError, ValueError) as exc:
        raise InputError(f"--model-json: {exc}") from None


class Trainer:
    def __init__(self, cfg: TrainConfig, on_event: Event | None = None):
        self.cfg = cfg
        self.on_event = on_event or (lambda kind, info: None)

    # ------------------------------------------------------------ setup

    def _distributed(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.dist = None
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                backend = "nccl" if self.device.type == "cuda" else "gloo"
                dist.init_process_group(backend=backend)
            self.dist = dist

    def _device(self) -> None:
        from vcomp.pipeline import resolve_device

        want = self.cfg.device
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(want)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local)
        self.device = dev
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        precision = self.cfg.precision
        if precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
        if precision == "auto":
            from vcomp.train.cpu import native_bf16

            precision = "bf16" if dev.type == "cuda" or native_bf16() else "fp32"
        self.precision = precision
        self.autocast = torch.bfloat16 if precision == "bf16" else None

    def _threads(self) -> None:
        if self.device.type == "cpu":
            from vcomp.train.cpu import prepare_cpu_training

            world = int(os.environ.get("WORLD_SIZE", "1"))
            prepare_cpu_training(self.cfg.threads or max(1, (os.cpu_count() or 1) // world))

    def _resolve_config(self) -> None:
        """Fresh run, or resume: the checkpoint's identity + this session's fields."""
        cfg = self.cfg
        out = Path(cfg.out).expanduser()
        existing = find_checkpoint(out)
        self.resume_from = None
        if existing is not None and not cfg.resume:
            raise InputError(f"{out} already holds a training checkpoint; pass --resume to continue it, "
                             "or choose another --out")
        if existing is not None:
            ckpt = load_checkpoint(existing)
            stored = TrainConfig.from_dict(ckpt.record["config"])
            session = {k: getattr(stored if (k in CARRIED_SESSION_FIELDS and k not in self.explicit) else cfg, k)
                       for k in SESSION_FIELDS}
            for f in fields(TrainConfig):
                if f.name in SESSION_FIELDS:
                    continue
                mine, theirs = getattr(cfg, f.name), getattr(stored, f.name)
                if f.name in self.explicit and mine != theirs:
                    raise InputError(f"--resume continues {out} with its own settings: {f.name} is {theirs!r} there, "
                                     f"{mine!r} here; start a new run (--init {out}) to change it")
            self.cfg = replace(stored, **session)
            if "steps" not in self.explicit:
                self.cfg.steps = stored.steps
            if self.cfg.init and "init" in self.explicit:
                raise InputError("--init starts a new run; it cannot be combined with resuming an existing one")
            self.cfg.init = stored.init
            self.resume_from = ckpt
        self.out = out

    @property
    def explicit(self) -> set[str]:
        return getattr(self, "_explicit", set())

    def _source(self, cfg: TrainConfig):
        from vcomp.train.data import FolderSource, WorldSource

        if cfg.data == "world":
            return WorldSource(seed=cfg.seed, length=cfg.world_clips or 10**12, cache_dir=cfg.cache,
                               user_path_prob=cfg.user_path_prob)
        if cfg.simple_until:
            raise InputError("--simple-until draws simple scenes of the procedural world; it needs --data world")
        window = max(v for v, _ in parse_curriculum(cfg.frames_curriculum, cfg.steps, 16))
        return FolderSource(cfg.data, frames=window, stride=cfg.stride, cache_dir=cfg.cache)

    def _build(self) -> None:
        from vcomp.model import create_model, get_config
        from vcomp.model.adapters import get_adapter
        from vcomp.model.config import ModelConfig, describe_trained
        from vcomp.model.embedders import WordTextEncoder, build_vocab
        from vcomp.model.loading import (
            load_state_dict_strict,
            with_added_modules,
            with_new_latent_channels,
            without_removed_modules,
        )

        cfg = self.cfg
        self.source = self._source(cfg)
        ckpt = self.resume_from
        init = load_init(cfg.init) if (cfg.init and ckpt is None) else None
        if cfg.fresh_text and not cfg.init:
            raise InputError("--fresh-text restarts the text encoder of an --init model; a run without --init "
                             "starts every part fresh already")
        # lineage: how the --init weights were trained, carried into checkpoints and exports
        # and its sampling defaults: an export evaluated or shipped without them would silently
        # run at the pipeline's fallback guidance instead of the one measured for this model
        if ckpt is not None:
            self.init_history = ckpt.record.get("init_history")
            self.init_sampling = ckpt.record.get("init_sampling")
        else:
            self.init_history = {"source": str(cfg.init), **init.history} if init is not None else None
            self.init_sampling = init.sampling if init is not None else None

        if ckpt is not None:
            base = ModelConfig.from_dict(ckpt.record["model"])
            text_spec = dict(ckpt.record["text_encoder"])
        elif init is not None:  # --model-json / --prediction override the initial model's config
            base = _overridden(lambda: replace(ModelConfig.from_dict(init.model), **cfg.model))
            text_spec = dict(init.text_encoder)
        else:
            base = _overridden(lambda: get_config(cfg.preset, **cfg.model))
            need = self.source.max_tokens()
            text_len = cfg.text_len or min(77, max(base.text_len, 8 * math.ceil(need / 8)))
            base = replace(base, text_len=text_len)
            text_spec = {"vocab": build_vocab(self.source.captions()), "dim": base.context_dim,
                         "max_len": text_len, "depth": cfg.text_depth, "heads": cfg.text_heads}
        self.autoencoder = self._autoencoder(base, ckpt, init)
        ae = self.autoencoder
        moved_from = None  # the --init model's latent channels, when it moves to a new latent space
        init_patch = ModelConfig.from_dict(init.model).latent_patch if init is not None else base.latent_patch
        patch_moved = base.latent_patch != init_patch  # --model-json '{"latent_patch": 2}' on an --init model
        if (base.in_dim, base.out_dim, base.latent_scale) != (ae.latent_channels, ae.latent_channels, ae.factor) \
                or patch_moved:
            movable = init is not None and (bool(cfg.autoencoder) or patch_moved)
            if ckpt is not None or (init is not None and not movable):
                raise InputError(f"the autoencoder has {ae.latent_channels} channels at factor {ae.factor}, but the "
                                 f"model was trained on {base.in_dim} at {base.latent_scale}; start a fresh run")
            if movable:
                moved_from = base.in_dim
                self.init_history = {**self.init_history, "latent_channels_moved": [base.in_dim, ae.latent_channels]}
                if ae.factor != base.latent_scale:  # the blocks are convolutions: they run on any grid
                    self.init_history["latent_factor_moved"] = [base.latent_scale, ae.factor]
                if patch_moved:
                    self.init_history["latent_patch_moved"] = [init_patch, base.latent_patch]
            base = replace(base, in_dim=ae.latent_channels, out_dim=ae.latent_channels, latent_scale=ae.factor)
        base = replace(base, notes=describe_trained(base))
        self.base_cfg = base
        self.model_cfg = replace(base, **TRAIN_DROPOUT_OFF)
        self.adapter = get_adapter("tiny", style_dim=base.style_dim)

        torch.manual_seed(cfg.seed)
        unet = create_model(self.model_cfg)
        vocab = text_spec.pop("vocab")
        text = WordTextEncoder(vocab, **text_spec)
        if init is not None:
            state = without_removed_modules(unet, with_added_modules(unet, init.unet))
            if moved_from is not None:  # a new latent space: the latent's own convolutions start fresh
                state = with_new_latent_channels(unet, state, moved_from)
            load_state_dict_strict(unet, state, source=f"UNet weights of {init.source}")
            if not cfg.fresh_text:
                load_state_dict_strict(text, init.text, source=f"text-encoder weights of {init.source}")
            text = extend_vocab(text, build_vocab(self.source.captions(), words=())[4:])
        self.model = Denoiser(unet, text).to(self.device)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        if ckpt is not None:
            load_state_dict_strict(self.model, {k: v for k, v in ckpt.tensors.items() if not k.startswith(("ema.", "vae.", "refiner."))},
                                   source=f"weights in {ckpt.path}")
            load_state_dict_strict(self.ema_model, ckpt.weights("ema."), source=f"EMA weights in {ckpt.path}")

        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            plain = p.ndim < 2 or name.endswith(("token_embedding.weight", "position_embedding")) or "rel_pos" in name
            (no_decay if plain else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
            **({"fused": True} if self.device.type == "cuda" else {"foreach": True}))
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt.state["optimizer"])

        if self.dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)
        else:
            self.ddp = self.model
        self.scheduler = get_scheduler(zero_terminal_snr=self.model_cfg.zero_terminal_snr)  # add_noise only
        self.alphas_cumprod = self.scheduler.alphas_cumprod.clone()

        size_default = base.default_size
        if ckpt is not None:
            sched = ckpt.record["schedule"]
            stage2_at, frames, sizes = sched["stage2_at"], sched["frames"], sched["sizes"]
            simple_until = int(sched.get("simple_until", 0))
        else:
            stage2_at = {"1": 10**15, "2": 0}.get(cfg.stage)
            if cfg.stage not in ("1", "2", "both"):
                raise InputError(f"--stage must be 1, 2 or both, got {cfg.stage!r}")
            if stage2_at is None:
                stage2_at = cfg.stage2_at if cfg.stage2_at is not None else int(round(0.3 * cfg.steps))
            frames = curriculum_text(parse_curriculum(cfg.frames_curriculum, cfg.steps, 16))
            sizes = curriculum_text(parse_curriculum(cfg.size_curriculum, cfg.steps, size_default))
            simple_until = int(cfg.simple_until)
        cell = base.latent_scale * base.latent_multiple
        for s, _ in parse_curriculum(sizes, cfg.steps, size_default):
            if s % cell or s < cell:
                raise InputError(f"frame size {s} must be a multiple of {cell} px for this model")
        for n, _ in parse_curriculum(frames, cfg.steps, 16):
            if n < 2:
                raise InputError(f"clips need at least 2 frames (got {n})")
        self.schedule = Schedule(cfg.steps, int(stage2_at), parse_curriculum(frames, cfg.steps, 16),
                                 parse_curriculum(sizes, cfg.steps, size_default), cfg.lr, cfg.warmup,
                                 cfg.lr_schedule, cfg.min_lr_ratio, simple_until)
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise InputError(f"--lr-schedule must be constant or cosine, got {cfg.lr_schedule!r}")
        for flag, value in (("--object-weight", cfg.object_weight), ("--temporal-weight", cfg.temporal_weight),
                            ("--pixel-weight", cfg.pixel_weight),
                            ("--caption-contrast", cfg.caption_contrast), ("--contrast-margin", cfg.contrast_margin),
                            ("--pixel-contrast", cfg.pixel_contrast), ("--shape-weight", cfg.shape_weight),
                            ("--simple-until", cfg.simple_until)):
            if not value >= 0:
                raise InputError(f"{flag} must be 0 or more (got {value})")
        self.contrast_attributes = parse_contrast_attributes(cfg.contrast_attributes)
        if cfg.snr_floor and (cfg.min_snr_gamma is None or not 0 < cfg.snr_floor <= cfg.min_snr_gamma):
            raise InputError(f"--snr-floor must be between 0 and the min-SNR gamma ({cfg.min_snr_gamma}), "
                             f"got {cfg.snr_floor}; it needs --min-snr above 0")
        self.schedule_record = {"stage2_at": int(stage2_at), "frames": frames, "sizes": sizes}
        if simple_until:
            self.schedule_record["simple_until"] = simple_until
        self.dropout = DropoutConfig(**cfg.dropout)
        self.start_step = ckpt.step if ckpt is not None else 0
        self.record = copy.deepcopy(ckpt.record) if ckpt is not None else {}
        self.loss_ema = ckpt.state.get("loss_ema") if ckpt is not None else None
        self.dataset = TrainDataset(self.source, self.adapter)
        self.shape_critic = self._shape_critic() if cfg.shape_weight else None

    def _shape_critic(self):
        """The frozen shape classifier of the --shape-weight term: OUT/shape_critic.safetensors when
        the run has one (resume), else trained now on world frames through this run's autoencoder
        (about a minute) and saved there. Every process trains the same one from the run's seed."""
        from safetensors.torch import load_file, save_file

        from vcomp.train.shape_critic import ShapeCritic, train_shape_critic

        if self.cfg.data != "world":
            raise InputError("--shape-weight needs the procedural world (--data world): it knows each clip's shapes")
        path = self.out / "shape_critic.safetensors"
        if path.is_file():
            critic = ShapeCritic()
            critic.load_state_dict(load_file(str(path)))
            critic.eval().requires_grad_(False)
        else:
            self.on_event("shape_critic", {"path": str(path), "status": "training"})
            critic, record = train_shape_critic(self.autoencoder, seed=self.cfg.seed)
            if self.rank == 0:
                from vcomp.io import atomic_file

                with atomic_file(path) as tmp:
                    save_file(critic.state_dict(), str(tmp), metadata={k: str(v) for k, v in record.items()})
            self.on_event("shape_critic", {"path": str(path), "status": "trained", **record})
        return critic.to(self.device)

    def _shape_rows(self, batch: dict, ids: torch.Tensor, drop, t: torch.Tensor) -> tuple[list[int], list[int]]:
        """Samples the --shape-weight term judges, and their shape labels: one-object world captions
        at t < SHAPE_T_MAX whose shape the model is told (the caption kept, or any condition but
        the style, all of which show the object)."""
        from vcomp.train.synthetic import SHAPES, parse_caption

        text_kept = self._text_kept(ids)
        rows, labels = [], []
        for i, text in enumerate(batch["caption"]):
            if int(t[i]) >= SHAPE_T_MAX:
                continue
            shown = bool(text_kept[i]) or (drop is not None and any(float(v[i]) > 0 for k, v in drop.items()
                                                                     if k != "style"))
            try:
                objects = parse_caption(text)["objects"]
            except ValueError:
                continue
            if shown and len(objects) == 1:
                rows.append(i)
                labels.append(SHAPES.index(objects[0]["shape"]))
        return rows, labels

    def _autoencoder(self, base, ckpt, init):
        """The frozen latent space: the checkpoint's (resume), --autoencoder, the --init model's, or
        the parameter-free pixel unshuffle when the model's channels say so."""
        from vcomp.weights.embedded import autoencoder_from_spec

        self.autoencoder_history = None  # how a learned latent was trained (kept in exports)
        if ckpt is not None:
            spec = ckpt.record.get("autoencoder") or {"type": "pixel_unshuffle", "factor": base.latent_scale}
            self.autoencoder_history = ckpt.record.get("autoencoder_history")
            return autoencoder_from_spec(spec, ckpt.weights("vae.") or None,
                                         {"refiner": ckpt.weights("refiner.") or None})
        if self.cfg.autoencoder:
            from vcomp.model.autoencoder import KLAutoencoder
            from vcomp.train.autoencoder import load_autoencoder

            vae, record = load_autoencoder(self.cfg.autoencoder)
            self.autoencoder_history = {"source": str(self.cfg.autoencoder), **record.get("training", {})}
            return KLAutoencoder(vae)
        if init is not None and init.autoencoder:
            self.autoencoder_history = init.history.get("autoencoder")
            spec = dict(init.autoencoder)
            if spec.pop("prompt_refiner", None) is not None:  # it reads the text encoder this run changes
                self.on_event("note", {"message": "the --init model's prompt refiner is left out of this run's exports "
                                       "(it reads the text encoder, which training changes); train a new one with "
                                       "`vcomp train-prompt-refiner --init EXPORT`"})
            if spec.pop("shape_critic", None) is not None:  # not carried through this run's checkpoints
                self.on_event("note", {"message": "the --init model's shape critic is left out of this run's exports; "
                                       "add one with `vcomp train-shape-critic --init EXPORT`"})
            return autoencoder_from_spec(spec, init.vae or None, {"refiner": init.refiner or None})
        if base.in_dim == 3 * base.latent_scale**2:
            return autoencoder_from_spec({"type": "pixel_unshuffle", "factor": base.latent_scale})
        raise InputError(f"the {base.name!r} preset denoises a learned latent ({base.in_dim} channels): pass "
                         "--autoencoder DIR (a `vcomp train-autoencoder` export) or --init an embedded model")

    # ------------------------------------------------------------ one step

    def requests(self, step: int):
        s = self.schedule
        return plan_step(self.cfg.seed, step, self.rank, self.world_size, self.cfg.batch, self.source,
                         s.frames_at(step), s.size_at(step), s.stage(step) == 2, s.simple_at(step))

    def _inputs(self, batch: dict, stage: int, generator: torch.Generator, dropout: DropoutConfig | None):
        """(x0 latent, captions, style, conditions, drop) for a batch, with dropout applied."""
        dev = self.device
        with torch.no_grad():
            latent = self.autoencoder.encode(batch["video"].to(dev, non_blocking=True)).float()
        b = latent.shape[0]
        conditions = {k: v.to(dev, non_blocking=True) for k, v in batch.get("conditions", {}).items()} \
            if stage == 2 else {}
        names = [n for n in self.base_cfg.conditions if n in conditions]
        style = batch.get("style") if stage == 2 else None
        captions = list(batch["caption"])
        drop = None
        if dropout is not None:
            keep = sample_keep(b, names + ["style"], stage, dropout, generator)
            if stage == 2:
                drop = {n: keep[n].float().to(dev) for n in names}
                with_token = bool(torch.rand((), generator=generator) < dropout.p_style_token)
                if with_token and style is not None:
                    style = style * keep["style"].view(-1, 1, 1).to(style.dtype)
                    keep["text"] = drop_text_beside_style(keep["text"], keep["style"], dropout, generator)
                else:
                    style = None
            captions = drop_captions(captions, keep["text"])
        if style is not None:
            style = style.to(dev)
        ids = self.model.text.tokenize(captions)[0].to(dev)
        return latent, ids, style, conditions, drop

    def _text_kept(self, ids: torch.Tensor) -> torch.Tensor:
        """[B] bool: the samples whose caption survived the dropout (more than <bos> <eos>)."""
        from vcomp.model.embedders import PAD

        return (ids != self.model.text.index[PAD]).sum(dim=1) > 2

    def _contrast_rows(self, batch: dict, ids: torch.Tensor, style, drop,
                       step: int = 0) -> tuple[list[int], list[str], torch.Tensor | None]:
        """The samples whose caption is this step's only word on one of `contrast_attributes`, the
        attribute each one is contrasted on, and the token ids of its caption with that attribute
        changed (`caption_contrast_loss`). Text must be kept. Direction: no moving condition and no
        style (STILL_CONDITIONS show one frame, so say nothing of it); shape and colour: no condition
        and no style at all (every condition shows the object). A sample that qualifies for several
        attributes takes them in turn over the steps."""
        from vcomp.train.synthetic import counterfactual_caption

        text_kept = self._text_kept(ids)
        rows, chosen, captions = [], [], []
        for i, text in enumerate(batch["caption"]):
            if not text_kept[i]:
                continue
            kept = set() if drop is None else {k for k, v in drop.items() if float(v[i]) > 0}
            styled = style is not None and bool(style[i].abs().sum() > 0)
            options = []
            for attribute in self.contrast_attributes:
                shown = styled or (bool(kept - set(STILL_CONDITIONS)) if attribute == "direction" else bool(kept))
                if shown:
                    continue
                try:
                    other = counterfactual_caption(text, attribute)
                except ValueError:  # not a world caption (folder data)
                    break
                if other != text:  # circles and still objects have no reversed direction
                    options.append((attribute, other))
            if options:
                attribute, other = options[(step + i) % len(options)]
                rows.append(i)
                chosen.append(attribute)
                captions.append(other)
        return rows, chosen, (self.model.text.tokenize(captions)[0].to(ids.device) if rows else None)

    def _autocast(self):
        import contextlib

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def train_step(self, step: int, batch: dict) -> dict:
        cfg, dev = self.cfg, self.device
        stage = self.schedule.stage(step)
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, 23, step, self.rank))
        latent, ids, style, conditions, drop = self._inputs(batch, stage, g, self.dropout)
        b = latent.shape[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=g)
        noise = draw_noise(latent.shape, g, self.model_cfg.noise_shared).to(dev)
        x_t = self.scheduler.add_noise(latent, noise, t.to(dev))
        self.ddp.train()
        kind = self.model_cfg.prediction
        contrasting = bool(cfg.caption_contrast or cfg.pixel_contrast)
        rows, kinds, counter_ids = (self._contrast_rows(batch, ids, style, drop, step) if contrasting
                                    else ([], [], None))
        x_in, t_in, ids_in, style_in, cond_in, drop_in = x_t, t, ids, style, conditions, drop
        if rows:  # the counterfactual captions ride in the same forward pass (one DDP call per step)
            sel = torch.tensor(rows, device=dev)
            more = lambda v: torch.cat([v, v[sel.to(v.device)]])  # noqa: E731
            x_in, t_in, ids_in = more(x_t), more(t), torch.cat([ids, counter_ids])
            style_in = more(style) if style is not None else None
            cond_in = {k: more(v) for k, v in conditions.items()}
            drop_in = {k: more(v) for k, v in drop.items()} if drop is not None else None
        with self._autocast():
            pred = self.ddp(x_in, t_in.to(dev), ids_in, style_in, cond_in or None, drop_in)
        pred, counter_pred = pred[:b], pred[b:]
        goal = target(latent, noise, t, kind, self.alphas_cumprod)
        signed = pred.float() - goal
        err = signed.pow(2)
        per_sample = weighted_mean(err, None)
        cells = None
        weighted = per_sample
        if cfg.object_weight and batch.get("focus") is not None:
            cells = focus_weights(batch["focus"].to(dev), latent.shape, cfg.object_weight)
            weighted = weighted_mean(err, cells)
        plain = weighted
        temporal = None
        if cfg.temporal_weight:
            temporal = temporal_difference_loss(signed, cells)
            weighted = weighted + cfg.temporal_weight * temporal
        weights = min_snr_weights(self.alphas_cumprod, t, cfg.min_snr_gamma, kind, cfg.snr_floor).to(dev)
        loss = (weighted * weights).mean()
        pixel = frames = focus = None
        shape_rows, shape_labels = (self._shape_rows(batch, ids, drop, t)
                                    if self.shape_critic is not None and batch.get("focus") is not None else ([], []))
        if cfg.pixel_weight or (rows and cfg.pixel_contrast) or shape_rows:  # the same random frames for all terms
            frames = torch.randperm(latent.shape[2], generator=g)[:PIXEL_FRAMES].sort().values
            focus = None if batch.get("focus") is None else batch["focus"][:, :, frames].to(dev)

        def pick(v, rows_):  # samples rows_ (a list; None: all) of v, on v's own device
            return v if rows_ is None else v[torch.as_tensor(rows_, device=v.device)]

        def x0_frames(prediction, rows_=None):  # clean latent of predictions for samples rows_, decoded frames only
            return to_x0(prediction.float(), pick(x_t, rows_), pick(t, rows_), kind, self.alphas_cumprod)[:, :, frames]

        def decoded_error(prediction, rows_=None):  # decoded_x0_loss of predictions for samples rows_
            return decoded_x0_loss(self.autoencoder, x0_frames(prediction, rows_), pick(latent, rows_)[:, :, frames],
                                   None if focus is None else pick(focus, rows_), cfg.object_weight)

        decoded = None  # the decoder's frames of every sample's predicted clean latent, when the pixel term made them
        if cfg.pixel_weight:
            x0 = x0_frames(pred)
            decoded = self.autoencoder.decode(x0, refine=False)
            pixel = decoded_x0_loss(self.autoencoder, x0, latent[:, :, frames], focus, cfg.object_weight, decoded)
            loss = loss + cfg.pixel_weight * (pixel * pixel_snr_weights(self.alphas_cumprod, t).to(dev)).mean()
        gap, gaps, pixel_gaps = None, {}, {}
        if rows:
            counter = weighted_mean((counter_pred.float() - goal[sel]).pow(2), cells[sel] if cells is not None else None)
            if cfg.caption_contrast:
                loss = loss + cfg.caption_contrast * (caption_contrast_loss(plain[sel], counter, cfg.contrast_margin)
                                                      * weights[sel]).sum() / b
            gap, gaps = relative_gaps(plain[sel], counter, kinds)
            if cfg.pixel_contrast:
                true_px = pixel[sel] if pixel is not None else decoded_error(pred[sel], rows)
                counter_px = decoded_error(counter_pred, rows)
                loss = loss + cfg.pixel_contrast * (caption_contrast_loss(true_px, counter_px, cfg.contrast_margin)
                                                    * weights[sel]).sum() / b
                _, pixel_gaps = relative_gaps(true_px, counter_px, kinds)

        shape_ce = shape_acc = None
        if shape_rows:
            video = (pick(decoded, shape_rows) if decoded is not None
                     else self.autoencoder.decode(x0_frames(pick(pred, shape_rows), shape_rows), refine=False))
            shape_ce, shape_acc = self._shape_term(video, shape_labels, pick(focus, shape_rows))
            if shape_ce is not None:
                loss = loss + cfg.shape_weight * shape_ce

        lr = self.schedule.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip) if cfg.grad_clip else None
        self.optimizer.step()
        ema_update(self.ema_model, self.model, min(cfg.ema, (1 + step) / (10 + step)))
        return {"loss": float(loss.detach()), "mse": float(per_sample.detach().mean()),
                "temporal_mse": None if temporal is None else float(temporal.detach().mean()),
                "pixel_l1": None if pixel is None else float(pixel.detach().mean()),
                "contrast_gap": gap, "contrast_gaps": gaps, "pixel_contrast_gaps": pixel_gaps,
                "contrast_rows": len(rows),
                "shape_ce": None if shape_ce is None else float(shape_ce.detach()), "shape_acc": shape_acc,
                "grad_norm": float(grad_norm) if grad_norm is not None else None, "lr": lr, "stage": stage,
                "frames": latent.shape[2], "size": int(batch["video"].shape[-1])}

    def _shape_term(self, video: torch.Tensor, labels: list[int], focus: torch.Tensor):
        """Mean cross-entropy of the shape critic on the decoded clean-latent predictions `video`
        [r, 3, F, H, W] of the judged samples (cropped where each object truly is: `focus`
        [r, 1, F, H, W]), and the critic's accuracy."""
        from vcomp.train.shape_critic import critic_logits

        video = video.float()
        shown = video.transpose(1, 2).reshape(-1, *video.shape[1:2], *video.shape[-2:])
        masks = focus[:, 0].reshape(-1, *focus.shape[-2:])
        logits, counted = critic_logits(self.shape_critic, shown, masks)
        y = torch.tensor(labels, device=video.device).repeat_interleave(video.shape[2])
        if not bool(counted.any()):
            return None, None
        ce = F.cross_entropy(logits[counted], y[counted])
        acc = float((logits.argmax(1) == y)[counted].float().mean())
        return ce, round(acc, 4)

    @torch.no_grad()
    def fixed_loss(self, model: nn.Module, batch: dict, stage: int, seed: int = 1234,
                   timestep: int | None = None, space: str = "eps") -> float:
        """Plain eps MSE of `model` on `batch` at fixed, evenly spread timesteps and fixed noise,
        every condition given, no dropout (a low-variance number to compare checkpoints with).
        `timestep`: every sample at this one timestep instead. `space="x0"`: the MSE of the implied
        x0 instead, which does not shrink at high noise the way eps errors do (where the layout
        of a clip, and so the direction of its motion, is decided)."""
        g = torch.Generator().manual_seed(seed)
        latent, ids, style, conditions, _ = self._inputs(batch, stage, g, None)
        b = latent.shape[0]
        n = self.scheduler.config.num_train_timesteps
        t = ((torch.arange(b) + 0.5) * n / b).long().clamp(0, n - 1) if timestep is None \
            else torch.full((b,), int(timestep), dtype=torch.long)
        noise = draw_noise(latent.shape, g, self.model_cfg.noise_shared).to(self.device)
        x_t = self.scheduler.add_noise(latent, noise, t.to(self.device))
        was = model.training
        model.eval()
        with self._autocast():
            pred = model(x_t, t.to(self.device), ids, style, conditions or None, None)
        model.train(was)
        eps = to_eps(pred.float(), x_t, t, self.model_cfg.prediction, self.alphas_cumprod)
        err = (eps - noise).pow(2)
        if space == "x0":  # x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab): its error is eps's times sqrt(1/SNR)
            ab = self.alphas_cumprod[t.cpu()].float().to(err.device).view(-1, *(1,) * (err.ndim - 1))
            err = err * (1 - ab) / ab.clamp_min(1e-8)  # a zero-terminal-SNR schedule reaches ab = 0
        elif space != "eps":
            raise ValueError(f"space must be 'eps' or 'x0', got {space!r}")
        return float(err.mean())

    def eval_batch(self, step: int, size: int = 8) -> dict:
        """A fixed batch for `fixed_loss`: held-out world clips (or the folder's first clips) at the
        step's frames and size. The same for every run (EVAL_SEED, not the run's seed), so runs'
        `eval_mse_ema` compare."""
        from vcomp.train.data import Request, WorldSource

        s = self.schedule
        source = WorldSource(seed=EVAL_SEED, split="heldout", user_path_prob=0.0) if self.cfg.data == "world" \
            else self.source
        data = TrainDataset(source, self.adapter)
        n = min(size, len(source))
        reqs = [Request(i, mix_seed(EVAL_SEED, 99, i), s.frames_at(step), s.size_at(step), s.stage(step) == 2)
                for i in range(n)]
        return collate([data[r] for r in reqs])

    # ------------------------------------------------------------ bookkeeping

    def _state(self, step: int) -> dict:
        state = {"step": step, "optimizer": self.optimizer.state_dict(), "loss_ema": self.loss_ema,
                 "rng": {"torch": torch.get_rng_state()}}
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _record(self, step: int, session: dict) -> dict:
        rec = self.record
        sessions = [s for s in rec.get("sessions", []) if s.get("id") != session["id"]] + [session]
        wall = sum(s.get("wall_s", 0.0) for s in sessions)
        text = self.model.text
        return {
            "format": FORMAT, "step": step, "stage": self.schedule.stage(max(0, step - 1)),
            "config": self.cfg.to_dict(), "schedule": self.schedule_record, "model": self.base_cfg.to_dict(),
            "text_encoder": {"vocab": list(text.vocab), **text.config()}, "data": self.source.describe(),
            "autoencoder": autoencoder_spec(self.autoencoder), "autoencoder_history": self.autoencoder_history,
            "seed": self.cfg.seed, "world_size": self.world_size, "loss_ema": self.loss_ema,
            "recent": self.recent[-50:], "evals": (rec.get("evals", []) + self.evals)[-200:],
            "wall_time_s": round(wall, 1), "sessions": sessions, "init_history": self.init_history,
            "init_sampling": self.init_sampling,
            "parameters": {"unet": sum(p.numel() for p in self.model.unet.parameters()),
                           "text": sum(p.numel() for p in self.model.text.parameters())},
            "updated": _now(),
        }

    def save(self, step: int, session: dict) -> Path:
        tensors = prefixed("", self.model.state_dict())
        tensors.update(prefixed("ema.", self.ema_model.state_dict()))
        tensors.update(prefixed("vae.", autoencoder_tensors(self.autoencoder)))
        tensors.update(prefixed("refiner.", refiner_tensors(self.autoencoder)))  # frozen, kept for the export
        record = self._record(step, session)
        path = save_checkpoint(self.out, tensors, self._state(step), record)
        self.on_event("checkpoint", {"step": step, "path": str(path)})
        return path

    def _kept_decoder_history(self) -> dict:
        """The --init model's `decoder` and `refiner` training records, when this run kept its
        autoencoder: they describe the exported decoder too, and `vcomp models` and the docs read
        them at the top level (they would otherwise survive only nested under `init`)."""
        init = self.init_history or {}
        if init.get("autoencoder") != self.autoencoder_history:
            return {}
        kept = {"decoder": init.get("decoder")}
        if getattr(self.autoencoder, "refiner", None) is not None:
            kept["refiner"] = init.get("refiner")
        return {k: v for k, v in kept.items() if v is not None}

    def export(self, path: str | os.PathLike, step: int, session: dict) -> tuple[Path, Path]:
        """The EMA weights in the embedded-model format (`vcomp.weights.embedded`)."""
        from vcomp.model import create_model
        from vcomp.model.loading import load_state_dict_strict
        from vcomp.weights.embedded import save_embedded

        unet = load_state_dict_strict(create_model(self.base_cfg, device="meta"),
                                      {k: v.detach().cpu() for k, v in self.ema_model.unet.state_dict().items()},
                                      source="EMA UNet weights")
        text = copy.deepcopy(self.ema_model.text).cpu()
        rec = self._record(step, session)
        training = {
            "trainer": FORMAT, "weights": "EMA", "ema_decay": self.cfg.ema, "steps": step,
            "stage2_at": self.schedule.stage2_at, "schedule": self.schedule_record, "seed": self.cfg.seed,
            "command": rec["sessions"][0].get("command") if rec["sessions"] else None,
            "commands": [s.get("command") for s in rec["sessions"]], "wall_time_s": rec["wall_time_s"],
            "hardware": [s.get("hardware") for s in rec["sessions"]][-1], "world_size": self.world_size,
            "data": rec["data"], "config": rec["config"], "loss_ema": self.loss_ema,
            "evals": rec["evals"][-20:], "exported": _now(), "init": self.init_history,
            "autoencoder": self.autoencoder_history, **self._kept_decoder_history(),
        }
        paths = save_embedded(path, unet, text, training=training, autoencoder=self.autoencoder,
                              sampling=self.init_sampling)
        self.on_event("export", {"step": step, "path": str(Path(path))})
        return paths

    # ------------------------------------------------------------ the loop

    def _loader(self, start: int, stop: int):
        sampler = StepSampler(self.requests, start, stop)
        workers = max(0, int(self.cfg.workers))
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
            worker_init_fn=worker_init if workers else None, persistent_workers=False,
            prefetch_factor=2 if workers else None, pin_memory=self.device.type == "cuda")

    def _stop_everywhere(self, stop: bool) -> bool:
        if self.dist is None:
            return stop
        flag = torch.tensor([1.0 if stop else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        self.dist.all_reduce(flag, op=self.dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _mean_everywhere(self, value: float) -> float:
        if self.dist is None:
            return value
        v = torch.tensor([value], device=self.device if self.device.type == "cuda" else "cpu")
        self.dist.all_reduce(v)
        return float(v.item()) / self.world_size

    def setup(self, explicit: set[str] | None = None) -> Trainer:
        """Device, threads, process group, resume or fresh config, model, optimiser, data.
        `explicit`: config fields the user set (a resumed run refuses to change the others)."""
        self._explicit = set(explicit or ())
        self._device()
        self._threads()
        self._distributed()
        self._resolve_config()
        self._build()
        self._ready = True
        return self

    def run(self, explicit: set[str] | None = None) -> dict:
        """Train until `steps`, `max_minutes` or `session_steps`; checkpoint; export if asked."""
        if not getattr(self, "_ready", False):
            self.setup(explicit)
        cfg, schedule = self.cfg, self.schedule
        main = self.rank == 0
        start, total = self.start_step, cfg.steps
        stop_at = total if cfg.session_steps is None else min(total, start + int(cfg.session_steps))
        session = {"id": f"{_now()}#{start}", "command": cfg.command or None, "argv": list(sys.argv), "started": _now(),
                   "start_step": start, "end_step": start, "wall_s": 0.0, "world_size": self.world_size,
                   "hardware": hardware(self.device), "precision": self.precision}
        self.recent, self.evals = list(self.record.get("recent", [])), []
        t_start = time.perf_counter()
        info = {"start_step": start, "steps": total, "stop_at": stop_at, "resumed": self.resume_from is not None,
                "out": str(self.out), "device": str(self.device), "world_size": self.world_size,
                "parameters": self._record(start, session)["parameters"], "data": self.source.describe(),
                "stage2_at": schedule.stage2_at, "frames": self.schedule_record["frames"],
                "sizes": self.schedule_record["sizes"], "simple_until": schedule.simple_until, "rank": self.rank}
        self.on_event("start", info)
        if main:
            self.out.mkdir(parents=True, exist_ok=True)

        step, reason = start, "done"
        window_t, window_n, wait_total = time.perf_counter(), 0, 0.0
        last_ckpt = start
        try:
            t_fetch = time.perf_counter()
            for batch in self._loader(start, stop_at):
                wait_total += time.perf_counter() - t_fetch
                with deferred_interrupts():  # the step, its log line and checkpoint stay together
                    out = self.train_step(step, batch)
                    step += 1
                    window_n += 1
                    self.loss_ema = out["loss"] if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * out["loss"]
                    now = time.perf_counter()
                    elapsed = now - t_start
                    s_per_step = elapsed / (step - start)
                    self.on_event("step", {"step": step, "steps": total, "loss": out["loss"], "loss_ema": self.loss_ema,
                                           "it_s": 1.0 / s_per_step, "stage": out["stage"], "frames": out["frames"],
                                           "size": out["size"], "lr": out["lr"]})
                    if step % cfg.log_every == 0 or step == stop_at:
                        loss = self._mean_everywhere(out["loss"])
                        entry = {"step": step, "stage": out["stage"], "loss": round(loss, 6),
                                 "loss_ema": round(self.loss_ema, 6), "mse": round(out["mse"], 6),
                                 "temporal_mse": out["temporal_mse"] and round(out["temporal_mse"], 6),
                                 **({"pixel_l1": round(out["pixel_l1"], 6)} if cfg.pixel_weight else {}),
                                 **({"contrast_gap": out["contrast_gap"] and round(out["contrast_gap"], 4)}
                                    if cfg.caption_contrast or cfg.pixel_contrast else {}),
                                 **({"contrast_gaps": out["contrast_gaps"]}
                                    if (cfg.caption_contrast or cfg.pixel_contrast)
                                    and self.contrast_attributes != ("direction",) else {}),
                                 **({"pixel_contrast_gaps": out["pixel_contrast_gaps"]} if cfg.pixel_contrast else {}),
                                 **({"shape_ce": None if out["shape_ce"] is None else round(out["shape_ce"], 4),
                                     "shape_acc": out["shape_acc"]} if cfg.shape_weight else {}),
                                 "grad_norm": out["grad_norm"] and round(out["grad_norm"], 4), "lr": out["lr"],
                                 "frames": out["frames"], "size": out["size"],
                                 **({"simple": schedule.simple_at(step - 1)} if schedule.simple_until else {}),
                                 "s_per_step": round((now - window_t) / max(1, window_n), 4),
                                 "data_wait_s": round(wait_total / max(1, step - start), 4),
                                 "elapsed_s": round(elapsed, 1), "time": _now()}
                        window_t, window_n = now, 0
                        self.recent.append(entry)
                        if main:
                            append_log(self.out, entry)
                        self.on_event("log", entry)
                    if cfg.eval_every and step % cfg.eval_every == 0:
                        batch_eval = self.eval_batch(step - 1)
                        value = self._mean_everywhere(self.fixed_loss(self.ema_model, batch_eval, schedule.stage(step - 1)))
                        entry = {"step": step, "eval_mse_ema": round(value, 6), "stage": schedule.stage(step - 1)}
                        self.evals.append(entry)
                        if main:
                            append_log(self.out, entry)
                        self.on_event("eval", entry)
                    session.update(end_step=step, wall_s=round(time.perf_counter() - t_start, 1))
                    timed_out = cfg.max_minutes is not None and elapsed >= 60.0 * cfg.max_minutes
                    if self._stop_everywhere(timed_out and step < stop_at):
                        reason = "max-minutes"
                        break
                    if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < stop_at:
                        if main:
                            self.save(step, session)
                        last_ckpt = step
                t_fetch = time.perf_counter()
            if step < total and reason == "done":
                reason = "session-steps"
        except KeyboardInterrupt:
            session.update(end_step=step, wall_s=round(time.perf_counter() - t_start, 1))
            if main and step > last_ckpt:
                self.save(step, session)
            raise
        session.update(end_step=step, wall_s=round(time.perf_counter() - t_start, 1))
        path = self.save(step, session) if main else None
        exported = None
        if main and cfg.export:
            exported = [str(p) for p in self.export(cfg.export, step, session)]
        if self.dist is not None:
            self.dist.barrier()
        summary = {"step": step, "steps": total, "stopped": reason, "loss_ema": self.loss_ema,
                   "wall_s": session["wall_s"],
                   "s_per_step": round(session["wall_s"] / max(1, step - start), 4),
                   "checkpoint": str(path) if path else None, "exported": exported, "out": str(self.out),
                   "world_size": self.world_size, "device": str(self.device), "last": self.recent[-1] if self.recent else None}
        self.on_event("end", summary)
        return summary

    def close(self) -> None:
        if self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()


def train(cfg: TrainConfig, on_event: Event | None = None, explicit: set[str] | None = None) -> dict:
    """Run `cfg` to the end of this session (see `Trainer.run`)."""
    trainer = Trainer(cfg, on_event)
    try:
        return trainer.run(explicit)
    finally:
        trainer.close()
