"""Training checkpoints: one folder per run, replaced atomically, that `--resume` continues from.

    runs/NAME/
      checkpoint/
        model.safetensors   "unet.*", "text.*" (the trained weights), "ema.unet.*", "ema.text.*" (EMA),
                            "vae.*" (the frozen autoencoder, when it is a learned one)
        optimizer.pt        torch.save({"format", "step", "optimizer", "rng", "loss_ema"}); read back
                            with torch.load(weights_only=True): tensors, numbers and lists only
        train.json          the run's record: config, step, recent losses, wall time, every session's
                            command line, seed, hardware
      log.jsonl             one line per logging interval (loss, loss EMA, lr, s/step, ...)

The checkpoint folder is written beside its old version and swapped in when complete
(`vcomp.io.atomic_dir`), so a run killed mid-save still has its previous checkpoint.

`load_init` reads the starting weights for `--init`: a run folder or checkpoint folder (its EMA
weights) or an embedded model (`embedded.safetensors` + `embedded.json`, as `--export` writes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vcomp.errors import InputError, WeightsError

FORMAT = "vcomp-train-v1"
CHECKPOINT_DIR = "checkpoint"
MODEL_FILE, STATE_FILE, RECORD_FILE, LOG_FILE = "model.safetensors", "optimizer.pt", "train.json", "log.jsonl"


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]
    record: dict
    state: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.record.get("step", 0))

    def weights(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under `prefix` ("unet.", "ema.text.", ...) with the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def prefixed(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}


def save_checkpoint(run_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], state: dict, record: dict) -> Path:
    """Write `run_dir/checkpoint/` (model.safetensors, optimizer.pt, train.json) atomically."""
    from safetensors.torch import save_file

    from vcomp.io import atomic_dir

    target = Path(run_dir) / CHECKPOINT_DIR
    with atomic_dir(target) as tmp:
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": FORMAT, "step": str(record.get("step", 0))})
        torch.save({"format": FORMAT, **state}, tmp / STATE_FILE)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return target


def save_module_checkpoint(run_dir: str | os.PathLike, kind: str, step: int, module: torch.nn.Module, optimizer,
                           config: dict, wall_time_s: float, sessions: list[dict]) -> Path:
    """The checkpoint of a trainer of one module (the autoencoder, the temporal refiner): its
    weights, the optimizer state and the run record that `--resume` reads back."""
    record = {"format": FORMAT, "kind": kind, "step": step, "config": config, "wall_time_s": wall_time_s,
              "sessions": sessions}
    return save_checkpoint(run_dir, {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                           {"step": step, "optimizer": optimizer.state_dict()}, record)


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint folder for a run folder or a checkpoint folder; None if there is none."""
    path = Path(path).expanduser()
    for candidate in (path, path / CHECKPOINT_DIR):
        if (candidate / MODEL_FILE).is_file() and (candidate / RECORD_FILE).is_file():
            return candidate
    return None


def read_record(path: str | os.PathLike) -> tuple[Path, dict]:
    """(checkpoint folder, its validated run record) without reading any weights: for questions
    about a run (its config) asked before training it."""
    folder = find_checkpoint(path)
    if folder is None:
        raise InputError(f"{path}: no training checkpoint there ({CHECKPOINT_DIR}/{MODEL_FILE} + {RECORD_FILE})")
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{folder / RECORD_FILE} is unreadable ({exc}); the checkpoint is damaged") from None
    if record.get("format") != FORMAT:
        raise WeightsError(f"{folder / RECORD_FILE}: format {record.get('format')!r}, expected {FORMAT!r}")
    return folder, record


def load_checkpoint(path: str | os.PathLike, with_state: bool = True) -> Checkpoint:
    from vcomp.weights.safe_load import load_state_dict

    folder, record = read_record(path)
    tensors = load_state_dict(folder / MODEL_FILE, what="training checkpoint")
    state = {}
    if with_state:
        if not (folder / STATE_FILE).is_file():
            raise WeightsError(f"{folder / STATE_FILE} is missing; the checkpoint cannot be resumed (use --init)")
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        if int(state.get("step", -1)) != int(record.get("step", -2)):
            raise WeightsError(f"{folder}: optimizer.pt is at step {state.get('step')} but train.json at "
                               f"{record.get('step')}; the checkpoint is inconsistent")
    return Checkpoint(folder, dict(tensors), record, state)


@dataclass
class InitWeights:
    """Starting weights for `--init`: UNet and text-encoder state dicts and their descriptions."""

    unet: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor]
    model: dict  # ModelConfig.to_dict()
    text_encoder: dict  # {"vocab", "dim", "max_len", "depth", "heads"}
    source: str
    history: dict = field(default_factory=dict)  # how these weights were trained (kept in exports: lineage)
    autoencoder: dict | None = None  # the latent space's description (None: the record predates it)
    vae: dict[str, torch.Tensor] = field(default_factory=dict)  # its weights (AutoencoderKL only)
    sampling: dict | None = None  # its measured sampling defaults (guidance), which a fine-tune keeps
    refiner: dict[str, torch.Tensor] = field(default_factory=dict)  # its temporal refiner's weights, if any


def _kept_autoencoder_records(rec: dict) -> dict:
    """The `decoder` and `refiner` training records a run's checkpoint inherited from its own
    --init model, when the run kept that model's autoencoder (as `vcomp train` does). Why: a run
    started from this checkpoint exports the same decoder and refiner, so it must still be able
    to say how they were trained (an embedded --init carries them at the top of its record)."""
    init = rec.get("init_history") or {}
    if init.get("autoencoder") != rec.get("autoencoder_history"):
        return {}
    return {k: init[k] for k in ("decoder", "refiner") if init.get(k) is not None}


def load_init(path: str | os.PathLike) -> InitWeights:
    """Weights to start from: a run / checkpoint folder (EMA weights) or an embedded model."""
    from vcomp.weights.files import embedded_paths

    path = Path(path).expanduser()
    if find_checkpoint(path) is not None:
        ckpt = load_checkpoint(path, with_state=False)
        rec = ckpt.record
        prefix = "ema." if any(k.startswith("ema.") for k in ckpt.tensors) else ""
        history = {"steps": ckpt.step, "commands": [s.get("command") for s in rec.get("sessions", [])],
                   "wall_time_s": rec.get("wall_time_s"), "config": rec.get("config"),
                   "init": rec.get("init_history"), "autoencoder": rec.get("autoencoder_history"),
                   **_kept_autoencoder_records(rec)}
        return InitWeights(ckpt.weights(prefix + "unet."), ckpt.weights(prefix + "text."), rec["model"],
                           rec["text_encoder"], f"{ckpt.path} ({'EMA' if prefix else 'raw'} weights, step {ckpt.step})",
                           history, rec.get("autoencoder"), ckpt.weights("vae."), rec.get("init_sampling"),
                           ckpt.weights("refiner."))
    folder = path.parent if path.suffix in (".safetensors", ".json") else path
    weights_path, config_path = embedded_paths(folder)
    if weights_path.is_file() and config_path.is_file():
        from vcomp.weights.safe_load import load_state_dict

        record = json.loads(config_path.read_text())
        sd = load_state_dict(weights_path, what="embedded model")
        return InitWeights({k[5:]: v for k, v in sd.items() if k.startswith("unet.")},
                           {k[5:]: v for k, v in sd.items() if k.startswith("text.")},
                           record["model"], record["text_encoder"], str(weights_path), record.get("training", {}),
                           record.get("autoencoder"), {k[4:]: v for k, v in sd.items() if k.startswith("vae.")},
                           record.get("sampling"), {k[8:]: v for k, v in sd.items() if k.startswith("refiner.")})
    raise InputError(f"--init {path}: neither a training run/checkpoint folder nor an embedded model "
                     "(embedded.safetensors + embedded.json)")


def append_log(run_dir: str | os.PathLike, entry: dict) -> None:
    """One JSON line in `run_dir/log.jsonl` (appended; a crash loses at most this line)."""
    path = Path(run_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")
