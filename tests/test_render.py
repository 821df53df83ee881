"""Offscreen renderers (EGL rasteriser and CPU ray caster) and the ``render`` dataset stage."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from triflow3d import conventions as cv
from triflow3d.assets.types import Asset, MeshPart
from triflow3d.cameras import Rig, orbit_rig, zero123pp_rig
from triflow3d.errors import ConfigError
from triflow3d.render import RenderOutput, make_renderer, views

SIZE = 64


def _renderer(backend: str):
    try:
        return make_renderer(backend)
    except RuntimeError as e:
        pytest.skip(f"no EGL context here: {e}")


@pytest.fixture(scope="module", params=["egl", "raycast"])
def renderer(request):
    return _renderer(request.param)


def _part(mesh: trimesh.Trimesh, smooth: bool = False, **kw) -> MeshPart:
    normals = np.asarray(mesh.vertex_normals, np.float32) if smooth else None
    return MeshPart(
        vertices=mesh.vertices.astype(np.float32), faces=mesh.faces.astype(np.int64), normals=normals, **kw
    )


def _sphere(radius: float = 0.5) -> Asset:
    return Asset(parts=(_part(trimesh.creation.icosphere(subdivisions=4, radius=radius), smooth=True),))


def _front_rig() -> Rig:
    """One camera on +x at height 0: image right = world +y, image up = world +z."""
    return orbit_rig(1, elevation_deg=0.0)


def _quad(**kw) -> MeshPart:
    """A unit square in the plane x = 0 facing +x; uv (glTF, v = 0 top) maps the texture unmirrored."""
    v = np.array([[0, -0.5, 0.5], [0, 0.5, 0.5], [0, -0.5, -0.5], [0, 0.5, -0.5]], np.float32)  # TL TR BL BR
    uv = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)
    return MeshPart(vertices=v, faces=np.array([[0, 2, 1], [1, 2, 3]]), uv=uv, **kw)


def _quadrant_colours(out: RenderOutput) -> dict[str, np.ndarray]:
    """Mean sRGB of the four quadrants of the quad (seen by _front_rig), away from edges."""
    img, c, q = out.rgba[0, ..., :3], SIZE // 2, SIZE // 12
    return {
        "tl": img[c - 2 * q : c - q, c - 2 * q : c - q].mean((0, 1)),
        "tr": img[c - 2 * q : c - q, c + q : c + 2 * q].mean((0, 1)),
        "bl": img[c + q : c + 2 * q, c - 2 * q : c - q].mean((0, 1)),
        "br": img[c + q : c + 2 * q, c + q : c + 2 * q].mean((0, 1)),
    }


RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


# --- renderer -----------------------------------------------------------------------------------
def test_sphere_silhouette_matches_analytic_area(renderer):
    r, d = 0.5, cv.ZERO123PP_RADIUS
    out = renderer.render(_sphere(r), zero123pp_rig(), SIZE)
    f = cv.focal_from_fov(cv.ZERO123PP_FOV_DEG)
    area = math.pi * (SIZE * f * math.tan(math.asin(r / d))) ** 2
    counts = out.mask.reshape(6, -1).sum(1)
    assert out.rgba.shape == (6, SIZE, SIZE, 4) and out.depth.shape == out.mask.shape == (6, SIZE, SIZE)
    np.testing.assert_allclose(counts, area, rtol=0.02)
    # Centred: the silhouette's centroid is the image centre.
    ii, jj = np.nonzero(out.mask[0])
    assert abs(ii.mean() + 0.5 - SIZE / 2) < 0.3 and abs(jj.mean() + 0.5 - SIZE / 2) < 0.3


def test_sphere_depth_and_normal_at_centre(renderer):
    r, d, s = 0.5, cv.ZERO123PP_RADIUS, 65  # odd size: the centre pixel is on the optical axis
    rig = zero123pp_rig()
    out = renderer.render(_sphere(r), rig, s)
    assert abs(out.depth[0, 32, 32] - (d - r)) < 0.01
    towards_camera = rig.c2w[0, :3, 2].numpy()
    assert np.dot(out.normal[0, 32, 32], towards_camera) > 0.99
    assert (out.depth[~out.mask] == 0).all() and (out.normal[~out.mask] == 0).all()
    assert out.depth[out.mask].min() > d - r - 0.01 and out.depth[out.mask].max() < d + 0.01


def test_red_cube_is_red_on_white(renderer):
    part = _part(trimesh.creation.box(extents=(1, 1, 1)), base_color=(1.0, 0.0, 0.0, 1.0))
    out = renderer.render(Asset(parts=(part,)), zero123pp_rig(), SIZE)
    rgb = out.rgb_on_white()
    inside = out.rgba[..., :3][out.mask]
    assert inside[:, 0].mean() > 0.6 and inside[:, 1:].max() < 0.02
    assert inside[:, 0].max() > 0.95  # faces seen head-on keep the albedo
    empty = out.rgba[..., 3] == 0
    assert empty.mean() > 0.5 and np.allclose(rgb[empty], 1.0)
    assert np.allclose(rgb, out.rgba[..., :3] * out.rgba[..., 3:] + 1 - out.rgba[..., 3:])


def test_texture_orientation(renderer):
    tex = np.zeros((8, 8, 4), np.uint8)
    tex[..., 3] = 255
    tex[:4, :4, :3], tex[:4, 4:, :3], tex[4:, :4, :3], tex[4:, 4:, :3] = RED, BLUE, GREEN, YELLOW
    out = renderer.render(Asset(parts=(_quad(texture=tex),)), _front_rig(), SIZE)
    q = _quadrant_colours(out)
    expected = {"tl": RED, "tr": BLUE, "bl": GREEN, "br": YELLOW}
    for name, colour in expected.items():
        np.testing.assert_allclose(q[name], np.array(colour) / 255, atol=0.05, err_msg=name)


def test_vertex_colours_and_base_colour_multiply(renderer):
    colours = np.array(
        [[1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 1, 1], [0, 0, 1, 1]], np.float32
    )  # top red, bottom blue
    out = renderer.render(Asset(parts=(_quad(vertex_colors=colours),)), _front_rig(), SIZE)
    q = _quadrant_colours(out)
    assert q["tl"][0] > 0.6 and q["tl"][2] < 0.5 and q["bl"][2] > 0.6 and q["bl"][0] < 0.5
    half = _quad(vertex_colors=colours, base_color=(0.5, 0.5, 0.5, 1.0))
    q2 = _quadrant_colours(renderer.render(Asset(parts=(half,)), _front_rig(), SIZE))
    assert q2["tl"][0] < q["tl"][0] - 0.2  # the base colour darkens the vertex colour


def test_alpha_cutoff_makes_transparent_texels_see_through(renderer):
    tex = np.full((4, 4, 4), 255, np.uint8)
    tex[:, 2:, 3] = 0  # right half transparent
    out = renderer.render(Asset(parts=(_quad(texture=tex),)), _front_rig(), SIZE)
    assert out.mask[0, SIZE // 2, SIZE // 2 - 8] and not out.mask[0, SIZE // 2, SIZE // 2 + 8]


def test_empty_asset_renders_nothing(renderer):
    out = renderer.render(Asset(parts=()), zero123pp_rig(), 16)
    assert not out.mask.any() and (out.rgba == 0).all()


def test_backends_agree():
    egl, ray = _renderer("egl"), _renderer("raycast")
    tex = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    tex[..., 3] = 255
    torus = trimesh.creation.torus(0.6, 0.25, major_sections=48, minor_sections=24)
    box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    uv = np.asarray(box.vertices[:, :2] + 0.5, np.float32)
    asset = Asset(
        parts=(_part(torus, smooth=True, base_color=(0.2, 0.8, 0.3, 1)), _part(box, uv=uv, texture=tex))
    )
    rig = orbit_rig(3, elevation_deg=30.0)
    a, b = egl.render(asset, rig, SIZE), ray.render(asset, rig, SIZE)
    iou = (a.mask & b.mask).sum() / (a.mask | b.mask).sum()
    assert iou > 0.97
    both = a.mask & b.mask
    assert np.abs(a.depth[both] - b.depth[both]).mean() < 1e-3
    assert np.median(np.abs(a.rgba[..., :3][both] - b.rgba[..., :3][both])) < 0.03
    assert np.abs(a.rgba[..., 3] - b.rgba[..., 3]).mean() < 0.02


def test_auto_falls_back_to_raycast_with_a_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "triflow3d.render.raster", None)  # import fails like a missing libEGL
    with pytest.warns(UserWarning, match="ray caster"):
        assert make_renderer("auto").name == "raycast"
    with pytest.raises(RuntimeError, match="EGL"):
        make_renderer("egl")
    with pytest.raises(ValueError, match="backend"):
        make_renderer("vulkan")


# --- the dataset stage --------------------------------------------------------------------------
try:
    from triflow3d.assets import iter_asset_files, load_asset_isolated, normalize  # noqa: F401

    HAVE_LOADER = True
except ImportError:
    HAVE_LOADER = False
needs_loader = pytest.mark.skipif(
    not HAVE_LOADER, reason="triflow3d.assets.load_asset_isolated not available yet"
)


def _glb(path, colour=(255, 0, 0, 255)):
    mesh = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    mesh.visual.face_colors = colour
    mesh.export(path)
    return path


@pytest.fixture(scope="module")
def stage_renderer():
    try:
        return make_renderer("egl")
    except RuntimeError:
        return make_renderer("raycast")


CFG = dict(rig="orbit:2", size=32, passes=("rgba", "depth", "normal", "mask"))


@needs_loader
def test_stage_writes_folders_cameras_and_manifest_then_skips(tmp_path, stage_renderer):
    src = tmp_path / "in"
    src.mkdir()
    _glb(src / "a.glb"), _glb(src / "b.glb", (0, 0, 255, 255))
    (src / "broken.glb").write_bytes(b"glTF not really a file")
    out, cfg = tmp_path / "out", views.ViewsConfig(**CFG)
    sources = views.collect_sources([src])
    summary = views.render_all(stage_renderer, sources, out, cfg)
    assert (summary.rendered, summary.failed, summary.skipped) == (2, 1, 0)
    rows = {r["id"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert rows["a"]["status"] == "ok" and rows["a"]["views"] == 2 and rows["a"]["rig"] == "orbit:2"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"]
    assert not (out / "broken").exists()
    files = sorted(p.name for p in (out / "a").iterdir())
    assert files == sorted(
        [f"{p}_{k:03d}.{'npy' if p == 'depth' else 'png'}" for p in CFG["passes"] for k in range(2)]
        + ["cameras.json"]
    )
    rgba = np.asarray(Image.open(out / "a" / "rgba_000.png"))
    assert rgba.shape == (32, 32, 4) and rgba.dtype == np.uint8 and rgba[0, 0, 3] == 0
    assert rgba[..., 0][rgba[..., 3] == 255].min() > 100  # red box
    cams = json.loads((out / "a" / "cameras.json").read_text())
    assert cams["conventions_version"] == cv.CONVENTIONS_VERSION and cams["size"] == 32
    assert np.array(cams["c2w"]).shape == (2, 4, 4) and np.array(cams["render_cameras"]).shape == (2, 25)
    assert np.array(cams["input_cameras"]).shape == (2, 16) and np.array(
        cams["normalization_transform"]
    ).shape == (4, 4)
    torch.testing.assert_close(torch.tensor(cams["c2w"]), orbit_rig(2).c2w)
    assert np.load(out / "a" / "depth_000.npy").dtype == np.float32
    before = (out / "a" / "rgba_000.png").stat().st_mtime_ns
    again = views.render_all(stage_renderer, sources, out, cfg)
    assert (again.rendered, again.skipped, again.failed) == (0, 2, 1)
    assert (out / "a" / "rgba_000.png").stat().st_mtime_ns == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left behind
    with pytest.raises(ConfigError, match="another --out"):
        views.render_all(stage_renderer, sources, out, views.ViewsConfig(rig="orbit:3", size=32))


@needs_loader
def test_glb_texture_orientation_end_to_end(tmp_path, renderer):
    """A textured GLB quad seen from its front through the loader: the image appears unmirrored, upright."""
    from triflow3d.assets import load_asset, normalize

    img = np.zeros((8, 8, 3), np.uint8)
    img[:4, :4], img[:4, 4:], img[4:, :4], img[4:, 4:] = RED, BLUE, GREEN, YELLOW
    v = np.array(
        [[-0.5, 0.5, 0], [0.5, 0.5, 0], [-0.5, -0.5, 0], [0.5, -0.5, 0]]
    )  # file coords, y-up, facing +z
    mesh = trimesh.Trimesh(v, [[0, 2, 1], [1, 2, 3]], process=False)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(img))
    mesh.visual = trimesh.visual.TextureVisuals(
        uv=[[0, 1], [1, 1], [0, 0], [1, 0]], material=material
    )  # trimesh: v up
    mesh.export(tmp_path / "quad.glb")
    asset = normalize(load_asset(tmp_path / "quad.glb"))
    # File +z (the quad's front) is world -y after the y-up -> z-up turn: look from azimuth 270.
    rig = Rig(orbit_rig(1, elevation_deg=0.0, radius=4.0, start_azimuth_deg=270.0).c2w, 30.0)
    q = _quadrant_colours(renderer.render(asset, rig, SIZE))
    for name, colour in {"tl": RED, "tr": BLUE, "bl": GREEN, "br": YELLOW}.items():
        np.testing.assert_allclose(q[name], np.array(colour) / 255, atol=0.05, err_msg=name)


@needs_loader
def test_shapes_manifest_ids_captions_and_collisions(tmp_path):
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    _glb(shapes / "s0.glb")
    row = {
        "id": "cube-0",
        "caption": "a red box",
        "attributes": {"colour": "red"},
        "seed": 0,
        "split": "train",
    }
    (shapes / "manifest.jsonl").write_text(json.dumps(row | {"path": "s0.glb"}) + "\n")
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    _glb(tmp_path / "x" / "a.glb"), _glb(tmp_path / "y" / "a.glb")
    sources = views.collect_sources(
        [shapes, tmp_path / "x" / "a.glb", tmp_path / "y", tmp_path / "x" / "a.glb"]
    )
    assert [s.id for s in sources][:2] == ["cube-0", "a"] and len(sources) == 3
    assert sources[2].id.startswith("a-") and len(sources[2].id) == 10
    assert sources[0].caption == "a red box" and sources[0].attributes == {"colour": "red"}
    row = views.manifest_row(sources[0], views.ViewsConfig(), "ok", 6)
    assert row["caption"] == "a red box" and row["split"] == "train" and "error" not in row


@needs_loader
def test_sharding_and_merge(tmp_path, stage_renderer):
    for i in range(3):
        _glb(tmp_path / f"m{i}.glb")
    sources = views.collect_sources(sorted(tmp_path.glob("*.glb")))
    out, cfg = tmp_path / "out", views.ViewsConfig(rig="orbit:1", size=16)
    for rank in range(2):
        views.render_all(stage_renderer, sources, out, cfg, rank=rank, world_size=2)
    assert len((out / "manifest-r000.jsonl").read_text().splitlines()) == 2
    merged = views.merge_manifests(out)
    assert [json.loads(x)["id"] for x in merged.read_text().splitlines()] == ["m0", "m1", "m2"]


def test_random_rig_cameras_differ_per_asset_but_are_reproducible():
    a, b = views.asset_seed(0, "a"), views.asset_seed(0, "b")
    assert a != b and a == views.asset_seed(0, "a") and views.asset_seed(1, "a") != a


@needs_loader
def test_cli_exit_code_rule(tmp_path, capsys):
    """Exit 1 when any input failed; stop at the first failure unless --keep-going (docs/assets.md)."""
    from triflow3d.cli import main

    (tmp_path / "bad1.glb").write_bytes(b"nope")
    (tmp_path / "bad2.obj").write_text("f 1 2 3\n")
    bad = [str(tmp_path / "bad1.glb"), str(tmp_path / "bad2.obj")]
    common = ["--size", "16", "--rig", "orbit:1", "--backend", "raycast"]
    assert main(["render", *bad, "--out", str(tmp_path / "o1"), *common]) == 1
    err = capsys.readouterr().err
    assert err.count("failed:") == 1 and "bad1.glb" in err and "1 input(s) not attempted" in err
    assert main(["render", *bad, "--out", str(tmp_path / "o1k"), *common, "--keep-going"]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("failed:") == 2 and "2 failed (1 no geometry, 1 unreadable)" in captured.out
    good = _glb(tmp_path / "good.glb")
    assert main(["render", str(good), bad[0], "--out", str(tmp_path / "o2"), *common, "--keep-going"]) == 1
    assert "1 rendered" in capsys.readouterr().out
    assert main(["render", str(good), "--out", str(tmp_path / "o2"), *common]) == 0  # already done
    assert main(["render", str(good), "--out", str(tmp_path / "o3"), "--rig", "spiral"]) == 1
    assert "rig" in capsys.readouterr().err
