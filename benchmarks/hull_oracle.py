"""What do the six input views alone determine? The visual-hull oracle on held-out objects.

    .venv/bin/python benchmarks/hull_oracle.py [--limit 40] [--grid 96] [--max-views 4]

For each object of a zero123pp views folder this carves the visual hull of its six input views' masks
(a point of a ``grid``^3 lattice is inside when every view's alpha there is > 0.5), colours each hull
voxel with the mean of the views that see it (a depth test against the hull's own depth maps), and
renders the result from the held-out novel views of ``--views-from`` with hard occupancy (192 samples
per ray). It scores them exactly like ``triflow3d recon eval`` (PSNR on white, silhouette IoU at 0.5).

This is not a model: it uses the ground-truth masks (alpha) that a reconstructor never gets, and no
learning. It measures what a purely geometric reading of the inputs gives, the bar a learned
reconstructor of the same inputs has to clear with priors (concavities the masks cannot show, colours
of surfaces no input view sees). Prints one JSON line (means, and per object with ``--per-object``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from triflow3d.cameras import pixel_rays, project_points
from triflow3d.data.views import ViewsFolder, composite_white
from triflow3d.recon.eval import object_rows, psnr, silhouette_iou

NEAR, FAR, SAMPLES = 2.0, 6.5, 192  # every rig's radius is 4-4.5 and objects fit the unit ball


def lattice(grid: int) -> torch.Tensor:
    """(grid^3, 3) voxel centres in [-1, 1]^3, ordered z, y, x (the layout grid_sample's volumes read)."""
    ax = (torch.arange(grid) + 0.5) / grid * 2 - 1
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")
    return torch.stack([x, y, z], -1).reshape(-1, 3)


def march(occ: torch.Tensor, rgb: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, size: int):
    """Hard-occupancy ray march of volumes occ (G, G, G) and rgb (3, G, G, G) -> rgb (M, 3, S, S) on
    white, alpha (M, 1, S, S), depth (M, S*S) (far where nothing is hit)."""
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
    uv, z = project_points(c2w, K, pts.expand(v, -1, -1))
    where = (uv * 2 - 1)[:, None]  # (V, 1, P, 2)
    alpha = F.grid_sample(images[:, 3:], where, align_corners=False)[:, 0, 0]  # (V, P)
    occ = (alpha > 0.5).all(0).float()
    _, _, depth = march(occ.reshape(grid, grid, grid), torch.zeros(3, grid, grid, grid), c2w, K, size)
    seen_depth = F.grid_sample(depth.reshape(v, 1, size, size), where, align_corners=False)[:, 0, 0]
    visible = (z <= seen_depth + 4.0 / grid).float() * occ  # within two voxels of the first hit
    rgb = F.grid_sample(images[:, :3], where, align_corners=False)[:, :, 0]  # (V, 3, P)
    mean_visible = (rgb * visible[:, None]).sum(0) / visible.sum(0).clamp_min(1e-6)
    colour = torch.where(visible.sum(0) > 0, mean_visible, rgb.mean(0))
    return occ.reshape(grid, grid, grid), colour.reshape(3, grid, grid, grid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/views/test", help="zero123pp views folder (the inputs)")
    ap.add_argument("--views-from", default="data/views_random/test", help="novel views, same ids")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--max-views", type=int, default=4)
    ap.add_argument("--grid", type=int, default=96)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--per-object", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    inputs, targets = ViewsFolder(args.data), ViewsFolder(args.views_from)
    ids = [i for i in inputs.ids if i in targets.ids][: args.limit]
    psnrs, ious = [], []
    for i in ids:
        inp, tgt = inputs.load(i, args.size), targets.load(i, args.size)
        occ, colour = hull(inp.images, inp.c2w, inp.K, args.grid)
        m = args.max_views
        rgb, alpha, _ = march(occ, colour, tgt.c2w[:m], tgt.K[:m], args.size)
        p = psnr(rgb, composite_white(tgt.images[:m]))
        q = silhouette_iou(alpha, tgt.images[:m, 3:])
        psnrs.append(p)
        ious.append(q)
    p, q = torch.cat(psnrs), torch.cat(ious)
    out = {"oracle": "visual-hull", "psnr": round(float(p.mean()), 4), "iou": round(float(q.mean()), 5),
           "n": len(ids), "views": int(p.numel()), "grid": args.grid, "size": args.size,
           "data": args.data, "views_from": args.views_from, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if args.per_object:
        out["objects"] = object_rows(ids, psnrs, ious)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
