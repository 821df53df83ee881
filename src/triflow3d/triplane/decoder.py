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
    """features (..., 3C) -> raw (..., 4): channel 0 is sigma_raw, channels 1:4 are rgb logits.

    ``rgb_skip`` (a triflow3d extension, off for InstantMesh): a Linear from the features straight to the
    rgb logits, added to the MLP's, zero-initialised (a no-op at the start, so a trained decoder can grow
    it). Every colour direction of the features then reaches the output at full rank from the first step,
    whatever the MLP has learned (``lrm-small`` v3's decoder barely expresses green-red, see its card).

    ``colour_channels`` (3 or 0; implies the skip): the last three channels of every plane hold a colour
    logit (the plane lift's column colours, :func:`triflow3d.encoders.lift.column_colour`); the skip starts
    as their mean over the three planes instead of zero, so the rgb output starts as that colour.
    """

    def __init__(self, n_features: int, hidden: int = 64, rgb_skip: bool = False, colour_channels: int = 0):
        super().__init__()
        if colour_channels not in (0, 3) or colour_channels >= n_features:
            raise ValueError(
                f"colour_channels must be 0 or 3 (< {n_features} features), got {colour_channels}"
            )
        self.n_features = n_features
        self.net = mlp(cv.NUM_PLANES * n_features, 4, hidden)
        self.rgb_skip = None
        if rgb_skip or colour_channels:
            self.rgb_skip = nn.Linear(cv.NUM_PLANES * n_features, 3)
            nn.init.zeros_(self.rgb_skip.weight)
            nn.init.zeros_(self.rgb_skip.bias)
            with torch.no_grad():
                w = self.rgb_skip.weight.view(3, cv.NUM_PLANES, n_features)  # features are plane-major
                for k in range(colour_channels):
                    w[k, :, n_features - colour_channels + k] = 1.0 / cv.NUM_PLANES

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        raw = self.net(features)
        if self.rgb_skip is None:
            return raw
        return raw + F.pad(self.rgb_skip(features), (1, 0))  # (..., 4): nothing added to sigma

    def fold_planes(self, planes: torch.Tensor) -> torch.Tensor:
        """Push the first Linear (and the rgb skip) through the (linear) bilinear sampling:
        (B, 3, C, R, R) -> (B, 3, H [+ 3], R, R).

        Sampling the folded planes and summing over planes equals ``net[0](features) - bias``, because
        bilinear interpolation with zero padding commutes with a linear map. It is cheaper when 3C > 3H.
        """
        w = self.net[0].weight
        if self.rgb_skip is not None:
            w = torch.cat([w, self.rgb_skip.weight])
        w = w.reshape(-1, cv.NUM_PLANES, self.n_features)  # (H [+ 3], 3, C)
        return torch.einsum("hpc,bpcyx->bphyx", w, planes)

    def forward_folded(self, folded_samples: torch.Tensor) -> torch.Tensor:
        """Samples of :meth:`fold_planes` output (B, 3, P, H [+ 3]) -> raw (B, P, 4)."""
        s = folded_samples.sum(dim=1)  # (B, P, H [+ 3])
        hidden = self.net[0].out_features
        raw = self.net[1:](s[..., :hidden] + self.net[0].bias)
        if self.rgb_skip is None:
            return raw
        return raw + F.pad(s[..., hidden:] + self.rgb_skip.bias, (1, 0))


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
