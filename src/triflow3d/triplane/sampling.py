"""Sampling features from a triplane (B, 3, C, R, R) at world points, as InstantMesh does.

Plane p reads the world axes ``conventions.PLANE_AXES[p]`` as grid_sample's (u -> W, v -> H), after
scaling world coordinates by 2 / BOX_WARP. Bilinear, ``align_corners=False``, zero padding: points
outside the box read zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from triflow3d import conventions as cv


def project_to_planes(xyz: torch.Tensor) -> torch.Tensor:
    """World points (B, P, 3) -> grid_sample coordinates (B, 3, P, 2) in [-1, 1] over the box."""
    idx = torch.tensor([a for axes in cv.PLANE_AXES for a in axes], device=xyz.device)
    uv = (xyz * (2.0 / cv.BOX_WARP)).index_select(-1, idx)  # (B, P, 6)
    return uv.unflatten(-1, (cv.NUM_PLANES, 2)).transpose(1, 2)  # (B, 3, P, 2)


def sample_planes(planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Bilinear plane features at world points: planes (B, 3, C, R, R), xyz (B, P, 3) -> (B, 3, P, C)."""
    b, n, c, h, w = planes.shape
    uv = project_to_planes(xyz).reshape(b * n, 1, -1, 2)  # (B*3, 1, P, 2)
    out = F.grid_sample(
        planes.reshape(b * n, c, h, w),
        uv.to(planes.dtype),
        mode="bilinear",
        padding_mode=cv.GRID_SAMPLE_PADDING,
        align_corners=cv.GRID_SAMPLE_ALIGN_CORNERS,
    )  # (B*3, C, 1, P)
    return out.reshape(b, n, c, -1).transpose(-1, -2)  # (B, 3, P, C)


def planes_to_features(samples: torch.Tensor) -> torch.Tensor:
    """(B, 3, P, C) -> (B, P, 3C): the decoder input, concatenated plane-major."""
    b, n, p, c = samples.shape
    return samples.permute(0, 2, 1, 3).reshape(b, p, n * c)


def triplane_features(planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Decoder input at world points: planes (B, 3, C, R, R), xyz (B, P, 3) -> (B, P, 3C)."""
    return planes_to_features(sample_planes(planes, xyz))


BINOMIAL_SIDE = 0.25  # [1 2 1] / 4: the strongest 3-tap low-pass, zero response to the texel checkerboard


def smooth_planes(planes: torch.Tensor, side: float = BINOMIAL_SIDE) -> torch.Tensor:
    """The separable low-pass [side, 1 - 2 side, side] along both axes of every plane channel, edges
    replicated: (B, 3, C, R, R) -> (B, 3, C, R, R). ``side`` in [0, 0.25]: 0 is the identity, 0.25 the
    binomial [1 2 1] / 4; the texel checkerboard is scaled by (1 - 4 side)^2. Linear, and every output is a
    weighted mean (a per-channel affine map such as the latent standardisation commutes with it)."""
    if not 0.0 <= side <= BINOMIAL_SIDE:
        raise ValueError(f"smooth_planes: side must be in [0, {BINOMIAL_SIDE}], got {side}")
    b, n, c, h, w = planes.shape
    k1 = torch.tensor([side, 1.0 - 2.0 * side, side], dtype=planes.dtype, device=planes.device)
    kernel = (k1[:, None] * k1[None, :]).expand(n * c, 1, 3, 3)  # depthwise (3C, 1, 3, 3)
    x = F.pad(planes.reshape(b, n * c, h, w), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(x, kernel, groups=n * c).reshape(b, n, c, h, w)
