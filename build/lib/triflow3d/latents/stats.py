"""Streaming float64 statistics of triplane latents (data-preparation stage 2).

One ``LatentStats`` describes a set of triplanes of one encoder: per-(plane, channel) count, mean and
sum of squared deviations (merged with Chan's parallel formula, so shards and ranks combine exactly),
min / max, and a fixed histogram per (plane, channel) for approximate percentiles and tail fractions.

Histogram: ``bins`` bins uniform in ``asinh(x / scale)`` over ``[-limit, limit]`` (defaults: 2048 bins,
scale 1e-2, limit 15, i.e. |x| up to ~1.6e4; values beyond land in the edge bins). The bins are the same
for every triplane, so histograms merge by addition and are deterministic. Resolution is absolute
(~1.5e-4) near 0 and relative (~1.5 % of |x|) away from it; percentiles and tail fractions
interpolate linearly inside a bin and are clipped to the exact min / max.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import reduce
from pathlib import Path

import numpy as np
import torch

from triflow3d.conventions import CONVENTIONS_VERSION, NUM_PLANES
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.utils.io import atomic_path, write_json

HIST_BINS = 2048
HIST_SCALE = 1e-2
HIST_LIMIT = 15.0
STATS_FORMAT = "triflow3d.latent_stats.v1"
SUMMARY_PERCENTILES = (0.1, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9)
SUMMARY_TAIL_K = (3.0, 5.0)
_ARRAYS = ("mean", "m2", "minimum", "maximum", "hist")


@dataclass(frozen=True, eq=False)
class LatentStats:
    """Mergeable statistics of triplanes (3, C, R, R) from one encoder; all arrays float64 / int64."""

    encoder_id: str
    conventions_version: int
    num_triplanes: int
    count: int  # values per (plane, channel)
    mean: np.ndarray  # (3, C)
    m2: np.ndarray  # (3, C) sum of squared deviations from the mean
    minimum: np.ndarray  # (3, C)
    maximum: np.ndarray  # (3, C)
    hist: np.ndarray  # (3, C, bins) int64
    hist_scale: float = HIST_SCALE
    hist_limit: float = HIST_LIMIT

    @property
    def n_channels(self) -> int:
        return int(self.mean.shape[1])

    @property
    def std(self) -> np.ndarray:
        """Per-(plane, channel) population standard deviation, (3, C)."""
        return np.sqrt(self.m2 / max(self.count, 1))

    @property
    def global_mean(self) -> float:
        return float(self.mean.mean())  # every (plane, channel) has the same count

    @property
    def global_std(self) -> float:
        """Population std over all values (exact: pooled from the per-channel moments)."""
        m2 = self.m2.sum() + self.count * ((self.mean - self.global_mean) ** 2).sum()
        return float(np.sqrt(m2 / max(self.count * self.mean.size, 1)))

    def percentile(self, q: float, per_channel: bool = False) -> np.ndarray | float:
        """Approximate q-th percentile (0..100) from the histograms: (3, C) or a float over all values."""
        if not 0.0 <= q <= 100.0:
            raise ConfigError(f"percentile must be in [0, 100], got {q}")
        if per_channel:
            x = _hist_quantile(self.hist, q, self.hist_scale, self.hist_limit)
            return np.clip(x, self.minimum, self.maximum)
        x = _hist_quantile(self.hist.sum((0, 1)), q, self.hist_scale, self.hist_limit)
        return float(np.clip(x, self.minimum.min(), self.maximum.max()))

    def tail_fraction(self, k: float, per_channel: bool = True) -> np.ndarray:
        """Approximate fraction of values with |x - mean| > k std, (3, C).

        ``per_channel``: mean / std of each (plane, channel), as the default normaliser uses; else the
        global mean / std. Average the result for the fraction over all values (equal counts).
        """
        mu = self.mean if per_channel else np.full_like(self.mean, self.global_mean)
        sd = self.std if per_channel else np.full_like(self.mean, self.global_std)
        below = _hist_cdf(self.hist, mu - k * sd, self.hist_scale, self.hist_limit)
        above = self.count - _hist_cdf(self.hist, mu + k * sd, self.hist_scale, self.hist_limit)
        return (below + above) / max(self.count, 1)

    def to_safetensors(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        meta = {
            "format": STATS_FORMAT,
            "encoder_id": self.encoder_id,
            "conventions_version": str(self.conventions_version),
            "num_triplanes": str(self.num_triplanes),
            "count": str(self.count),
            "hist_scale": repr(self.hist_scale),
            "hist_limit": repr(self.hist_limit),
        }
        with atomic_path(path) as tmp:
            save_file({k: np.ascontiguousarray(getattr(self, k)) for k in _ARRAYS}, str(tmp), metadata=meta)

    @classmethod
    def from_safetensors(cls, path: str | Path) -> LatentStats:
        from safetensors import safe_open

        if not Path(path).is_file():
            raise CheckpointError(f"{path}: latent stats file not found")
        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for corrupt files
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        if meta.get("format") != STATS_FORMAT or set(arrays) != set(_ARRAYS):
            raise CheckpointError(
                f"{path}: not a latent stats file (format {meta.get('format')!r}, tensors {sorted(arrays)})"
            )
        return cls(
            encoder_id=meta["encoder_id"],
            conventions_version=int(meta["conventions_version"]),
            num_triplanes=int(meta["num_triplanes"]),
            count=int(meta["count"]),
            hist_scale=float(meta["hist_scale"]),
            hist_limit=float(meta["hist_limit"]),
            **arrays,
        )

    def summary(self) -> dict:
        """A readable, JSON-ready summary (global numbers plus per-(plane, channel) lists)."""
        return {
            "format": STATS_FORMAT,
            "encoder_id": self.encoder_id,
            "conventions_version": self.conventions_version,
            "num_triplanes": self.num_triplanes,
            "values_per_channel": self.count,
            "shape": [NUM_PLANES, self.n_channels],
            "global": {
                "mean": self.global_mean,
                "std": self.global_std,
                "min": float(self.minimum.min()),
                "max": float(self.maximum.max()),
                "percentiles": {str(q): self.percentile(q) for q in SUMMARY_PERCENTILES},
                "tail_fraction_global_std": {
                    str(k): float(self.tail_fraction(k, per_channel=False).mean()) for k in SUMMARY_TAIL_K
                },
                "tail_fraction_per_channel_std": {
                    str(k): float(self.tail_fraction(k).mean()) for k in SUMMARY_TAIL_K
                },
            },
            "per_channel": {
                "mean": self.mean.tolist(),
                "std": self.std.tolist(),
                "min": self.minimum.tolist(),
                "max": self.maximum.tolist(),
                "p0.1": self.percentile(0.1, per_channel=True).tolist(),
                "p99.9": self.percentile(99.9, per_channel=True).tolist(),
                "tail_fraction_5std": self.tail_fraction(5.0).tolist(),
            },
            "histogram": {
                "kind": "asinh",
                "bins": int(self.hist.shape[-1]),
                "scale": self.hist_scale,
                "limit": self.hist_limit,
            },
        }

    def to_json(self, path: str | Path) -> None:
        write_json(path, self.summary())


def batch_stats(
    x: torch.Tensor | np.ndarray,
    encoder_id: str = "",
    conventions_version: int = CONVENTIONS_VERSION,
    bins: int = HIST_BINS,
) -> LatentStats:
    """Statistics of one triplane (3, C, H, W) or a batch (B, 3, C, H, W), computed in float64."""
    t = torch.as_tensor(x).detach().to(torch.float64)
    if t.ndim == 4:
        t = t.unsqueeze(0)
    if t.ndim != 5 or t.shape[1] != NUM_PLANES:
        raise ValueError(f"expected (3, C, H, W) or (B, 3, C, H, W), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("triplane batch contains non-finite values")
    b, _, c = t.shape[:3]
    v = t.permute(1, 2, 0, 3, 4).reshape(NUM_PLANES, c, -1)  # (3, C, N)
    mean = v.mean(-1)
    m2 = ((v - mean[..., None]) ** 2).sum(-1)
    return LatentStats(
        encoder_id=encoder_id,
        conventions_version=conventions_version,
        num_triplanes=b,
        count=v.shape[-1],
        mean=mean.cpu().numpy(),
        m2=m2.cpu().numpy(),
        minimum=v.amin(-1).cpu().numpy(),
        maximum=v.amax(-1).cpu().numpy(),
        hist=_histogram(v, bins, HIST_SCALE, HIST_LIMIT).cpu().numpy(),
    )


def merge(a: LatentStats, b: LatentStats) -> LatentStats:
    """Statistics of the union of two disjoint sets (Chan et al. parallel update, exact in float64)."""
    if (a.encoder_id, a.conventions_version) != (b.encoder_id, b.conventions_version):
        raise ConfigError(
            f"cannot merge stats of encoder {a.encoder_id!r} (conventions v{a.conventions_version}) with "
            f"{b.encoder_id!r} (v{b.conventions_version})"
        )
    if a.hist.shape != b.hist.shape or (a.hist_scale, a.hist_limit) != (b.hist_scale, b.hist_limit):
        raise ConfigError(f"cannot merge stats of shapes {a.hist.shape} and {b.hist.shape} / other bins")
    if a.count == 0 or b.count == 0:
        return b if a.count == 0 else a
    n = a.count + b.count
    delta = b.mean - a.mean
    return replace(
        a,
        num_triplanes=a.num_triplanes + b.num_triplanes,
        count=n,
        mean=a.mean + delta * (b.count / n),
        m2=a.m2 + b.m2 + delta**2 * (a.count * b.count / n),
        minimum=np.minimum(a.minimum, b.minimum),
        maximum=np.maximum(a.maximum, b.maximum),
        hist=a.hist + b.hist,
    )


def compute_stats(
    triplanes: Iterable[torch.Tensor | np.ndarray],
    encoder_id: str = "",
    conventions_version: int = CONVENTIONS_VERSION,
    bins: int = HIST_BINS,
) -> LatentStats:
    """Stream an iterable of triplanes (3, C, H, W) or batches (B, 3, C, H, W) into one LatentStats."""
    parts = (batch_stats(x, encoder_id, conventions_version, bins) for x in triplanes)
    first = next(parts, None)
    if first is None:
        raise ConfigError("no triplanes given to compute latent statistics from")
    return reduce(merge, parts, first)


def _histogram(v: torch.Tensor, bins: int, scale: float, limit: float) -> torch.Tensor:
    """Counts per leading index of v (..., N) in asinh-spaced bins -> (..., bins) int64."""
    lead = v.shape[:-1]
    pos = (torch.asinh(v / scale) + limit) * (bins / (2 * limit))
    idx = pos.floor().clamp(0, bins - 1).long().reshape(-1, v.shape[-1])
    idx = idx + torch.arange(idx.shape[0], device=v.device)[:, None] * bins
    return torch.bincount(idx.reshape(-1), minlength=idx.shape[0] * bins).reshape(*lead, bins)


def _hist_quantile(hist: np.ndarray, q: float, scale: float, limit: float) -> np.ndarray:
    """Value at which the cumulative count reaches q % (linear inside a bin, in asinh space)."""
    bins = hist.shape[-1]
    cum = hist.cumsum(-1)
    target = (q / 100.0) * cum[..., -1:]  # (..., 1)
    i = np.minimum((cum < target).sum(-1, keepdims=True), bins - 1)
    prev = np.take_along_axis(cum, i, -1) - np.take_along_axis(hist, i, -1)
    width = np.maximum(np.take_along_axis(hist, i, -1), 1)
    frac = np.clip((target - prev) / width, 0.0, 1.0)
    t = -limit + (i + frac) * (2 * limit / bins)
    return (scale * np.sinh(t))[..., 0]


def _hist_cdf(hist: np.ndarray, x: np.ndarray, scale: float, limit: float) -> np.ndarray:
    """Approximate count of values below x, per leading index (x has hist's leading shape)."""
    bins = hist.shape[-1]
    pos = np.clip((np.arcsinh(x / scale) + limit) * (bins / (2 * limit)), 0.0, bins)
    i = np.minimum(np.floor(pos).astype(np.int64), bins - 1)[..., None]
    cum_before = np.take_along_axis(hist.cumsum(-1), i, -1) - np.take_along_axis(hist, i, -1)
    inside = (pos[..., None] - i) * np.take_along_axis(hist, i, -1)
    return (cum_before + inside)[..., 0].astype(np.float64)
