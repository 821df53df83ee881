"""``triflow3d latents``: post-process an encoded latents folder (statistics, loss weights, a report).

``stats``   streaming float64 statistics -> ``LATENTS_DIR/stats.safetensors`` + ``stats.json``.
``weights`` per-texel spatial loss weights from the frozen decoder's density, written as sidecars
            ``<shard stem>.weights.safetensors``; a summary goes to ``weights.json``.
``inspect`` a Markdown report with Pillow figures (:mod:`triflow3d.latents.report`).
The work is done in :mod:`triflow3d.latents.folder`; see docs/latents.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from triflow3d import conventions as cv
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.latents.folder import (
    WeightsConfig,
    compute_latent_stats,
    compute_weights,
    load_encoder_for,
    open_latents,
    sample_indices,
    stats_summary,
    write_stats,
)


# --- stats ---
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
    ds = open_latents(root)
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


# --- weights ---
def run_weights(args: argparse.Namespace) -> int:
    root = Path(args.latents)
    open_latents(root)
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
