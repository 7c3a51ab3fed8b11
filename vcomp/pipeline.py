"""The generation pipeline: weights -> model -> engine, built once, then `generate` many times.

    >>> from vcomp.pipeline import Pipeline
    >>> pipe = Pipeline.load()                                  # official if its files are found, else embedded
    >>> result = pipe.generate(conditions, "a red ball moves right", seed=1)
    >>> result.frames.shape, result.frames.dtype                # (16, 64, 64, 3) uint8 for the tiny model
    >>> result.info["timings"]

`Pipeline.load` picks the preset (`vcomp.weights.resolve_preset`): "official" when
non_ema_228000.pth, the SD-2.1 VAE and OpenCLIP ViT-H-14 are all found in the weights folder,
else "tiny" (the embedded model in vcomp/assets; a randomly initialised one only with
`allow_random=True` or VCOMP_ALLOW_RANDOM=1, for tests). A preset asked for by name whose files
are missing is a `WeightsError` naming the file and where to put it.

`generate` turns the ConditionSet into model inputs with the preset's adapter
(`vcomp.model.adapters`), encodes text and conditions once, and runs DDIM with compositional
guidance (`vcomp.engine`): the conditional branch has everything given; the unconditional branch
replaces the guided parts -- text by the encoding of `negative_prompt` (default ""), style by a
zero vector, a spatial/temporal condition by its absence. The two branches run as one batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vcomp.conditions.condition_set import ConditionSet
from vcomp.errors import InputError, WeightsError
from vcomp.weights.files import sampling_defaults

GUIDABLE = ("text", "style", "motion", "depth", "sketch", "mask", "image", "single_sketch")
KEEP_KNOWN = ("none", "latent", "pixels", "both")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


PUBLISHED_GUIDANCE = 9.0  # hard-coded in the published inference scripts


@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    info: dict = field(default_factory=dict)  # seed, steps, guidance, timings, model, weights, ...

    def to_dict(self) -> dict:
        return {"shape": list(self.frames.shape), **self.info}


def _uint8_frames(video: torch.Tensor) -> np.ndarray:
    """The first clip of a decoded batch [B, 3, T, H, W] in [-1, 1] as uint8 frames [T, H, W, 3]."""
    out = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return out.permute(1, 2, 3, 0).cpu().numpy()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def resolve_dtype(dtype, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """(autocast dtype or None for fp32, note). fp16 by default on CUDA, fp32 elsewhere."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; use fp32, fp16 or bf16")
        dtype = DTYPES[dtype.lower()]
    if device.type != "cuda":
        note = None if dtype in (None, torch.float32) else f"{dtype} autocast is CUDA-only; running fp32 on {device}"
        return None, note
    if dtype is None:
        return torch.float16, None
    return (None if dtype == torch.float32 else dtype), None


def _parse_guide(guide) -> list[str]:
    if isinstance(guide, str):
        guide = [g for g in guide.replace(" ", ",").split(",") if g]
    names = [str(g).strip().lower().replace("-", "_") for g in guide]
    aliases = {"y": "text", "prompt": "text", "masked": "mask", "local_image": "image"}
    names = [aliases.get(n, n) for n in names]
    bad = [n for n in names if n not in GUIDABLE]
    if bad:
        raise InputError(f"cannot guide {bad[0]!r}; choose from {', '.join(GUIDABLE)}")
    return [n for n in GUIDABLE if n in names]


class Pipeline:
    """A loaded generator: UNet + autoencoder + text encoder + condition adapter on one device."""

    def __init__(self, unet, autoencoder, text_encoder, adapter, *, preset: str, device: torch.device | str = "cpu",
                 autocast_dtype: torch.dtype | None = None, weights: dict | None = None,
                 size: tuple[int, int] = (64, 64), num_frames: int = 16, notes: Sequence[str] = (),
                 guidance: float = PUBLISHED_GUIDANCE, guidance_by_guide: dict[str, float] | None = None,
                 shape_guidance: float = 0.0, track_guidance: float = 0.0, shape_outline: float = 0.0,
                 motion_guidance: float = 0.0):
        self.unet = unet.eval()
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder.eval() if hasattr(text_encoder, "eval") else text_encoder
        self.adapter = adapter
        self.preset = preset
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.weights = dict(weights or {})
        self.default_size = tuple(size)
        self.default_frames = num_frames
        self.default_guidance = float(guidance)  # used when generate() is given guidance=None
        # ... unless a guided condition has its own default (the embedded model: style needs a
        # stronger push than text or motion tolerate); the largest one that applies wins
        self.guidance_by_guide = {name: float(w) for name, w in (guidance_by_guide or {}).items()}
        unknown = sorted(set(self.guidance_by_guide) - set(GUIDABLE))
        if unknown:
            raise WeightsError(f"sampling.guidance_by_guide names {unknown[0]!r}, which is not guidable; "
                               f"use names from {', '.join(GUIDABLE)}")
        # the strengths of shape and track guidance when generate() is given None (only with a shape critic)
        self.default_shape_guidance = float(shape_guidance)
        self.default_track_guidance = float(track_guidance)
        self.shape_outline = float(shape_outline)  # the outline term's weight in the shape step (engine.shape_guidance)
        self.default_motion_guidance = float(motion_guidance)  # when generate() is given None and a motion condition
        self.notes = list(notes)
        with torch.inference_mode(), self._autocast():
            null, _ = self.encode_text([""])
        self.unet.set_null_text(null.float())

    # ------------------------------------------------------------------ building

    @classmethod
    def load(cls, weights_dir: str | os.PathLike | None = None, device: str | torch.device = "auto",
             preset: str | None = None, dtype=None, *, allow_random: bool | None = None,
             assets: str | os.PathLike | None = None, attention_chunk: int | None = None,
             vae_chunk: int = 16, seed: int = 0) -> Pipeline:
        """Find and load the weights of `preset` (None = best available) onto `device`.

        dtype: None (fp16 autocast on CUDA, fp32 on CPU), "fp32", "fp16" or "bf16".
        attention_chunk: split attention into batch chunks (lower peak memory; global setting).
        vae_chunk: frames per VAE decode call.
        """
        from vcomp.model.attention import set_attention_chunk_size
        from vcomp.weights import files

        dev = resolve_device(device)
        autocast_dtype, note = resolve_dtype(dtype, dev)
        notes = [note] if note else []
        if allow_random is None:
            allow_random = files.allow_random_from_env()
        assets = files.assets_for(weights_dir, assets)
        if preset is None:
            preset, reason = files.resolve_preset(weights_dir, assets, allow_random)
            if preset is None:
                raise WeightsError(reason + "; see `vcomp models`")
        preset = {"embedded": "tiny"}.get(preset, preset)
        set_attention_chunk_size(attention_chunk)
        if preset == "official":
            return cls._load_official(weights_dir, dev, autocast_dtype, vae_chunk, notes)
        if preset == "tiny":
            return cls._load_embedded(assets, dev, autocast_dtype, allow_random, seed, notes)
        raise InputError(f"unknown preset {preset!r}; choose official or tiny (embedded)")

    @classmethod
    def _load_official(cls, weights_dir, device, autocast_dtype, vae_chunk, notes) -> Pipeline:
        from vcomp.model.adapters import OfficialAdapter
        from vcomp.weights import files
        from vcomp.weights.official import load_official_unet, load_openclip
        from vcomp.weights.sd_vae import load_sd_vae

        paths = {key: files.require(key, weights_dir) for key in files.OFFICIAL_KEYS}
        unet = load_official_unet(paths["unet"], device)
        vae = load_sd_vae(paths["vae"], device, chunk=vae_chunk)
        clip = load_openclip(paths["clip"], towers=("text",), device=device)
        return cls(unet, vae, clip, OfficialAdapter(), preset="official", device=device,
                   autocast_dtype=autocast_dtype, weights={k: str(p) for k, p in paths.items()},
                   size=(256, 256), num_frames=16, notes=notes)

    @classmethod
    def _load_embedded(cls, assets, device, autocast_dtype, allow_random, seed, notes) -> Pipeline:
        from vcomp.model.adapters import TinyAdapter
        from vcomp.weights import files
        from vcomp.weights.embedded import load_embedded, random_embedded

        if files.embedded_available(assets):
            emb = load_embedded(assets, device)
        elif allow_random:
            emb = random_embedded(seed)
            notes = notes + ["randomly initialised tiny model: the output is noise (tests only)"]
        else:
            load_embedded(assets)  # raises the WeightsError that says what is missing
            raise AssertionError("unreachable")
        size = emb.unet.cfg.default_size
        defaults = sampling_defaults(emb.record.get("sampling") or {}, emb.source)
        return cls(emb.unet.to(device), emb.autoencoder, emb.text_encoder.to(device),
                   TinyAdapter(style_dim=emb.unet.cfg.style_dim), preset="tiny", device=device,
                   autocast_dtype=autocast_dtype, weights={"embedded": emb.source}, size=(size, size),
                   num_frames=16, notes=notes,
                   guidance=defaults.guidance, guidance_by_guide=defaults.by_guide,
                   shape_guidance=defaults.shape_guidance, track_guidance=defaults.track_guidance,
                   shape_outline=defaults.shape_outline, motion_guidance=defaults.motion_guidance)

    # ------------------------------------------------------------------ helpers

    def _autocast(self):
        import contextlib

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def reconstruct(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames [T,H,W,3] through the model's latent space (encode, then decode as `generate`
        does, refiner included). Why: what survives this round trip bounds what any sampled video can
        show; `vcomp eval` measures the motion a perfect UNet could at best give back this way."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InputError(f"reconstruct takes uint8 frames [T,H,W,3], got {frames.dtype} {list(frames.shape)}")
        factor = self.autoencoder.factor
        if frames.shape[1] % factor or frames.shape[2] % factor:
            raise InputError(f"frame size {frames.shape[2]}x{frames.shape[1]} must be a multiple of {factor} px")
        video = torch.from_numpy(frames).to(self.device).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        with torch.inference_mode(), self._autocast():
            return _uint8_frames(self.autoencoder.decode(self.autoencoder.encode(video)))

    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Prompt(s) -> (tokens [B, L, context_dim] float32 on the device, unknown words)."""
        if hasattr(self.text_encoder, "encode_text"):
            tokens, unknown = self.text_encoder.encode_text(list(texts)), []
        else:
            tokens, unknown = self.text_encoder.encode(list(texts))
        return tokens.float().to(self.device), unknown

    def guided_names(self, conditions: ConditionSet | None, guide: Sequence[str] | str | None = None) -> list[str]:
        """What the unconditional branch drops: `guide`, or the published default (text, plus
        style when a style is given)."""
        if guide is None:
            guide = ["text"] + (["style"] if conditions is not None and conditions.style is not None else [])
        return _parse_guide(guide)

    def guidance_or_default(self, guidance: float | None, guided: Sequence[str] = ("text",)) -> float:
        """`guidance`, or when None the model's default for what is guided (what generate() runs
        with): the largest `guidance_by_guide` entry among `guided`, else `default_guidance`."""
        if guidance is not None:
            return float(guidance)
        return max((self.guidance_by_guide[g] for g in guided if g in self.guidance_by_guide),
                   default=self.default_guidance)

    @property
    def shape_critic(self):
        """The model's shape critic (None: no shape guidance)."""
        return getattr(self.autoencoder, "shape_critic", None)

    def shape_guidance_or_default(self, shape_guidance: float | None, conditions: ConditionSet | None = None) -> float:
        """`shape_guidance`, or when None the model's default where the prompt alone sets the
        layout (no condition but a style), else 0: a motion, depth, sketch, mask or image condition
        already constrains the object, and the critic's step fights it (measured on the suite:
        sketch F1 0.58 -> 0.47, motion-vector direction 23 -> 22 of 24; docs/embedded-model-history.md).
        0 without a shape critic."""
        return self._prompt_led(shape_guidance, self.default_shape_guidance, conditions)

    def track_guidance_or_default(self, track_guidance: float | None, conditions: ConditionSet | None = None) -> float:
        """`track_guidance`, or when None the model's default where the prompt alone sets the
        layout (as `shape_guidance_or_default`: a motion condition already sets the motion); 0
        without a shape critic (whose colours find the objects)."""
        return self._prompt_led(track_guidance, self.default_track_guidance, conditions)

    def _prompt_led(self, value: float | None, default: float, conditions: ConditionSet | None) -> float:
        if value is not None:
            return float(value)
        if self.shape_critic is None or (conditions is not None and set(conditions.present()) - {"style"}):
            return 0.0
        return default

    def motion_guidance_or_default(self, motion_guidance: float | None, conditions: ConditionSet | None = None) -> float:
        """`motion_guidance`, or when None the model's default; 0 without a motion condition (it
        steers towards that field)."""
        if conditions is None or conditions.motion is None:
            return 0.0
        return float(self.default_motion_guidance if motion_guidance is None else motion_guidance)

    def shape_targets(self, prompt: str) -> list:
        """The objects of `prompt` that shape guidance steers ([] without a shape critic)."""
        from vcomp.engine.shape_guidance import shape_targets

        critic = self.shape_critic
        return shape_targets(prompt, critic.shapes, critic.colours) if critic is not None else []

    def track_targets(self, prompt: str) -> list:
        """The objects of `prompt` with a named motion that track guidance steers ([] without a shape critic)."""
        from vcomp.engine.track_guidance import track_targets

        critic = self.shape_critic
        return track_targets(prompt, critic.shapes, critic.colours) if critic is not None else []

    def describe(self) -> dict:
        cfg = self.unet.cfg
        return {"preset": self.preset, "device": str(self.device),
                "dtype": str(self.autocast_dtype or torch.float32).replace("torch.", ""),
                "latent": [self.autoencoder.latent_channels, self.autoencoder.factor],
                "size": list(self.default_size), "num_frames": self.default_frames,
                "guidance": {"default": self.default_guidance, **({"by_guide": dict(self.guidance_by_guide)}
                                                                   if self.guidance_by_guide else {})},
                "shape_guidance": self.default_shape_guidance if self.shape_critic is not None else None,
                "track_guidance": self.default_track_guidance if self.shape_critic is not None else None,
                "shape_outline": self.shape_outline if self.shape_critic is not None else None,
                "motion_guidance": self.default_motion_guidance,
                "unet": {"name": cfg.name, "in_dim": cfg.in_dim, "context_dim": cfg.context_dim,
                         "style_dim": cfg.style_dim}, "weights": self.weights}

    # ------------------------------------------------------------------ generation

    def generate(self, conditions: ConditionSet | None, prompt: str = "", *, negative_prompt: str = "",
                 steps: int = 50, guidance: float | None = None, guide: Sequence[str] | str | None = None,
                 eta: float = 0.0, seed: int = 0, num_frames: int | None = None,
                 size: tuple[int, int] | None = None, source_frames: np.ndarray | None = None,
                 keep_known: str = "both", progress: Callable[[int, int], None] | None = None,
                 shape_guidance: float | None = None, track_guidance: float | None = None,
                 motion_guidance: float | None = None) -> GenerationResult:
        """Generate one video.

        guide: what the unconditional branch drops (names from GUIDABLE). None = the published
            behaviour: "text", plus "style" when a style is given.
        num_frames: default = the conditions' frame count, else 16. size: (W, H), default the
            preset's (64 x 64 tiny, 256 x 256 official).
        source_frames: RGB uint8 [T, H, W, 3] of the source video, needed with a mask (inpainting).
        keep_known (inpainting): "latent" = replace the kept region of x_t every step, "pixels" =
            paste the source outside the mask after decoding, "both" (default) or "none".
        progress: `progress(done, total)` after every DDIM step.
        shape_guidance: strength of shape guidance (vcomp.engine.shape_guidance) for a model with a
            shape critic; None = the model's default when no condition but a style is given, else 0
            (`shape_guidance_or_default`); 0 = off. It acts on the prompt's "{colour} {shape}"
            pairs; a prompt without any is sampled without it.
        track_guidance: strength of track guidance (vcomp.engine.track_guidance), the same way: it
            moves each "{colour} {shape} moving {direction}" (or "standing still") the named way.
        motion_guidance: strength of motion guidance (vcomp.engine.motion_guidance): with a motion
            condition, the clip is steered to move as its field says pixel by pixel; None = the
            model's default (`motion_guidance_or_default`), 0 = off; no effect without a motion
            condition.
        """
        timings: dict[str, float] = {}
        start = time.perf_counter()
        conditions = conditions if conditions is not None else ConditionSet()
        if keep_known not in KEEP_KNOWN:
            raise InputError(f"keep_known must be one of {', '.join(KEEP_KNOWN)}, got {keep_known!r}")
        from vcomp.engine.sampling import MAX_STEPS

        if not 1 <= int(steps) <= MAX_STEPS:
            raise InputError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
        if eta < 0:
            raise InputError(f"eta must be >= 0, got {eta}")
        guided = self.guided_names(conditions, guide)
        frames = int(num_frames or conditions.num_frames or self.default_frames)
        width, height = size or self.default_size
        ae, unet = self.autoencoder, self.unet
        cell = ae.factor * unet.cfg.latent_multiple
        if width % cell or height % cell or frames < 1:
            raise InputError(f"size {width}x{height} must be a multiple of {cell} pixels for the {self.preset} model")
        h, w = height // ae.factor, width // ae.factor

        guidance = self.guidance_or_default(guidance, guided)
        for kind, value in (("shape", shape_guidance), ("track", track_guidance), ("motion", motion_guidance)):
            if value is not None and value < 0:
                raise InputError(f"{kind} guidance must be >= 0, got {value}")
            if value and kind != "motion" and self.shape_critic is None:
                raise InputError(f"{kind} guidance needs a model with a shape critic (add one with "
                                 f"`vcomp train-shape-critic`); leave --{kind}-guidance out or set it to 0")
        shape_scale = self.shape_guidance_or_default(shape_guidance, conditions)
        track_scale = self.track_guidance_or_default(track_guidance, conditions)
        motion_scale = self.motion_guidance_or_default(motion_guidance, conditions)
        inputs = self.adapter.prepare(conditions, frames, (width, height), source_frames)
        from vcomp.model.adapters import MODEL_NAMES

        for name in guided:
            present = (name == "text" or (name == "style" and inputs.style is not None)
                       or MODEL_NAMES.get(name) in inputs.conditions)
            if not present:
                raise InputError(f"cannot guide {name!r}: it is not among the given conditions "
                                 f"({', '.join(conditions.present()) or 'none'})")
        dropped = {MODEL_NAMES[n] for n in guided if n in MODEL_NAMES}
        timings["prepare"] = time.perf_counter() - start

        from vcomp.engine import Branch, KnownRegion, denoise, get_noise, get_scheduler, make_eps_fn

        dev = self.device
        with torch.inference_mode(), self._autocast():
            t0 = time.perf_counter()
            tokens, unknown = self.encode_text([prompt, negative_prompt])
            context_c = tokens[:1]
            context_u = tokens[1:] if "text" in guided else context_c
            timings["text"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            style_c = inputs.style.to(dev) if inputs.style is not None else None
            style_u = torch.zeros_like(style_c) if (style_c is not None and "style" in guided) else style_c
            # each condition is encoded once: uncond = the kept ones, cond = kept + guided (a sum)
            conds = {k: v.to(dev) for k, v in inputs.conditions.items()}
            kept = {k: v for k, v in conds.items() if k not in dropped}
            guided_conds = {k: v for k, v in conds.items() if k in dropped}
            grid = unet.condition_grid((h, w))
            feats_u = unet.encode_conditions(kept, 1, frames, grid).float() if kept else None
            feats_g = unet.encode_conditions(guided_conds, 1, frames, grid).float() if guided_conds else None
            feats_c = feats_g if feats_u is None else (feats_u if feats_g is None else feats_u + feats_g)
            timings["conditions"] = time.perf_counter() - t0

        with torch.inference_mode():
            cond = Branch(context_c, style_c, feats_c)
            uncond = Branch(context_u, style_u, feats_u) if float(guidance) != 1.0 else None
            scheduler = get_scheduler(int(steps), device=dev,
                                      zero_terminal_snr=bool(getattr(unet.cfg, "zero_terminal_snr", False)))
            # hand the scheduler the prediction it steps on (its config says which)
            output = "v" if scheduler.config.prediction_type == "v_prediction" else "eps"
            eps_fn = make_eps_fn(unet, cond, uncond, float(guidance), self.autocast_dtype, scheduler.alphas_cumprod,
                                 output=output)
            targets = self.shape_targets(prompt) if shape_scale > 0 else []
            tracks = self.track_targets(prompt) if track_scale > 0 else []
            if targets or tracks:
                from vcomp.engine.shape_guidance import shape_guided

                eps_fn = shape_guided(eps_fn, lambda z: ae.decode(z, refine=False), self.shape_critic, targets,
                                      scheduler.alphas_cumprod, shape_scale, output=output, tracks=tracks,
                                      track_scale=track_scale, outline=self.shape_outline)
            if motion_scale > 0:
                from vcomp.conditions.motion import resize_motion
                from vcomp.engine.motion_guidance import field_moves, motion_guided

                motion_field = torch.from_numpy(resize_motion(conditions.motion, (width, height))).to(dev)
                if not field_moves(motion_field):
                    motion_scale = 0.0  # a still field is not guided (engine.motion_guidance); info says so
                eps_fn = motion_guided(eps_fn, lambda z: ae.decode(z, refine=False), motion_field,
                                       scheduler.alphas_cumprod, motion_scale, output=output)
            noise = get_noise((1, ae.latent_channels, frames, h, w), seed, dev,
                              shared=getattr(unet.cfg, "noise_shared", 0.0))
            known = hole = source = None
            if inputs.known is not None and keep_known != "none":
                source, hole = inputs.known.to(dev), inputs.hole.to(dev)
                if keep_known in ("latent", "both"):
                    with self._autocast():
                        known_latent = ae.encode(source).float()
                    hole_latent = torch.nn.functional.adaptive_max_pool3d(hole, (frames, h, w))
                    known = KnownRegion(known_latent, 1.0 - hole_latent, noise)
            generator = torch.Generator("cpu").manual_seed(int(seed) + 1) if eta > 0 else None
            t0 = time.perf_counter()
            latent = denoise(eps_fn, noise, scheduler, eta=float(eta), generator=generator, known=known,
                             callback=progress)
            timings["sampling"] = time.perf_counter() - t0
            timings["per_step"] = timings["sampling"] / int(steps)

            t0 = time.perf_counter()
            with self._autocast():
                video = ae.decode(latent, context=context_c).float()  # the prompt refiner (if any) reads the prompt
            if hole is not None and keep_known in ("pixels", "both"):
                video = hole * video + (1.0 - hole) * source
            frames_out = _uint8_frames(video)
            timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start

        info = {
            "model": self.preset, "weights": self.weights, "device": str(dev),
            "dtype": str(self.autocast_dtype or torch.float32).replace("torch.", ""),
            "seed": int(seed), "steps": int(steps), "guidance": float(guidance), "guide": guided, "eta": float(eta),
            "shape_guidance": shape_scale if targets else 0.0, "track_guidance": track_scale if tracks else 0.0,
            "shape_outline": self.shape_outline if targets else 0.0, "motion_guidance": motion_scale,
            "num_frames": frames, "size": [width, height], "prompt": prompt, "negative_prompt": negative_prompt,
            "conditions": conditions.present(), "model_conditions": sorted(inputs.conditions),
            "keep_known": keep_known if inputs.known is not None else None,
            "unknown_words": unknown, "notes": self.notes + inputs.notes,
            "timings": {k: round(v, 4) for k, v in timings.items()},
        }
        return GenerationResult(frames_out, info)
