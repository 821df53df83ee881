"""The procedural shape benchmark: determinism, categories, solids, splits, GLB export and the CLI."""

from __future__ import annotations

import collections

import numpy as np
import pygltflib
import pytest
import trimesh

from triflow3d.assets.export import Z_UP_TO_Y_UP, asset_to_trimesh_scene, save_glb, save_mesh
from triflow3d.cli import main as cli_main
from triflow3d.conventions import OBJECT_RADIUS
from triflow3d.errors import ConfigError
from triflow3d.shapes import (
    CATEGORIES,
    COLOURS,
    HELDOUT_COMBOS,
    make_shape,
    sample_seed,
    sample_spec,
    shape_solid,
)
from triflow3d.shapes.captions import with_article
from triflow3d.shapes.splits import split_of_seed
from triflow3d.utils.io import read_jsonl


def _find(category: str, split: str, pred) -> int:
    """The first seed whose spec of ``category`` satisfies ``pred`` (specs are cheap)."""
    return next(s for s in range(500) if pred(sample_spec(s, split, category=category)))


# --- determinism -----------------------------------------------------------------------------------


def test_same_seed_gives_identical_sample():
    a, b = make_shape(1234, "train"), make_shape(1234, "train")
    assert a.caption == b.caption and a.attributes == b.attributes
    assert len(a.asset.parts) == len(b.asset.parts)
    for pa, pb in zip(a.asset.parts, b.asset.parts):
        np.testing.assert_array_equal(pa.vertices, pb.vertices)
        np.testing.assert_array_equal(pa.faces, pb.faces)
        assert pa.base_color == pb.base_color
        if pa.texture is not None:
            np.testing.assert_array_equal(pa.texture, pb.texture)


def test_different_seeds_differ_and_global_rng_untouched():
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    specs = [sample_spec(s, "train") for s in range(40)]
    assert len({s.caption for s in specs}) > 30
    a, b = make_shape(1, "train", category="chair"), make_shape(2, "train", category="chair")
    assert a.asset.all_vertices().shape != b.asset.all_vertices().shape or not np.array_equal(
        a.asset.all_vertices(), b.asset.all_vertices()
    )
    np.testing.assert_array_equal(np.random.get_state()[1], before)


# --- categories and geometry -------------------------------------------------------------------------


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_every_category_is_a_watertight_solid_inside_the_radius(category):
    for seed in (0, 1):
        sample = make_shape(seed, "train", category=category)
        assert sample.attributes["category"] == category
        solid = shape_solid(sample_spec(seed, "train", category=category))
        assert solid.is_watertight and solid.volume > 1e-3
        assert len(solid.split(only_watertight=False)) == 1  # one connected object
        radius = np.linalg.norm(sample.asset.all_vertices(), axis=1).max()
        assert 0.85 < radius < OBJECT_RADIUS
        centre = sample.asset.bounds().mean(axis=0)
        np.testing.assert_allclose(centre, 0.0, atol=1e-4)
        assert 20 < sample.asset.num_faces < 6000
        for part in sample.asset.parts:  # every colour region is itself watertight
            assert trimesh.Trimesh(part.vertices, part.faces).is_watertight
            assert part.normals is not None and np.isfinite(part.normals).all()


def test_solid_is_the_union_of_the_colour_regions():
    for category in ("mug", "car", "rocket"):
        spec = sample_spec(3, "train", category=category)
        solid, sample = shape_solid(spec), make_shape(3, "train", category=category)
        np.testing.assert_allclose(solid.bounds, sample.asset.bounds(), atol=1e-5)
        parts = sum(trimesh.Trimesh(p.vertices, p.faces).volume for p in sample.asset.parts)
        np.testing.assert_allclose(parts, solid.volume, rtol=1e-3)  # regions are disjoint and cover it
    mug = shape_solid(sample_spec(3, "train", category="mug"))
    top = mug.bounds[1, 2]
    assert not mug.contains([[0.0, 0.0, top - 0.05]])[0]  # the cup is hollow
    assert mug.contains([[0.0, 0.0, mug.bounds[0, 2] + 0.02]])[0]  # its bottom is solid


def test_parts_vary_within_categories():
    seen = collections.defaultdict(set)
    for s in range(200):
        spec = sample_spec(s, "train", category=("chair", "car", "stool", "shelf", "mug")[s % 5])
        for k, v in spec.attributes()["parts"].items():
            seen[(spec.category, k)].add(v)
    assert seen[("chair", "wheels")] == {True, False} and seen[("chair", "armrests")] == {True, False}
    assert seen[("chair", "backrest")] == {"straight", "tall", "slatted"}
    assert seen[("chair", "legs")] >= {3, 4} and seen[("car", "wheels")] == {4, 6}
    assert seen[("stool", "legs")] == {3, 4} and seen[("mug", "handle")] == {True, False}
    assert len(seen[("shelf", "shelves")]) >= 3


def test_styles_and_multicolour_objects():
    specs = [sample_spec(s, "train") for s in range(120)]
    assert {s.style for s in specs} == {"texture", "vertex", "material"}
    assert {s.pattern for s in specs} >= {"plain", "stripes", "checker", "wood"}
    assert any(len(s.colours) > 1 for s in specs) and all(s.colours[0] == s.colour for s in specs)
    assert set(c for s in specs for c in s.colours) <= set(COLOURS)


# --- captions ----------------------------------------------------------------------------------------


def test_captions_mention_colour_and_category():
    from triflow3d.shapes.palette import COLOUR_SYNONYMS

    for s in range(60):
        spec = sample_spec(s, "val")
        words = COLOUR_SYNONYMS[spec.colour]
        assert any(w in spec.caption for w in words) or "wood" in spec.caption, spec.caption
        assert any(n in spec.caption for n in spec.draft.nouns), spec.caption
        assert "  " not in spec.caption and not spec.caption.endswith(" ")
    assert with_article("orange chair") == "an orange chair" and with_article("red car") == "a red car"


# --- splits --------------------------------------------------------------------------------------------


def test_split_seeds_are_disjoint_and_tagged():
    seeds = {split: {sample_seed(split, i) for i in range(2000)} for split in ("train", "val", "test")}
    assert all(len(v) == 2000 for v in seeds.values())
    assert (
        not (seeds["train"] & seeds["val"])
        and not (seeds["train"] & seeds["test"])
        and not (seeds["val"] & seeds["test"])
    )
    assert {split_of_seed(s) for s in seeds["val"]} == {"val"}
    assert max(max(v) for v in seeds.values()) < 2**50
    assert sample_seed("train", 5, offset=1) != sample_seed("train", 5)


def test_heldout_combos_only_in_test():
    for split in ("train", "val"):
        for i in range(400):
            spec = sample_spec(sample_seed(split, i), split)
            assert HELDOUT_COMBOS[spec.category] != spec.colour and not spec.heldout_combo
    test = [sample_spec(sample_seed("test", i), "test") for i in range(400)]
    held = [s for s in test if s.heldout_combo]
    assert 0.1 < len(held) / len(test) < 0.4 and all(HELDOUT_COMBOS[s.category] == s.colour for s in held)
    assert all(HELDOUT_COMBOS[s.category] != s.colour for s in test if not s.heldout_combo)
    assert set(HELDOUT_COMBOS) == set(CATEGORIES)
    with pytest.raises(ConfigError, match="held-out"):
        sample_spec(0, "train", category="chair", colour=HELDOUT_COMBOS["chair"])
    assert sample_spec(0, "test", category="chair", colour=HELDOUT_COMBOS["chair"]).heldout_combo


def test_bad_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="split"):
        sample_spec(0, "dev")
    with pytest.raises(ConfigError, match="category"):
        sample_spec(0, "train", category="spaceship")
    with pytest.raises(ConfigError, match="colour"):
        sample_spec(0, "train", colour="teal")


# --- GLB export ----------------------------------------------------------------------------------------


def _accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    width = {"VEC2": 2, "VEC3": 3, "VEC4": 4}[acc.type]
    dtype = {5126: np.float32, 5121: np.uint8}[acc.componentType]
    offset = (view.byteOffset or 0) + (acc.byteOffset or 0)
    return np.frombuffer(gltf.binary_blob(), dtype, acc.count * width, offset).reshape(acc.count, width)


def test_save_glb_writes_exact_yup_data(tmp_path):
    seed = _find("car", "train", lambda s: s.style == "vertex")
    sample = make_shape(seed, "train", category="car")
    path = save_glb(sample.asset, tmp_path / "car.glb")
    gltf = pygltflib.GLTF2().load(str(path))
    meshes = {m.name: m.primitives[0] for m in gltf.meshes}
    for part in sample.asset.parts:
        prim = meshes[part.name]
        expected = (part.vertices.astype(np.float64) @ Z_UP_TO_Y_UP.T).astype(np.float32)  # (x, z, -y)
        np.testing.assert_array_equal(_accessor(gltf, prim.attributes.POSITION), expected)
        colors = _accessor(gltf, prim.attributes.COLOR_0)
        np.testing.assert_array_equal(colors, np.round(part.vertex_colors.astype(np.float64) * 255))
        np.testing.assert_array_equal((colors / 255.0).astype(np.float32), part.vertex_colors)  # 8-bit exact
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temporary behind


def test_save_glb_texture_and_material_survive_trimesh_load(tmp_path):
    tex_seed = _find("mug", "train", lambda s: s.style == "texture")
    tex = make_shape(tex_seed, "train", category="mug")
    path = save_glb(tex.asset, tmp_path / "mug.glb")
    gltf = pygltflib.GLTF2().load(str(path))
    main = next(m.primitives[0] for m in gltf.meshes if m.name == "main")
    part = next(p for p in tex.asset.parts if p.name == "main")
    np.testing.assert_array_equal(_accessor(gltf, main.attributes.TEXCOORD_0), part.uv)  # v = 0 at the top
    loaded = trimesh.load(path, force="scene")
    geom = loaded.geometry["main"]
    image = np.asarray(geom.visual.material.baseColorTexture.convert("RGBA"))
    np.testing.assert_array_equal(image, part.texture)

    mat_seed = _find("table", "train", lambda s: s.style == "material")
    mat = make_shape(mat_seed, "train", category="table")
    loaded = trimesh.load(save_glb(mat.asset, tmp_path / "table.glb"), force="scene")
    for part in mat.asset.parts:
        factor = np.asarray(loaded.geometry[part.name].visual.material.baseColorFactor) / 255.0
        np.testing.assert_allclose(factor, part.base_color, atol=1e-6)


def test_trimesh_scene_and_mesh_files(tmp_path):
    sample = make_shape(7, "train", category="tree")
    scene = asset_to_trimesh_scene(sample.asset)
    np.testing.assert_allclose(scene.bounds, sample.asset.bounds(), atol=1e-6)  # world frame by default
    for suffix in (".obj", ".ply"):
        path = save_mesh(sample.asset, tmp_path / f"tree{suffix}")
        mesh = trimesh.load(path, force="mesh", process=False)
        assert len(mesh.faces) == sample.asset.num_faces
    ply = trimesh.load(tmp_path / "tree.ply", process=False)
    np.testing.assert_allclose(ply.bounds, sample.asset.bounds(), atol=1e-5)  # PLY stays z-up


# --- CLI -----------------------------------------------------------------------------------------------


def test_cli_make_writes_files_and_resumes(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert cli_main(["shapes", "make", "--n", "3", "--split", "val", "--out", str(out)]) == 0
    rows = read_jsonl(out / "manifest.jsonl")
    assert [r["id"] for r in rows] == ["val-000000", "val-000001", "val-000002"]
    for row in rows:
        assert row["status"] == "ok" and (out / row["path"]).is_file() and row["split"] == "val"
        assert row["caption"] == sample_spec(row["seed"], "val").caption
        assert row["seed"] == sample_seed("val", row["index"])
        assert pygltflib.GLTF2().load(str(out / row["path"])).meshes
    assert "3 written" in capsys.readouterr().out

    assert cli_main(["shapes", "make", "--n", "4", "--split", "val", "--out", str(out)]) == 0
    assert "1 written, 3 already present" in capsys.readouterr().out
    assert len(read_jsonl(out / "manifest.jsonl")) == 4
    assert (
        cli_main(["shapes", "make", "--n", "1", "--split", "val", "--out", str(out), "--seed-offset", "3"])
        == 1
    )

    assert cli_main(["shapes", "show", "--split", "test", "--n", "2"]) == 0
    assert capsys.readouterr().out.count("test-00000") == 2
