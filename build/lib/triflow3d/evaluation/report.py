"""Evaluation reports: metrics.json + report.md with tables and figures, drawn with Pillow only.

``metrics`` is a nested dict. A top-level dict of rows (e.g. ``per_category: {chair: {...}, ...}``)
becomes a table with one row per key; a dict of metric values (e.g. ``overall``) becomes a two-column
table; top-level scalars form a summary table. A metric value is a number, a string, or an entry
``{"available": bool, "value": ..., "reason": ...}`` from ``features.compute_image_metrics``;
unavailable ones show as "n/a" and their reasons are listed. metrics.json keeps raw values; the
report multiplies the metrics named in ``REPORT_SCALE`` and says so in the column header.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from triflow3d import __version__
from triflow3d.evaluation.distribution import REPORT_SCALE as DISTRIBUTION_SCALE
from triflow3d.utils.images import load_font, save_png
from triflow3d.utils.io import atomic_path, write_json

REPORT_SCALE: dict[str, float] = {**DISTRIBUTION_SCALE, "chamfer": 1e3, "failure_rate": 100.0}
VERSION_PACKAGES = ("torch", "numpy", "scipy", "trimesh", "pillow", "scikit-image", "transformers")


# --- environment -------------------------------------------------------------------------------
def versions(packages: Sequence[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Python, platform, package versions and the git commit of this checkout (when there is one)."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "triflow3d": __version__}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["git_commit"] = _git(["rev-parse", "HEAD"]) or "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=no"])
    out["git_dirty"] = "unknown" if status is None else str(bool(status))
    return out


_collect_versions = versions  # write_report's ``versions`` argument shadows the function


def _git(args: list[str]) -> str | None:
    try:
        res = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


# --- markdown ----------------------------------------------------------------------------------
def _is_entry(v: object) -> bool:
    return isinstance(v, Mapping) and "available" in v


def _cell(name: str, v: object, reasons: dict[str, str]) -> str:
    if _is_entry(v):
        if not v["available"]:
            reasons[name] = str(v.get("reason", "unavailable"))
            return "n/a"
        v = v.get("value")
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return "–" if v is None else str(v)
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        v = float(v) * REPORT_SCALE.get(name, 1.0)
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _header(name: str) -> str:
    scale = REPORT_SCALE.get(name)
    return name if scale is None else f"{name} ({'%' if scale == 100.0 else f'x{scale:g}'})"


def _rows_table(rows: Mapping[str, Mapping], reasons: dict[str, str], first: str) -> list[str]:
    cols = list(dict.fromkeys(k for row in rows.values() for k in row))
    lines = ["| " + " | ".join([first, *map(_header, cols)]) + " |", "|" + "---|" * (len(cols) + 1)]
    for key, row in rows.items():
        lines.append("| " + " | ".join([str(key), *(_cell(c, row.get(c), reasons) for c in cols)]) + " |")
    return lines


def _pairs_table(values: Mapping[str, object], reasons: dict[str, str]) -> list[str]:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {_header(k)} | {_cell(k, v, reasons)} |" for k, v in values.items()]
    return lines


def render_markdown(metrics: Mapping, protocol: Mapping, figures: Mapping[str, str], env: Mapping) -> str:
    """The report.md text (figures are paths relative to the report)."""
    reasons: dict[str, str] = {}
    lines = ["# Evaluation report", ""]
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, Mapping) or _is_entry(v)}
    if scalars:
        lines += ["## Summary", "", *_pairs_table(scalars, reasons), ""]
    for section, value in metrics.items():
        if section in scalars:
            continue
        is_rows = all(isinstance(r, Mapping) and not _is_entry(r) for r in value.values())
        body = _rows_table(value, reasons, "category" if "categ" in section else "name") if is_rows else None
        lines += [f"## {section}", "", *(body or _pairs_table(value, reasons)), ""]
    if reasons:
        lines += ["## Unavailable metrics", "", *(f"- **{k}**: {r}" for k, r in reasons.items()), ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{name}]({rel})\n" for name, rel in figures.items()]
    lines += ["## Protocol", "", *(f"- **{k}**: {v}" for k, v in protocol.items()), ""]
    lines += ["## Environment", "", *(f"- {k}: {v}" for k, v in env.items()), ""]
    return "\n".join(lines)


def write_report(
    out_dir: str | os.PathLike,
    metrics: Mapping,
    protocol: Mapping,
    figures: Mapping[str, str | os.PathLike] | None = None,
    versions: Mapping[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``report.md`` into out_dir (figures outside it are copied to figures/).

    ``versions`` defaults to ``versions()`` of this environment.
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    env = _collect_versions() if versions is None else versions
    rel: dict[str, str] = {}
    for name, path in (figures or {}).items():
        path = Path(path).resolve()
        if out.resolve() not in path.parents:
            path = Path(shutil.copy2(path, out / "figures" / path.name))
        rel[name] = os.path.relpath(path, out.resolve()).replace(os.sep, "/")
    write_json(
        out / "metrics.json", {"metrics": metrics, "protocol": protocol, "figures": rel, "versions": env}
    )
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(metrics, protocol, rel, env))
    return out / "metrics.json", out / "report.md"


# --- figures -----------------------------------------------------------------------------------
def bar_chart(
    values: Mapping[str, float], path: str | os.PathLike, title: str = "", width: int = 480, bar_h: int = 18
) -> Path:
    """Horizontal bar chart (one bar per key, e.g. per category); non-finite values show as n/a."""
    font = load_font()
    label_w = 8 + max((int(font.getlength(str(k))) for k in values), default=0)
    top = 24 if title else 6
    img = Image.new("RGB", (label_w + width + 70, top + len(values) * (bar_h + 4) + 6), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 4), title, fill="black", font=load_font(14))
    finite = [abs(float(v)) for v in values.values() if math.isfinite(float(v))]
    vmax = max(finite, default=0.0) or 1.0
    for i, (key, v) in enumerate(values.items()):
        y = top + i * (bar_h + 4)
        draw.text((4, y + 2), str(key), fill="black", font=font)
        v = float(v)
        if not math.isfinite(v):
            draw.text((label_w, y + 2), "n/a", fill="grey", font=font)
            continue
        x1 = label_w + int(width * abs(v) / vmax)
        draw.rectangle((label_w, y, x1, y + bar_h), fill=(70, 110, 180) if v >= 0 else (190, 80, 70))
        draw.text((x1 + 4, y + 2), f"{v:.4g}", fill="black", font=font)
    return save_png(img, path)


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    title: str = "",
    size: tuple[int, int] = (420, 320),
    log: bool = True,
) -> Path:
    """Lines through (x, y) points, one per series, on log-log (or linear) axes; Pillow only."""
    font = load_font()
    w, h = size
    left, right, top, bottom = 58, 12, 26, 40
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    tr = (lambda v: math.log10(v)) if log else (lambda v: v)
    pts = [(tr(x), tr(y)) for ps in series.values() for x, y in ps if not log or (x > 0 and y > 0)]
    (x0, x1), (y0, y1) = [(min(v), max(v)) for v in zip(*pts)] if pts else ((0, 1), (0, 1))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (tr(x) - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (tr(y) - y0) / (y1 - y0) * (h - top - bottom))  # fmt: skip

    draw.rectangle((left, top, w - right, h - bottom), outline="black")
    if title:
        draw.text((left, 4), title, fill="black", font=load_font(14))
    for v, anchor in ((y0, h - bottom), (y1, top)):
        draw.text((4, anchor - 6), f"{(10**v if log else v):.3g}", fill="black", font=font)
    for v, anchor in ((x0, left), (x1, w - right - 30)):
        draw.text((anchor, h - bottom + 4), f"{(10**v if log else v):.3g}", fill="black", font=font)
    colours = [(70, 110, 180), (190, 80, 70), (60, 150, 80), (150, 90, 170)]
    for i, (name, ps) in enumerate(series.items()):
        xy = [to_px(x, y) for x, y in ps if not log or (x > 0 and y > 0)]
        c = colours[i % len(colours)]
        if len(xy) > 1:
            draw.line(xy, fill=c, width=2)
        for px, py in xy:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=c)
        draw.text((left + 8, top + 6 + 14 * i), name, fill=c, font=font)
    return save_png(img, path)
