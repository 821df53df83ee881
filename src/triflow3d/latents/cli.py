"""``triflow3d latents``: post-process an encoded latents folder (statistics, loss weights, a report).

``stats``   streaming float64 statistics -> ``LATENTS_DIR/stats.safetensors`` + ``stats.json``.
``weights`` per-texel spatial loss weights from the frozen decoder's density, written as sidecars
            ``<shard stem>.weights.safetensors`` (key ``weights``, (N, 3, R, R) float32, the shard's row
            order) that :class:`triflow3d.data.latents.LatentDataset` returns as ``weights``; a summary
            goes to ``weights.json``. Idempotent: shards whose sidecar matches the shard's sha256 and the
            settings are skipped; each sidecar is written atomically.
``inspect`` a Markdown report with Pillow figures (:mod:`triflow3d.latents.report`).
See docs/latents.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from triflow3d import conventions as cv
from triflow3d.data import latents as lt
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.latents.stats import LatentStats, batch_stats, merge
from triflow3d.latents.weights import spatial_weights
from triflow3d.utils.io import write_json
from triflow3d.utils.progress import progress_bar

STATS_FILE = "stats.safetensors"
STATS_JSON = "stats.json"
WEIGHTS_NAME = "weights"  # the sidecar name LatentDataset reads (data.latents.SIDECARS)
WEIGHTS_FORMAT = "triflow3d.spatial_weights.v1"
WEIGHTS_JSON = "weights.json"


# --- shared -----------------------------------------------------------------------------------------
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


def open_dataset(root: str | Path) -> lt.LatentDataset:
    ds = lt.LatentDataset(root)
    if len(ds) == 0:
        raise ConfigError(f"{root}: the latents folder indexes no objects")
    return ds


# --- stats ------------------------------------------------------------------------------------------
def compute_latent_stats(
    ds: lt.LatentDataset, indices: list[int], batch: int = 16, progress: bool | None = None
) -> LatentStats:
    """Float64 statistics of the triplanes at ``indices``, tagged with encoder.json's encoder."""
    encoder = str(ds.encoder.get("encoder", ""))
    out: LatentStats | None = None
    with progress_bar(disable=None if progress is None else not progress) as bar:
        task = bar.add_task("stats", total=len(indices), status="")
        for items in iter_items(ds, indices, batch):
            part = batch_stats(torch.stack([it["triplane"] for it in items]), encoder)  # (B, 3, C, R, R)
            out = part if out is None else merge(out, part)
            bar.update(task, advance=len(items))
    if out is None:
        raise ConfigError("no triplanes to compute statistics from")
    return out


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
    stats.to_safetensors(root / STATS_FILE)
    write_json(root / STATS_JSON, summary)
    return root / STATS_FILE, root / STATS_JSON


def parse_ks(text: str) -> tuple[float, ...]:
    try:
        ks = tuple(float(k) for k in text.split(",") if k.strip())
    except ValueError as e:
        raise ConfigError(f"--k must be comma-separated numbers, got {text!r}") from e
    if not ks or any(k <= 0 for k in ks):
        raise ConfigError(f"--k needs positive numbers, got {text!r}")
    return ks


def run_stats(args: argparse.Namespace) -> int:
    root = Path(args.latents)
    ds = open_dataset(root)
    ks = parse_ks(args.k)
    idx = sample_indices(len(ds), args.sample, args.seed)
    t0 = time.perf_counter()
    stats = compute_latent_stats(ds, idx, args.batch)
    source = {
        "latents_dir": str(root.resolve()),
        "objects": len(idx),
        "of": len(ds),
        "seed": args.seed if args.sample is not None else None,
        **{k: ds.encoder.get(k) for k in ("encoder", "config_hash", "dtype", "triplane_shape")},
    }
    paths = write_stats(root, stats, stats_summary(stats, ks, source))
    print(json.dumps({
        "objects": len(idx), "of": len(ds), "encoder": stats.encoder_id, "global_mean": stats.global_mean,
        "global_std": stats.global_std, "written": [str(p) for p in paths],
        "seconds": round(time.perf_counter() - t0, 3),
    }))  # fmt: skip
    return 0


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


def sidecar_path(root: Path, shard: str, name: str = WEIGHTS_NAME) -> Path:
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
            lt.write_sidecar(sidecar_path(root, s), WEIGHTS_NAME, w, meta)
            metas[s] = meta
            summary["computed"] += len(ids)
    summary["skipped"] = sum(len(json.loads(metas[s]["ids"])) for s in shards if s not in todo)
    summary |= coverage_summary([c for s in shards for c in json.loads(metas[s]["coverage"])])
    write_json(
        root / WEIGHTS_JSON, {"format": WEIGHTS_FORMAT, "config": asdict(cfg), **model_info, **summary}
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
    from triflow3d.encode import config_hash
    from triflow3d.encoders import load_reconstructor, parse_encoder_spec

    info = lt.read_encoder_json(root)
    name, ckpt = parse_encoder_spec(spec or str(info.get("encoder", "")))
    ckpt = ckpt or (info.get("checkpoint") if spec is None else None)
    model = load_reconstructor(name, checkpoint=ckpt, device=device)
    got = {"encoder": str(model.encoder_id), "config_hash": config_hash(model)}
    want = {k: info.get(k) for k in got}
    if got != want:
        raise ConfigError(
            f"{root / lt.ENCODER_JSON}: latents were made by {want}, but --encoder {spec or name} is {got}"
        )
    return model, got


def run_weights(args: argparse.Namespace) -> int:
    root = Path(args.latents)
    open_dataset(root)
    cfg = WeightsConfig(args.grid, args.threshold, args.dilation, args.w_bg)
    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    t0 = time.perf_counter()
    model, info = load_encoder_for(root, args.encoder, args.device)
    s = compute_weights(
        model, root, cfg, info, batch=args.batch, device=args.device, overwrite=args.overwrite
    )
    s["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(s))
    if s["mean_coverage"] is not None and (s["mean_coverage"] < 0.01 or (s["empty_masks"] or 0) > 0.5):
        print(f"warning: masks are nearly empty (mean coverage {s['mean_coverage']:.4f}); "
              f"--threshold {cfg.threshold} may be too high for this encoder's density", file=sys.stderr)  # fmt: skip
    elif s["mean_coverage"] is not None and (s["mean_coverage"] > 0.95 or (s["full_masks"] or 0) > 0.5):
        print(
            f"warning: most masks cover every texel; --threshold {cfg.threshold} may be too low",
            file=sys.stderr,
        )
    return 0


# --- inspect ----------------------------------------------------------------------------------------
def run_inspect(args: argparse.Namespace) -> int:
    from triflow3d.latents.report import InspectConfig, write_inspect_report

    root = Path(args.latents)
    model, note = None, ""
    if not args.no_render:
        try:
            model, _ = load_encoder_for(root, args.encoder, args.device)
        except (CheckpointError, ConfigError) as e:
            note = f"renders skipped: {e}"
            print(f"warning: {note}", file=sys.stderr)
    cfg = InspectConfig(args.n_objects, args.sample or None, args.seed, args.render_size, args.device)
    path = write_inspect_report(root, Path(args.out), cfg, model, render_note=note)
    print(json.dumps({"report": str(path)}))
    return 0


# --- CLI --------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="latents_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("stats", help="float64 latent statistics -> stats.safetensors + stats.json")
    s.add_argument("latents", metavar="LATENTS_DIR")
    s.add_argument("--sample", type=int, default=None, help="a random sample of N objects (default: all)")
    s.add_argument("--seed", type=int, default=0, help="seed of the sample")
    s.add_argument("--k", default="3,5", help="report the fraction of values beyond +-k std (comma list)")
    s.add_argument("--batch", type=int, default=16, help="objects per statistics batch")

    w = sub.add_parser("weights", help="per-texel loss weights from the frozen decoder's occupancy")
    w.add_argument("latents", metavar="LATENTS_DIR")
    w.add_argument("--grid", type=int, default=64, help="density grid resolution G (G^3 queries per object)")
    w.add_argument("--threshold", type=float, default=cv.MESH_THRESHOLD, help="occupied where density > T")
    w.add_argument("--dilation", type=int, default=1, help="mask dilation in texels")
    w.add_argument("--w-bg", type=float, default=0.1, help="weight of texels outside the mask")
    w.add_argument("--encoder", default=None, help="NAME[:CKPT] (default: the one in encoder.json)")
    w.add_argument("--batch", type=int, default=4, help="objects per decoder pass")
    w.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    w.add_argument("--overwrite", action="store_true", help="recompute weights made with other settings")

    i = sub.add_parser("inspect", help="Markdown report with figures: stats, standardisation, masks, energy")
    i.add_argument("latents", metavar="LATENTS_DIR")
    i.add_argument("--out", required=True, help="report folder (report.md + figures/)")
    i.add_argument("--n-objects", type=int, default=4, help="objects pictured (planes, masks, render)")
    i.add_argument("--sample", type=int, default=64, help="objects for histograms and energy (0: all)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--render-size", type=int, default=128, help="render side in pixels")
    i.add_argument("--encoder", default=None, help="NAME[:CKPT] for renders (default: encoder.json's)")
    i.add_argument("--no-render", action="store_true", help="skip renders (no encoder weights needed)")
    i.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    return {"stats": run_stats, "weights": run_weights, "inspect": run_inspect}[args.latents_command](args)
