"""`vcomp train`: train (or fine-tune) the embedded model; resumable, CPU or CUDA, torchrun-ready."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from vcomp.cli import console

# options the trainers share; Typer reads these as metadata, so one object serves them all
SEED = typer.Option(0, "--seed", help="Seed of the initial weights and the data.")
MAX_MINUTES = typer.Option(None, "--max-minutes", help="Stop (with a checkpoint and an export) after this many minutes.")
THREADS = typer.Option(None, "--threads", help="torch CPU threads. Default: all cores.")
RESUME = typer.Option(False, "--resume", help="Continue the run in --out.")
JSON_SUMMARY = typer.Option(False, "--json", help="Print one JSON summary on stdout at the end.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress output.")


EPILOG = """
Examples:\n
  vcomp train --steps 200 --out runs/try                       # a quick look, procedural world\n
  vcomp train --out runs/tiny --max-minutes 120 --resume       # run in sessions: continues where it stopped\n
  vcomp train --data my_clips/ --init vcomp/assets --stage 2 --steps 2000 --out runs/mine --export mine/\n
  torchrun --standalone --nproc_per_node 2 -m vcomp train --out runs/ddp --batch 8\n
Progress goes to the terminal; every run also writes OUT/log.jsonl and OUT/checkpoint/train.json.
"""

# CLI option -> TrainConfig field, for the options whose default means "the run's value"
_FIELDS = {
    "data": "data", "preset": "preset", "stage": "stage", "steps": "steps", "stage2_at": "stage2_at",
    "batch": "batch", "lr": "lr", "lr_schedule": "lr_schedule", "warmup": "warmup", "ema": "ema",
    "grad_clip": "grad_clip", "weight_decay": "weight_decay", "frames_curriculum": "frames_curriculum",
    "size_curriculum": "size_curriculum", "seed": "seed", "ckpt_every": "ckpt_every", "log_every": "log_every",
    "eval_every": "eval_every", "max_minutes": "max_minutes", "session_steps": "session_steps",
    "device": "device", "precision": "precision", "workers": "workers", "threads": "threads", "out": "out",
    "init": "init", "autoencoder": "autoencoder", "export": "export", "world_clips": "world_clips", "cache": "cache", "stride": "stride",
    "text_len": "text_len", "user_path_prob": "user_path_prob", "object_weight": "object_weight",
    "temporal_weight": "temporal_weight", "pixel_weight": "pixel_weight", "caption_contrast": "caption_contrast",
    "contrast_attributes": "contrast_attributes", "contrast_margin": "contrast_margin",
    "pixel_contrast": "pixel_contrast", "shape_weight": "shape_weight",
    "snr_floor": "snr_floor", "simple_until": "simple_until",
}


def train(
    data: str = typer.Option(None, "--data", help="'world' (the procedural world) or a folder of videos with captions (a .txt beside each video, or captions.jsonl). Default: world."),
    preset: str = typer.Option(None, "--preset", help="Model preset. Default: tiny."),
    stage: str = typer.Option(None, "--stage", help="1 (text to video), 2 (compositional, condition dropout) or both. Default: both."),
    steps: int = typer.Option(None, "--steps", help="Total optimiser steps over all stages (a resumed run may raise it). Default: 20000."),
    stage2_at: int = typer.Option(None, "--stage2-at", help="With --stage both: the first stage-2 step. Default: 30% of --steps."),
    batch: int = typer.Option(None, "--batch", help="Clips per process per step. Default: 16."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (AdamW). Default: 3e-4."),
    lr_schedule: str = typer.Option(None, "--lr-schedule", help="constant or cosine (after the warm-up). Default: constant."),
    warmup: int = typer.Option(None, "--warmup", help="Linear warm-up steps. Default: 200."),
    ema: float = typer.Option(None, "--ema", help="EMA decay of the weights (the exported model). Default: 0.999."),
    min_snr: float = typer.Option(None, "--min-snr", help="min-SNR-gamma loss weighting; 0 = plain MSE. Default: 5."),
    snr_floor: float = typer.Option(None, "--snr-floor", help="Lowest x0-error weight of the min-SNR weighting (clamp(SNR, floor, gamma)): raises the noisiest steps, where a clip's layout and direction of motion are decided and plain min-SNR gives weight ~0.01; 0 = off. Default: 0."),
    object_weight: float = typer.Option(None, "--object-weight", help="Extra loss weight on the latent cells the world's objects cover (loss weight 1 + this x coverage); 0 = plain mean. Default: 0."),
    temporal_weight: float = typer.Option(None, "--temporal-weight", help="Weight of a frame-difference loss term (the square of the prediction error's change between consecutive frames: weighs wrong motion and flicker, which the plain loss dilutes); 0 = off. Default: 0."),
    pixel_weight: float = typer.Option(None, "--pixel-weight", help="Weight of a decoded-pixel term: two frames of the predicted clean latent go through the frozen decoder and are compared (object-weighted L1) with the true latent's; shape details that are small in the latent are large in pixels. Costs little (two small frames per clip). 0 = off. Default: 0."),
    caption_contrast: float = typer.Option(None, "--caption-contrast", help="Weight of a caption-contrast term: samples whose caption is their only word on an attribute (--contrast-attributes; direction by default) are also denoised given the caption with that attribute changed, and the loss pays until the true caption is better by --contrast-margin (teaches words the plain loss barely rewards: direction, shape); 0 = off. Default: 0."),
    contrast_attributes: str = typer.Option(None, "--contrast-attributes", help="What --caption-contrast changes in the caption: a comma list of direction (reversed; samples with no moving condition or style), shape, colour (replaced; samples with no condition or style at all), taken in turn. Default: direction."),
    contrast_margin: float = typer.Option(None, "--contrast-margin", help="How much better (a fraction of its loss) the true caption must be than the changed one before --caption-contrast stops paying; raise it for a word the model already uses a little (shape: gaps of ~5%). Default: 0.05."),
    pixel_contrast: float = typer.Option(None, "--pixel-contrast", help="Weight of the same caption contrast measured on decoded pixels (the --pixel-weight comparison of two frames) instead of the latent: a shape word moves a few small latent values but a visible part of the object's pixels. Uses --contrast-attributes and --contrast-margin; works with or without --caption-contrast. 0 = off. Default: 0."),
    shape_weight: float = typer.Option(None, "--shape-weight", help="World data: weight of a shape term. A small classifier of the world's four shapes is trained first on frames seen through the autoencoder (about a minute; kept as OUT/shape_critic.safetensors), then judges two decoded frames of the predicted clean clip, cropped where the object truly is, for one-object samples told their shape (t < 800); the cross-entropy is added. Shapes are decided at mid noise, where the plain loss barely weighs them. 0 = off. Default: 0."),
    grad_clip: float = typer.Option(None, "--grad-clip", help="Gradient-norm clip; 0 = off. Default: 1."),
    weight_decay: float = typer.Option(None, "--weight-decay", help="AdamW weight decay. Default: 0.01."),
    frames_curriculum: str = typer.Option(None, "--frames-curriculum", help="Frames per clip over training: '8,16' (even split) or '8:3000,16'. Default: 16."),
    size_curriculum: str = typer.Option(None, "--size-curriculum", help="Frame size over training: '32,64' or '32:2000,64'. Default: the preset's (64)."),
    simple_until: int = typer.Option(None, "--simple-until", help="World data: steps before this one see simple scenes (one object on a solid background), a curriculum that lets direction words be learnt before textured backgrounds and second objects dilute them. Default: 0 (off)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the initial weights, the data order, noise and dropout. Default: 0."),
    ckpt_every: int = typer.Option(None, "--ckpt-every", help="Checkpoint every N steps (and always at the end). Default: 500."),
    log_every: int = typer.Option(None, "--log-every", help="Append to OUT/log.jsonl every N steps. Default: 10."),
    eval_every: int = typer.Option(None, "--eval-every", help="Loss of the EMA weights on a fixed held-out batch every N steps; 0 = off. Default: 0."),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Stop (with a checkpoint) after this many minutes; --resume continues."),
    session_steps: int = typer.Option(None, "--session-steps", help="Stop (with a checkpoint) after this many steps in this session."),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N. Default: auto (CUDA when available)."),
    precision: str = typer.Option(None, "--precision", help="auto (bf16 autocast on CUDA and on CPUs with native bf16, AVX512-BF16 or AMX; else fp32), fp32 or bf16."),
    workers: int = typer.Option(None, "--workers", help="DataLoader worker processes (0 = in the training process). Default: 1."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads per process. Default: cores / processes."),
    out: str = typer.Option(None, "--out", "-o", help="Run folder: checkpoint/ (model.safetensors, optimizer.pt, train.json) and log.jsonl. Default: runs/tiny."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out at its exact step (starts it if there is no checkpoint yet)."),
    init: str = typer.Option(None, "--init", help="Start from these weights: a run or checkpoint folder (EMA weights) or an embedded model folder (fine-tuning)."),
    fresh_text: bool = typer.Option(False, "--fresh-text", help="With --init: start the text encoder from fresh weights (same vocabulary), the UNet from the --init model's. For a model whose text encoder has erased words (the ninth release's direction words) that fine-tuning cannot bring back."),
    autoencoder: str = typer.Option(None, "--autoencoder", help="The latent space: a `vcomp train-autoencoder` export folder (frozen while the UNet trains). With --init a model of another latent width or factor, the UNet moves to this latent: its first and last convolutions' latent weights start fresh, the rest is kept. Default: the --init model's, or the checkpoint's."),
    export: str = typer.Option(None, "--export", help="At the end of the session, write the EMA weights as an embedded model (embedded.safetensors + embedded.json) into this folder."),
    world_clips: int = typer.Option(None, "--world-clips", help="Use a fixed pool of N world clips (with --cache, generated once). Default: a fresh clip every time."),
    cache: str = typer.Option(None, "--cache", help="Folder for cached clips (world pools, decoded folder clips)."),
    stride: int = typer.Option(None, "--stride", help="Folder data: take every K-th source frame. Default: about 8 fps."),
    text_len: int = typer.Option(None, "--text-len", help="Text tokens. Default: enough for the longest caption."),
    user_path_prob: float = typer.Option(None, "--user-path-prob", help="World, stage 2: fraction of clips whose depth and sketch come from the user-video extractors. Default: 0.25."),
    prediction: str = typer.Option(None, "--prediction", help="What the UNet predicts: eps or v. Default: the preset's (v for tiny); with --init, overrides the initial model's (e.g. turn an eps model into a v model)."),
    model_json: str = typer.Option(None, "--model-json", hidden=True, help="ModelConfig overrides as JSON (experiments, tests)."),
    dropout_json: str = typer.Option(None, "--dropout-json", help="Stage-2 dropout overrides as JSON, e.g. '{\"p_single\": 0.3}' (fields of vcomp.train.dropout.DropoutConfig; docs/training.md)."),
    json_out: bool = JSON_SUMMARY,
    quiet: bool = QUIET,
) -> None:
    """Train (or fine-tune) the embedded model; resumable, CPU or CUDA, torchrun-ready.

    Stage 1 text-to-video, stage 2 compositional (condition dropout), v- or eps-prediction MSE, AdamW + EMA,
    checkpoints you can --resume, optional --export."""
    options = dict(locals())
    import os

    from vcomp.errors import InputError
    from vcomp.train.loop import TrainConfig
    from vcomp.train.loop import train as run_training

    console.set_quiet(quiet)
    given = {field: options[option] for option, field in _FIELDS.items() if options[option] is not None}
    if fresh_text:
        given["fresh_text"] = True
    if min_snr is not None:
        given["min_snr_gamma"] = None if min_snr <= 0 else float(min_snr)
    if model_json is not None:
        overrides = _json_object("--model-json", model_json)
        given["model"] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    if dropout_json is not None:
        given["dropout"] = _dropout_overrides(_json_object("--dropout-json", dropout_json))
    if prediction is not None:
        from vcomp.model.config import PREDICTIONS

        if prediction not in PREDICTIONS:
            raise InputError(f"--prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
        given["model"] = {**given.get("model", {}), "prediction": prediction}
    if "data" in given and given["data"] != "world" and not Path(given["data"]).expanduser().is_dir():
        raise InputError(f"--data {given['data']}: give 'world' or an existing folder of videos")
    cfg = TrainConfig(**given, resume=resume, command=_command_line(options))
    rank = int(os.environ.get("RANK", "0"))
    show = rank == 0 and console.interactive()
    with _checkpoint_named_on_interrupt(cfg.out, rank == 0), _Progress(show) as progress:
        summary = run_training(cfg, on_event=progress.event, explicit=set(given))
    if rank != 0:
        return
    if json_out:
        console.print_json(summary)
    else:
        where = f", exported to {summary['exported'][0]}" if summary.get("exported") else ""
        loss = f"{summary['loss_ema']:.4f}" if summary.get("loss_ema") is not None else "-"
        console.log(f"step {summary['step']}/{summary['steps']} ({summary['stopped']}), loss {loss}, "
                    f"{summary['s_per_step']:.2f} s/step; checkpoint in {summary['checkpoint']}{where}")


def _json_object(flag: str, text: str) -> dict:
    """The JSON object given to `flag`, or a one-line input error."""
    from vcomp.errors import InputError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{flag} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{flag} must be a JSON object, e.g. '{{\"name\": value}}'")
    return value


def _dropout_overrides(overrides: dict) -> dict:
    """The default DropoutConfig with these fields replaced (checked here, so a typo is a
    one-line error, not a traceback from the trainer)."""
    from vcomp.errors import InputError
    from vcomp.train.dropout import DropoutConfig

    try:
        return DropoutConfig(**overrides).to_dict()
    except (TypeError, ValueError) as exc:
        raise InputError(f"--dropout-json: {exc}; fields: {', '.join(DropoutConfig().to_dict())}") from None


def _command_line(options: dict, command: str = "train") -> list[str]:
    """The `vcomp train ...` (or `vcomp COMMAND ...`) invocation, rebuilt from the options given
    (recorded in train.json)."""
    import os

    words = ["vcomp", command]
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--json" if name == "json_out" else "--" + name.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        words = ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", str(world)), "-m", *words]
    return words


@contextmanager
def _checkpoint_named_on_interrupt(out: str | Path, say: bool = True) -> Iterator[None]:
    """Ctrl-C / SIGTERM: the trainers save a checkpoint on the way out; say which step and how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        from vcomp.train.checkpoint import find_checkpoint, read_record

        if say and find_checkpoint(out) is not None:
            folder, record = read_record(out)
            console.warn(f"stopped at step {record.get('step')}; checkpoint in {folder} "
                         "(the same command with --resume goes on from there)")
        raise


class _Progress:
    """A Rich bar with stage, clip shape, loss and it/s (nothing when not interactive)."""

    def __init__(self, show: bool):
        self.show, self.bar, self.task = show, None, None

    def __enter__(self):
        if self.show:
            from rich.progress import TextColumn

            self.bar = console.progress_bar(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                                            transient=False)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def event(self, kind: str, info: dict) -> None:
        if kind == "note":
            console.warn(info["message"])
        if self.bar is None:
            return
        if kind == "start":
            what = "resuming" if info["resumed"] else "training"
            data = info["data"]
            source = data.get("folder") or data.get("type")
            self.bar.console.print(f"{what} {info['out']} on {info['device']} x{info['world_size']}: "
                                   f"{info['parameters']['unet']:,} + {info['parameters']['text']:,} parameters, "
                                   f"data {source}, stage 2 from step {info['stage2_at']}, "
                                   f"frames {info['frames']}, size {info['sizes']}")
            self.task = self.bar.add_task("train", total=info["steps"], completed=info["start_step"], loss="-",
                                          speed="")
        elif kind == "step" and self.task is not None:
            self.bar.update(self.task, completed=info["step"],
                            description=f"stage {info['stage']} {info['frames']}x{info['size']}px",
                            loss=f"{info['loss_ema']:.4f}", speed=f"{info['it_s']:.2f} it/s")
        elif kind == "eval":
            self.bar.console.print(f"step {info['step']}: held-out MSE (EMA) {info['eval_mse_ema']:.4f}")
        elif kind == "export":
            self.bar.console.print(f"exported the EMA weights to {info['path']}")
        elif kind == "shape_critic" and info["status"] == "trained":
            self.bar.console.print(f"shape critic {info['path']}: held-out accuracy {info['clean_accuracy']:.1%} "
                                   f"on clean frames, {info['decoded_accuracy']:.1%} through the autoencoder")


AE_EPILOG = """
Examples:\n
  vcomp train-autoencoder --out runs/vae --steps 4000 --max-minutes 25        # then: vcomp train --autoencoder runs/vae/export\n
  vcomp train-autoencoder --out runs/vae --resume --steps 6000                 # continue it\n
Writes OUT/checkpoint/ (resumable), OUT/log.jsonl and OUT/export/autoencoder.{safetensors,json}.
"""


def train_autoencoder(
    ctx: typer.Context,
    out: str = typer.Option("runs/vae", "--out", "-o", help="Run folder (checkpoint/, log.jsonl, export/)."),
    steps: int = typer.Option(3000, "--steps", help="Total optimiser steps."),
    batch: int = typer.Option(32, "--batch", help="Frames per step."),
    crop: int = typer.Option(32, "--crop", help="Training crop side in pixels (the network is convolutional)."),
    size: int = typer.Option(64, "--size", help="Side of the rendered world frames the crops come from."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (after a linear warm-up)."),
    kl_weight: float = typer.Option(1e-5, "--kl-weight", help="Weight of the KL term (per pixel value)."),
    object_weight: float = typer.Option(0.0, "--object-weight", help="Extra pixel-loss weight on the world's objects (1 + this on their pixels); 0 = plain mean."),
    contrast_ref: float = typer.Option(0.0, "--contrast-ref", help="With --object-weight: multiply each frame's object weight by this / the contrast between its objects' mean colour and the ground's (RGB distance in [-1, 1] units; between 1 and 4 times), so objects on a near colour (red on orange) weigh more; 1.5 doubles them. 0 = off."),
    grad_weight: float = typer.Option(0.5, "--grad-weight", help="Weight of the image-gradient L1 term: higher keeps thin parts (a star's points) that plain L1 + MSE blur away."),
    init: str = typer.Option(None, "--init", help="Start from this autoencoder export, or from the autoencoder of an embedded model folder."),
    decoder_only: bool = typer.Option(False, "--decoder-only", help="Train only the decoder (needs --init): the latent space, and a UNet trained in it, stay valid."),
    latent_noise: float = typer.Option(0.0, "--latent-noise", help="Decode latents plus Gaussian noise of std up to this (scaled-latent units, e.g. 0.15): a decoder robust to the frame-to-frame jitter of sampled latents flickers less. 0 = clean latents."),
    decoder_layers: int = typer.Option(None, "--decoder-layers", help="With --decoder-only: ResNet blocks per decoder level, more than the --init decoder's (the new ones start as the identity, so training starts from its output): more capacity for small objects' outlines. Default: keep its depth."),
    latent_channels: int = typer.Option(None, "--latent-channels", help="Channels of a fresh latent (more keep finer shapes; the UNet's cost barely changes). Default: 8."),
    factor: int = typer.Option(None, "--factor", help="Pixels per latent cell along each side of a fresh latent (2, 4, 8 or 16): 4 gives 64 px video a 16 x 16 latent, where the world's objects span 4-6 cells instead of 2-3. Default: 8."),
    apply_to: str = typer.Option(None, "--apply-to", help="With --decoder-only: afterwards write the new decoder into the embedded model in this folder (whose encoder must be the --init one)."),
    seed: int = SEED,
    max_minutes: float = MAX_MINUTES,
    threads: int = THREADS,
    resume: bool = RESUME,
    json_out: bool = JSON_SUMMARY,
    quiet: bool = QUIET,
) -> None:
    """Train the embedded model's latent space: a small AutoencoderKL on procedural-world frames.

    The export is what `vcomp train --autoencoder DIR` denoises in (factor 8, 8 channels by default)."""
    options = {k: v for k, v in locals().items() if k != "ctx"}
    from vcomp.train.autoencoder import AutoencoderTrainConfig, run_is_decoder_only
    from vcomp.train.autoencoder import train_autoencoder as run

    console.set_quiet(quiet)
    command = _command_line(options, "train-autoencoder")
    from vcomp.errors import InputError

    if apply_to is not None and not (decoder_only or (resume and run_is_decoder_only(out))):
        raise InputError("--apply-to needs --decoder-only (a new encoder would invalidate the model's UNet)")
    if latent_noise < 0:
        raise InputError(f"--latent-noise must be 0 or more, got {latent_noise}")
    if grad_weight < 0:
        raise InputError(f"--grad-weight must be 0 or more, got {grad_weight}")
    if contrast_ref < 0 or (contrast_ref > 0 and not object_weight):
        raise InputError("--contrast-ref scales --object-weight: give it a value of 0 or more, with --object-weight")
    if latent_channels is not None and latent_channels < 1:
        raise InputError(f"--latent-channels must be 1 or more, got {latent_channels}")
    vae = {"latent_channels": latent_channels} if latent_channels else {}
    if factor is not None:
        from vcomp.train.autoencoder import world_widths

        vae["block_out_channels"] = world_widths(factor)
    cfg = AutoencoderTrainConfig(out=out, steps=steps, batch=batch, crop=crop, size=size, lr=lr, kl_weight=kl_weight,
                                 seed=seed, max_minutes=max_minutes, threads=threads, resume=resume, command=command,
                                 object_weight=object_weight, grad_weight=grad_weight, init=init,
                                 decoder_only=decoder_only, latent_noise=latent_noise, vae=vae, contrast_ref=contrast_ref,
                                 decoder_layers=decoder_layers)
    show = console.interactive()
    with console.progress_bar(transient=False) if show else _Nothing() as bar:
        task = bar.add_task("autoencoder", total=steps) if show else None

        def event(kind, info):
            if show and kind == "log":
                bar.update(task, completed=info["step"],
                           description=f"autoencoder loss {info['loss']:.4f}")

        with _checkpoint_named_on_interrupt(cfg.out):
            summary = run(cfg, on_event=event, explicit=_given_on_the_command_line(ctx, options))
    if apply_to is not None:
        from vcomp.train.autoencoder import load_autoencoder
        from vcomp.weights.embedded import with_decoder

        vae, record = load_autoencoder(summary["export"])
        summary["applied_to"] = str(with_decoder(apply_to, vae, history=record.get("training"))[0].parent)
    if json_out:
        console.print_json(summary)
    else:
        console.log(f"step {summary['step']}: held-out PSNR {summary['psnr_db']:.1f} dB, scaling factor "
                    f"{summary['scaling_factor']:.3f}; exported to {summary['export']}")


def _given_on_the_command_line(ctx: typer.Context, options: dict) -> set[str]:
    """The options the user typed (not defaults): a resumed run keeps its own values for the rest."""
    sources = {name: ctx.get_parameter_source(name) for name in options}
    return {name for name, source in sources.items() if source is not None and source.name != "DEFAULT"}


REFINER_EPILOG = """
Examples:\n
  vcomp train-refiner --out runs/ref --max-minutes 20         # for the shipped model\n
  vcomp train-refiner --out runs/ref --resume --steps 2000    # continue it\n
  vcomp train-refiner --init runs/unet/export --out runs/ref2 # for another embedded model\n
Writes OUT/checkpoint/ (resumable), OUT/log.jsonl and OUT/export/: the --init model with the refiner
(use it with --weights OUT/export, or copy its embedded.* into vcomp/assets). --apply-to DIR also
writes the refiner into a model with the same autoencoder (a UNet fine-tuned from it).
"""


def train_refiner(
    ctx: typer.Context,
    init: str = typer.Option(None, "--init", help="The embedded model folder whose decoder the refiner follows (it stays frozen). Default: the shipped model (with --resume: the run's)."),
    out: str = typer.Option("runs/refiner", "--out", "-o", help="Run folder (checkpoint/, log.jsonl, export/)."),
    steps: int = typer.Option(1500, "--steps", help="Total optimiser steps."),
    batch: int = typer.Option(4, "--batch", help="Clips per step."),
    frames: int = typer.Option(16, "--frames", help="Frames per training clip."),
    width: int = typer.Option(None, "--width", help="Channels of the refiner's convolutions. Default: 16 (with --resume: the run's)."),
    layers: int = typer.Option(None, "--layers", help="3x3x3 convolutions (the refiner sees 2 x layers + 1 frames). Default: 4 (with --resume: the run's)."),
    lr: float = typer.Option(2e-3, "--lr", help="AdamW learning rate (linear warm-up, cosine decay)."),
    latent_noise: float = typer.Option(0.12, "--latent-noise", help="Per-frame latent noise of std up to this (scaled-latent units): the jitter of sampled latents the refiner learns to remove."),
    temporal_weight: float = typer.Option(1.0, "--temporal-weight", help="Weight of the loss on frame differences (what removes flicker)."),
    object_weight: float = typer.Option(4.0, "--object-weight", help="Extra L1 weight on the world's objects (1 + this on their pixels)."),
    apply_to: str = typer.Option(None, "--apply-to", help="Afterwards also write the refiner into the embedded model in this folder (whose autoencoder must be the --init model's, e.g. a UNet fine-tuned from it)."),
    seed: int = SEED,
    max_minutes: float = MAX_MINUTES,
    threads: int = THREADS,
    resume: bool = RESUME,
    json_out: bool = JSON_SUMMARY,
    quiet: bool = QUIET,
) -> None:
    """Train a temporal refiner for an embedded model: 3D convolutions after its decoder that remove flicker.

    The UNet, encoder and decoder stay frozen; the export is the --init model with the refiner added."""
    options = {k: v for k, v in locals().items() if k != "ctx"}
    from vcomp.train.refiner import RefinerTrainConfig
    from vcomp.train.refiner import train_refiner as run

    console.set_quiet(quiet)
    command = _command_line(options, "train-refiner")
    cfg = RefinerTrainConfig(init=init, out=out, steps=steps, batch=batch, frames=frames, width=width, layers=layers,
                             lr=lr, latent_noise=latent_noise, temporal_weight=temporal_weight,
                             object_weight=object_weight, seed=seed, max_minutes=max_minutes, threads=threads,
                             resume=resume, command=command)
    summary = _train_stage(run, cfg, "refiner", apply_to, _given_on_the_command_line(ctx, options))
    if json_out:
        console.print_json(summary)
    else:
        console.log(f"step {summary['step']}: held-out temporal L1 {summary['decoded_temporal']:.4f} -> "
                    f"{summary['refined_temporal']:.4f}, L1 {summary['decoded_l1']:.4f} -> "
                    f"{summary['refined_l1']:.4f}; exported to {summary['export']}")


PROMPT_REFINER_EPILOG = """
Examples:\n
  vcomp train-prompt-refiner --out runs/pref --max-minutes 50        # for the shipped model\n
  vcomp train-prompt-refiner --out runs/pref --resume --steps 4000   # continue it\n
  vcomp train-prompt-refiner --init runs/ref/export --out runs/pref2 # for another embedded model\n
Writes OUT/checkpoint/ (resumable), OUT/log.jsonl and OUT/export/: the --init model with the prompt
refiner (use it with --weights OUT/export, or copy its embedded.* into vcomp/assets). --apply-to DIR
also writes it into a model with the same autoencoder, temporal refiner and text encoder.
"""


def train_prompt_refiner(
    ctx: typer.Context,
    init: str = typer.Option(None, "--init", help="The embedded model folder whose decoder, temporal refiner and text encoder the stage follows (all stay frozen). Default: the shipped model (with --resume: the run's)."),
    out: str = typer.Option("runs/prompt_refiner", "--out", "-o", help="Run folder (checkpoint/, log.jsonl, export/)."),
    steps: int = typer.Option(2000, "--steps", help="Total optimiser steps."),
    batch: int = typer.Option(4, "--batch", help="Clip pairs per step."),
    frames: int = typer.Option(16, "--frames", help="Frames per training clip."),
    width: int = typer.Option(None, "--width", help="Channels at full resolution (2x and 4x at the coarser levels). Default: 16 (with --resume: the run's)."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (linear warm-up, cosine decay)."),
    latent_noise: float = typer.Option(0.3, "--latent-noise", help="Per-frame latent noise of std up to this on the counterfactual clips (scaled-latent units)."),
    swap: float = typer.Option(0.6, "--swap", help="Chance that an object of a training clip is drawn with another shape for the stage to correct."),
    empty: float = typer.Option(0.1, "--empty", help="Share of clips with the empty prompt and no swap (there the stage learns to change nothing)."),
    redraw: float = typer.Option(0.0, "--redraw", help="Share of each batch whose input is the UNet's redraw of the true clip (a generation's look with a known target) instead of a swapped render."),
    redraw_t_min: int = typer.Option(200, "--redraw-t-min", help="Lowest timestep the redrawn clips are noised to."),
    redraw_t_max: int = typer.Option(500, "--redraw-t-max", help="Highest timestep the redrawn clips are noised to (at most 900)."),
    redraw_steps: int = typer.Option(3, "--redraw-steps", help="Guided DDIM steps of a redraw."),
    temporal_weight: float = typer.Option(0.5, "--temporal-weight", help="Weight of the loss on frame differences (keeps outlines steady)."),
    object_weight: float = typer.Option(4.0, "--object-weight", help="Extra loss weight on the objects of both clips (1 + this on their pixels)."),
    apply_to: str = typer.Option(None, "--apply-to", help="Afterwards also write the stage into the embedded model in this folder (same autoencoder, temporal refiner and text encoder as --init)."),
    seed: int = SEED,
    max_minutes: float = MAX_MINUTES,
    threads: int = THREADS,
    resume: bool = RESUME,
    json_out: bool = JSON_SUMMARY,
    quiet: bool = QUIET,
) -> None:
    """Train a prompt refiner for an embedded model: a text-conditioned stage after its decoder that redraws outlines.

    Everything else stays frozen; the export is the --init model with the stage added. Generation runs it on
    every clip, given the prompt's text tokens."""
    options = {k: v for k, v in locals().items() if k != "ctx"}
    from vcomp.train.prompt_refiner import PromptRefinerTrainConfig
    from vcomp.train.prompt_refiner import train_prompt_refiner as run

    console.set_quiet(quiet)
    command = _command_line(options, "train-prompt-refiner")
    cfg = PromptRefinerTrainConfig(init=init, out=out, steps=steps, batch=batch, frames=frames, width=width, lr=lr,
                                   latent_noise=latent_noise, swap=swap, empty=empty, redraw=redraw,
                                   redraw_t_min=redraw_t_min, redraw_t_max=redraw_t_max, redraw_steps=redraw_steps,
                                   temporal_weight=temporal_weight,
                                   object_weight=object_weight, seed=seed, max_minutes=max_minutes, threads=threads,
                                   resume=resume, command=command)
    summary = _train_stage(run, cfg, "prompt_refiner", apply_to, _given_on_the_command_line(ctx, options))
    if json_out:
        console.print_json(summary)
    else:
        console.log(f"step {summary['step']}: held-out wrongly drawn shapes read as the prompted one "
                    f"{summary['input_shape']:.0%} -> {summary['refined_shape']:.0%}, L1 {summary['input_l1']:.4f} -> "
                    f"{summary['refined_l1']:.4f}; redrawn by the UNet {summary['redrawn_input_shape']:.0%} -> "
                    f"{summary['redrawn_refined_shape']:.0%}; exported to {summary['export']}")


SHAPE_CRITIC_EPILOG = """Examples:\n
  vcomp train-shape-critic --out runs/critic                        # for the shipped model\n
  vcomp train-shape-critic --init runs/pref/export --out runs/pref/export --shape-guidance 1.5\n
\n
Trains a small classifier of the world's four shapes on world frames seen through the model's
decoder (about a minute on 2 cores) and writes the model with it to OUT; generation then steers
each '{colour} {shape}' of a prompt towards that shape (--shape-guidance on the generating
commands, 0 = off).
"""


def train_shape_critic(
    init: str = typer.Option(None, "--init", help="The embedded model folder whose decoder the critic judges. Default: the shipped model."),
    out: str = typer.Option(..., "--out", "-o", help="Folder to write the model with the critic to (may be --init's, to add it in place).", show_default=False),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps."),
    clips: int = typer.Option(1536, "--clips", help="One-object world clips (4 frames each) to train on."),
    shape_guidance: float = typer.Option(None, "--shape-guidance", help="The model's default strength of shape guidance. Default: the --init model's, else 1.0.", show_default=False),
    track_guidance: float = typer.Option(None, "--track-guidance", help="The model's default strength of track guidance (which finds objects by the critic's colours). Default: the --init model's, else 1.0.", show_default=False),
    shape_outline: float = typer.Option(None, "--shape-outline", help="Weight of the outline term in the shape guidance step (pulls each object towards the named shape's outline; 0 = the critic alone). Default: the --init model's, else 1.0.", show_default=False),
    motion_guidance: float = typer.Option(None, "--motion-guidance", help="The model's default strength of motion guidance (with a motion condition; needs no critic). Default: the --init model's, else 0.35.", show_default=False),
    seed: int = SEED,
    json_out: bool = JSON_SUMMARY,
    quiet: bool = QUIET,
) -> None:
    """Add a shape critic to an embedded model, for shape and track guidance at sampling; also
    writes the model's default motion guidance."""
    from vcomp.train.shape_critic import add_shape_critic

    console.set_quiet(quiet)
    with console.progress("shape critic") as update:
        summary = add_shape_critic(init, out, steps=steps, seed=seed, clips=clips, shape_guidance=shape_guidance,
                                   track_guidance=track_guidance, shape_outline=shape_outline,
                                   motion_guidance=motion_guidance, on_step=lambda step, loss: update(step + 1, steps))
    if json_out:
        console.print_json(summary)
    else:
        console.log(f"shape critic: held-out accuracy {summary['clean_accuracy']:.1%} on clean frames, "
                    f"{summary['decoded_accuracy']:.1%} through the decoder; shape guidance "
                    f"{summary['shape_guidance']:g} (outline weight {summary['shape_outline']:g}), "
                    f"track guidance {summary['track_guidance']:g}, motion guidance {summary['motion_guidance']:g}; "
                    f"written to {summary['export']}")


def _train_stage(run, cfg, which: str, apply_to: str | None, explicit: set[str]) -> dict:
    """Run a stage trainer (`which`: "refiner" or "prompt_refiner") under a progress bar, then
    write the stage into `apply_to` when given; returns the trainer's summary. `explicit`: the
    options typed (a resumed run keeps its own values for the others)."""
    name = which.replace("_", " ")
    show = console.interactive()
    with console.progress_bar(transient=False) if show else _Nothing() as bar:
        task = bar.add_task(name, total=cfg.steps) if show else None

        def event(kind, info):
            if show and kind == "log":
                bar.update(task, completed=info["step"], description=f"{name} loss {info['loss']:.4f}")

        with _checkpoint_named_on_interrupt(cfg.out):
            summary = run(cfg, on_event=event, explicit=explicit)
    if apply_to is not None:
        from vcomp.weights.embedded import with_refiner

        summary["applied_to"] = str(with_refiner(apply_to, summary["export"], which=which)[0].parent)
    return summary


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def register(app: typer.Typer) -> None:
    app.command("train", epilog=EPILOG)(train)
    app.command("train-autoencoder", epilog=AE_EPILOG)(train_autoencoder)
    app.command("train-refiner", epilog=REFINER_EPILOG)(train_refiner)
    app.command("train-prompt-refiner", epilog=PROMPT_REFINER_EPILOG)(train_prompt_refiner)
    app.command("train-shape-critic", epilog=SHAPE_CRITIC_EPILOG)(train_shape_critic)
