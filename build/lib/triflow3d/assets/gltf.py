"""glTF files before trimesh reads them: header and version checks, the extensions we honour, and a rewrite.

trimesh 5.2 reads glTF 2.0 and decodes ``KHR_draco_mesh_compression`` (through DracoPy). This module adds
what it lacks, without touching the buffers:

- ``KHR_materials_pbrSpecularGlossiness``: the diffuse factor / texture become the base colour (our shading
  is diffuse only, so this is exact; trimesh's own conversion drops a plain diffuse factor and can wash
  textures out);
- ``KHR_texture_transform`` and a base-colour ``texCoord`` other than 0: a private primitive extension is
  written into the JSON and the handler registered below applies it to the uv trimesh has decoded;
- ``KHR_mesh_quantization``: normalized integer positions, normals and uv are dequantized the same way;
- extensions we cannot honour: named in an error (when the file requires them) or a warning.

A file that needs none of this is handed to trimesh untouched (no rewrite, no extra cost).
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from trimesh.exchange.gltf.extensions import register_handler

from triflow3d.errors import AssetError

# Honoured: how each is handled (docs/assets.md has the same table).
HONOURED: dict[str, str] = {
    "KHR_draco_mesh_compression": "decoded with DracoPy (through trimesh)",
    "KHR_materials_pbrSpecularGlossiness": "diffuse factor / texture used as the base colour",
    "KHR_texture_transform": "applied to the base-colour uv",
    "KHR_mesh_quantization": "normalized integer attributes dequantized",
    "EXT_texture_webp": "WebP textures decoded with Pillow",
    "KHR_materials_unlit": "base colour used as is",
}
# Safe to ignore: they change shading, lighting or metadata, never the geometry or the base colour.
IGNORABLE: frozenset[str] = frozenset(
    {
        "KHR_materials_emissive_strength",
        "KHR_materials_ior",
        "KHR_materials_specular",
        "KHR_materials_transmission",
        "KHR_materials_clearcoat",
        "KHR_materials_sheen",
        "KHR_materials_volume",
        "KHR_materials_iridescence",
        "KHR_materials_anisotropy",
        "KHR_materials_dispersion",
        "KHR_materials_diffuse_transmission",
        "KHR_materials_variants",
        "KHR_lights_punctual",
        "KHR_xmp_json_ld",
        "KHR_animation_pointer",
        "EXT_lights_image_based",
    }
)
_SPEC_GLOSS = "KHR_materials_pbrSpecularGlossiness"
_TRANSFORM = "KHR_texture_transform"
_QUANTIZED = "KHR_mesh_quantization"
_PRIVATE = "TRIFLOW3D_uv"  # written by `_rewrite` into primitives, read by `_apply_private` (never saved)
_FLOAT = 5126
_NORMALIZED_MAX = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}  # componentType -> max


# --- reading --------------------------------------------------------------------------------------------


def read_json(path: Path, size: int) -> tuple[int, dict]:
    """(major version, JSON tree) of a .gltf / .glb file; AssetError for bad headers and malformed JSON."""
    if path.suffix.lower() == ".glb":
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 12 or head[:4] != b"glTF":
                raise AssetError(path, "not a binary glTF file (missing 'glTF' header)", "unreadable")
            version, length = struct.unpack("<II", head[4:12])
            if version not in (1, 2):
                raise AssetError(path, f"unknown binary glTF version {version}", "unsupported format")
            if length > size:
                raise AssetError(
                    path, f"truncated GLB: header declares {length} bytes, file has {size}", "unreadable"
                )
            if len(head) < 20:
                raise AssetError(path, "truncated GLB: no JSON chunk", "unreadable")
            text = f.read(struct.unpack("<I", head[12:16])[0])
    else:
        text, version = path.read_bytes(), 0
    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise AssetError(path, f"malformed glTF JSON: {e}", "unreadable") from None
    if not isinstance(tree, dict):
        raise AssetError(path, "malformed glTF JSON: top level is not an object", "unreadable")
    if version == 0:  # .gltf: the version is in the JSON; glTF 1.0 keys its objects by id
        asset = tree.get("asset") if isinstance(tree.get("asset"), dict) else {}
        major = str(asset.get("version", "2.0" if "asset" in tree else "1.0")).split(".")[0]
        if major == "1" or isinstance(tree.get("meshes"), dict):
            version = 1
        elif major == "2":
            version = 2
        else:
            raise AssetError(path, f"unknown glTF version {asset.get('version')!r}", "unsupported format")
    return version, tree


def check_uris(path: Path, tree: dict) -> None:
    """Buffers and images may only name files below the asset's folder (or be data: URIs)."""
    folder = path.resolve().parent
    for key in ("buffers", "images", "shaders"):
        items = tree.get(key) or []
        for item in items.values() if isinstance(items, dict) else items:
            uri = item.get("uri") if isinstance(item, dict) else None
            if not isinstance(uri, str) or uri.startswith("data:"):
                continue
            name = unquote(uri).replace("\\", "/")
            if "://" in name or not (folder / name).resolve().is_relative_to(folder):
                raise AssetError(path, f"references {uri!r}, outside the asset's folder", "invalid")


def check_extensions(path: Path, tree: dict) -> list[str]:
    """Raise for a required extension we cannot honour; return a warning naming any other we ignore."""
    used = {str(e) for e in tree.get("extensionsUsed") or []}
    required = {str(e) for e in tree.get("extensionsRequired") or []}
    blocking = sorted(required - HONOURED.keys() - IGNORABLE)
    if blocking:
        raise AssetError(
            path,
            f"unsupported glTF extension {', '.join(blocking)} (required by the file; "
            f"supported: {', '.join(sorted(HONOURED))})",
            "unsupported extension",
        )
    ignored = sorted((used | required) - HONOURED.keys())
    return [f"{path}: ignored glTF extension(s) {', '.join(ignored)} (shading only)"] if ignored else []


@contextmanager
def trimesh_log() -> Iterator[list[str]]:
    """Collect what trimesh logs at WARNING while loading: it logs (not raises) when an extension fails."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("trimesh"), _Collect(logging.WARNING)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.WARNING, logging.WARNING))
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def check_decoded(path: Path, messages: list[str]) -> list[str]:
    """Refuse a file whose compressed geometry did not decode (it would load as zeros); return the other
    extension failures trimesh logged, as warnings."""
    failures = [m for m in messages if "extension" in m]
    if any("didn't decode" in m for m in messages):
        raise AssetError(path, f"no geometry decoded: {'; '.join(failures)}", "no geometry")
    return failures


def gltf1_embedded_images(path: Path, tree: dict) -> dict[str, bytes]:
    """{material id: image bytes} of glTF 1.0 diffuse textures stored in the file (data URI or binary body).

    assimp names the material by its id but hands embedded images over only as "*N", which assimp-py
    cannot resolve; the id leads back to the image here.
    """
    out = {}
    for ident, material in (tree.get("materials") or {}).items():
        values = material.get("values") or {} if isinstance(material, dict) else {}
        common = (material.get("extensions") or {}).get("KHR_materials_common") or {}
        diffuse = values.get("diffuse", (common.get("values") or {}).get("diffuse"))
        texture = (tree.get("textures") or {}).get(diffuse) if isinstance(diffuse, str) else None
        image = (tree.get("images") or {}).get(texture.get("source")) if isinstance(texture, dict) else None
        data = _gltf1_image_bytes(path, tree, image) if isinstance(image, dict) else None
        if data:
            out[str(ident)] = data
    return out


def _gltf1_image_bytes(path: Path, tree: dict, image: dict) -> bytes | None:
    uri = image.get("uri")
    if isinstance(uri, str) and uri.startswith("data:") and "," in uri:
        head, payload = uri.split(",", 1)
        return base64.b64decode(payload) if head.endswith(";base64") else unquote(payload).encode()
    view_id = ((image.get("extensions") or {}).get("KHR_binary_glTF") or {}).get("bufferView")
    view = (tree.get("bufferViews") or {}).get(view_id)
    if not isinstance(view, dict) or path.suffix.lower() != ".glb":
        return None
    raw = path.read_bytes()
    body = 20 + struct.unpack("<I", raw[12:16])[0]  # GLB 1: 20-byte header, JSON content, then the body
    start = body + int(view.get("byteOffset", 0))
    return raw[start : start + int(view.get("byteLength", 0))] or None


# --- rewriting ------------------------------------------------------------------------------------------


def _base_color_info(material: dict) -> dict | None:
    """The base-colour textureInfo, after `_map_spec_gloss` has run."""
    pbr = material.get("pbrMetallicRoughness")
    info = pbr.get("baseColorTexture") if isinstance(pbr, dict) else None
    return info if isinstance(info, dict) else None


def _map_spec_gloss(material: dict) -> bool:
    """Spec-gloss -> metal-rough with base colour = diffuse (factor and texture). True when changed."""
    ext = material.get("extensions")
    spec = ext.get(_SPEC_GLOSS) if isinstance(ext, dict) else None
    if not isinstance(spec, dict):
        return False
    pbr: dict = {"baseColorFactor": spec.get("diffuseFactor", [1.0, 1.0, 1.0, 1.0])}
    if isinstance(spec.get("diffuseTexture"), dict):
        pbr["baseColorTexture"] = spec["diffuseTexture"]
    material["pbrMetallicRoughness"] = pbr
    del ext[_SPEC_GLOSS]
    return True


def _uv_transform(info: dict) -> tuple[int, list[list[float]] | None]:
    """(texCoord set, 3x3 uv matrix or None) of a textureInfo, in glTF uv (v = 0 at the top)."""
    ext = info.get("extensions")
    tt = ext.get(_TRANSFORM) if isinstance(ext, dict) else None
    tex_coord = int(info.get("texCoord", 0))
    if not isinstance(tt, dict):
        return tex_coord, None
    (ox, oy), r, (sx, sy) = tt.get("offset", [0, 0]), float(tt.get("rotation", 0.0)), tt.get("scale", [1, 1])
    c, s = np.cos(r), np.sin(r)
    translation = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]], dtype=np.float64)
    rotation = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    scale = np.diag([float(sx), float(sy), 1.0])
    return int(tt.get("texCoord", tex_coord)), (translation @ rotation @ scale).tolist()


def _dequantize(tree: dict, primitive: dict) -> dict[str, float]:
    """{attribute: divisor} of the primitive's normalized integer POSITION / NORMAL / TEXCOORD_n."""
    accessors, out = tree.get("accessors") or [], {}
    for name, index in (primitive.get("attributes") or {}).items():
        if name != "POSITION" and name != "NORMAL" and not name.startswith("TEXCOORD_"):
            continue
        a = accessors[index] if isinstance(index, int) and 0 <= index < len(accessors) else {}
        if a.get("normalized") and a.get("componentType") in _NORMALIZED_MAX:
            out[name] = _NORMALIZED_MAX[a["componentType"]]
    return out


def rewrite(tree: dict) -> bool:
    """Edit the JSON in place so trimesh honours spec-gloss, uv transforms and quantization; True if changed."""
    materials = tree.get("materials") or []
    changed = any([_map_spec_gloss(m) for m in materials if isinstance(m, dict)])
    quantized = _QUANTIZED in (tree.get("extensionsUsed") or [])
    for mesh in tree.get("meshes") or []:
        for p in mesh.get("primitives") or [] if isinstance(mesh, dict) else []:
            m = p.get("material")
            info = _base_color_info(materials[m]) if isinstance(m, int) and 0 <= m < len(materials) else None
            tex_coord, matrix = _uv_transform(info) if info is not None else (0, None)
            divisors = _dequantize(tree, p) if quantized else {}
            if matrix is None and tex_coord == 0 and not divisors:
                continue
            data = {"texCoord": tex_coord, "matrix": matrix, "divisors": divisors}
            p.setdefault("extensions", {})[_PRIVATE] = data
            changed = True
    return changed


def pack(path: Path, tree: dict) -> bytes:
    """The file with its JSON replaced by ``tree``: a .gltf's text, or a GLB with its other chunks kept."""
    text = json.dumps(tree).encode()
    if path.suffix.lower() != ".glb":
        return text
    raw = path.read_bytes()
    json_length = struct.unpack("<I", raw[12:16])[0]
    rest = raw[20 + json_length :]  # the BIN chunk (and any other), untouched
    text += b" " * (-len(text) % 4)
    body = struct.pack("<I4s", len(text), b"JSON") + text + rest
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


# --- applied by trimesh while it builds each primitive ---------------------------------------------------


@register_handler(_PRIVATE, scope="primitive")
def _apply_private(context: dict) -> dict | None:
    """Dequantize, pick the uv set and apply the uv transform that `rewrite` recorded for this primitive."""
    data, kwargs, accessors = context["data"], context["mesh_kwargs"], context["accessors"]
    attributes = context["primitive"].get("attributes", {})
    divisors = data.get("divisors") or {}
    out: dict = {}
    if "POSITION" in divisors:
        out["vertices"] = np.asarray(kwargs["vertices"], dtype=np.float64) / divisors["POSITION"]
    if "NORMAL" in divisors and "vertex_normals" in kwargs:
        out["vertex_normals"] = np.asarray(kwargs["vertex_normals"], dtype=np.float64) / divisors["NORMAL"]
    visual = kwargs.get("visual")
    name = f"TEXCOORD_{data.get('texCoord', 0)}"
    if visual is not None and name in attributes:
        uv = np.asarray(accessors[attributes[name]], dtype=np.float64)[:, :2] / divisors.get(name, 1.0)
        if data.get("matrix") is not None:
            uv = uv @ np.asarray(data["matrix"])[:2, :2].T + np.asarray(data["matrix"])[:2, 2]
        visual.uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)  # trimesh keeps OpenGL uv (v up)
    return out or None
