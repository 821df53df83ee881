"""Mesh extraction from a triplane field: a density (or SDF) grid, marching cubes, vertex colours; and
quadric decimation of the result (:func:`decimate_mesh`, fast-simplification, colours kept).

NeRF variant (as upstream ``InstantNeRF.extract_mesh``): activated density on linspace(-1, 1, G)^3
(indexing 'ij', so axis order x, y, z), iso-level ``threshold`` (10 on the activated density),
vertices v / (G - 1) * 2 - 1, colours from the field's rgb at the vertices.

Mesh (FlexiCubes) variant, approximated without FlexiCubes: marching cubes at level 0 on the SDF
(inside negative) over linspace(-1.05, 1.05, G)^3 (upstream grid_scale 2.1); the deformation and
FlexiCubes weight heads are ignored (the deformation moves vertices by at most a quarter cell).

Marching cubes (scikit-image, Lewiner) runs on a field that is *larger inside* (density, or -sdf).
On our (x, y, z) 'ij' grids its faces come out wound clockwise seen from outside, so we reverse
them: normals point outward and closed meshes have positive volume (``tests/test_mesh.py``).

``coarse_to_fine`` evaluates the grid hierarchically: a lattice of stride ``coarse_stride``, then at
each halving only the points in cells whose corner values come within ``margin`` of the level
(dilated by one cell); other points are trilinearly interpolated and never cross the level. Cells
with exact corners give exactly the dense grid's triangles; only features smaller than a coarse cell
whose values stay farther than ``margin`` from the level at every coarse lattice point are missed
(smooth object fields: identical meshes; white-noise fields such as the random parity planes: not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from skimage import measure

from triflow3d import conventions as cv
from triflow3d.conventions import linear_to_srgb, srgb_to_linear
from triflow3d.errors import ConfigError
from triflow3d.triplane.grid import grid_axis, query_grid

if TYPE_CHECKING:  # trimesh is imported where a mesh is built, so the grid queries work without it
    import trimesh

DEFAULT_CHUNK = 2**18
MESH_BOUND = {"nerf": cv.BOX_MAX, "mesh": 1.05}  # half-extent of the extraction grid per decoder kind


@torch.no_grad()
def _query_values(field, planes, xyz: torch.Tensor, key: str, chunk: int) -> torch.Tensor:
    """(B, P, 3) -> (B, P) values of ``key`` ('sigma' or 'sdf') in float32."""
    parts = [field.query(planes, xyz[:, i : i + chunk])[key][..., 0] for i in range(0, xyz.shape[1], chunk)]
    return torch.cat(parts, dim=1).float()


def field_grid(field, planes, resolution: int, key: str = "sigma", bound: float = 1.0, chunk=DEFAULT_CHUNK):
    """Dense grid of ``key`` on linspace(-bound, bound, G)^3, indexing 'ij' -> (B, G, G, G, K)."""
    return query_grid(
        lambda xyz: field.query(planes, xyz)[key], resolution, planes.shape[0], -bound, bound, chunk,
        planes.device,
    )  # fmt: skip


def density_grid(field, planes, resolution: int, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Activated density on linspace(-1, 1, G)^3 (x, y, z order) -> (B, G, G, G)."""
    return field_grid(field, planes, resolution, "sigma", cv.BOX_MAX, chunk)[..., 0]


def _upsample2(x: np.ndarray) -> np.ndarray:
    """Trilinear x2 refinement of a lattice (n, n, n) -> (2n-1, 2n-1, 2n-1), corners kept."""
    for axis in range(3):
        x = np.moveaxis(x, axis, 0)
        out = np.empty((2 * x.shape[0] - 1, *x.shape[1:]), dtype=x.dtype)
        out[0::2], out[1::2] = x, 0.5 * (x[:-1] + x[1:])
        x = np.moveaxis(out, 0, axis)
    return x


def _cells_near_level(vals: np.ndarray, level: float, margin: float) -> np.ndarray:
    """(n, n, n) -> (n-1,)^3 bool: cells whose corner range meets [level - margin, level + margin]."""
    n0, n1, n2 = (s - 1 for s in vals.shape)
    corners = [vals[i : i + n0, j : j + n1, k : k + n2] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    hi, lo = np.maximum.reduce(corners), np.minimum.reduce(corners)
    return (hi > level - margin) & (lo <= level + margin)


def _refine_points(cells: np.ndarray) -> np.ndarray:
    """Coarse cell mask (n-1)^3 -> fine point mask (2n-1)^3 of all points in those cells' closures."""
    fine_cells = cells.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    pts = np.zeros(tuple(s + 1 for s in fine_cells.shape), dtype=bool)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                pts[
                    i : i + fine_cells.shape[0], j : j + fine_cells.shape[1], k : k + fine_cells.shape[2]
                ] |= fine_cells
    pts[::2, ::2, ::2] = False  # already known
    return pts


def coarse_to_fine_grid(
    field,
    planes,
    resolution: int,
    level: float,
    key: str = "sigma",
    sign: float = 1.0,
    bound: float = 1.0,
    coarse_stride: int = 8,
    chunk: int = DEFAULT_CHUNK,
    margin: float = 0.0,
) -> tuple[np.ndarray, int]:
    """``sign * key`` on the dense (G, G, G) grid, exact near ``level`` -> (grid, points evaluated)."""
    stride = coarse_stride
    while stride > 1 and (resolution - 1) // stride < 2:
        stride //= 2
    n_cells = -(-(resolution - 1) // stride)
    padded = n_cells * stride + 1  # the lattice is padded past +bound so every stride divides it
    axis = grid_axis(resolution, bound, extra=padded - resolution).to(planes.device)

    def evaluate(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
        idx = [torch.from_numpy(np.ascontiguousarray(a)).to(planes.device) for a in (ix, iy, iz)]
        xyz = torch.stack([axis[i] for i in idx], dim=-1)[None]  # (1, P, 3)
        return sign * _query_values(field, planes, xyz, key, chunk)[0].cpu().numpy()

    lattice = np.arange(0, padded, stride)
    ii = np.meshgrid(lattice, lattice, lattice, indexing="ij")
    vals = evaluate(*(a.reshape(-1) for a in ii)).reshape((len(lattice),) * 3)
    count = vals.size
    while stride > 1:
        cells = ndimage.binary_dilation(
            _cells_near_level(vals, level, margin), structure=np.ones((3, 3, 3), bool)
        )
        vals, todo = _upsample2(vals), _refine_points(cells)
        stride //= 2
        idx = np.nonzero(todo)
        if idx[0].size:
            vals[idx] = evaluate(*(a * stride for a in idx))
        count += idx[0].size
    return vals[:resolution, :resolution, :resolution], count


def mesh_from_volume(
    field, planes, vol: np.ndarray, level: float, bound: float = 1.0, baked_shading: float = 1.0
) -> trimesh.Trimesh:
    """Marching cubes on ``vol`` (larger inside) at ``level``; world vertices, field colours (RGBA uint8)
    de-lit by ``baked_shading`` (:func:`albedo_from_radiance`)."""
    import trimesh

    if not (np.isfinite(vol).all() and vol.min() < level < vol.max()):
        return trimesh.Trimesh()
    verts, faces, _, _ = measure.marching_cubes(vol.astype(np.float32), level)
    verts = (verts / (vol.shape[0] - 1) * 2 - 1) * bound
    faces = np.ascontiguousarray(faces[:, ::-1])  # outward normals
    with torch.no_grad():
        xyz = torch.from_numpy(verts.astype(np.float32)).to(planes.device)[None]
        rgb = field.query(planes, xyz)["rgb"][0].clamp(0, 1).cpu().numpy()
    rgb = albedo_from_radiance(rgb, baked_shading)
    colors = np.concatenate([np.round(rgb * 255), np.full((len(rgb), 1), 255.0)], axis=1).astype(np.uint8)
    return trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=colors, process=False)


def albedo_from_radiance(rgb: np.ndarray, baked_shading: float) -> np.ndarray:
    """Field colours (N, 3) sRGB -> vertex albedo: divided by ``baked_shading`` in linear RGB, clipped.

    A field trained on shaded renders stores the mean shaded colour of each surface point, i.e. its albedo
    times the mean shading factor of the training views (``ReconstructorConfig.baked_shading``); vertex
    colours are albedo (a viewer shades them again), so the factor is divided out. 1.0 leaves them as is.
    """
    if baked_shading == 1.0:
        return rgb
    return linear_to_srgb(srgb_to_linear(rgb) / baked_shading)


def extract_mesh(
    field,
    planes: torch.Tensor,
    resolution: int = 256,
    threshold: float = cv.MESH_THRESHOLD,
    coarse_to_fine: bool = True,
    coarse_stride: int = 8,
    chunk: int = DEFAULT_CHUNK,
    bound: float | None = None,
    margin: float | None = None,
    baked_shading: float = 1.0,
) -> trimesh.Trimesh:
    """Mesh of one triplane (1, 3, C, R, R): density iso-surface (NeRF) or sdf = 0 (mesh variant), vertex
    colours de-lit by ``baked_shading`` (:func:`albedo_from_radiance`).

    ``margin``: coarse-to-fine refines cells whose corner values come within ``margin`` of the level
    (default: half the threshold for density; two coarse cells of world distance for an sdf).
    Returns an empty ``trimesh.Trimesh`` when the level is never crossed.
    """
    if planes.shape[0] != 1:
        raise ConfigError(
            f"extract_mesh takes one triplane (batch 1), got planes of shape {tuple(planes.shape)}"
        )
    if resolution < 2:
        raise ConfigError(f"mesh resolution must be >= 2, got {resolution}")
    kind = getattr(field, "kind", "nerf")
    key, sign, level = ("sdf", -1.0, 0.0) if kind == "mesh" else ("sigma", 1.0, float(threshold))
    bound = MESH_BOUND[kind] if bound is None else bound
    if margin is None:
        margin = 0.5 * level if kind == "nerf" else 2 * coarse_stride * 2 * bound / (resolution - 1)
    if coarse_to_fine:
        vol, _ = coarse_to_fine_grid(
            field, planes, resolution, level, key, sign, bound, coarse_stride, chunk, margin
        )
    else:
        vol = sign * field_grid(field, planes, resolution, key, bound, chunk)[0, ..., 0].float().cpu().numpy()
    return mesh_from_volume(field, planes, vol, level, bound, baked_shading)


def decimate_mesh(mesh: trimesh.Trimesh, target: int | float) -> trimesh.Trimesh:
    """Quadric decimation to ``target`` faces (int) or that fraction of them (float in (0, 1));
    vertex colours are carried over from the nearest original vertex."""
    import fast_simplification
    import trimesh
    from scipy.spatial import cKDTree

    n = len(mesh.faces)
    count = int(round(target * n)) if isinstance(target, float) else int(target)
    if isinstance(target, float) and not 0 < target <= 1:
        raise ConfigError(f"decimation fraction must be in (0, 1], got {target}")
    if count < 4:
        raise ConfigError(f"decimation target must be at least 4 faces, got {count}")
    if count >= n:
        return mesh
    verts, faces = fast_simplification.simplify(
        np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int32), target_count=count
    )
    _, nearest = cKDTree(np.asarray(mesh.vertices)).query(verts)
    colors = np.asarray(mesh.visual.vertex_colors)[nearest] if mesh.visual.kind == "vertex" else None
    return trimesh.Trimesh(verts, faces, vertex_colors=colors, process=False)


# --- connected components (fragmentation metric, floater clean-up) ---------------------------------------
FLOATER_SHARE = 0.05  # a component with less than this share of the mesh's surface area is a floater


def mesh_components(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a mesh (faces joined by shared vertices) -> face labels (F,) in 0..K-1 and
    each component's surface area (K,). Marching-cubes meshes share vertices between adjacent faces."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    n = len(mesh.vertices)
    a, b = faces.reshape(-1), np.roll(faces, -1, axis=1).reshape(-1)  # the three edges of every face
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    _, vertex_label = connected_components(graph, directed=False)
    _, face_label = np.unique(vertex_label[faces[:, 0]], return_inverse=True)  # only faced components
    tri = np.asarray(mesh.vertices, dtype=np.float64)[faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    return face_label, np.bincount(face_label, weights=area)


def floaters(areas: np.ndarray, min_share: float = FLOATER_SHARE) -> np.ndarray:
    """Which components (K,) are floaters: each holds less than ``min_share`` of the total area."""
    total = float(np.sum(areas))
    return np.asarray(areas) < min_share * total if total > 0 else np.zeros(len(areas), bool)


def drop_small_components(mesh: trimesh.Trimesh, min_share: float = FLOATER_SHARE) -> trimesh.Trimesh:
    """The mesh without its floaters (components with < ``min_share`` of the area); colours are kept."""
    label, areas = mesh_components(mesh)
    small = floaters(areas, min_share)
    if not small.any():
        return mesh
    out = mesh.copy()
    out.update_faces(~small[label])
    out.remove_unreferenced_vertices()
    return out
