"""Spatial importance weights: per-texel loss weights that concentrate the flow loss on occupied space.

Recipe (research/paper.md section 3.2): query the frozen decoder's density on a G^3 grid over
[-1, 1]^3, threshold it (conventions.MESH_THRESHOLD), take the max along each plane's normal axis,
resample to the plane's R x R texels, dilate by a texel or two (bilinear sampling reads neighbours), and
map the mask m to w = w_bg + (1 - w_bg) m. Masks are laid out like the planes themselves:
``mask[b, plane, row (v), col (u)]`` with (u, v) = conventions.PLANE_AXES[plane], so plane 0 has rows y
and columns x, plane 1 rows z and columns x, plane 2 rows y and columns z.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from triflow3d.conventions import BOX_MAX, BOX_MIN, MESH_THRESHOLD, PLANE_AXES, PLANE_NORMAL_AXES
from triflow3d.errors import ConfigError
from triflow3d.triplane.grid import query_grid

DensityFn = Callable[[torch.Tensor], torch.Tensor]  # xyz (B, P, 3) -> activated density (B, P, 1)


class Field(Protocol):
    def query(self, planes: torch.Tensor, xyz: torch.Tensor) -> dict[str, torch.Tensor]: ...


@torch.no_grad()
def occupancy_grid(
    density_fn: DensityFn,
    batch_size: int = 1,
    resolution: int = 64,
    threshold: float = MESH_THRESHOLD,
    chunk: int = 65536,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean occupancy (B, G, G, G) indexed [b, x, y, z]: density > threshold at the grid points."""
    density = query_grid(density_fn, resolution, batch_size, BOX_MIN, BOX_MAX, chunk, device)
    return density[..., 0] > threshold


def _cover_matrix(grid_res: int, plane_res: int, device: torch.device) -> torch.Tensor:
    """(R, G) float: A[i, j] = 1 if grid point j lies in texel i, or is the grid point nearest texel i.

    Grid points sit at linspace(-1, 1, G); texel i spans [i, i + 1] * 2 / R - 1 (align_corners=False).
    The nearest-point term fills texels no grid point falls into when G < R.
    """
    coord = torch.linspace(BOX_MIN, BOX_MAX, grid_res, device=device)
    texel_of_point = (
        ((coord - BOX_MIN) / (BOX_MAX - BOX_MIN) * plane_res).floor().clamp(0, plane_res - 1).long()
    )
    a = torch.zeros(plane_res, grid_res, device=device)
    a[texel_of_point, torch.arange(grid_res, device=device)] = 1.0
    centres = (torch.arange(plane_res, device=device) + 0.5) / plane_res * (BOX_MAX - BOX_MIN) + BOX_MIN
    nearest = (centres[:, None] - coord[None, :]).abs().argmin(1)
    a[torch.arange(plane_res, device=device), nearest] = 1.0
    return a


def project_occupancy(occ: torch.Tensor, plane_res: int) -> torch.Tensor:
    """Occupancy (B, G, G, G) [b, x, y, z] -> per-plane masks (B, 3, R, R) bool, [b, plane, row v, col u]."""
    g = occ.shape[-1]
    cover = _cover_matrix(g, plane_res, occ.device)  # (R, G)
    masks = []
    for (u_axis, v_axis), normal in zip(PLANE_AXES, PLANE_NORMAL_AXES):
        m = occ.amax(dim=1 + normal)  # (B, G, G) over the two remaining axes, in ascending axis order
        if u_axis < v_axis:  # remaining order is (u, v): rows must be v
            m = m.transpose(1, 2)
        m = cover @ m.float() @ cover.T  # (B, R, R): texel hit by any occupied grid point
        masks.append(m > 0)
    return torch.stack(masks, 1)


def dilate(mask: torch.Tensor, texels: int) -> torch.Tensor:
    """Square (Chebyshev) dilation of masks (..., R, R) by ``texels`` texels."""
    if texels < 0:
        raise ConfigError(f"dilation must be >= 0 texels, got {texels}")
    if texels == 0:
        return mask.bool()
    lead = mask.shape[:-2]
    m = mask.float().reshape(-1, 1, *mask.shape[-2:])
    m = F.max_pool2d(m, kernel_size=2 * texels + 1, stride=1, padding=texels)
    return m.reshape(*lead, *mask.shape[-2:]) > 0


def importance_weights(mask: torch.Tensor, w_bg: float = 0.1) -> torch.Tensor:
    """w = w_bg + (1 - w_bg) m, float in [w_bg, 1]; w_bg > 0 keeps empty space on the data distribution."""
    if not 0.0 <= w_bg <= 1.0:
        raise ConfigError(f"background weight w_bg must be in [0, 1], got {w_bg}")
    return w_bg + (1.0 - w_bg) * mask.float()


@torch.no_grad()
def spatial_weights(
    field: Field,
    planes: torch.Tensor,
    grid_res: int = 64,
    threshold: float = MESH_THRESHOLD,
    dilation: int = 1,
    w_bg: float = 0.1,
    chunk: int = 65536,
) -> torch.Tensor:
    """Per-texel loss weights (B, 3, R, R) of raw triplanes (B, 3, C, R, R) through ``field.query``."""
    occ = occupancy_grid(
        lambda xyz: field.query(planes, xyz)["sigma"],
        planes.shape[0],
        grid_res,
        threshold,
        chunk,
        planes.device,
    )
    mask = dilate(project_occupancy(occ, planes.shape[-1]), dilation)
    return importance_weights(mask, w_bg)
