"""Write :class:`Asset` objects to files: GLB (Y-up glTF 2.0), OBJ (Y-up) and PLY (z-up), atomically.

GLB keeps every colour factor of a part: ``baseColorFactor``, vertex colours (``COLOR_0``, 8-bit) and
a base-colour texture (PNG) with ``TEXCOORD_0``. glTF is Y-up, so world (x, y, z) is written as file
(x, z, -y); :func:`triflow3d.assets.load.load_asset` maps it back. Colours are stored with 8 bits, so
they round-trip exactly when they are multiples of 1/255 (the shape generator quantises to that).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import trimesh
from trimesh.visual.material import PBRMaterial
from trimesh.visual.texture import TextureVisuals

from triflow3d.assets.types import Asset, MeshPart
from triflow3d.errors import AssetError
from triflow3d.utils.io import atomic_path

# World (x, y, z) -> Y-up file (x, z, -y): -90 degrees about +x; the inverse of the loader's map.
Z_UP_TO_Y_UP: np.ndarray = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
MESH_SUFFIXES: tuple[str, ...] = (".glb", ".obj", ".ply")


def _to_uint8(colors: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _material(part: MeshPart) -> PBRMaterial:
    """A non-metallic PBR material with the part's base colour factor and texture."""
    image = PIL.Image.fromarray(np.ascontiguousarray(part.texture), "RGBA") if part.has_texture else None
    return PBRMaterial(
        name=part.name or None,
        baseColorFactor=_to_uint8(part.base_color),
        baseColorTexture=image,
        metallicFactor=0.0,
        roughnessFactor=0.9,
    )


def part_to_trimesh(part: MeshPart, y_up: bool = False) -> trimesh.Trimesh:
    """One part as a trimesh with a PBR material (uv flipped to trimesh's v-up convention)."""
    rot = Z_UP_TO_Y_UP if y_up else np.eye(3)
    vertices = part.vertices.astype(np.float64) @ rot.T  # exact: a signed permutation
    normals = None if part.normals is None else part.normals.astype(np.float64) @ rot.T
    uv = None
    if part.has_texture:
        uv = part.uv.astype(np.float64).copy()
        uv[:, 1] = 1.0 - uv[:, 1]  # ours / glTF: v = 0 at the top; trimesh: v = 0 at the bottom
    visual = TextureVisuals(uv=uv, material=_material(part))
    if part.vertex_colors is not None:
        visual.vertex_attributes["color"] = _to_uint8(part.vertex_colors)
    return trimesh.Trimesh(
        vertices=vertices,
        faces=np.asarray(part.faces, dtype=np.int64),
        vertex_normals=normals,
        visual=visual,
        process=False,
        validate=False,
    )


def part_names(asset: Asset) -> list[str]:
    """Unique node / mesh names: the part's own name where it is unique, else ``<name>_<index>``."""
    names = [p.name or "part" for p in asset.parts]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def asset_to_trimesh_scene(asset: Asset, y_up: bool = False) -> trimesh.Scene:
    """A scene with one mesh per part, in the z-up world frame (``y_up=True``: glTF's file frame)."""
    scene = trimesh.Scene()
    for name, part in zip(part_names(asset), asset.parts):
        scene.add_geometry(part_to_trimesh(part, y_up), geom_name=name, node_name=name)
    return scene


def _check_asset(asset: Asset, path: Path) -> None:
    if not asset.parts:
        raise AssetError(path, "cannot write an asset with no parts")
    for part in asset.parts:
        if len(part.faces) == 0 or not np.isfinite(part.vertices).all():
            raise AssetError(path, f"part {part.name!r} is empty or has non-finite vertices")


def save_glb(asset: Asset, path: str | os.PathLike) -> Path:
    """Write ``asset`` as a binary glTF file (Y-up), atomically; returns the path."""
    out = Path(path)
    _check_asset(asset, out)
    data = asset_to_trimesh_scene(asset, y_up=True).export(file_type="glb", unitize_normals=False)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out


def _baked_colors(part: MeshPart) -> np.ndarray:  # (V, 4) float in [0, 1]
    """base colour x vertex colour x texture (nearest texel at each vertex's uv, u wrapping)."""
    c = np.tile(np.asarray(part.base_color, dtype=np.float64), (len(part.vertices), 1))
    if part.vertex_colors is not None:
        c = c * part.vertex_colors
    if part.has_texture:
        h, w = part.texture.shape[:2]
        j = np.clip((np.mod(part.uv[:, 0], 1.0) * w).astype(np.int64), 0, w - 1)
        i = np.clip((part.uv[:, 1] * h).astype(np.int64), 0, h - 1)
        c = c * part.texture[i, j].astype(np.float64) / 255.0
    return c


def _flatten(asset: Asset) -> trimesh.Trimesh:
    """All parts in one z-up mesh with colours baked per vertex."""
    meshes = [
        trimesh.Trimesh(p.vertices, p.faces, vertex_colors=_to_uint8(_baked_colors(p)), process=False)
        for p in asset.parts
    ]
    return trimesh.util.concatenate(meshes)


def save_mesh(mesh: Asset | trimesh.Trimesh, path: str | os.PathLike) -> Path:
    """Write an asset or a z-up trimesh as .glb, .obj (Y-up, vertex colours) or .ply (z-up), atomically.

    OBJ and PLY carry one colour per vertex (textures are sampled at the vertices).
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise AssetError(out, f"cannot write {suffix!r} files (supported: {', '.join(MESH_SUFFIXES)})")
    if isinstance(mesh, Asset):
        if suffix == ".glb":
            return save_glb(mesh, out)
        _check_asset(mesh, out)
        mesh = _flatten(mesh)
    elif suffix == ".glb":
        data = trimesh.Scene(mesh.copy().apply_transform(_homogeneous(Z_UP_TO_Y_UP))).export(file_type="glb")
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
        return out
    if suffix == ".obj":
        mesh = mesh.copy().apply_transform(_homogeneous(Z_UP_TO_Y_UP))
    data = mesh.export(file_type=suffix[1:])
    with atomic_path(out) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    return out


def _homogeneous(rot: np.ndarray) -> np.ndarray:  # (4, 4)
    m = np.eye(4)
    m[:3, :3] = rot
    return m
