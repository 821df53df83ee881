"""Load 3D files into world-space :class:`Asset` parts.

glTF 2.0 / GLB, OBJ+MTL, PLY, STL and OFF are read by trimesh (glTF extensions prepared by ``gltf.py``);
FBX, Collada, 3DS and glTF 1.0 by assimp (``assimp.py``), always in a child process. Every
problem with the input raises :class:`~triflow3d.errors.AssetError` naming the file, the reason and its
kind; the parsers' assorted exceptions never escape. ``load_asset_isolated`` adds a per-file time limit
by loading in a child process. See ``docs/assets.md``.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import re
import struct
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import trimesh
from trimesh.resolvers import FilePathResolver

from triflow3d.assets import assimp, gltf
from triflow3d.assets.types import Asset, MeshPart
from triflow3d.errors import AssetError, ConfigError

TRIMESH_EXTENSIONS: tuple[str, ...] = (".glb", ".gltf", ".obj", ".off", ".ply", ".stl")
SUPPORTED_EXTENSIONS: tuple[str, ...] = TRIMESH_EXTENSIONS + assimp.ASSIMP_EXTENSIONS
# assimp hands every format it reads over Y-up (it rotates Collada's and 3DS's z-up itself)
Y_UP_EXTENSIONS: frozenset[str] = frozenset({".glb", ".gltf", ".obj", *assimp.ASSIMP_EXTENSIONS})
# Common formats we refuse, with what to do instead.
_REFUSED_HINTS: dict[str, str] = {
    ".blend": "export it to glTF 2.0 from Blender",
    ".usd": "convert it to glTF 2.0 (e.g. usd2gltf, Blender)",
    ".usdz": "convert it to glTF 2.0 (e.g. usd2gltf, Blender)",
    ".usda": "convert it to glTF 2.0 (e.g. usd2gltf, Blender)",
    ".usdc": "convert it to glTF 2.0 (e.g. usd2gltf, Blender)",
    ".max": "export it to FBX or glTF from 3ds Max",
    ".ma": "export it to FBX or glTF from Maya",
    ".mb": "export it to FBX or glTF from Maya",
    ".c4d": "export it to FBX or glTF from Cinema 4D",
    ".abc": "Alembic caches are animations; export a frame to glTF",
    ".step": "CAD files need tessellating first (e.g. export STL or glTF)",
    ".stp": "CAD files need tessellating first (e.g. export STL or glTF)",
    ".iges": "CAD files need tessellating first (e.g. export STL or glTF)",
}
# File (X, Y, Z) of a Y-up file -> our z-up world (X, -Z, Y): +90 deg about +x.
Y_UP_TO_Z_UP: np.ndarray = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
DEFAULT_MAX_BYTES: int = 512 * 2**20
DEFAULT_MAX_FACES: int = 2_000_000
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".tif", ".tiff", ".webp", ".gif")

UpAxis = Literal["auto", "y", "z"]


class _Resolver(FilePathResolver):
    """Resolves referenced files below the asset's folder, recording what is missing or unreadable.

    Windows paths (``.\\tex.png``, ``C:\\x\\tex.png``) become ``/`` paths; the base class then also
    tries the basename. Reads beyond ``budget`` bytes in total fail (and are recorded).
    """

    def __init__(self, source: Path, budget: int):
        super().__init__(str(source))
        self.budget, self.missing, self.unreadable, self.over_budget = budget, [], [], False

    def get(self, name: str) -> bytes:
        clean = str(name).replace("\\", "/")
        try:
            data = super().get(clean)
        except Exception:
            self.missing.append(str(name))
            raise
        self.budget -= len(data)
        if self.budget < 0:
            self.over_budget = True
            raise OSError(f"referenced files exceed the byte limit at {name!r}")
        if clean.lower().endswith(_IMAGE_SUFFIXES) and not _is_image(data):
            self.unreadable.append(str(name))
        return _utf8(data) if clean.lower().endswith(".mtl") else data


def _utf8(data: bytes) -> bytes:
    """Text files that are not UTF-8 (often Latin-1 comments) as UTF-8: trimesh would otherwise need
    the optional charset_normalizer and silently drop MTL files."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("latin-1").encode("utf-8")


def _is_image(data: bytes) -> bool:
    try:
        with PIL.Image.open(io.BytesIO(data)):
            return True
    except Exception:
        return False


# --- file-level checks ----------------------------------------------------------------------------


def _check_file(path: Path, max_bytes: int) -> int:
    """Existence, extension and size checks; returns the file size in bytes."""
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        hint = f"; {_REFUSED_HINTS[ext]}" if ext in _REFUSED_HINTS else ""
        raise AssetError(
            path,
            f"unsupported file type {path.suffix!r}{hint} (supported: {', '.join(SUPPORTED_EXTENSIONS)})",
            "unsupported format",
        )
    if not path.is_file():
        raise AssetError(path, "no such file", "missing file")
    size = path.stat().st_size
    if size == 0:
        raise AssetError(path, "empty file", "unreadable")
    if size > max_bytes:
        raise AssetError(path, f"file is {size} bytes, over the limit of {max_bytes} bytes", "too large")
    return size


def _resolve_up_axis(path: Path, up_axis: str) -> str:
    if up_axis not in ("auto", "y", "z"):
        raise ConfigError(f"up_axis must be 'auto', 'y' or 'z', got {up_axis!r}")
    if up_axis == "auto":
        return "y" if path.suffix.lower() in Y_UP_EXTENSIONS else "z"
    return up_axis


# --- trimesh scene -> parts -------------------------------------------------------------------------


def _load_scene(
    path: Path, resolver: _Resolver, notes: list[str], source: bytes | None = None, **kwargs
) -> trimesh.Scene:
    """trimesh's scene of ``path`` (or of ``source``, its rewritten bytes); extension trouble -> ``notes``."""
    ext = path.suffix.lower()
    if source is None and ext in (".obj", ".off"):  # text formats: make sure trimesh gets UTF-8
        raw = path.read_bytes()
        text = _utf8(raw)
        source = None if text is raw else text
    try:
        with np.errstate(all="ignore"), gltf.trimesh_log() as logged:
            scene = trimesh.load(
                str(path) if source is None else io.BytesIO(source),
                file_type=ext[1:],
                force="scene",
                process=False,
                resolver=resolver,
                **kwargs,
            )
    except Exception as e:
        if resolver.over_budget:
            raise AssetError(
                path, "the file and the files it references exceed the byte limit", "too large"
            ) from None
        if resolver.missing:
            raise AssetError(
                path, f"missing referenced file(s): {', '.join(resolver.missing)}", "missing file"
            ) from None
        if isinstance(e, ImportError):  # trimesh wanted an optional package to guess a text encoding
            raise AssetError(
                path, "could not parse the file (neither valid binary nor text)", "unreadable"
            ) from None
        raise AssetError(
            path, f"could not parse the file ({type(e).__name__}: {str(e)[:200]})", "unreadable"
        ) from None
    notes += gltf.check_decoded(path, logged)
    if not isinstance(scene, trimesh.Scene):
        raise AssetError(path, f"the loader returned {type(scene).__name__}, not a scene", "unreadable")
    return scene


def _has_triangles(path: Path, name: str, mesh: trimesh.Trimesh) -> bool:
    """Validate one geometry right after loading; False when it has no triangles at all."""
    faces, vertices = np.asarray(mesh.faces), np.asarray(mesh.vertices)
    if faces.size == 0:
        return False
    if faces.ndim != 2 or faces.shape[1] != 3 or vertices.ndim != 2 or vertices.shape[1] != 3:
        raise AssetError(
            path, f"geometry {name!r} has faces {faces.shape} / vertices {vertices.shape}", "invalid geometry"
        )
    if faces.min() < 0 or faces.max() >= len(vertices):
        lo, hi = int(faces.min()), int(faces.max())
        raise AssetError(
            path,
            f"face indices [{lo}, {hi}] out of range for {len(vertices)} vertices in {name!r}",
            "invalid geometry",
        )
    if not np.isfinite(vertices).all():
        raise AssetError(path, f"non-finite (NaN or inf) vertex coordinates in {name!r}", "invalid geometry")
    return True


def _rgba(colors: object, count: int) -> np.ndarray | None:  # -> (count, 4) float32 in [0, 1]
    c = np.asarray(colors)
    if c.ndim != 2 or len(c) != count or c.shape[1] not in (3, 4):
        return None
    if np.issubdtype(c.dtype, np.integer):
        c = c / float(np.iinfo(c.dtype).max)
    c = np.nan_to_num(c.astype(np.float32), nan=1.0)
    if c.shape[1] == 3:
        c = np.concatenate([c, np.ones((count, 1), np.float32)], axis=1)
    return np.clip(c, 0.0, 1.0)


def _factor(color: object) -> tuple[float, float, float, float]:
    """A material colour (uint8 or float RGB(A)) -> float RGBA in [0, 1]; white when absent."""
    c = np.asarray(color if color is not None else []).reshape(-1)
    if c.size not in (3, 4):
        return (1.0, 1.0, 1.0, 1.0)
    c = c / float(np.iinfo(c.dtype).max) if np.issubdtype(c.dtype, np.integer) else c.astype(np.float64)
    c = np.clip(np.nan_to_num(c, nan=1.0), 0.0, 1.0)
    return (*(float(x) for x in c[:3]), float(c[3]) if c.size == 4 else 1.0)


def _vertex_normals(mesh: trimesh.Trimesh) -> np.ndarray:  # (V, 3) float32, zero where undefined
    with np.errstate(all="ignore"):
        n = np.asarray(mesh.vertex_normals, dtype=np.float64)
    if n.shape != (len(mesh.vertices), 3):
        n = np.zeros((len(mesh.vertices), 3))
    n = np.nan_to_num(n, nan=0.0, posinf=0.0, neginf=0.0)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(length > 1e-12, n / np.maximum(length, 1e-12), 0.0).astype(np.float32)


def _unmerge_face_colors(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, np.ndarray | None]:
    """Per-face colours become vertex colours on a mesh whose faces own their three corners."""
    colors = _rgba(mesh.visual.face_colors, len(mesh.faces))
    faces = np.asarray(mesh.faces)
    flat = trimesh.Trimesh(
        np.asarray(mesh.vertices)[faces].reshape(-1, 3), np.arange(faces.size).reshape(-1, 3), process=False
    )
    return flat, None if colors is None else np.repeat(colors, 3, axis=0)


def _texture_image(image: object, problems: list[str], name: str) -> np.ndarray | None:
    """PIL image -> (H, W, 4) uint8 RGBA; a broken image is recorded in ``problems``."""
    if image is None:
        return None
    try:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)
    except Exception as e:
        problems.append(f"texture of {name!r} cannot be decoded ({type(e).__name__})")
        return None
    return np.ascontiguousarray(rgba) if rgba.ndim == 3 and rgba.shape[2] == 4 and rgba.size else None


def _material(visual: object, count: int, problems: list[str], name: str) -> tuple:
    """(uv (V, 2) in our v-down convention or None, texture or None, base colour, vertex colours or None)."""
    material = getattr(visual, "material", None)
    colors = _rgba(getattr(visual, "vertex_attributes", {}).get("color"), count)
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        image, base = material.baseColorTexture, _factor(material.baseColorFactor)
    elif isinstance(material, trimesh.visual.material.SimpleMaterial):
        image, base = material.image, _factor(material.diffuse)
        if image is not None:  # like Blender's MTL importer: map_Kd replaces Kd (the alpha is kept)
            base = (1.0, 1.0, 1.0, base[3])
    else:
        return None, None, (1.0, 1.0, 1.0, 1.0), colors
    uv = getattr(visual, "uv", None)
    texture = _texture_image(image, problems, name)
    if texture is None or uv is None or np.shape(uv)[0] != count or np.ndim(uv) != 2:
        return None, None, base, colors
    uv = np.asarray(uv, dtype=np.float64)[:, :2]
    uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # trimesh: OpenGL v up -> ours: v = 0 is the top row
    return np.nan_to_num(uv).astype(np.float32), texture, base, colors


def _mesh_part(mesh: trimesh.Trimesh, name: str, problems: list[str]) -> MeshPart:
    """One validated geometry, in its own frame, as a MeshPart."""
    visual, colors = mesh.visual, None
    uv, texture, base = None, None, (1.0, 1.0, 1.0, 1.0)
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "face":
        mesh, colors = _unmerge_face_colors(mesh)
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        colors = _rgba(visual.vertex_colors, len(mesh.vertices))
    elif isinstance(visual, trimesh.visual.TextureVisuals):
        uv, texture, base, colors = _material(visual, len(mesh.vertices), problems, name)
    return MeshPart(
        vertices=np.asarray(mesh.vertices, dtype=np.float32),
        faces=np.asarray(mesh.faces, dtype=np.int64),
        normals=_vertex_normals(mesh),
        vertex_colors=colors,
        uv=uv,
        texture=texture,
        base_color=base,
        name=name,
    )


def _place(part: MeshPart, matrix: np.ndarray, name: str) -> MeshPart:
    """Move a part by a node transform (a mirroring transform also flips the winding)."""
    if not np.array_equal(matrix, np.eye(4)):
        part = part.transformed(matrix)
        if np.linalg.det(matrix[:3, :3]) < 0:
            part = replace(part, faces=np.ascontiguousarray(part.faces[:, ::-1]))
    return replace(part, name=name)


def _world_parts(path: Path, scene: trimesh.Scene, max_faces: int, frame: np.ndarray, problems: list[str]):
    """Flatten the scene graph: one world-space MeshPart per (node, triangle geometry) instance."""
    meshes = {k: g for k, g in scene.geometry.items() if isinstance(g, trimesh.Trimesh)}
    valid = {k: _has_triangles(path, k, g) for k, g in meshes.items()}
    instances = []
    for node in scene.graph.nodes_geometry:
        matrix, geometry = scene.graph[node]
        if valid.get(geometry, False):
            instances.append((str(node), frame @ np.asarray(matrix, dtype=np.float64), geometry))
    if not instances:
        kinds = sorted({type(g).__name__ for g in scene.geometry.values()})
        raise AssetError(
            path,
            f"no geometry decoded: no triangle faces (contains only: {', '.join(kinds) or 'nothing'})",
            "no geometry",
        )
    num_faces = sum(len(meshes[g].faces) for _, _, g in instances)
    if num_faces > max_faces:
        raise AssetError(path, f"{num_faces} faces, over the limit of {max_faces}", "too large")
    if sum(len(meshes[g].vertices) for _, _, g in instances) > 3 * max_faces:
        raise AssetError(path, f"more than {3 * max_faces} vertices (3 x max_faces)", "too large")
    if not all(np.isfinite(m).all() for _, m, _ in instances):
        raise AssetError(path, "non-finite scene-graph transform", "invalid geometry")
    local = {g: _mesh_part(meshes[g], g, problems) for g in dict.fromkeys(g for _, _, g in instances)}
    return [_place(local[g], m, node) for node, m, g in instances]


def _check_references(path: Path, resolver: _Resolver, problems: list[str], allow_missing: bool) -> None:
    """Missing / unreadable textures (and MTL files) raise, or are dropped with a warning when allowed."""
    if resolver.over_budget:
        raise AssetError(path, "the file and the files it references exceed the byte limit", "too large")
    issues = [f"missing {n!r}" for n in dict.fromkeys(resolver.missing)]
    issues += [f"unreadable image {n!r}" for n in dict.fromkeys(resolver.unreadable)] + problems
    if not issues:
        return
    if not allow_missing:
        raise AssetError(
            path,
            f"referenced file problem: {'; '.join(issues)} (allow_missing_textures=True drops them)",
            "missing file",
        )
    warnings.warn(f"{path}: dropped textures/materials: {'; '.join(issues)}", stacklevel=3)


def _parts(path: Path, scene: trimesh.Scene, max_faces: int, frame: np.ndarray, problems: list[str]) -> list:
    try:
        return _world_parts(path, scene, max_faces, frame, problems)
    except AssetError:
        raise
    except Exception as e:  # trimesh visuals / normals on odd inputs
        raise AssetError(
            path, f"could not convert the geometry ({type(e).__name__}: {str(e)[:200]})", "unreadable"
        ) from None


_OBJ_COLOR_VERTEX = re.compile(rb"^v[ \t]+(?:\S+[ \t]+){5}\S+", re.MULTILINE)


def _plain_obj_with_vertex_colors(path: Path, parts: list[MeshPart]) -> bool:
    """True when an OBJ lost its vertex colours: no texture or colour came through, but the file has them."""
    if any(p.texture is not None or p.vertex_colors is not None for p in parts):
        return False
    with open(path, "rb") as f:
        return _OBJ_COLOR_VERTEX.search(f.read(1 << 20)) is not None


def _prepare(path: Path, size: int, notes: list[str]) -> tuple[str, bytes | dict | None]:
    """("trimesh", rewritten glTF bytes or None) or ("assimp", embedded glTF 1.0 images or None)."""
    ext = path.suffix.lower()
    if ext in assimp.ASSIMP_EXTENSIONS:
        return "assimp", None
    if ext not in (".glb", ".gltf"):
        return "trimesh", None
    version, tree = gltf.read_json(path, size)
    try:
        gltf.check_uris(path, tree)
        if version == 1:  # trimesh reads glTF 2.0 only
            return "assimp", gltf.gltf1_embedded_images(path, tree)
        notes += gltf.check_extensions(path, tree)
        return "trimesh", gltf.pack(path, tree) if gltf.rewrite(tree) else None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, struct.error) as e:
        reason = f"malformed glTF structure ({type(e).__name__}: {str(e)[:200]})"
        raise AssetError(path, reason, "unreadable") from None


def load_asset(
    path: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_faces: int = DEFAULT_MAX_FACES,
    up_axis: UpAxis = "auto",
    allow_missing_textures: bool = False,
) -> Asset:
    """Load a file of one of ``SUPPORTED_EXTENSIONS`` into world-space (z-up) parts.

    ``up_axis="auto"`` treats glTF/GLB, OBJ and the assimp formats as Y-up (file (X, Y, Z) -> world
    (X, -Z, Y)) and PLY, STL, OFF as z-up. Files read by assimp are loaded in a child process (a crash in
    the C++ parser becomes an AssetError). Raises AssetError(path, reason, kind) for any bad input.
    """
    path = Path(path)
    up = _resolve_up_axis(path, up_axis)
    size = _check_file(path, max_bytes)
    notes: list[str] = []
    reader, prepared = _prepare(path, size, notes)
    if reader == "assimp" and not _IN_CHILD:  # the same call again, in a child process
        kwargs = dict(max_bytes=max_bytes, max_faces=max_faces, up_axis=up_axis)
        return _isolated(path, None, kwargs | {"allow_missing_textures": allow_missing_textures})
    resolver = _Resolver(path, budget=max_bytes - size)
    frame = Y_UP_TO_Z_UP if up == "y" else np.eye(4)
    problems: list[str] = []
    if reader == "assimp":
        scene = assimp.import_scene(path, resolver, notes, prepared)
    else:
        scene = _load_scene(path, resolver, notes, prepared)
    parts = _parts(path, scene, max_faces, frame, problems)
    if path.suffix.lower() == ".obj" and _plain_obj_with_vertex_colors(path, parts):
        # trimesh drops `v x y z r g b` colours when an MTL material is present: reload without materials
        parts = _parts(
            path, _load_scene(path, resolver, notes, skip_materials=True), max_faces, frame, problems
        )
    _check_references(path, resolver, problems, allow_missing_textures)
    for note in notes:
        warnings.warn(note if note.startswith(str(path)) else f"{path}: {note}", stacklevel=2)
    meta = {"format": path.suffix.lower()[1:], "up_axis": up, "reader": reader}
    asset = Asset(parts=tuple(parts), source=str(path), meta=meta)
    if not np.isfinite(asset.all_vertices()).all():
        raise AssetError(
            path,
            "non-finite vertex coordinates after applying the scene-graph transforms",
            "invalid geometry",
        )
    return asset


# --- child processes: per-file time limit, crash isolation ------------------------------------------

_IN_CHILD = False  # set in the loader's child process, where assimp may run (and crash) safely


def _load_in_child(conn, path: str, kwargs: dict) -> None:
    """Child-process body: send ("ok", asset, warnings) or ("error", (reason, kind), warnings)."""
    global _IN_CHILD
    _IN_CHILD = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ("ok", load_asset(path, **kwargs))
        except AssetError as e:
            result = ("error", (e.reason, e.kind))
        except BaseException as e:  # reported to the parent as an AssetError
            result = ("error", (f"loader failed ({type(e).__name__}: {str(e)[:200]})", "unreadable"))
    try:
        conn.send((*result, [(str(w.message), w.category) for w in caught]))
    finally:
        conn.close()


def _stop(proc: mp.process.BaseProcess) -> None:
    proc.join(timeout=0.5)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _isolated(path: str | os.PathLike, timeout_s: float | None, kwargs: dict) -> Asset:
    """``load_asset(path, **kwargs)`` in a child process; killed after ``timeout_s`` (None: no limit)."""
    global _IN_CHILD
    if mp.current_process().daemon:  # a daemonic process may not have children: load here, unguarded
        inside, _IN_CHILD = _IN_CHILD, True
        try:
            return load_asset(path, **kwargs)
        finally:
            _IN_CHILD = inside
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load_in_child, args=(sender, str(path), kwargs), daemon=True)
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            proc.kill()
            raise AssetError(path, f"timed out after {timeout_s:g} s", "timeout")
        try:
            status, payload, caught = receiver.recv()
        except (EOFError, OSError):
            proc.join(timeout=1.0)
            reason = f"loader process died (exit code {proc.exitcode}): the parser crashed on this file"
            raise AssetError(path, reason, "unreadable") from None
    finally:
        receiver.close()
        _stop(proc)
    for message, category in caught:
        warnings.warn(message, category, stacklevel=3)
    if status != "ok":
        raise AssetError(path, *payload)
    return payload


def load_asset_isolated(path: str | os.PathLike, timeout_s: float = 60.0, **kwargs) -> Asset:
    """``load_asset`` in a child process, killed after ``timeout_s`` seconds (then AssetError)."""
    if kwargs.get("up_axis", "auto") not in ("auto", "y", "z"):
        raise ConfigError(f"up_axis must be 'auto', 'y' or 'z', got {kwargs['up_axis']!r}")
    unknown = set(kwargs) - {"max_bytes", "max_faces", "up_axis", "allow_missing_textures"}
    if unknown:
        raise TypeError(f"load_asset_isolated got unexpected keyword arguments {sorted(unknown)}")
    return _isolated(path, timeout_s, kwargs)


def iter_asset_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files and folders -> supported asset files: folders recursively (sorted, dotfiles skipped).

    A named file with an unsupported extension is skipped with a warning (so shell globs that also
    match .mtl / .png siblings work); a path that does not exist raises AssetError.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in SUPPORTED_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            if p.suffix.lower() in SUPPORTED_EXTENSIONS:
                found.append(p)
            else:
                warnings.warn(f"{p}: skipped, unsupported file type {p.suffix!r}", stacklevel=2)
        else:
            raise AssetError(p, "no such file or directory", "missing file")
    return list(dict.fromkeys(found))
