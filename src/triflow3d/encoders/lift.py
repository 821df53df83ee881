"""Projective lifting: image features gathered along each triplane token's column (a triflow3d extension).

InstantMesh's triplane queries start as one learned table and find the object only through
cross-attention, which a small model trained from scratch learns slowly (it sits on a "mean shape" for a
long time). The lift gives every query token an explicit geometric start instead: token (plane p, row i,
column j) stands for the line through its cell centre along the axis plane p does not read; ``depth``
points on that line are projected into every input view, a small CNN's features (plus the pixel colour)
are sampled there, and their mean and variance over the views (a multi-view consistency code: a point
inside the object sees the object in every view) are flattened over the depths and projected to the
transformer width. The result is added to the learned query table, so the transformer refines a
visual-hull-like initial estimate rather than inventing one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triflow3d import conventions as cv
from triflow3d.cameras import decode_input_cameras, project_points

LIFT_CHANNELS = 16  # CNN feature channels per pixel (the pixel's RGB is appended)


def token_columns(low_res: int, depth: int) -> torch.Tensor:
    """World points (3 * r * r * depth, 3) on each query token's column, token-major.

    Tokens are plane-major, then row (the plane's v axis), then column (u axis), as
    :class:`TriplaneTransformer` lays them out; depths run over the box along the missing axis.
    """
    half = cv.BOX_WARP / 2.0
    cells = ((torch.arange(low_res) + 0.5) / low_res * 2.0 - 1.0) * half  # (r,) cell centres
    depths = ((torch.arange(depth) + 0.5) / depth * 2.0 - 1.0) * half  # (D,)
    out = []
    for a_u, a_v in cv.PLANE_AXES:
        a_w = 3 - a_u - a_v  # the axis this plane does not read
        v, u, w = torch.meshgrid(cells, cells, depths, indexing="ij")  # (r, r, D): row, column, depth
        xyz = torch.zeros(low_res, low_res, depth, 3)
        xyz[..., a_u], xyz[..., a_v], xyz[..., a_w] = u, v, w
        out.append(xyz.reshape(-1, 3))
    return torch.cat(out)


class ProjectiveLift(nn.Module):
    """Images (B, V, 3, H, W) on white in [0, 1] + input cameras (B, V, 16) -> (B, 3*r*r, dim)."""

    def __init__(self, low_res: int, depth: int, dim: int, channels: int = LIFT_CHANNELS):
        super().__init__()
        self.low_res, self.depth = low_res, depth
        self.cnn = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1)
        )
        self.proj = nn.Linear(2 * (channels + 3) * depth, dim)
        nn.init.zeros_(self.proj.weight)  # starts as a no-op, so it can be added to a trained model
        nn.init.zeros_(self.proj.bias)

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        b, v = images.shape[:2]
        flat = images.flatten(0, 1)  # (B*V, 3, H, W)
        feats = torch.cat([self.cnn((flat - cv.ENCODER_PIXEL_MEAN) / cv.ENCODER_PIXEL_STD), flat], dim=1)
        c2w, K = decode_input_cameras(cameras.flatten(0, 1).float())
        pts = token_columns(self.low_res, self.depth).to(images.device)  # (P, 3), rebuilt: no buffer to load
        pts = pts.expand(b * v, -1, -1)  # (B*V, P, 3)
        uv, z = project_points(c2w, K, pts)  # (B*V, P, 2), (B*V, P)
        grid = (uv * 2.0 - 1.0).to(feats.dtype)[:, None]  # (B*V, 1, P, 2)
        seen = F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        seen = seen[:, :, 0] * (z > 0)[:, None].to(feats.dtype)  # (B*V, F, P); behind the camera -> 0
        seen = seen.unflatten(0, (b, v))  # (B, V, F, P)
        stats = torch.cat([seen.mean(1), seen.var(1, unbiased=False)], dim=1)  # (B, 2F, P)
        stats = stats.unflatten(-1, (-1, self.depth)).permute(0, 2, 1, 3)  # (B, T, 2F, D)
        return self.proj(stats.flatten(2))  # (B, T, dim)
