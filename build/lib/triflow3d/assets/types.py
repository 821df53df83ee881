"""The in-memory 3D asset every stage exchanges: a list of coloured / textured triangle meshes.

Colours are sRGB in [0, 1] (as stored in glTF / OBJ files); renderers convert to linear for shading.
Vertices are in world units of the z-up frame of :mod:`triflow3d.conventions` once loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class MeshPart:
    """One triangle mesh with one material.

    The colour of a surface point is ``base_color * vertex_color * texture(uv)`` (each factor
    optional, RGBA, sRGB in [0, 1]).
    """

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int64, indices into vertices
    normals: np.ndarray | None = None  # (V, 3) float32 unit vertex normals
    vertex_colors: np.ndarray | None = None  # (V, 4) float32 in [0, 1]
    uv: np.ndarray | None = None  # (V, 2) float32, glTF convention: v = 0 is the top row of the image
    texture: np.ndarray | None = None  # (H, W, 4) uint8 RGBA, row 0 = top of the image
    base_color: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    name: str = ""

    @property
    def has_texture(self) -> bool:
        return self.texture is not None and self.uv is not None

    def transformed(self, matrix: np.ndarray) -> MeshPart:
        """Apply a 4x4 similarity transform (rotation, uniform scale, translation)."""
        m = np.asarray(matrix, dtype=np.float64)
        v = self.vertices.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
        n = None
        if self.normals is not None:
            n = self.normals.astype(np.float64) @ np.linalg.inv(m[:3, :3])
            n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            n = n.astype(np.float32)
        return replace(self, vertices=v.astype(np.float32), normals=n)


@dataclass(frozen=True)
class Asset:
    """A loaded 3D object: its parts and where it came from."""

    parts: tuple[MeshPart, ...]
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_faces(self) -> int:
        return int(sum(len(p.faces) for p in self.parts))

    @property
    def num_vertices(self) -> int:
        return int(sum(len(p.vertices) for p in self.parts))

    def all_vertices(self) -> np.ndarray:  # (sum V, 3)
        return np.concatenate([p.vertices for p in self.parts], axis=0)

    def bounds(self) -> np.ndarray:  # (2, 3): min, max
        v = self.all_vertices()
        return np.stack([v.min(axis=0), v.max(axis=0)])

    def transformed(self, matrix: np.ndarray) -> Asset:
        return replace(self, parts=tuple(p.transformed(matrix) for p in self.parts))
