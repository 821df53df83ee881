"""Per-rank JSON-lines files of sharded stages, and the one step that merges them.

A stage run in W ranks (``--rank/--world-size`` or torchrun's environment) has rank r append its rows
to ``<stem>-r{r:03d}.jsonl`` beside the folder's ``<stem>.jsonl`` (for ``manifest.jsonl``:
``manifest-r000.jsonl``, ``manifest-r001.jsonl``, ...). :func:`merge` joins them into ``<stem>.jsonl``:
one row per id, ids sorted; a later row of an id replaces an earlier one, except that a failed row
never replaces an ``ok`` one (a retry that failed does not hide the object already made). Rows without a
``status`` count as ok. The last rank to finish merges (:func:`merge_when_complete`, no barrier needed)
and every stage has a ``--merge`` for folders whose ranks stopped early; :func:`read_rows` gives a reader
the same rows before the merge. Used by ``shapes make`` and ``render`` (``manifest.jsonl``) and
``encode`` (``index.jsonl``, ``failures.jsonl``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from triflow3d.utils.io import atomic_path, read_jsonl

Keep = Callable[[dict], bool]


def _parts(name: str) -> tuple[str, str]:
    path = Path(name)
    return path.stem, path.suffix


def rank_file(folder: str | Path, name: str, rank: int) -> Path:
    """Where rank ``rank`` appends the rows of ``name``: ``manifest.jsonl`` -> ``manifest-r003.jsonl``."""
    stem, suffix = _parts(name)
    return Path(folder) / f"{stem}-r{rank:03d}{suffix}"


def stage_file(folder: str | Path, name: str, rank: int, world_size: int) -> Path:
    """The file a stage appends to: ``name`` itself in a single-rank run, else its rank file."""
    return Path(folder) / name if world_size == 1 else rank_file(folder, name, rank)


def rank_files(folder: str | Path, name: str) -> list[Path]:
    """Every rank file of ``name`` in ``folder``, in rank order."""
    stem, suffix = _parts(name)
    pattern = re.compile(rf"^{re.escape(stem)}-r\d{{3}}{re.escape(suffix)}$")
    return sorted(p for p in Path(folder).glob(f"{stem}-r*{suffix}") if pattern.match(p.name))


def _ok(row: dict) -> bool:
    return row.get("status", "ok") == "ok"


def collect(files: Iterable[Path], keep: Keep | None = None) -> dict[str, dict]:
    """id -> row over ``files`` in order (later rows replace earlier ones, a failed row never an ok one)."""
    out: dict[str, dict] = {}
    for f in files:
        for row in read_jsonl(f):
            if "id" not in row or (keep is not None and not keep(row)):
                continue
            key = str(row["id"])
            if key not in out or _ok(row) or not _ok(out[key]):
                out[key] = row
    return out


def read_rows(folder: str | Path, name: str, keep: Keep | None = None) -> dict[str, dict]:
    """The rows a merge would write: ``name`` itself, then every rank file."""
    return collect([Path(folder) / name, *rank_files(folder, name)], keep)


def write_rows(path: str | Path, rows: dict[str, dict]) -> Path:
    """Rows sorted by id as JSON lines, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(rows[k], sort_keys=True) + "\n" for k in sorted(rows)))
    return Path(path)


def merge(
    folder: str | Path, name: str, keep: Keep | None = None, with_merged: bool = True
) -> dict[str, dict]:
    """Write ``folder/name`` from the rank files (and, ``with_merged``, the rows it already holds)."""
    files = rank_files(folder, name)
    rows = collect([Path(folder) / name, *files] if with_merged else files, keep)
    write_rows(Path(folder) / name, rows)
    return rows


def merge_when_complete(folder: str | Path, name: str, ids: Iterable[str]) -> bool:
    """Merge once every id of the whole run has a row (so the last rank to finish merges); True if merged."""
    if not rank_files(folder, name):
        return False
    if not set(map(str, ids)) <= set(read_rows(folder, name)):
        return False
    merge(folder, name)
    return True
