"""CPU ray-caster backend: embreex (Embree) + numpy, no GL needed.

Same shading model as the rasteriser (:mod:`triflow3d.render`). RGBA is supersampled (``ss`` x ``ss``
rays per pixel, averaged as premultiplied linear colour); depth, normal and mask come from one ray
through each pixel centre, exactly the rays of :func:`triflow3d.cameras.pixel_rays`. Textures are
sampled bilinearly with repeat wrapping (no mipmaps). Also the test oracle for camera conventions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from embreex import rtcore_scene
from embreex.mesh_construction import TriangleMesh

from triflow3d.assets.types import Asset, MeshPart
from triflow3d.cameras import Rig, pixel_rays
from triflow3d.conventions import srgb_to_linear
from triflow3d.render import shading as R

MAX_LAYERS = 8  # see-through (alpha < cutoff) surfaces a ray may pass before it gives up
_EPS = 1e-4  # ray restart offset past a see-through surface


@dataclass(frozen=True)
class _Hits:
    """Nearest opaque hits of M rays (only rays that hit are listed)."""

    ray: np.ndarray  # (H,) int, index of the ray
    t: np.ndarray  # (H,) distance along the (unit) ray direction
    albedo: np.ndarray  # (H, 4) linear RGBA
    normal: np.ndarray  # (H, 3) unit world normal, facing the ray origin


class _Scene:
    """All parts of an asset concatenated into one embree mesh plus per-vertex / per-face attributes."""

    def __init__(self, parts: list[MeshPart]):
        offsets = np.cumsum([0] + [len(p.vertices) for p in parts])
        self.vertices = np.concatenate([p.vertices for p in parts]).astype(np.float64)
        self.faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=False)]).astype(
            np.int64
        )
        self.face_part = np.concatenate([np.full(len(p.faces), i) for i, p in enumerate(parts)])
        self.normals = np.concatenate([_or(p.normals, (len(p.vertices), 3), 0.0) for p in parts])
        self.uv = np.concatenate(
            [_or(p.uv if p.has_texture else None, (len(p.vertices), 2), 0.0) for p in parts]
        )
        colors = np.concatenate([_or(p.vertex_colors, (len(p.vertices), 4), 1.0) for p in parts])
        self.colors = np.concatenate([srgb_to_linear(colors[:, :3]), colors[:, 3:]], axis=1)
        self.base = np.array([_linear_rgba(p.base_color) for p in parts], dtype=np.float32)  # (P, 4)
        self.textures = [_linear_texture(p.texture) if p.has_texture else None for p in parts]
        tri = self.vertices[self.faces]  # (F, 3, 3)
        self.face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # unnormalised is fine
        self.embree = rtcore_scene.EmbreeScene()
        TriangleMesh(
            scene=self.embree, vertices=self.vertices.astype(np.float32), indices=self.faces.astype(np.int32)
        )

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> _Hits:
        """Nearest hits whose material alpha passes the cutoff (restarting past see-through ones)."""
        active = np.arange(len(origins))
        start = np.zeros(len(origins))  # distance already travelled by each ray
        found: list[tuple] = []
        for _ in range(MAX_LAYERS):
            o = (origins[active] + dirs[active] * start[active, None]).astype(np.float32)
            res = self.embree.run(o, dirs[active].astype(np.float32), output=1)
            hit = res["primID"] >= 0
            ray, tri = active[hit], res["primID"][hit].astype(np.int64)
            u, v = res["u"][hit].astype(np.float64), res["v"][hit].astype(np.float64)
            bary = np.stack([1.0 - u - v, u, v], axis=1)  # (H, 3) weights of the triangle's corners
            t = start[ray] + res["tfar"][hit]
            albedo = self._albedo(tri, bary)
            keep = albedo[:, 3] >= R.ALPHA_CUTOFF
            found.append(
                (ray[keep], t[keep], albedo[keep], self._normal(tri[keep], bary[keep], dirs[ray[keep]]))
            )
            start[ray[~keep]] = t[~keep] + _EPS
            active = ray[~keep]
            if len(active) == 0:
                break
        return _Hits(*(np.concatenate(x) for x in zip(*found, strict=True)))

    def _albedo(self, tri: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """(H,) faces + (H, 3) barycentrics -> (H, 4) linear base * vertex colour * texture."""
        corners = self.faces[tri]  # (H, 3)
        albedo = np.einsum("hk,hkc->hc", bary, self.colors[corners]) * self.base[self.face_part[tri]]
        for i, tex in enumerate(self.textures):
            sel = np.flatnonzero(self.face_part[tri] == i) if tex is not None else []
            if len(sel):
                uv = np.einsum("hk,hkc->hc", bary[sel], self.uv[corners[sel]])
                albedo[sel] *= sample_bilinear(tex, uv)
        return albedo.astype(np.float32)

    def _normal(self, tri: np.ndarray, bary: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Interpolated vertex normals where the part has them, else the face normal; facing the ray."""
        n = np.einsum("hk,hkc->hc", bary, self.normals[self.faces[tri]])
        flat = np.linalg.norm(n, axis=1) < 1e-6
        n[flat] = self.face_normals[tri[flat]]
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return np.where(np.einsum("ij,ij->i", n, dirs)[:, None] > 0, -n, n)


class RaycastRenderer:
    """Renders assets by casting ``ss * ss`` rays per pixel for colour and one per pixel for geometry."""

    name = "raycast"

    def __init__(self, supersample: int = 2):
        self.ss = supersample

    def render(self, asset: Asset, rig: Rig, size: int) -> R.RenderOutput:
        parts = [p for p in asset.parts if len(p.faces) > 0]
        n = len(rig)
        rgba = np.zeros((n, size, size, 4), np.float32)
        depth = np.zeros((n, size * size), np.float32)
        normal = np.zeros((n, size * size, 3), np.float32)
        if parts:
            scene = _Scene(parts)
            for v in range(n):
                rgba[v] = self._color(scene, rig, v, size)
                depth[v], normal[v] = self._geometry(scene, rig, v, size)
        mask = depth.reshape(n, size, size) > 0
        return R.RenderOutput(
            rgba=R.finish_rgba(rgba),
            depth=depth.reshape(n, size, size),
            normal=normal.reshape(n, size, size, 3),
            mask=mask,
        )

    def _color(self, scene: _Scene, rig: Rig, v: int, size: int) -> np.ndarray:
        """Premultiplied linear RGBA (S, S, 4), averaged over ss x ss sub-pixel rays."""
        s = size * self.ss
        origins, dirs = _rays(rig, v, s)
        hits = scene.cast(origins, dirs)
        axis = -rig.c2w[v, :3, 2].double().numpy()  # headlight along the viewing axis
        shade = R.AMBIENT + R.DIFFUSE * np.abs(hits.normal @ axis)
        out = np.zeros((s * s, 4), np.float32)
        out[hits.ray, :3] = hits.albedo[:, :3] * shade[:, None]
        out[hits.ray, 3] = 1.0
        return out.reshape(size, self.ss, size, self.ss, 4).mean(axis=(1, 3))

    def _geometry(self, scene: _Scene, rig: Rig, v: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """View-axis depth (S*S,) and world normals (S*S, 3) at pixel centres (0 where empty)."""
        origins, dirs = _rays(rig, v, size)
        hits = scene.cast(origins, dirs)
        depth = np.zeros(size * size, np.float32)
        normal = np.zeros((size * size, 3), np.float32)
        axis = -rig.c2w[v, :3, 2].double().numpy()
        depth[hits.ray] = hits.t * (dirs[hits.ray] @ axis)
        normal[hits.ray] = hits.normal
        return depth, normal


def _rays(rig: Rig, v: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre rays of an S x S image of camera ``v``: origins, unit directions (S*S, 3) float64."""
    c2w = rig.c2w[v : v + 1].double()
    o, d = pixel_rays(c2w, rig.intrinsics[:1].double(), size)
    return o[0].numpy(), d[0].numpy()


def sample_bilinear(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """(H, W, C) texture, (M, 2) uv with v = 0 the top row -> (M, C), bilinear with repeat wrapping."""
    h, w = texture.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = uv[:, 1] * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    x0, y0 = x0 % w, y0 % h
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _or(x: np.ndarray | None, shape: tuple[int, int], fill: float) -> np.ndarray:
    return np.full(shape, fill, np.float32) if x is None else np.asarray(x, np.float32)


def _linear_rgba(c: tuple[float, float, float, float]) -> np.ndarray:
    return np.concatenate([srgb_to_linear(np.asarray(c[:3])), [c[3]]]).astype(np.float32)


def _linear_texture(image: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 sRGB -> (H, W, 4) float32 linear rgb + alpha."""
    lut = srgb_to_linear(np.arange(256) / 255.0)
    return np.concatenate([lut[image[..., :3]], image[..., 3:] / np.float32(255.0)], axis=-1).astype(
        np.float32
    )
