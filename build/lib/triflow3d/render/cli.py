"""``triflow3d render INPUTS... --out DIR``: render asset files / folders to multi-view image folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from triflow3d import conventions as cv
from triflow3d.errors import ConfigError
from triflow3d.render import BACKENDS, make_renderer
from triflow3d.render.views import PASSES, ViewsConfig, collect_sources, merge_manifests, render_all
from triflow3d.utils.batch import add_keep_going, exit_status, report_failure
from triflow3d.utils.io import dist_rank_world, shard
from triflow3d.utils.progress import progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUTS", help="asset files and/or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per asset)")
    parser.add_argument(
        "--rig", default="zero123pp", help="zero123pp | orbit:N | random:N (default zero123pp)"
    )
    parser.add_argument("--size", type=int, default=cv.ZERO123PP_IMAGE_SIZE, help="image size in pixels")
    parser.add_argument("--rank", type=int, default=None, help="this worker's shard (default: $RANK or 0)")
    parser.add_argument(
        "--world-size", type=int, default=None, help="number of shards (default: $WORLD_SIZE or 1)"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="renderer (auto: EGL, else raycast)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed to load one file")
    parser.add_argument("--seed", type=int, default=0, help="seed of random rigs (cameras differ per asset)")
    parser.add_argument(
        "--passes", default="rgba", help=f"comma-separated subset of {','.join(PASSES)} (default rgba)"
    )
    parser.add_argument(
        "--merge", action="store_true", help="only join DIR/manifest.rank*.jsonl into DIR/manifest.jsonl"
    )
    add_keep_going(parser)


def run(args: argparse.Namespace) -> int:
    if args.merge:
        print(f"merged manifest: {merge_manifests(args.out)}")
        return 0
    if not args.inputs:
        raise ConfigError("no INPUTS given: name asset files and/or folders to render")
    cfg = ViewsConfig(
        rig=args.rig,
        size=args.size,
        passes=tuple(p.strip() for p in args.passes.split(",") if p.strip()),
        seed=args.seed,
        timeout_s=args.timeout,
    )
    try:
        rank, world = dist_rank_world(args.rank, args.world_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    sources = collect_sources(args.inputs)
    if not sources:
        raise ConfigError(f"no asset files found in {' '.join(map(str, args.inputs))}")
    renderer = make_renderer(args.backend)
    with progress_bar() as bar:
        task = bar.add_task("render", total=len(shard(sources, rank, world)), status="")

        def on_done(source, row):
            if row is not None and row["status"] == "failed":
                report_failure(source.path, row["error"])
            bar.update(task, advance=1, status=source.id)

        summary = render_all(
            renderer, sources, args.out, cfg, rank, world, on_done=on_done, keep_going=args.keep_going
        )
    causes = ", ".join(f"{n} {kind}" for kind, n in sorted((summary.failures or {}).items()))
    print(
        f"render: {summary.rendered} rendered, {summary.skipped} already done, {summary.failed} failed"
        f"{f' ({causes})' if causes else ''} of {summary.total + summary.not_attempted} assets "
        f"(rank {rank}/{world}, backend {renderer.name}, rig {cfg.rig}, {cfg.size}px) -> {args.out}"
    )
    return exit_status(summary.failed, summary.not_attempted)
