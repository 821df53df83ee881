"""What a TriFlow run is built from: its latents, the latent normaliser, the model's size and the
changes a fine-tune makes to its starting checkpoint."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from torch import Tensor

from triflow3d.data.latents import STATS_FILE, LatentDataset
from triflow3d.errors import ConfigError
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.latents.stats import LatentStats, compute_stats
from triflow3d.models.triflow import TRIFLOW_PRESETS as MODEL_PRESETS
from triflow3d.models.triflow import TriFlowParams, add_out_conv, grow_plane_channels
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
    """The preset with C, R and the text width taken from the data and the text encoder, and the run's
    output parametrisation (``cfg.output``, ``cfg.out_conv``)."""
    if cfg.model not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {cfg.model!r}; expected one of {sorted(MODEL_PRESETS)}")
    _, c, r, _ = triplane_shape
    preset = MODEL_PRESETS[cfg.model]
    output = cfg.output or preset.output
    out_conv = cfg.out_conv or preset.out_conv
    return replace(preset, plane_channels=c, plane_res=r, text_dim=text_dim, output=output, out_conv=out_conv)


def adapt_source(
    cfg: TrainConfig, params: TriFlowParams, state: dict[str, Tensor], channels: int, grow: bool, source: str
) -> tuple[TriFlowParams, dict[str, Tensor], bool, bool]:
    """A fine-tune's starting model from a checkpoint's: grown to ``channels`` (``grow``), switched to
    ``cfg.output``, with the output convolution added (``cfg.out_conv``). Returns (params, weights, grown,
    whether the final layer restarts at zero: its outputs change meaning with ``output``)."""
    grown = grow and channels != params.plane_channels
    if grown:
        params, state = grow_plane_channels(state, params, channels)
        logger.info("grew %s to %d plane channels (new ones appended)", source, channels)
    restart_final = bool(cfg.output) and cfg.output != params.output
    if restart_final:
        logger.info("%s: output %s -> %s, final layer restarts at zero", source, params.output, cfg.output)
        params = replace(params, output=cfg.output)
    if cfg.out_conv and not params.out_conv:
        params, state = add_out_conv(state, params)
        logger.info("%s: output convolution added (identity)", source)
    return params, state, grown, restart_final


def check_batch(cfg: TrainConfig, world: int) -> None:
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by world size {world} x grad_accum {cfg.grad_accum}"
        )
