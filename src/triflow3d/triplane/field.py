"""A triplane radiance field: plane sampling + an InstantMesh decoder, queried at world points.

``TriplaneField`` is the reconstructor's ``synthesizer``; its ``decoder`` holds the upstream keys.

Density of the mesh (FlexiCubes) variant
    That checkpoint predicts an SDF (inside negative), not a density. To volume-render it with the
    same marcher we use the VolSDF Laplace-CDF density sigma = Psi_beta(-sdf) / beta (``sdf_beta``,
    default ``SDF_BETA``): sigma -> 0 outside, 1 / beta deep inside, 0.5 / beta on the surface.
    ``sigma_raw`` is then defined as softplus^-1(sigma) - DENSITY_SHIFT, so that the shared activation
    ``density_from_raw(sigma_raw)`` gives sigma back (computed in log space, finite everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from triflow3d import conventions as cv
from triflow3d.errors import ConfigError
from triflow3d.triplane.decoder import MeshDecoder, NerfDecoder, density_from_raw, rgb_from_raw
from triflow3d.triplane.sampling import planes_to_features, sample_planes, smooth_planes, triplane_features

SDF_BETA = 0.01  # Laplace scale of the mesh variant's SDF -> density conversion (world units)
DEFAULT_CHUNK = 2**13  # points per decoder call: small chunks stay in cache (~1.5x faster than 2**18)


@dataclass(frozen=True)
class FoldedPlanes:
    """Planes with the NeRF decoder's first Linear already applied (see ``NerfDecoder.fold_planes``)."""

    planes: torch.Tensor  # (B, 3, H, R, R)


def laplace_sdf_log_density(sdf: torch.Tensor, beta: float) -> torch.Tensor:
    """log of sigma = Psi_beta(-sdf) / beta (VolSDF), stable for any sdf."""
    e = torch.exp(-sdf.abs() / beta)  # in (0, 1]
    outside = math.log(0.5 / beta) - sdf.clamp(min=0) / beta
    inside = -math.log(beta) + torch.log1p(-0.5 * e)
    return torch.where(sdf >= 0, outside, inside)


def softplus_inverse_from_log(log_y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = exp(log_y); finite (and with finite gradients) for any log_y."""
    y = torch.exp(log_y)
    small = log_y + 0.5 * y.clamp(max=1e-4)  # log(expm1(y)) ~ log y + y / 2
    mid = torch.log(torch.expm1(y.clamp(1e-4, 30.0)))
    return torch.where(y < 1e-4, small, torch.where(y > 30.0, y, mid))


class TriplaneField(nn.Module):
    """Query a triplane (B, 3, C, R, R) at world points with the NeRF or the mesh decoder.

    ``plane_filter`` (a triflow3d extension, 0 = off as for InstantMesh): the field reads the planes through
    the low-pass [a, 1 - 2a, a] with a = ``plane_filter`` (:func:`~triflow3d.triplane.sampling.smooth_planes`;
    0.25 is the binomial [1 2 1] / 4), so texel-to-texel noise in a triplane (a generator's residual error)
    does not become specks of density.
    """

    def __init__(
        self,
        n_features: int,
        kind: Literal["nerf", "mesh"] = "nerf",
        hidden: int = 64,
        sdf_beta: float = SDF_BETA,
        rgb_skip: bool = False,
        colour_channels: int = 0,
        plane_filter: float = 0.0,
    ):
        super().__init__()
        if kind not in ("nerf", "mesh"):
            raise ConfigError(f"TriplaneField kind must be 'nerf' or 'mesh', got {kind!r}")
        self.kind = kind
        self.n_features = n_features
        self.sdf_beta = sdf_beta
        if (rgb_skip or colour_channels or plane_filter) and kind != "nerf":
            raise ConfigError("rgb_skip, colour channels and plane_filter are NeRF-decoder options")
        self.plane_filter = plane_filter
        self.decoder = (
            NerfDecoder(n_features, hidden, rgb_skip, colour_channels)
            if kind == "nerf"
            else MeshDecoder(n_features, hidden)
        )

    def prepare(self, planes: torch.Tensor) -> torch.Tensor | FoldedPlanes:
        """Planes in the cheapest form for many ``query`` calls (folded when that saves work)."""
        dec = self.decoder
        planes = self.filtered(planes)
        if isinstance(dec, NerfDecoder) and dec.n_features > dec.net[0].out_features:
            return FoldedPlanes(dec.fold_planes(planes))
        return planes

    def query(
        self, planes: torch.Tensor | FoldedPlanes, xyz: torch.Tensor, chunk: int = DEFAULT_CHUNK
    ) -> dict[str, torch.Tensor]:
        """xyz (B, P, 3) -> sigma_raw, sigma (B, P, 1), rgb (B, P, 3) (+ sdf, deformation_raw: mesh)."""
        if not isinstance(planes, FoldedPlanes):  # prepared planes are filtered already
            planes = self.filtered(planes)
        parts = [self._query(planes, xyz[:, i : i + chunk]) for i in range(0, max(xyz.shape[1], 1), chunk)]
        return {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}

    def filtered(self, planes: torch.Tensor) -> torch.Tensor:
        """The planes as the decoder reads them: (B, 3, C, R, R), low-passed when ``plane_filter``."""
        return smooth_planes(planes, self.plane_filter) if self.plane_filter else planes

    def _query(self, planes: torch.Tensor | FoldedPlanes, xyz: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(planes, FoldedPlanes):
            raw = self.decoder.forward_folded(sample_planes(planes.planes, xyz))
        elif self.kind == "nerf":
            raw = self.decoder(triplane_features(planes, xyz))  # (B, P, 4)
        else:
            return self._query_mesh(planes, xyz)
        sigma_raw = raw[..., :1]
        return {
            "sigma_raw": sigma_raw,
            "sigma": density_from_raw(sigma_raw),
            "rgb": rgb_from_raw(raw[..., 1:]),
        }

    def _query_mesh(self, planes: torch.Tensor, xyz: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.decoder(triplane_features(planes, xyz))
        log_sigma = laplace_sdf_log_density(out["sdf"], self.sdf_beta)
        return {
            "sigma_raw": softplus_inverse_from_log(log_sigma) - cv.DENSITY_SHIFT,
            "sigma": torch.exp(log_sigma),
            "rgb": rgb_from_raw(out["rgb_raw"]),
            "sdf": out["sdf"],
            "deformation_raw": out["deformation_raw"],
        }

    def query_cube_weights(
        self, planes: torch.Tensor, xyz: torch.Tensor, cubes: torch.Tensor, chunk: int = 2**15
    ) -> torch.Tensor:
        """FlexiCubes weights (B, K, 21) for cubes (K, 8) indexing corner points xyz (B, P, 3)."""
        if not isinstance(self.decoder, MeshDecoder):
            raise ConfigError("query_cube_weights needs the mesh decoder (kind='mesh')")
        out = []
        for i in range(0, cubes.shape[0], chunk):
            corners = xyz[:, cubes[i : i + chunk].reshape(-1)]  # (B, k*8, 3)
            feats = planes_to_features(sample_planes(planes, corners))  # (B, k*8, 3C)
            out.append(self.decoder.cube_weights(feats.reshape(feats.shape[0], -1, 8 * feats.shape[-1])))
        return torch.cat(out, dim=1)

    def flexicubes_predictions(
        self, planes: torch.Tensor, grid_res: int, grid_scale: float = 2.1
    ) -> dict[str, torch.Tensor]:
        """Upstream's grid heads: sdf (B, V, 1), deformation = tanh(raw) / (4 res) (B, V, 3), weight."""
        verts, cubes = flexicubes_grid(grid_res, grid_scale, device=planes.device)
        xyz = verts[None].expand(planes.shape[0], -1, -1)
        out = self.query(planes, xyz)
        return {
            "sdf": out["sdf"],
            "deformation": torch.tanh(out["deformation_raw"]) / (grid_res * 4.0),
            "weight": self.query_cube_weights(planes, xyz, cubes),
            "verts": verts,
            "cubes": cubes,
        }


def flexicubes_grid(res: int, scale: float = 2.1, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lattice ((res+1)^3, 3) on linspace(-0.5, 0.5, res+1) * scale, index (ix (res+1) + iy)(res+1) + iz,
    and cubes (res^3, 8) with corner order (0,0,0),(1,0,0),(0,1,0),(1,1,0),(0,0,1),...; cube (cx res + cy) res + cz.
    """
    lin = torch.linspace(-0.5, 0.5, res + 1, device=device) * scale
    verts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    n = res + 1
    c = torch.arange(res, device=device)
    cx, cy, cz = (t.reshape(-1) for t in torch.meshgrid(c, c, c, indexing="ij"))
    offsets = [(dx, dy, dz) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
    cubes = torch.stack([((cx + dx) * n + cy + dy) * n + cz + dz for dx, dy, dz in offsets], dim=-1)
    return verts, cubes
