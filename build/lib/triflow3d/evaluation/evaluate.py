"""Benchmark evaluation of a text-to-3D pipeline (``triflow3d eval``): prompts -> objects -> metrics + report.

Protocol (docs/evaluation.md, section 7): each prompt is sampled ``n_per_prompt`` times (seed
``seed + i * K + k``); each object becomes a marching-cubes mesh, ``points`` surface samples (seed = its
index), a dominant colour, its fragmentation (floater share, components) and ``views`` rasterised
renders. A fixed *reference bank* of ``refs_per_category`` test-split shapes per category (seed stream
``REF_STREAM``, so never the prompts' own shapes) gives nearest-neighbour category labels, per-category
COV / MMD / 1-NNA and the FID reference images; it is cached under ``OUT/cache`` keyed by a hash of
everything that defines it. Prompts from the benchmark (``shapes:SPLIT``) also get Chamfer / F-score
against their own ground-truth solid, and the *ceiling*: the encoder round trip of that same shape (its
Zero123++ renders -> the model's reconstructor -> mesh), measured and scored by the same code
(``measure_mesh``, ``object_records``, ``summarize``; ``views_roundtrip`` does the same for a views folder,
for ``triflow3d recon eval``). ``unconditional`` samples without a prompt and is scored by distribution
metrics against the whole bank. Broken meshes count in ``failure_rate`` and are left out of every other
metric.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from triflow3d import conventions as cv
from triflow3d.assets.normalize import normalization_transform
from triflow3d.assets.types import Asset
from triflow3d.cameras import Rig, orbit_rig, zero123pp_rig
from triflow3d.errors import ConfigError, TriflowError
from triflow3d.evaluation.colour import classify_colour, dominant_colour
from triflow3d.evaluation.distribution import distribution_metrics
from triflow3d.evaluation.features import compute_image_metrics, load_clip, load_inception, metric_unavailable
from triflow3d.evaluation.geometry import (
    broken_reason,
    chamfer_distance,
    f_score,
    fragmentation,
    mesh_vertex_colours,
    nn_classify,
    pairwise_chamfer,
    sample_surface,
)
from triflow3d.evaluation.report import bar_chart, write_report
from triflow3d.shapes import (
    CATEGORIES,
    PALETTE,
    SHAPES_VERSION,
    ShapeSpec,
    build_asset,
    sample_seed,
    sample_spec,
    shape_solid,
)
from triflow3d.shapes.splits import SPLITS
from triflow3d.triplane.mesh import FLOATER_SHARE
from triflow3d.utils.images import save_grid
from triflow3d.utils.io import append_jsonl, atomic_path
from triflow3d.utils.progress import progress_bar

PROTOCOL_VERSION = 2  # 2: benchmark shapes normalised like rendered training data (benchmark_object)
REF_STREAM = 1  # sample_seed offset of the reference bank (the prompts use the canonical stream 0)
RECON_STREAM = 2  # sample_seed offset of the encoder round-trip shapes
SHAPES_PREFIX = "shapes:"
UNCONDITIONAL = "unconditional"  # --prompts source: samples without a prompt (the null condition)
FREEFORM = "freeform"  # --prompts source: the committed free-form prompt set (never trained on)
FREEFORM_FILE = Path(__file__).parent / "prompts" / "freeform.jsonl"
FRAGMENTED_ABOVE = 0.05  # a sample whose floater share exceeds this counts as fragmented
CEILING_KEYS = ("failure_rate", "category_accuracy", "colour_accuracy", "colour_accuracy_plain", "chamfer",
                "fscore@0.05", "floater_share", "fragmented_share")  # fmt: skip
FIGURE_COLUMNS = 4  # generated (and reference) tiles per category in the grid figure


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation run (written into the report's protocol)."""

    prompts: str = "shapes:test"  # shapes:SPLIT, freeform, unconditional or a JSONL file
    n_prompts: int = 100  # first N prompts
    n_per_prompt: int = 1  # K samples per prompt
    seed: int = 0  # prompt i, sample k gets seed + i K + k
    steps: int | None = None  # sampler overrides (None: the model's defaults)
    cfg: float | None = None
    sampler: str | None = None
    batch_size: int | None = None
    resolution: int = 128  # marching-cubes grid
    threshold: float | None = None  # density level (None: the encoder's, conventions.MESH_THRESHOLD)
    points: int = 2048  # surface samples per shape (PointFlow setting)
    refs_per_category: int = 10  # reference bank size per category
    fscore_taus: tuple[float, ...] = (0.02, 0.05)
    views: int = 4  # orbit render views of each object
    elevation: float = cv.RENDER_ELEVATION_DEG
    fov: float = cv.RENDER_FOV_DEG
    image_size: int = 128
    recon_objects: int = 4  # held-out shapes for the encoder round trip (0: skip)
    ceiling: bool = True  # also measure the round trip of each benchmark prompt's own shape
    inception: str | None = None  # FID network (.pt); None: $TRIFLOW3D_INCEPTION / caches
    clip: str | None = None  # CLIP folder; None: $TRIFLOW3D_CLIP / HF cache
    render_backend: str = "auto"  # asset rasteriser of triflow3d.render

    def __post_init__(self) -> None:
        for name in ("n_prompts", "n_per_prompt", "points", "refs_per_category", "views", "image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval: {name} must be >= 1, got {getattr(self, name)}")
        if self.recon_objects < 0 or self.resolution < 2:
            raise ConfigError(f"eval: need recon_objects >= 0 and resolution >= 2, got {self}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalConfig:
        known = {f for f in cls.__dataclass_fields__}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"unknown eval settings {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "fscore_taus" in d:
            d["fscore_taus"] = tuple(float(t) for t in d["fscore_taus"])
        return cls(**d)


@dataclass(frozen=True)
class PromptRow:
    """One prompt: caption, attributes (category / colour / pattern / heldout_combo, any may be absent)
    and, for benchmark prompts, the shape it was written for (its ground truth)."""

    caption: str
    attributes: dict = field(default_factory=dict)
    split: str | None = None
    shape_seed: int | None = None


# --- prompts -------------------------------------------------------------------------------------------
def load_prompts(source: str, n: int) -> list[PromptRow]:
    """The first ``n`` prompts of ``shapes:SPLIT`` (benchmark captions + attributes), ``freeform`` (the
    committed free-form set), ``unconditional`` (``n`` empty prompts: no condition) or a JSONL file."""
    if source == UNCONDITIONAL:
        return [PromptRow("") for _ in range(n)]
    if source == FREEFORM:
        source = str(FREEFORM_FILE)
    if source.startswith(SHAPES_PREFIX):
        split = source.removeprefix(SHAPES_PREFIX)
        if split not in SPLITS:
            raise ConfigError(f"--prompts {source!r}: unknown split; use shapes:{' | shapes:'.join(SPLITS)}")
        specs = (sample_spec(sample_seed(split, i), split) for i in range(n))
        return [PromptRow(s.caption, s.attributes(), split, s.seed) for s in specs]
    path = Path(source)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read prompts file ({e.strerror})") from None
    rows = [_prompt_row(line, path, k + 1) for k, line in enumerate(lines) if _is_data(line)]
    if not rows:
        raise ConfigError(f"{path}: no prompts (one JSON object per line with a 'caption')")
    return rows[:n]


def _is_data(line: str) -> bool:
    """JSONL prompt files skip blank lines and ``#`` comment lines."""
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _prompt_row(line: str, path: Path, lineno: int) -> PromptRow:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("caption"), str) or not obj["caption"].strip():
        raise ConfigError(f"{where}: each line needs a non-empty string 'caption'")
    attrs = obj.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise ConfigError(f"{where}: 'attributes' must be an object, got {type(attrs).__name__}")
    if attrs.get("category") is not None and attrs["category"] not in CATEGORIES:
        raise ConfigError(f"{where}: unknown category {attrs['category']!r}; known: {', '.join(CATEGORIES)}")
    if attrs.get("colour") is not None and attrs["colour"] not in PALETTE:
        raise ConfigError(f"{where}: unknown colour {attrs['colour']!r}; known: {', '.join(PALETTE)}")
    return PromptRow(obj["caption"].strip(), attrs)


# --- protocol, rig, reference bank ------------------------------------------------------------------------
def eval_rig(cfg: EvalConfig) -> Rig:
    return orbit_rig(cfg.views, cfg.elevation, cv.RENDER_RADIUS, cfg.fov)


def bank_protocol(cfg: EvalConfig, renderer_name: str) -> dict[str, Any]:
    """What defines the reference bank (its cache key is a hash of this)."""
    return {
        "protocol_version": PROTOCOL_VERSION, "shapes_version": SHAPES_VERSION, "split": "test",
        "seed_stream": REF_STREAM, "refs_per_category": cfg.refs_per_category, "points": cfg.points,
        "point_seed": 0, "views": cfg.views, "elevation": cfg.elevation, "fov": cfg.fov,
        "radius": cv.RENDER_RADIUS, "image_size": cfg.image_size, "renderer": renderer_name,
    }  # fmt: skip


def protocol_hash(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Bank:
    """Reference shapes: points (m, N, 3), labels (m,), renders uint8 (m, V, S, S, 3)."""

    points: np.ndarray
    labels: list[str]
    images: np.ndarray
    key: str

    def of(self, category: str) -> np.ndarray:
        return np.array([i for i, lab in enumerate(self.labels) if lab == category], dtype=np.int64)


def reference_bank(cfg: EvalConfig, renderer, cache_dir: Path | None, progress: bool = False) -> Bank:
    """The reference bank (``refs_per_category`` test shapes per category), cached in ``cache_dir`` (built on
    first use there; ``None``: built, not cached)."""
    key = protocol_hash(bank_protocol(cfg, renderer.name))
    path = None if cache_dir is None else cache_dir / f"refs-{key}.npz"
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return Bank(z["points"], [str(s) for s in z["labels"]], z["images"], key)
    rig, points, images, labels = eval_rig(cfg), [], [], []
    jobs = [(c, j) for c in CATEGORIES for j in range(cfg.refs_per_category)]
    with progress_bar(disable=None if progress else True) as bar:
        task = bar.add_task("references", total=len(jobs), status="")
        for k, (category, _) in enumerate(jobs):
            asset, solid = benchmark_object(
                sample_spec(sample_seed("test", k, REF_STREAM), "test", category=category)
            )
            points.append(sample_surface(solid, cfg.points, seed=0)[0])
            images.append(_to_uint8(renderer.render(asset, rig, cfg.image_size).rgb_on_white()))
            labels.append(category)
            bar.advance(task)
    bank = Bank(np.stack(points), labels, np.stack(images), key)
    if path is None:
        return bank
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:
            np.savez(f, points=bank.points, labels=np.array(labels), images=bank.images)
    return bank


def benchmark_object(spec: ShapeSpec) -> tuple[Asset, trimesh.Trimesh]:
    """A benchmark shape in the frame the models were trained in: its asset normalised as ``triflow3d render``
    does (``assets.normalize``: bounding sphere of radius ``OBJECT_RADIUS``; ``shapes`` itself fills 0.9),
    and its watertight solid under the same transform."""
    asset = build_asset(spec)
    matrix = normalization_transform(asset)
    return asset.transformed(matrix), shape_solid(spec).apply_transform(matrix)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., S, S, 3) -> float (N, 3, S, S) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, *images.shape[-3:])
    return x.permute(0, 3, 1, 2).float() / 255.0


# --- generation + per-object measurements ---------------------------------------------------------------
@dataclass
class Sample:
    """One generated object's measurements (``failure`` set: broken, nothing else measured)."""

    row: int
    prompt: str
    seed: int
    failure: str | None = None
    points: np.ndarray | None = None  # (N, 3)
    colour: str | None = None  # classified dominant colour
    floater_share: float | None = None  # surface share in components with < 5 % of the area each
    components: int | None = None  # connected components of the mesh
    images: np.ndarray | None = None  # (V, S, S, 3) uint8
    seconds: float = 0.0


def measure(gen, index: int, row: int, cfg: EvalConfig, renderer, rig: Rig) -> Sample:
    """Mesh, surface points, dominant colour, fragmentation and renders of one ``pipeline.Generated``."""
    s = Sample(row, gen.prompt, gen.seed, seconds=gen.seconds)
    return measure_mesh(s, lambda: gen.to_mesh(cfg.resolution, cfg.threshold), index, cfg, renderer, rig)


def measure_mesh(
    s: Sample,
    make_mesh: Callable[[], Any],
    index: int,
    cfg: EvalConfig,
    renderer=None,
    rig: Rig | None = None,
) -> Sample:
    """Fill ``s`` with the measurements of one object's mesh ``make_mesh()`` (a generated object or a round
    trip, before any clean-up): failure, ``cfg.points`` surface points and the dominant colour (seed
    ``index``), fragmentation, and renders from ``rig`` when a renderer is given."""
    from triflow3d.render.meshes import mesh_part

    try:
        mesh = make_mesh()
    except (TriflowError, ValueError, RuntimeError) as e:
        s.failure = f"mesh extraction failed: {e}"
        return s
    s.failure = broken_reason(mesh)
    if s.failure is not None:
        return s
    s.points = sample_surface(mesh, cfg.points, seed=index)[0]
    if mesh_vertex_colours(mesh) is not None:
        s.colour = classify_colour(dominant_colour(mesh, seed=index))
    s.floater_share, s.components = fragmentation(mesh)
    if renderer is not None and rig is not None:
        s.images = _to_uint8(renderer.render(Asset((mesh_part(mesh),)), rig, cfg.image_size).rgb_on_white())
    return s


def generate_and_measure(pipe, rows: Sequence[PromptRow], cfg: EvalConfig, renderer, progress: bool):
    """Sample every (prompt, k) in batches and measure each object as it comes."""
    jobs = [(i, k) for i in range(len(rows)) for k in range(cfg.n_per_prompt)]
    batch = cfg.batch_size or pipe.settings.batch_size
    rig, out = eval_rig(cfg), []
    with progress_bar(disable=None if progress else True) as bar:
        task = bar.add_task("generate", total=len(jobs), status="")
        for start in range(0, len(jobs), batch):
            part = jobs[start : start + batch]
            seeds = [cfg.seed + i * cfg.n_per_prompt + k for i, k in part]
            kw = dict(steps=cfg.steps, sampler=cfg.sampler, batch_size=batch)
            if cfg.prompts == UNCONDITIONAL:
                gens = pipe.unconditional(len(part), seed=seeds, **kw)
            else:
                gens = pipe([rows[i].caption for i, _ in part], seed=seeds, cfg=cfg.cfg, **kw)
            for j, ((i, _), gen) in enumerate(zip(part, gens)):
                out.append(measure(gen, start + j, i, cfg, renderer, rig))
                bar.advance(task)
    return out


# --- metrics ---------------------------------------------------------------------------------------------
def _mean(values: Sequence[float | bool]) -> float | None:
    return float(np.mean([float(v) for v in values])) if len(values) else None


def ground_truth_points(rows: Sequence[PromptRow], cfg: EvalConfig) -> dict[int, np.ndarray]:
    """Surface points (N, 3) of each benchmark prompt's own shape (seed 0), by row index."""
    return {
        i: sample_surface(benchmark_object(sample_spec(r.shape_seed, r.split))[1], cfg.points, seed=0)[0]
        for i, r in enumerate(rows)
        if r.shape_seed is not None
    }


def object_records(samples: Sequence[Sample], rows: Sequence[PromptRow], bank: Bank, cfg: EvalConfig):
    """One JSON-able record per generated object: targets, predictions, Chamfer / F-score to its truth."""
    ok = [k for k, s in enumerate(samples) if s.failure is None]
    labels = nn_classify(np.stack([samples[k].points for k in ok]), bank.points, bank.labels) if ok else []
    predicted = dict(zip(ok, labels))
    truth = ground_truth_points(rows, cfg)
    records = []
    for k, s in enumerate(samples):
        a = rows[s.row].attributes
        rec = {"row": s.row, "prompt": s.prompt, "seed": s.seed, "failure": s.failure,
               "category": a.get("category"), "colour": a.get("colour"), "pattern": a.get("pattern"),
               "heldout_combo": a.get("heldout_combo"), "pred_category": predicted.get(k),
               "pred_colour": s.colour, "floater_share": s.floater_share, "components": s.components,
               "chamfer": None, "seconds": round(s.seconds, 4)}  # fmt: skip
        if s.failure is None and s.row in truth:
            rec["chamfer"] = chamfer_distance(s.points, truth[s.row])
            for tau in cfg.fscore_taus:
                rec[f"fscore@{tau:g}"] = f_score(s.points, truth[s.row], tau).f
        records.append(rec)
    return records


def summarize(records: Sequence[dict], taus: Sequence[float]) -> dict[str, Any]:
    """Failure rate and the mean per-object metrics of a group of records (None: nothing to measure)."""
    ok = [r for r in records if r["failure"] is None]
    out: dict[str, Any] = {
        "n": len(records),
        "failure_rate": _mean([r["failure"] is not None for r in records]),
    }
    out["category_accuracy"] = _mean([r["pred_category"] == r["category"] for r in ok if r["category"]])
    out["colour_accuracy"] = _mean([r["pred_colour"] == r["colour"] for r in ok if r["colour"]])
    out["colour_accuracy_plain"] = _mean(
        [r["pred_colour"] == r["colour"] for r in ok if r["colour"] and r["pattern"] == "plain"]
    )
    out["chamfer"] = _mean([r["chamfer"] for r in ok if r["chamfer"] is not None])
    for tau in taus:
        out[f"fscore@{tau:g}"] = _mean([r[f"fscore@{tau:g}"] for r in ok if f"fscore@{tau:g}" in r])
    shares = [r["floater_share"] for r in ok if r.get("floater_share") is not None]
    out["floater_share"] = _mean(shares)
    out["fragmented_share"] = _mean([v > FRAGMENTED_ABOVE for v in shares])
    comps = [r["components"] for r in ok if r.get("components") is not None]
    out["components_median"] = float(np.median(comps)) if comps else None
    return out


def category_distribution(
    samples: Sequence[Sample], rows: Sequence[PromptRow], bank: Bank
) -> dict[str, dict]:
    """COV / MMD / 1-NNA (squared Chamfer) of each prompted category's objects against its bank shapes."""
    out = {}
    for category in CATEGORIES:
        gen = [
            s.points
            for s in samples
            if s.failure is None and rows[s.row].attributes.get("category") == category
        ]
        if not gen:
            continue
        g, r = np.stack(gen), bank.points[bank.of(category)]
        m = distribution_metrics(pairwise_chamfer(g, r), pairwise_chamfer(g, g), pairwise_chamfer(r, r))
        out[category] = {k: m[k] for k in ("mmd", "cov", "1nna")} | {"n_gen": len(g), "n_ref": len(r)}
    return out


def group_tables(records: list[dict], dist: dict[str, dict], taus: Sequence[float]) -> dict[str, Any]:
    """overall, per_category (+ distribution) and seen / held-out tables."""
    per_category = {
        c: summarize([r for r in records if r["category"] == c], taus) | dist.get(c, {})
        for c in CATEGORIES
        if any(r["category"] == c for r in records)
    }
    overall = summarize(records, taus)
    for k in ("mmd", "cov", "1nna"):  # macro average over the categories that have objects
        overall[k] = _mean([d[k] for d in dist.values()])
    return {"overall": overall, "per_category": per_category, "seen_vs_heldout": split_tables(records, taus)}


def split_tables(records: Sequence[dict], taus: Sequence[float]) -> dict[str, dict]:
    """``summarize`` of the seen and of the held-out (category, colour) combinations (those present)."""
    return {
        name: summarize([r for r in records if r["heldout_combo"] is flag], taus)
        for name, flag in (("seen", False), ("heldout", True))
        if any(r["heldout_combo"] is flag for r in records)
    }


def bank_distribution(samples: Sequence[Sample], bank: Bank) -> dict[str, Any]:
    """All objects against the whole bank (for samples without prompted categories, e.g. unconditional):
    COV / MMD / 1-NNA on squared Chamfer and how many categories their nearest bank shapes cover."""
    gen = [s.points for s in samples if s.failure is None]
    if not gen:
        return {}
    g, r = np.stack(gen), bank.points
    d_gr = pairwise_chamfer(g, r)
    m = distribution_metrics(d_gr, pairwise_chamfer(g, g), pairwise_chamfer(r, r))
    hit = {bank.labels[int(j)] for j in d_gr.argmin(dim=1)}
    return {k: m[k] for k in ("mmd", "cov", "1nna")} | {
        "n_gen": len(g), "n_ref": len(r), "categories_hit": len(hit),
    }  # fmt: skip


def image_metrics(samples: Sequence[Sample], rows: Sequence[PromptRow], bank: Bank, cfg: EvalConfig, device):
    """FID / KID against the bank renders of the prompted categories (all when unknown), CLIP vs captions."""
    ok = [s for s in samples if s.failure is None]
    cats = {rows[s.row].attributes.get("category") for s in samples} - {None}
    ref_idx = np.concatenate([bank.of(c) for c in sorted(cats)]) if cats else np.arange(len(bank.labels))
    gen = (
        _to_tensor(np.stack([s.images for s in ok]))
        if ok
        else torch.zeros(0, 3, cfg.image_size, cfg.image_size)
    )
    prompts = [s.prompt for s in ok for _ in range(cfg.views)] if any(s.prompt for s in ok) else None
    return compute_image_metrics(
        gen, _to_tensor(bank.images[ref_idx]), prompts,
        load_inception(cfg.inception, device), load_clip(cfg.clip, device),
    )  # fmt: skip


# --- encoder round trips: the ceiling of a generator, and of a reconstructor's held-out objects -----------
def encoder_views(asset: Asset, renderer, size: int) -> torch.Tensor:
    """An asset's six Zero123++ views as the reconstructor reads them -> RGBA (6, 4, S, S), straight alpha,
    with the 8-bit rounding of rendered view files (``triflow3d render``, read back by ``triflow3d encode``)."""
    rgba = np.round(np.clip(renderer.render(asset, zero123pp_rig(), size).rgba, 0.0, 1.0) * 255.0) / 255.0
    return torch.from_numpy(rgba).permute(0, 3, 1, 2).float()


@torch.inference_mode()
def roundtrip_mesh(recon, views: torch.Tensor, cameras: torch.Tensor, cfg: EvalConfig):
    """Views (V, 4, S, S) RGBA + input cameras (V, 16) -> the reconstructor's triplane -> its mesh,
    extracted as a generated object's (``cfg.resolution``, ``cfg.threshold``; ``Generated.to_mesh``)."""
    dev = next(recon.parameters()).device
    planes = recon.forward_planes(views[None].to(dev), cameras[None].to(dev)).float()
    kw = {} if cfg.threshold is None else {"threshold": float(cfg.threshold)}
    return recon.extract_mesh(planes, cfg.resolution, **kw)


def ceiling_samples(
    recon, rows: Sequence[PromptRow], cfg: EvalConfig, renderer, progress: bool
) -> list[Sample]:
    """The ceiling: the encoder round trip of each benchmark prompt's own shape (its Zero123++ renders at
    the reconstructor's input size -> triplane -> mesh), one per prompt, measured like generated objects."""
    cams, size, out = zero123pp_rig().input_cameras(), int(recon.config.image_size), []
    todo = [i for i, r in enumerate(rows) if r.shape_seed is not None]
    with progress_bar(disable=None if progress else True) as bar:
        task = bar.add_task("ceiling", total=len(todo), status="")
        for i in todo:
            asset = benchmark_object(sample_spec(rows[i].shape_seed, rows[i].split))[0]
            views = encoder_views(asset, renderer, size)
            s = Sample(i, rows[i].caption, int(rows[i].shape_seed))
            out.append(measure_mesh(s, partial(roundtrip_mesh, recon, views, cams, cfg), i, cfg))
            bar.advance(task)
    return out


def ceiling_tables(records: Sequence[dict], taus: Sequence[float]) -> dict[str, dict]:
    """The ceiling's overall, seen and held-out tables."""
    return {"overall": summarize(records, taus), **split_tables(records, taus)} if records else {}


def vs_ceiling(tables: dict, ceiling: dict) -> dict[str, dict]:
    """The model's main metrics beside the ceiling's, overall and on held-out combinations:
    ``{metric: {model, ceiling, model / ceiling}}``."""
    out = {}
    for group, label in (("overall", ""), ("heldout", " (held-out)")):
        mine = tables["overall"] if group == "overall" else tables["seen_vs_heldout"].get(group)
        best = ceiling.get(group)
        for k in CEILING_KEYS if mine and best else ():
            m, c = mine.get(k), best.get(k)
            out[k + label] = {
                "model": m,
                "ceiling": c,
                "model / ceiling": m / c if m is not None and c else None,
            }
    return out


def views_roundtrip(
    recon, folder, ids: Sequence[str], cfg: EvalConfig = EvalConfig(), cache_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Round trip of the objects ``ids`` of a Zero123++ views folder (``data.views.ViewsFolder``): their
    views -> triplane -> mesh, measured and scored against each object's manifest attributes (its own
    caption's category and colour) by the code that scores generated objects (``triflow3d recon eval``)."""
    from triflow3d.render import make_renderer

    size, rows, samples = int(recon.config.image_size), [], []
    with progress_bar(disable=None if progress else True) as bar:
        task = bar.add_task("round trip", total=len(ids), status="")
        for k, i in enumerate(ids):
            meta, views = folder.row(i), folder.load(i, size)
            rows.append(PromptRow(str(meta.get("caption", "")), dict(meta.get("attributes") or {})))
            make = partial(roundtrip_mesh, recon, views.images, views.input_cameras, cfg)
            samples.append(measure_mesh(Sample(k, rows[k].caption, 0), make, k, cfg))
            bar.advance(task)
    bank = reference_bank(cfg, make_renderer(cfg.render_backend), cache_dir)
    records = object_records(samples, rows, bank, cfg)
    return summarize(records, ()) | {
        "seen_vs_heldout": split_tables(records, ()),
        "mesh_resolution": cfg.resolution,
    }


@torch.inference_mode()
def roundtrip_metrics(recon, cfg: EvalConfig, renderer, device) -> dict[str, Any]:
    """Encoder round trip on held-out shapes: their six Zero123++ renders -> the model's reconstructor ->
    volume renders from the evaluation rig, paired with the asset renders: PSNR, SSIM (LPIPS with weights)."""
    keys = ("psnr", "ssim", "lpips")
    if cfg.recon_objects == 0:
        return {k: metric_unavailable(k, "round trip disabled (recon_objects = 0)") for k in keys}
    zrig, rig, size_in = zero123pp_rig(), eval_rig(cfg), int(recon.config.image_size)
    preds, refs = [], []
    for i in range(cfg.recon_objects):
        asset = benchmark_object(sample_spec(sample_seed("test", i, RECON_STREAM), "test"))[0]
        views = encoder_views(asset, renderer, size_in)
        planes = recon.forward_planes(views[None].to(device), zrig.input_cameras()[None].to(device))
        out = recon.render(planes, rig.render_cameras()[None].to(device), cfg.image_size, deterministic=True)
        preds.append(out["rgb"][0].float().clamp(0, 1).cpu())  # (V, 3, S, S)
        refs.append(_to_tensor(_to_uint8(renderer.render(asset, rig, cfg.image_size).rgb_on_white())))
    pred, ref = torch.cat(preds), torch.cat(refs)
    paired = compute_image_metrics(pred, ref, None, paired=True)
    return {
        "psnr": paired["psnr"],
        "ssim": paired["ssim"],
        "lpips": _lpips(pred, ref),
        "n_objects": cfg.recon_objects,
    }


def _lpips(pred: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """LPIPS (VGG) when its weight files are on disk (triflow3d.perceptual), else unavailable."""
    from triflow3d.perceptual import PerceptualLoss

    try:
        loss = PerceptualLoss("lpips-vgg")
    except TriflowError as e:
        return metric_unavailable("lpips", str(e))
    value = float(torch.stack([loss(p[None], r[None]) for p, r in zip(pred, ref)]).mean())
    return {"available": True, "value": value, "network": loss.description, "n_images": len(pred)}


# --- figures ---------------------------------------------------------------------------------------------
def figures(samples: Sequence[Sample], rows: Sequence[PromptRow], bank: Bank, tables: dict, out: Path):
    """A grid (per category: generated objects, then its references; view 0) and per-category bars."""
    fig = out / "figures"
    blank = np.full(bank.images.shape[2:], 255, np.uint8)
    groups = list(dict.fromkeys(rows[s.row].attributes.get("category") or "other" for s in samples))
    tiles, labels = [], []
    for g in groups:
        mine = [s for s in samples if (rows[s.row].attributes.get("category") or "other") == g][
            :FIGURE_COLUMNS
        ]
        refs = [bank.images[i][0] for i in bank.of(g)[:FIGURE_COLUMNS]]
        for k in range(FIGURE_COLUMNS):
            s = mine[k] if k < len(mine) else None
            tiles.append(blank if s is None or s.images is None else s.images[0])
            labels.append("" if s is None else ("failed" if s.failure else f"gen {g}"))
        tiles += refs + [blank] * (FIGURE_COLUMNS - len(refs))
        labels += [f"ref {g}"] * len(refs) + [""] * (FIGURE_COLUMNS - len(refs))
    paths = {"generated vs references": save_grid(tiles, len(groups), fig / "grid.png", labels)}
    per = tables["per_category"]
    for key, title, scale in (("category_accuracy", "category accuracy", 1.0), ("mmd", "MMD-CD x1e3", 1e3)):
        if per:
            vals = {c: math.nan if row.get(key) is None else row[key] * scale for c, row in per.items()}
            paths[title] = bar_chart(vals, fig / f"per_category_{key}.png", title)
    return paths


# --- the run ---------------------------------------------------------------------------------------------
def protocol(cfg: EvalConfig, pipe, bank: Bank, renderer_name: str, model: str | None) -> dict[str, Any]:
    """The report's protocol section: every setting that a number depends on."""
    s = pipe.settings
    return {
        "model": model or "(in memory)",
        "prompts": f"{cfg.prompts} (first {cfg.n_prompts}), {cfg.n_per_prompt} sample(s) each, "
        f"seed {cfg.seed} + i * {cfg.n_per_prompt} + k",
        "sampling": f"{cfg.sampler or s.sampler}, {cfg.steps or s.steps} steps, CFG {cfg.cfg if cfg.cfg is not None else s.cfg}",
        "mesh": f"marching cubes at {cfg.resolution}^3, density level "
        f"{cv.MESH_THRESHOLD if cfg.threshold is None else cfg.threshold}",
        "geometry": f"{cfg.points} area-uniform surface points (seed = object index; references seed 0), "
        "squared Chamfer (sum of both directions), no re-normalisation; F-score taus "
        f"{', '.join(f'{t:g}' for t in cfg.fscore_taus)}",
        "reference bank": f"{cfg.refs_per_category} test-split shapes per category (seed stream {REF_STREAM}), "
        f"cache key {bank.key}",
        "category accuracy": "label of the Chamfer-nearest reference-bank shape",
        "colour accuracy": "CIELAB-nearest palette name of the dominant surface colour vs attributes.colour",
        "distribution": "per category: generated vs its bank shapes, COV / MMD / 1-NNA on squared Chamfer "
        "(PointFlow; report scale MMD x1e3, COV and 1-NNA in %); overall = mean over categories",
        "renders": f"{cfg.views} orbit views, elevation {cfg.elevation:g} deg, FoV {cfg.fov:g} deg, radius "
        f"{cv.RENDER_RADIUS:g}, {cfg.image_size} px, white background; generated meshes and references "
        f"rasterised by the same renderer ({renderer_name})",
        "image metrics": "FID / KID vs the bank renders of the prompted categories; CLIP score and "
        "R-precision@1 of every view against its caption",
        "round trip": f"{cfg.recon_objects} test shapes (seed stream {RECON_STREAM}): Zero123++ renders at the "
        "reconstructor's input size -> triplane -> volume renders from the evaluation rig vs asset renders",
        "ceiling": "benchmark prompts: each prompt's own shape, its Zero123++ renders (8-bit, on white) at the "
        "reconstructor's input size -> triplane -> mesh, measured and scored like the generated objects"
        + ("" if cfg.ceiling else " (disabled)"),
        "fragmentation": f"floater share = surface area in connected components with < {FLOATER_SHARE:g} of "
        f"the mesh's area each, over the total (before any clean-up); fragmented_share = samples above "
        f"{FRAGMENTED_ABOVE:g}",
        "failures": "missing / empty / non-finite / zero-area meshes count in failure_rate only",
        "config": json.dumps(asdict(cfg), sort_keys=True),
    }  # fmt: skip


def evaluate(
    pipe,
    cfg: EvalConfig,
    out: str | Path,
    model: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the whole protocol with ``pipe`` (a ``TextTo3DPipeline``); write OUT/metrics.json, report.md,
    samples.jsonl and figures; return the metrics dict."""
    from triflow3d.render import make_renderer

    out, t0 = Path(out), time.perf_counter()
    say = log or (lambda _: None)
    torch.manual_seed(cfg.seed)  # nothing below should draw from it; pinned anyway for determinism
    rows = load_prompts(cfg.prompts, cfg.n_prompts)
    renderer = make_renderer(cfg.render_backend)
    bank = reference_bank(cfg, renderer, out / "cache", progress)
    say(
        f"reference bank: {len(bank.labels)} shapes (key {bank.key}); generating {len(rows)} x {cfg.n_per_prompt}"
    )
    samples = generate_and_measure(pipe, rows, cfg, renderer, progress)
    records = object_records(samples, rows, bank, cfg)
    tables = group_tables(records, category_distribution(samples, rows, bank), cfg.fscore_taus)
    ceiling = ceiling_samples(pipe.reconstructor, rows, cfg, renderer, progress) if cfg.ceiling else []
    ceiling_records = object_records(ceiling, rows, bank, cfg)
    ceiling_table = ceiling_tables(ceiling_records, cfg.fscore_taus)
    ok = [s for s in samples if s.failure is None]
    metrics: dict[str, Any] = {
        "n_prompts": len(rows), "n_generated": len(samples), "n_failed": len(samples) - len(ok),
        "failure_rate": tables["overall"]["failure_rate"], "overall": tables["overall"],
        **({"vs_ceiling": vs_ceiling(tables, ceiling_table), "ceiling": ceiling_table} if ceiling else {}),
        "per_category": tables["per_category"], "seen_vs_heldout": tables["seen_vs_heldout"],
        "image": image_metrics(samples, rows, bank, cfg, pipe.device),
        "reconstruction": roundtrip_metrics(pipe.reconstructor, cfg, renderer, pipe.device),
    }  # fmt: skip
    if not any(r.attributes.get("category") for r in rows):  # unconditional / attribute-less prompts
        metrics["distribution"] = bank_distribution(samples, bank)
    metrics["timing"] = {
        "sample_s_per_object": _mean([s.seconds for s in samples]),
        "total_s": round(time.perf_counter() - t0, 2),
    }
    for name, recs in (("samples.jsonl", records), ("ceiling.jsonl", ceiling_records)):
        if not recs and name == "ceiling.jsonl":
            continue
        with atomic_path(out / name) as tmp:
            append_jsonl(tmp, recs)
    figs = figures(samples, rows, bank, tables, out)
    write_report(out, metrics, protocol(cfg, pipe, bank, renderer.name, model), figs)
    return metrics
