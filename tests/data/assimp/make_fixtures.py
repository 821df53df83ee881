"""Writes the FBX / Collada / 3DS / glTF 1.0 test files in this folder with assimp's own exporters.

Each object is built here (project-made geometry, Apache-2.0 like the code), saved as the reference GLB,
and exported through assimp (impasse + the system libassimp, e.g. Debian's libassimp5):

    pip install impasse trimesh pillow && apt-get install libassimp5
    python tests/data/assimp/make_fixtures.py

The test suite only reads the files (CI has no exporter). Quirks of assimp 5.2's exporters handled here:
binary FBX export is unreadable, so FBX is ASCII; the 3DS exporter writes Y-up data into a z-up format, so
the 3DS source is rotated to z-up first; glTF 1.0 buffer URIs are written absolute, so they are made relative.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import impasse
import numpy as np
import PIL.Image
import trimesh

HERE = Path(__file__).resolve().parent
# Four colours in the quadrants of an 8 x 8 texture; each face of the shape samples one quadrant.
QUADRANTS = np.array([[[220, 40, 30], [40, 170, 60]], [[40, 80, 210], [240, 200, 40]]], np.uint8)
Y_UP_TO_Z_UP = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])


def shape() -> trimesh.Trimesh:
    """An asymmetric L: a 1 x 2 x 0.5 slab with a 0.5 cube on one end (glTF frame, Y up), unshared corners."""
    slab = trimesh.creation.box((1.0, 2.0, 0.5))
    cube = trimesh.creation.box((0.5, 0.5, 0.5))
    cube.apply_translation((0.25, 0.75, 0.5))
    mesh = trimesh.util.concatenate([slab, cube])
    corners = mesh.vertices[mesh.faces].reshape(-1, 3)
    return trimesh.Trimesh(corners, np.arange(len(corners)).reshape(-1, 3), process=False)


def textured(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Face k samples the centre of quadrant k % 4 (uv in OpenGL convention, v up)."""
    centres = np.array([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25]])
    uv = np.repeat(centres[np.arange(len(mesh.faces)) // 2 % 4], 3, axis=0)
    uv += np.tile([[-0.1, -0.1], [0.1, -0.1], [0.0, 0.1]], (len(mesh.faces), 1))
    image = PIL.Image.fromarray(QUADRANTS.repeat(4, 0).repeat(4, 1))
    material = trimesh.visual.material.SimpleMaterial(image=image, diffuse=(255, 255, 255, 255))
    out = mesh.copy()
    out.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return out


def colored(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Vertex colours by height: a gradient across the shape."""
    t = (mesh.vertices[:, 1] - mesh.vertices[:, 1].min()) / np.ptp(mesh.vertices[:, 1])
    rgb = np.stack([0.9 - 0.7 * t, 0.2 + 0.6 * t, 0.3 + 0.0 * t], axis=1)
    out = mesh.copy()
    out.visual = trimesh.visual.ColorVisuals(
        out, vertex_colors=np.round(np.c_[rgb, np.ones(len(t))] * 255).astype(np.uint8)
    )
    return out


def export(mesh: trimesh.Trimesh, name: str, formats: list[tuple[str, str]]) -> None:
    """Write the mesh as OBJ (+MTL, PNG) or PLY in a scratch folder, import it with assimp, export each format."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / (
            "src.obj" if isinstance(mesh.visual, trimesh.visual.TextureVisuals) else "src.ply"
        )
        mesh.export(source)
        scene = impasse.load(str(source))
        for fmt, suffix in formats:
            impasse.export(scene, str(HERE / f"{name}{suffix}"), fmt)
        for png in Path(tmp).glob("*.png"):  # the OBJ's texture, which the exports reference by name
            (HERE / png.name).write_bytes(png.read_bytes())


def main() -> None:
    os.chdir(HERE)
    base = shape()
    tex, col = textured(base), colored(base)
    tex.export(HERE / "textured.glb")
    col.export(HERE / "colored.glb")
    export(tex, "textured", [("fbxa", ".fbx"), ("collada", ".dae"), ("gltf", ".gltf")])
    export(col, "colored", [("fbxa", ".fbx"), ("collada", ".dae")])
    export(textured(base.copy().apply_transform(Y_UP_TO_Z_UP)), "textured", [("3ds", ".3ds")])
    for gltf in HERE.glob("*.gltf"):  # assimp writes absolute buffer URIs
        tree = json.loads(gltf.read_text())
        for buffer in tree.get("buffers", {}).values():
            buffer["uri"] = Path(buffer["uri"]).name
        gltf.write_text(json.dumps(tree, indent=1))


if __name__ == "__main__":
    main()
