"""Latent post-processing: statistics, standardisation (the only place it happens) and loss weights."""

from triflow3d.latents.normalizer import MODES, LatentNormalizer, fold_exact_bound, fold_into_decoder
from triflow3d.latents.stats import LatentStats, batch_stats, compute_stats, merge
from triflow3d.latents.weights import (
    dilate,
    importance_weights,
    occupancy_grid,
    project_occupancy,
    spatial_weights,
)

__all__ = [
    "MODES",
    "LatentNormalizer",
    "LatentStats",
    "batch_stats",
    "compute_stats",
    "dilate",
    "fold_exact_bound",
    "fold_into_decoder",
    "importance_weights",
    "merge",
    "occupancy_grid",
    "project_occupancy",
    "spatial_weights",
]
