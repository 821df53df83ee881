"""What a TriFlow run is built from: its latents, the latent normaliser and the model's size."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from triflow3d.data.latents import STATS_FILE, LatentDataset
from triflow3d.errors import ConfigError
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.latents.stats import LatentStats, compute_stats
from triflow3d.models.triflow import TRIFLOW_PRESETS as MODEL_PRESETS
from triflow3d.models.triflow import TriFlowParams
from triflow3d.train.batches import category
from triflow3d.train.config import TrainConfig

logger = logging.getLogger("triflow3d.train")
STATS_SAMPLE = 2048  # triplanes read to compute the normaliser when no stats file exists


def open_run_latents(cfg: TrainConfig) -> LatentDataset:
    """The run's latents folder (``cfg.latents``), filtered to ``cfg.category`` when set."""
    if not cfg.latents:
        raise ConfigError("no latents folder given (--latents)")
    keep = None if cfg.category is None else (lambda row: category(row) == cfg.category)
    ds = LatentDataset(cfg.latents, filter=keep)
    if len(ds) == 0:
        what = f" with category {cfg.category!r}" if cfg.category else ""
        raise ConfigError(f"{cfg.latents}: no objects{what} to train on")
    return ds


def build_normalizer(cfg: TrainConfig, dataset: LatentDataset) -> LatentNormalizer:
    """From --stats, else LATENTS/stats.safetensors, else statistics of up to STATS_SAMPLE triplanes."""
    encoder_id = str(dataset.encoder.get("encoder", ""))
    if cfg.normalizer_mode == "none":
        return LatentNormalizer(dataset.triplane_shape[1], "none", None, encoder_id=encoder_id)
    path = Path(cfg.stats) if cfg.stats else Path(cfg.latents) / STATS_FILE
    if cfg.stats or path.is_file():
        stats = LatentStats.from_safetensors(path)
        if stats.encoder_id and stats.encoder_id != encoder_id:
            raise ConfigError(f"{path}: stats of encoder {stats.encoder_id!r}, latents are {encoder_id!r}")
    else:
        n = min(len(dataset), STATS_SAMPLE)
        logger.info("no %s: computing latent statistics over %d triplanes", path, n)
        stats = compute_stats((dataset[i]["triplane"] for i in range(n)), encoder_id)
    return LatentNormalizer.from_stats(stats, cfg.normalizer_mode, cfg.normalizer_clamp)


def model_params(cfg: TrainConfig, triplane_shape: tuple[int, ...], text_dim: int) -> TriFlowParams:
    """The preset with C, R and the text width taken from the data and the text encoder."""
    if cfg.model not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {cfg.model!r}; expected one of {sorted(MODEL_PRESETS)}")
    _, c, r, _ = triplane_shape
    return replace(MODEL_PRESETS[cfg.model], plane_channels=c, plane_res=r, text_dim=text_dim)


def check_batch(cfg: TrainConfig, world: int) -> None:
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by world size {world} x grad_accum {cfg.grad_accum}"
        )
