"""The VideoComposer 3D UNet (published `UNetSD_temporal`), read top to bottom.

    conditions --STC encoders--> summed into concat_dim channels --+
    x_t [B, in_dim, T, h, w] ------------------------------------ cat --> UNet --> eps
    text tokens (+ style token via pre_image_condition) --> cross-attention context

The spatial trunk is Stable Diffusion 2.1's UNet (ResBlocks + SpatialTransformers); every
ResBlock gains a temporal conv stack and every attention level a TemporalTransformer.
`ModelConfig` presets: "official" reproduces the published state_dict exactly (1574 keys,
1,413,435,636 parameters); "tiny" is the same classes at a few million parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from vcomp.errors import InputError
from vcomp.model.blocks import (
    Downsample,
    ResBlock,
    SpatialTransformer,
    TemporalTransformer,
    TextCoordinates,
    Upsample,
    frame_positions,
    timestep_embedding,
    zero_module,
)
from vcomp.model.config import CONDITION_CHANNELS, FUSION_ORDER, SINGLE_FRAME_CONDITIONS, ModelConfig
from vcomp.model.stc_encoder import FrameEncoder, TemporalMixer, module_names, stc_encode


class UNet3D(nn.Module):
    """Predicts the noise of a latent video given text, style and spatial/temporal conditions.

    Conditions (all optional; `cfg.conditions` says which encoders exist), `[B, C, T, H, W]`
    (any H, W; they are pooled onto the latent grid) with B equal to the batch or 1:

    ==============  ==  =====================================================================
    name            C   content
    ==============  ==  =====================================================================
    depth           1   disparity / 20 clamped to [0, 10] (published MiDaS scaling)
    motion          2   motion vectors (x, y) in pixels per frame, +x right, +y down
    masked          4   RGB in [-1, 1] with hole pixels 0, then keep-mask (1 keep, 0 hole)
    sketch          1   line drawing per frame, lines 1 on background 0
    single_sketch   1   one sketch for the clip: [B, 1, H, W] or [B, 1, 1, H, W]
    local_image     3   one RGB image in [0, 1] for the clip: [B, 3, H, W] or [B, 3, 1, H, W]
    ==============  ==  =====================================================================

    Any condition may be given as one image ([B, C, H, W] or T = 1); it is then used for
    every frame, as the published pipeline does by repeating it. With
    `cfg.single_frame_at="first"` the single-frame conditions (first image, single sketch) add
    their features at frame 0 only.

    Fusion: each present condition is encoded to `[B, concat_dim, T, h, w]` and the
    encodings are SUMMED; the sum is concatenated to x_t along channels. An absent
    condition (missing or None) contributes exactly zero to that sum - note this is not
    the same as passing an all-zero input, whose encoding is not zero (conv biases).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim, emb_dim, groups = cfg.dim, cfg.embed_dim, cfg.norm_groups
        # registration order == published state_dict order
        self.time_embed = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.pre_image_condition = nn.Sequential(  # style image embedding -> one context token
            nn.Linear(cfg.style_dim, cfg.context_dim),
            nn.SiLU(),
            nn.Linear(cfg.context_dim, cfg.context_dim),
        )
        for name in CONDITION_CHANNELS:
            if name in cfg.conditions:
                conv_name, mixer_name = module_names(name)
                self.add_module(
                    conv_name, FrameEncoder(CONDITION_CHANNELS[name], cfg.stc_hidden, cfg.concat_dim, cfg.stc_pool_size)
                )
                mixer = TemporalMixer(
                    cfg.concat_dim, cfg.stc_heads, cfg.stc_dim_head, cfg.stc_ff_mult, cfg.stc_depth, cfg.stc_dropout
                )
                self.add_module(mixer_name, mixer)

        def res(cin, cout):
            return ResBlock(cin, emb_dim, cout, cfg.dropout, groups, cfg.temporal_conv_dropout)

        def attn(c):
            layers = [
                SpatialTransformer(c, c // cfg.head_dim, cfg.head_dim, cfg.context_dim, 1, cfg.attn_dropout, groups)
            ]
            return layers + temporal(c)

        def temporal(c, heads=None):
            if not cfg.temporal_attention:
                return []
            rel = cfg.temporal_max_distance if cfg.temporal_rel_pos_bias else None
            heads = heads or c // cfg.head_dim
            depth, drop = cfg.temporal_attn_times, cfg.attn_dropout
            text_dim = cfg.context_dim if cfg.temporal_text_attention else None
            return [TemporalTransformer(c, heads, cfg.head_dim, depth, drop, groups, rel, cfg.temporal_frame_pos,
                                        text_dim)]

        # encoder
        widths = [dim * m for m in cfg.dim_mult]
        self.input_blocks = nn.ModuleList(
            [nn.ModuleList([nn.Conv2d(cfg.in_dim * cfg.latent_patch**2 + cfg.concat_dim, dim, 3, padding=1)]
                           + temporal(dim, cfg.num_heads))]
        )
        skips, cin, scale = [dim], dim, 1.0
        for level, cout in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                block = [res(cin, cout)] + (attn(cout) if scale in cfg.attn_scales else [])
                self.input_blocks.append(nn.ModuleList(block))
                skips.append(cout)
                cin = cout
            if level != len(widths) - 1:
                self.input_blocks.append(Downsample(cout))  # not wrapped: key `input_blocks.N.op`
                skips.append(cout)
                scale /= 2

        # middle
        self.middle_block = nn.ModuleList([res(cin, cin)] + attn(cin) + [res(cin, cin)])

        # decoder
        self.output_blocks = nn.ModuleList()
        for level, cout in reversed(list(enumerate(widths))):
            for j in range(cfg.num_res_blocks + 1):
                block = [res(cin + skips.pop(), cout)]
                block += attn(cout) if scale in cfg.attn_scales else []
                if level != 0 and j == cfg.num_res_blocks:
                    block.append(Upsample(cout))
                    scale *= 2
                self.output_blocks.append(nn.ModuleList(block))
                cin = cout

        self.out = nn.Sequential(
            nn.GroupNorm(groups, dim),
            nn.SiLU(),
            zero_module(nn.Conv2d(dim, cfg.out_dim * cfg.latent_patch**2, 3, padding=1)),
        )
        # per-frame embedding of the frame index, added to the timestep embedding (ModelConfig)
        self.frame_embed = nn.Sequential(
            nn.Linear(dim, emb_dim), nn.SiLU(), zero_module(nn.Linear(emb_dim, emb_dim))
        ) if cfg.frame_index_embedding else None
        # caption x clip coordinates, added after the first conv (ModelConfig.text_coordinates)
        self.text_coords = TextCoordinates(cfg.context_dim, dim) if cfg.text_coordinates else None
        # The null-text tokens used when `context` is None. The published model stores the
        # text encoder's embedding of "" here (not zeros); set it with `set_null_text`.
        # Not part of the state_dict, like the published plain attribute.
        self.register_buffer("zero_y", torch.zeros(1, cfg.text_len, cfg.context_dim), persistent=False)

    # ------------------------------------------------------------------ public helpers

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @torch.no_grad()
    def set_null_text(self, tokens: torch.Tensor) -> None:
        """Store the text encoder's output for "" ([1, L, context_dim]) as the null text."""
        if tokens.ndim != 3 or tokens.shape[0] != 1 or tokens.shape[2] != self.cfg.context_dim:
            raise InputError(f"null text must be [1, L, {self.cfg.context_dim}], got {list(tokens.shape)}")
        self.zero_y = tokens.to(self.zero_y.device, self.zero_y.dtype).clone()

    def condition_grid(self, latent_grid: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) grid the condition features live on for a latent of `latent_grid` cells: the
        UNet's own, which is the latent's divided by `latent_patch`."""
        p = self.cfg.latent_patch
        h, w = latent_grid
        if h % p or w % p:
            raise InputError(f"a {h} x {w} latent does not fold into {p} x {p} patches (latent_patch={p}); "
                             f"use a frame size whose latent grid divides by {p}")
        return h // p, w // p

    def encode_conditions(
        self,
        conditions: Mapping[str, torch.Tensor | None] | None,
        batch: int,
        frames: int,
        grid: tuple[int, int],
        drop: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The summed condition features [batch, concat_dim, frames, *grid], `grid` being the UNet's
        (`condition_grid` of the latent's).

        Absent conditions add nothing; with none present the result is all zeros. The
        features do not depend on x_t or t, so a sampler may compute them once and pass
        them to every step as `forward(..., cond_features=...)`.
        `drop` (training only): per-sample multipliers [B] for each condition name.
        """
        conditions = {k: v for k, v in (conditions or {}).items() if v is not None}
        self._check_conditions(conditions, batch, frames)
        param = self.time_embed[0].weight
        concat = param.new_zeros(batch, self.cfg.concat_dim, frames, *grid)
        for name in FUSION_ORDER:
            if name not in conditions:
                continue
            conv_name, mixer_name = module_names(name)
            feat = stc_encode(
                getattr(self, conv_name),
                getattr(self, mixer_name),
                conditions[name].to(param.device, param.dtype),
                frames,
                grid,
            )
            if feat.shape[-2:] != concat.shape[-2:]:
                raise InputError(
                    f"condition {name!r} encodes to a {tuple(feat.shape[-2:])} grid but the latent is "
                    f"{tuple(grid)}; this model's stc_pool_size={self.cfg.stc_pool_size} only fits one latent "
                    "size (build it with stc_pool_size=None to follow the latent)"
                )
            feat = feat.expand(batch, -1, -1, -1, -1)  # a batch-1 condition is shared
            if self.cfg.single_frame_at == "first" and name in SINGLE_FRAME_CONDITIONS and frames > 1:
                feat = feat * (torch.arange(frames, device=feat.device) == 0).to(feat.dtype).view(1, 1, -1, 1, 1)
            if drop is not None and name in drop:
                feat = feat * drop[name].view(-1, 1, 1, 1, 1).to(feat.dtype)
            concat = concat + feat
        return concat

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
        conditions: Mapping[str, torch.Tensor | None] | None = None,
        cond_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict eps.

        x: noisy latent [B, in_dim, T, h, w]; t: timesteps [B] (or a scalar), integers 0..999.
        context: text tokens [B, L, context_dim]; None = the null text (`zero_y`).
        style: style-image embedding [B, 1, style_dim] or [B, style_dim]; None = no style
            token (the context is then L tokens instead of L + 1).
        conditions: name -> tensor, see the class docstring; None / missing = absent.
        cond_features: precomputed `encode_conditions(...)` output (on `condition_grid` of x's
            grid); replaces `conditions`.
        Returns eps [B, out_dim, T, h, w] in x's dtype.
        """
        p = self.cfg.latent_patch
        h, w = self.condition_grid(tuple(x.shape[-2:]))
        x = rearrange(x, "b c f (h p) (w q) -> b (c p q) f h w", p=p, q=p)
        b, f = x.shape[0], x.shape[2]
        dtype, out_dtype = self.dtype, x.dtype
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        drop = self._dropout_masks(b, x.device) if self.training else {}

        if cond_features is None:
            cond_features = self.encode_conditions(conditions, b, f, (h, w), drop)
        elif any(v is not None for v in (conditions or {}).values()):
            raise InputError("pass either `conditions` or `cond_features`, not both")
        elif cond_features.shape != (b, self.cfg.concat_dim, f, h, w):
            raise InputError(
                f"cond_features must be {[b, self.cfg.concat_dim, f, h, w]}, got {list(cond_features.shape)}"
            )
        x = torch.cat([x.to(dtype), cond_features.to(dtype)], dim=1)

        emb = self.time_embed(timestep_embedding(t, self.cfg.dim).to(dtype))
        ctx = self._context(context, style, b, drop)
        emb = repeat(emb, "b c -> (b f) c", f=f)
        if self.frame_embed is not None:
            index = self.frame_embed(frame_positions(f, self.cfg.dim, emb.device, dtype))
            emb = emb + repeat(index, "f c -> (b f) c", b=b)

        coords = self.text_coords(ctx, f, h, w) if self.text_coords is not None else None
        ctx = repeat(ctx, "b l c -> (b f) l c", f=f)

        x = rearrange(x, "b c f h w -> (b f) c h w")
        skips = []
        for i, block in enumerate(self.input_blocks):
            if i == 0 and coords is not None:  # after the first conv, before its temporal layers
                x = self._run(block[1:], self._run(block[:1], x, emb, ctx, b) + coords, emb, ctx, b)
            else:
                x = self._run(block, x, emb, ctx, b)
            skips.append(x)
        x = self._run(self.middle_block, x, emb, ctx, b)
        for block in self.output_blocks:
            x = self._run(block, torch.cat([x, skips.pop()], dim=1), emb, ctx, b)
        x = self.out(x)
        return rearrange(x, "(b f) (c p q) h w -> b c f (h p) (w q)", b=b, p=p, q=p).to(out_dtype)

    # ------------------------------------------------------------------ internals

    def _run(self, block: nn.Module, x, emb, ctx, batch):
        if self.cfg.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._apply_block, block, x, emb, ctx, batch, use_reentrant=False)
        return self._apply_block(block, x, emb, ctx, batch)

    @staticmethod  # not named `_apply`: that would shadow nn.Module._apply, which .to()/.half() use
    def _apply_block(block: nn.Module, x, emb, ctx, batch):
        for layer in block if isinstance(block, nn.ModuleList) else [block]:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, ctx)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, batch, ctx)
            else:  # first conv, Downsample, Upsample
                x = layer(x)
        return x

    def _context(self, context, style, batch, drop):
        """Cross-attention tokens [B, L (+1), context_dim]: text, then the style token."""
        cfg = self.cfg
        if context is None:
            context = self.zero_y.to(self.dtype).expand(batch, -1, -1)
        elif context.ndim != 3 or context.shape[2] != cfg.context_dim:
            raise InputError(f"context must be [B, L, {cfg.context_dim}], got {list(context.shape)}")
        else:
            context = self._batch(context.to(self.dtype), batch, "context")
            if "text" in drop:
                context = context * drop["text"].view(-1, 1, 1).to(context.dtype)
        if style is None:
            return context
        if style.ndim == 2:
            style = style[:, None]
        if style.ndim != 3 or style.shape[1:] != (1, cfg.style_dim):
            raise InputError(f"style must be [B, 1, {cfg.style_dim}], got {list(style.shape)}")
        token = self.pre_image_condition(self._batch(style.to(self.dtype), batch, "style") * cfg.style_scale)
        if "style" in drop:
            token = token * drop["style"].view(-1, 1, 1).to(token.dtype)
        return torch.cat([context, token], dim=1)

    @staticmethod
    def _batch(x, batch, what):
        if x.shape[0] == batch:
            return x
        if x.shape[0] == 1:
            return x.expand(batch, *x.shape[1:])
        raise InputError(f"{what} has batch {x.shape[0]}, expected {batch} or 1")

    def _check_conditions(self, conditions, batch, frames):
        for name, c in conditions.items():
            if name not in self.cfg.conditions:
                raise InputError(
                    f"unknown condition {name!r} for model {self.cfg.name!r}; it takes {list(self.cfg.conditions)}"
                )
            channels = CONDITION_CHANNELS[name]
            if c.ndim == 4:
                c = c.unsqueeze(2)
            if c.ndim != 5 or c.shape[1] != channels or c.shape[0] not in (1, batch) or c.shape[2] not in (1, frames):
                raise InputError(
                    f"condition {name!r} must be [B, {channels}, T, H, W] with B in (1, {batch}) "
                    f"and T in (1, {frames}) (or [B, {channels}, H, W]); got {list(c.shape)}"
                )

    def _dropout_masks(self, batch: int, device) -> dict[str, torch.Tensor]:
        """Training-time condition dropout: per-sample 0/1 multipliers per condition.

        A fraction `p_all_zero` of samples drops every condition, text and style; a
        fraction `p_all_keep` drops none; the rest drop each one independently with
        probability `misc_dropout` (the published DropPath, drawn per sample).
        """
        cfg = self.cfg
        if cfg.misc_dropout <= 0 and cfg.p_all_zero <= 0:
            return {}
        u = torch.rand(batch, device=device)
        zero = u < cfg.p_all_zero
        keep = (u >= cfg.p_all_zero) & (u < cfg.p_all_zero + cfg.p_all_keep)
        masks = {}
        for name in (*cfg.conditions, "text", "style"):
            dropped = zero | (~keep & (torch.rand(batch, device=device) < cfg.misc_dropout))
            masks[name] = (~dropped).float()
        return masks
