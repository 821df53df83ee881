"""The single source of truth for every frame, range and layout in triflow3d.

Everything here matches InstantMesh exactly (``shared/research/instantmesh.md`` sections 2.4 and 3),
because its frozen reconstruction model is the latent encoder the method is built around. Every other
module imports these values; none re-derives them. Bump ``CONVENTIONS_VERSION`` when any of them
changes: it is written into every triplane file and checkpoint, so old artifacts are never silently
reinterpreted.

World and object
    Right-handed, **z-up** world. Objects live in the box [-1, 1]^3 (the triplane box); asset
    normalisation puts them inside a sphere of radius ``OBJECT_RADIUS`` about the origin so the
    Zero123++ rig (radius 4, FoV 30 deg, visible radius 4 sin 15 deg = 1.035) never clips them.

Cameras
    Camera-to-world matrices in the **OpenGL** convention: camera x = right, y = up, z = backward
    (the camera looks down -z). Intrinsics are **normalised**: K = [[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]
    with f = 0.5 / tan(fov / 2), so pixel coordinates are in [0, 1]. Pixel (row i, col j) of an S x S
    image is the normalised point ((j + 0.5) / S, (i + 0.5) / S); row 0 is the top of the image.
    Input cameras (the reconstructor's conditioning) are 16 numbers: c2w[:3, :4] row-major, then
    fx, fy, cx, cy. Render cameras are 25 numbers: c2w 4x4 row-major, then K 3x3 row-major.

Triplane
    Tensor (B, 3, C, R, R): plane, channel, row (H), column (W). grid_sample's u indexes W and v
    indexes H. Plane 0: (u, v) = (x, y); plane 1: (u, v) = (x, z); plane 2: (u, v) = (z, y).
    Sampling is bilinear, ``align_corners=False``, zero padding; the three samples are concatenated
    in plane order. Density is softplus(sigma_raw + DENSITY_SHIFT); rgb = sigmoid(o) * (1 + 2 eps) - eps.

Images
    Float RGB(A) in [0, 1], channels first in tensors, composited on a white background. Image and
    vertex colours are sRGB; shading is computed in linear RGB (``srgb_to_linear`` / ``linear_to_srgb``).

Flow
    t in [0, 1] with t = 1 pure noise: x_t = (1 - t) x0 + t eps, velocity target v = eps - x0,
    clean estimate x0 = x_t - t v, and an Euler step x <- x + (t_next - t) v.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

CONVENTIONS_VERSION: Final[int] = 1

# --- world -------------------------------------------------------------------------------------
WORLD_UP: Final[tuple[float, float, float]] = (0.0, 0.0, 1.0)  # z-up
BOX_MIN: Final[float] = -1.0  # the triplane / object box is [BOX_MIN, BOX_MAX]^3
BOX_MAX: Final[float] = 1.0
BOX_WARP: Final[float] = BOX_MAX - BOX_MIN  # upstream rendering_kwargs['box_warp'] = 2
# Normalised assets fit in a sphere of this radius (< 4 sin 15 deg = 1.035 and < the box half-size).
OBJECT_RADIUS: Final[float] = 0.95

# --- cameras -----------------------------------------------------------------------------------
# OpenGL camera axes -> OpenCV camera axes (x right, y down, z forward): c2w_cv = c2w_gl @ diag(...)
OPENGL_TO_OPENCV: Final[tuple[float, float, float, float]] = (1.0, -1.0, -1.0, 1.0)
INPUT_CAMERA_DIM: Final[int] = 16  # c2w[:3, :4] row-major (12) + fx, fy, cx, cy (normalised)
RENDER_CAMERA_DIM: Final[int] = 25  # c2w 4x4 row-major (16) + K 3x3 row-major (9)

# The Zero123++ v1.2 six-view rig that InstantMesh consumes (tiles of its 3x2 grid, row-major).
ZERO123PP_AZIMUTHS_DEG: Final[tuple[float, ...]] = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
ZERO123PP_ELEVATIONS_DEG: Final[tuple[float, ...]] = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
ZERO123PP_RADIUS: Final[float] = 4.0
ZERO123PP_FOV_DEG: Final[float] = 30.0
ZERO123PP_IMAGE_SIZE: Final[int] = 320
# InstantMesh's video / render cameras (run.py): circular poses at this radius and elevation.
RENDER_RADIUS: Final[float] = 4.5
RENDER_ELEVATION_DEG: Final[float] = 20.0
RENDER_FOV_DEG: Final[float] = 30.0


def focal_from_fov(fov_deg: float) -> float:
    """Normalised focal length f = 0.5 / tan(fov / 2) (1.8660 at 30 degrees)."""
    return 0.5 / math.tan(math.radians(fov_deg) / 2.0)


# --- triplane ----------------------------------------------------------------------------------
NUM_PLANES: Final[int] = 3
# For each plane, the world axes (0 = x, 1 = y, 2 = z) that grid_sample's (u -> W, v -> H) read.
PLANE_AXES: Final[tuple[tuple[int, int], ...]] = ((0, 1), (0, 2), (2, 1))
# The axis each plane does not see (its normal), used to project occupancy onto the plane.
PLANE_NORMAL_AXES: Final[tuple[int, ...]] = (2, 1, 0)
GRID_SAMPLE_ALIGN_CORNERS: Final[bool] = False
GRID_SAMPLE_PADDING: Final[str] = "zeros"
DENSITY_SHIFT: Final[float] = -1.0  # sigma = softplus(sigma_raw + DENSITY_SHIFT)
RGB_PADDING: Final[float] = 0.001  # rgb = sigmoid(o) * (1 + 2 * RGB_PADDING) - RGB_PADDING
MESH_THRESHOLD: Final[float] = 10.0  # marching-cubes level on the activated density
BACKGROUND: Final[float] = 1.0  # white

# --- images ------------------------------------------------------------------------------------
IMAGE_RANGE: Final[tuple[float, float]] = (0.0, 1.0)
# The DINO image processor InstantMesh uses normalises with mean 0.5 / std 0.5 (not ImageNet).
ENCODER_PIXEL_MEAN: Final[float] = 0.5
ENCODER_PIXEL_STD: Final[float] = 0.5

# --- flow --------------------------------------------------------------------------------------
T_NOISE: Final[float] = 1.0  # t = 1 is pure noise
T_DATA: Final[float] = 0.0  # t = 0 is data
TIME_EMBED_SCALE: Final[float] = 1000.0  # t is scaled only inside the timestep embedder


# --- colour space ------------------------------------------------------------------------------
def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in [0, 1] -> linear RGB (IEC 61966-2-1), float32."""
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear RGB (..., 3), clipped to [0, 1] -> sRGB, float32."""
    c = np.clip(np.asarray(c, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055).astype(np.float32)
