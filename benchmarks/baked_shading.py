"""The mean shading factor of a set of renders: ``ReconstructorConfig.baked_shading`` for a reconstructor
trained on them.

    .venv/bin/python benchmarks/baked_shading.py [--shapes data/shapes/train] [--limit 100] [--rig random:8]

The project's renderers shade albedo by ``AMBIENT + DIFFUSE * |n . l|`` (linear RGB, headlight along the
camera's viewing axis; ``render.shading``). A field fitted to such renders by per-ray colour losses holds,
at each surface point, the pixel-weighted mean of its shaded colours, i.e. albedo times the mean shading
of the covered pixels. This script renders the shapes from the rig and prints that mean (and the median)
over every covered pixel, one JSON line. The ``lrm-small`` preset's 0.815 is this figure for the first 100
train shapes from ``random:8 --seed 1`` (the supervision rig of ``scripts/train_shipped.sh``), the defaults:
0.8145 (median 0.884); ``--shapes data/shapes/test --limit 40`` gives 0.8161.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from triflow3d.assets import load_asset
from triflow3d.assets.normalize import normalize
from triflow3d.cameras import parse_rig
from triflow3d.render import make_renderer
from triflow3d.render.shading import AMBIENT, DIFFUSE


def mean_shading(paths: list[Path], rig_spec: str, seed: int, size: int, backend: str) -> dict:
    """Mean / median of ``AMBIENT + DIFFUSE * |n . axis|`` over the covered pixels of every render."""
    renderer, rig = make_renderer(backend), parse_rig(rig_spec, seed=seed)
    axes = rig.c2w[:, :3, 2].numpy()  # (V, 3) viewing axes (the headlight)
    shades = []
    for path in paths:
        out = renderer.render(normalize(load_asset(path)), rig, size)
        for v in range(len(rig)):
            shades.append(AMBIENT + DIFFUSE * np.abs(out.normal[v][out.mask[v]] @ axes[v]))
    s = np.concatenate(shades)
    return {"objects": len(paths), "views": len(rig), "pixels": int(s.size),
            "mean": round(float(s.mean()), 4), "median": round(float(np.median(s)), 4)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="data/shapes/train", help="folder of .glb assets")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--rig", default="random:8")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--backend", default="raycast")
    args = p.parse_args()
    paths = sorted(Path(args.shapes).glob("*.glb"))[: args.limit]
    if not paths:
        raise SystemExit(f"{args.shapes}: no .glb files")
    row = mean_shading(paths, args.rig, args.seed, args.size, args.backend)
    print(json.dumps({"bench": "baked_shading", "shapes": args.shapes, "rig": args.rig, **row}))


if __name__ == "__main__":
    main()
