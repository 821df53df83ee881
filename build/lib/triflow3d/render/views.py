"""The ``render`` dataset stage: asset files -> ``DIR/<id>/`` folders of posed views + ``cameras.json``.

Each asset is loaded in a child process with a time limit, normalised into the object sphere, rendered
from the rig, and written to a temporary folder that is renamed into place, so a reader never sees a
half-written asset and a re-run skips finished ones. One manifest row per asset is appended to
``DIR/manifest.jsonl`` (``manifest-r{RRR}.jsonl`` per rank when sharded; the last rank to finish, or
:func:`merge_manifests`, joins them: :mod:`triflow3d.data.ranks`). The folder format is documented in ``docs/rendering.md``.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from triflow3d import conventions as cv
from triflow3d.cameras import Rig, parse_rig
from triflow3d.data import ranks
from triflow3d.data.views import CAMERAS, MANIFEST, view_file
from triflow3d.errors import AssetError, ConfigError
from triflow3d.render import Renderer, RenderOutput
from triflow3d.utils.io import append_jsonl, atomic_path, read_jsonl, shard, write_json

PASSES: tuple[str, ...] = ("rgba", "depth", "normal", "mask")
CONFIG_FILE = "render.json"  # the stage's settings, checked on re-runs into the same folder


@dataclass(frozen=True)
class ViewsConfig:
    """What to render for every asset."""

    rig: str = "zero123pp"  # zero123pp | orbit:N | random:N
    size: int = cv.ZERO123PP_IMAGE_SIZE
    passes: tuple[str, ...] = ("rgba",)
    seed: int = 0  # random rigs: per-asset cameras from (seed, asset id)
    timeout_s: float = 60.0  # per-file load time limit

    def __post_init__(self) -> None:
        try:
            parse_rig(self.rig)
        except ValueError as e:
            raise ConfigError(f"--rig: {e}") from None
        if not self.timeout_s > 0:
            raise ConfigError(f"--timeout must be a positive number of seconds, got {self.timeout_s}")
        if self.size < 1:
            raise ConfigError(f"--size must be a positive number of pixels, got {self.size}")
        bad = sorted(set(self.passes) - set(PASSES))
        if bad or not self.passes:
            raise ConfigError(
                f"--passes: unknown or empty {bad or self.passes}; choose from {', '.join(PASSES)}"
            )


@dataclass(frozen=True)
class Source:
    """One asset to render: its output id, file, and optional caption metadata (from a shapes manifest)."""

    id: str
    path: Path
    caption: str | None = None
    attributes: dict | None = None
    split: str | None = None


@dataclass
class Summary:
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    not_attempted: int = 0  # left out by a stop at the first failure
    failures: dict[str, int] | None = None  # AssetError kind -> count

    @property
    def total(self) -> int:
        return self.rendered + self.skipped + self.failed


# --- inputs ----------------------------------------------------------------------------------------
def collect_sources(inputs: Iterable[str | Path]) -> list[Source]:
    """Asset files and folders -> unique-id sources, in input order.

    A folder holding a ``manifest.jsonl`` (from ``shapes make``) contributes its rows (id, caption,
    attributes, split); other files get id = file stem, with a short path hash added on collisions.
    """
    from triflow3d.assets import iter_asset_files

    sources: list[Source] = []
    for item in map(Path, inputs):
        if item.is_dir() and ((item / MANIFEST).is_file() or ranks.rank_files(item, MANIFEST)):
            sources += _manifest_sources(item)
        else:
            sources += [Source(id=p.stem, path=p) for p in iter_asset_files([item])]
    return _dedupe(sources)


def _manifest_sources(folder: Path) -> list[Source]:
    out = []
    for row in _shapes_rows(folder):
        if not row.get("path") and not row.get("id"):
            raise ConfigError(f"{folder / MANIFEST}: row with neither 'path' nor 'id': {row}")
        path = _row_path(folder, row)
        ident = str(row.get("id") or path.stem)
        out.append(Source(ident, path, row.get("caption"), row.get("attributes"), row.get("split")))
    return out


def _shapes_rows(folder: Path) -> list[dict]:
    """A shapes folder's rows: those with an id merged over the manifest and its rank files (one per
    id), then the path-only rows of the merged manifest in file order."""
    merged = list(ranks.read_rows(folder, MANIFEST).values())
    return merged + [r for r in read_jsonl(folder / MANIFEST) if "id" not in r]


def _row_path(folder: Path, row: dict) -> Path:
    """A manifest row's file: ``path`` relative to the manifest's folder (or absolute / cwd-relative),
    else ``<folder>/<id>.glb``. A missing file is reported later, as that asset's failure."""
    if not row.get("path"):
        return folder / f"{row['id']}.glb"
    path = Path(row["path"])
    if path.is_absolute() or (folder / path).exists() or not path.exists():
        return path if path.is_absolute() else folder / path
    return path


def _dedupe(sources: list[Source]) -> list[Source]:
    """Drop repeated files; give colliding ids of different files a short hash of the path."""
    seen_paths: set[Path] = set()
    taken: set[str] = set()
    out = []
    for s in sources:
        key = s.path.resolve()
        if key in seen_paths:
            continue
        seen_paths.add(key)
        ident = _safe_id(s.id)
        if ident in taken:
            ident = f"{ident}-{hashlib.sha1(str(key).encode()).hexdigest()[:8]}"
        taken.add(ident)
        out.append(Source(ident, s.path, s.caption, s.attributes, s.split))
    return out


def _safe_id(ident: str) -> str:
    """Folder-safe id: path separators and leading dots would escape or hide the output folder."""
    clean = ident.replace("/", "_").replace("\\", "_").lstrip(".")
    return clean or "asset"


def asset_seed(seed: int, ident: str) -> int:
    """Per-asset camera seed for random rigs (stable across runs, ranks and machines)."""
    return (seed * 1_000_003 + zlib.crc32(ident.encode())) % 2**31


# --- one asset -------------------------------------------------------------------------------------
def render_source(renderer: Renderer, source: Source, cfg: ViewsConfig, out_dir: Path) -> dict:
    """Load, normalise, render and write one asset; returns its manifest row (raises AssetError)."""
    from triflow3d.assets import load_asset_isolated, normalize

    asset = normalize(load_asset_isolated(source.path, cfg.timeout_s))
    seed = asset_seed(cfg.seed, source.id)
    rig = parse_rig(cfg.rig, seed=seed)
    try:
        out = renderer.render(asset, rig, cfg.size)
    except Exception as e:  # a renderer failure on one asset must not stop the run
        raise AssetError(source.path, f"rendering failed ({type(e).__name__}: {str(e)[:200]})") from e
    if not out.mask.any():
        raise AssetError(source.path, f"rendered nothing: {_invisible_reason(asset)}", "rendered nothing")
    transform = asset.meta.get("normalization_transform", np.eye(4).tolist())
    with atomic_path(out_dir / source.id) as tmp:
        tmp.mkdir()
        write_views(tmp, out, cfg.passes)
        write_json(tmp / CAMERAS, cameras_record(rig, cfg, seed, transform, source))
    return manifest_row(source, cfg, "ok", len(rig))


def _invisible_reason(asset) -> str:
    """Why a loaded, non-empty asset may cover no pixel (the loader already refused empty geometry)."""
    from triflow3d.render.shading import ALPHA_CUTOFF

    def transparent(p) -> bool:
        alpha = p.base_color[3] * (1.0 if p.vertex_colors is None else float(p.vertex_colors[:, 3].max()))
        if p.has_texture:
            alpha *= float(p.texture[..., 3].max()) / 255.0
        return alpha < ALPHA_CUTOFF

    if all(transparent(p) for p in asset.parts):
        return f"every material is transparent (alpha below {ALPHA_CUTOFF}), so the renderer sees through it"
    return "the object covers no pixel in any view (the renderer saw nothing)"


def write_views(folder: Path, out: RenderOutput, passes: Iterable[str]) -> None:
    """``rgba_000.png`` (8-bit straight RGBA), ``depth_000.npy`` (float32), ``normal_000.png``, ``mask_000.png``."""
    passes = set(passes)
    for k in range(out.rgba.shape[0]):
        if "rgba" in passes:
            _png(folder / view_file(k), out.rgba[k])
        if "depth" in passes:
            np.save(folder / view_file(k, "depth", "npy"), out.depth[k].astype(np.float32))
        if "normal" in passes:  # rgb = (n + 1) / 2, alpha = mask
            _png(
                folder / view_file(k, "normal"),
                np.concatenate([(out.normal[k] + 1) / 2, out.mask[k, ..., None]], -1),
            )
        if "mask" in passes:
            _png(folder / view_file(k, "mask"), out.mask[k].astype(np.float32))


def _png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)).save(path)


def cameras_record(rig: Rig, cfg: ViewsConfig, seed: int, transform: list, source: Source) -> dict:
    """The ``cameras.json`` content (conventions in :mod:`triflow3d.conventions`)."""
    return {
        "conventions_version": cv.CONVENTIONS_VERSION,
        "id": source.id,
        "rig": cfg.rig,
        "seed": seed,
        "fov_deg": rig.fov_deg,
        "size": cfg.size,
        "num_views": len(rig),
        "c2w": rig.c2w.tolist(),  # (N, 4, 4) OpenGL camera-to-world
        "input_cameras": rig.input_cameras().tolist(),  # (N, 16)
        "render_cameras": rig.render_cameras().tolist(),  # (N, 25)
        "normalization_transform": transform,  # (4, 4): source file coordinates -> rendered world
        "source": str(source.path),
        "passes": list(cfg.passes),
    }


def manifest_row(source: Source, cfg: ViewsConfig, status: str, views: int, error: str | None = None) -> dict:
    row = {"id": source.id, "source": str(source.path), "status": status, "views": views}
    row |= {"size": cfg.size, "rig": cfg.rig}
    extras = {
        "caption": source.caption,
        "attributes": source.attributes,
        "split": source.split,
        "error": error,
    }
    return row | {k: v for k, v in extras.items() if v is not None}


# --- the stage -------------------------------------------------------------------------------------
def manifest_path(out_dir: Path, rank: int, world_size: int) -> Path:
    return ranks.stage_file(out_dir, MANIFEST, rank, world_size)


def render_all(
    renderer: Renderer,
    sources: list[Source],
    out_dir: Path,
    cfg: ViewsConfig,
    rank: int = 0,
    world_size: int = 1,
    on_done: Callable[[Source, dict | None], None] | None = None,
    keep_going: bool = True,
) -> Summary:
    """Render this rank's shard of ``sources`` into ``out_dir``; failures are recorded, never raised.

    ``on_done(source, row)`` is called after each asset (row None when it was skipped as finished).
    Without ``keep_going`` the first failure ends the run (``Summary.not_attempted`` counts the rest).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, cfg)
    manifest = manifest_path(out_dir, rank, world_size)
    recorded = {r["id"] for r in read_jsonl(manifest) if r.get("status") == "ok"}
    summary, mine = Summary(failures={}), shard(sources, rank, world_size)
    for k, source in enumerate(mine):
        row = None
        if (out_dir / source.id / CAMERAS).is_file():
            summary.skipped += 1
            if source.id not in recorded:  # interrupted between the rename and the manifest line
                row = manifest_row(source, cfg, "ok", _views_on_disk(out_dir / source.id))
        else:
            try:
                row = render_source(renderer, source, cfg, out_dir)
                summary.rendered += 1
            except AssetError as e:
                row = manifest_row(source, cfg, "failed", 0, error=e.reason) | {"error_kind": e.kind}
                summary.failed += 1
                summary.failures[e.kind] = summary.failures.get(e.kind, 0) + 1
        if row is not None:
            append_jsonl(manifest, [row])
        if on_done is not None:
            on_done(source, row)
        if summary.failed and not keep_going:
            summary.not_attempted = len(mine) - k - 1
            break
    if world_size > 1:
        ranks.merge_when_complete(out_dir, MANIFEST, [s.id for s in sources])
    return summary


def _views_on_disk(folder: Path) -> int:
    return int(json.loads((folder / CAMERAS).read_text())["num_views"])


def _check_config(out_dir: Path, cfg: ViewsConfig) -> None:
    """Refuse to mix rigs / sizes / seeds in one output folder (finished assets would be skipped)."""
    path = out_dir / CONFIG_FILE
    wanted = {"rig": cfg.rig, "size": cfg.size, "conventions_version": cv.CONVENTIONS_VERSION}
    if cfg.rig.startswith("random"):  # only random rigs depend on the seed
        wanted["seed"] = cfg.seed
    if path.is_file():
        have = {k: json.loads(path.read_text()).get(k) for k in wanted}
        if have != wanted:
            raise ConfigError(f"{out_dir} was rendered with {have}, not {wanted}: use another --out folder")
    else:
        write_json(path, wanted | {"passes": list(cfg.passes)})


def merge_manifests(out_dir: str | Path) -> Path:
    """Join ``manifest-r*.jsonl`` into ``manifest.jsonl`` (:func:`triflow3d.data.ranks.merge`)."""
    out_dir = Path(out_dir)
    if not ranks.rank_files(out_dir, MANIFEST):
        raise ConfigError(f"{out_dir}: no manifest-r*.jsonl files to merge")
    ranks.merge(out_dir, MANIFEST)
    return out_dir / MANIFEST
