"""Train the embedded model's latent space: a small diffusers `AutoencoderKL` on world frames.

Why a learned autoencoder and not the parameter-free pixel unshuffle the first release used: a
pixel-unshuffle latent at factor 4 leaves the UNet a 16 x 16 grid of 48 channels for a 64 x 64
frame, and one guided DDIM step of the tiny UNet there costs 0.55 s on 2 cores (50 steps: 28 s,
against the 10 s target). A KL autoencoder at factor 8 with 8 channels gives an 8 x 8 grid of 8
channels, where the same UNet costs 0.19 s, and the diffusion model no longer spends capacity on
pixel-level detail (Rombach et al.'s argument for latent diffusion, which VideoComposer inherits).

The loss is the usual one without the adversarial term: L1 + MSE on pixels, L1 on image gradients
(keeps shape outlines sharp, which the world's shape checks read), and a small KL term (1e-5 per pixel value;
SD used 1e-6) so the latent stays a well-scaled Gaussian-ish space. Training runs on random crops (the
network is convolutional; crops make each step cheaper) of frames rendered on the fly
(`vcomp.train.synthetic.render`, no H.264 round trip: motion is not needed here).

`export_autoencoder` writes `autoencoder.safetensors` + `autoencoder.json` (the diffusers config
with the measured `scaling_factor` = 1 / std of the latents, as SD computed its 0.18215).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vcomp.errors import InputError

FILES = ("autoencoder.safetensors", "autoencoder.json")
FORMAT = "vcomp-autoencoder-v1"


WORLD_WIDTHS = (16, 32, 64, 64, 64)  #: block widths of world autoencoders, one level per halving


def world_widths(factor: int) -> list[int]:
    """Block widths of a world autoencoder with `factor` pixels per latent cell (a power of 2 from
    2 to 16). Why a choice: at factor 8 the world's 14-24 px objects span 2-3 latent cells and their
    shape lives in a sub-cell code the small UNet does not draw; at 4 they span 4-6 cells."""
    from vcomp.errors import InputError

    if factor not in (2, 4, 8, 16):
        raise InputError(f"--factor must be 2, 4, 8 or 16 pixels per latent cell, got {factor}")
    return list(WORLD_WIDTHS[:factor.bit_length()])


def world_vae_config(**overrides) -> dict:
    """The embedded latent space: factor 8 (four levels), 8 latent channels, about 1 M parameters.

    Widths (16, 32, 64, 64): measured on 2 cores, encoding 64 frames at 64 x 64 takes 0.26 s and
    decoding 16 frames 0.18 s; (32, 64, 128, 128) took 0.53 / 0.34 s and trained 2.5x slower."""
    config = {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": world_widths(8),
        "layers_per_block": 1,
        "act_fn": "silu",
        "latent_channels": 8,
        "norm_num_groups": 16,
        "sample_size": 64,
        "scaling_factor": 1.0,
    }
    config.update(overrides)
    n = len(config["block_out_channels"])
    config["down_block_types"] = ["DownEncoderBlock2D"] * n
    config["up_block_types"] = ["UpDecoderBlock2D"] * n
    return config


@dataclass
class AutoencoderTrainConfig:
    out: str = "runs/vae"
    steps: int = 3000
    batch: int = 32
    crop: int = 32  # training crop side in pixels (frames are rendered at `size`)
    size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05  # cosine decay from lr to min_lr_ratio * lr at `steps` (after the warm-up)
    kl_weight: float = 1e-5
    grad_weight: float = 0.5
    seed: int = 0
    ckpt_every: int = 200
    log_every: int = 20
    max_minutes: float | None = None
    threads: int | None = None
    resume: bool = False
    object_weight: float = 0.0  # extra pixel-loss weight on the objects (1 + this on object pixels)
    init: str | None = None  # start from this autoencoder export (or embedded model) instead of random weights
    decoder_only: bool = False  # freeze the encoder: the latent space (and a UNet trained on it) stays valid
    # decode latents + noise of std U(0, latent_noise) per sample (in the UNet's scaled latent units):
    # a decoder that maps a neighbourhood of each latent to its frame (see `autoencoder_loss`)
    latent_noise: float = 0.0
    # > 0: objects on a ground of a near colour weigh more (`contrast_gain`; needs object_weight)
    contrast_ref: float = 0.0
    # with decoder_only: ResNet blocks per decoder level, more than the --init decoder's (new blocks
    # start as the identity, `vcomp.model.autoencoder.deepen_decoder`); None = keep its depth
    decoder_layers: int | None = None
    vae: dict = field(default_factory=dict)  # world_vae_config overrides
    command: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def world_frames(rng: np.random.Generator, n: int, size: int, split: str = "train", masks: bool = False):
    """`n` frames [n, 3, size, size] in [-1, 1] from random world scenes (two frames per scene);
    with `masks`, also the objects' masks [n, 1, size, size] in {0, 1}."""
    from vcomp.train.synthetic import render, sample_scene

    frames, objects = [], []
    while len(frames) < n:
        scene = sample_scene(rng, split, (1, 2), size, 8)
        sample = render(scene, motion="none")  # frames uint8 [T, H, W, 3], mask [T, 1, H, W]
        for ti in rng.choice(len(sample.frames), size=2, replace=False):
            frames.append(sample.frames[ti])
            objects.append(sample.mask[ti])
    x = torch.from_numpy(np.stack(frames[:n])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return (x, torch.from_numpy(np.stack(objects[:n])).float()) if masks else x


def random_crops(x: torch.Tensor, crop: int, rng: np.random.Generator, *others: torch.Tensor):
    """The same random `crop` x `crop` window of each frame of `x` (and of `others`, e.g. masks)."""
    if crop >= x.shape[-1]:
        return (x, *others) if others else x
    ys = rng.integers(0, x.shape[-2] - crop + 1, len(x))
    xs = rng.integers(0, x.shape[-1] - crop + 1, len(x))
    out = [torch.stack([f[:, y:y + crop, c:c + crop] for f, y, c in zip(t, ys, xs)]) for t in (x, *others)]
    return tuple(out) if others else out[0]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum()


CONTRAST_MAX_GAIN = 4.0  #: the most `contrast_gain` multiplies an object's weight by


def contrast_gain(x: torch.Tensor, focus: torch.Tensor, reference: float) -> torch.Tensor:
    """[B, 1, 1, 1]: how much more each frame's objects weigh because they are hard to see:
    `reference` / (RGB distance between the mean colour of the objects (`focus` [B, 1, H, W]) and
    of the rest of frames x [B, 3, H, W]), between 1 and CONTRAST_MAX_GAIN.

    Why: a wrong outline costs pixel error in proportion to the contrast between object and ground,
    so on plain losses an autoencoder keeps a red circle's outline on blue and loses it on orange
    (the shipped latent space gives back the shape of about half the world's near-colour pairs and
    nearly nine in ten of the others, docs/embedded-model.md)."""
    area = focus.sum((1, 2, 3), keepdim=True)
    inside = (x * focus).sum((2, 3), keepdim=True) / area.clamp(min=1.0)
    outside = (x * (1 - focus)).sum((2, 3), keepdim=True) / (focus[0].numel() - area).clamp(min=1.0)
    contrast = (inside - outside).pow(2).sum(1, keepdim=True).sqrt()
    return (reference / contrast.clamp(min=1e-3)).clamp(1.0, CONTRAST_MAX_GAIN)


def autoencoder_loss(vae, x: torch.Tensor, kl_weight: float, grad_weight: float,
                     focus: torch.Tensor | None = None, object_weight: float = 0.0,
                     latent_noise: float = 0.0, contrast_ref: float = 0.0) -> tuple[torch.Tensor, dict]:
    """L1 + MSE + `grad_weight` x image-gradient L1 + `kl_weight` x KL. With `focus` (object masks
    [B, 1, H, W]) and `object_weight` K, pixel terms weigh 1 + K on the objects: they fill 4-11% of
    a frame, and a plain mean lets a small decoder trade their outlines (which the shape checks
    read) for the background's texture.

    `latent_noise` s: each sample's latent gets Gaussian noise of std U(0, s) (scaled-latent units)
    before decoding. Why: sampled latents differ from frame to frame by ~0.06 where the clip is
    static, and a decoder trained on clean latents turns that into flicker (decoding the source's
    latents with 0.1 noise per frame raised its H.264 motion error from 0.7 to 4.2 px/frame).

    `contrast_ref` R > 0: each frame's object weight K is multiplied by `contrast_gain(x, focus, R)`,
    so objects on a ground of a near colour weigh up to CONTRAST_MAX_GAIN times more."""
    posterior = vae.encode(x).latent_dist
    z = posterior.sample()
    if latent_noise:
        level = torch.rand(len(z), *([1] * (z.ndim - 1)), device=z.device) * latent_noise
        z = z + level * torch.randn_like(z) / float(vae.config.scaling_factor)
    recon = vae.decode(z).sample
    err = recon - x
    w = None
    if focus is not None and object_weight:
        gain = contrast_gain(x, focus, contrast_ref) if contrast_ref > 0 else 1.0
        w = 1.0 + object_weight * focus * gain
    l1, mse = _weighted_mean(err.abs(), w), _weighted_mean(err.pow(2), w)
    gx = (recon[..., :, 1:] - recon[..., :, :-1]) - (x[..., :, 1:] - x[..., :, :-1])
    gy = (recon[..., 1:, :] - recon[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])
    wx = None if w is None else torch.maximum(w[..., :, 1:], w[..., :, :-1])
    wy = None if w is None else torch.maximum(w[..., 1:, :], w[..., :-1, :])
    grad = _weighted_mean(gx.abs(), wx) + _weighted_mean(gy.abs(), wy)
    kl = posterior.kl().mean() / x[0].numel()  # per pixel value, so the weight does not depend on the crop
    loss = l1 + mse + grad_weight * grad + kl_weight * kl
    return loss, {"l1": l1.item(), "mse": mse.item(), "grad": grad.item(), "kl": kl.item()}


@torch.no_grad()
def evaluate(vae, frames: torch.Tensor) -> dict:
    """PSNR (dB, on [0, 255]) of mean-latent reconstructions, and the latents' std."""
    was = vae.training
    vae.eval()
    z = vae.encode(frames).latent_dist.mean
    recon = vae.decode(z).sample.clamp(-1, 1)
    vae.train(was)
    mse = float(((recon - frames) * 127.5).pow(2).mean())
    return {"psnr_db": 10 * math.log10(255.0**2 / max(mse, 1e-10)), "latent_std": float(z.std()),
            "latent_mean": float(z.mean())}


def lr_at(cfg, step: int) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio * lr` at `steps` (the sharp detail of
    the reconstructions comes late, at the low learning rates). `cfg`: any trainer config with
    lr, warmup, steps and min_lr_ratio (the autoencoder's, the refiner's)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _build(cfg: AutoencoderTrainConfig):
    """(AutoencoderKL, how the --init one was trained): fresh, or the `--init` one (an
    autoencoder export or an embedded model)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed)
    if cfg.init:
        if cfg.vae:
            raise InputError(f"autoencoder options {cfg.vae} (--latent-channels, --factor) shape a fresh latent; "
                             "an --init autoencoder keeps its own")
        vae, record = load_any_autoencoder(cfg.init)
        if cfg.decoder_layers is not None:
            if not cfg.decoder_only:
                raise InputError("--decoder-layers deepens the decoder of a --decoder-only run; add --decoder-only")
            from vcomp.model.autoencoder import decoder_depth, deepen_decoder

            if cfg.decoder_layers < decoder_depth(vae):
                raise InputError(f"--decoder-layers {cfg.decoder_layers}: the --init decoder already has "
                                 f"{decoder_depth(vae)} ResNet blocks per level; a decoder can only grow")
            vae = deepen_decoder(vae, cfg.decoder_layers)
        return vae.requires_grad_(True), {"source": str(cfg.init), **record.get("training", {})}
    if cfg.decoder_layers is not None:
        raise InputError("--decoder-layers deepens an existing decoder: pass --init DIR --decoder-only")
    if cfg.decoder_only:
        raise InputError("--decoder-only fine-tunes an existing latent space: pass --init DIR")
    return AutoencoderKL(**world_vae_config(**cfg.vae)), None


def decoder_parameters(vae) -> list:
    """What a decoder-only run trains: everything after the latent (post_quant_conv + decoder), the
    same tensors `with_decoder` later swaps into an embedded model."""
    from vcomp.weights.embedded import DECODER_PREFIXES

    return [p for name, p in vae.named_parameters() if name.startswith(DECODER_PREFIXES)]


def load_any_autoencoder(folder: str | os.PathLike):
    """(AutoencoderKL, record) from an `export_autoencoder` folder or an embedded-model folder
    whose latent is a learned AutoencoderKL."""
    folder = Path(folder).expanduser()
    if (folder / FILES[0]).is_file():
        return load_autoencoder(folder)
    from vcomp.weights.embedded import load_embedded

    emb = load_embedded(folder)
    if not hasattr(emb.autoencoder, "vae"):
        raise InputError(f"--init {folder}: that model's latent is a pixel unshuffle; there is no autoencoder to train")
    vae = emb.autoencoder.vae.float()
    training = emb.record.get("training", {})
    decoder = training.get("decoder")  # a decoder fine-tuned since: its record is part of this one's history
    return vae, {"training": {**(training.get("autoencoder") or {}), **({"decoder": decoder} if decoder else {})}}


def export_autoencoder(folder: str | os.PathLike, vae, training: dict) -> tuple[Path, Path]:
    """`autoencoder.safetensors` (fp32) + `autoencoder.json`, each written atomically."""
    from safetensors.torch import save_file

    from vcomp.io import atomic_file, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path, config_path = (folder / f for f in FILES)
    tensors = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}
    with atomic_file(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json(config_path, {"format": FORMAT, "type": "AutoencoderKL", "config": dict(vae.config),
                             "training": training})
    return weights_path, config_path


def load_autoencoder(folder: str | os.PathLike):
    """A diffusers `AutoencoderKL` from an `export_autoencoder` folder (or an embedded model's record)."""
    from vcomp.errors import WeightsError
    from vcomp.model.autoencoder import build_kl_vae
    from vcomp.weights.safe_load import load_state_dict

    folder = Path(folder).expanduser()
    weights_path, config_path = (folder / f for f in FILES)
    if not (weights_path.is_file() and config_path.is_file()):
        raise InputError(f"--autoencoder {folder}: no {FILES[0]} + {FILES[1]} there (run `vcomp train-autoencoder`)")
    try:
        record = json.loads(config_path.read_text())
        vae = build_kl_vae(record["config"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{config_path}: bad autoencoder description ({exc})") from None
    from vcomp.model.loading import load_state_dict_strict

    load_state_dict_strict(vae, load_state_dict(weights_path, what="autoencoder"), source=str(weights_path))
    return vae.eval().requires_grad_(False), record


#: a phase's recipe: a resume keeps the run's values unless given again (which is how a run changes
#: phase, e.g. `--resume --steps 9000 --batch 8 --crop 64` after crop-32 steps)
RECIPE_FIELDS = ("steps", "batch", "crop", "size", "lr", "warmup", "min_lr_ratio", "kl_weight", "grad_weight",
                 "seed", "ckpt_every", "log_every", "object_weight", "latent_noise", "contrast_ref")


def resumed_config(cfg: AutoencoderTrainConfig, saved: dict, out: str | os.PathLike,
                   explicit: set[str] | None = None) -> AutoencoderTrainConfig:
    """`cfg` for resuming the run whose config was `saved`. What the run *is* (its latent width,
    its --init, whether only the decoder trains) always comes from the run: resuming a decoder-only
    run without repeating --decoder-only must not train its encoder and so silently invalidate
    every UNet trained in its latent space. Recipe fields come from `cfg` where `explicit` names
    them (None: where `cfg` differs from the defaults), otherwise from the run."""
    if explicit is None:
        defaults = AutoencoderTrainConfig()
        explicit = {k for k in RECIPE_FIELDS if getattr(cfg, k) != getattr(defaults, k)}
    recipe = {k: saved[k] for k in RECIPE_FIELDS if k not in explicit and k in saved}
    saved_vae = saved.get("vae") or {}
    if cfg.vae and cfg.vae != saved_vae:
        raise InputError(f"{out} was started with autoencoder options {saved_vae or 'the defaults'}, not {cfg.vae}; "
                         "resume it without them, or choose another --out")
    saved_init = saved.get("init")
    if cfg.init is not None and (saved_init is None or Path(cfg.init).expanduser().resolve()
                                 != Path(saved_init).expanduser().resolve()):
        raise InputError(f"{out} was started {f'from --init {saved_init}' if saved_init else 'fresh'}, "
                         f"not from {cfg.init}; resume it without --init, or choose another --out")
    if cfg.decoder_only and not saved.get("decoder_only"):
        raise InputError(f"{out} trains the whole autoencoder; --decoder-only cannot start mid-run "
                         "(start a new run with --init its export --decoder-only)")
    if cfg.decoder_layers is not None and cfg.decoder_layers != saved.get("decoder_layers"):
        started = f"with --decoder-layers {saved['decoder_layers']}" if saved.get("decoder_layers") else "without --decoder-layers"
        raise InputError(f"{out} was started {started}, not with {cfg.decoder_layers}; resume it without "
                         "--decoder-layers, or choose another --out")
    return replace(cfg, **recipe, vae=saved_vae, init=saved_init, decoder_only=bool(saved.get("decoder_only")),
                   decoder_layers=saved.get("decoder_layers"))


def run_is_decoder_only(out: str | os.PathLike) -> bool | None:
    """Whether the run in `out` trains only the decoder; None when there is no run there yet."""
    from vcomp.train.checkpoint import find_checkpoint, read_record

    if find_checkpoint(out) is None:
        return None
    return bool(read_record(out)[1]["config"].get("decoder_only"))


def train_autoencoder(cfg: AutoencoderTrainConfig, on_event=None, explicit: set[str] | None = None) -> dict:
    """Train (or resume) and export to `cfg.out/export`. Returns a summary dict. On resume,
    `explicit` names the recipe fields `cfg` sets (see `resumed_config`)."""
    from vcomp.train.checkpoint import find_checkpoint, load_checkpoint, save_module_checkpoint
    from vcomp.train.module_loop import run_module_steps

    on_event = on_event or (lambda kind, info: None)
    from vcomp.train.cpu import prepare_cpu_training

    prepare_cpu_training(cfg.threads)
    out = Path(cfg.out).expanduser()
    existing = find_checkpoint(out)
    if existing is not None and not cfg.resume:
        raise InputError(f"{out} already holds a checkpoint; pass --resume to continue it, or choose another --out")
    ckpt = load_checkpoint(existing) if existing is not None else None
    if ckpt is not None:
        cfg = resumed_config(cfg, ckpt.record["config"], out, explicit)
    vae, init_history = _build(cfg)
    fixed_scale = float(vae.config.scaling_factor) if cfg.decoder_only else None
    if cfg.decoder_only:
        vae.requires_grad_(False)
        for p in decoder_parameters(vae):
            p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    start, wall, sessions = 0, 0.0, []
    if ckpt is not None:
        vae.load_state_dict(ckpt.tensors)
        opt.load_state_dict(ckpt.state["optimizer"])
        start, wall = ckpt.step, float(ckpt.record.get("wall_time_s", 0.0))
        sessions = ckpt.record.get("sessions") or [{"command": ckpt.record["config"].get("command"),
                                                     "config": ckpt.record["config"], "end_step": start}]
    session = {"command": cfg.command, "config": cfg.to_dict(), "start_step": start}
    held = world_frames(np.random.default_rng([cfg.seed, 7]), 64, cfg.size, split="heldout")
    t0 = time.monotonic()
    vae.train()

    def save(step_now: int) -> None:
        save_module_checkpoint(out, "autoencoder", step_now, vae, opt, cfg.to_dict(), wall + time.monotonic() - t0,
                               sessions + [{**session, "end_step": step_now}])

    trained = [p for p in vae.parameters() if p.requires_grad]

    def loss_at(step_now: int):
        rng = np.random.default_rng([cfg.seed, 1, step_now])
        x, focus = world_frames(rng, cfg.batch, cfg.size, masks=True)
        x, focus = random_crops(x, cfg.crop, rng, focus)
        return autoencoder_loss(vae, x, cfg.kl_weight, cfg.grad_weight, focus, cfg.object_weight, cfg.latent_noise,
                                cfg.contrast_ref)

    step = run_module_steps(cfg, start, trained, opt, loss_at, out=out, save=save, evaluate=lambda: evaluate(vae, held),
                            eval_every=cfg.log_every * 5, on_event=on_event)
    vae.eval()
    stats = evaluate(vae, held)
    if fixed_scale is not None:  # the encoder is unchanged: so is the latent space and its scale
        vae.register_to_config(scaling_factor=fixed_scale)
    else:
        with torch.no_grad():  # SD's recipe: scale latents to unit std
            z = vae.encode(world_frames(np.random.default_rng([cfg.seed, 8]), 256, cfg.size)).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    training = {"steps": step, "wall_time_s": wall + time.monotonic() - t0, "config": cfg.to_dict(),
                "heldout_psnr_db": stats["psnr_db"], "command": cfg.command,
                "commands": [s.get("command") for s in sessions] + [cfg.command],
                "hardware": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}}
    if init_history is not None:
        training["init"] = init_history
    paths = export_autoencoder(out / "export", vae, training)
    summary = {"step": step, **stats, "scaling_factor": vae.config.scaling_factor, "export": str(paths[0].parent)}
    on_event("done", summary)
    return summary
