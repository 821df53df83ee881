"""The latent standardisation: the ONLY place that maps raw triplanes to model space and back.

``x_std = clamp((x - mean) / (std + eps), -k, k)`` with mean / std per (plane, channel) ("per-channel",
the default), one scalar for all values ("global"), or the identity ("none"). Everything needed to
reproduce it lives in persistent buffers, so ``state_dict`` / safetensors carry it with the model, and
``config()`` gives the JSON that sits next to a checkpoint.

Folding into the frozen decoder (``fold_into_decoder``): bilinear sampling is affine where all four
taps of every plane lie inside the plane, so ``decode(fold(x_std)) == decode(denormalize(x_std))`` for
points whose three coordinates all satisfy ``|coord| <= fold_exact_bound(R) = 1 - 1/R``
(align_corners=False puts texel centres at (i + 0.5) / R * 2 - 1, so a tap falls into the zero padding
only in the outer half-texel band). In that band the folded first layer's pre-activation is off by
``sum_p W_p mean_p (1 - coverage_p)``, where ``coverage_p`` is the in-plane share of the bilinear
weights: the zero padding pads standardised values with 0, i.e. raw values with ``mean``, not with 0.
Outside the box the planes read pure padding, so the folded decoder sees ``mean`` where the reference
sees 0 (the mesh variant's FlexiCubes grid reaches +-1.05). No plain Linear can absorb that
position-dependent term, so the fold is exact only on the interior; ``denormalize`` + decode is exact
everywhere and costs one affine op per triplane, and is the default path.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from triflow3d.conventions import CONVENTIONS_VERSION, NUM_PLANES
from triflow3d.errors import ConfigError

if TYPE_CHECKING:
    from triflow3d.latents.stats import LatentStats

MODES: tuple[str, ...] = ("per-channel", "global", "none")


class LatentNormalizer(nn.Module):
    """Standardise triplanes (B, 3, C, R, R) with buffers mean / std of shape (3, C, 1, 1)."""

    def __init__(
        self,
        n_channels: int,
        mode: str = "per-channel",
        clamp: float | None = None,
        eps: float = 1e-6,
        encoder_id: str = "",
    ):
        super().__init__()
        _check(mode, clamp, eps)
        self.n_channels = n_channels
        self.encoder_id = encoder_id
        self.register_buffer("mean", torch.zeros(NUM_PLANES, n_channels, 1, 1))
        self.register_buffer("std", torch.ones(NUM_PLANES, n_channels, 1, 1))
        self.register_buffer("mode_code", torch.tensor(MODES.index(mode), dtype=torch.int64))
        self.register_buffer("clamp_k", torch.tensor(0.0 if clamp is None else float(clamp)))  # 0 = off
        self.register_buffer("eps", torch.tensor(float(eps)))

    @property
    def mode(self) -> str:
        return MODES[int(self.mode_code)]

    @property
    def clamp(self) -> float | None:
        k = float(self.clamp_k)
        return k if k > 0 else None

    def scale(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The divisor std + eps, (3, C, 1, 1), computed in ``dtype``."""
        return self.std.to(dtype) + self.eps.to(dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (..., 3, C, R, R) -> standardised (clamped to +-k if set), same dtype as x."""
        self._check_shape(x)
        if self.mode == "none":
            return x
        dt = _compute_dtype(x)
        y = (x.to(dt) - self.mean.to(dt)) / self.scale(dt)
        if self.clamp is not None:
            y = y.clamp(-self.clamp, self.clamp)
        return y.to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised (..., 3, C, R, R) -> raw, same dtype as x (never clamps)."""
        self._check_shape(x)
        if self.mode == "none":
            return x
        dt = _compute_dtype(x)
        return (x.to(dt) * self.scale(dt) + self.mean.to(dt)).to(x.dtype)

    def config(self) -> dict:
        """The JSON-ready description stored next to checkpoints (the numbers are in the buffers)."""
        return {
            "n_channels": self.n_channels,
            "mode": self.mode,
            "clamp": self.clamp,
            "eps": float(self.eps),
            "encoder_id": self.encoder_id,
            "conventions_version": CONVENTIONS_VERSION,
        }

    @classmethod
    def from_config(cls, config: dict) -> LatentNormalizer:
        """An identity-initialised normaliser of the given config; load the state_dict into it next."""
        version = config.get("conventions_version", CONVENTIONS_VERSION)
        if version != CONVENTIONS_VERSION:
            raise ConfigError(
                f"normaliser config has conventions v{version}, this code is v{CONVENTIONS_VERSION}"
            )
        return cls(
            config["n_channels"],
            config["mode"],
            config.get("clamp"),
            config.get("eps", 1e-6),
            config.get("encoder_id", ""),
        )

    @classmethod
    def from_stats(
        cls, stats: LatentStats, mode: str = "per-channel", clamp: float | None = None, eps: float = 1e-6
    ) -> LatentNormalizer:
        if stats.conventions_version != CONVENTIONS_VERSION:
            raise ConfigError(
                f"stats were computed under conventions v{stats.conventions_version}, "
                f"this code is v{CONVENTIONS_VERSION}"
            )
        norm = cls(stats.n_channels, mode, clamp, eps, stats.encoder_id)
        if mode == "per-channel":
            mean, std = torch.from_numpy(stats.mean), torch.from_numpy(stats.std)
        elif mode == "global":
            mean = torch.full((NUM_PLANES, stats.n_channels), stats.global_mean, dtype=torch.float64)
            std = torch.full((NUM_PLANES, stats.n_channels), stats.global_std, dtype=torch.float64)
        else:
            return norm
        norm.mean.copy_(mean[..., None, None])
        norm.std.copy_(std[..., None, None])
        return norm

    def _check_shape(self, x: torch.Tensor) -> None:
        if x.ndim < 4 or tuple(x.shape[-4:-2]) != (NUM_PLANES, self.n_channels):
            raise ValueError(f"expected (..., 3, {self.n_channels}, R, R) triplanes, got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"n_channels={self.n_channels}, mode={self.mode!r}, clamp={self.clamp}, encoder_id={self.encoder_id!r}"


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 island for half / bf16 inputs; float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)


def _check(mode: str, clamp: float | None, eps: float) -> None:
    if mode not in MODES:
        raise ConfigError(f"normaliser mode must be one of {MODES}, got {mode!r}")
    if clamp is not None and not clamp > 0:
        raise ConfigError(f"normaliser clamp must be > 0 or None, got {clamp}")
    if clamp is not None and mode == "none":
        raise ConfigError("normaliser mode 'none' is the identity; it cannot clamp")
    if not eps >= 0:
        raise ConfigError(f"normaliser eps must be >= 0, got {eps}")


def fold_exact_bound(resolution: int) -> float:
    """Largest |coord| at which a fold is exact: every bilinear tap lies inside an R-texel plane."""
    return 1.0 - 1.0 / resolution


# Decoder heads that read plane features: NerfDecoder.net; MeshDecoder.net_{sdf,rgb,deformation} read
# one point's 3C features, net_weight the 8 cube corners' features corner-major (8 * 3C).
FOLDABLE_HEADS: tuple[str, ...] = ("net", "net_sdf", "net_rgb", "net_deformation", "net_weight")


def fold_into_decoder(normalizer: LatentNormalizer, decoder: nn.Module) -> nn.Module:
    """A copy of ``decoder`` (NerfDecoder or MeshDecoder) that decodes standardised triplanes directly.

    Each feature head's first Linear(k * 3C -> H) absorbs denormalisation: W' = W diag(s), b' = b + W mu
    with s = std + eps and mu = mean flattened plane-major (input index p * C + c), tiled k times (k = 8
    for the cube-corner head). Exact where bilinear sampling is affine, i.e. every coordinate within
    fold_exact_bound(R) (module docstring). A clamping normaliser folds fine: clamping applies on
    ``normalize`` only, and decoding generated standardised triplanes never clamps.
    """
    width = NUM_PLANES * normalizer.n_channels
    heads = [n for n in FOLDABLE_HEADS if isinstance(getattr(decoder, n, None), nn.Sequential)]
    for name in heads:
        first = getattr(decoder, name)[0]
        if not isinstance(first, nn.Linear) or first.in_features % width:
            raise ConfigError(f"cannot fold: decoder.{name}[0] must be Linear(k * {width}, H), got {first!r}")
    if not heads:
        raise ConfigError(f"cannot fold: {type(decoder).__name__} has none of the heads {FOLDABLE_HEADS}")
    folded = copy.deepcopy(decoder)
    if normalizer.mode != "none":
        for name in heads:
            _fold_linear(getattr(folded, name)[0], normalizer.mean, normalizer.scale(torch.float64))
    return folded


@torch.no_grad()
def _fold_linear(lin: nn.Linear, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """In place: lin(x) == old_lin(x * s + mu) with s, mu (3, C, 1, 1) flattened and tiled to in_features."""
    k = lin.in_features // mean.numel()
    w = lin.weight.detach().double().clone()  # (H, k * 3C); clone: copy_ below must not alias it
    s = scale.double().reshape(-1).repeat(k).to(w.device)
    mu = mean.double().reshape(-1).repeat(k).to(w.device)
    b = w @ mu
    if lin.bias is not None:
        b += lin.bias.double()
    else:
        lin.bias = nn.Parameter(torch.empty_like(b, dtype=lin.weight.dtype), lin.weight.requires_grad)
    lin.weight.copy_(w * s)
    lin.bias.copy_(b)
