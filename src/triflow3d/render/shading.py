"""What both render backends share: the output type, the renderer protocol and the shading model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from triflow3d.conventions import linear_to_srgb

if TYPE_CHECKING:
    from triflow3d.assets.types import Asset
    from triflow3d.cameras import Rig

# Shading model shared by both backends (linear RGB): albedo * (AMBIENT + DIFFUSE * |n . l|), with a
# headlight l = the camera's viewing axis, so flat colours stay close to their albedo from every view.
AMBIENT: float = 0.35
DIFFUSE: float = 0.65
ALPHA_CUTOFF: float = 0.5  # surface points whose material alpha is below this are see-through
NEAR: float = 0.1  # clip planes for rigs at radius 4-4.5 around objects of radius <= 1
FAR: float = 20.0


@dataclass(frozen=True)
class RenderOutput:
    """All passes of one asset seen from N cameras; row 0 is the top of each image."""

    rgba: np.ndarray  # (N, S, S, 4) float32 in [0, 1], straight (not premultiplied) alpha, sRGB
    depth: np.ndarray  # (N, S, S) float32 distance along the camera's viewing axis, 0 where empty
    normal: np.ndarray  # (N, S, S, 3) float32 unit world normals facing the camera, 0 where empty
    mask: np.ndarray  # (N, S, S) bool, pixel centre covered

    def rgb_on_white(self) -> np.ndarray:
        """(N, S, S, 3) float32: rgb composited on a white background, ``rgb * a + (1 - a)``."""
        a = self.rgba[..., 3:]
        return (self.rgba[..., :3] * a + (1.0 - a)).astype(np.float32)


class Renderer(Protocol):
    """Renders an asset from every camera of a rig at ``size`` x ``size`` pixels."""

    name: str

    def render(self, asset: Asset, rig: Rig, size: int) -> RenderOutput: ...


# --- colour helpers shared by both backends ------------------------------------------------------
def finish_rgba(premultiplied_linear: np.ndarray) -> np.ndarray:
    """(..., 4) premultiplied linear RGBA (an MSAA / supersampling average) -> straight sRGB RGBA."""
    out = np.zeros(premultiplied_linear.shape, np.float32)
    covered = premultiplied_linear[..., 3] > 1e-6  # only covered pixels need the (costly) sRGB curve
    px = premultiplied_linear[covered]  # (M, 4)
    a = np.clip(px[:, 3:], 0.0, 1.0)
    out[covered] = np.concatenate([linear_to_srgb(px[:, :3] / a), a], axis=-1)
    return out
