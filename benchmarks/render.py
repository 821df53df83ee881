"""Views per second of each available render backend: Zero123++ rig, 320 x 320, a ~10k-triangle textured mesh.

    .venv/bin/python benchmarks/render.py [--size 320] [--repeats 5] [--backends egl,raycast]

Each timed call renders the whole rig (6 views) of the asset, including uploading it; the renderer
(GL context) is created once beforehand and its first call is reported separately as warm-up. The same
mesh is also saved as GLB, OBJ (+ MTL, PNG) and PLY and loaded back (``load_asset`` in this process, and
``load_asset_isolated`` as the render stage does): the median seconds per file are printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from triflow3d.assets import load_asset, load_asset_isolated
from triflow3d.assets.export import save_mesh
from triflow3d.assets.types import Asset, MeshPart
from triflow3d.cameras import zero123pp_rig
from triflow3d.render import make_renderer


def textured_sphere(count: int = 51, texture_size: int = 1024) -> Asset:
    """A UV sphere of about 2 * count^2 triangles with a checker texture and spherical uv."""
    mesh = trimesh.creation.uv_sphere(radius=0.9, count=[count, count])
    v = np.asarray(mesh.vertices)
    d = v / np.linalg.norm(v, axis=1, keepdims=True)
    uv = np.stack(
        [np.arctan2(d[:, 1], d[:, 0]) / (2 * np.pi) + 0.5, np.arccos(np.clip(d[:, 2], -1, 1)) / np.pi], 1
    )
    ii, jj = np.mgrid[:texture_size, :texture_size] // (texture_size // 16)
    tex = np.full((texture_size, texture_size, 4), 255, np.uint8)
    tex[..., :3] = np.where(((ii + jj) % 2 == 0)[..., None], (220, 60, 40), (40, 90, 200))
    part = MeshPart(
        vertices=v.astype(np.float32),
        faces=np.asarray(mesh.faces, np.int64),
        normals=d.astype(np.float32),
        uv=uv.astype(np.float32),
        texture=tex,
    )
    return Asset(parts=(part,), source="textured_sphere")


def bench(backend: str, asset: Asset, size: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    renderer = make_renderer(backend)
    t1 = time.perf_counter()
    rig = zero123pp_rig()
    renderer.render(asset, rig, size)  # warm-up: shader compilation, framebuffers, caches
    t2 = time.perf_counter()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        renderer.render(asset, rig, size)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    n = len(rig)
    return {
        "backend": backend,
        "init_s": t1 - t0,
        "first_call_s": t2 - t1,
        "views_per_s": n / float(np.median(walls)),
        "best_views_per_s": n / min(walls),
        "cpu_s_per_view": float(np.median(cpus)) / n,
    }


def bench_load(asset: Asset, repeats: int) -> dict[str, tuple[float, float]]:
    """{format: (median s of load_asset, median s of load_asset_isolated)} of the asset saved in that format."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".glb", ".obj", ".ply"):
            path = Path(tmp) / f"sphere{suffix}"
            save_mesh(asset, path)
            times = {}
            for name, load in (("direct", load_asset), ("isolated", load_asset_isolated)):
                walls = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    load(path)
                    walls.append(time.perf_counter() - t)
                times[name] = float(np.median(walls))
            out[suffix[1:]] = (times["direct"], times["isolated"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="egl,raycast")
    args = parser.parse_args()
    torch.set_num_threads(1)
    asset = textured_sphere()
    print(
        f"asset: {asset.num_faces} triangles, 1024^2 texture; rig zero123pp (6 views), {args.size}x{args.size}"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"cpus: {os.cpu_count()}, load average {load:.1f}, LP_NUM_THREADS={os.environ.get('LP_NUM_THREADS', 'unset')}"
    )
    for fmt, (direct, isolated) in bench_load(asset, args.repeats).items():
        print(
            f"load {fmt:4s} {1000 * direct:6.1f} ms (load_asset), {1000 * isolated:6.1f} ms (load_asset_isolated)"
        )
    for backend in args.backends.split(","):
        try:
            r = bench(backend, asset, args.size, args.repeats)
        except RuntimeError as e:
            print(f"{backend:8s} unavailable: {e}")
            continue
        print(
            f"{backend:8s} {r['views_per_s']:6.1f} views/s (median; best {r['best_views_per_s']:.1f}), "
            f"{1000 * r['cpu_s_per_view']:.0f} CPU-ms/view, context {r['init_s']:.2f} s, "
            f"first call {r['first_call_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
