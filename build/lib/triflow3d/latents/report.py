"""``triflow3d latents inspect``: a Markdown page with Pillow figures about one latents folder.

Figures: per-(plane, channel) mean / std before and after standardisation (the "after" is measured on
the sample, not assumed), value histograms (raw and standardised, log counts), and for a few objects a
PCA-to-RGB picture of each plane beside its weight map and a render. The table of feature energy
(mean over channels of x^2 per texel) inside vs outside the occupancy mask measures, on our encoder,
the paper's Figure 3 observation that triplane features concentrate where the object is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from triflow3d import conventions as cv
from triflow3d.data import latents as lt
from triflow3d.latents import folder as lf
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.latents.stats import LatentStats, batch_stats, merge
from triflow3d.utils.images import load_font, save_grid, save_png, to_pil
from triflow3d.utils.io import atomic_path, write_json

PLANE_NAMES: tuple[str, ...] = tuple("xyz"[u] + "xyz"[v] for u, v in cv.PLANE_AXES)  # (u, v) = (col, row)
STD_RANGE = 6.0  # standardised histogram over [-6, 6]
HIST_BINS = 120
TILE = 128


@dataclass(frozen=True)
class InspectConfig:
    n_objects: int = 4
    sample: int | None = 64  # None: every object
    seed: int = 0
    render_size: int = 128
    device: str = "cpu"


# --- pictures ---------------------------------------------------------------------------------------
def pca_rgb(planes: torch.Tensor, lo: float = 1.0, hi: float = 99.0) -> torch.Tensor:
    """Triplane (3, C, R, R) -> (3, 3, R, R) RGB in [0, 1]: the top 3 principal components of the
    C-dim texel features (fitted jointly over the three planes), each scaled by its lo..hi percentiles."""
    p, c, r, _ = planes.shape
    x = planes.double().permute(0, 2, 3, 1).reshape(-1, c)  # (3 R R, C)
    x = x - x.mean(0)
    _, vecs = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues
    v = vecs[:, -3:].flip(1)  # (C, <=3) largest first
    v = v * torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))  # deterministic sign
    y = torch.cat([x @ v, x.new_zeros(x.shape[0], 3 - v.shape[1])], 1)  # (3 R R, 3)
    qlo, qhi = torch.quantile(y, lo / 100, 0), torch.quantile(y, hi / 100, 0)
    y = ((y - qlo) / (qhi - qlo).clamp_min(1e-12)).clamp(0, 1)
    return y.reshape(p, r, r, 3).permute(0, 3, 1, 2).float()


def tile(image: object, size: int = TILE) -> Image.Image:
    """A framed PIL tile (nearest-neighbour resize, so texels stay visible; the frame shows white maps)."""
    img = to_pil(image).resize((size, size), Image.NEAREST)
    ImageDraw.Draw(img).rectangle((0, 0, size - 1, size - 1), outline=(160, 160, 160))
    return img


@torch.no_grad()
def render_view(model, planes: torch.Tensor, size: int, device: str = "cpu") -> torch.Tensor:
    """Render raw planes (3, C, R, R) from Zero123++ rig view 0 -> rgb (3, S, S)."""
    from triflow3d.cameras import zero123pp_rig

    cams = zero123pp_rig().render_cameras()[:1][None].to(device)  # (1, 1, 25)
    return model.render(planes[None].to(device), cams, size, deterministic=True)["rgb"][0, 0].cpu()


def object_tiles(item: dict, model, cfg: InspectConfig) -> tuple[list[Image.Image], list[str]]:
    """[render,] then per plane its PCA picture and its weight map (if any), with labels."""
    tiles, labels = [], []
    if model is not None:
        tiles.append(tile(render_view(model, item["triplane"], cfg.render_size, cfg.device)))
        labels.append(f"{item['id'][:16]}")
    rgb = pca_rgb(item["triplane"])
    for p, name in enumerate(PLANE_NAMES):
        tiles.append(tile(rgb[p]))
        labels.append(f"{name} PCA")
        if item.get("weights") is not None:
            tiles.append(tile(item["weights"][p]))
            labels.append(f"{name} weights")
    return tiles, labels


# --- charts -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Panel:
    """One bar panel: values (3, C); the y range covers ``span`` too (so ~0 stays visibly ~0); ``ref``
    draws a dashed reference level (e.g. 1 for a standardised std)."""

    title: str
    values: np.ndarray
    span: tuple[float, float] = (0.0, 0.0)
    ref: float | None = None


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], panel: Panel) -> None:
    """Vertical bars in plane-major order, zero line, plane separators, the data range in the title."""
    x0, y0, x1, y1 = box
    v = np.nan_to_num(panel.values.reshape(-1).astype(np.float64))
    vmin, vmax = min(0.0, float(v.min()), panel.span[0]), max(0.0, float(v.max()), panel.span[1])
    span = (vmax - vmin) or 1.0
    draw.text(
        (x0, y0 - 16), f"{panel.title}   [{v.min():.3g}, {v.max():.3g}]", fill="black", font=load_font()
    )

    def y_of(val: float) -> float:
        return y1 - (val - vmin) / span * (y1 - y0)

    bw, planes = (x1 - x0) / len(v), panel.values.shape[0]
    colours = [(70, 110, 180), (90, 160, 90), (200, 120, 60)]
    for i, val in enumerate(v):
        bx, y, zero = x0 + i * bw, y_of(val), y_of(0.0)
        draw.rectangle(
            (bx, min(y, zero), bx + max(bw - 1, 1), max(y, zero)), fill=colours[i * planes // len(v) % 3]
        )
    draw.line((x0, y_of(0.0), x1, y_of(0.0)), fill="black")
    if panel.ref is not None:
        for xs in range(x0, x1, 8):
            draw.line((xs, y_of(panel.ref), xs + 4, y_of(panel.ref)), fill=(200, 60, 60))
    for p in range(1, planes):
        xs = x0 + p * (x1 - x0) / planes
        draw.line((xs, y0, xs, y1), fill="grey")


def channel_chart(panels: list[Panel], path: Path, width: int = 720, height: int = 120) -> Path:
    """Stacked bar panels; planes coloured and separated by grey lines."""
    img = Image.new("RGB", (width + 20, len(panels) * (height + 30) + 10), "white")
    draw = ImageDraw.Draw(img)
    for k, panel in enumerate(panels):
        top = 26 + k * (height + 30)
        _panel(draw, (10, top, 10 + width, top + height), panel)
    return save_png(img, path)


def histogram_chart(
    counts: np.ndarray, edges: np.ndarray, path: Path, title: str, normal_ref: bool = False
) -> Path:
    """Bars of log10(1 + count) over ``edges``; ``normal_ref`` overlays N(0, 1) scaled to the counts."""
    w, h, left, top = 600, 220, 40, 24
    img = Image.new("RGB", (w + left + 10, h + top + 30), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 4), title, fill="black", font=load_font(14))
    logc = np.log10(1.0 + counts.astype(np.float64))
    ymax = max(float(logc.max()), 1.0)
    bw = w / len(counts)
    for i, c in enumerate(logc):
        x = left + i * bw
        draw.rectangle((x, top + h - c / ymax * h, x + max(bw - 1, 1), top + h), fill=(70, 110, 180))
    if normal_ref:
        centres = (edges[:-1] + edges[1:]) / 2
        pdf = np.exp(-0.5 * centres**2) / math.sqrt(2 * math.pi) * counts.sum() * np.diff(edges)
        pts = [(left + (i + 0.5) * bw, top + h - np.log10(1 + p) / ymax * h) for i, p in enumerate(pdf)]
        draw.line(pts, fill=(200, 60, 60), width=2)
    for x in (edges[0], (edges[0] + edges[-1]) / 2, edges[-1]):
        px = left + (x - edges[0]) / (edges[-1] - edges[0]) * w
        draw.text((px - 12, top + h + 4), f"{x:.3g}", fill="black", font=load_font())
    draw.text((2, top), f"1e{ymax:.1f}", fill="black", font=load_font(10))
    return save_png(img, path)


# --- accumulation over the sample -------------------------------------------------------------------
def feature_energy(x: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    """Sums of per-texel energy mean_c x^2 of x (B, 3, C, R, R) inside / outside mask (B, 3, R, R):
    dict(in_sum, in_n, out_sum, out_n), each (3,) float64."""
    e = (x.double() ** 2).mean(2)  # (B, 3, R, R)
    m = mask.bool()
    return {
        "in_sum": (e * m).sum((0, 2, 3)).numpy(),
        "in_n": m.sum((0, 2, 3)).double().numpy(),
        "out_sum": (e * ~m).sum((0, 2, 3)).numpy(),
        "out_n": (~m).sum((0, 2, 3)).double().numpy(),
    }


@dataclass
class SampleSummary:
    """What inspect accumulates over the sample (raw / standardised histograms, energies, stats)."""

    raw_edges: np.ndarray
    std_edges: np.ndarray
    raw_counts: np.ndarray | None = None
    std_counts: np.ndarray | None = None
    standardised: LatentStats | None = None
    energy: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # "raw" / "std" -> sums
    with_weights: int = 0
    objects: int = 0

    def add(self, x: torch.Tensor, xs: torch.Tensor, mask: torch.Tensor | None) -> None:
        """One batch: raw x and standardised xs (B, 3, C, R, R), mask (B, 3, R, R) or None."""
        raw_c, _ = np.histogram(x.numpy().ravel(), self.raw_edges)
        std_c, _ = np.histogram(xs.numpy().ravel(), self.std_edges)
        self.raw_counts = raw_c if self.raw_counts is None else self.raw_counts + raw_c
        self.std_counts = std_c if self.std_counts is None else self.std_counts + std_c
        part = batch_stats(xs)
        self.standardised = part if self.standardised is None else merge(self.standardised, part)
        self.objects += x.shape[0]
        if mask is None:
            return
        self.with_weights += x.shape[0]
        for key, t in (("raw", x), ("std", xs)):
            e = feature_energy(t, mask)
            self.energy[key] = {k: self.energy.get(key, {}).get(k, 0.0) + v for k, v in e.items()}


def weights_mask(weights: torch.Tensor, w_bg: float | None) -> torch.Tensor:
    """The occupancy mask (..., R, R) behind weights w = w_bg + (1 - w_bg) m."""
    if w_bg is None:  # unknown: the background level is the smallest weight
        w_bg = float(weights.min())
    return weights > 0.5 * (1.0 + w_bg)


def accumulate(ds: lt.LatentDataset, indices: list[int], norm: LatentNormalizer, stats: LatentStats, w_bg):
    lo, hi = stats.percentile(0.1), stats.percentile(99.9)
    s = SampleSummary(
        raw_edges=np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1),
        std_edges=np.linspace(-STD_RANGE, STD_RANGE, HIST_BINS + 1),
    )
    for items in lf.iter_items(ds, indices, 8):
        x = torch.stack([it["triplane"] for it in items])  # (B, 3, C, R, R)
        have = all(it.get("weights") is not None for it in items)
        mask = weights_mask(torch.stack([it["weights"] for it in items]), w_bg) if have else None
        s.add(x, norm.normalize(x.double()), mask)
    return s


# --- the page ---------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4g}"


def energy_table(energy: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """Markdown rows: per plane and overall, energy inside / outside the mask, raw and standardised."""
    lines = [
        "| plane | mask coverage | raw inside | raw outside | raw ratio | std inside | std outside | std ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    r, s = energy["raw"], energy["std"]
    planes = [(n, slice(p, p + 1)) for p, n in enumerate(PLANE_NAMES)] + [("all", slice(0, 3))]
    for name, sl in planes:
        cov = r["in_n"][sl].sum() / max(r["in_n"][sl].sum() + r["out_n"][sl].sum(), 1)
        cells = [_fmt(cov)]
        for e in (r, s):
            inside = e["in_sum"][sl].sum() / e["in_n"][sl].sum() if e["in_n"][sl].sum() else float("nan")
            outside = e["out_sum"][sl].sum() / e["out_n"][sl].sum() if e["out_n"][sl].sum() else float("nan")
            cells += [_fmt(inside), _fmt(outside), _fmt(inside / outside if outside else float("nan"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def stats_table(stats: LatentStats) -> list[str]:
    t3, t5 = (float(stats.tail_fraction(k).mean()) for k in (3.0, 5.0))
    rows = {
        "global mean": stats.global_mean,
        "global std": stats.global_std,
        "min / max": f"{_fmt(float(stats.minimum.min()))} / {_fmt(float(stats.maximum.max()))}",
        "p0.1 / p50 / p99.9": " / ".join(_fmt(stats.percentile(q)) for q in (0.1, 50.0, 99.9)),
        "per-channel std range": f"{_fmt(float(stats.std.min()))} .. {_fmt(float(stats.std.max()))}",
        "fraction beyond 3 / 5 std (per-channel)": f"{_fmt(t3)} / {_fmt(t5)}",
    }
    return ["| statistic | value |", "|---|---|"] + [
        f"| {k} | {v if isinstance(v, str) else _fmt(v)} |" for k, v in rows.items()
    ]


def load_or_compute_stats(ds: lt.LatentDataset, root: Path, indices: list[int]) -> tuple[LatentStats, str]:
    """``stats.safetensors`` if present (and of this encoder), else statistics of the sample."""
    path = root / lt.STATS_FILE
    if path.exists():
        stats = LatentStats.from_safetensors(path)
        if stats.encoder_id == str(ds.encoder.get("encoder", "")):
            return stats, f"`{lt.STATS_FILE}` ({stats.num_triplanes} objects)"
    return lf.compute_latent_stats(ds, indices), f"computed on the fly from {len(indices)} sampled objects"


def _weights_info(root: Path) -> dict:
    p = root / lt.WEIGHTS_JSON
    return json.loads(p.read_text()) if p.exists() else {}


def write_figures(out: Path, stats: LatentStats, s: SampleSummary) -> dict[str, str]:
    """The chart PNGs under out/figures; returns name -> path relative to out."""
    fig = out / "figures"
    after = s.standardised
    channel_chart(
        [
            Panel("raw mean (stats)", stats.mean),
            Panel("raw std (stats)", stats.std),
            Panel(f"standardised mean (measured on {s.objects} objects)", after.mean, (-0.5, 0.5)),
            Panel(f"standardised std (measured on {s.objects} objects; red: 1)", after.std, (0, 1.5), 1.0),
        ],
        fig / "channels.png",
    )
    histogram_chart(s.raw_counts, s.raw_edges, fig / "hist_raw.png", "raw values, p0.1..p99.9 (log10 counts)")
    histogram_chart(
        s.std_counts, s.std_edges, fig / "hist_std.png", "standardised values (red: N(0,1))", normal_ref=True
    )
    return {k: f"figures/{k}.png" for k in ("channels", "hist_raw", "hist_std")}


def write_inspect_report(
    root: str | Path, out: Path, cfg: InspectConfig, model=None, render_note: str = ""
) -> Path:
    """Write out/report.md, out/report.json and out/figures/*.png for the latents folder ``root``."""
    root, out = Path(root), Path(out)
    ds = lf.open_latents(root)
    idx = lf.sample_indices(len(ds), cfg.sample, cfg.seed)
    stats, stats_source = load_or_compute_stats(ds, root, idx)
    norm = LatentNormalizer.from_stats(stats)
    winfo = _weights_info(root)
    s = accumulate(ds, idx, norm, stats, (winfo.get("config") or {}).get("w_bg"))
    figures = write_figures(out, stats, s)
    pics = lf.sample_indices(len(ds), min(cfg.n_objects, len(ds)), cfg.seed + 1) if cfg.n_objects > 0 else []
    if pics:
        parts = [object_tiles(ds[i], model, cfg) for i in pics]
        tiles, labels = [t for p in parts for t in p[0]], [lb for p in parts for lb in p[1]]
        save_grid(tiles, len(pics), out / "figures" / "objects.png", labels)
        figures["objects"] = "figures/objects.png"
    page = render_page(root, ds, stats, stats_source, s, winfo, figures, model is not None, render_note)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(page)
    write_json(out / "report.json", {"figures": figures, "objects": s.objects, "energy": _energy_json(s)})
    return out / "report.md"


def _energy_json(s: SampleSummary) -> dict:
    return {k: {n: a.tolist() for n, a in v.items()} for k, v in s.energy.items()}


def render_page(root, ds, stats, stats_source, s: SampleSummary, winfo, figures, rendered, note) -> str:
    enc = ds.encoder
    after = s.standardised
    lines = [
        f"# Latents: `{root}`",
        "",
        f"Encoder `{enc.get('encoder')}` (config {enc.get('config_hash')}), triplanes "
        f"{enc.get('triplane_shape')} stored as {enc.get('dtype')}, {len(ds)} objects; "
        f"conventions v{enc.get('conventions_version')}.",
        "",
        f"## Statistics\n\nSource: {stats_source}.\n",
        *stats_table(stats),
        "",
        "## Standardisation (per-channel)\n",
        f"Measured on {s.objects} sampled objects after `LatentNormalizer.from_stats`: per-channel mean in "
        f"[{_fmt(float(after.mean.min()))}, {_fmt(float(after.mean.max()))}], std in "
        f"[{_fmt(float(after.std.min()))}, {_fmt(float(after.std.max()))}]. Bars are in plane order "
        f"{', '.join(PLANE_NAMES)} (blue, green, orange), channels left to right.",
        "",
        f"![per-channel mean and std]({figures['channels']})",
        "",
        "## Value histograms\n",
        f"![raw values]({figures['hist_raw']})\n\n![standardised values]({figures['hist_std']})",
        "",
        _objects_section(figures, s, rendered, note),
        "## Feature energy inside vs outside the occupancy mask\n",
    ]
    if s.with_weights:
        cfgw = winfo.get("config") or {}
        lines += [
            f"Mean over channels of x^2 per texel, averaged over the texels inside / outside the mask of "
            f"{s.with_weights} objects (mask from `latents weights`: grid {cfgw.get('grid')}, threshold "
            f"{cfgw.get('threshold')}, dilation {cfgw.get('dilation')}). A ratio above 1 means features "
            f"concentrate on the object (paper Figure 3).",
            "",
            *energy_table(s.energy),
        ]
    else:
        lines.append("No weights in this folder: run `triflow3d latents weights LATENTS_DIR` first.")
    return "\n".join(lines) + "\n"


def _objects_section(figures: dict[str, str], s: SampleSummary, rendered: bool, note: str) -> str:
    if "objects" not in figures:
        return ""
    what = "a render from Zero123++ rig view 0, then " if rendered else ""
    text = (
        f"## Objects\n\nPer row: {what}for each plane its PCA-to-RGB picture (top 3 principal components of "
        f"the C-dim features, rows = v, columns = u, row 0 = -1) beside its weight map (white = 1)."
    )
    if note:
        text += f"\n\n_{note}_"
    return text + f"\n\n![objects]({figures['objects']})\n"
