"""Direct 3D supervision for the reconstructor: inside/outside labels of points around each object.

The procedural shapes (and any asset made of watertight parts) define inside and outside exactly. For
each rendered object we read its source asset and the normalisation the render stage applied (both in
``cameras.json``), and label points — half near the surface, half uniform in the box — as inside any
watertight part or not. Training then pushes the density across the mesh threshold at the surface: the
occupancy logit is ``sigma_raw - raw_at_threshold`` where softplus(raw + DENSITY_SHIFT) = MESH_THRESHOLD,
so the extracted mesh (marching cubes at the threshold) lands on the true surface.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh

from triflow3d import conventions as cv
from triflow3d.errors import AssetError, TriflowError
from triflow3d.utils.parallel import ordered_map
from triflow3d.utils.progress import progress_bar

NEAR_SURFACE_STD = 0.03  # world units; the box is [-1, 1]^3


def raw_at_threshold(threshold: float = cv.MESH_THRESHOLD) -> float:
    """The raw density output whose activation softplus(raw + DENSITY_SHIFT) equals ``threshold``."""
    return threshold + math.log(-math.expm1(-threshold)) - cv.DENSITY_SHIFT  # inverse softplus


def occupancy_loss(sigma_raw: torch.Tensor, occ: torch.Tensor, threshold: float = cv.MESH_THRESHOLD):
    """BCE between inside labels (B, P) and the occupancy logit of raw densities (B, P, 1).

    Labels < 0 mark objects without 3D supervision (parts not watertight); they do not count.
    """
    known = (occ >= 0).float()
    bce = F.binary_cross_entropy_with_logits(
        sigma_raw[..., 0] - raw_at_threshold(threshold), occ.clamp_min(0.0), reduction="none"
    )
    return (bce * known).sum() / known.sum().clamp_min(1.0)


def _resolve_source(src: str, obj_dir: Path) -> Path:
    p = Path(src)
    for cand in (p, obj_dir.parent / p, obj_dir.parent.parent / p.name):
        if cand.is_file():
            return cand
    raise AssetError(src, f"source asset of {obj_dir} not found")


def object_occupancy(obj_dir: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points (n, 3) float32 in the rendered (normalised) frame and their inside labels (n,) bool."""
    from triflow3d.assets import load_asset

    meta = json.loads((obj_dir / "cameras.json").read_text())
    asset = load_asset(_resolve_source(meta["source"], obj_dir))
    asset = asset.transformed(np.asarray(meta["normalization_transform"], dtype=np.float64))
    # Files split vertices along uv and normal seams: merge positions so each part is a closed manifold.
    parts = [trimesh.Trimesh(p.vertices, p.faces, process=True) for p in asset.parts]
    if not parts or not all(m.is_watertight for m in parts):
        raise AssetError(obj_dir, "3D supervision needs watertight parts")
    rng = np.random.default_rng(seed)
    whole = trimesh.util.concatenate(parts)
    n_near = n // 2
    near, _ = trimesh.sample.sample_surface(whole, n_near, seed=int(rng.integers(2**31)))
    near = near + rng.normal(0.0, NEAR_SURFACE_STD, near.shape)
    uniform = rng.uniform(cv.BOX_MIN, cv.BOX_MAX, (n - n_near, 3))
    pts = np.clip(np.concatenate([near, uniform]), cv.BOX_MIN, cv.BOX_MAX)
    inside = np.zeros(len(pts), dtype=bool)
    for m in parts:
        inside |= m.contains(pts)
    return pts.astype(np.float32), inside


def _label_object(job: tuple[Path, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``object_occupancy`` of one (folder, n, seed) job; None when the object has no labels."""
    try:
        return object_occupancy(*job)
    except (TriflowError, ValueError, KeyError, OSError):
        return None


def load_occupancy(
    obj_dirs: list[Path], n: int, seed: int = 0, workers: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (N, n, 3) and labels (N, n) float (-1: unknown) for every object; seeded by object id.
    ``workers`` processes label the objects. Points do not depend on it; trimesh's ray-based inside test
    may flip a handful of labels of points on the surface itself from run to run (about 1 in 10^5)."""
    jobs = [(d, n, seed * 1_000_003 + zlib.crc32(d.name.encode())) for d in obj_dirs]
    pts, occ, skipped = [], [], 0
    with progress_bar() as bar:
        task = bar.add_task("3D labels", total=len(obj_dirs), status="")
        for row in ordered_map(_label_object, jobs, workers, processes=True):
            if row is None:
                pts.append(torch.zeros(n, 3))
                occ.append(torch.full((n,), -1.0))  # unknown: left out of the loss
                skipped += 1
            else:
                pts.append(torch.from_numpy(row[0]))
                occ.append(torch.from_numpy(row[1]).float())
            bar.update(task, advance=1, status=f"{skipped} without labels")
    if skipped:
        warnings.warn(f"3D supervision: {skipped} of {len(obj_dirs)} objects have no watertight parts; "
                      "they are trained from images only", stacklevel=2)  # fmt: skip
    return torch.stack(pts), torch.stack(occ)
