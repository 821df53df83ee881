"""Analytic sphere scenes written as views folders (the ``triflow3d render`` layout), for tests and smoke
runs that must not depend on a rasteriser: 1-3 flat-coloured spheres per object, exact first-hit
ray-sphere intersection, so the RGBA images are consistent across every camera."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from triflow3d import conventions as cv
from triflow3d.cameras import Rig, parse_rig, pixel_rays
from triflow3d.data.views import CAMERAS, MANIFEST, view_file
from triflow3d.utils.io import append_jsonl, write_json

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.1, 0.2, 0.9),
    "yellow": (0.9, 0.8, 0.1),
}


def random_spheres(seed: int) -> list[dict]:
    """1-3 spheres inside the object sphere: {center (3,), radius, colour name}."""
    g = np.random.default_rng(seed)
    out = []
    for _ in range(int(g.integers(1, 4))):
        r = float(g.uniform(0.2, 0.45))
        c = g.uniform(-1, 1, 3)
        c = c / max(1.0, np.linalg.norm(c)) * (cv.OBJECT_RADIUS - r) * float(g.uniform(0, 1))
        out.append({"center": c.tolist(), "radius": r, "colour": str(g.choice(list(COLOURS)))})
    return out


def render_spheres(spheres: list[dict], rig: Rig, size: int) -> torch.Tensor:
    """-> (N, 4, S, S) straight RGBA in [0, 1] (binary coverage, flat colours)."""
    o, d = pixel_rays(rig.c2w, rig.intrinsics, size)  # (N, S*S, 3)
    best = torch.full(o.shape[:2], float("inf"))
    rgb = torch.zeros(*o.shape[:2], 3)
    for s in spheres:
        oc = o - torch.tensor(s["center"])
        b = (oc * d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - s["radius"] ** 2)
        t = torch.where(disc > 0, -b - disc.clamp_min(0).sqrt(), torch.full_like(b, float("inf")))
        hit = (t > 0) & (t < best)
        best = torch.where(hit, t, best)
        rgb[hit] = torch.tensor(COLOURS[s["colour"]])
    alpha = torch.isfinite(best).float()[..., None]
    rgba = torch.cat([rgb, alpha], -1)  # (N, S*S, 4)
    return rgba.reshape(len(rig), size, size, 4).permute(0, 3, 1, 2)


def write_views_folder(
    root: str | Path, seeds: list[int], rig: str = "zero123pp", size: int = 32
) -> list[str]:
    """Write ``root/<id>/rgba_*.png`` + ``cameras.json`` and ``manifest.jsonl`` for one object per seed."""
    root = Path(root)
    ids = []
    for seed in seeds:
        id = f"sphere-{seed:05d}"
        spheres = random_spheres(seed)
        r = parse_rig(rig, seed=seed)
        folder = root / id
        folder.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(render_spheres(spheres, r, size)):
            arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            PIL.Image.fromarray(arr, "RGBA").save(folder / view_file(k))
        write_json(folder / CAMERAS, {
            "conventions_version": cv.CONVENTIONS_VERSION, "id": id, "rig": rig, "fov_deg": r.fov_deg,
            "size": size, "c2w": r.c2w.tolist(), "input_cameras": r.input_cameras().tolist(),
            "render_cameras": r.render_cameras().tolist(),
        })  # fmt: skip
        caption = " and ".join(f"a {s['colour']} sphere" for s in spheres)
        row = {"id": id, "source": f"synthetic:{seed}", "caption": caption, "status": "ok"}
        append_jsonl(root / MANIFEST, [row | {"attributes": {"n": len(spheres)}, "seed": seed}])
        ids.append(id)
    (root / "spheres.json").write_text(json.dumps({str(s): random_spheres(s) for s in seeds}))
    return ids
