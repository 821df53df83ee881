"""Colour attribute metrics: an object's dominant colour and its nearest named palette colour.

Colours are sRGB in [0, 1] (vertex colours are albedo, not shaded). Names come from the benchmark's
fixed palette (``shapes.palette.PALETTE``); matching is nearest neighbour in CIELAB (D65, CIE76
Delta E), which tracks perceived difference far better than sRGB distance.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import trimesh

from triflow3d.conventions import srgb_to_linear
from triflow3d.errors import ConfigError
from triflow3d.evaluation.geometry import sample_surface
from triflow3d.shapes.palette import PALETTE

# sRGB (linear) -> CIE XYZ, D65 white (IEC 61966-2-1).
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
HIST_BINS = 8  # per sRGB channel for the dominant-colour histogram (bin width 0.125)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (..., 3) of sRGB colours (..., 3) in [0, 1]: L in [0, 100], a/b roughly [-128, 127]."""
    lin = srgb_to_linear(np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0)).astype(np.float64)
    t = (lin @ _RGB_TO_XYZ.T) / _D65_WHITE
    eps = (6.0 / 29.0) ** 3
    f = np.where(t > eps, np.cbrt(t), t / (3.0 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def classify_colours(
    rgb: np.ndarray, palette: Mapping[str, tuple[float, float, float]] = PALETTE
) -> list[str]:
    """Nearest palette name (CIELAB distance) for each colour of ``rgb`` (N, 3)."""
    if not palette:
        raise ConfigError("classify_colours needs a non-empty palette")
    names = list(palette)
    ref = srgb_to_lab(np.array([palette[k] for k in names]))  # (K, 3)
    lab = srgb_to_lab(np.asarray(rgb, dtype=np.float64).reshape(-1, 3))  # (N, 3)
    idx = np.linalg.norm(lab[:, None] - ref[None], axis=-1).argmin(axis=1)
    return [names[i] for i in idx]


def classify_colour(rgb: np.ndarray, palette: Mapping[str, tuple[float, float, float]] = PALETTE) -> str:
    """Nearest palette name (CIELAB distance) of one sRGB colour (3,)."""
    return classify_colours(np.asarray(rgb).reshape(1, 3), palette)[0]


def dominant_colour(
    source: trimesh.Trimesh | np.ndarray,
    weights: np.ndarray | None = None,
    n_samples: int = 20000,
    seed: int = 0,
) -> np.ndarray:
    """The main colour (3,) of a coloured mesh, or of surface colour samples (N, 3) with optional weights.

    A mesh is sampled area-uniformly (``sample_surface``), so each sample stands for equal area.
    Colours fall into a coarse 8^3 sRGB histogram; each bin is scored with its 3x3x3 neighbourhood (so a
    colour split by a bin edge still counts as one), and the answer is the weighted per-channel median
    of the samples in the winning neighbourhood. A multi-coloured object thus gives the colour of its
    largest same-coloured area, not a blend.
    """
    if isinstance(source, trimesh.Trimesh):
        _, colours = sample_surface(source, n_samples, seed)
        if colours is None:
            raise ConfigError("dominant_colour: the mesh has no vertex or face colours")
    else:
        colours = source
    colours = np.clip(np.asarray(colours, dtype=np.float64).reshape(-1, 3), 0.0, 1.0)
    w = np.ones(len(colours)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(colours) == 0 or len(w) != len(colours) or not w.sum() > 0:
        raise ConfigError(f"dominant_colour: need N > 0 colours with positive weights, got {len(colours)}")
    bins = np.minimum((colours * HIST_BINS).astype(int), HIST_BINS - 1)  # (N, 3)
    hist = np.zeros((HIST_BINS,) * 3)
    np.add.at(hist, tuple(bins.T), w)
    padded = np.pad(hist, 1)
    score = sum(
        padded[i : i + HIST_BINS, j : j + HIST_BINS, k : k + HIST_BINS]
        for i in range(3)
        for j in range(3)
        for k in range(3)
    )
    best = np.array(np.unravel_index(int(score.argmax()), score.shape))
    keep = (np.abs(bins - best) <= 1).all(axis=1) & (w > 0)
    return np.array([_weighted_median(colours[keep, c], w[keep]) for c in range(3)])


def _weighted_median(x: np.ndarray, w: np.ndarray) -> float:
    order = np.argsort(x)
    cdf = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cdf, 0.5 * cdf[-1])])
