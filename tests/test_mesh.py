"""Density grids and mesh extraction: analytic spheres, coarse-to-fine vs dense, empty fields, parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from safetensors.torch import load_file

from triflow3d.errors import ConfigError
from triflow3d.evaluation.geometry import fragmentation
from triflow3d.triplane import TriplaneField
from triflow3d.triplane.mesh import (
    density_grid,
    drop_small_components,
    extract_mesh,
    field_grid,
    floaters,
    mesh_components,
)

PLANES = torch.zeros(1, 3, 1, 4, 4)  # unused by the analytic fields


class BlobField:
    """Density sharp * (r - |x - c|) + 10 around one or more centres (iso-surface 10 = the spheres)."""

    kind = "nerf"

    def __init__(self, centres=((0.0, 0.0, 0.0),), radius=0.5, sharp=200.0):
        self.centres, self.radius, self.sharp = torch.tensor(centres), radius, sharp

    def query(self, planes, xyz, chunk=None):
        d = (xyz[..., None, :] - self.centres).norm(dim=-1).amin(-1, keepdim=True)
        sigma = self.sharp * (self.radius - d) + 10.0
        return {"sigma": sigma, "sigma_raw": sigma, "rgb": (xyz * 0.5 + 0.5).clamp(0, 1)}


class SdfSphere:
    kind = "mesh"

    def query(self, planes, xyz, chunk=None):
        sdf = xyz.norm(dim=-1, keepdim=True) - 0.7
        return {"sdf": sdf, "sigma": (sdf < 0).float(), "rgb": torch.full_like(xyz, 0.5)}


def test_sphere_mesh_radius_orientation_colours():
    g = 48
    mesh = extract_mesh(BlobField(), PLANES, resolution=g)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    voxel = 2 / (g - 1)
    assert abs(radii.min() - 0.5) < voxel and abs(radii.max() - 0.5) < voxel
    assert mesh.is_watertight and mesh.volume > 0  # outward normals
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.125, rel=0.05)
    colors = mesh.visual.vertex_colors
    assert (
        colors.dtype == np.uint8 and colors.shape == (len(mesh.vertices), 4) and (colors[:, 3] == 255).all()
    )
    expected = np.round(np.clip(mesh.vertices * 0.5 + 0.5, 0, 1) * 255)
    assert np.abs(colors[:, :3].astype(float) - expected).max() <= 1


def test_baked_shading_is_divided_out_of_vertex_colours():
    """A field trained on shaded renders holds albedo x mean shading; the mesh gets the albedo back."""
    from triflow3d.conventions import linear_to_srgb, srgb_to_linear
    from triflow3d.triplane.mesh import albedo_from_radiance

    albedo = np.array([[0.9, 0.2, 0.1], [0.95, 0.85, 0.1], [0.5, 0.5, 0.5]], np.float32)
    shaded = linear_to_srgb(srgb_to_linear(albedo) * 0.8)  # what the renders (and the field) show
    assert (shaded < albedo).all()
    np.testing.assert_allclose(albedo_from_radiance(shaded, 0.8), albedo, atol=1e-5)
    assert albedo_from_radiance(shaded, 1.0) is shaded
    assert albedo_from_radiance(np.ones((1, 3), np.float32), 0.5).max() == pytest.approx(1.0)  # clipped
    plain = extract_mesh(BlobField(), PLANES, resolution=48)
    delit = extract_mesh(BlobField(), PLANES, resolution=48, baked_shading=0.8)
    assert len(plain.vertices) > 100
    np.testing.assert_array_equal(plain.vertices, delit.vertices)
    a, b = (m.visual.vertex_colors[:, :3].astype(int) for m in (plain, delit))
    assert (b >= a).all() and (b > a).mean() > 0.9 and (delit.visual.vertex_colors[:, 3] == 255).all()


def test_sdf_variant_uses_level_zero():
    mesh = extract_mesh(SdfSphere(), PLANES, resolution=40)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radii.mean() - 0.7) < 2.1 / 39 and mesh.volume > 0


@pytest.mark.parametrize("g", [33, 50])
def test_coarse_to_fine_equals_dense(g):
    field = BlobField(centres=((0.3, -0.2, 0.1), (-0.45, 0.4, -0.3)), radius=0.3)
    dense = extract_mesh(field, PLANES, resolution=g, coarse_to_fine=False)
    fast = extract_mesh(field, PLANES, resolution=g, coarse_stride=8, margin=0.0)
    assert len(dense.faces) > 100
    np.testing.assert_array_equal(fast.vertices, dense.vertices)
    np.testing.assert_array_equal(fast.faces, dense.faces)


def test_empty_field_gives_empty_mesh():
    mesh = extract_mesh(BlobField(radius=-5.0), PLANES, resolution=16)
    assert len(mesh.vertices) == 0 and len(mesh.faces) == 0
    full = extract_mesh(BlobField(radius=5.0), PLANES, resolution=16)  # everything inside: no surface
    assert len(full.faces) == 0


def test_rejects_batches():
    with pytest.raises(ConfigError, match="batch 1"):
        extract_mesh(BlobField(), torch.zeros(2, 3, 1, 4, 4), resolution=8)


def test_density_grid_axis_order():
    field = BlobField(centres=((0.5, 0.0, 0.0),), radius=0.1)
    grid = density_grid(field, PLANES, 5)  # lin = -1, -0.5, 0, 0.5, 1
    assert grid.shape == (1, 5, 5, 5)
    assert grid[0, 3, 2, 2] == grid.max()  # index [ix, iy, iz] is (x, y, z)


def test_parity_grid(parity_dir):
    ckpt = torch.load(parity_dir / "nerf_small.ckpt", map_location="cpu", weights_only=True)
    prefix = "lrm_generator.synthesizer."
    field = TriplaneField(16).eval()
    field.load_state_dict(
        {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    )
    exp = load_file(parity_dir / "expected_nerf_small.safetensors")
    tol = dict(rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(density_grid(field, exp["planes"], 32), exp["grid_sigma"][..., 0], **tol)
    torch.testing.assert_close(field_grid(field, exp["planes"], 32, "rgb"), exp["grid_rgb"], **tol)
    mesh = extract_mesh(field, exp["planes"], resolution=32, coarse_to_fine=False)
    assert len(mesh.faces) > 0 and np.abs(mesh.vertices).max() <= 1.0


# --- connected components, floaters ------------------------------------------------------------------
def _spheres(spec) -> trimesh.Trimesh:
    """Disjoint icospheres (radius, centre), vertex-coloured by index, in one mesh."""
    parts = []
    for k, (r, c) in enumerate(spec):
        s = trimesh.creation.icosphere(subdivisions=2, radius=r)
        s.apply_translation(c)
        s.visual.vertex_colors = np.tile([40 * k, 0, 0, 255], (len(s.vertices), 1)).astype(np.uint8)
        parts.append(s)
    return trimesh.util.concatenate(parts)


def test_components_floaters_and_clean_up():
    # a body, a large separate part (a lamp's shade: not a floater) and two small pieces (floaters)
    mesh = _spheres([(0.5, (0, 0, 0)), (0.3, (1, 0, 0)), (0.05, (-1, 0, 0)), (0.05, (0, 1, 0))])
    label, areas = mesh_components(mesh)
    assert label.shape == (len(mesh.faces),) and len(areas) == 4
    np.testing.assert_allclose(areas / areas[0], [1, 0.36, 0.01, 0.01], rtol=1e-6)
    assert floaters(areas).tolist() == [False, False, True, True]
    frag = fragmentation(mesh)
    assert frag.components == 4 and frag.floater_share == pytest.approx(0.02 / 1.38, rel=1e-6)
    clean = drop_small_components(mesh)
    assert len(mesh_components(clean)[1]) == 2 and clean.area == pytest.approx(areas[:2].sum())
    assert sorted(np.unique(clean.visual.vertex_colors[:, 0]).tolist()) == [0, 40]  # colours follow
    one = _spheres([(0.5, (0, 0, 0))])
    assert drop_small_components(one) is one and fragmentation(one) == (0.0, 1)


def test_marching_cubes_meshes_are_welded_into_components():
    mesh = extract_mesh(BlobField(((-0.5, 0, 0), (0.5, 0, 0)), radius=0.3), PLANES, 48)
    assert len(mesh_components(mesh)[1]) == 2 and fragmentation(mesh).floater_share == 0.0
    with pytest.raises(ConfigError, match="zero"):
        fragmentation(trimesh.Trimesh())
