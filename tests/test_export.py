"""Exports of generated objects: every file re-loads with an independent reader and has what it should."""

from __future__ import annotations

import dataclasses

import imageio.v3 as iio
import numpy as np
import PIL.Image
import pygltflib
import pytest
import torch
import trimesh

from triflow3d import export as ex
from triflow3d.errors import ConfigError
from triflow3d.pipeline import median_level
from triflow3d.triplane.mesh import decimate_mesh

ALL = ["glb", "obj", "ply", "mp4", "gif", "png", "triplane"]


@pytest.fixture(scope="module")
def gen(tiny_pipeline):
    return tiny_pipeline()("a red chair", seed=0)[0]


@pytest.fixture(scope="module")
def opts(gen):
    return ex.ExportOptions(
        resolution=16, threshold=median_level(gen), video_size=32, frames=4, views_size=24
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory, gen, opts):
    folder = tmp_path_factory.mktemp("export")
    return folder, ex.export_generated(gen, folder, ALL, opts)


def colored_sphere() -> trimesh.Trimesh:
    s = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    rgb = np.round((s.vertices / 1.6 + 0.5) * 255)
    return trimesh.Trimesh(
        s.vertices, s.faces, vertex_colors=np.c_[rgb, np.full(len(rgb), 255)].astype(np.uint8)
    )


def test_all_formats_written(exported):
    folder, res = exported
    assert res.files == [
        "mesh.glb", "mesh.obj", "mesh.ply", "triplane.safetensors", "turntable.gif", "turntable.mp4", "views.png",
    ] and not res.warnings  # fmt: skip
    assert res.vertices > 0 and res.faces > 0
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_glb_reloads_with_colours(exported):
    folder, res = exported
    mesh = trimesh.load(folder / "mesh.glb", force="mesh", process=False)
    assert len(mesh.vertices) == res.vertices and len(mesh.faces) == res.faces
    assert mesh.visual.kind == "vertex" and np.asarray(mesh.visual.vertex_colors).std() > 0
    gltf = pygltflib.GLTF2().load(str(folder / "mesh.glb"))
    prim = gltf.meshes[0].primitives[0]
    assert len(gltf.meshes) == 1 and prim.attributes.COLOR_0 is not None
    assert gltf.accessors[prim.attributes.POSITION].count == res.vertices


def test_obj_and_ply_reload_with_colours(exported):
    folder, res = exported
    for name in ("mesh.obj", "mesh.ply"):
        mesh = trimesh.load(folder / name, force="mesh", process=False)
        assert len(mesh.faces) == res.faces, name
        assert mesh.visual.kind == "vertex" and np.asarray(mesh.visual.vertex_colors)[:, :3].std() > 0, name
    ply = trimesh.load(folder / "mesh.ply", process=False)
    obj = trimesh.load(folder / "mesh.obj", process=False)
    # PLY stays z-up, OBJ is Y-up: file (x, y, z) = world (x, z, -y)
    np.testing.assert_allclose(obj.vertices, ply.vertices[:, [0, 2, 1]] * [1, 1, -1], atol=1e-6)


def test_videos_have_all_frames_and_grid_size(exported, opts):
    folder, _ = exported
    mp4 = iio.imread(folder / "turntable.mp4")
    assert mp4.shape == (opts.frames, 32, 32, 3)
    with PIL.Image.open(folder / "turntable.gif") as gif:
        assert gif.n_frames == opts.frames and gif.size == (32, 32)
    with PIL.Image.open(folder / "views.png") as png:
        assert png.size == (2 * 24, 3 * 24)  # the six rig views, 2 columns x 3 rows


def test_triplane_round_trip(exported, gen):
    folder, _ = exported
    tri, meta = ex.load_triplane(folder / "triplane.safetensors")
    assert torch.equal(tri, gen.triplane)
    assert meta["prompt"] == "a red chair" and meta["seed"] == "0" and meta["encoder"] == gen.encoder_id
    assert meta["conventions_version"] == "1" and meta["sampler"] == "euler"


def test_volume_preview_and_empty_mesh(tmp_path, gen, opts):
    quick = dataclasses.replace(opts, preview="volume", frames=2, video_size=16)
    res = ex.export_generated(gen, tmp_path / "v", ["gif"], quick)
    with PIL.Image.open(tmp_path / "v" / "turntable.gif") as gif:
        assert gif.size == (16, 16)
    assert res.files == ["turntable.gif"] and res.vertices == 0  # volume previews need no mesh
    empty = ex.export_generated(
        gen, tmp_path / "e", ["glb", "triplane"], dataclasses.replace(opts, threshold=1e6)
    )
    assert empty.files == ["triplane.safetensors"] and "empty mesh" in empty.warnings[0]


def test_decimation_keeps_colours():
    sphere = colored_sphere()
    small = decimate_mesh(sphere, 200)
    assert 150 <= len(small.faces) <= 200 and small.visual.kind == "vertex"
    # every kept vertex's colour is its nearest original vertex's colour: close to the position ramp
    expected = np.round((small.vertices / 1.6 + 0.5) * 255)
    assert np.abs(np.asarray(small.visual.vertex_colors)[:, :3] - expected).mean() < 12
    assert len(decimate_mesh(sphere, 0.5).faces) <= len(sphere.faces) // 2 + 2
    with pytest.raises(ConfigError):
        decimate_mesh(sphere, 1.5)


def test_rasterize_uv_covers_triangles_once():
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    texels, bary = ex.rasterize_uv(uv, np.array([[0, 1, 2], [0, 2, 3]]), 16)
    assert len(np.unique(texels[:, 0] * 16 + texels[:, 1])) == 256  # the square is covered completely
    np.testing.assert_allclose(bary.sum(1), 1.0, atol=1e-9)
    assert (bary >= -1e-6).all()


def test_textured_glb_and_obj(tmp_path):
    sphere = colored_sphere()

    def color_fn(points: np.ndarray) -> np.ndarray:
        return np.clip(points / 1.6 + 0.5, 0, 1)

    part = ex.bake_texture(sphere, color_fn, size=64)
    assert part.texture.shape == (64, 64, 4) and part.uv.shape == (len(part.vertices), 2)
    # the texture at each vertex's uv holds the field colour of that vertex
    j = np.clip((part.uv[:, 0] * 64).astype(int), 0, 63)
    i = np.clip((part.uv[:, 1] * 64).astype(int), 0, 63)
    err = np.abs(part.texture[i, j, :3] / 255.0 - color_fn(part.vertices)).mean()
    assert err < 0.05
    ex.save_generated_mesh(part, tmp_path / "t.glb")
    gltf = pygltflib.GLTF2().load(str(tmp_path / "t.glb"))
    assert len(gltf.images) == 1 and len(gltf.textures) == 1
    assert gltf.meshes[0].primitives[0].attributes.TEXCOORD_0 is not None
    loaded = trimesh.load(tmp_path / "t.glb", force="mesh")
    assert loaded.visual.kind == "texture" and loaded.visual.material.baseColorTexture.size == (64, 64)
    ex.save_generated_mesh(part, tmp_path / "t.obj")
    assert (tmp_path / "t.mtl").is_file()
    obj = trimesh.load(tmp_path / "t.obj", force="mesh")
    assert obj.visual.kind == "texture" and len(obj.faces) == len(part.faces)


def test_textured_export_of_a_generated_object(tmp_path, gen, opts):
    res = ex.export_generated(gen, tmp_path, ["glb", "obj"], dataclasses.replace(opts, texture=32))
    assert {"mesh.glb", "mesh.obj", "mesh.mtl"} <= set(res.files)
    gltf = pygltflib.GLTF2().load(str(tmp_path / "mesh.glb"))
    assert len(gltf.images) == 1


def test_bad_formats_and_sizes(tmp_path):
    assert ex.parse_formats("GLB, png,glb") == ["glb", "png"]
    for bad in ("", "fbx", "glb,usdz"):
        with pytest.raises(ConfigError):
            ex.parse_formats(bad)
    with pytest.raises(ConfigError, match="multiple of 16"):
        ex.save_video(np.zeros((2, 20, 20, 3), np.uint8), tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()
