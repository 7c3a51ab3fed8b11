"""Which parts of each training sample are dropped: the paper's condition dropout, text dropout.

Stage 2 (compositional), per sample: with probability `p_drop_all` every condition and the style
are dropped, and the text too with probability `p_text_in_drop_all` (0.5); with `p_keep_all`
nothing is; otherwise each condition and the style is dropped independently with probability
`p_each` (0.5), and the text with `p_text` (0.1). Stage 1 (text to video) drops only the text,
with `p_text`, so classifier-free guidance has an unconditional branch to work with.

Why the text survives half of the drop-all samples: with six conditions and a style each dropped
at 0.5, a sample with text and nothing else is otherwise rare (< 1%), and a long stage 2 would
wear away the text-to-video skill stage 1 taught. So stage 2 keeps 5% pure text-to-video samples
and 5% fully unconditional ones (the paper's drop-all), 13% of captions dropped in all.

What "dropped" means matches what the sampler's unconditional branch feeds the model
(`vcomp.pipeline`): the text becomes the encoding of "" (the caption is emptied, and the text
encoder, trained jointly, encodes it), the style becomes a zero vector, and a spatial/temporal
condition becomes absent (its encoding is multiplied by 0, which is exactly what absence adds to
the fused map). The UNet's own training-mode dropout (`ModelConfig.misc_dropout`, which zeroes
the text tokens instead) is switched off by the trainer so the two never stack.

Style token. At inference a clip without a style image has no style token at all (L context
tokens, not L + 1), so in stage 2 only a fraction `p_style_token` of the steps carry a style
token (real or zeroed per sample as above); the others pass none for the whole batch.

Text beside a style. In the world a caption names every colour a style image carries, so with the
caption present the style token is redundant and the model learns to ignore it: the first shipped
models followed a style image's palette in 4-17% of held-out scenes against the target 80%, and
only ~2% of stage-2 samples had a style and no caption. So when a step carries style tokens, a
sample whose style is kept loses its caption with probability `p_text_with_style` (0.5), which
makes that case ~12% of samples.

Single-condition samples. The commands users run (and `vcomp eval`) give the text and *one*
condition: motion-transfer is text + motion, stylize is text + style. Under the independent
p 0.5 draws a sample with the text and the motion alone (no depth, sketch, mask or image, which
also place the object in every frame) is ~1% of stage 2, so the motion condition, noisy at 64²,
is barely learnt. With probability `p_single` (default 0, the paper's recipe) a sample instead
keeps exactly one of the conditions or the style, or none of them (text to video), chosen
uniformly, with its caption kept with probability 1 - `p_text`.

All draws come from the step's own generator, so a resumed run drops exactly what an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class DropoutConfig:
    p_keep_all: float = 0.1
    p_drop_all: float = 0.1
    p_each: float = 0.5
    p_text: float = 0.1
    p_text_in_drop_all: float = 0.5
    p_style_token: float = 0.5
    p_text_with_style: float = 0.5
    p_single: float = 0.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"dropout {name} must be in [0, 1], got {value}")
        if self.p_keep_all + self.p_drop_all + self.p_single > 1.0:
            raise ValueError("p_keep_all + p_drop_all + p_single must be at most 1")

    def to_dict(self) -> dict:
        return asdict(self)


def sample_keep(batch: int, names: Sequence[str], stage: int, cfg: DropoutConfig,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-sample keep flags (bool [batch]) for "text" and every name in `names` (stage 2)."""
    def rand():
        return torch.rand(batch, generator=generator)

    if stage == 1:
        return {"text": rand() >= cfg.p_text}
    u = rand()
    drop_all = u < cfg.p_drop_all
    keep_all = (u >= cfg.p_drop_all) & (u < cfg.p_drop_all + cfg.p_keep_all)
    keep = {name: ~(drop_all | (~keep_all & (rand() < cfg.p_each))) for name in names}
    r = rand()
    keep["text"] = ~torch.where(drop_all, r < cfg.p_text_in_drop_all, ~keep_all & (r < cfg.p_text))
    if cfg.p_single > 0.0:  # drawn only when asked for, so runs without it keep their random stream
        start = cfg.p_drop_all + cfg.p_keep_all
        single = (u >= start) & (u < start + cfg.p_single)
        choice = torch.randint(len(names) + 1, (batch,), generator=generator)  # len(names): none
        for i, name in enumerate(names):
            keep[name] = torch.where(single, choice == i, keep[name])
    return keep


def drop_captions(captions: Sequence[str], keep: torch.Tensor) -> list[str]:
    """Dropped captions become "" (encoded like the sampler's negative prompt)."""
    return [c if bool(k) else "" for c, k in zip(captions, keep.tolist(), strict=True)]


def drop_text_beside_style(keep_text: torch.Tensor, keep_style: torch.Tensor, cfg: DropoutConfig,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep flags of the text after dropping, with `p_text_with_style`, the captions of samples whose
    style token is kept (see the module docstring)."""
    if cfg.p_text_with_style <= 0.0:
        return keep_text
    extra = torch.rand(keep_text.shape[0], generator=generator) < cfg.p_text_with_style
    return keep_text & ~(keep_style & extra)
