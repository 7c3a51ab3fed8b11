"""Text (and image) encoders that turn a prompt into the UNet's cross-attention tokens.

`WordTextEncoder` (embedded `tiny` preset): a word-level encoder for the procedural world's
captions (`vcomp.train.synthetic.VOCABULARY`). Lower-cased words (`[a-z0-9]+`, hyphenated words
such as "up-left" kept whole) map to ids in a fixed vocabulary; a hyphenated word that is not in
it is split at the hyphens; unknown words become `<unk>` and are reported (a `UserWarning`, and
the list `encode()` returns). The sequence is `<bos> words... <eos> <pad>...`, `max_len` tokens
(words beyond `max_len - 2` are dropped), then learned token + position embeddings, a few
pre-norm transformer blocks (padding masked) and a final LayerNorm: `[B, max_len, dim]`. Like
the published encoder, the null text is the encoding of "" (`<bos> <eos>`), not zeros.

`OpenCLIPEmbedder` (`official` preset): OpenCLIP ViT-H-14 built on the meta device and given a
state dict loaded elsewhere (`vcomp.weights`); nothing is downloaded. Text: `open_clip.tokenize`
(77 tokens), token + position embeddings, every text block but the last with the causal mask,
then `ln_final`: `[B, 77, 1024]` (the published `FrozenOpenCLIPEmbedder(layer="penultimate")`).
Image: `encode_image` (projected, not normalised, 1024-d), the published style token.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")  # "up-left" is one word (the world's directions)

# Words of the procedural world's captions, used until a trained model brings its own vocabulary
# (the embedded model's `embedded.json` stores the one it was trained with).
DEFAULT_WORDS = (
    "a an the and with of on in over across to from into at by its is are this that".split()
    + "red orange yellow green cyan blue purple magenta pink white black grey gray brown dark light bright pale".split()
    + "circle disc disk ball square box rectangle triangle star ring diamond hexagon cross heart ellipse blob shape shapes object objects".split()
    + "small big large tiny huge little medium".split()
    + "moves moving move slides sliding slide bounces bouncing rotates rotating spins spinning grows growing shrinks shrinking falls falling rises rising drifts drifting floats floating".split()
    + "left right up down up-left up-right down-left down-right upward downward diagonally toward towards away".split()
    + "slowly quickly fast slow still static standing circle".split()
    + "background scene sky grass sea water sand wall floor field night day sunset".split()
    + "striped stripes dotted dots checkered checkerboard textured texture plain solid gradient noisy smooth wavy".split()
    + "one two three four five".split()
)


def build_vocab(texts: Iterable[str] = (), words: Iterable[str] = DEFAULT_WORDS) -> list[str]:
    """Special tokens, then the sorted set of words in `words` and in `texts`."""
    found = set(words)
    for text in texts:
        found.update(_WORD.findall(text.lower()))
    return list(SPECIALS) + sorted(found - set(SPECIALS))


class _Block(nn.Module):
    """Pre-norm self-attention + MLP block with a key-padding mask."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [B, L, D]; keep [B, L] bool (False = padding, never attended to)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.proj(out.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class WordTextEncoder(nn.Module):
    """Word-level text encoder of the embedded model: prompt(s) -> [B, max_len, dim]."""

    def __init__(self, vocab: Sequence[str] | None = None, dim: int = 128, max_len: int = 16,
                 depth: int = 2, heads: int = 4):
        super().__init__()
        vocab = list(vocab) if vocab is not None else build_vocab()
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS) or len(set(vocab)) != len(vocab):
            raise ValueError(f"vocab must start with {list(SPECIALS)} and have no duplicates")
        if max_len < 3:
            raise ValueError("max_len must be >= 3 (<bos>, one word, <eos>)")
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.dim, self.max_len, self.depth, self.heads = dim, max_len, depth, heads
        self.token_embedding = nn.Embedding(len(vocab), dim)
        self.position_embedding = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def config(self) -> dict:
        return {"dim": self.dim, "max_len": self.max_len, "depth": self.depth, "heads": self.heads}

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """-> (ids [B, max_len] long, sorted unknown words)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = np.zeros((len(texts), self.max_len), np.int64)  # PAD = 0
        unknown: set[str] = set()
        unk = self.index[UNK]
        for row, text in enumerate(texts):
            words = [part for word in _WORD.findall(text.lower())
                     for part in ([word] if word in self.index else word.split("-"))][: self.max_len - 2]
            tokens = [self.index[BOS]]
            for w in words:
                tokens.append(self.index.get(w, unk))
                if w not in self.index:
                    unknown.add(w)
            tokens.append(self.index[EOS])
            ids[row, : len(tokens)] = tokens
        return torch.from_numpy(ids), sorted(unknown)

    def encode(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """-> (tokens [B, max_len, dim], unknown words). Warns once per call about unknown words."""
        ids, unknown = self.tokenize(texts)
        if unknown:
            warnings.warn(
                f"words not in the embedded model's vocabulary (encoded as <unk>): {', '.join(unknown)}",
                UserWarning, stacklevel=2,
            )
        return self.forward_ids(ids.to(self.token_embedding.weight.device)), unknown

    def forward_ids(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids != self.index[PAD]
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x)

    def forward(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.encode(texts)[0]


# ---------------------------------------------------------------- OpenCLIP (official preset)

CLIP_MODEL = "ViT-H-14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenCLIPEmbedder(nn.Module):
    """OpenCLIP text tower (penultimate layer + ln_final tokens) and/or image tower (encode_image).

    Build with `from_state_dict`; `towers` keeps only what is needed ("text", "image"), as the
    published pipeline deletes the unused tower.
    """

    def __init__(self, clip_model: nn.Module, towers: Sequence[str] = ("text",)):
        super().__init__()
        self.clip = clip_model.eval().requires_grad_(False)
        self.towers = tuple(towers)
        self.context_length = int(self.clip.positional_embedding.shape[0]) if "text" in towers else 0

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], model_name: str = CLIP_MODEL,
                        towers: Sequence[str] = ("text",), source: str = "OpenCLIP weights") -> OpenCLIPEmbedder:
        """Build `model_name` on the meta device and take the given tensors (strict keys/shapes)."""
        import open_clip

        from vcomp.model.loading import load_state_dict_strict

        with torch.device("meta"):
            model = open_clip.create_model(model_name, pretrained=None, device="meta")
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        load_state_dict_strict(model, state_dict, source=source)
        if "image" not in towers:
            del model.visual
        if "text" not in towers:
            for name in ("transformer", "token_embedding", "ln_final"):
                delattr(model, name)
        return cls(model, towers)

    def _causal_mask(self, n: int, device, dtype) -> torch.Tensor:
        return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        import open_clip

        texts = [texts] if isinstance(texts, str) else list(texts)
        return open_clip.tokenize(texts, context_length=self.context_length)

    def encode_text(self, texts: str | Sequence[str]) -> torch.Tensor:
        """-> [B, 77, width] (penultimate block, then ln_final; no pooling, no projection)."""
        clip = self.clip
        ids = self.tokenize(texts).to(clip.token_embedding.weight.device)
        dtype = clip.token_embedding.weight.dtype
        x = clip.token_embedding(ids).to(dtype) + clip.positional_embedding.to(dtype)
        mask = self._causal_mask(x.shape[1], x.device, dtype)
        transformer = clip.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[:-1]:  # the penultimate layer's output
            x = block(x, attn_mask=mask)
        if not batch_first:
            x = x.transpose(0, 1)
        return clip.ln_final(x)

    def preprocess(self, image: np.ndarray, size: int = 224) -> torch.Tensor:
        """RGB uint8 [H, W, 3] -> [1, 3, size, size]: short side to `size` (bicubic), centre
        crop, OpenAI CLIP mean/std (open_clip's validation transform)."""
        from PIL import Image

        pil = Image.fromarray(np.asarray(image, np.uint8))
        w, h = pil.size
        scale = size / min(w, h)
        pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = pil.size
        left, top = (w - size) // 2, (h - size) // 2
        pil = pil.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(pil, np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
        return ((x - mean) / std)[None]

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, 224, 224] (CLIP-normalised) -> [B, 1024] (projected, not normalised)."""
        visual = self.clip.visual
        return self.clip.encode_image(pixels.to(next(visual.parameters()).dtype), normalize=False)

    def forward(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self.encode_text(texts)
