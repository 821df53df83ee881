"""Captions -> text conditions for training: every caption embedded once, before the first step."""

from __future__ import annotations

import torch
from torch import Tensor

from triflow3d.models.text_encoder import (
    CachedTextEncoder,
    TextEmbedding,
    TextEncoder,
    embed_rows,
)
from triflow3d.models.text_table import open_text_encoder
from triflow3d.train.config import TrainConfig


class TextTable:
    """Every caption's embedding computed once (so steps never run the text encoder), optionally centred:
    ``center`` is the mean pooled embedding of the training captions, subtracted from every pooled one."""

    def __init__(self, encoder: TextEncoder, captions: list[str], center: bool, chunk: int = 64):
        unique = sorted(set(captions) | {""})
        self.rows: dict[str, tuple[Tensor, Tensor]] = dict(zip(unique, embed_rows(encoder, unique, chunk)))
        pooled = torch.stack([self.rows[c][1] for c in sorted(set(captions) - {""})] or [self.rows[""][1]])
        self.center: Tensor | None = pooled.mean(0) if center else None

    def __call__(self, captions: list[str], device: torch.device) -> TextEmbedding:
        return TextEmbedding.from_rows([self.rows[c] for c in captions]).centred(self.center).to(device)

    def padded(self, device: torch.device) -> tuple[list[str], TextEmbedding]:
        """All captions in one centred, padded embedding (K, L_max, D) on ``device``, and their order
        (the empty caption is among them): the table the device-resident loop gathers rows from."""
        order = sorted(self.rows)
        return order, TextEmbedding.from_rows([self.rows[c] for c in order]).centred(self.center).to(device)


def build_text_encoder(cfg: TrainConfig, dim: int | None = None) -> TextEncoder:
    kwargs = {"dim": dim} if cfg.text_encoder == "fake" and dim else {}
    encoder = open_text_encoder(cfg.text_encoder, cfg.text_encoder_path, **kwargs)
    return CachedTextEncoder(encoder, cfg.text_cache) if cfg.text_cache else encoder
