"""Files of generated objects: meshes (GLB / OBJ / PLY), UV-textured GLB / OBJ+MTL, turntable MP4 / GIF, a
PNG grid of the six rig views, and the raw triplane as safetensors. Every write is atomic.

Mesh files go through :func:`triflow3d.assets.export.save_mesh` / ``save_glb`` (GLB and OBJ are Y-up,
PLY z-up, as for every asset in the project). Decimation (fast-simplification) keeps colours by
nearest-vertex transfer. Texturing: xatlas charts, then every covered texel is mapped back to its 3-D
point on the surface and the frozen field's rgb is queried there (not interpolated from vertices);
uncovered texels take the nearest covered texel's colour so mip-maps and filtering do not bleed white.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch
import trimesh

from triflow3d import conventions as cv
from triflow3d.assets.export import Z_UP_TO_Y_UP, save_glb
from triflow3d.assets.export import save_mesh as save_asset_mesh
from triflow3d.assets.types import Asset, MeshPart
from triflow3d.errors import AssetError, ConfigError
from triflow3d.triplane.mesh import decimate_mesh, drop_small_components
from triflow3d.utils.images import save_png
from triflow3d.utils.io import atomic_path, write_json

if TYPE_CHECKING:
    from triflow3d.pipeline import Generated

FORMATS: tuple[str, ...] = ("glb", "obj", "ply", "mp4", "gif", "png", "triplane")
MESH_FORMATS: frozenset[str] = frozenset({"glb", "obj", "ply"})
IMAGE_FORMATS: frozenset[str] = frozenset({"mp4", "gif", "png"})
FILE_NAMES: dict[str, str] = {
    "glb": "mesh.glb", "obj": "mesh.obj", "ply": "mesh.ply", "mp4": "turntable.mp4",
    "gif": "turntable.gif", "png": "views.png", "triplane": "triplane.safetensors",
}  # fmt: skip
TEXTURE_MAX_FACES = 20_000  # meshes are decimated to this before xatlas (1.6 s at 10k faces)
TRIPLANE_KEY = "triplane"


def parse_formats(spec: str | Sequence[str]) -> list[str]:
    """``"glb,obj"`` or ``["glb", "obj"]`` -> checked, de-duplicated list in the given order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = list(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    if not out or any(f not in FORMATS for f in out):
        raise ConfigError(f"unknown or empty output format list {spec!r}; choose from {','.join(FORMATS)}")
    return out


# --- UV texture baking --------------------------------------------------------------------------------
def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels whose centres lie in a triangle of the uv layout -> (rows, cols, face), barycentrics (T, 3).

    Texel (i, j) has centre uv ((j + 0.5) / S, (i + 0.5) / S) (MeshPart convention: v = 0 is row 0).
    """
    tri = uv[faces] * size - 0.5  # (F, 3, 2) in texel-centre units (x = col, y = row)
    lo = np.clip(np.floor(tri.min(1)), 0, size - 1).astype(np.int64)  # (F, 2)
    hi = np.clip(np.ceil(tri.max(1)), 0, size - 1).astype(np.int64)
    wh = hi - lo + 1  # (F, 2)
    counts = wh[:, 0] * wh[:, 1]
    face = np.repeat(np.arange(len(faces)), counts)  # one candidate per texel of each bounding box
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    col = lo[face, 0] + local % wh[face, 0]
    row = lo[face, 1] + local // wh[face, 0]
    a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]  # (T, 2)
    p = np.stack([col, row], axis=1).astype(np.float64)
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    safe = np.where(np.abs(det) < 1e-12, 1.0, det)
    w1 = ((p[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (p[:, 1] - a[:, 1])) / safe
    w2 = ((b[:, 0] - a[:, 0]) * (p[:, 1] - a[:, 1]) - (p[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])) / safe
    bary = np.stack([1 - w1 - w2, w1, w2], axis=1)
    keep = (np.abs(det) >= 1e-12) & (bary >= -1e-6).all(1)
    return np.stack([row[keep], col[keep], face[keep]], axis=1), bary[keep]


def bake_texture(
    mesh: trimesh.Trimesh, color_fn: Callable[[np.ndarray], np.ndarray], size: int = 1024
) -> MeshPart:
    """xatlas uv charts + a ``size`` x ``size`` RGBA texture of ``color_fn(points (P, 3)) -> (P, 3)`` in
    [0, 1], evaluated at the surface point under every covered texel; gutters take the nearest colour."""
    import xatlas
    from scipy import ndimage

    if len(mesh.faces) == 0:
        raise AssetError("<generated>", "cannot texture an empty mesh")
    vmap, faces, uv = xatlas.parametrize(
        np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32)
    )
    verts = np.asarray(mesh.vertices, np.float32)[vmap]  # (V', 3)
    faces, uv = faces.astype(np.int64), uv.astype(np.float32)
    texels, bary = rasterize_uv(uv, faces, size)
    points = np.einsum("tk,tkd->td", bary, verts[faces[texels[:, 2]]])  # (T, 3) surface points
    rgb = np.zeros((size, size, 3), np.float32)
    covered = np.zeros((size, size), bool)
    rgb[texels[:, 0], texels[:, 1]] = color_fn(points)
    covered[texels[:, 0], texels[:, 1]] = True
    if covered.any():
        _, (ii, jj) = ndimage.distance_transform_edt(~covered, return_indices=True)
        rgb = rgb[ii, jj]
    texture = np.concatenate([np.round(np.clip(rgb, 0, 1) * 255), np.full((size, size, 1), 255.0)], axis=-1)
    return MeshPart(verts, faces, uv=uv, texture=texture.astype(np.uint8), name="generated")


# --- writers ------------------------------------------------------------------------------------------
def save_generated_mesh(mesh: trimesh.Trimesh | MeshPart, path: str | os.PathLike) -> Path:
    """A vertex-coloured trimesh (.glb / .obj / .ply) or a textured part (.glb, or .obj + .mtl + .png)."""
    out = Path(path)
    if isinstance(mesh, MeshPart):
        if out.suffix.lower() == ".glb":
            return save_glb(Asset((mesh,)), out)
        if out.suffix.lower() == ".obj":
            return save_textured_obj(mesh, out)
        raise AssetError(out, "textured meshes are written as .glb or .obj")
    if len(mesh.faces) == 0:
        raise AssetError(out, "the mesh is empty (the field never crosses the threshold)")
    return save_asset_mesh(mesh, out)


def save_textured_obj(part: MeshPart, path: str | os.PathLike) -> Path:
    """OBJ (Y-up) + MTL + PNG texture next to it, each written atomically."""
    out = Path(path)
    uv = part.uv.astype(np.float64).copy()
    uv[:, 1] = 1.0 - uv[:, 1]  # MeshPart: v = 0 at the top; trimesh / OBJ: v = 0 at the bottom
    material = trimesh.visual.material.SimpleMaterial(image=PIL.Image.fromarray(part.texture, "RGBA"))
    mesh = trimesh.Trimesh(
        part.vertices.astype(np.float64) @ Z_UP_TO_Y_UP.T, part.faces,
        visual=trimesh.visual.TextureVisuals(uv=uv, material=material), process=False,
    )  # fmt: skip
    text, files = trimesh.exchange.obj.export_obj(mesh, return_texture=True, mtl_name=out.stem + ".mtl")
    for name, data in files.items():  # the .mtl and its texture image
        with atomic_path(out.with_name(name)) as tmp:
            tmp.write_bytes(data)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out


def save_video(frames: np.ndarray, path: str | os.PathLike, fps: int = 12) -> Path:
    """uint8 frames (N, S, S, 3) -> H.264 MP4 (imageio-ffmpeg's bundled ffmpeg); S a multiple of 16."""
    import imageio.v3 as iio

    if frames.shape[1] % 16 or frames.shape[2] % 16:
        raise ConfigError(f"video frames must be a multiple of 16 pixels, got {frames.shape[1:3]}")
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(frames), fps=fps, codec="libx264", extension=".mp4")
    return Path(path)


def save_gif(frames: np.ndarray, path: str | os.PathLike, fps: int = 12) -> Path:
    """uint8 frames (N, S, S, 3) -> looping GIF (Pillow merges identical consecutive frames)."""
    images = [PIL.Image.fromarray(f) for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0
        )
    return Path(path)


def image_grid(images: np.ndarray, cols: int = 2) -> np.ndarray:
    """(N, S, S, 3) uint8 -> one (rows S, cols S, 3) image, row-major, white where no image."""
    n, s = images.shape[:2]
    rows = -(-n // cols)
    grid = np.full((rows * s, cols * s, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * s : (r + 1) * s, c * s : (c + 1) * s] = img
    return grid


def save_triplane(triplane: torch.Tensor, path: str | os.PathLike, metadata: dict[str, object]) -> Path:
    """A raw (3, C, R, R) triplane as safetensors; metadata values are stored as strings."""
    from safetensors.torch import save_file

    meta = {"conventions_version": str(cv.CONVENTIONS_VERSION)} | {k: str(v) for k, v in metadata.items()}
    with atomic_path(path) as tmp:
        save_file({TRIPLANE_KEY: triplane.detach().float().cpu().contiguous()}, str(tmp), metadata=meta)
    return Path(path)


def load_triplane(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, str]]:
    """(triplane (3, C, R, R), metadata) of a file written by :func:`save_triplane`."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.get_tensor(TRIPLANE_KEY), dict(f.metadata() or {})


# --- one generated object -> a folder of files ---------------------------------------------------------
@dataclass(frozen=True)
class ExportOptions:
    """How ``export_generated`` turns a generated object into files."""

    resolution: int = 128  # marching-cubes grid
    threshold: float | None = None  # density level; None = the encoder's default
    decimate: int | None = None  # target face count (None: keep all)
    drop_floaters: bool = False  # remove components with < 5 % of the surface each (never for metrics)
    texture: int = 0  # > 0: UV-textured GLB / OBJ with a texture of this size (else vertex colours)
    preview: str = "mesh"  # renders for mp4 / gif / png: "mesh" (rasterised, fast) | "volume" (the field)
    video_size: int = 256
    frames: int = 36
    fps: int = 12
    views_size: int = 256


@dataclass
class ExportResult:
    files: list[str] = field(default_factory=list)
    vertices: int = 0
    faces: int = 0
    warnings: list[str] = field(default_factory=list)


def triplane_metadata(gen: Generated, **extra: object) -> dict[str, object]:
    return {"encoder": gen.encoder_id, "prompt": gen.prompt, "seed": gen.seed, **gen.settings, **extra}


def export_generated(
    gen: Generated, folder: str | os.PathLike, formats: Sequence[str], opts: ExportOptions = ExportOptions()
) -> ExportResult:
    """Write the requested formats of ``gen`` into ``folder`` (created); returns file names and counts.

    An empty mesh (the density never reaches the threshold) skips the mesh files with a warning.
    """
    folder, formats, res = Path(folder), parse_formats(formats), ExportResult()
    folder.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(folder))
    need_mesh = bool(MESH_FORMATS & set(formats)) or (opts.preview == "mesh" and IMAGE_FORMATS & set(formats))
    mesh = gen.to_mesh(opts.resolution, opts.threshold, opts.decimate) if need_mesh else None
    if mesh is not None and opts.drop_floaters:
        mesh = drop_small_components(mesh)
    if mesh is not None:
        res.vertices, res.faces = len(mesh.vertices), len(mesh.faces)
    if mesh is not None and len(mesh.faces) == 0 and MESH_FORMATS & set(formats):
        res.warnings.append("empty mesh (the density never reaches the threshold): mesh files skipped")
    textured = _textured(gen, mesh, opts) if mesh is not None and len(mesh.faces) and opts.texture else None
    for fmt in formats:
        name = FILE_NAMES[fmt]
        if fmt in MESH_FORMATS:
            if mesh is None or len(mesh.faces) == 0:
                continue
            save_generated_mesh(
                textured if textured is not None and fmt in ("glb", "obj") else mesh, folder / name
            )
        elif fmt in ("mp4", "gif"):
            frames = gen.turntable(opts.frames, opts.video_size, opts.preview, mesh)
            (save_video if fmt == "mp4" else save_gif)(frames, folder / name, opts.fps)
        elif fmt == "png":
            save_png(image_grid(gen.views(opts.views_size, opts.preview, mesh), cols=2), folder / name)
        else:
            save_triplane(gen.triplane, folder / name, triplane_metadata(gen))
    res.files = sorted(set(os.listdir(folder)) - before)  # textured OBJ adds its .mtl and image
    return res


def _textured(gen: Generated, mesh: trimesh.Trimesh, opts: ExportOptions) -> MeshPart:
    if len(mesh.faces) > TEXTURE_MAX_FACES:
        mesh = decimate_mesh(mesh, TEXTURE_MAX_FACES)
    return bake_texture(mesh, gen.query_rgb, opts.texture)


def write_info(folder: str | os.PathLike, gen: Generated, result: ExportResult, **extra: object) -> None:
    """``info.json`` of an exported object: prompt, seed, settings, encoder, files, counts."""
    write_json(Path(folder) / "info.json", {
        "prompt": gen.prompt, "seed": gen.seed, "encoder": gen.encoder_id, "settings": gen.settings,
        "files": result.files, "vertices": result.vertices, "faces": result.faces,
        "conventions_version": cv.CONVENTIONS_VERSION, **extra,
    })  # fmt: skip
