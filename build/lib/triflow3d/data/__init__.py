"""Datasets and on-disk formats: rendered views folders and triplane latent shards."""

from triflow3d.data.latents import LatentDataset
from triflow3d.data.views import ObjectViews, ViewsFolder, composite_white

__all__ = ["LatentDataset", "ObjectViews", "ViewsFolder", "composite_white"]
