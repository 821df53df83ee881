"""Reference rows for ``triflow3d recon eval``: oracles handed what a reconstructor never gets.

    .venv/bin/python benchmarks/oracles.py [--oracle flat projected fixed hull] [--limit 40] [--max-views 4]

Every oracle is scored exactly like ``recon eval --limit 40 --max-views 4`` (same objects: the first
``--limit`` ids common to ``--data`` and ``--views-from``; same targets: their first ``--max-views`` views
at ``--size``; same code: ``recon.eval.score_views``, PSNR on white and silhouette IoU at 0.5). One JSON
line per oracle (``--per-object`` adds per-object rows). None of them is a model:

- ``flat``: the true geometry painted one flat colour per object, the alpha-weighted mean colour of its
  six input views (composited with the target's own alpha, so IoU is 1): perfect shape, one colour.
- ``projected``: the true geometry coloured from the six input views. The asset is re-rendered (the
  project's renderer, with depth) from the target and the input cameras; each covered target pixel's
  surface point is projected into the input views, kept where that view's true depth agrees (a depth
  test along the view axis, within ``--depth-tol``), and the visible views' colours are averaged
  (premultiplied bilinear samples). Points no input view sees, and edge pixels whose centre misses the
  surface, take the nearest covered pixel's colour or else the flat colour. Shading differs between
  views (a headlight), so this is not 100 dB: it is about what perfect geometry plus a faithful reading
  of the input colours gives.
- ``fixed``: the true geometry painted one fixed colour (``--colour``, default the maroon lrm-small v2
  renders most objects in): perfect shape, no colour information at all.
- ``hull``: the visual hull of the six input views' true masks (a point of a ``--grid``^3 lattice is
  inside when every view's alpha there is > 0.5), each voxel coloured by the views that see it (ray
  distance to the voxel vs the hull's own depth maps, premultiplied colour samples), rendered with hard
  occupancy (192 samples per ray): what a purely geometric reading of the inputs gives. Its deficit to
  ``flat`` is mostly silhouette inflation, which a model with shape priors can beat: not an upper bound.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from triflow3d.cameras import Rig, fov_from_intrinsics, pixel_rays, project_points
from triflow3d.data.views import ObjectViews, ViewsFolder, composite_white
from triflow3d.recon.eval import object_rows, score_views

NEAR, FAR, SAMPLES = 2.0, 6.5, 192  # every rig's radius is 4-4.5 and objects fit the unit ball
V2_MAROON = (0.33, 0.22, 0.23)  # lrm-small v2's render of a green vase (issue 15)
ORACLES = ("flat", "projected", "fixed", "hull")


# --- shared pieces -----------------------------------------------------------------------------------
def sample_colour(images: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight RGBA views (V, 4, S, S), uv (V, P, 2) in [0, 1] -> rgb (V, 3, P), alpha (V, P): bilinear
    samples of the premultiplied colour divided by the sampled alpha (transparent pixels' RGB is black
    in our PNGs; sampling it straight would darken every edge)."""
    where = (uv * 2 - 1)[:, None]  # (V, 1, P, 2)
    premul = torch.cat([images[:, :3] * images[:, 3:], images[:, 3:]], 1)
    s = F.grid_sample(premul, where, align_corners=False)[:, :, 0]  # (V, 4, P)
    alpha = s[:, 3]
    return s[:, :3] / alpha[:, None].clamp_min(1e-6), alpha


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    """Straight RGBA views (V, 4, S, S) -> (3,) alpha-weighted mean colour."""
    a = images[:, 3:]
    return (images[:, :3] * a).sum((0, 2, 3)) / a.sum().clamp_min(1e-6)


def paint(colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Colour (M, 3, S, S) or (3,) with coverage alpha (M, 1, S, S) -> (M, 3, S, S) on white."""
    colour = colour.reshape(-1, 3, 1, 1) if colour.ndim == 1 else colour
    return composite_white(torch.cat([colour.expand(alpha.shape[0], 3, *alpha.shape[-2:]), alpha], 1))


def source_path(folder: ViewsFolder, id: str) -> Path:
    """The asset a views folder's object was rendered from (relative paths: from the run's directory)."""
    src = Path(folder.row(id).get("source", ""))
    for p in [src, *(root / src for root in folder.root.resolve().parents)]:
        if p.is_file():
            return p
    raise SystemExit(f"{folder.root / id}: its source asset {src} is not found (needed by 'projected')")


# --- true-geometry oracles ---------------------------------------------------------------------------
def true_depth(renderer, asset, views: ObjectViews, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth along the view axis (N, S, S) and pixel-centre coverage (N, S, S) of ``views``' cameras."""
    out = renderer.render(asset, Rig(views.c2w, float(fov_from_intrinsics(views.K[0]))), size)
    return torch.from_numpy(out.depth), torch.from_numpy(out.mask)


def projected_colour(inp: ObjectViews, tgt: ObjectViews, depths, masks, fallback, tol: float) -> torch.Tensor:
    """Colour (M, 3, S, S) of the target views' true surface read from the input views (depth-tested).

    ``depths``/``masks`` are (inputs, targets) pairs of :func:`true_depth` outputs; ``fallback`` (3,).
    """
    (d_in, d_t), (m_in, m_t) = depths, masks
    m, size = tgt.c2w.shape[0], d_t.shape[-1]
    o, d = pixel_rays(tgt.c2w, tgt.K, size)  # (M, S*S, 3), unit directions
    forward = -tgt.c2w[:, None, :3, 2]  # OpenGL cameras look down -z
    xyz = o + d * (d_t.reshape(m, -1, 1) / (d * forward).sum(-1, keepdim=True))  # (M, S*S, 3)
    v = inp.c2w.shape[0]
    uv, z = project_points(inp.c2w, inp.K, xyz.reshape(1, -1, 3).expand(v, -1, -1))  # (V, P, 2), (V, P)
    grid = (uv * 2 - 1)[:, None]
    seen = F.grid_sample(d_in[:, None], grid, mode="nearest", align_corners=False)[:, 0, 0]
    hit = F.grid_sample(m_in[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0, 0] > 0.5
    visible = (hit & ((z - seen).abs() < tol)).float()  # (V, P)
    rgb, _ = sample_colour(inp.images, uv)
    colour = (rgb * visible[:, None]).sum(0) / visible.sum(0).clamp_min(1e-6)  # (3, P)
    known = (visible.sum(0) > 0) & m_t.reshape(-1)
    colour = colour.reshape(3, m, size, size).permute(1, 0, 2, 3)
    return fill_from_neighbours(colour, known.reshape(m, 1, size, size), fallback)


def fill_from_neighbours(colour: torch.Tensor, known: torch.Tensor, fallback: torch.Tensor, steps: int = 3):
    """Unknown pixels of (M, 3, S, S) take the mean of known 3x3 neighbours, grown ``steps`` times, then
    ``fallback`` (3,)."""
    known = known.float()
    colour = colour * known
    for _ in range(steps):
        total = F.avg_pool2d(colour, 3, 1, 1, count_include_pad=False)
        weight = F.avg_pool2d(known, 3, 1, 1, count_include_pad=False)
        grown = (weight > 0).float()
        colour = torch.where(known > 0, colour, total / weight.clamp_min(1e-6) * grown)
        known = torch.maximum(known, grown)
    return torch.where(known > 0, colour, fallback.reshape(1, 3, 1, 1))


# --- the visual hull ---------------------------------------------------------------------------------
def lattice(grid: int) -> torch.Tensor:
    """(grid^3, 3) voxel centres in [-1, 1]^3, ordered z, y, x (the layout grid_sample's volumes read)."""
    ax = (torch.arange(grid) + 0.5) / grid * 2 - 1
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    return torch.stack([x, y, z], -1).reshape(-1, 3)


def march(occ: torch.Tensor, rgb: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, size: int):
    """Hard-occupancy ray march of volumes occ (G, G, G) and rgb (3, G, G, G) -> rgb (M, 3, S, S) on
    white, alpha (M, 1, S, S), ray distance to the first hit (M, S*S) (FAR where nothing is hit)."""
    o, d = pixel_rays(c2w, K, size)  # (M, S*S, 3)
    t = torch.linspace(NEAR, FAR, SAMPLES)
    x = (o[:, :, None] + d[:, :, None] * t[None, None, :, None]).reshape(1, 1, -1, 1, 3)
    shape = (c2w.shape[0], size * size, SAMPLES)
    hit = (F.grid_sample(occ[None, None], x, align_corners=False).reshape(shape) > 0.5).float()
    col = F.grid_sample(rgb[None], x, align_corners=False).reshape(3, *shape).permute(1, 2, 3, 0)
    first = hit * torch.cumprod(torch.cat([torch.ones_like(hit[..., :1]), 1 - hit[..., :-1]], -1), -1)
    alpha = first.sum(-1)  # (M, R)
    image = (first[..., None] * col).sum(-2) + (1 - alpha[..., None])
    depth = (first * t).sum(-1) + (1 - alpha) * FAR
    m = c2w.shape[0]
    return image.reshape(m, size, size, 3).permute(0, 3, 1, 2), alpha.reshape(m, 1, size, size), depth


def hull(images: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, grid: int):
    """RGBA input views (V, 4, S, S) -> occupancy (G, G, G) and visibility-averaged colour (3, G, G, G)."""
    v, size = images.shape[0], images.shape[-1]
    pts = lattice(grid)
    uv, _ = project_points(c2w, K, pts.expand(v, -1, -1))
    rgb, alpha = sample_colour(images, uv)  # (V, 3, P), (V, P)
    occ = (alpha > 0.5).all(0).float()
    _, _, depth = march(occ.reshape(grid, grid, grid), torch.zeros(3, grid, grid, grid), c2w, K, size)
    where = (uv * 2 - 1)[:, None]
    seen = F.grid_sample(depth.reshape(v, 1, size, size), where, align_corners=False)[:, 0, 0]  # (V, P)
    distance = (pts[None] - c2w[:, None, :3, 3]).norm(dim=-1)  # ray distance, as march's depth
    visible = (distance <= seen + 4.0 / grid).float() * occ  # within two voxels of the first hit
    mean_visible = (rgb * visible[:, None]).sum(0) / visible.sum(0).clamp_min(1e-6)
    colour = torch.where(visible.sum(0) > 0, mean_visible, rgb.mean(0))
    return occ.reshape(grid, grid, grid), colour.reshape(3, grid, grid, grid)


# --- scoring -----------------------------------------------------------------------------------------
def object_oracles(id: str, inputs: ViewsFolder, targets: ViewsFolder, args, renderer) -> dict:
    """Oracle name -> (rgb on white (M, 3, S, S), alpha (M, 1, S, S)) for one object, and its targets."""
    inp, tgt = inputs.load(id, args.size), targets.load(id, args.size)
    m = args.max_views
    tgt = ObjectViews(tgt.id, tgt.images[:m], tgt.c2w[:m], tgt.K[:m], tgt.rig)
    alpha, flat = tgt.images[:, 3:], mean_colour(inp.images)
    out = {}
    if "flat" in args.oracle:
        out["flat"] = paint(flat, alpha), alpha
    if "fixed" in args.oracle:
        out["fixed"] = paint(torch.tensor(args.colour), alpha), alpha
    if "projected" in args.oracle:
        from triflow3d.assets import load_asset, normalize

        asset = normalize(load_asset(source_path(inputs, id)))
        d_in, m_in = true_depth(renderer, asset, inp, args.size)
        d_t, m_t = true_depth(renderer, asset, tgt, args.size)
        colour = projected_colour(inp, tgt, (d_in, d_t), (m_in, m_t), flat, args.depth_tol)
        out["projected"] = paint(colour, alpha), alpha
    if "hull" in args.oracle:
        occ, colour = hull(inp.images, inp.c2w, inp.K, args.grid)
        rgb, a, _ = march(occ, colour, tgt.c2w, tgt.K, args.size)
        out["hull"] = rgb, a
    return {k: score_views(rgb, a, tgt.images) for k, (rgb, a) in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/views/test", help="zero123pp views folder (the inputs)")
    ap.add_argument("--views-from", default="data/views_random/test", help="novel views, same ids")
    ap.add_argument("--oracle", nargs="+", choices=ORACLES, default=list(ORACLES))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-views", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--grid", type=int, default=96, help="hull: lattice points per axis")
    ap.add_argument("--colour", type=float, nargs=3, default=V2_MAROON, help="fixed: RGB in [0, 1]")
    ap.add_argument("--depth-tol", type=float, default=0.05, help="projected: depth test tolerance")
    ap.add_argument("--backend", default="auto", help="projected: renderer for the true depth")
    ap.add_argument("--per-object", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    inputs, targets = ViewsFolder(args.data), ViewsFolder(args.views_from)
    ids = [i for i in inputs.ids if i in targets.ids][: args.limit]
    renderer = None
    if "projected" in args.oracle:
        from triflow3d.render import make_renderer

        renderer = make_renderer(args.backend)
    scores = {k: [] for k in args.oracle}  # name -> per object (psnr (M,), iou (M,), split (3,))
    for i in ids:
        for k, s in object_oracles(i, inputs, targets, args, renderer).items():
            scores[k].append(s)
    for k, rows in scores.items():
        psnrs, ious, splits = zip(*rows, strict=True)
        p, q, split = torch.cat(psnrs), torch.cat(ious), torch.stack(splits).sum(0)
        share = (split / split.sum().clamp_min(1e-12)).tolist()
        out = {"oracle": k, "psnr": round(float(p.mean()), 4), "psnr_min_object": round(min(float(x.mean()) for x in psnrs), 4),
               "iou": round(float(q.mean()), 5), "n": len(ids), "views": int(p.numel()),
               "error_share": dict(zip(("colour", "silhouette", "background"), (round(x, 4) for x in share))),
               "size": args.size, "data": args.data, "views_from": args.views_from,
               "seconds_all_oracles": round(time.perf_counter() - t0, 1)}  # fmt: skip
        if k == "hull":
            out["grid"] = args.grid
        if k == "fixed":
            out["colour"] = list(args.colour)
        if args.per_object:
            out["objects"] = object_rows(ids, list(psnrs), list(ious))
        print(json.dumps(out))


if __name__ == "__main__":
    main()
