"""Cameras: poses, rigs, the 16/25-number encodings, and pixel rays.

All frames follow :mod:`triflow3d.conventions` (z-up world, OpenGL camera-to-world, normalised
intrinsics). Functions are pure and work on float32 torch tensors; batch dimensions lead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from triflow3d import conventions as cv


@dataclass(frozen=True)
class Rig:
    """A set of cameras looking at the origin: c2w (N, 4, 4) OpenGL, one field of view for all."""

    c2w: torch.Tensor  # (N, 4, 4) float32
    fov_deg: float

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def intrinsics(self) -> torch.Tensor:  # (N, 3, 3)
        return intrinsics_from_fov(self.fov_deg).expand(len(self), 3, 3).clone()

    def input_cameras(self) -> torch.Tensor:  # (N, 16)
        return encode_input_cameras(self.c2w, self.intrinsics)

    def render_cameras(self) -> torch.Tensor:  # (N, 25)
        return encode_render_cameras(self.c2w, self.intrinsics)


def spherical_positions(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, radius: float | torch.Tensor):
    """Camera centres r (cos e cos a, cos e sin a, sin e): azimuth from +x toward +y, z-up. -> (N, 3)."""
    a = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64))
    e = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float64))
    r = torch.as_tensor(radius, dtype=torch.float64)
    xyz = torch.stack([torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], dim=-1)
    return (xyz * r[..., None] if r.ndim else xyz * r).float()


def look_at_c2w(position: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """OpenGL camera-to-world matrices (N, 4, 4) for cameras at ``position`` (N, 3) looking at ``target``.

    Columns: x = right, y = up, z = backward (target -> camera), then the position; world up is +z.
    """
    position = position.to(torch.float64)
    target = torch.zeros_like(position) if target is None else target.to(torch.float64).expand_as(position)
    up = torch.tensor(cv.WORLD_UP, dtype=torch.float64).expand_as(position)
    z = torch.nn.functional.normalize(position - target, dim=-1)
    x = torch.nn.functional.normalize(torch.cross(up, z, dim=-1), dim=-1)
    y = torch.nn.functional.normalize(torch.cross(z, x, dim=-1), dim=-1)
    c2w = torch.zeros(*position.shape[:-1], 4, 4, dtype=torch.float64)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = x, y, z, position
    c2w[..., 3, 3] = 1.0
    return c2w.float()


def intrinsics_from_fov(fov_deg: float) -> torch.Tensor:
    """Normalised K (3, 3) float32: [[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]], f = 0.5 / tan(fov / 2)."""
    f = cv.focal_from_fov(fov_deg)
    return torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64).float()


def fov_from_intrinsics(K: torch.Tensor) -> torch.Tensor:
    """Vertical field of view in degrees from normalised intrinsics (..., 3, 3)."""
    return torch.rad2deg(2.0 * torch.atan(0.5 / K[..., 1, 1]))


def rig_from_angles(azimuth_deg, elevation_deg, radius: float, fov_deg: float) -> Rig:
    pos = spherical_positions(torch.as_tensor(azimuth_deg), torch.as_tensor(elevation_deg), radius)
    return Rig(look_at_c2w(pos), fov_deg)


def zero123pp_rig(radius: float = cv.ZERO123PP_RADIUS, fov_deg: float = cv.ZERO123PP_FOV_DEG) -> Rig:
    """The six Zero123++ v1.2 views InstantMesh was trained to read (order = its 3x2 tile order)."""
    return rig_from_angles(cv.ZERO123PP_AZIMUTHS_DEG, cv.ZERO123PP_ELEVATIONS_DEG, radius, fov_deg)


def orbit_rig(
    n: int,
    elevation_deg: float = cv.RENDER_ELEVATION_DEG,
    radius: float = cv.RENDER_RADIUS,
    fov_deg: float = cv.RENDER_FOV_DEG,
    start_azimuth_deg: float = 0.0,
) -> Rig:
    """``n`` cameras evenly spaced in azimuth at one elevation (turntables, evaluation)."""
    az = start_azimuth_deg + 360.0 * torch.arange(n, dtype=torch.float64) / n
    return rig_from_angles(az, torch.full((n,), float(elevation_deg), dtype=torch.float64), radius, fov_deg)


def random_rig(
    n: int,
    seed: int,
    elevation_range_deg: tuple[float, float] = (-20.0, 45.0),
    radius: float = cv.ZERO123PP_RADIUS,
    fov_deg: float = cv.ZERO123PP_FOV_DEG,
) -> Rig:
    """``n`` cameras with uniform azimuth and elevation drawn from a seeded CPU generator."""
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(n, generator=g, dtype=torch.float64) * 360.0
    lo, hi = elevation_range_deg
    el = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    return rig_from_angles(az, el, radius, fov_deg)


def parse_rig(spec: str, seed: int = 0) -> Rig:
    """``zero123pp`` | ``orbit:N`` | ``random:N`` (the CLI's ``--rig`` values)."""
    name, _, arg = spec.partition(":")
    if name == "zero123pp" and not arg:
        return zero123pp_rig()
    if name in ("orbit", "random") and arg.isdigit() and int(arg) > 0:
        return orbit_rig(int(arg)) if name == "orbit" else random_rig(int(arg), seed)
    raise ValueError(f"unknown rig {spec!r}: expected zero123pp, orbit:N or random:N")


# --- encodings ---------------------------------------------------------------------------------
def encode_input_cameras(c2w: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) c2w + (..., 3, 3) K -> (..., 16): c2w[:3, :4] row-major, then fx, fy, cx, cy."""
    intr = torch.stack([K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], dim=-1)
    return torch.cat([c2w[..., :3, :4].flatten(-2), intr], dim=-1).float()


def decode_input_cameras(cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 16) -> c2w (..., 4, 4), K (..., 3, 3)."""
    _check_last_dim(cams, cv.INPUT_CAMERA_DIM)
    c2w = torch.zeros(*cams.shape[:-1], 4, 4, dtype=cams.dtype, device=cams.device)
    c2w[..., :3, :4] = cams[..., :12].unflatten(-1, (3, 4))
    c2w[..., 3, 3] = 1.0
    K = torch.zeros(*cams.shape[:-1], 3, 3, dtype=cams.dtype, device=cams.device)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2] = cams[..., 12:16].unbind(-1)
    K[..., 2, 2] = 1.0
    return c2w, K


def encode_render_cameras(c2w: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) c2w + (..., 3, 3) K -> (..., 25): c2w row-major, then K row-major."""
    return torch.cat([c2w.flatten(-2), K.flatten(-2)], dim=-1).float()


def decode_render_cameras(cams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 25) -> c2w (..., 4, 4), K (..., 3, 3)."""
    _check_last_dim(cams, cv.RENDER_CAMERA_DIM)
    return cams[..., :16].unflatten(-1, (4, 4)), cams[..., 16:25].unflatten(-1, (3, 3))


def input_to_render_cameras(cams16: torch.Tensor) -> torch.Tensor:
    """(..., 16) -> (..., 25): the same cameras in the render encoding."""
    return encode_render_cameras(*decode_input_cameras(cams16))


def _check_last_dim(x: torch.Tensor, n: int) -> None:
    if x.shape[-1] != n:
        raise ValueError(f"expected cameras with last dimension {n}, got shape {tuple(x.shape)}")


# --- rays --------------------------------------------------------------------------------------
def pixel_rays(c2w: torch.Tensor, K: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixel centres, as InstantMesh's RaySampler builds them.

    c2w (N, 4, 4) OpenGL, K (N, 3, 3) normalised -> origins (N, S*S, 3), unit directions (N, S*S, 3).
    Ray index p = i * S + j for row i (0 = top) and column j.
    """
    n = c2w.shape[0]
    dev, dt = c2w.device, c2w.dtype
    ij = torch.arange(size, device=dev, dtype=dt)
    ii, jj = torch.meshgrid(ij, ij, indexing="ij")
    u = ((jj + 0.5) / size).reshape(1, -1)  # (1, S*S)
    v = ((ii + 0.5) / size).reshape(1, -1)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy, sk = K[:, 0, 2, None], K[:, 1, 2, None], K[:, 0, 1, None]
    # Lift to OpenCV camera space (x right, y down, z forward) at depth 1, skew included as upstream.
    y_cam = (v - cy) / fy
    x_cam = (u - cx + cy * sk / fy - sk * v / fy) / fx
    z_cam = torch.ones_like(x_cam)
    pts_cam = torch.stack([x_cam, y_cam, z_cam, torch.ones_like(x_cam)], dim=1)  # (N, 4, S*S)
    flip = torch.tensor(cv.OPENGL_TO_OPENCV, device=dev, dtype=dt)
    c2w_cv = c2w * flip[None, None, :]  # c2w @ diag(1, -1, -1, 1)
    pts_world = torch.bmm(c2w_cv, pts_cam).permute(0, 2, 1)[..., :3]  # (N, S*S, 3)
    origins = c2w[:, None, :3, 3].expand(n, size * size, 3)
    dirs = torch.nn.functional.normalize(pts_world - origins, dim=-1)
    return origins.contiguous(), dirs


def project_points(
    c2w: torch.Tensor, K: torch.Tensor, xyz: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points into cameras: the inverse of :func:`pixel_rays` (skew ignored, as our rigs have none).

    c2w (N, 4, 4) OpenGL, K (N, 3, 3) normalised, xyz (N, P, 3) -> uv (N, P, 2) in [0, 1] over the image
    (u -> column, v -> row, 0 = top-left corner) and depth (N, P) along the view axis (> 0 in front).
    """
    flip = torch.tensor(cv.OPENGL_TO_OPENCV, device=c2w.device, dtype=c2w.dtype)
    w2c_cv = torch.linalg.inv(c2w * flip[None, None, :])  # OpenCV camera: x right, y down, z forward
    cam = torch.einsum("nij,npj->npi", w2c_cv[:, :3, :3], xyz) + w2c_cv[:, None, :3, 3]  # (N, P, 3)
    z = cam[..., 2]
    zs = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    u = K[:, None, 0, 0] * cam[..., 0] / zs + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * cam[..., 1] / zs + K[:, None, 1, 2]
    return torch.stack([u, v], dim=-1), z


def opengl_projection(fov_deg: float, near: float = 0.1, far: float = 20.0) -> torch.Tensor:
    """Square-aspect OpenGL clip-space projection (4, 4) for rasterisers (same FoV as the intrinsics)."""
    f = 1.0 / math.tan(math.radians(fov_deg) / 2.0)
    P = torch.zeros(4, 4, dtype=torch.float64)
    P[0, 0] = P[1, 1] = f
    P[2, 2] = (far + near) / (near - far)
    P[2, 3] = 2.0 * far * near / (near - far)
    P[3, 2] = -1.0
    return P.float()
