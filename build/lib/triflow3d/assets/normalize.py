"""Centre an asset and scale it uniformly into a sphere of ``OBJECT_RADIUS`` about the origin.

A bounding *sphere* (not the unit cube) so the Zero123++ rig (radius 4, FoV 30 deg, visible radius
4 sin 15 deg = 1.035) never cuts a corner off, and the object stays inside the triplane box [-1, 1]^3.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from triflow3d.assets.types import Asset
from triflow3d.conventions import OBJECT_RADIUS
from triflow3d.errors import AssetError, ConfigError

# Scale a hair below radius / r so float32 rounding never puts a vertex outside the sphere.
_SHRINK = 1.0 - 1e-6
META_KEY = "normalization_transform"


def _used_vertices(asset: Asset) -> np.ndarray:  # (N, 3) float64, only vertices that faces reference
    used = [p.vertices[np.unique(p.faces)] for p in asset.parts if len(p.faces)]
    if not used:
        raise AssetError(asset.source, "nothing to normalise: the asset has no faces", "no geometry")
    return np.concatenate(used).astype(np.float64)


def normalization_transform(asset: Asset, radius: float = OBJECT_RADIUS) -> np.ndarray:
    """The (4, 4) similarity x -> s (x - c): c the bounding-box centre, s = radius / max |v - c|."""
    if not (math.isfinite(radius) and radius > 0):
        raise ConfigError(f"normalisation radius must be a positive number, got {radius!r}")
    v = _used_vertices(asset)
    center = (v.min(axis=0) + v.max(axis=0)) / 2.0  # (3,)
    extent = float(np.sqrt(((v - center) ** 2).sum(axis=1).max()))
    if not (math.isfinite(extent) and extent > 0):
        raise AssetError(
            asset.source,
            f"empty after normalisation: cannot normalise a degenerate extent {extent} (all vertices coincide?)",
            "empty after normalisation",
        )
    scale = radius / extent * _SHRINK
    matrix = np.eye(4)
    matrix[:3, :3] *= scale
    matrix[:3, 3] = -scale * center
    return matrix


def normalize(asset: Asset, radius: float = OBJECT_RADIUS) -> Asset:
    """Apply :func:`normalization_transform`; ``meta[META_KEY]`` accumulates the applied transforms."""
    matrix = normalization_transform(asset, radius)
    previous = np.asarray(asset.meta.get(META_KEY, np.eye(4)), dtype=np.float64)
    out = asset.transformed(matrix)
    return replace(out, meta={**asset.meta, META_KEY: (matrix @ previous).tolist()})
