"""Rasterising a vertex-coloured trimesh (an extracted or generated mesh) with the asset renderers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import trimesh

from triflow3d.assets.types import Asset, MeshPart

if TYPE_CHECKING:
    from triflow3d.cameras import Rig


def vertex_colors01(mesh: trimesh.Trimesh) -> np.ndarray:
    """(V, 4) float32 in [0, 1] (white when the mesh has no vertex colours)."""
    if mesh.visual.kind != "vertex":
        return np.ones((len(mesh.vertices), 4), np.float32)
    return np.asarray(mesh.visual.vertex_colors, np.float32) / 255.0


def mesh_part(mesh: trimesh.Trimesh) -> MeshPart:
    """A vertex-coloured trimesh as an asset part (for the renderers and the asset writers)."""
    return MeshPart(
        vertices=np.asarray(mesh.vertices, np.float32), faces=np.asarray(mesh.faces, np.int64),
        vertex_colors=vertex_colors01(mesh), name="generated",
    )  # fmt: skip


def render_mesh(mesh: trimesh.Trimesh, rig: Rig, size: int, backend: str = "auto") -> np.ndarray:
    """Rasterise a vertex-coloured mesh from every camera of ``rig`` -> uint8 (N, S, S, 3) on white."""
    if len(mesh.faces) == 0:
        return np.full((len(rig), size, size, 3), 255, np.uint8)
    from triflow3d.render import make_renderer

    out = make_renderer(backend).render(Asset((mesh_part(mesh),)), rig, size).rgb_on_white()
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
