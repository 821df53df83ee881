"""Stage: encode rendered Zero123++ views into triplane latent shards with a frozen reconstructor.

``triflow3d encode VIEWS_DIR --encoder lrm-small --out LATENTS_DIR``. Idempotent and resumable (objects
already in a verified shard are skipped), sharded over ranks (``--rank/--world-size`` or torchrun's
environment; each rank writes its own shards and index), per-object failures recorded, and the
per-rank indexes merged into ``index.jsonl`` by whichever rank finds everything accounted for (or by
``triflow3d encode --merge LATENTS_DIR``). Layout: :mod:`triflow3d.data.latents`; see docs/encode.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from triflow3d import conventions as cv
from triflow3d.data import latents as lt
from triflow3d.data.views import ViewsFolder, is_zero123pp
from triflow3d.errors import ConfigError, TriflowError
from triflow3d.utils.batch import add_keep_going, exit_status, report_failure
from triflow3d.utils.io import dist_rank_world, shard
from triflow3d.utils.progress import progress_bar

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


# --- captions ---------------------------------------------------------------------------------------
def load_captions(path: str | Path) -> dict[str, str]:
    """Captions file -> {asset id or file stem: text}. CSV (headerless ``uid,caption`` as Cap3D ships it,
    or with a header) or JSONL rows {id|uid|stem|key, caption|text}."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: captions file does not exist")
    if path.suffix.lower() in (".jsonl", ".json"):
        out = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: invalid JSON ({e})") from e
            key = next((row[k] for k in ("id", "uid", "stem", "key") if k in row), None)
            text = next((row[k] for k in ("caption", "text") if k in row), None)
            if key is None or text is None:
                raise ConfigError(f"{path}:{n}: a row needs id/uid and caption/text")
            out[str(key)] = str(text)
        return out
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["uid", "caption"], ["id", "caption"]):
        rows = rows[1:]
    bad = next((i for i, r in enumerate(rows) if len(r) < 2), None)
    if bad is not None:
        raise ConfigError(f"{path}: row {bad + 1} has no caption column (expected `uid,caption`)")
    return {r[0].strip(): ",".join(r[1:]).strip() for r in rows}


def caption_for(row: dict, captions: dict[str, str] | None) -> str:
    """From the captions file (by id, then by the source file's stem), else the render manifest, else ''."""
    if captions:
        for key in (str(row.get("id", "")), Path(str(row.get("source", ""))).stem):
            if key and key in captions:
                return captions[key]
    return str(row.get("caption") or "")


# --- the stage --------------------------------------------------------------------------------------
@dataclass
class EncodeSummary:
    rank: int = 0
    world_size: int = 1
    encoded: int = 0
    skipped: int = 0
    failed: int = 0
    not_attempted: int = 0  # left out by a stop at the first failure
    no_caption: int = 0
    shards: int = 0
    seconds: float = 0.0
    merged: dict | None = None
    failures: list[dict] = field(default_factory=list)


@dataclass
class _Pending:
    """Encoded objects waiting for a full shard."""

    rows: list[dict] = field(default_factory=list)
    planes: list[torch.Tensor] = field(default_factory=list)


def _load_batch(views: ViewsFolder, ids: list[str], size: int, fails: list[dict]):
    """Load views for ``ids`` -> (ok ids, images (B, V, 4, S, S) RGBA, cameras (B, V, 16))."""
    ok, imgs, cams = [], [], []
    for i in ids:
        try:
            ov = views.load(i, size)
            if not is_zero123pp(ov.c2w):
                raise ConfigError(
                    f"{views.path(i)}: views are not the zero123pp rig (render with --rig zero123pp)"
                )
        except TriflowError as e:
            fails.append({"id": i, "error": str(e)})
            continue
        ok.append(i)
        imgs.append(ov.images)
        cams.append(ov.input_cameras)
    if not ok:
        return ok, None, None
    return ok, torch.stack(imgs), torch.stack(cams)


def _flush(
    out: Path, rank: int, pending: _Pending, n: int, dtype: torch.dtype, info: dict, s: EncodeSummary
) -> None:
    """Write the first ``n`` pending objects as one shard, then append their index rows."""
    if not pending.rows:
        return
    name = lt.shard_name(rank, lt.next_shard_index(out, rank))
    rows, planes = pending.rows[:n], pending.planes[:n]
    meta = {"encoder": info["encoder"], "conventions_version": str(cv.CONVENTIONS_VERSION)}
    digest = lt.write_shard(out / name, torch.stack(planes).to(dtype), [r["id"] for r in rows], meta)
    rows = [{**r, "shard": name, "row": k, "shard_sha256": digest} for k, r in enumerate(rows)]
    lt.append_rows(lt.rank_index_path(out, rank), rows)
    s.shards += 1
    del pending.rows[:n], pending.planes[:n]


@torch.inference_mode()
def encode_folder(
    model: torch.nn.Module,
    views_dir: str | Path,
    out: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    dtype: str = "fp16",
    batch: int = 8,
    shard_size: int = 256,
    captions: dict[str, str] | None = None,
    device: str = "cpu",
    progress: bool | None = None,
    keep_going: bool = True,
) -> EncodeSummary:
    """Encode this rank's share of a views folder into ``out`` (skipping finished objects).

    Without ``keep_going`` the first batch with a failed object is the last one encoded.
    """
    t0 = time.perf_counter()
    out = Path(out)
    views = ViewsFolder(views_dir)
    info = lt.encoder_info(model, dtype)
    lt.ensure_encoder_json(out, info)
    done = lt.valid_rows(out, verify=True)
    mine = shard(views.ids, rank, world_size)
    todo = [i for i in mine if i not in done]
    s = EncodeSummary(rank=rank, world_size=world_size, skipped=len(mine) - len(todo))
    pending, size = _Pending(), int(model.config.image_size)
    model.eval().to(device)
    with progress_bar(disable=None if progress is None else not progress) as bar:
        task = bar.add_task(f"encode r{rank}", total=len(todo), status="")
        for b in range(0, len(todo), batch):
            fails: list[dict] = []
            ids, images, cams = _load_batch(views, todo[b : b + batch], size, fails)
            if ids:
                planes = (
                    model.forward_planes(images.to(device), cams.to(device)).float().cpu()
                )  # (B, 3, C, R, R)
                for i, p in zip(ids, planes):
                    pending.rows.append(_index_row(views, i, captions, out))
                    pending.planes.append(p)
                    s.no_caption += pending.rows[-1]["caption"] == ""
                s.encoded += len(ids)
            if fails:
                lt.append_rows(lt.rank_failures_path(out, rank), fails)
                s.failures += fails
            while len(pending.rows) >= shard_size:
                _flush(out, rank, pending, shard_size, DTYPES[dtype], info, s)
            bar.update(task, advance=len(todo[b : b + batch]), status=f"{len(s.failures)} failed")
            if s.failures and not keep_going:
                s.not_attempted = max(len(todo) - b - batch, 0)
                break
    _flush(out, rank, pending, shard_size, DTYPES[dtype], info, s)
    s.failed = len(s.failures)
    s.merged = maybe_merge(out, views.ids)
    s.seconds = time.perf_counter() - t0
    return s


def _index_row(views: ViewsFolder, id: str, captions: dict[str, str] | None, out: Path) -> dict:
    row = views.row(id)
    return {
        "id": id,
        "caption": caption_for(row, captions),
        "attributes": row.get("attributes") or {},
        "source": str(row.get("source", "")),
        "views_dir": lt.relative_views_dir(out, views.path(id)),
    }


def maybe_merge(out: Path, all_ids: list[str]) -> dict | None:
    """Merge the rank indexes once every id is either encoded or failed (no barrier: last rank wins)."""
    accounted = set(lt.valid_rows(out, verify=False)) | set(lt.failed_rows(out))
    if not set(all_ids) <= accounted:
        return None
    return lt.merge_index(out, verify=False)


# --- CLI --------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("views", nargs="?", help="views folder rendered with --rig zero123pp")
    p.add_argument("--encoder", default="lrm-small", help="NAME or NAME:CHECKPOINT (e.g. lrm-small)")
    p.add_argument("--out", help="latents folder (created; re-running resumes)")
    p.add_argument("--merge", metavar="LATENTS_DIR", help="only merge the rank indexes of a latents folder")
    p.add_argument("--rank", type=int, default=None, help="this process's rank (default: torchrun env or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of ranks (default: env or 1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="storage dtype of the triplanes")
    p.add_argument("--batch", type=int, default=8, help="objects per forward pass")
    p.add_argument("--shard-size", type=int, default=256, help="objects per shard file")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--captions", help="CSV (uid,caption) or JSONL {id, caption} overriding manifest captions")
    p.add_argument("--allow-random", action="store_true", help="run with random weights (timing only)")
    add_keep_going(p)


def run(args: argparse.Namespace) -> int:
    if args.merge:
        print(json.dumps(lt.merge_index(args.merge, verify=True)))
        return 0
    if not args.views or not args.out:
        raise ConfigError("encode needs VIEWS_DIR and --out (or --merge LATENTS_DIR)")
    if args.batch < 1 or args.shard_size < 1:
        raise ConfigError(f"--batch and --shard-size must be >= 1, got {args.batch}, {args.shard_size}")
    from triflow3d.encoders import load_reconstructor, parse_encoder_spec

    rank, world = dist_rank_world(args.rank, args.world_size)
    name, ckpt = parse_encoder_spec(args.encoder)
    model = load_reconstructor(
        name, checkpoint=ckpt, dtype=torch.float32, device=args.device, allow_random=args.allow_random
    )
    captions = load_captions(args.captions) if args.captions else None
    s = encode_folder(
        model, args.views, args.out, rank=rank, world_size=world, dtype=args.dtype, batch=args.batch,
        shard_size=args.shard_size, captions=captions, device=args.device, keep_going=args.keep_going,
    )  # fmt: skip
    for f in s.failures:
        report_failure(f["id"], f["error"])
    summary = {k: v for k, v in vars(s).items() if k != "failures"}
    summary["objects_per_s"] = round(s.encoded / max(s.seconds, 1e-9), 3)
    print(json.dumps(summary))
    return exit_status(s.failed, s.not_attempted)
