"""Asset loading (every format, up-axis rule, texture orientation), bad input, time limit, normalisation."""

from __future__ import annotations

import io
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import trimesh

import triflow3d.assets.load as load_module
from triflow3d.assets import (
    SUPPORTED_EXTENSIONS,
    Asset,
    AssetError,
    MeshPart,
    iter_asset_files,
    load_asset,
    load_asset_isolated,
    normalization_transform,
    normalize,
)
from triflow3d.conventions import OBJECT_RADIUS

# A 2x2 texture whose texels are easy to tell apart: row 0 is the TOP of the image.
RED, GREEN, BLUE, WHITE = (255, 0, 0, 255), (0, 255, 0, 255), (0, 0, 255, 255), (255, 255, 255, 255)
TEXELS = np.array([[RED, GREEN], [BLUE, WHITE]], dtype=np.uint8)  # (2, 2, 4)
TRIANGLE = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=np.float32)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _texel(texture: np.ndarray, uv: np.ndarray) -> tuple[int, ...]:
    """Nearest texel at our uv (v = 0 is the top row)."""
    h, w = texture.shape[:2]
    row, col = min(int(uv[1] * h), h - 1), min(int(uv[0] * w), w - 1)
    return tuple(int(x) for x in texture[row, col])


def _glb(
    positions: np.ndarray,
    indices: np.ndarray,
    *,
    uv: np.ndarray | None = None,
    png: bytes | None = None,
    node_matrices: list[list[float]] | None = None,
    version: int = 2,
) -> bytes:
    """A minimal binary glTF written by hand (independent of trimesh's exporter)."""
    blobs, views, accessors = [], [], []

    def add(array: np.ndarray, kind: str, component: int) -> int:
        data = np.ascontiguousarray(array).tobytes()
        offset = sum(len(b) for b in blobs)
        blobs.append(data + b"\0" * (-len(data) % 4))
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data)})
        count = len(array) if kind != "SCALAR" else array.size
        accessors.append(
            {"bufferView": len(views) - 1, "componentType": component, "count": count, "type": kind}
        )
        return len(accessors) - 1

    attributes = {"POSITION": add(positions.astype(np.float32), "VEC3", 5126)}
    primitive = {"attributes": attributes, "indices": add(indices.astype(np.uint32).ravel(), "SCALAR", 5125)}
    tree: dict = {"asset": {"version": "2.0"}, "scene": 0, "meshes": [{"primitives": [primitive]}]}
    if uv is not None:
        attributes["TEXCOORD_0"] = add(uv.astype(np.float32), "VEC2", 5126)
        offset = sum(len(b) for b in blobs)
        blobs.append(png + b"\0" * (-len(png) % 4))
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(png)})
        tree.update(
            images=[{"bufferView": len(views) - 1, "mimeType": "image/png"}], textures=[{"source": 0}]
        )
        tree["materials"] = [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}]
        primitive["material"] = 0
    matrices = node_matrices or [None]
    tree["nodes"] = [{"mesh": 0, **({"matrix": m} if m else {})} for m in matrices]
    tree["scenes"] = [{"nodes": list(range(len(matrices)))}]
    binary = b"".join(blobs)
    tree.update(bufferViews=views, accessors=accessors, buffers=[{"byteLength": len(binary)}])
    text = json.dumps(tree).encode()
    text += b" " * (-len(text) % 4)
    chunks = (
        struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    )
    return struct.pack("<4sII", b"glTF", version, 12 + len(chunks)) + chunks


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# --- formats --------------------------------------------------------------------------------------


def test_glb_texture_uv_orientation_and_y_up(tmp_path):
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    uv = np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])  # glTF: v = 0 at the top
    path = _write(
        tmp_path / "quad.glb", _glb(positions, np.array([[0, 1, 2], [2, 1, 3]]), uv=uv, png=_png(TEXELS))
    )
    asset = load_asset(path)
    (part,) = asset.parts
    assert part.has_texture and part.texture.shape == (2, 2, 4) and part.texture.dtype == np.uint8
    np.testing.assert_array_equal(part.texture, TEXELS)
    np.testing.assert_allclose(part.uv, uv, atol=1e-6)  # glTF convention survives trimesh's v flip
    assert [_texel(part.texture, t) for t in part.uv] == [RED, GREEN, BLUE, WHITE]
    # file +Y (vertices 2, 3) is world +z; file +X stays +x
    np.testing.assert_allclose(part.vertices, [[0, 0, 0], [1, 0, 0], [0, 0, 1], [1, 0, 1]], atol=1e-7)
    assert asset.meta["up_axis"] == "y" and asset.source == str(path)


def test_up_axis_rule_and_override(tmp_path):
    glb = _write(tmp_path / "t.glb", _glb(TRIANGLE, np.array([[0, 1, 2]])))
    np.testing.assert_allclose(load_asset(glb).parts[0].vertices, [[0, 0, 0], [1, 0, 0], [0, 0, 2]])
    np.testing.assert_allclose(load_asset(glb, up_axis="z").parts[0].vertices, TRIANGLE)
    # normals follow: file +Z face normal -> world -y
    np.testing.assert_allclose(load_asset(glb).parts[0].normals, [[0, -1, 0]] * 3, atol=1e-6)
    ply = tmp_path / "t.ply"
    trimesh.Trimesh(TRIANGLE, [[0, 1, 2]], process=False).export(ply)
    np.testing.assert_allclose(load_asset(ply).parts[0].vertices, TRIANGLE)  # PLY is z-up
    np.testing.assert_allclose(
        load_asset(ply, up_axis="y").parts[0].vertices, [[0, 0, 0], [1, 0, 0], [0, 0, 2]]
    )


def test_glb_node_instances_are_flattened(tmp_path):
    shift = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 5, 0, 0, 1]  # column-major translation by file +X 5
    mirror = [-1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    path = _write(tmp_path / "n.glb", _glb(TRIANGLE, np.array([[0, 1, 2]]), node_matrices=[shift, mirror]))
    b, a = sorted(load_asset(path).parts, key=lambda p: p.vertices[:, 0].min())  # order is trimesh's
    np.testing.assert_allclose(a.vertices, [[5, 0, 0], [6, 0, 0], [5, 0, 2]])
    np.testing.assert_allclose(b.vertices, [[0, 0, 0], [-1, 0, 0], [0, 0, 2]])
    # the mirrored instance keeps an outward winding: its face normal agrees with its vertex normals
    tri = b.vertices[b.faces[0]]
    face_normal = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    assert np.dot(face_normal, b.normals[0]) > 0


def test_obj_mtl_texture_through_windows_path(tmp_path):
    (tmp_path / "tex.png").write_bytes(_png(TEXELS))
    _write(tmp_path / "m.mtl", "newmtl skin\nKd 0.5 0.5 0.5\nmap_Kd .\\tex.png\n")
    obj = "mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0.25 0.75\nvt 0.75 0.75\nvt 0.25 0.25\n"
    path = _write(tmp_path / "m.obj", obj + "usemtl skin\nf 1/1 2/2 3/3\n")
    (part,) = load_asset(path).parts
    assert part.has_texture
    # OBJ vt is v-up: (0.25, 0.75) is near the top of the image -> red, (0.25, 0.25) -> blue
    assert [_texel(part.texture, t) for t in part.uv] == [RED, GREEN, BLUE]
    assert part.base_color == (1.0, 1.0, 1.0, 1.0)  # map_Kd replaces Kd
    np.testing.assert_allclose(part.vertices, [[0, 0, 0], [1, 0, 0], [0, 0, 1]])  # OBJ is Y-up


def test_obj_vertex_colors(tmp_path):
    path = _write(tmp_path / "c.obj", "v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 0 1 0 0 0 0.5\nf 1 2 3\n")
    (part,) = load_asset(path).parts
    np.testing.assert_allclose(part.vertex_colors, [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 0.5, 1]], atol=1 / 255)
    assert part.texture is None and part.vertex_colors.dtype == np.float32
    # with an MTL material too (trimesh alone drops the colours then)
    _write(tmp_path / "k.mtl", "newmtl a\nKd 0.2 0.4 0.6\n")
    text = "mtllib k.mtl\nusemtl a\n" + path.read_text()
    (part,) = load_asset(_write(tmp_path / "k.obj", text)).parts
    np.testing.assert_allclose(part.vertex_colors[:, 0], [1, 0, 0], atol=1 / 255)
    # material colour without colours or texture: the base colour
    (part,) = load_asset(
        _write(tmp_path / "kd.obj", "mtllib k.mtl\nusemtl a\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    ).parts
    np.testing.assert_allclose(part.base_color, (0.2, 0.4, 0.6, 1.0), atol=1 / 255)


def test_ply_uchar_rgba_colors(tmp_path):
    rgba = np.array([[255, 0, 0, 128], [0, 255, 0, 255], [0, 0, 255, 0]], dtype=np.uint8)
    path = tmp_path / "c.ply"
    trimesh.Trimesh(TRIANGLE, [[0, 1, 2]], vertex_colors=rgba, process=False).export(path)
    (part,) = load_asset(path).parts
    np.testing.assert_allclose(part.vertex_colors, rgba / 255.0, atol=1e-6)
    assert part.faces.dtype == np.int64 and part.vertices.dtype == np.float32


def test_ply_face_colors_become_vertex_colors(tmp_path):
    path = tmp_path / "f.ply"
    box = trimesh.creation.box()
    colors = np.tile([[10, 20, 30, 255]], (len(box.faces), 1))
    colors[0] = [200, 0, 0, 255]
    trimesh.Trimesh(box.vertices, box.faces, face_colors=colors, process=False).export(path)
    (part,) = load_asset(path).parts
    assert len(part.faces) == 12 and len(part.vertices) == 36  # each face owns its corners
    np.testing.assert_allclose(part.vertex_colors[part.faces[0]], [[200 / 255, 0, 0, 1]] * 3, atol=1e-6)


@pytest.mark.parametrize("ext", [".stl", ".off"])
def test_stl_off(tmp_path, ext):
    box = trimesh.creation.box(extents=(1, 2, 3))
    path = tmp_path / f"box{ext}"
    box.export(path)
    asset = load_asset(path)
    assert asset.num_faces == 12
    np.testing.assert_allclose(
        asset.bounds(), [[-0.5, -1, -1.5], [0.5, 1, 1.5]], atol=1e-6
    )  # z-up: unchanged
    normals = np.concatenate([p.normals for p in asset.parts])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)


def test_glb_round_trip_through_writer(tmp_path):
    export = pytest.importorskip("triflow3d.assets.export")
    rng = np.random.default_rng(0)
    part = MeshPart(
        vertices=rng.normal(size=(4, 3)).astype(np.float32),
        faces=np.array([[0, 1, 2], [0, 2, 3]], dtype=np.int64),
        uv=rng.uniform(size=(4, 2)).astype(np.float32),
        texture=TEXELS.copy(),
    )
    path = tmp_path / "rt.glb"
    export.save_glb(Asset(parts=(part,)), path)
    (back,) = load_asset(path).parts
    np.testing.assert_array_equal(back.vertices, part.vertices)
    np.testing.assert_array_equal(back.faces, part.faces)
    np.testing.assert_allclose(back.uv, part.uv, atol=1e-6)
    np.testing.assert_array_equal(back.texture, part.texture)


# --- bad input --------------------------------------------------------------------------------------


def _bad_cases(tmp: Path) -> list[tuple[Path, str, str, dict]]:
    """(file, a word the reason must contain, the error kind, load_asset kwargs)."""
    good = _glb(TRIANGLE, np.array([[0, 1, 2]]))
    nan = TRIANGLE.copy()
    nan[1, 2] = np.nan
    (tmp / "mt.mtl").write_text("newmtl a\nmap_Kd gone.png\n")
    uv_obj = "mtllib mt.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nusemtl a\nf 1/1 2/2 3/3\n"
    tri_obj = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 3 2 1\n"
    cloud = trimesh.PointCloud(np.random.default_rng(0).normal(size=(9, 3))).export(file_type="ply")
    cases = [
        ("empty.glb", b"", "empty", "unreadable", {}),
        ("empty.obj", b"", "empty", "unreadable", {}),
        ("garbage.glb", os.urandom(512), "glTF", "unreadable", {}),
        ("garbage.ply", b"\x00\xff" * 300, "parse", "unreadable", {}),
        ("garbage.stl", bytes(range(256)) * 3, "parse", "unreadable", {}),
        ("garbage.gltf", b"{not json", "JSON", "unreadable", {}),
        ("truncated.glb", good[: len(good) // 2], "truncated", "unreadable", {}),
        ("points.ply", cloud, "no triangle", "no geometry", {}),
        ("lines.obj", "v 0 0 0\nv 1 1 1\nl 1 2\n", "no geometry decoded", "no geometry", {}),
        ("range.glb", _glb(TRIANGLE, np.array([[0, 1, 7]])), "out of range", "invalid geometry", {}),
        ("range.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "range", "unreadable", {}),
        ("nan.glb", _glb(nan, np.array([[0, 1, 2]])), "non-finite", "invalid geometry", {}),
        ("inf.obj", "v 0 0 inf\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite", "invalid geometry", {}),
        ("notex.obj", uv_obj, "gone.png", "missing file", {}),
        ("model.usdz", b"whatever", "unsupported", "unsupported format", {}),
        ("scene.blend", b"BLENDER", "export it to glTF", "unsupported format", {}),
        ("model.fbx", b"whatever", "could not parse", "unreadable", {}),
        ("big.obj", tri_obj, "limit", "too large", {"max_bytes": 16}),
        ("many.obj", tri_obj, "faces", "too large", {"max_faces": 1}),
        ("v3.gltf", json.dumps({"asset": {"version": "3.0"}}), "version", "unsupported format", {}),
        ("v1.glb", struct.pack("<4sII", b"glTF", 1, 20) + b"\0" * 8, "JSON", "unreadable", {}),
        ("missing.stl", None, "no such file", "missing file", {}),
    ]
    return [
        (tmp / n, word, kind, kw) if d is None else (_write(tmp / n, d), word, kind, kw)
        for n, d, word, kind, kw in cases
    ]


def test_bad_inputs_raise_asset_error_naming_the_file(tmp_path):
    cases = _bad_cases(tmp_path)
    for path, word, kind, kwargs in cases:
        with pytest.raises(AssetError) as info:
            load_asset(path, **kwargs)
        assert info.value.path == str(path), path
        assert word.lower() in info.value.reason.lower(), (path.name, info.value.reason)
        assert info.value.kind == kind, (path.name, info.value.kind, info.value.reason)
        assert str(path) in str(info.value)


def test_missing_texture_allowed_drops_it_with_a_warning(tmp_path):
    path = next(p for p, *_ in _bad_cases(tmp_path) if p.name == "notex.obj")
    with pytest.warns(UserWarning, match="gone.png"):
        asset = load_asset(path, allow_missing_textures=True)
    assert asset.num_faces == 1 and asset.parts[0].texture is None


def test_bad_up_axis_is_a_config_error(tmp_path):
    from triflow3d.errors import ConfigError

    path = _write(tmp_path / "t.glb", _glb(TRIANGLE, np.array([[0, 1, 2]])))
    with pytest.raises(ConfigError):
        load_asset(path, up_axis="x")


# --- per-file time limit ------------------------------------------------------------------------------


def test_isolated_load_matches_and_forwards_errors_and_warnings(tmp_path):
    path = _write(tmp_path / "t.glb", _glb(TRIANGLE, np.array([[0, 1, 2]])))
    direct, isolated = load_asset(path), load_asset_isolated(path, timeout_s=30)
    np.testing.assert_array_equal(direct.parts[0].vertices, isolated.parts[0].vertices)
    bad = _write(tmp_path / "bad.ply", b"\x00" * 64)
    with pytest.raises(AssetError, match="bad.ply"):
        load_asset_isolated(bad, timeout_s=30)
    notex = next(p for p, *_ in _bad_cases(tmp_path) if p.name == "notex.obj")
    with pytest.warns(UserWarning, match="gone.png"):
        load_asset_isolated(notex, timeout_s=30, allow_missing_textures=True)


def test_isolated_load_times_out_and_kills_the_child(tmp_path, monkeypatch):
    def slow(path, **kwargs):
        time.sleep(60)

    monkeypatch.setattr(load_module, "load_asset", slow)
    start = time.monotonic()
    with pytest.raises(AssetError, match=r"timed out after 0.5 s") as info:
        load_asset_isolated(tmp_path / "slow.glb", timeout_s=0.5)
    assert time.monotonic() - start < 10 and info.value.path == str(tmp_path / "slow.glb")


def test_isolated_load_reports_a_dead_child(tmp_path, monkeypatch):
    monkeypatch.setattr(load_module, "load_asset", lambda path, **kw: os._exit(3))
    with pytest.raises(AssetError, match="exit code 3"):
        load_asset_isolated(tmp_path / "x.glb", timeout_s=30)


# --- file discovery ----------------------------------------------------------------------------------


def test_iter_asset_files(tmp_path):
    for name in ["b/z.obj", "b/z.mtl", "a.GLB", "c/d/e.ply", "c/tex.png", ".hidden/x.stl", "c/.y.off"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = iter_asset_files([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.GLB", "b/z.obj", "c/d/e.ply"]
    assert iter_asset_files(tmp_path / "a.GLB") == [tmp_path / "a.GLB"]
    assert iter_asset_files([tmp_path / "a.GLB", tmp_path]) == found  # no duplicates, first order kept
    with pytest.warns(UserWarning, match="unsupported"):
        assert iter_asset_files([tmp_path / "b/z.mtl"]) == []
    with pytest.raises(AssetError, match="no such"):
        iter_asset_files([tmp_path / "nope"])
    assert set(SUPPORTED_EXTENSIONS) == {
        ".glb",
        ".gltf",
        ".obj",
        ".ply",
        ".stl",
        ".off",
        ".fbx",
        ".dae",
        ".3ds",
    }


# --- normalisation -------------------------------------------------------------------------------------


def _random_asset(seed: int = 0) -> Asset:
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(2):
        v = (rng.normal(size=(20, 3)) * [3.0, 0.5, 1.0] + [10.0, -4.0, 2.0]).astype(np.float32)
        parts.append(MeshPart(vertices=v, faces=rng.integers(0, 20, size=(15, 3)).astype(np.int64)))
    return Asset(parts=tuple(parts), source="random", meta={"format": "test"})


def test_normalize_fits_sphere_centred_and_uniform():
    asset = _random_asset()
    out = normalize(asset)
    v0, v1 = asset.all_vertices().astype(np.float64), out.all_vertices().astype(np.float64)
    used = np.unique(np.concatenate([p.faces.ravel() + 20 * i for i, p in enumerate(asset.parts)]))
    radii = np.linalg.norm(v1[used], axis=1)
    assert radii.max() <= OBJECT_RADIUS and radii.max() > OBJECT_RADIUS * (1 - 1e-5)  # inside, and tight
    np.testing.assert_allclose(v1[used].min(0) + v1[used].max(0), 0.0, atol=1e-5)  # bbox centred
    assert np.abs(v1[used]).max() <= 1.0  # inside the triplane box
    d0 = np.linalg.norm(v0[:, None] - v0[None], axis=-1)
    d1 = np.linalg.norm(v1[:, None] - v1[None], axis=-1)
    ratio = d1[d0 > 0] / d0[d0 > 0]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # uniform scale
    matrix = np.asarray(out.meta["normalization_transform"])
    np.testing.assert_allclose(matrix, normalization_transform(asset), rtol=1e-12)
    np.testing.assert_allclose(v0 @ matrix[:3, :3].T + matrix[:3, 3], v1, atol=1e-5)
    assert out.meta["format"] == "test" and out.source == "random"


def test_normalize_ignores_unused_vertices_and_composes_meta():
    part = MeshPart(
        vertices=np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [1e6, 0, 0]], np.float32),
        faces=np.array([[0, 1, 2]]),
    )
    once = normalize(Asset(parts=(part,)), radius=1.0)
    np.testing.assert_allclose(
        once.parts[0].vertices[:3].min(0) + once.parts[0].vertices[:3].max(0), 0, atol=1e-6
    )
    np.testing.assert_allclose(np.linalg.norm(once.parts[0].vertices[:3], axis=1).max(), 1.0, rtol=1e-5)
    twice = normalize(once, radius=0.5)
    total = np.asarray(twice.meta["normalization_transform"])
    np.testing.assert_allclose(
        part.vertices[:3] @ total[:3, :3].T + total[:3, 3], twice.parts[0].vertices[:3], atol=1e-6
    )


def test_normalize_degenerate_raises():
    point = MeshPart(vertices=np.ones((3, 3), np.float32), faces=np.array([[0, 1, 2]]))
    with pytest.raises(AssetError, match="degenerate"):
        normalize(Asset(parts=(point,), source="dot.obj"))


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import sys, triflow3d.assets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
