"""Rectified-flow maths, in the one time convention of ``triflow3d.conventions`` (t = 1 is noise):

    x_t = (1 - t) x0 + t eps,    v = eps - x0,    x0 = x_t - t v,    Euler: x <- x + (t_next - t) v.

All functions are pure; ``t`` is (B,) and broadcast over the remaining dimensions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from triflow3d.errors import ConfigError

T_DISTRIBUTIONS = ("logit_normal", "uniform")


def _bcast(t: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) matching x's rank and dtype."""
    return t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def interpolate(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + tb * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """v = d x_t / d t = eps - x0."""
    return eps - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Clean estimate x0 = x_t - t v (exact when v is the true velocity)."""
    return x_t - _bcast(t, x_t) * v


def eps_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Noise estimate eps = x_t + (1 - t) v."""
    return x_t + (1 - _bcast(t, x_t)) * v


OUTPUTS = ("velocity", "skip", "x0")  # what a velocity model's network predicts: see ``velocity_from_output``
X0_T_MIN = 0.05  # "x0": v = (x_t - x0_hat) / max(t, X0_T_MIN), so low t does not divide by ~0


def skip_coefficient(t: Tensor) -> Tensor:
    """c(t) = (2t - 1) / ((1 - t)^2 + t^2): the least-squares coefficient of v on x_t for independent
    unit-variance x0 and eps (minimises E|v - c x_t|^2). c(0) = -1, c(1/2) = 0, c(1) = 1."""
    return (2 * t - 1) / ((1 - t).square() + t.square())


def velocity_from_output(out: Tensor, x_t: Tensor, t: Tensor, output: str) -> Tensor:
    """The velocity a network's raw output stands for (``output`` in ``OUTPUTS``); t (B,).

    - ``velocity``: the output is v.
    - ``skip``: v = c(t) x_t + out (``skip_coefficient``): at t = 1 the network predicts -x0, not eps - x0.
    - ``x0``: the output is the clean triplane, v = (x_t - out) / max(t, X0_T_MIN) (x-prediction with the
      velocity loss): the network never has to carry the noise through its narrow tokens. With
      ``velocity`` (and ``skip`` below t = 1) every texel of noise it fails to copy stays in x0 as roughness.
    """
    if output == "velocity":
        return out
    tb = _bcast(t, out)
    if output == "skip":
        return out + skip_coefficient(tb) * x_t
    if output == "x0":
        return (x_t - out) / tb.clamp_min(X0_T_MIN)
    raise ConfigError(f"unknown model output {output!r}; expected one of {OUTPUTS}")


def sample_t(
    n: int,
    kind: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training times (n,) in (0, 1): ``logit_normal`` = sigmoid(N(mean, std)) (SD3), or ``uniform``."""
    if kind == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))
    elif kind == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    else:
        raise ConfigError(f"unknown time distribution {kind!r}; expected one of {T_DISTRIBUTIONS}")
    return t


def time_shift(t: Tensor | float, shift: float) -> Tensor | float:
    """SD3 resolution shift: t' = s t / (1 + (s - 1) t); s > 1 spends more steps at high noise."""
    if shift <= 0:
        raise ConfigError(f"time shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def _expand_weight(weight: Tensor, like: Tensor) -> Tensor:
    """Loss weights (3, R, R) or (B, 3, 1, R, R) (anything broadcastable) -> like's shape."""
    if weight.ndim == 3 and like.ndim == 5:
        weight = weight[None, :, None]  # (1, 3, 1, R, R)
    return weight.to(like.dtype).expand_as(like)


def rf_loss(v_hat: Tensor, v: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Weighted rectified-flow loss sum(w (v_hat - v)^2) / sum(w), w broadcast per (plane, row, col).

    ``reduction="mean"`` -> scalar over the batch; ``"none"`` -> (B,) per-sample losses (for t-bin logs).
    With ``weight=None`` this is the plain MSE.
    """
    sq = (v_hat.float() - v.float()).pow(2)  # (B, ...)
    w = torch.ones_like(sq) if weight is None else _expand_weight(weight.float(), sq)
    num, den = (sq * w).flatten(1).sum(1), w.flatten(1).sum(1)  # (B,), (B,)
    if reduction == "none":
        return num / den.clamp_min(1e-12)
    if reduction == "mean":
        return num.sum() / den.sum().clamp_min(1e-12)
    raise ConfigError(f"rf_loss reduction must be 'mean' or 'none', got {reduction!r}")


def loss_by_t_bin(losses: Tensor, t: Tensor, bins: int = 4) -> dict[str, float]:
    """Mean per-sample loss in equal-width t bins, e.g. {"t0.00-0.25": 0.8, ...}; empty bins are left out."""
    idx = (t.detach().float() * bins).long().clamp(0, bins - 1)
    out = {}
    for b in range(bins):
        sel = idx == b
        if sel.any():
            out[f"t{b / bins:.2f}-{(b + 1) / bins:.2f}"] = float(losses.detach()[sel].float().mean())
    return out
