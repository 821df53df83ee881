"""FBX, Collada, 3DS and glTF 1.0 through the Open Asset Import Library (assimp-py, assimp 5.4).

The result is a trimesh scene like the one trimesh itself returns for glTF / OBJ, so both paths share the
validation, flattening and colour handling of ``load.py``. assimp is C++ and may crash on malformed input,
so ``load.py`` calls :func:`import_scene` only inside a child process; the function also changes the
working directory for the call (assimp 5.4's glTF 1.0 reader recognises a file only when it is named
without a folder).
assimp-py does not expose embedded textures: glTF 1.0 ones are found by ``gltf.gltf1_embedded_images``,
binary FBX ones (``Video`` content) by ``fbx.embedded_images``; a part whose embedded texture is not found
or does not decode keeps its material colour, with a warning.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import PIL.Image
import trimesh

from triflow3d.assets import fbx
from triflow3d.errors import AssetError

ASSIMP_EXTENSIONS: tuple[str, ...] = (".fbx", ".dae", ".3ds")
_DIFFUSE, _BASE_COLOR = 1, 12  # aiTextureType values: the first texture of either is the colour map


def _flags(assimp_py) -> int:
    return (
        assimp_py.Process_Triangulate  # polygons -> triangles
        | assimp_py.Process_SortByPType  # points and lines split off into meshes of their own
        | assimp_py.Process_ValidateDataStructure  # a malformed scene is an error, not garbage
    )


def _image(name: str, resolver, notes: list[str], material: str, embedded: dict) -> PIL.Image.Image | None:
    """A material's texture: the copy the file embeds, else the file it names below the asset's folder.

    A missing or undecodable file is recorded by the resolver (and reported by load.py).
    """
    if material in embedded:  # FBX names the original file, glTF 1.0 "*N"; the file holds the image
        try:
            image = PIL.Image.open(io.BytesIO(embedded[material]))
            image.load()
            return image
        except Exception:
            notes.append(
                f"embedded texture of material {material!r} cannot be decoded; "
                "the part keeps its material colour"
            )
            return None
    if name.startswith("*"):
        notes.append(
            f"embedded texture {name} of material {material!r} was not found in the file; "
            "the part keeps its material colour"
        )
        return None
    try:
        image = PIL.Image.open(io.BytesIO(resolver.get(name)))
        image.load()
        return image
    except Exception:  # missing or undecodable: recorded by the resolver, reported by load.py
        return None


def _color_texture(mat: dict) -> str | None:
    """The name of a material's colour map (base colour, else diffuse), as assimp gives it."""
    textures = mat.get("TEXTURES") or {}
    names = textures.get(_BASE_COLOR) or textures.get(_DIFFUSE) or []
    return str(names[0]) if names else None


def _fbx_embedded(path: Path, notes: list[str]) -> dict[str, bytes]:
    """{material: image bytes} embedded in an FBX file; {} (with a note) when the file cannot be scanned."""
    try:
        return fbx.embedded_images(path)
    except AssetError as e:
        notes.append(f"embedded textures not searched ({e.reason})")
        return {}


def _material(
    mat: dict, resolver, notes: list[str], embedded: dict
) -> trimesh.visual.material.SimpleMaterial:
    """assimp material properties -> a SimpleMaterial (diffuse colour with opacity, colour texture)."""
    name = str(mat.get("NAME", ""))
    color = [float(c) for c in (mat.get("COLOR_BASE") or mat.get("COLOR_DIFFUSE") or [1.0, 1.0, 1.0])]
    rgba = np.clip(np.nan_to_num([*color[:3], color[3] if len(color) > 3 else 1.0], nan=1.0), 0.0, 1.0)
    opacity = mat.get("OPACITY")
    if isinstance(opacity, (int, float)) and 0.0 < opacity < 1.0:
        rgba[3] *= opacity
    elif opacity == 0.0:  # exporters often write 0 where they mean "no transparency"
        notes.append(f"material {name!r} has opacity 0; treated as opaque")
    texture = _color_texture(mat)
    image = _image(texture, resolver, notes, name, embedded) if texture is not None else None
    return trimesh.visual.material.SimpleMaterial(image=image, diffuse=rgba, name=name)


def _geometry(mesh, material) -> trimesh.Trimesh | None:
    """One assimp mesh -> a trimesh mesh with uv / vertex colours; None for point and line meshes."""
    # np.array copies: assimp-py's memoryviews die with its scene
    indices = np.array(mesh.indices, dtype=np.int64)
    if mesh.num_faces == 0 or len(indices) != 3 * mesh.num_faces:
        return None
    vertices = np.array(mesh.vertices, dtype=np.float32).reshape(-1, 3)  # (V, 3)
    normals = np.array(mesh.normals, dtype=np.float32).reshape(-1, 3) if mesh.normals else None
    out = trimesh.Trimesh(vertices, indices.reshape(-1, 3), vertex_normals=normals, process=False)
    uv = None
    if mesh.texcoords and mesh.texcoords[0] is not None:
        uv = np.array(mesh.texcoords[0], dtype=np.float32).reshape(len(vertices), -1)[:, :2]  # (V, 2), v up
    out.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    if mesh.colors and mesh.colors[0] is not None:
        out.visual.vertex_attributes["color"] = np.array(mesh.colors[0], np.float32).reshape(-1, 4)
    return out


def import_scene(path: Path, resolver, notes: list[str], embedded: dict | None = None) -> trimesh.Scene:
    """Import ``path`` with assimp into a trimesh scene (node transforms and instancing kept).

    ``embedded``: {material name: image bytes} for textures the caller found inside the file; for FBX,
    when None, they are looked up here (only when a material has a colour texture).
    """
    try:
        import assimp_py
    except ImportError:
        raise AssetError(
            path, f"reading {path.suffix} files needs the assimp-py package", "unsupported format"
        ) from None
    path, cwd = path.resolve(), os.getcwd()
    os.chdir(path.parent)
    try:
        scene = assimp_py.import_file(path.name, _flags(assimp_py))
    except Exception as e:
        reason = str(e).replace(f"'{path.name}'", "the file")[:300]
        if "No suitable reader" in reason and path.suffix.lower() in (".gltf", ".glb"):
            reason = "not readable as glTF 1.0; a buffer it references may be missing or short"
        raise AssetError(path, f"could not parse the file (assimp: {reason})", "unreadable") from None
    finally:
        os.chdir(cwd)
    if embedded is None and path.suffix.lower() == ".fbx" and any(map(_color_texture, scene.materials)):
        embedded = _fbx_embedded(path, notes)
    materials = [_material(m, resolver, notes, embedded or {}) for m in scene.materials]
    geometry = {}
    for i, mesh in enumerate(scene.meshes):
        if 0 <= mesh.material_index < len(materials):
            g = _geometry(mesh, materials[mesh.material_index])
            if g is not None:
                geometry[i] = (f"{i}:{mesh.name}", g)
    return _scene(scene.root_node, geometry)


def _scene(root, geometry: dict[int, tuple[str, trimesh.Trimesh]]) -> trimesh.Scene:
    """Walk assimp's node tree (row-major 4x4 transforms, parent @ child) into a trimesh scene graph."""
    out = trimesh.Scene()
    stack = [(root, np.eye(4))]
    while stack:
        node, parent = stack.pop()
        matrix = parent @ np.array(node.transformation, dtype=np.float64)
        for i in node.mesh_indices:
            if i not in geometry:
                continue
            name, mesh = geometry[i]
            node_name = f"{node.name}#{len(out.graph.nodes)}"
            if name in out.geometry:  # another instance of the same mesh
                out.graph.update(
                    frame_from=out.graph.base_frame, frame_to=node_name, matrix=matrix, geometry=name
                )
            else:
                out.add_geometry(mesh, geom_name=name, node_name=node_name, transform=matrix)
        stack += [(child, matrix) for child in reversed(node.children)]
    return out
