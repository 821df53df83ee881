"""``triflow3d shapes make|show``: write the procedural captioned shape benchmark, or preview captions.

``make`` writes ``OUT/<id>.glb`` and appends one row per sample to ``OUT/manifest.jsonl``
(``manifest-r<rrr>.jsonl`` when sharded; the last rank to finish merges them, ``merge`` does it by hand:
:mod:`triflow3d.data.ranks`). Re-running skips ids whose row says ``ok`` and whose file exists, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from triflow3d.assets.export import save_glb
from triflow3d.data import ranks
from triflow3d.data.views import MANIFEST
from triflow3d.errors import ConfigError
from triflow3d.shapes.generate import SHAPES_VERSION, build_asset, sample_spec
from triflow3d.shapes.splits import SPLITS, sample_id, sample_seed
from triflow3d.utils.batch import add_keep_going, exit_status, report_failure
from triflow3d.utils.io import append_jsonl, dist_rank_world, shard
from triflow3d.utils.progress import progress_bar


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    make = sub.add_parser("make", help="write N shapes of a split as GLB files + manifest.jsonl")
    show = sub.add_parser(
        "show", help="print the captions (and attributes) of N shapes without building them"
    )
    for p in (make, show):
        p.add_argument("--n", type=int, required=True, help="number of samples")
        p.add_argument("--split", choices=SPLITS, default="train", help="benchmark split (default: train)")
        p.add_argument("--start", type=int, default=0, help="first sample index (ids are <split>-<index>)")
        p.add_argument(
            "--seed-offset", type=int, default=0, help="alternative seed stream (0 = the benchmark)"
        )
    make.add_argument("--out", type=Path, required=True, help="output folder")
    make.add_argument("--rank", type=int, default=None, help="this worker's rank (default: $RANK or 0)")
    make.add_argument(
        "--world-size", type=int, default=None, help="number of workers (default: $WORLD_SIZE or 1)"
    )
    add_keep_going(make)
    show.add_argument("--attributes", action="store_true", help="also print the attributes as JSON")
    merge = sub.add_parser("merge", help="join the rank manifests of a sharded `make` into manifest.jsonl")
    merge.add_argument("--out", type=Path, required=True, help="the output folder of `make`")


def _check_counts(args: argparse.Namespace) -> None:
    if args.n < 0 or args.start < 0:
        raise ConfigError(f"--n and --start must be >= 0, got --n {args.n} --start {args.start}")


def _done_rows(out: Path) -> dict[str, dict]:
    """Rows of every manifest in ``out`` whose sample was written and whose file still exists."""
    rows = ranks.read_rows(out, MANIFEST).values()
    return {r["id"]: r for r in rows if r.get("status") == "ok" and (out / r.get("path", "")).is_file()}


def _make_one(split: str, index: int, offset: int, out: Path) -> dict:
    seed = sample_seed(split, index, offset)
    sid = sample_id(split, index)
    row = {
        "id": sid,
        "split": split,
        "index": index,
        "seed": seed,
        "seed_offset": offset,
        "version": SHAPES_VERSION,
    }
    try:
        spec = sample_spec(seed, split)
        asset = build_asset(spec)
        save_glb(asset, out / f"{sid}.glb")
    except Exception as e:  # recorded per sample in the manifest, never swallowed silently
        return {**row, "status": "error", "error": f"{type(e).__name__}: {e}"}
    return {
        **row,
        "caption": spec.caption,
        "attributes": spec.attributes(),
        "path": f"{sid}.glb",
        "status": "ok",
        "num_faces": asset.num_faces,
    }


def _run_make(args: argparse.Namespace) -> int:
    rank, world = dist_rank_world(args.rank, args.world_size)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = ranks.stage_file(out, MANIFEST, rank, world)
    append_jsonl(
        out / "commands.jsonl", [{"argv": sys.argv, "time": time.time(), "rank": rank, "world_size": world}]
    )
    done = _done_rows(out)
    indices = shard(list(range(args.start, args.start + args.n)), rank, world)
    counts = {"ok": 0, "skipped": 0, "error": 0}
    not_attempted = 0
    with progress_bar() as progress:
        task = progress.add_task(f"shapes {args.split}", total=len(indices), status="")
        for k, index in enumerate(indices):
            sid = sample_id(args.split, index)
            if sid in done:
                if done[sid]["seed"] != sample_seed(args.split, index, args.seed_offset):
                    raise ConfigError(f"{out} already holds {sid} with another seed (other --seed-offset?)")
                counts["skipped"] += 1
            else:
                row = _make_one(args.split, index, args.seed_offset, out)
                append_jsonl(manifest, [row])
                counts[row["status"]] += 1
                if row["status"] == "error":
                    report_failure(sid, row["error"])
            progress.update(task, advance=1, status=sid)
            if counts["error"] and not args.keep_going:
                not_attempted = len(indices) - k - 1
                break
    every = [sample_id(args.split, i) for i in range(args.start, args.start + args.n)]
    merged = world > 1 and ranks.merge_when_complete(out, MANIFEST, every)
    print(
        f"shapes {args.split}: {counts['ok']} written, {counts['skipped']} already present, "
        f"{counts['error']} failed -> {out / MANIFEST if merged else manifest}"
    )
    return exit_status(counts["error"], not_attempted)


def _run_show(args: argparse.Namespace) -> int:
    for index in range(args.start, args.start + args.n):
        spec = sample_spec(sample_seed(args.split, index, args.seed_offset), args.split)
        print(f"{sample_id(args.split, index)}\t{spec.caption}")
        if args.attributes:
            print("\t" + json.dumps(spec.attributes(), sort_keys=True))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "merge":
        rows = ranks.merge(args.out, MANIFEST)
        print(f"merged {len(rows)} rows -> {args.out / MANIFEST}")
        return 0
    _check_counts(args)
    return _run_make(args) if args.action == "make" else _run_show(args)
