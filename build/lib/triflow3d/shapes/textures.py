"""Procedural texture images (stripes, checker, wood grain) and uv projections for the shape benchmark.

uv follows the glTF convention of :mod:`triflow3d.assets.types`: v = 0 is the top row of the image.
Textures are periodic in u, and the cylindrical projection lets u run slightly past 1 on faces that
cross the seam (the glTF default sampler wraps with REPEAT), so no face smears across the image.
"""

from __future__ import annotations

from typing import Final

import numpy as np

PATTERNS: Final[tuple[str, ...]] = ("plain", "stripes", "checker", "wood")
TEXTURE_SIZE: Final[int] = 128


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:  # (H, W) u and v at pixel centres
    c = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(c, c, indexing="ij")
    return u, v


def _wood_shade(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # (H, W) in [0, 1]
    """Wavy grain lines running along v, periodic in u."""
    lines = int(rng.integers(6, 14))
    wobble = sum(rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * (k * v + rng.uniform())) for k in (1, 2, 3))
    phase = lines * u + wobble * lines + 0.3 * np.sin(2 * np.pi * (3 * u + rng.uniform()))
    return 0.5 + 0.5 * np.sin(2 * np.pi * phase) ** 3


def make_texture(
    pattern: str,
    main: tuple[float, ...],
    second: tuple[float, ...],
    rng: np.random.Generator,
    size: int = TEXTURE_SIZE,
) -> np.ndarray:
    """An (size, size, 4) uint8 RGBA image; row 0 is the top. ``wood`` uses shades of ``main`` only."""
    u, v = _grid(size)
    a, b = np.asarray(main[:3], dtype=np.float64), np.asarray(second[:3], dtype=np.float64)
    if pattern == "stripes":
        bands = int(rng.integers(3, 8))
        mask = (np.floor(v * 2 * bands) % 2)[..., None]
    elif pattern == "checker":
        n = int(rng.integers(3, 7))
        mask = ((np.floor(u * 2 * n) + np.floor(v * n)) % 2)[..., None]
    elif pattern == "wood":
        shade = _wood_shade(u, v, rng)[..., None]
        b, mask = a * 0.6, shade * 0.8
    else:
        raise ValueError(f"pattern {pattern!r} has no texture (one of {PATTERNS[1:]})")
    rgb = a * (1.0 - mask) + b * mask  # (H, W, 3)
    out = np.empty((size, size, 4), dtype=np.uint8)
    out[..., :3] = np.round(np.clip(rgb, 0.0, 1.0) * 255.0)
    out[..., 3] = 255
    return out


def _flip_exact(v: np.ndarray) -> np.ndarray:
    """Snap v to multiples of 2**-24, so float32 ``1 - v`` (v-up readers such as trimesh) is exact."""
    return np.round(np.clip(v, 0.0, 1.0) * 2.0**24) / 2.0**24


def cylindrical_uv(corners: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:  # (F, 3, 2)
    """u = angle about z, v = height from the top, for the (F, 3, 3) face corners of an unwelded mesh."""
    u = np.arctan2(corners[..., 1], corners[..., 0]) / (2 * np.pi) + 0.5  # (F, 3) in [0, 1]
    seam = (u.max(axis=1) - u.min(axis=1)) > 0.5  # faces that straddle the seam
    u = np.where(seam[:, None] & (u < 0.5), u + 1.0, u)
    v = (hi[2] - corners[..., 2]) / max(float(hi[2] - lo[2]), 1e-9)
    return np.stack([u, _flip_exact(v)], axis=-1)


def box_uv(corners: np.ndarray, normals: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Planar projection along each face's dominant normal axis; (F, 3, 3) corners, (F, 3) normals.

    Both uv axes use the largest extent, so checks stay square; v runs top-down (z) or back-to-front (y).
    """
    extent = max(float((hi - lo).max()), 1e-9)
    p = (corners - lo) / extent  # (F, 3, 3) in [0, 1]
    top = (hi[2] - corners[..., 2]) / extent
    axis = np.abs(normals).argmax(axis=1)[:, None]  # (F, 1)
    u = np.where(axis == 0, p[..., 1], p[..., 0])
    v = np.where(axis == 2, 1.0 - p[..., 1], top)
    return np.stack([u, _flip_exact(v)], axis=-1)
