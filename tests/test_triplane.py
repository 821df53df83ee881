"""Triplane sampling, the InstantMesh decoders and TriplaneField (unit + parity)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from triflow3d.triplane import (
    MeshDecoder,
    NerfDecoder,
    TriplaneField,
    density_from_raw,
    planes_to_features,
    project_to_planes,
    rgb_from_raw,
    sample_planes,
)
from triflow3d.triplane.field import flexicubes_grid

QUERY_TOL = dict(rtol=1e-4, atol=2e-4)  # parity README


def load_field(parity_dir, kind: str) -> TriplaneField:
    """TriplaneField with the synthesizer weights of the official-layout parity checkpoint."""
    ckpt = torch.load(parity_dir / f"{kind}_small.ckpt", map_location="cpu", weights_only=True)
    prefix = "lrm_generator.synthesizer."
    sd = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    field = TriplaneField(16, kind)
    field.load_state_dict(sd, strict=True)
    return field.eval()


def test_project_to_planes_axes():
    uv = project_to_planes(torch.tensor([[[0.1, 0.2, 0.3]]]))  # (1, 3, 1, 2)
    expected = torch.tensor([[0.1, 0.2], [0.1, 0.3], [0.3, 0.2]])
    torch.testing.assert_close(uv[0, :, 0], expected)


def test_sample_planes_reads_the_right_texels():
    r = 8
    planes = torch.zeros(1, 3, 2, r, r)
    planes[0, 0, 0, 1, 6] = 5.0  # plane 0, row (y) 1, column (x) 6
    # texel centre (align_corners=False): coordinate -1 + (2 i + 1) / R
    x, y = -1 + 13 / r, -1 + 3 / r
    feats = sample_planes(planes, torch.tensor([[[x, y, 0.0], [x, -y, 0.0], [2.0, 2.0, 2.0]]]))
    assert feats.shape == (1, 3, 3, 2)
    assert feats[0, 0, 0, 0] == pytest.approx(5.0)
    assert feats[0, 0, 1, 0] == 0 and feats[0, 1:].abs().max() == 0
    assert feats[0, :, 2].abs().max() == 0  # outside the box reads zero padding


def test_planes_to_features_is_plane_major():
    s = torch.arange(3 * 2 * 4).float().reshape(1, 3, 2, 4)  # (B, 3, P, C)
    f = planes_to_features(s)
    assert f.shape == (1, 2, 12)
    torch.testing.assert_close(f[0, 1], torch.cat([s[0, 0, 1], s[0, 1, 1], s[0, 2, 1]]))


def test_decoder_layouts_and_zero_bias():
    nerf, mesh = NerfDecoder(8), MeshDecoder(8)
    assert sorted(k for k in nerf.state_dict()) == sorted(
        f"net.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")
    )
    assert nerf.net[0].in_features == 24 and nerf.net[6].out_features == 4
    heads = {"net_sdf": (24, 1), "net_rgb": (24, 3), "net_deformation": (24, 3), "net_weight": (192, 21)}
    for name, (n_in, n_out) in heads.items():
        net = getattr(mesh, name)
        assert net[0].in_features == n_in and net[6].out_features == n_out and net[2].in_features == 64
    assert all(
        v.abs().max() == 0 for k, v in {**nerf.state_dict(), **mesh.state_dict()}.items() if "bias" in k
    )
    assert "decoder.net.0.weight" in TriplaneField(8).state_dict()
    assert "decoder.net_weight.6.bias" in TriplaneField(8, "mesh").state_dict()


def test_activations():
    assert density_from_raw(torch.tensor([1.0])).item() == pytest.approx(0.693147, abs=1e-6)
    assert rgb_from_raw(torch.tensor([-100.0, 100.0])).tolist() == pytest.approx([-0.001, 1.001])


def test_query_chunking_and_folding_match():
    field = TriplaneField(80).eval()
    planes, xyz = torch.randn(2, 3, 80, 16, 16), torch.rand(2, 300, 3) * 2.2 - 1.1
    with torch.no_grad():
        ref = field.query(planes, xyz)
        chunked = field.query(planes, xyz, chunk=7)
        folded = field.query(field.prepare(planes), xyz)
    assert ref["sigma_raw"].shape == (2, 300, 1) and ref["rgb"].shape == (2, 300, 3)
    for k in ref:
        torch.testing.assert_close(chunked[k], ref[k])
        torch.testing.assert_close(folded[k], ref[k], rtol=1e-5, atol=1e-5)


def test_plane_filter_is_a_binomial_low_pass_read_by_every_query_path():
    """smooth_planes keeps constants and affine per-channel maps, removes a texel checkerboard; a field with
    plane_filter reads exactly the smoothed planes, whether queried directly, chunked or folded."""
    from triflow3d.errors import ConfigError
    from triflow3d.triplane.sampling import smooth_planes

    const = torch.full((1, 3, 2, 6, 6), 3.0)
    torch.testing.assert_close(smooth_planes(const), const)
    ij = torch.arange(6)
    checker = ((ij[:, None] + ij[None, :]) % 2 * 2 - 1).float().expand(1, 3, 2, 6, 6)
    assert smooth_planes(checker)[..., 1:-1, 1:-1].abs().max() == 0  # interior: texel noise removed
    planes = torch.randn(2, 3, 80, 16, 16, generator=torch.Generator().manual_seed(0))
    scale, shift = torch.rand(1, 3, 80, 1, 1) + 0.5, torch.randn(1, 3, 80, 1, 1)
    torch.testing.assert_close(smooth_planes(planes * scale + shift), smooth_planes(planes) * scale + shift)
    torch.testing.assert_close(smooth_planes(planes, 0.0), planes)
    mild = smooth_planes(checker, 0.125)[..., 1:-1, 1:-1]
    torch.testing.assert_close(mild, checker[..., 1:-1, 1:-1] * 0.25)  # (1 - 4 side)^2

    filtered, plain = TriplaneField(80, plane_filter=0.25).eval(), TriplaneField(80).eval()
    plain.load_state_dict(filtered.state_dict())
    xyz = torch.rand(2, 300, 3) * 2.2 - 1.1
    with torch.no_grad():
        ref = plain.query(smooth_planes(planes), xyz)
        for out in (filtered.query(planes, xyz), filtered.query(planes, xyz, chunk=7),
                    filtered.query(filtered.prepare(planes), xyz)):  # fmt: skip
            for k in ref:
                torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(plain.query(planes, xyz)["sigma_raw"], ref["sigma_raw"])
    with pytest.raises(ConfigError, match="plane_filter"):
        TriplaneField(16, "mesh", plane_filter=0.25)


def test_mesh_field_density_from_sdf():
    field = TriplaneField(4, "mesh", sdf_beta=0.01)
    with torch.no_grad():
        for m in field.decoder.net_sdf:  # sdf = x (a plane at x = 0), via a bias on a constant feature
            if isinstance(m, torch.nn.Linear):
                m.weight.zero_()
        field.decoder.net_sdf[6].bias.fill_(0.0)
    sdf = torch.tensor([[-1.0], [-0.01], [0.0], [0.01], [1.0]])
    from triflow3d.triplane.field import laplace_sdf_log_density, softplus_inverse_from_log

    log_sigma = laplace_sdf_log_density(sdf, 0.01)
    sigma = torch.exp(log_sigma)
    assert sigma[0].item() == pytest.approx(100.0, rel=1e-4) and sigma[2].item() == pytest.approx(50.0)
    assert sigma[4].item() < 1e-30 and torch.isfinite(log_sigma).all()
    raw = softplus_inverse_from_log(log_sigma) + 1.0
    torch.testing.assert_close(density_from_raw(raw[:4]), sigma[:4], rtol=1e-4, atol=0)
    out = field.query(torch.randn(1, 3, 4, 8, 8), torch.rand(1, 10, 3))
    assert {"sdf", "deformation_raw", "sigma", "sigma_raw", "rgb"} <= set(out)
    torch.testing.assert_close(out["sigma"], torch.full_like(out["sigma"], 50.0))


def test_flexicubes_grid_layout():
    verts, cubes = flexicubes_grid(2, 2.0)
    assert verts.shape == (27, 3) and cubes.shape == (8, 8)
    torch.testing.assert_close(verts[(1 * 3 + 2) * 3 + 0], torch.tensor([0.0, 1.0, -1.0]))
    c = verts[cubes[7]]  # last cube, corners ordered x fastest, then y, then z
    torch.testing.assert_close(c[1] - c[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(c[2] - c[0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(c[4] - c[0], torch.tensor([0.0, 0.0, 1.0]))


# --- parity against upstream golden tensors ------------------------------------------------------
def test_parity_nerf_queries(parity_dir):
    field = load_field(parity_dir, "nerf")
    inp, exp = (
        load_file(parity_dir / "inputs.safetensors"),
        load_file(parity_dir / "expected_nerf_small.safetensors"),
    )
    xyz, planes = inp["query_points"], exp["planes"]
    with torch.no_grad():
        torch.testing.assert_close(sample_planes(planes, xyz), exp["query_features"], **QUERY_TOL)
        out = field.query(planes, xyz, chunk=1000)
    for k in ("sigma_raw", "sigma", "rgb"):
        torch.testing.assert_close(out[k], exp[f"query_{k}"], **QUERY_TOL)


def test_parity_mesh_heads(parity_dir):
    field = load_field(parity_dir, "mesh")
    inp, exp = (
        load_file(parity_dir / "inputs.safetensors"),
        load_file(parity_dir / "expected_mesh_small.safetensors"),
    )
    xyz, planes = inp["query_points"], exp["planes"]
    with torch.no_grad():
        out = field.query(planes, xyz)
        weight = field.query_cube_weights(planes, xyz, inp["query_cube_indices"])
        grid = field.flexicubes_predictions(planes, grid_res=16, grid_scale=2.1)
    torch.testing.assert_close(out["sdf"], exp["query_sdf"], **QUERY_TOL)
    torch.testing.assert_close(out["deformation_raw"], exp["query_deformation_raw"], **QUERY_TOL)
    torch.testing.assert_close(out["rgb"], exp["query_rgb"], **QUERY_TOL)
    torch.testing.assert_close(weight, exp["query_weight"], **QUERY_TOL)
    torch.testing.assert_close(grid["verts"], exp["grid_verts"], rtol=0, atol=1e-7)
    assert torch.equal(grid["cubes"], exp["grid_cube_indices"])
    for k in ("sdf", "deformation", "weight"):
        torch.testing.assert_close(grid[k], exp[f"grid_{k}"], **QUERY_TOL)
