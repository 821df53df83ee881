"""The InstantMesh triplane decoders (NeRF and FlexiCubes variants) and their activations.

Parameter names match upstream so official checkpoints strict-load: ``net.{0,2,4,6}`` for the NeRF
decoder and ``net_sdf|net_rgb|net_deformation|net_weight.{0,2,4,6}`` for the mesh decoder. There is
no view dependence: ray directions are never an input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triflow3d import conventions as cv

CUBE_CORNERS = 8  # net_weight reads the features of a cube's 8 corners
CUBE_WEIGHTS = 21  # FlexiCubes beta (12), alpha (8), gamma (1)
WEIGHT_SCALE = 0.1  # upstream multiplies the net_weight output by 0.1


def density_from_raw(sigma_raw: torch.Tensor) -> torch.Tensor:
    """Activated density softplus(sigma_raw + DENSITY_SHIFT) (upstream's softplus(sigma - 1))."""
    return F.softplus(sigma_raw + cv.DENSITY_SHIFT)


def rgb_from_raw(o: torch.Tensor) -> torch.Tensor:
    """MipNeRF sigmoid clamp: sigmoid(o) * (1 + 2 eps) - eps, range [-eps, 1 + eps]."""
    return torch.sigmoid(o) * (1 + 2 * cv.RGB_PADDING) - cv.RGB_PADDING


def mlp(n_in: int, n_out: int, hidden: int = 64) -> nn.Sequential:
    """Linear-ReLU x3 then Linear (state-dict indices 0, 2, 4, 6), zero biases as upstream."""
    net = nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, n_out),
    )
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return net


class NerfDecoder(nn.Module):
    """features (..., 3C) -> raw (..., 4): channel 0 is sigma_raw, channels 1:4 are rgb logits."""

    def __init__(self, n_features: int, hidden: int = 64):
        super().__init__()
        self.n_features = n_features
        self.net = mlp(cv.NUM_PLANES * n_features, 4, hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def fold_planes(self, planes: torch.Tensor) -> torch.Tensor:
        """Push the first Linear through the (linear) bilinear sampling: (B, 3, C, R, R) -> (B, 3, H, R, R).

        Sampling the folded planes and summing over planes equals ``net[0](features) - bias``, because
        bilinear interpolation with zero padding commutes with a linear map. It is cheaper when 3C > 3H.
        """
        w = self.net[0].weight.reshape(-1, cv.NUM_PLANES, self.n_features)  # (H, 3, C)
        return torch.einsum("hpc,bpcyx->bphyx", w, planes)

    def forward_folded(self, folded_samples: torch.Tensor) -> torch.Tensor:
        """Samples of :meth:`fold_planes` output (B, 3, P, H) -> raw (B, P, 4)."""
        h = folded_samples.sum(dim=1) + self.net[0].bias  # (B, P, H)
        return self.net[1:](h)


class MeshDecoder(nn.Module):
    """The FlexiCubes variant's four heads, each features (..., 3C) -> raw outputs."""

    def __init__(self, n_features: int, hidden: int = 64):
        super().__init__()
        d = cv.NUM_PLANES * n_features
        self.n_features = n_features
        self.net_sdf = mlp(d, 1, hidden)
        self.net_rgb = mlp(d, 3, hidden)
        self.net_deformation = mlp(d, 3, hidden)
        self.net_weight = mlp(CUBE_CORNERS * d, CUBE_WEIGHTS, hidden)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """(..., 3C) -> sdf (..., 1) (inside negative), rgb logits (..., 3), deformation_raw (..., 3)."""
        return {
            "sdf": self.net_sdf(features),
            "rgb_raw": self.net_rgb(features),
            "deformation_raw": self.net_deformation(features),
        }

    def cube_weights(self, corner_features: torch.Tensor) -> torch.Tensor:
        """(..., 8 * 3C) corner-major cube features -> FlexiCubes weights (..., 21), already x 0.1."""
        return self.net_weight(corner_features) * WEIGHT_SCALE
