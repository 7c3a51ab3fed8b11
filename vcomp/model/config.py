"""Model configurations: the published VideoComposer UNet and the embedded tiny model.

Sizes are data, not code paths: both presets build the same classes (`vcomp.model.unet3d`).
This module imports no torch, so the CLI can list presets without loading it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from vcomp.errors import InputError

# Spatial/temporal conditions the UNet can encode, in the order the published state_dict
# registers their encoders, with the channel count each encoder takes.
CONDITION_CHANNELS: dict[str, int] = {
    "depth": 1,  # MiDaS disparity / 20, clamped to [0, 10]; larger = nearer
    "motion": 2,  # motion vectors (x, y), pixels per frame
    "masked": 4,  # RGB in [-1, 1] with hole pixels = 0, then a keep-mask (1 = keep, 0 = hole)
    "sketch": 1,  # line drawing, lines = 1 on a 0 background
    "single_sketch": 1,  # one sketch (frame 0), repeated over time
    "local_image": 3,  # one RGB image in [0, 1] (frame 0), repeated over time
}
# Conditions that are one image for the whole clip; they may be passed as [B, C, H, W].
SINGLE_FRAME_CONDITIONS = ("single_sketch", "local_image")
# What a UNet may predict (`ModelConfig.prediction`; vcomp.engine.parameterization converts to eps).
PREDICTIONS = ("eps", "v")
# The order in which the published forward adds the encoded conditions together.
FUSION_ORDER = ("depth", "local_image", "motion", "sketch", "single_sketch", "masked")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of `UNet3D` (VideoComposer's `UNetSD_temporal`).

    Field names follow the published constructor where one exists (`in_dim`, `concat_dim`,
    `dim_mult`, `attn_scales`, ...), so `unet_config.json` reads across directly.
    """

    name: str = "custom"
    # latent video
    in_dim: int = 4  # channels of the noisy latent x_t
    out_dim: int = 4  # channels predicted (eps)
    latent_scale: int = 8  # pixels per latent cell (the autoencoder's down-sampling factor)
    sample_size: int | None = None  # frame side (px) the model is made for; None = 16 latent cells
    # latent cells per UNet cell along each side (DiT's patch size; not in the paper's code): 2 folds
    # each 2 x 2 block of latent cells into channels (in_dim * 4 in, out_dim * 4 out) so the UNet
    # runs on half the latent's grid. Why: a finer latent (factor 4) keeps the embedded model's
    # small objects' outlines and motion that factor 8 loses, and with a patch of 2 the UNet costs
    # what it did on the factor-8 grid (a factor-4 grid unfolded cost 3.4 s per training step
    # against 2.2).
    latent_patch: int = 1
    # UNet trunk
    dim: int = 320  # base width; the time embedding is 4 * dim
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # resolutions (1 = full) with attention
    head_dim: int = 64  # every transformer uses width // head_dim heads ...
    num_heads: int = 8  # ... except the first temporal transformer: num_heads * head_dim wide
    norm_groups: int = 32
    dropout: float = 0.1  # ResBlock dropout
    temporal_conv_dropout: float = 0.1  # dropout inside each ResBlock's temporal conv stack
    attn_dropout: float = 0.0
    # temporal attention
    temporal_attention: bool = True
    temporal_attn_times: int = 1  # transformer blocks per TemporalTransformer
    temporal_rel_pos_bias: bool = False  # learned relative-position bias (not in the paper's code)
    temporal_max_distance: int = 16  # relative distances are clipped to +-this (if enabled)
    # absolute frame positions (sinusoidal, through a zero-initialised linear map) added to the
    # temporal transformers' tokens (not in the paper's code). Why: with only a relative bias and
    # the text entering per frame, nothing tells a frame where it is in the clip, and the embedded
    # model's objects moved in directions unrelated to the caption's direction word. Zero-initialised,
    # so it can be switched on for a trained model (`vcomp train --init M --model-json
    # '{"temporal_frame_pos": true}'`) which then starts out computing exactly what it did.
    temporal_frame_pos: bool = False
    # attention of the temporal transformers' tokens to the text (and style) context, through a
    # zero-initialised output map (not in the paper's code). Why: a caption's direction word
    # ("moving left") is a statement about how frames differ, but the published design lets text
    # reach only the per-frame spatial transformers; here the layer that sees all frames of a pixel
    # also reads the caption. Addable to a trained model like `temporal_frame_pos`.
    temporal_text_attention: bool = False
    # the frame's index (sinusoidal, through an MLP whose last layer is zero-initialised) added to
    # the timestep embedding of that frame, so every ResBlock knows which frame it is drawing (not
    # in the paper's code). Why: to draw an object where "moving left" puts it in frame t, the
    # per-frame layers that read the caption need t; the temporal layers alone did not teach the
    # embedded model direction words. Addable to a trained model like `temporal_frame_pos`.
    frame_index_embedding: bool = False
    # caption features times the clip's coordinates (frame x cell: f*x, f*y, f, x, y) added to the
    # first feature map (`blocks.TextCoordinates`, not in the paper's code). Why: drawing "moving
    # left" takes the product caption x frame x position; made of zero-initialised factors that
    # product is a saddle no embedded-model run escaped (direction sensitivity 1.000 after
    # `frame_index_embedding` and `--snr-floor`); formed up front, its gradient is first-order.
    # Addable to a trained model like `temporal_frame_pos`.
    text_coordinates: bool = False
    # text and style context (cross-attention tokens)
    context_dim: int = 1024  # width of text tokens (OpenCLIP ViT-H-14: 1024)
    text_len: int = 77  # tokens of the null-text embedding `zero_y`
    style_dim: int = 1024  # width of the style-image embedding fed to pre_image_condition
    # the style embedding is multiplied by this before pre_image_condition. Why: the tiny model's
    # colour-statistics embedding has unit length, so its 64 inputs are ~0.12 each, and under Adam
    # the style token then moves ~8x slower than inputs of unit scale would let it; the first
    # shipped models' style token stayed at norm 1-2.5 beside text tokens of norm ~10 and the
    # style was ignored. sqrt(style_dim) gives unit-scale inputs. 1.0 = the published model.
    style_scale: float = 1.0
    # STC encoders (one per spatial/temporal condition)
    conditions: tuple[str, ...] = tuple(CONDITION_CHANNELS)
    # where the single-frame conditions (SINGLE_FRAME_CONDITIONS: the first frame's image and
    # sketch) enter: "all" frames (the published pipeline repeats them) or the "first" frame only.
    # Why "first": repeated, their features are the same in every frame and the UNet cannot tell
    # which frame the image shows (the fourth embedded model ignored both: held-out loss with the
    # image 0.96 of the loss without it); at frame 0 only they pin that frame, the rest follows.
    single_frame_at: str = "all"
    concat_dim: int = 8  # channels of the summed condition feature map
    stc_hidden: int = 32  # conv width of each condition encoder
    stc_pool_size: int | None = 128  # AdaptiveAvgPool size; None = 4 x latent grid
    stc_heads: int = 2
    stc_dim_head: int | None = None  # None = concat_dim
    stc_ff_mult: int = 4
    stc_depth: int = 1
    stc_dropout: float = 0.05
    # training-time condition dropout (identity in eval mode)
    misc_dropout: float = 0.5  # each condition / text / style dropped independently
    p_all_zero: float = 0.1  # fraction of samples with every condition dropped
    p_all_keep: float = 0.1  # fraction of samples with every condition kept
    use_checkpoint: bool = False  # gradient checkpointing per UNet block (training only)
    # what the UNet outputs: "eps" (the noise, as published) or "v" (velocity sqrt(ab) eps - sqrt(1-ab) x0);
    # the engine turns either into eps (vcomp.engine.parameterization)
    prediction: str = "eps"
    # fraction of the diffusion noise's variance common to all frames, in training and sampling
    # (vcomp.engine.share_across_frames; PYoCo's mixed prior). 0 = independent noise, as published.
    noise_shared: float = 0.0
    # the noise schedule: False = the published scaled-linear betas, whose last step keeps
    # sqrt(alpha_bar) = 0.068 of the clip; True = the same betas rescaled so alpha_bar reaches 0 at
    # t = 999, sampled with "trailing" steps from t = 999 (Lin et al. 2024, "Common diffusion noise
    # schedules and sample steps are flawed"). Why: on a latent of 8 x 8 cells x 16 frames that
    # remnant tells where the objects are, so a model never learns to place them from the text, and
    # at sampling the starting noise decides the layout. Needs v-prediction (eps is x_t at t = 999).
    zero_terminal_snr: bool = False
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        bad = [c for c in self.conditions if c not in CONDITION_CHANNELS]
        if bad:
            raise ValueError(f"unknown condition(s) {bad}; known: {list(CONDITION_CHANNELS)}")
        widths = [self.dim * m for m in self.dim_mult]
        for w in widths:
            if w % self.norm_groups or w % self.head_dim:
                raise ValueError(f"width {w} must divide by norm_groups and head_dim")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.single_frame_at not in ("all", "first"):
            raise ValueError(f"single_frame_at must be 'all' or 'first', got {self.single_frame_at!r}")
        if not 0.0 <= self.noise_shared < 1.0:
            raise ValueError(f"noise_shared must be in [0, 1), got {self.noise_shared}")
        if self.zero_terminal_snr and self.prediction != "v":
            raise ValueError("zero_terminal_snr needs prediction 'v' (at alpha_bar = 0 the noise is x_t itself)")
        if self.stc_pool_size is not None and self.stc_pool_size % 4:
            raise ValueError("stc_pool_size must be a multiple of 4 (two stride-2 convs)")
        if self.latent_patch < 1:
            raise ValueError(f"latent_patch must be at least 1, got {self.latent_patch}")

    @property
    def embed_dim(self) -> int:
        return 4 * self.dim

    @property
    def latent_multiple(self) -> int:
        """Latent cells a frame side must be a multiple of: one patch (`latent_patch`), halved
        at every level below the top."""
        return self.latent_patch * 2 ** (len(self.dim_mult) - 1)

    @property
    def default_size(self) -> int:
        """Frame side in pixels that generation and training use unless told otherwise."""
        return self.sample_size or 16 * self.latent_scale

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {unknown}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


OFFICIAL = ModelConfig(
    name="official",
    sample_size=256,
    use_checkpoint=True,
    notes="VideoComposer UNetSD_temporal, non_ema_228000.pth: 1,413,435,636 parameters. "
    "Latent 4 x 32 x 32 for 256 x 256 video (SD-2.1 VAE), conditions at 384^2 (motion 256^2).",
)

TINY = ModelConfig(
    name="tiny",
    # latent: a small AutoencoderKL trained on the world (vcomp.train.autoencoder), factor 8, 8
    # channels, so 64 x 64 px -> 8 x 8 cells. The first release used a parameter-free pixel
    # unshuffle (48 x 16 x 16), where one guided DDIM step cost 0.55 s on 2 cores; here 0.19 s.
    in_dim=8,
    out_dim=8,
    latent_scale=8,
    sample_size=64,
    dim=64,
    dim_mult=(1, 1, 1),
    num_res_blocks=1,
    attn_scales=(1.0, 0.5, 0.25),
    head_dim=32,
    num_heads=1,
    norm_groups=8,
    dropout=0.0,
    temporal_conv_dropout=0.0,
    temporal_rel_pos_bias=True,
    context_dim=128,
    text_len=32,  # tokens: <bos> + up to 30 words + <eos> (the world's captions reach 22 words)
    style_dim=64,  # the colour-statistics style embedding (vcomp.conditions.style, colour-stats-v1)
    style_scale=8.0,  # sqrt(64): unit-scale inputs (models trained before it existed load with 1.0)
    stc_pool_size=None,
    # v-prediction: an eps-predicting tiny UNet in pixel-unshuffle space had to pass x_t through almost
    # unchanged at high noise, and its small errors there were amplified ~14x in x0 (measured: eps MSE
    # 0.03 at t = 900 after 1,600 steps, 15x the trivial eps = x_t, and DDIM drifted to noise); with
    # v the pass-through is exact (eps = sqrt(ab) v + sqrt(1 - ab) x_t)
    prediction="v",
    notes="Embedded model: 64 x 64 px video -> 8 x 8 latent cells (a 1 M-parameter AutoencoderKL "
    "trained on the procedural world), 16 frames; UNet width 64 at 8/4/2 latent cells, attention at "
    "every level; 64-d colour-statistics style.",
)

PRESETS: dict[str, ModelConfig] = {"official": OFFICIAL, "tiny": TINY}


def describe_trained(cfg: ModelConfig) -> str:
    """The `notes` line of a model `vcomp train` made, rebuilt from its config on every run.
    Why: free text inherited through `--init` once told two releases they had an 8-channel
    latent after the latent had moved to 16 channels."""
    grid = cfg.sample_size // cfg.latent_scale
    cells = "/".join(str(grid // cfg.latent_patch // 2 ** i) for i in range(len(cfg.dim_mult)))
    patch = f" in {cfg.latent_patch} x {cfg.latent_patch} patches" if cfg.latent_patch > 1 else ""
    widths = "/".join(str(cfg.dim * m) for m in dict.fromkeys(cfg.dim_mult))
    attention = "every level" if len(cfg.attn_scales) == len(cfg.dim_mult) else \
        "scales " + "/".join(f"{a:g}" for a in cfg.attn_scales) if cfg.attn_scales else "no level"
    schedule = ", zero terminal SNR" if cfg.zero_terminal_snr else ""
    return (f"Trained by vcomp train: {cfg.sample_size} x {cfg.sample_size} px video -> {cfg.in_dim} x {grid} x {grid} "
            f"latent per frame (factor {cfg.latent_scale}){patch}; UNet width {widths} at {cells} latent cells, attention at "
            f"{attention}; predicts {cfg.prediction}{schedule}; {cfg.style_dim}-d style.")


def get_config(name_or_config: str | ModelConfig, **overrides) -> ModelConfig:
    """A preset by name (or a config passed through), with optional field overrides."""
    if isinstance(name_or_config, ModelConfig):
        cfg = name_or_config
    else:
        try:
            cfg = PRESETS[name_or_config]
        except KeyError:
            raise InputError(f"unknown model preset {name_or_config!r}; choose one of {sorted(PRESETS)}") from None
    return replace(cfg, **overrides) if overrides else cfg
