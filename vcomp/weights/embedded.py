"""The embedded model: `embedded.safetensors` (tensors) + `embedded.json` (everything else).

    embedded.json = {
      "format": "vcomp-embedded-v1",
      "model": ModelConfig.to_dict(),                       # the UNet preset ("tiny"), as data
      "text_encoder": {"vocab": [...], "dim", "max_len", "depth", "heads"},
      "autoencoder": {"type": "AutoencoderKL", "config": {...diffusers config...},
                      "temporal_refiner": {"width", "layers"} (optional: the deflicker after the decoder),
                      "prompt_refiner": {"context_dim", "width"} (optional: the text-conditioned stage after it),
                      "shape_critic": {"width", "shapes", "colours"} (optional: the classifier of shape guidance)}
                     (or {"type": "pixel_unshuffle", "factor": 4}, the first release's latent),
      "style": {"extractor": "colour-stats-v1", "dim": 64},
      "training": {...}                                     # free-form record written by the trainer
    }
    embedded.safetensors = {"unet.<key>": ..., "text.<key>": ..., "vae.<key>": ... (AutoencoderKL only),
                            "refiner.<key>": ... (with a temporal refiner only),
                            "prompt_refiner.<key>": ... (with a prompt refiner only),
                            "shape_critic.<key>": ... (with a shape critic only)}

`save_embedded` is what the trainer calls; `load_embedded` is what the pipeline calls.
`random_embedded` builds the same parts randomly initialised (tests, or VCOMP_ALLOW_RANDOM=1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vcomp.errors import WeightsError
from vcomp.weights.files import embedded_paths

FORMAT = "vcomp-embedded-v1"

# The optional parts trained after the decoder, by their attribute on `KLAutoencoder` (which is also
# their tensors' prefix): their key in the record's "autoencoder", their name in errors, what trains
# them. The refiners change the decoded clip; the shape critic judges it (for shape guidance).
STAGES = {"refiner": ("temporal_refiner", "temporal refiner", "vcomp train-refiner"),
          "prompt_refiner": ("prompt_refiner", "prompt refiner", "vcomp train-prompt-refiner"),
          "shape_critic": ("shape_critic", "shape critic", "vcomp train-shape-critic")}


@dataclass
class EmbeddedModel:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    autoencoder: torch.nn.Module
    record: dict = field(default_factory=dict)  # embedded.json minus the tensors
    source: str = "random"  # path of the safetensors file, or "random"


def autoencoder_from_spec(spec: dict, tensors: dict[str, torch.Tensor] | None = None,
                          stage_tensors: dict[str, dict[str, torch.Tensor] | None] | None = None):
    """The `VideoAutoencoder` an embedded record describes; `tensors` = its "vae." weights and
    `stage_tensors[which]` those of each part of STAGES ("refiner.", "prompt_refiner.",
    "shape_critic." ones; prefixes removed; None or absent = random initialisation)."""
    from vcomp.model.autoencoder import KLAutoencoder, PixelUnshuffleAutoencoder

    kind = spec.get("type")
    if kind == "pixel_unshuffle":
        return PixelUnshuffleAutoencoder(int(spec.get("factor", 4)))
    if kind != "AutoencoderKL":
        raise WeightsError(f"embedded model: unsupported autoencoder {spec!r}")
    from vcomp.model.autoencoder import build_kl_vae
    from vcomp.model.loading import load_state_dict_strict

    try:
        vae = build_kl_vae(spec["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"embedded model: bad autoencoder config ({exc})") from None
    if tensors is not None:
        load_state_dict_strict(vae, tensors, source="autoencoder weights of the embedded model")
    from vcomp.model.prompt_refiner import PromptRefiner
    from vcomp.model.shape_critic import ShapeCritic
    from vcomp.model.temporal_refiner import TemporalRefiner

    classes = {"refiner": TemporalRefiner, "prompt_refiner": PromptRefiner, "shape_critic": ShapeCritic}
    given = stage_tensors or {}
    return KLAutoencoder(vae, **{which: _stage(spec, which, classes[which], given.get(which), tensors is not None)
                                 for which in STAGES})


def _stage(spec: dict, prefix: str, cls, tensors: dict[str, torch.Tensor] | None, trained: bool):
    """The stage after the decoder (`prefix`, a key of STAGES) that an autoencoder record
    describes (None when it has none), with `tensors` loaded; a trained model whose stage lost its
    weights or description is an error, not silently an identity stage."""
    from vcomp.model.loading import load_state_dict_strict

    key, what, _ = STAGES[prefix]
    if tensors and spec.get(key) is None:
        raise WeightsError(f"embedded model: {what} weights ({prefix}.*) are present but its description "
                           f"(autoencoder.{key}) is missing; reinstall vcomp")
    if spec.get(key) is None:
        return None
    try:
        stage = cls(**spec[key])
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"embedded model: bad {what} config ({exc})") from None
    if tensors is not None:
        load_state_dict_strict(stage, tensors, source=f"{what.replace(' ', '-')} weights of the embedded model")
    elif trained:
        raise WeightsError(f"embedded model: the {what} is described but its weights ({prefix}.*) are missing")
    return stage


def autoencoder_spec(autoencoder) -> dict:
    """The embedded-record description of a `VideoAutoencoder` (the inverse of autoencoder_from_spec)."""
    if hasattr(autoencoder, "vae"):
        spec = {"type": "AutoencoderKL", "factor": autoencoder.factor,
                "config": {k: v for k, v in dict(autoencoder.vae.config).items() if not k.startswith("_")}}
        for which, (key, _, _) in STAGES.items():
            if getattr(autoencoder, which, None) is not None:
                spec[key] = getattr(autoencoder, which).config()
        return spec
    return autoencoder.describe()


def autoencoder_tensors(autoencoder) -> dict[str, torch.Tensor]:
    """The learned autoencoder's state dict (empty for the parameter-free pixel unshuffle)."""
    return dict(autoencoder.vae.state_dict()) if hasattr(autoencoder, "vae") else {}


def refiner_tensors(autoencoder, which: str = "refiner") -> dict[str, torch.Tensor]:
    """The state dict of the autoencoder's temporal refiner (`which` = "refiner"), prompt refiner
    ("prompt_refiner") or shape critic ("shape_critic"); empty when it has none."""
    refiner = getattr(autoencoder, which, None)
    return dict(refiner.state_dict()) if refiner is not None else {}


def random_embedded(seed: int = 0, vocab=None, preset: str = "tiny", **overrides) -> EmbeddedModel:
    """A randomly initialised tiny model (not trained: its videos are noise). Its zero-initialised
    layers get small random weights, so its output depends on every input (useful for tests)."""
    from vcomp.model import create_model, get_config
    from vcomp.model.embedders import WordTextEncoder, build_vocab

    if vocab is None:  # the procedural world's words, which the embedded model is trained on
        from vcomp.train.synthetic import VOCABULARY

        vocab = build_vocab(words=VOCABULARY)
    cfg = get_config(preset, **overrides)  # e.g. in_dim=48, out_dim=48, latent_scale=4: a pixel-unshuffle latent
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG state
        torch.manual_seed(seed)
        unet = create_model(cfg).eval()
        with torch.no_grad():  # zero-initialised output layers would make eps = 0 whatever the inputs
            for p in unet.parameters():
                if p.ndim > 1 and not p.any():
                    p.normal_(0.0, 0.02)
        text = WordTextEncoder(vocab, dim=cfg.context_dim, max_len=cfg.text_len).eval()
    if cfg.in_dim == 3 * cfg.latent_scale**2:
        autoencoder = autoencoder_from_spec({"type": "pixel_unshuffle", "factor": cfg.latent_scale})
    else:
        from vcomp.train.autoencoder import world_vae_config

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            autoencoder = autoencoder_from_spec({"type": "AutoencoderKL", "config": world_vae_config(
                latent_channels=cfg.in_dim)})
    ae_spec = autoencoder_spec(autoencoder)
    record = {"format": FORMAT, "model": cfg.to_dict(), "text_encoder": {"vocab": text.vocab, **text.config()},
              "autoencoder": ae_spec, "style": {"extractor": "colour-stats-v1", "dim": cfg.style_dim},
              "training": {"note": "random initialisation, not trained"}}
    return EmbeddedModel(unet, text, autoencoder, record, "random")


def save_embedded(folder: str | os.PathLike, unet, text_encoder, training: dict | None = None,
                  autoencoder=None, style: dict | None = None, sampling: dict | None = None,
                  dtype: torch.dtype = torch.float16) -> tuple[Path, Path]:
    """Write `embedded.safetensors` + `embedded.json` into `folder` (atomically, each).

    Floating tensors are stored as `dtype` (fp16 by default: half the size in the wheel and in
    git history); `load_embedded` computes in fp32 whatever the stored precision."""
    from safetensors.torch import save_file

    from vcomp.io import atomic_file, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path, config_path = embedded_paths(folder)
    cfg = unet.cfg
    def stored(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().cpu()
        return (v.to(dtype) if v.is_floating_point() else v).contiguous()

    tensors = {f"unet.{k}": stored(v) for k, v in unet.state_dict().items()}
    tensors.update({f"text.{k}": stored(v) for k, v in text_encoder.state_dict().items()})
    if autoencoder is None:
        if cfg.in_dim != 3 * cfg.latent_scale**2:
            raise ValueError("this UNet denoises a learned latent: pass its autoencoder to save_embedded")
        from vcomp.model.autoencoder import PixelUnshuffleAutoencoder

        autoencoder = PixelUnshuffleAutoencoder(cfg.latent_scale)
    # the autoencoder stays fp32: it is small, and its decoder's last layers set the output's quality
    tensors.update({f"vae.{k}": v.detach().cpu().contiguous() for k, v in autoencoder_tensors(autoencoder).items()})
    for which in STAGES:
        tensors.update({f"{which}.{k}": v.detach().cpu().float().contiguous()
                        for k, v in refiner_tensors(autoencoder, which).items()})
    record = {
        "format": FORMAT,
        "model": cfg.to_dict(),
        "text_encoder": {"vocab": list(text_encoder.vocab), **text_encoder.config()},
        "autoencoder": autoencoder_spec(autoencoder),
        "style": style or {"extractor": "colour-stats-v1", "dim": cfg.style_dim},
        "training": training or {},
    }
    if sampling:
        record["sampling"] = sampling
    with atomic_file(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    write_json(config_path, record)
    return weights_path, config_path


def load_embedded(folder: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> EmbeddedModel:
    """The embedded model from `folder` (default: the package's assets)."""
    from vcomp.model import create_model
    from vcomp.model.config import ModelConfig
    from vcomp.model.embedders import WordTextEncoder
    from vcomp.model.loading import load_state_dict_strict
    from vcomp.weights.safe_load import load_state_dict

    weights_path, config_path = embedded_paths(folder)
    if not (weights_path.is_file() and config_path.is_file()):
        raise WeightsError(
            f"the embedded model is not in this installation ({weights_path} / {config_path.name} missing). "
            "Put the official weights in $VCOMP_HOME (see `vcomp models`), or, for tests only, set "
            "VCOMP_ALLOW_RANDOM=1 to use a randomly initialised tiny model"
        )
    try:
        record = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{config_path} is not valid JSON ({exc}); reinstall vcomp") from None
    if record.get("format") != FORMAT:
        raise WeightsError(f"{config_path}: unknown format {record.get('format')!r}, expected {FORMAT!r}")
    try:
        cfg = ModelConfig.from_dict(record["model"])
        text_spec = dict(record["text_encoder"])
        vocab = text_spec.pop("vocab")
        text = WordTextEncoder(vocab, **text_spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{config_path}: bad model description ({exc})") from None
    sd = {k: v.float() if v.is_floating_point() else v
          for k, v in load_state_dict(weights_path, what="embedded model").items()}
    unet = load_state_dict_strict(create_model(cfg, device="meta"),
                                  {k[5:]: v for k, v in sd.items() if k.startswith("unet.")},
                                  source=f"UNet weights in {weights_path}")
    load_state_dict_strict(text, {k[5:]: v for k, v in sd.items() if k.startswith("text.")},
                           source=f"text-encoder weights in {weights_path}")
    extra = sorted(k for k in sd if not k.startswith(("unet.", "text.", "vae.", *(f"{p}." for p in STAGES))))
    if extra:
        raise WeightsError(f"{weights_path}: unexpected tensors {extra[:5]}")
    vae = {k[4:]: v for k, v in sd.items() if k.startswith("vae.")}
    spec = record.get("autoencoder", {})
    if spec.get("type") == "AutoencoderKL" and not vae:
        raise WeightsError(f"{weights_path}: the autoencoder's weights (vae.*) are missing; reinstall vcomp")
    stages = {p: {k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(f"{p}.")} or None for p in STAGES}
    autoencoder = autoencoder_from_spec(spec, vae or None, stages)
    if hasattr(autoencoder, "vae"):
        autoencoder.to(device)
    return EmbeddedModel(unet.to(device).eval(), text.to(device).eval(), autoencoder, record, str(weights_path))


DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def with_decoder(folder: str | os.PathLike, vae, out: str | os.PathLike | None = None,
                 history: dict | None = None) -> tuple[Path, Path]:
    """Write the embedded model in `folder` with the decoder of `vae` into `out` (default: in place).

    Why: a decoder fine-tuned with the encoder frozen (`vcomp train-autoencoder --decoder-only`)
    sharpens every output without touching the latent space the UNet was trained in. So the
    encoder and the scaling factor of `vae` must be the model's own, or this refuses."""
    emb = load_embedded(folder)
    if not hasattr(emb.autoencoder, "vae"):
        raise WeightsError(f"{folder}: this embedded model's latent is a pixel unshuffle; it has no decoder to replace")
    old, new = emb.autoencoder.vae.state_dict(), vae.state_dict()
    encoder = {k for k in old if not k.startswith(DECODER_PREFIXES)}
    same = encoder == {k for k in new if not k.startswith(DECODER_PREFIXES)} and all(
        torch.equal(old[k].float().cpu(), new[k].float().cpu()) for k in encoder)
    if not same or abs(float(vae.config.scaling_factor) - float(emb.autoencoder.vae.config.scaling_factor)) > 1e-6:
        raise WeightsError(f"{folder}: the new autoencoder's encoder is not this model's (its UNet was trained in "
                           "another latent space); fine-tune with --decoder-only --init on this model")
    from vcomp.model.autoencoder import build_kl_vae

    replacement = build_kl_vae(dict(vae.config))  # its decoder may be deeper (`deepen_decoder`)
    replacement.load_state_dict({k: v.float() for k, v in new.items()})
    emb.autoencoder.vae = replacement.eval().requires_grad_(False)
    training = dict(emb.record.get("training", {}))
    if history is not None:
        training["decoder"] = history
    return save_embedded(out or folder, emb.unet, emb.text_encoder, training, emb.autoencoder,
                         emb.record.get("style"), emb.record.get("sampling"))


def with_refiner(folder: str | os.PathLike, source: str | os.PathLike, out: str | os.PathLike | None = None,
                 which: str = "refiner") -> tuple[Path, Path]:
    """Write the embedded model in `folder` with the temporal refiner (`which` = "refiner") or the
    prompt refiner ("prompt_refiner") of the model in `source` into `out` (default: in place).

    Why: a refiner learns one decoder's output, so it moves only between models that share that
    autoencoder (e.g. a UNet fine-tuned with `vcomp train --init` after the refiner was trained on
    its parent); a prompt refiner also reads the temporal refiner's output and the text encoder's
    tokens, so those must match too. Anything else is refused."""
    if which not in STAGES:
        raise ValueError(f"which must be one of {sorted(STAGES)}, got {which!r}")
    _, what, command = STAGES[which]
    emb, donor = load_embedded(folder), load_embedded(source)
    refiner = getattr(donor.autoencoder, which, None)
    if refiner is None:
        raise WeightsError(f"{source}: this embedded model has no {what} to copy (train one with `{command}`)")
    if not hasattr(emb.autoencoder, "vae"):
        raise WeightsError(f"{folder}: this embedded model's latent is a pixel unshuffle; a refiner does not apply")

    def same(a, b) -> bool:
        a, b = a.state_dict(), b.state_dict()
        return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    if not same(emb.autoencoder.vae, donor.autoencoder.vae):
        raise WeightsError(f"{folder}: its autoencoder is not the one the {what} in {source} was trained after; "
                           f"train one for it (`{command} --init FOLDER`)")
    if which == "prompt_refiner":
        mine, theirs = emb.autoencoder.refiner, donor.autoencoder.refiner
        if (mine is None) != (theirs is None) or (mine is not None and not same(mine, theirs)) \
                or not same(emb.text_encoder, donor.text_encoder):
            raise WeightsError(f"{folder}: its temporal refiner or text encoder is not the one the prompt refiner in "
                               f"{source} was trained with; train one for it (`{command} --init FOLDER`)")
    setattr(emb.autoencoder, which, refiner)
    training = {**emb.record.get("training", {}), which: donor.record.get("training", {}).get(which)}
    return save_embedded(out or folder, emb.unet, emb.text_encoder, training, emb.autoencoder,
                         emb.record.get("style"), emb.record.get("sampling"))
