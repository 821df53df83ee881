"""Triplane latent shards: the writer the ``encode`` stage uses and the lazy reader training uses.

Folder layout (``LATENTS_DIR``)::

    encoder.json                  {encoder, config_hash, conventions_version, triplane_shape, dtype}
    shard-r000-00000.safetensors  key "triplanes" (N, 3, C, R, R); metadata "ids" (JSON list)
    index-r000.jsonl              per-rank rows {id, shard, row, shard_sha256, caption, attributes, ...}
    failures-r000.jsonl           per-rank rows {id, error}
    index.jsonl                   the merged index (``merge_index``) readers use
                                  (rank naming and merging: :mod:`triflow3d.data.ranks`)
    stats.safetensors, stats.json ``triflow3d latents stats`` (LatentStats and its summary)
    weights.json                  ``triflow3d latents weights``' summary (the weights are sidecars)

A shard is written under a temporary name and renamed when complete, and its rows reach the rank
index only after that, each carrying the shard's sha256: a killed run leaves at worst an orphan shard
or a temp folder, which no reader trusts. Extra per-object tensors written later by other stages sit
in sidecars ``<shard stem>.<name>.safetensors`` (key ``name``, same row order) and are returned by
:class:`LatentDataset` under ``name`` (e.g. ``weights``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from triflow3d import conventions as cv
from triflow3d.data import ranks
from triflow3d.errors import ConfigError
from triflow3d.utils.io import append_jsonl, atomic_path, read_jsonl, write_json

ENCODER_JSON = "encoder.json"
INDEX, FAILURES = "index.jsonl", "failures.jsonl"  # merged from index-r000.jsonl ... (data.ranks)
STATS_FILE, STATS_JSON, WEIGHTS_JSON = "stats.safetensors", "stats.json", "weights.json"
TRIPLANE_KEY = "triplanes"
WEIGHTS_SIDECAR = "weights"
SIDECARS: tuple[str, ...] = (WEIGHTS_SIDECAR,)
_SHARD_RE = re.compile(r"^shard-r(\d{3})-(\d{5})\.safetensors$")


def shard_name(rank: int, k: int) -> str:
    return f"shard-r{rank:03d}-{k:05d}.safetensors"


def rank_index_path(root: Path, rank: int) -> Path:
    return ranks.rank_file(root, INDEX, rank)


def rank_failures_path(root: Path, rank: int) -> Path:
    return ranks.rank_file(root, FAILURES, rank)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shard(path: Path, triplanes: torch.Tensor, ids: list[str], meta: dict[str, str]) -> str:
    """Atomically write one shard (N, 3, C, R, R) and return its sha256."""
    if triplanes.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids for {triplanes.shape[0]} triplanes")
    with atomic_path(path) as tmp:
        save_file({TRIPLANE_KEY: triplanes.contiguous()}, str(tmp), metadata={**meta, "ids": json.dumps(ids)})
        digest = sha256_file(tmp)
    return digest


def next_shard_index(root: Path, rank: int) -> int:
    """One past the highest shard number of ``rank`` on disk (orphans included, so none is overwritten)."""
    matches = (_SHARD_RE.match(p.name) for p in Path(root).glob("shard-r*.safetensors"))
    ks = [int(m.group(2)) for m in matches if m and int(m.group(1)) == rank]
    return max(ks, default=-1) + 1


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append JSON lines, first ending a torn last line (from a killed run) so no new row is glued to it."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
    append_jsonl(path, rows)


# --- encoder.json -----------------------------------------------------------------------------------
def config_hash(model: torch.nn.Module) -> str:
    """A reconstructor's identity beside its name: sha256 of the config fields that decide its triplanes and
    field (16 hex digits); presentation-only fields (``baked_shading``) are left out."""
    c = model.config
    if hasattr(c, "identity_dict"):
        cfg = c.identity_dict()
    else:
        cfg = c.to_dict() if hasattr(c, "to_dict") else vars(c)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def encoder_info(model: torch.nn.Module, dtype: str) -> dict:
    """The ``encoder.json`` of latents made by ``model`` and stored as ``dtype``."""
    return {
        "encoder": str(model.encoder_id),
        "config_hash": config_hash(model),
        "conventions_version": cv.CONVENTIONS_VERSION,
        "triplane_shape": list(model.triplane_shape),
        "dtype": dtype,
        "image_size": int(model.config.image_size),
    }


def read_encoder_json(root: str | Path) -> dict:
    path = Path(root) / ENCODER_JSON
    if not path.exists():
        raise ConfigError(f"{path}: missing; not a latents folder (run `triflow3d encode` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from e


def ensure_encoder_json(root: Path, info: dict) -> None:
    """Write ``encoder.json``, or check that an existing one describes the same encoder and layout."""
    path = Path(root) / ENCODER_JSON
    if path.exists():
        old = read_encoder_json(root)
        keys = ("encoder", "config_hash", "conventions_version", "triplane_shape", "dtype")
        diff = [k for k in keys if old.get(k) != info.get(k)]
        if diff:
            raise ConfigError(
                f"{path}: existing latents were made with a different {', '.join(diff)} "
                f"({[old.get(k) for k in diff]} vs {[info.get(k) for k in diff]}); use a new --out folder"
            )
        return
    write_json(path, info)


# --- index ------------------------------------------------------------------------------------------
def valid_rows(root: str | Path, verify: bool = True) -> dict[str, dict]:
    """Rows of every rank index whose shard exists (and, with ``verify``, matches its sha256); id -> row."""
    root = Path(root)
    ok: dict[tuple, bool] = {}

    def shard_ok(row: dict) -> bool:
        key = (row.get("shard"), row.get("shard_sha256"))
        if key not in ok:
            p = root / str(row.get("shard"))
            ok[key] = p.exists() and (not verify or sha256_file(p) == row.get("shard_sha256"))
        return ok[key]

    return ranks.collect(ranks.rank_files(root, INDEX), keep=shard_ok)


def failed_rows(root: str | Path) -> dict[str, dict]:
    return ranks.collect(ranks.rank_files(root, FAILURES))


def merge_index(root: str | Path, verify: bool = True) -> dict:
    """Build ``index.jsonl`` from the rank indexes (deduplicated by id, sorted); returns a summary."""
    root = Path(root)
    read_encoder_json(root)
    rows = valid_rows(root, verify)
    fails = {k: v for k, v in failed_rows(root).items() if k not in rows}
    ranks.write_rows(root / INDEX, rows)
    used = {r["shard"] for r in rows.values()}
    orphans = sorted(p.name for p in root.glob("shard-r*.safetensors") if p.name not in used)
    return {"objects": len(rows), "failed": len(fails), "orphan_shards": orphans}


def read_index(root: str | Path) -> list[dict]:
    """The merged index if present, else the (unverified) union of the rank indexes."""
    root = Path(root)
    if (root / INDEX).exists():
        return read_jsonl(root / INDEX)
    rows = valid_rows(root, verify=False)
    return [rows[k] for k in sorted(rows)]


def relative_views_dir(root: str | Path, folder: str | Path) -> str:
    """How an index row names an object's views folder: relative to the latents folder, so the two can
    move together (``views_dir`` of :func:`views_dir`)."""
    return os.path.relpath(Path(folder).resolve(), Path(root).resolve())


def views_dir(root: str | Path, row: dict) -> str:
    """An index row's views folder as a path: relative ones (this format) from the latents folder,
    absolute ones (folders written before) as they are; "" when the row names none."""
    name = str(row.get("views_dir") or "")
    if not name or Path(name).is_absolute():
        return name
    return str((Path(root) / name).resolve())


# --- reader -----------------------------------------------------------------------------------------
class LatentDataset(Dataset):
    """Lazily reads triplanes from a latents folder (memory-mapped ``safe_open``).

    Items: dict(triplane (3, C, R, R) float32, caption, attributes, id, views_dir) plus one entry per
    sidecar found (``weights`` ...). ``filter`` is a predicate on index rows.
    """

    def __init__(self, root: str | Path, filter: Callable[[dict], bool] | None = None):
        self.root = Path(root)
        self.encoder = read_encoder_json(self.root)
        shape = self.encoder.get("triplane_shape")
        if not (isinstance(shape, list) and len(shape) == 4):
            raise ConfigError(f"{self.root / ENCODER_JSON}: triplane_shape must be [3, C, R, R], got {shape}")
        self.triplane_shape: tuple[int, ...] = tuple(int(s) for s in shape)
        rows = read_index(self.root)
        self.rows: list[dict] = [r for r in rows if filter is None or filter(r)]
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:  # safe_open handles do not pickle (DataLoader workers reopen)
        return {**self.__dict__, "_handles": {}}

    def _open(self, name: str):
        if name not in self._handles:
            path = self.root / name
            if not path.exists():
                self._handles[name] = None
                if _SHARD_RE.match(name):
                    raise ConfigError(f"{path}: shard listed in the index is missing")
            else:
                self._handles[name] = safe_open(str(path), framework="pt")
                if _SHARD_RE.match(name):
                    self._check_shard(path, self._handles[name])
        return self._handles[name]

    def _check_shard(self, path: Path, f) -> None:
        got = tuple(f.get_slice(TRIPLANE_KEY).get_shape()[1:])
        if got != self.triplane_shape:
            raise ConfigError(f"{path}: triplanes of shape {got} but encoder.json says {self.triplane_shape}")

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        shard, r = str(row["shard"]), int(row["row"])
        tri = self._open(shard).get_slice(TRIPLANE_KEY)[r : r + 1][0].float()  # (3, C, R, R)
        item = {
            "triplane": tri,
            "caption": row.get("caption", ""),
            "attributes": row.get("attributes") or {},
            "id": str(row["id"]),
            "views_dir": views_dir(self.root, row),
        }
        for name in SIDECARS:
            f = self._open(sidecar_name(shard, name))
            if f is not None:
                item[name] = f.get_slice(name)[r : r + 1][0].float()
        return item

    def stacked(self, name: str = TRIPLANE_KEY) -> torch.Tensor | None:
        """Every row's triplane (``name`` = "triplanes") or sidecar tensor, stacked in row order (N, ...) in
        its stored dtype, each file read once; None when a sidecar is missing for any row."""
        by_file: dict[str, list[tuple[int, int]]] = {}
        for i, row in enumerate(self.rows):
            shard = str(row["shard"])
            file = shard if name == TRIPLANE_KEY else sidecar_name(shard, name)
            by_file.setdefault(file, []).append((i, int(row["row"])))
        out: torch.Tensor | None = None
        for file, pairs in by_file.items():
            f = self._open(file)
            if f is None:
                return None
            part = f.get_tensor(name)[torch.tensor([r for _, r in pairs])]  # (n_file, ...)
            if out is None:
                out = part.new_empty((len(self.rows), *part.shape[1:]))
            out[torch.tensor([i for i, _ in pairs])] = part
        return out


# --- sidecars: per-shard extra tensors (same row order), e.g. the spatial loss weights ---------------
def sidecar_name(shard: str, name: str) -> str:
    """``<shard stem>.<name>.safetensors``: the file LatentDataset reads as item key ``name``."""
    return f"{shard.removesuffix('.safetensors')}.{name}.safetensors"


def write_sidecar(path: Path, name: str, tensor: torch.Tensor, meta: dict[str, str]) -> None:
    """Atomically write one sidecar: ``tensor`` (N, ...) under key ``name``, with string metadata."""
    with atomic_path(path) as tmp:
        save_file({name: tensor.contiguous()}, str(tmp), metadata=meta)
