"""Fields on regular 3-D grids: the one grid builder behind mesh extraction, spatial loss weights and
the renderer's empty-space grid.

A grid of resolution G over [lo, hi]^3 is ``linspace(lo, hi, G)`` per axis (built on the CPU, then
moved, so every device sees the same points), indexed 'ij': values come back as (B, G, G, G, K) with
axis order x, y, z.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from triflow3d import conventions as cv

PointFn = Callable[[torch.Tensor], torch.Tensor]  # xyz (B, P, 3) -> values (B, P, K)


def grid_axis(resolution: int, bound: float = cv.BOX_MAX, extra: int = 0) -> torch.Tensor:
    """linspace(-bound, bound, G), optionally continued by ``extra`` points past +bound (same step)."""
    lin = torch.linspace(-bound, bound, resolution)
    step = 2.0 * bound / (resolution - 1)
    return torch.cat([lin, bound + step * torch.arange(1, extra + 1, dtype=lin.dtype)])


def grid_points(
    resolution: int, lo: float = cv.BOX_MIN, hi: float = cv.BOX_MAX, device: torch.device | str | None = None
) -> torch.Tensor:
    """The G^3 grid linspace(lo, hi, G) with 'ij' indexing, flattened to (G^3, 3) as x, y, z."""
    axis = torch.linspace(lo, hi, resolution).to(device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


@torch.no_grad()
def query_grid(
    fn: PointFn,
    resolution: int,
    batch: int = 1,
    lo: float = cv.BOX_MIN,
    hi: float = cv.BOX_MAX,
    chunk: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``fn`` on the G^3 grid over [lo, hi]^3, ``chunk`` points per call (None: all) -> (B, G, G, G, K)."""
    xyz = grid_points(resolution, lo, hi, device)[None].expand(batch, -1, -1)  # (B, G^3, 3)
    step = chunk or xyz.shape[1]
    vals = torch.cat([fn(xyz[:, i : i + step]) for i in range(0, xyz.shape[1], step)], 1)
    return vals.reshape(batch, resolution, resolution, resolution, -1)
