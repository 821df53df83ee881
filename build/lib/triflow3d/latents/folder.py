"""An encoded latents folder's post-processing: its statistics and its spatial-weight sidecars.

Statistics: streaming float64 :class:`~triflow3d.latents.stats.LatentStats` over (a seeded sample of)
the folder's triplanes -> ``stats.safetensors`` + ``stats.json`` (file names of
:mod:`triflow3d.data.latents`). Weights: per-texel spatial loss weights from the frozen decoder's density
(:mod:`triflow3d.latents.weights`), written as sidecars ``<shard stem>.weights.safetensors`` (key
``weights``, (N, 3, R, R) float32, the shard's row order) that :class:`~triflow3d.data.latents.LatentDataset`
returns as ``weights``, with a summary in ``weights.json``. Idempotent: shards whose sidecar matches the
shard's sha256 and the settings are skipped; each sidecar is written atomically. The command line is
:mod:`triflow3d.latents.cli`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from triflow3d import conventions as cv
from triflow3d.data import latents as lt
from triflow3d.errors import ConfigError
from triflow3d.latents.stats import LatentStats, compute_stats
from triflow3d.latents.weights import spatial_weights
from triflow3d.utils.io import write_json
from triflow3d.utils.progress import progress_bar

WEIGHTS_FORMAT = "triflow3d.spatial_weights.v1"


# --- the folder -----------------------------------------------------------------------------------------
def sample_indices(n: int, sample: int | None, seed: int = 0) -> list[int]:
    """All of range(n), or a sorted seeded random subset of ``sample`` of them."""
    if sample is not None and sample < 1:
        raise ConfigError(f"--sample must be >= 1, got {sample}")
    if sample is None or sample >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), sample))


def iter_items(ds: lt.LatentDataset, indices: list[int], batch: int = 16) -> Iterator[list[dict]]:
    """Dataset items in lists of up to ``batch``."""
    for start in range(0, len(indices), batch):
        yield [ds[i] for i in indices[start : start + batch]]


def open_latents(root: str | Path) -> lt.LatentDataset:
    """The latents folder's dataset; ConfigError when it indexes no objects."""
    ds = lt.LatentDataset(root)
    if len(ds) == 0:
        raise ConfigError(f"{root}: the latents folder indexes no objects")
    return ds


# --- stats ------------------------------------------------------------------------------------------
def compute_latent_stats(
    ds: lt.LatentDataset, indices: list[int], batch: int = 16, progress: bool | None = None
) -> LatentStats:
    """Float64 statistics of the triplanes at ``indices``, tagged with encoder.json's encoder."""
    with progress_bar(disable=None if progress is None else not progress) as bar:
        task = bar.add_task("stats", total=len(indices), status="")

        def batches() -> Iterator[torch.Tensor]:
            for items in iter_items(ds, indices, batch):
                yield torch.stack([it["triplane"] for it in items])  # (B, 3, C, R, R)
                bar.update(task, advance=len(items))

        return compute_stats(batches(), str(ds.encoder.get("encoder", "")))


def stats_summary(stats: LatentStats, ks: tuple[float, ...], source: dict) -> dict:
    """``LatentStats.summary()`` plus tail fractions beyond +-k std for each requested k, and the source."""
    s = stats.summary()
    s["global"]["tail_fraction_global_std"] = {
        str(k): float(stats.tail_fraction(k, per_channel=False).mean()) for k in ks
    }
    s["global"]["tail_fraction_per_channel_std"] = {str(k): float(stats.tail_fraction(k).mean()) for k in ks}
    s["per_channel"]["tail_fraction"] = {str(k): stats.tail_fraction(k).tolist() for k in ks}
    s["source"] = source
    return s


def write_stats(root: Path, stats: LatentStats, summary: dict) -> tuple[Path, Path]:
    stats.to_safetensors(root / lt.STATS_FILE)
    write_json(root / lt.STATS_JSON, summary)
    return root / lt.STATS_FILE, root / lt.STATS_JSON


# --- weights ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsConfig:
    """Settings of the spatial weights (see latents/weights.py); stored with every sidecar."""

    grid: int = 64
    threshold: float = cv.MESH_THRESHOLD
    dilation: int = 1
    w_bg: float = 0.1

    def __post_init__(self):
        if self.grid < 2:
            raise ConfigError(f"--grid must be >= 2, got {self.grid}")
        if self.dilation < 0:
            raise ConfigError(f"--dilation must be >= 0 texels, got {self.dilation}")
        if not 0.0 <= self.w_bg <= 1.0:
            raise ConfigError(f"--w-bg must be in [0, 1], got {self.w_bg}")


def sidecar_path(root: Path, shard: str, name: str = lt.WEIGHTS_SIDECAR) -> Path:
    """Where shard ``shard``'s sidecar ``name`` lives (naming owned by :mod:`triflow3d.data.latents`)."""
    return Path(root) / lt.sidecar_name(shard, name)


def read_sidecar_meta(path: Path) -> dict[str, str] | None:
    """A sidecar's metadata, or None when it is missing or unreadable (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # a torn / foreign file: treat as absent
        return None


def _settings(cfg: WeightsConfig, model_info: dict) -> dict[str, str]:
    return {"format": WEIGHTS_FORMAT, "config": json.dumps(asdict(cfg), sort_keys=True), **model_info}


def shard_state(meta: dict[str, str] | None, sha: str, settings: dict[str, str]) -> str:
    """'todo' (missing or stale: the shard changed), 'done' (same shard and settings) or 'conflict'."""
    if meta is None or meta.get("format") != WEIGHTS_FORMAT or meta.get("shard_sha256") != sha:
        return "todo"
    return "done" if all(meta.get(k) == v for k, v in settings.items()) else "conflict"


def read_shard(root: Path, shard: str) -> tuple[torch.Tensor, list[str]]:
    """A shard's triplanes (N, 3, C, R, R) float32 and ids."""
    if not (root / shard).exists():
        raise ConfigError(f"{root / shard}: shard listed in the index is missing")
    with safe_open(str(root / shard), framework="pt") as f:
        return f.get_tensor(lt.TRIPLANE_KEY).float(), json.loads((f.metadata() or {}).get("ids", "[]"))


def mask_coverage(weights: torch.Tensor, w_bg: float) -> torch.Tensor:
    """Fraction of texels inside the (dilated) mask per object, (N,); NaN when w_bg = 1 (no mask)."""
    if w_bg >= 1.0:
        return torch.full(weights.shape[:1], float("nan"))
    return (weights > 0.5 * (1.0 + w_bg)).float().flatten(1).mean(1)


def shard_weights(
    field, planes: torch.Tensor, cfg: WeightsConfig, batch: int = 4, device: str = "cpu", on_batch=None
) -> torch.Tensor:
    """Weights (N, 3, R, R) float32 on CPU of triplanes (N, 3, C, R, R), ``batch`` objects at a time."""
    out = []
    for start in range(0, planes.shape[0], batch):
        p = planes[start : start + batch].to(device)
        w = spatial_weights(field, p, cfg.grid, cfg.threshold, cfg.dilation, cfg.w_bg)  # (b, 3, R, R)
        out.append(w.float().cpu())
        if on_batch is not None:
            on_batch(p.shape[0])
    return torch.cat(out)


def shards_of(root: Path) -> dict[str, tuple[str, int]]:
    """Shards the index uses -> (their sha256, indexed rows), sorted by name."""
    out: dict[str, tuple[str, int]] = {}
    for r in sorted(lt.read_index(root), key=lambda r: r["shard"]):
        out[r["shard"]] = (r["shard_sha256"], out.get(r["shard"], ("", 0))[1] + 1)
    return out


def compute_weights(
    field,
    root: str | Path,
    cfg: WeightsConfig,
    model_info: dict[str, str],
    *,
    batch: int = 4,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """Write the weights sidecar of every indexed shard not already done; return a summary."""
    root = Path(root)
    settings = _settings(cfg, model_info)
    shards = shards_of(root)
    metas = {s: read_sidecar_meta(sidecar_path(root, s)) for s in shards}
    states = {s: shard_state(metas[s], sha, settings) for s, (sha, _) in shards.items()}
    conflicts = [s for s, st in states.items() if st == "conflict"]
    if conflicts and not overwrite:
        old = json.loads(metas[conflicts[0]].get("config", "{}"))
        raise ConfigError(
            f"{sidecar_path(root, conflicts[0])}: weights were made with other settings or encoder "
            f"({old} / {metas[conflicts[0]].get('encoder')}) than now ({asdict(cfg)} / "
            f"{model_info.get('encoder')}); pass --overwrite to recompute all {len(conflicts)} such shards"
        )
    todo = [s for s, st in states.items() if st != "done"]
    summary = {"shards": len(shards), "computed_shards": len(todo), "computed": 0, "skipped": 0}
    with progress_bar(disable=None if progress is None else not progress) as bar:
        task = bar.add_task("weights", total=sum(shards[s][1] for s in todo), status="")
        for s in todo:
            planes, ids = read_shard(root, s)
            w = shard_weights(field, planes, cfg, batch, device, lambda n: bar.update(task, advance=n))
            cov = mask_coverage(w, cfg.w_bg).tolist()
            meta = {
                **settings,
                "shard_sha256": shards[s][0],
                "ids": json.dumps(ids),
                "coverage": json.dumps(cov),
            }
            lt.write_sidecar(sidecar_path(root, s), lt.WEIGHTS_SIDECAR, w, meta)
            metas[s] = meta
            summary["computed"] += len(ids)
    summary["skipped"] = sum(len(json.loads(metas[s]["ids"])) for s in shards if s not in todo)
    summary |= coverage_summary([c for s in shards for c in json.loads(metas[s]["coverage"])])
    write_json(
        root / lt.WEIGHTS_JSON, {"format": WEIGHTS_FORMAT, "config": asdict(cfg), **model_info, **summary}
    )
    return summary


def coverage_summary(cov: list[float]) -> dict:
    """Mean mask coverage and the share of objects whose mask is empty / full (a bad threshold shows)."""
    c = torch.tensor(cov, dtype=torch.float64)
    if c.numel() == 0 or c.isnan().all():
        return {"objects": int(c.numel()), "mean_coverage": None, "empty_masks": None, "full_masks": None}
    return {
        "objects": int(c.numel()),
        "mean_coverage": float(c.mean()),
        "empty_masks": float((c == 0).double().mean()),
        "full_masks": float((c == 1).double().mean()),
    }


def load_encoder_for(root: Path, spec: str | None, device: str = "cpu"):
    """The frozen reconstructor of a latents folder (``spec`` NAME[:CKPT], default encoder.json's)."""
    from triflow3d.encoders import load_reconstructor, parse_encoder_spec

    info = lt.read_encoder_json(root)
    name, ckpt = parse_encoder_spec(spec or str(info.get("encoder", "")))
    ckpt = ckpt or (info.get("checkpoint") if spec is None else None)
    model = load_reconstructor(name, checkpoint=ckpt, device=device)
    got = {"encoder": str(model.encoder_id), "config_hash": lt.config_hash(model)}
    want = {k: info.get(k) for k in got}
    if got != want:
        raise ConfigError(
            f"{root / lt.ENCODER_JSON}: latents were made by {want}, but --encoder {spec or name} is {got}"
        )
    return model, got
