"""Where weights live, which published files vcomp knows, and what each one is used for.

Lookup folder: `--weights DIR` (`weights_dir`), else `$VCOMP_HOME`, else `~/.cache/vcomp`. A file is
found as `<folder>/<name>` or `<folder>/model_weights/<name>` (the published repository's layout).
For every `.pth` / `.ckpt` / `.bin` file a `.safetensors` file with the same stem is preferred when
present (it loads without unpickling anything). Nothing is ever downloaded.

The embedded model ships inside the package: `vcomp/assets/embedded.safetensors` + `embedded.json`
($VCOMP_ASSETS points at another folder holding these two files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from vcomp.errors import InputError, WeightsError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_WEIGHTS = "embedded.safetensors"
EMBEDDED_CONFIG = "embedded.json"
ALLOW_RANDOM_ENV = "VCOMP_ALLOW_RANDOM"
ASSETS_ENV = "VCOMP_ASSETS"  # another folder for the embedded model (a development build, tests)


@dataclass(frozen=True)
class PublishedFile:
    key: str
    filename: str
    what: str  # what the file is
    used_for: str  # which part of vcomp uses it
    official: bool  # required by the `official` generation preset
    url_hint: str  # where the published file comes from (for the "not found" message)


PUBLISHED: tuple[PublishedFile, ...] = (
    PublishedFile("unet", "non_ema_228000.pth", "VideoComposer UNet (UNetSD_temporal, 1.41B params)",
                  "official preset: the denoiser", True, "VideoComposer's model_weights (ModelScope damo/VideoComposer)"),
    PublishedFile("vae", "v2-1_512-ema-pruned.ckpt", "Stable Diffusion 2.1 checkpoint (only first_stage_model = the VAE is used)",
                  "official preset: latent encoder/decoder", True, "stabilityai/stable-diffusion-2-1-base"),
    PublishedFile("clip", "open_clip_pytorch_model.bin", "OpenCLIP ViT-H-14 (laion2b_s32b_b79k)",
                  "official preset: text encoder; extract: style embedding", True, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    PublishedFile("midas", "midas_v3_dpt_large.pth", "MiDaS DPT-Large (VideoComposer's re-implementation)",
                  "extract: depth", False, "VideoComposer's model_weights"),
    PublishedFile("pidinet", "table5_pidinet.pth", "PiDiNet edge detector",
                  "extract: sketch", False, "VideoComposer's model_weights"),
    PublishedFile("sketch_gan", "sketch_simplification_gan.pth", "sketch simplification GAN (line cleaner)",
                  "extract: sketch (after PiDiNet)", False, "VideoComposer's model_weights"),
)
BY_KEY = {f.key: f for f in PUBLISHED}
OFFICIAL_KEYS = tuple(f.key for f in PUBLISHED if f.official)


def weights_home(weights_dir: str | os.PathLike | None = None) -> Path:
    """`weights_dir` (must exist), else $VCOMP_HOME, else ~/.cache/vcomp (may not exist yet)."""
    if weights_dir is not None:
        folder = Path(weights_dir).expanduser()
        if not folder.is_dir():
            raise InputError(f"weights folder {folder} does not exist; create it and put the weight files in it, "
                             "or point --weights / VCOMP_HOME at the folder that has them")
        return folder
    return Path(os.environ.get("VCOMP_HOME") or "~/.cache/vcomp").expanduser()


def candidates(filename: str, weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Paths tried for `filename`, in order (the .safetensors twin first)."""
    home = weights_home(weights_dir)
    names = [filename]
    stem, suffix = os.path.splitext(filename)
    if suffix in (".pth", ".ckpt", ".bin", ".pt"):
        names.insert(0, stem + ".safetensors")
    return [folder / name for name in names for folder in (home, home / "model_weights")]


def find(filename: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The first existing candidate for `filename`, else None."""
    return next((p for p in candidates(filename, weights_dir) if p.is_file()), None)


def find_published(key: str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    return find(BY_KEY[key].filename, weights_dir)


def require(key: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """The path of a published file, or a WeightsError naming it and where to put it."""
    from vcomp.errors import WeightsError

    path = find_published(key, weights_dir)
    if path is None:
        spec = BY_KEY[key]
        home = weights_home(weights_dir)
        raise WeightsError(
            f"{spec.filename} ({spec.what}) not found: put it in {home} (or {home / 'model_weights'}), "
            f"or pass --weights DIR / set VCOMP_HOME; it is published at {spec.url_hint}. "
            "Run `vcomp models` to see what is found."
        )
    return path


def embedded_paths(assets: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The embedded model's files in `assets`, else in $VCOMP_ASSETS, else in the package."""
    folder = Path(assets) if assets is not None else Path(os.environ.get(ASSETS_ENV) or ASSETS)
    return folder / EMBEDDED_WEIGHTS, folder / EMBEDDED_CONFIG


def assets_for(weights_dir: str | os.PathLike | None, assets: str | os.PathLike | None = None):
    """The embedded-model folder to load: `assets` if given; else `weights_dir` when it holds an
    embedded model (a `vcomp train --export` folder, so `--weights my_export/` runs a fine-tuned
    model instead of silently falling back to the shipped one); else None ($VCOMP_ASSETS or the
    package)."""
    if assets is None and weights_dir is not None and embedded_available(Path(weights_dir).expanduser()):
        return Path(weights_dir).expanduser()
    return assets


def embedded_available(assets: str | os.PathLike | None = None) -> bool:
    return all(p.is_file() for p in embedded_paths(assets))


def allow_random_from_env() -> bool:
    return os.environ.get(ALLOW_RANDOM_ENV, "") == "1"


def official_available(weights_dir: str | os.PathLike | None = None) -> bool:
    return all(find_published(k, weights_dir) is not None for k in OFFICIAL_KEYS)


def resolve_preset(weights_dir: str | os.PathLike | None = None, assets: str | os.PathLike | None = None,
                   allow_random: bool | None = None) -> tuple[str | None, str]:
    """(preset, reason) that `Pipeline.load(preset=None)` would pick: "official" when the UNet,
    the VAE and the CLIP file are all found; else "tiny" (the embedded model, or a random one
    when allowed); None when nothing can run."""
    assets = assets_for(weights_dir, assets)
    if official_available(weights_dir):
        return "official", "non_ema_228000.pth, the SD-2.1 VAE and OpenCLIP ViT-H-14 found"
    missing = [BY_KEY[k].filename for k in OFFICIAL_KEYS if find_published(k, weights_dir) is None]
    if embedded_available(assets):
        where = "" if assets is None else f" in {assets}"
        return "tiny", f"embedded model{where} (official files missing: {', '.join(missing)})"
    if allow_random if allow_random is not None else allow_random_from_env():
        return "tiny", f"randomly initialised tiny model ({ALLOW_RANDOM_ENV}=1; for tests only, output is noise)"
    return None, (f"no generator available: official files missing ({', '.join(missing)}) and the embedded "
                  "model is not in this installation yet (vcomp/assets/embedded.safetensors)")


def inventory(weights_dir: str | os.PathLike | None = None, assets: str | os.PathLike | None = None) -> dict:
    """Everything `vcomp models` reports, as plain data (JSON-ready)."""
    from vcomp.conditions import depth as depth_mod
    from vcomp.conditions import style as style_mod

    assets = assets_for(weights_dir, assets)

    home = weights_home(weights_dir)
    files = []
    for spec in PUBLISHED:
        path = find(spec.filename, weights_dir)
        files.append({
            "key": spec.key, "file": spec.filename, "what": spec.what, "used_for": spec.used_for,
            "found": path is not None, "path": str(path) if path else None,
            "size": path.stat().st_size if path else None,
            "expected_at": str(home / spec.filename),
        })
    weights_path, config_path = embedded_paths(assets)
    found = embedded_available(assets)
    files.append({
        "key": "embedded", "file": EMBEDDED_WEIGHTS, "what": "vcomp's embedded tiny model (+ embedded.json)",
        "used_for": "tiny preset: the fallback generator", "found": found,
        "path": str(weights_path) if found else None,
        "size": weights_path.stat().st_size + config_path.stat().st_size if found else None,
        "expected_at": str(weights_path),
        **(_embedded_settings(config_path) if found else dict(_NO_SETTINGS)),
    })
    have = {f["key"]: f["found"] for f in files}
    preset, reason = resolve_preset(weights_dir, assets)
    extractors = {
        "motion": "H.264 motion vectors (no weights needed)",
        "depth": depth_mod.HEURISTIC + (" (midas_v3_dpt_large.pth found, but its loader is not implemented yet)"
                                        if have["midas"] else " (fallback; MiDaS weights not found)"),
        "sketch": "canny" + (" (table5_pidinet.pth found, but the PiDiNet loader is not implemented yet)"
                             if have["pidinet"] else " (fallback; PiDiNet weights not found)"),
        "style": (f"open_clip-{style_mod.CLIP_MODEL} (1024-d)" if have["clip"]
                  else f"{style_mod.FALLBACK} (fallback, 64-d; OpenCLIP weights not found)"),
    }
    return {"weights_dir": str(home), "weights_dir_exists": home.is_dir(), "files": files,
            "generator": {"preset": preset, "reason": reason}, "extractors": extractors}


# The embedded model's default (embedded.json "sampling.guidance" overrides it). Measured on 8
# held-out text-only scenes (64 px, 20 steps): background colour right 88% at w = 2-6 but 50% at
# w = 9, frame consistency 0.91 / 0.88 / 0.84 / 0.78 at w = 2 / 4 / 6 / 9: w = 9 over-saturates a
# model this small (blue turns cyan).
EMBEDDED_GUIDANCE = 4.0


@dataclass(frozen=True)
class SamplingDefaults:
    """An embedded model's measured sampling defaults (embedded.json "sampling"): classifier-free
    guidance and its per-guide overrides, shape and track guidance, the shape step's outline
    weight and motion guidance. Absent entries are off (guidance: EMBEDDED_GUIDANCE), so an older
    export samples as it did."""

    guidance: float = EMBEDDED_GUIDANCE
    by_guide: dict[str, float] = field(default_factory=dict)
    shape_guidance: float = 0.0
    track_guidance: float = 0.0
    shape_outline: float = 0.0
    motion_guidance: float = 0.0


def sampling_defaults(sampling: dict, source) -> SamplingDefaults:
    """`SamplingDefaults` from an embedded.json "sampling" block; a malformed block is a corrupt
    model, reported as such rather than as a traceback."""
    try:
        strengths = {f.name: float(sampling.get(f.name, f.default)) for f in fields(SamplingDefaults)
                     if f.name != "by_guide"}
        by_guide = {str(k): float(v) for k, v in (sampling.get("guidance_by_guide") or {}).items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise WeightsError(f"embedded.json beside {source}: its 'sampling' block is malformed ({exc}); "
                           "restore the file or remove the block") from None
    return SamplingDefaults(by_guide=by_guide, **strengths)


_NO_SETTINGS = {"default_guidance": None, "temporal_refiner": None, "prompt_refiner": None, "shape_critic": None,
                "motion_guidance": None,
                "noise_schedule": None, "sampling_start": None}


def _sampling_start(scheduler) -> dict:
    """{"steps", "timestep", "spacing"}: the first timestep of a scheduler's sampling run."""
    return {"steps": len(scheduler.timesteps), "timestep": int(scheduler.timesteps[0]),
            "spacing": scheduler.config.timestep_spacing}


def _shape_critic_settings(record: dict, defaults: SamplingDefaults) -> dict | None:
    critic = (record.get("autoencoder") or {}).get("shape_critic")
    if critic is None:
        return None
    return {"shapes": list(critic.get("shapes") or []), "width": critic.get("width"),
            "shape_guidance": defaults.shape_guidance, "track_guidance": defaults.track_guidance,
            "shape_outline": defaults.shape_outline}


def _embedded_settings(config_path: Path) -> dict:
    """What the embedded model's embedded.json says a user may want to know: its measured default
    guidance ("default", per-guide "by_guide"; what --guidance falls back to), its temporal
    refiner's size (None: frames are decoded one by one), its prompt refiner's (None: none), its
    shape critic's classes with the default shape and track guidance (None: no critic), its default
    motion guidance (0: off), its noise schedule ("published" or "zero terminal SNR") and where default sampling starts (the
    scheduler's first timestep and spacing, read from the scheduler itself); None values when it
    cannot be read."""
    import json

    from vcomp.engine.sampling import DEFAULT_STEPS, get_scheduler

    try:
        record = json.loads(config_path.read_text())
        sampling = record.get("sampling") or {}
        defaults = sampling_defaults(sampling, config_path)
        zero = bool((record.get("model") or {}).get("zero_terminal_snr", False))
        return {"default_guidance": {"default": sampling.get("guidance"),
                                     "by_guide": dict(sampling.get("guidance_by_guide") or {})},
                "temporal_refiner": (record.get("autoencoder") or {}).get("temporal_refiner"),
                "prompt_refiner": (record.get("autoencoder") or {}).get("prompt_refiner"),
                "shape_critic": _shape_critic_settings(record, defaults),
                "motion_guidance": defaults.motion_guidance,
                "noise_schedule": "zero terminal SNR" if zero else "published",
                "sampling_start": _sampling_start(get_scheduler(DEFAULT_STEPS, zero_terminal_snr=zero))}
    except (OSError, ValueError, AttributeError, TypeError, WeightsError):
        return dict(_NO_SETTINGS)


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
