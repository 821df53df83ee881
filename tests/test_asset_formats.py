"""Real-world formats and glTF extensions: each case renders like the plain version of the same asset.

glTF cases are written here with trimesh's exporter (Draco through DracoPy, spec-gloss and texture
transforms through its tree post-processor). FBX / Collada / 3DS / glTF 1.0 files were written by
assimp's own exporters (``tests/data/assimp/make_fixtures.py``) from the shape in ``textured.glb`` and
``colored.glb``. "Like" means: silhouette IoU >= 0.95 over the six Zero123++ views, and the mean colour
of the pixels both cover within 0.04.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from triflow3d.assets import AssetError, load_asset, load_asset_isolated, normalize
from triflow3d.cameras import zero123pp_rig
from triflow3d.render import make_renderer

DATA = Path(__file__).parent / "data" / "assimp"
SIZE = 64


@pytest.fixture(scope="module")
def renderer():
    return make_renderer("raycast")  # no GL needed; the same shading as EGL


def _views(renderer, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(masks (6, S, S) bool, rgb (6, S, S, 3)) of the normalised asset from the Zero123++ rig."""
    out = renderer.render(normalize(load_asset(path)), zero123pp_rig(), SIZE)
    return out.mask, out.rgba[..., :3]


def _assert_renders_like(renderer, path: Path, plain: Path) -> tuple[float, float]:
    (mask, rgb), (ref_mask, ref_rgb) = _views(renderer, path), _views(renderer, plain)
    iou = float((mask & ref_mask).sum() / (mask | ref_mask).sum())
    both = mask & ref_mask
    colour = float(np.abs(rgb[both].mean(0) - ref_rgb[both].mean(0)).max())
    print(f"{path.name} vs {plain.name}: silhouette IoU {iou:.4f}, colour difference {colour:.4f}")  # -s
    assert iou >= 0.95 and colour <= 0.04, (path.name, iou, colour)
    return iou, colour


# --- glTF 2.0 files written here ------------------------------------------------------------------------


def _export(
    path: Path, postprocess=None, *, draco: bool = False, source: Path = DATA / "textured.glb"
) -> Path:
    scene = trimesh.load(source, force="scene", process=False)
    data = trimesh.exchange.gltf.export_glb(scene, tree_postprocessor=postprocess, extension_draco=draco)
    path.write_bytes(data)
    return path


def _spec_gloss(diffuse_factor: list[float]):
    """Move every material to KHR_materials_pbrSpecularGlossiness, with a strong specular."""

    def edit(tree: dict) -> None:
        for m in tree["materials"]:
            pbr = m.pop("pbrMetallicRoughness")
            spec = {
                "diffuseFactor": diffuse_factor,
                "specularFactor": [0.9, 0.9, 0.9],
                "glossinessFactor": 0.5,
            }
            if "baseColorTexture" in pbr:
                spec["diffuseTexture"] = pbr["baseColorTexture"]
            m["extensions"] = {"KHR_materials_pbrSpecularGlossiness": spec}
        tree["extensionsUsed"] = ["KHR_materials_pbrSpecularGlossiness"]

    return edit


def _glb_chunks(data: bytes) -> tuple[dict, bytearray]:
    n = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20 : 20 + n]), bytearray(data[28 + n :])


def test_draco_glb_decodes_to_the_plain_geometry(tmp_path, renderer):
    path = _export(tmp_path / "draco.glb", draco=True)
    assert "KHR_draco_mesh_compression" in _glb_chunks(path.read_bytes())[0]["extensionsRequired"]
    plain, draco = load_asset(DATA / "textured.glb"), load_asset(path)
    assert draco.num_faces == plain.num_faces and draco.parts[0].texture is not None
    np.testing.assert_allclose(draco.bounds(), plain.bounds(), atol=1e-3)  # 14-bit quantised positions
    _assert_renders_like(renderer, path, DATA / "textured.glb")


def test_undecodable_draco_names_the_cause_instead_of_zero_geometry(tmp_path, monkeypatch):
    path = _export(tmp_path / "draco.glb", draco=True)
    tree, binary = _glb_chunks(path.read_bytes())
    view = tree["bufferViews"][
        tree["meshes"][0]["primitives"][0]["extensions"]["KHR_draco_mesh_compression"]["bufferView"]
    ]
    start = view.get("byteOffset", 0)
    binary[start : start + view["byteLength"]] = b"\x07" * view["byteLength"]
    broken = tmp_path / "broken.glb"
    broken.write_bytes(path.read_bytes()[: len(path.read_bytes()) - len(binary)] + bytes(binary))
    with pytest.raises(AssetError, match="no geometry decoded.*KHR_draco_mesh_compression") as info:
        load_asset(broken)
    assert info.value.kind == "no geometry"
    monkeypatch.setitem(sys.modules, "DracoPy", None)  # the decoder missing: the same error, naming it
    with pytest.raises(AssetError, match="DracoPy"):
        load_asset(path)


def test_spec_gloss_diffuse_becomes_the_base_colour(tmp_path, renderer):
    textured = _export(tmp_path / "sg_tex.glb", _spec_gloss([1.0, 1.0, 1.0, 1.0]))
    plain = load_asset(DATA / "textured.glb").parts[0]
    part = load_asset(textured).parts[0]
    np.testing.assert_array_equal(part.texture, plain.texture)  # not washed out by a metal-rough guess
    np.testing.assert_array_equal(part.uv, plain.uv)
    _assert_renders_like(renderer, textured, DATA / "textured.glb")

    flat = trimesh.creation.box((1.0, 0.5, 0.3))
    flat.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(baseColorFactor=[255, 255, 255, 255])
    )
    flat.export(tmp_path / "flat.glb")
    solid = _export(tmp_path / "sg.glb", _spec_gloss([0.2, 0.6, 0.4, 1.0]), source=tmp_path / "flat.glb")
    np.testing.assert_allclose(load_asset(solid).parts[0].base_color, (0.2, 0.6, 0.4, 1.0))


def _uv_matrix(offset, rotation, scale) -> np.ndarray:  # KHR_texture_transform: T @ R @ S
    c, s = np.cos(rotation), np.sin(rotation)
    t = np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1.0]])
    return t @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) @ np.diag([scale[0], scale[1], 1.0])


def test_texture_transform_and_tex_coord_are_applied(tmp_path, renderer):
    offset, rotation, scale = [0.5, 0.25], 0.3, [2.0, 0.5]
    inverse = np.linalg.inv(_uv_matrix(offset, rotation, scale))
    scene = trimesh.load(DATA / "textured.glb", force="scene", process=False)
    mesh = next(iter(scene.geometry.values()))
    uv = np.c_[mesh.visual.uv[:, 0], 1.0 - mesh.visual.uv[:, 1], np.ones(len(mesh.visual.uv))]  # glTF uv
    moved = uv @ inverse.T
    mesh.visual.uv = np.c_[moved[:, 0], 1.0 - moved[:, 1]]
    transform = {"offset": offset, "rotation": rotation, "scale": scale}

    def edit(tree: dict) -> None:
        info = tree["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]
        info["extensions"] = {"KHR_texture_transform": transform}
        tree["extensionsUsed"] = ["KHR_texture_transform"]

    path = tmp_path / "transformed.glb"
    path.write_bytes(trimesh.exchange.gltf.export_glb(scene, tree_postprocessor=edit))
    np.testing.assert_allclose(
        load_asset(path).parts[0].uv, load_asset(DATA / "textured.glb").parts[0].uv, atol=1e-5
    )
    _assert_renders_like(renderer, path, DATA / "textured.glb")

    def second_set(tree: dict) -> None:  # the only uv set is TEXCOORD_1, and the texture says so
        for p in tree["meshes"][0]["primitives"]:
            p["attributes"]["TEXCOORD_1"] = p["attributes"].pop("TEXCOORD_0")
        tree["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]["texCoord"] = 1

    moved_set = _export(tmp_path / "texcoord1.glb", second_set)
    np.testing.assert_allclose(
        load_asset(moved_set).parts[0].uv, load_asset(DATA / "textured.glb").parts[0].uv
    )


def test_quantized_attributes_are_dequantized(tmp_path):
    positions = np.array([[0, 0, 0], [32767, 0, 0], [0, 32767, 0]], np.int16)  # normalized -> [0, 1]
    uv = np.array([[0, 0], [65535, 0], [0, 65535]], np.uint16)
    indices = np.array([0, 1, 2], np.uint16)
    blobs = [positions.tobytes() + b"\0\0", uv.tobytes(), indices.tobytes() + b"\0\0"]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    png = (DATA / "material_0.png").read_bytes()
    views = [{"buffer": 0, "byteOffset": int(o), "byteLength": len(b)} for o, b in zip(offsets, blobs)]
    views.append({"buffer": 0, "byteOffset": int(offsets[-1]), "byteLength": len(png)})
    tree = {
        "asset": {"version": "2.0"},
        "extensionsUsed": ["KHR_mesh_quantization"],
        "extensionsRequired": ["KHR_mesh_quantization"],
        "accessors": [
            {"bufferView": 0, "componentType": 5122, "normalized": True, "count": 3, "type": "VEC3",
             "min": [0, 0, 0], "max": [32767, 32767, 0]},
            {"bufferView": 1, "componentType": 5123, "normalized": True, "count": 3, "type": "VEC2"},
            {"bufferView": 2, "componentType": 5123, "count": 3, "type": "SCALAR"},
        ],
        "bufferViews": views,
        "images": [{"bufferView": 3, "mimeType": "image/png"}],
        "textures": [{"source": 0}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0}]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
    }  # fmt: skip
    binary = b"".join(blobs) + png
    binary += b"\0" * (-len(binary) % 4)
    tree["buffers"] = [{"byteLength": len(binary)}]
    text = json.dumps(tree).encode()
    text += b" " * (-len(text) % 4)
    body = (
        struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    )
    path = tmp_path / "quantized.glb"
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body)
    part = load_asset(path, up_axis="z").parts[0]
    np.testing.assert_allclose(part.vertices, [[0, 0, 0], [1, 0, 0], [0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(part.uv, [[0, 0], [1, 0], [0, 1]], atol=1e-6)


def test_malformed_extension_data_is_an_asset_error(tmp_path):
    def bad_transform(tree: dict) -> None:
        info = tree["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]
        info["extensions"] = {"KHR_texture_transform": {"offset": [1, 2, 3]}}

    def bad_lists(tree: dict) -> None:
        tree["extensionsUsed"] = 5

    for name, edit in (("transform.glb", bad_transform), ("lists.glb", bad_lists)):
        with pytest.raises(AssetError, match="malformed glTF") as info:
            load_asset(_export(tmp_path / name, edit))
        assert info.value.kind == "unreadable"


def test_extension_policy_error_for_required_warning_for_ignored(tmp_path):
    def required(tree: dict) -> None:
        tree["extensionsUsed"] = tree["extensionsRequired"] = ["EXT_meshopt_compression"]

    with pytest.raises(AssetError, match="unsupported glTF extension EXT_meshopt_compression") as info:
        load_asset(_export(tmp_path / "meshopt.glb", required))
    assert info.value.kind == "unsupported extension"

    def ignored(tree: dict) -> None:
        tree["extensionsUsed"] = ["KHR_materials_emissive_strength", "KHR_texture_transform"]

    with pytest.warns(UserWarning, match="ignored glTF extension.*KHR_materials_emissive_strength") as caught:
        load_asset(_export(tmp_path / "emissive.glb", ignored))
    assert "KHR_texture_transform" not in str(caught[0].message)


# --- FBX, Collada, 3DS, glTF 1.0 through assimp ---------------------------------------------------------

ASSIMP_CASES = [
    ("textured.fbx", "textured.glb"),
    ("textured.dae", "textured.glb"),
    ("textured.3ds", "textured.glb"),
    ("textured.gltf", "textured.glb"),  # glTF 1.0
    ("colored.fbx", "colored.glb"),
    ("colored.dae", "colored.glb"),
]


@pytest.mark.parametrize("name,plain", ASSIMP_CASES)
def test_assimp_formats_load_and_render_like_the_glb(name, plain, renderer):
    asset, reference = load_asset(DATA / name), load_asset(DATA / plain)
    assert asset.meta["reader"] == "assimp" and asset.num_faces == reference.num_faces == 24
    np.testing.assert_allclose(asset.bounds(), reference.bounds(), atol=1e-5)  # same frame, same up axis
    kept = "texture" if plain == "textured.glb" else "vertex_colors"
    assert all(getattr(p, kept) is not None for p in asset.parts), kept
    _assert_renders_like(renderer, DATA / name, DATA / plain)


def test_gltf1_embedded_texture_is_found_in_the_file(tmp_path, renderer):
    shutil.copy(DATA / "textured.bin", tmp_path / "textured.bin")
    tree = json.loads((DATA / "textured.gltf").read_text())
    image = next(iter(tree["images"].values()))
    image["uri"] = "data:image/png;base64," + base64.b64encode((DATA / image["uri"]).read_bytes()).decode()
    path = tmp_path / "embedded.gltf"  # no PNG beside it: the texture can only come from the data URI
    path.write_text(json.dumps(tree))
    part = load_asset(path).parts[0]
    np.testing.assert_array_equal(part.texture, load_asset(DATA / "textured.glb").parts[0].texture)
    _assert_renders_like(renderer, path, DATA / "textured.glb")


def test_fbx_embedded_texture_is_named_in_a_warning(tmp_path):
    text = (DATA / "textured.fbx").read_text()
    path = tmp_path / "embedded.fbx"  # its texture named "*0" (embedded), yet an ASCII file has no Content
    path.write_text(text.replace('"material_0.png"', '"*0"'))
    with pytest.warns(UserWarning, match="embedded texture"):
        asset = load_asset(path)
    assert asset.num_faces == 24 and asset.parts[0].texture is None


def _malformed(tmp: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for name in ("textured.fbx", "colored.fbx", "textured.dae", "textured.3ds", "textured.gltf"):
        data = (DATA / name).read_bytes()
        for cut in (len(data) // 2, len(data) * 9 // 10):
            out.append(tmp / f"cut{cut}_{name}")
            out[-1].write_bytes(data[:cut])
    for suffix in (".fbx", ".dae", ".3ds"):
        out.append(tmp / f"garbage{suffix}")
        out[-1].write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    out.append(tmp / "header.fbx")  # a binary FBX header, then noise
    out[-1].write_bytes(b"Kaydara FBX Binary  \x00\x1a\x00\xe8\x1c\x00\x00" + rng.bytes(2000))
    out.append(tmp / "lie.dae")  # an array that claims far more values than it holds
    out[-1].write_text(
        '<?xml version="1.0"?><COLLADA><library_geometries><geometry><mesh><source>'
        '<float_array count="999999999">1 2 3</float_array></source></mesh></geometry></library_geometries></COLLADA>'
    )
    shutil.copy(DATA / "material_0.png", tmp / "material_0.png")
    tree = json.loads((DATA / "textured.gltf").read_text())
    (tmp / "short.bin").write_bytes((DATA / "textured.bin").read_bytes()[:700])
    for buffer in tree["buffers"].values():
        buffer["uri"] = "short.bin"
    out.append(tmp / "short_buffer.gltf")
    out[-1].write_text(json.dumps(tree))
    for buffer in tree["buffers"].values():
        buffer["uri"] = "../outside.bin"
    out.append(tmp / "outside.gltf")
    out[-1].write_text(json.dumps(tree))
    return out


def test_malformed_new_formats_are_rejected_within_the_time_limit(tmp_path):
    for path in _malformed(tmp_path):
        start = time.monotonic()
        with pytest.raises(AssetError) as info:
            load_asset_isolated(path, timeout_s=30)
        assert time.monotonic() - start < 30 and info.value.path == str(path)
        assert info.value.kind in ("unreadable", "invalid"), (path.name, info.value)


def test_render_stage_names_why_a_loaded_asset_showed_nothing(tmp_path, renderer):
    from triflow3d.render.views import Source, ViewsConfig, render_source

    glass = trimesh.creation.box((1.0, 0.5, 0.3))
    glass.visual = trimesh.visual.TextureVisuals(
        material=trimesh.visual.material.PBRMaterial(baseColorFactor=[255, 255, 255, 0], alphaMode="BLEND")
    )
    glass.export(tmp_path / "glass.glb")
    cfg = ViewsConfig(rig="orbit:2", size=16)
    with pytest.raises(AssetError, match="every material is transparent") as info:
        render_source(renderer, Source("glass", tmp_path / "glass.glb"), cfg, tmp_path / "out")
    assert info.value.kind == "rendered nothing"
