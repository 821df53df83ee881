"""Parametric primitives (pure data) and their conversion to watertight manifold3d solids.

A shape is a list of :class:`Prim` records. Each names a colour *region*; the solid of a region is the
union of its primitives, minus every ``hole`` primitive (holes cut all regions), minus the regions
listed before it (earlier regions win where two overlap), so regions never overlap and their union is
the whole object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import manifold3d as m3
import numpy as np
import trimesh

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Prim:
    """One primitive solid in the object's own frame (z-up, units arbitrary; normalised later).

    ``size`` by kind: box (sx, sy, sz); cylinder (height, r_bottom, r_top), axis = local z, centred;
    sphere (radius,); torus (major, minor), in the local xy plane; lathe: the flattened (r, z)
    profile of a solid of revolution about local z (z relative to ``center``).
    """

    kind: str
    size: tuple[float, ...]
    center: Vec3 = (0.0, 0.0, 0.0)
    rotation: Vec3 = (0.0, 0.0, 0.0)  # Euler degrees, applied x then y then z
    scale: Vec3 = (1.0, 1.0, 1.0)  # applied before the rotation (ellipsoids, flattened tori)
    region: str = "main"
    hole: bool = False
    segments: int = 24


def box(
    center: Vec3, size: Vec3, region: str = "main", rotation: Vec3 = (0.0, 0.0, 0.0), hole: bool = False
) -> Prim:
    return Prim("box", tuple(size), tuple(center), tuple(rotation), region=region, hole=hole)


def cylinder(
    center: Vec3,
    height: float,
    r_bottom: float,
    r_top: float | None = None,
    region: str = "main",
    rotation: Vec3 = (0.0, 0.0, 0.0),
    segments: int = 24,
    hole: bool = False,
) -> Prim:
    """A cylinder or frustum along local z (``r_top`` defaults to ``r_bottom``; 0 makes a cone)."""
    top = r_bottom if r_top is None else r_top
    return Prim(
        "cylinder",
        (height, r_bottom, top),
        tuple(center),
        tuple(rotation),
        region=region,
        hole=hole,
        segments=segments,
    )


def sphere(
    center: Vec3, radius: float, region: str = "main", scale: Vec3 = (1.0, 1.0, 1.0), segments: int = 24
) -> Prim:
    return Prim("sphere", (radius,), tuple(center), scale=tuple(scale), region=region, segments=segments)


def torus(
    center: Vec3,
    major: float,
    minor: float,
    region: str = "main",
    rotation: Vec3 = (0.0, 0.0, 0.0),
    scale: Vec3 = (1.0, 1.0, 1.0),
    segments: int = 24,
) -> Prim:
    return Prim(
        "torus", (major, minor), tuple(center), tuple(rotation), tuple(scale), region, segments=segments
    )


def lathe(
    center: Vec3, profile: Sequence[tuple[float, float]], region: str = "main", segments: int = 32
) -> Prim:
    """A solid of revolution of the outline ``[(r, z), ...]`` (bottom to top, r > 0) about local z."""
    flat = tuple(float(x) for rz in profile for x in rz)
    return Prim("lathe", flat, tuple(center), region=region, segments=segments)


def hull(points: Sequence[Vec3], region: str = "main") -> Prim:
    """The convex hull of a few points (given in the object frame)."""
    return Prim("hull", tuple(float(x) for p in points for x in p), region=region)


# --- to manifold3d --------------------------------------------------------------------------------


def _rotation_matrix(degrees: Vec3) -> np.ndarray:  # (3, 3): Rz @ Ry @ Rx
    ax, ay, az = (math.radians(d) for d in degrees)
    cx, sx, cy, sy, cz, sz = (
        math.cos(ax),
        math.sin(ax),
        math.cos(ay),
        math.sin(ay),
        math.cos(az),
        math.sin(az),
    )
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _local_solid(p: Prim) -> m3.Manifold:
    """The primitive centred at the origin, before scale / rotation / translation."""
    s = p.size
    if p.kind == "box":
        return m3.Manifold.cube(s, True)
    if p.kind == "cylinder":
        return m3.Manifold.cylinder(s[0], s[1], s[2], p.segments, True)
    if p.kind == "sphere":
        return m3.Manifold.sphere(s[0], p.segments)
    if p.kind == "torus":
        ring = m3.CrossSection.circle(s[1], max(p.segments // 2, 8)).translate((s[0], 0.0))
        return m3.Manifold.revolve(ring, p.segments)
    if p.kind == "lathe":
        rz = np.asarray(s, dtype=np.float64).reshape(-1, 2)
        outline = np.concatenate([[[0.0, rz[0, 1]]], rz, [[0.0, rz[-1, 1]]]])  # close on the axis
        return m3.Manifold.revolve(m3.CrossSection([outline]), p.segments)
    if p.kind == "hull":
        return m3.Manifold.hull_points(np.asarray(s, dtype=np.float64).reshape(-1, 3))
    raise ValueError(f"unknown primitive kind {p.kind!r}")


def prim_solid(p: Prim) -> m3.Manifold:
    """The primitive as a manifold3d solid in the object frame."""
    solid = _local_solid(p)
    if p.kind == "hull":
        return solid
    m = np.zeros((3, 4))
    m[:, :3] = _rotation_matrix(p.rotation) @ np.diag(p.scale)
    m[:, 3] = p.center
    return solid.transform(m)


def _union(solids: list[m3.Manifold]) -> m3.Manifold:
    if not solids:
        return m3.Manifold()
    return m3.Manifold.batch_boolean(solids, m3.OpType.Add)


def drop_slivers(solid: m3.Manifold, rel: float = 1e-3, eps: float = 1e-7) -> m3.Manifold:
    """Remove the near-zero-volume pieces booleans leave where two regions' surfaces touch."""
    pieces = solid.decompose()
    keep = [p for p in pieces if p.volume() > max(eps, rel * solid.volume())]
    return solid if len(keep) == len(pieces) else _union(keep)


def whole_solid(prims: Sequence[Prim]) -> m3.Manifold:
    """The union of every primitive minus the holes: the object as one solid."""
    holes = _union([prim_solid(p) for p in prims if p.hole])
    return drop_slivers(_union([prim_solid(p) for p in prims if not p.hole]) - holes)


def region_solids(prims: Sequence[Prim], regions: Sequence[str]) -> dict[str, m3.Manifold]:
    """One disjoint watertight solid per region (empty regions are dropped), in ``regions`` order."""
    holes = _union([prim_solid(p) for p in prims if p.hole])
    taken = m3.Manifold()
    out: dict[str, m3.Manifold] = {}
    for name in regions:
        solid = _union([prim_solid(p) for p in prims if p.region == name and not p.hole])
        solid = drop_slivers(solid - holes - taken)
        if not solid.is_empty():
            out[name] = solid
            taken = taken + solid
    return out


def manifold_to_trimesh(solid: m3.Manifold) -> trimesh.Trimesh:
    """A watertight trimesh of the solid (vertices float64, faces int64, no processing)."""
    mesh = solid.to_mesh()
    vertices = np.asarray(mesh.vert_properties, dtype=np.float64)[:, :3]
    faces = np.asarray(mesh.tri_verts, dtype=np.int64)
    return trimesh.Trimesh(vertices, faces, process=False)
