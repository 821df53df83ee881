"""Geometry metrics on surface point samples: Chamfer distance, F-score, failure test, NN category;
fragmentation of a mesh (floater share, number of connected components).

Frame: no normalisation happens here. Reference meshes (``assets.normalize``) and generated meshes
(marching cubes in the triplane box of ``conventions``) already share one world frame, z-up, object
inside a sphere of radius ``conventions.OBJECT_RADIUS``. Re-normalising each generated shape would
hide scale and placement errors, so callers compare raw world coordinates.

Chamfer convention (PointFlow / ShapeGF): for point sets A and B,

    CD(A, B) = mean_a min_b |a - b|^2  +  mean_b min_a |a - b|^2

(squared distances, the two directions summed, not averaged). ``squared=False`` gives the same sum
over plain Euclidean distances (the "L1" Chamfer some reconstruction papers use, there often halved).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from triflow3d.errors import ConfigError
from triflow3d.triplane.mesh import FLOATER_SHARE, floaters, mesh_components


def mesh_vertex_colours(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """Vertex RGB in [0, 1] (V, 3) of a vertex-coloured (or textured, sampled at the UVs) mesh, else None."""
    visual = mesh.visual
    if visual is not None and visual.kind == "texture":
        visual = visual.to_color()
    if visual is None or visual.kind != "vertex":
        return None
    return np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` area-uniform surface points (n, 3) and their colours (n, 3) in [0, 1] or None.

    Deterministic for a given seed (numpy Generator; trimesh's own sampler uses global state).
    Colours: barycentric interpolation of vertex colours, or the face colour for face-coloured meshes.
    """
    faces = np.asarray(mesh.faces)
    if n < 1 or len(faces) == 0:
        raise ConfigError(f"sample_surface needs n >= 1 and a mesh with faces, got n={n}, faces={len(faces)}")
    tri = np.asarray(mesh.vertices, dtype=np.float64)[faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise ConfigError(f"sample_surface: mesh has zero or non-finite surface area ({total})")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(area) / total
    face = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(faces) - 1)  # (n,)
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    bary = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)  # (n, 3), uniform on the triangle
    points = np.einsum("nk,nkc->nc", bary, tri[face])
    colours = None
    vc = mesh_vertex_colours(mesh)
    if vc is not None:
        colours = np.einsum("nk,nkc->nc", bary, vc[faces[face]])
    elif mesh.visual is not None and mesh.visual.kind == "face":
        colours = np.asarray(mesh.visual.face_colors, dtype=np.float64)[face, :3] / 255.0
    return points.astype(np.float32), None if colours is None else colours.astype(np.float32)


def _nearest(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Euclidean distance from each point of ``src`` (N, 3) to its nearest point in ``dst`` (M, 3)."""
    return cKDTree(np.asarray(dst, dtype=np.float64)).query(np.asarray(src, dtype=np.float64), k=1)[0]


def chamfer_distance(a: np.ndarray, b: np.ndarray, squared: bool = True) -> float:
    """Chamfer distance between point sets a (N, 3) and b (M, 3); see the module docstring."""
    d_ab, d_ba = _nearest(a, b), _nearest(b, a)
    if squared:
        d_ab, d_ba = d_ab**2, d_ba**2
    return float(d_ab.mean() + d_ba.mean())


class FScore(NamedTuple):
    f: float
    precision: float  # share of predicted points within tau of the reference
    recall: float  # share of reference points within tau of the prediction


def f_score(pred: np.ndarray, ref: np.ndarray, tau: float) -> FScore:
    """F-score at distance threshold ``tau`` (Tatarchenko et al. 2019), in the shared world frame."""
    precision = float((_nearest(pred, ref) <= tau).mean())
    recall = float((_nearest(ref, pred) <= tau).mean())
    f = 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)
    return FScore(f, precision, recall)


def _chamfer_block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Chamfer for every pair of a (i, N, 3) and b (j, M, 3) -> (i, j)."""
    aa = (a * a).sum(-1)  # (i, N)
    bb = (b * b).sum(-1)  # (j, M)
    ab = torch.einsum("inc,jmc->ijnm", a, b)
    d2 = (aa[:, None, :, None] + bb[None, :, None, :] - 2.0 * ab).clamp_min_(0.0)  # (i, j, N, M)
    return d2.min(dim=3).values.mean(dim=2) + d2.min(dim=2).values.mean(dim=2)


def _pairwise_kdtree(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared Chamfer (n, m) with one KD-tree per shape, each queried once with all points of the other set."""
    n, N, _ = A.shape
    m, M, _ = B.shape
    a_to_b = np.stack([cKDTree(b).query(A.reshape(-1, 3))[0].reshape(n, N) for b in B], axis=1)  # (n, m, N)
    b_to_a = np.stack([cKDTree(a).query(B.reshape(-1, 3))[0].reshape(m, M) for a in A], axis=0)  # (n, m, M)
    return (a_to_b**2).mean(axis=2) + (b_to_a**2).mean(axis=2)


@torch.no_grad()
def pairwise_chamfer(
    A: torch.Tensor | np.ndarray,
    B: torch.Tensor | np.ndarray,
    backend: str = "auto",
    max_elements: int = 2**25,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Squared Chamfer between every shape of A (n, N, 3) and B (m, M, 3) -> (n, m), float32 on CPU.

    backend: "kdtree" (scipy, exact, about 20x faster on CPU), "torch" (brute force on ``device``, in
    blocks of pairs whose (i, j, N, M) distance tensor has at most ``max_elements`` entries), or "auto"
    (kdtree on a CPU device, torch otherwise).
    """
    device = torch.device(device)
    if backend == "auto":
        backend = "kdtree" if device.type == "cpu" else "torch"
    if backend == "kdtree":
        a, b = (np.asarray(torch.as_tensor(x).cpu(), dtype=np.float64) for x in (A, B))
        return torch.from_numpy(_pairwise_kdtree(a, b)).float()
    if backend != "torch":
        raise ConfigError(f"unknown Chamfer backend {backend!r}; use 'auto', 'kdtree' or 'torch'")
    A = torch.as_tensor(A, dtype=torch.float32, device=device)
    B = torch.as_tensor(B, dtype=torch.float32, device=device)
    n, N, _ = A.shape
    m, M, _ = B.shape
    cj = max(1, min(m, max_elements // (N * M)))
    ci = max(1, min(n, max_elements // (N * M * cj)))
    out = torch.empty(n, m, dtype=torch.float32)
    for i in range(0, n, ci):
        for j in range(0, m, cj):
            out[i : i + ci, j : j + cj] = _chamfer_block(A[i : i + ci], B[j : j + cj]).cpu()
    return out


def nn_classify(
    gen_points: torch.Tensor | np.ndarray,
    ref_points: torch.Tensor | np.ndarray,
    ref_labels: list[str],
    **kwargs,
) -> list[str]:
    """Label of each generated shape (n, N, 3) = label of its Chamfer-nearest reference (m, M, 3)."""
    if len(ref_labels) != len(ref_points):
        raise ConfigError(f"{len(ref_labels)} reference labels for {len(ref_points)} reference shapes")
    idx = pairwise_chamfer(gen_points, ref_points, **kwargs).argmin(dim=1)
    return [ref_labels[int(i)] for i in idx]


def broken_reason(mesh: object) -> str | None:
    """Why a generated mesh counts as a failure (None when it is usable)."""
    if not isinstance(mesh, trimesh.Trimesh):
        return f"not a mesh ({type(mesh).__name__})"
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        return "empty (no vertices or faces)"
    if not np.isfinite(np.asarray(mesh.vertices)).all():
        return "non-finite vertex coordinates"
    if not float(mesh.area) > 0.0:
        return "zero surface area"
    return None


class Fragmentation(NamedTuple):
    floater_share: float  # share of the surface area in floaters (components with < 5 % of the area each)
    components: int  # connected components (faces joined by shared vertices)


def fragmentation(mesh: trimesh.Trimesh, min_share: float = FLOATER_SHARE) -> Fragmentation:
    """How fragmented a mesh is, before any clean-up: the surface area in connected components that each
    hold less than ``min_share`` of the total, as a share of the total, and the number of components.

    Not the share outside the largest component: objects legitimately have separate large parts (a lamp's
    shade); small pieces are what floaters are.
    """
    _, areas = mesh_components(mesh)
    total = float(areas.sum())
    if not total > 0:
        raise ConfigError(f"fragmentation: mesh has zero or non-finite surface area ({total})")
    return Fragmentation(float(areas[floaters(areas, min_share)].sum()) / total, len(areas))


def is_broken(mesh: object) -> bool:
    """True for a missing, empty, faceless, non-finite or zero-area mesh (counts toward failure rate)."""
    return broken_reason(mesh) is not None
