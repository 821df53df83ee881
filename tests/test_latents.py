"""Latent statistics, the normaliser (incl. folding into the decoder) and spatial importance weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from triflow3d.conventions import CONVENTIONS_VERSION, PLANE_AXES
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.latents import (
    LatentNormalizer,
    LatentStats,
    batch_stats,
    compute_stats,
    dilate,
    fold_exact_bound,
    fold_into_decoder,
    importance_weights,
    merge,
    occupancy_grid,
    project_occupancy,
    spatial_weights,
)

C, R = 4, 8
SCALES = torch.tensor([0.01, 1.0, 30.0, 500.0])
OFFSETS = torch.tensor([-3.0, 0.5, 100.0, -2000.0])


def triplanes(b: int, seed: int = 0) -> torch.Tensor:
    """(B, 3, C, R, R) with wildly different channel scales / offsets (and per-plane offsets)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, C, R, R, generator=g, dtype=torch.float64)
    plane_gain = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1)
    return (x * SCALES.double().view(1, 1, C, 1, 1) + OFFSETS.double().view(1, 1, C, 1, 1)) * plane_gain


def flat(x: torch.Tensor) -> np.ndarray:
    return x.double().permute(1, 2, 0, 3, 4).reshape(3, C, -1).numpy()  # (3, C, N)


# --- stats -------------------------------------------------------------------------------------


def test_streaming_stats_equal_numpy_float64():
    x = triplanes(7)
    s = compute_stats([x[:3], x[3], x[4:]], encoder_id="enc")
    a = flat(x)
    assert s.num_triplanes == 7 and s.count == 7 * R * R
    np.testing.assert_allclose(s.mean, a.mean(-1), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(s.std, a.std(-1), rtol=1e-12)
    np.testing.assert_array_equal(s.minimum, a.min(-1))
    np.testing.assert_array_equal(s.maximum, a.max(-1))
    assert s.global_mean == pytest.approx(a.mean(), rel=1e-12)
    assert s.global_std == pytest.approx(a.std(), rel=1e-12)
    assert s.hist.sum() == a.size and s.hist.dtype == np.int64


def test_merge_equals_stats_of_union_and_is_stable():
    x, y = triplanes(3, seed=1), triplanes(5, seed=2) + 1e6  # large common offset: naive E[x^2] fails
    union = batch_stats(torch.cat([x, y]))
    m = merge(batch_stats(x), batch_stats(y))
    np.testing.assert_allclose(m.mean, union.mean, rtol=1e-14)
    np.testing.assert_allclose(m.m2, union.m2, rtol=1e-9)
    np.testing.assert_array_equal(m.hist, union.hist)
    assert (m.count, m.num_triplanes) == (union.count, 8)
    with pytest.raises(ConfigError, match="encoder"):
        merge(batch_stats(x, encoder_id="a"), batch_stats(x, encoder_id="b"))


def test_percentiles_and_tail_fractions_approximate_numpy():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, C, 16, 16, generator=g) * SCALES.view(1, 1, C, 1, 1)
    x[0, 0, 1, 0, :4] = 25.0  # a few outliers: beyond 5 std of channel (0, 1)
    s, a = batch_stats(x), flat(x)
    for q in (1.0, 50.0, 99.0):
        per = s.percentile(q, per_channel=True)
        ref = np.percentile(a, q, axis=-1)
        assert np.all(np.abs(per - ref) <= 0.03 * np.abs(ref) + 0.02 * a.std(-1)), (q, per, ref)
    assert s.percentile(0) == a.min() and s.percentile(100) == a.max()
    for k in (3.0, 5.0):
        exact = (np.abs(a - a.mean(-1, keepdims=True)) > k * a.std(-1, keepdims=True)).mean(-1)
        np.testing.assert_allclose(s.tail_fraction(k), exact, atol=2e-3)
    assert s.tail_fraction(5.0)[0, 1] >= 3 / s.count


def test_stats_save_load_round_trip(tmp_path):
    s = compute_stats([triplanes(2)], encoder_id="instantmesh-large")
    s.to_safetensors(tmp_path / "stats.safetensors")
    t = LatentStats.from_safetensors(tmp_path / "stats.safetensors")
    assert (t.encoder_id, t.conventions_version, t.count, t.num_triplanes) == (
        "instantmesh-large",
        CONVENTIONS_VERSION,
        s.count,
        2,
    )
    for k in ("mean", "m2", "minimum", "maximum", "hist"):
        np.testing.assert_array_equal(getattr(t, k), getattr(s, k))
    s.to_json(tmp_path / "stats.json")
    import json

    summary = json.loads((tmp_path / "stats.json").read_text())
    assert (
        summary["encoder_id"] == "instantmesh-large" and summary["conventions_version"] == CONVENTIONS_VERSION
    )
    assert summary["global"]["std"] == pytest.approx(s.global_std)
    assert len(summary["per_channel"]["mean"]) == 3 and len(summary["per_channel"]["mean"][0]) == C
    with pytest.raises(CheckpointError, match="not found"):
        LatentStats.from_safetensors(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        LatentStats.from_safetensors(tmp_path / "bad.safetensors")


def test_compute_stats_rejects_empty_and_non_finite():
    with pytest.raises(ConfigError):
        compute_stats([])
    x = triplanes(1)
    x[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        batch_stats(x)


# --- normaliser --------------------------------------------------------------------------------


def test_per_channel_standardisation():
    x = triplanes(6)
    norm = LatentNormalizer.from_stats(compute_stats([x], encoder_id="e"))
    y = norm.normalize(x.float()).double()
    assert y.dtype == torch.float64 and norm.mode == "per-channel"
    np.testing.assert_allclose(flat(y).mean(-1), 0.0, atol=1e-3)
    np.testing.assert_allclose(flat(y).std(-1), 1.0, atol=1e-3)
    back = norm.denormalize(y.float()).double()
    np.testing.assert_allclose(back.numpy(), x.numpy(), rtol=1e-5, atol=1e-4 * SCALES.max().item())


def test_global_and_none_modes():
    x = triplanes(4)
    s = compute_stats([x])
    g = LatentNormalizer.from_stats(s, mode="global")
    assert torch.all(g.mean == g.mean.flatten()[0]) and torch.all(g.std == g.std.flatten()[0])
    y = g.normalize(x)
    assert y.mean().item() == pytest.approx(0.0, abs=1e-4) and y.std(unbiased=False).item() == pytest.approx(
        1.0, 1e-4
    )
    ident = LatentNormalizer.from_stats(s, mode="none")
    assert torch.equal(ident.normalize(x), x) and torch.equal(ident.denormalize(x), x)
    with pytest.raises(ConfigError):
        LatentNormalizer(C, mode="none", clamp=3.0)
    with pytest.raises(ConfigError):
        LatentNormalizer(C, mode="per-plane")


def test_clamp_applies_on_normalize_only():
    x = triplanes(2)
    x[0, 1, 2, 3, 3] = 1e4  # far beyond 5 std
    norm = LatentNormalizer.from_stats(compute_stats([triplanes(8)]), clamp=5.0)
    y = norm.normalize(x)
    assert y.abs().max().item() == pytest.approx(5.0) and y[0, 1, 2, 3, 3] == 5.0
    z = torch.full_like(y, 9.0).float()
    assert torch.allclose(norm.denormalize(z), norm.mean + 9.0 * norm.scale())  # no clamp here


def test_state_dict_round_trip_via_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    norm = LatentNormalizer.from_stats(
        compute_stats([triplanes(3)], encoder_id="enc"), "global", clamp=4.0, eps=1e-5
    )
    save_file(norm.state_dict(), str(tmp_path / "n.safetensors"))
    other = LatentNormalizer.from_config(norm.config())
    other.load_state_dict(load_file(str(tmp_path / "n.safetensors")))
    assert (
        other.config()
        == norm.config()
        == {
            "n_channels": C,
            "mode": "global",
            "clamp": 4.0,
            "eps": pytest.approx(1e-5),
            "encoder_id": "enc",
            "conventions_version": CONVENTIONS_VERSION,
        }
    )
    # the buffers alone carry mode / clamp / eps, whatever the module was built with
    bare = LatentNormalizer(C)
    bare.load_state_dict(norm.state_dict())
    assert (bare.mode, bare.clamp) == ("global", 4.0)
    x = triplanes(1).float()
    assert torch.equal(bare.normalize(x), norm.normalize(x))


# --- folding into the decoder ------------------------------------------------------------------


def _sample_planes_standin(planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """The agreed triplane.sampling.sample_planes contract: (B,3,C,R,R), (B,P,3) -> (B,3,P,C)."""
    out = []
    for p, (u, v) in enumerate(PLANE_AXES):
        grid = xyz[:, :, None, [u, v]]  # (B, P, 1, 2)
        s = F.grid_sample(planes[:, p], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(s[..., 0].transpose(1, 2))  # (B, P, C)
    return torch.stack(out, 1)


def _sampler_and_decoder():
    try:
        from triflow3d.triplane.decoder import NerfDecoder
        from triflow3d.triplane.sampling import sample_planes

        return sample_planes, NerfDecoder(n_features=C)
    except ImportError:  # triplane/ not written yet: a stand-in with the agreed layout
        dec = nn.Module()
        dec.net = nn.Sequential(
            nn.Linear(3 * C, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
        )
        return _sample_planes_standin, dec


def _decode(sample, decoder, planes, xyz, first_layer_only=False):
    f = sample(planes, xyz)  # (B, 3, P, C)
    f = f.permute(0, 2, 1, 3).reshape(f.shape[0], f.shape[2], -1)  # (B, P, 3C) plane-major
    return decoder.net[0](f) if first_layer_only else decoder.net(f)


def test_fold_is_exact_inside_the_affine_region():
    sample, dec = _sampler_and_decoder()
    dec = dec.double()
    norm = LatentNormalizer.from_stats(compute_stats([triplanes(4)]))
    x_std = torch.randn(2, 3, C, R, R, dtype=torch.float64)
    folded = fold_into_decoder(norm, dec)
    b = fold_exact_bound(R)
    g = torch.Generator().manual_seed(5)
    xyz = (torch.rand(2, 200, 3, generator=g, dtype=torch.float64) * 2 - 1) * b
    xyz[:, :8] = torch.tensor(
        [[sx * b, sy * b, sz * b] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    )
    ref = _decode(sample, dec, norm.denormalize(x_std), xyz)
    out = _decode(sample, folded, x_std, xyz)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())
    assert not torch.equal(folded.net[0].weight, dec.net[0].weight)  # the original is untouched copy
    assert torch.equal(
        fold_into_decoder(LatentNormalizer(C, mode="none"), dec).net[0].weight, dec.net[0].weight
    )


def test_fold_border_band_error_is_exactly_the_padding_term():
    """Outside |coord| <= 1 - 1/R the first layer is off by sum_p W_p mean_p (1 - coverage_p)."""
    sample, dec = _sampler_and_decoder()
    dec = dec.double()
    norm = LatentNormalizer.from_stats(compute_stats([triplanes(4)]))
    x_std = torch.randn(1, 3, C, R, R, dtype=torch.float64)
    folded = fold_into_decoder(norm, dec)
    xyz = torch.tensor(
        [[[0.99, 0.1, -0.2], [-1.0, 1.0, 0.0], [0.3, -0.995, 1.0], [0.0, 0.0, 0.0]]], dtype=torch.float64
    )
    diff = _decode(sample, dec, norm.denormalize(x_std), xyz, True) - _decode(
        sample, folded, x_std, xyz, True
    )
    coverage = sample(torch.ones(1, 3, 1, R, R, dtype=torch.float64), xyz)[..., 0]  # (1, 3, P)
    w = dec.net[0].weight.reshape(-1, 3, C)  # (H, 3, C)
    mu = norm.mean.double()[..., 0, 0]  # (3, C)
    predicted = -torch.einsum("hpc,pc,bpn->bnh", w, mu, 1 - coverage)
    torch.testing.assert_close(diff, predicted, rtol=1e-9, atol=1e-10 * predicted.abs().max().item())
    assert diff[0, :3].abs().max() > 1.0 and diff[0, 3].abs().max() < 1e-9  # band points off, centre exact


@pytest.mark.parametrize("kind", ["nerf", "mesh"])
def test_fold_through_triplane_field(kind):
    field_mod = pytest.importorskip("triflow3d.triplane.field", reason="triplane/ not available yet")
    ref = field_mod.TriplaneField(C, kind=kind).double()
    norm = LatentNormalizer.from_stats(compute_stats([triplanes(4)]), clamp=5.0)
    fold = copy.deepcopy(ref)
    fold.decoder = fold_into_decoder(norm, ref.decoder)
    x_std = torch.randn(1, 3, C, R, R, dtype=torch.float64)
    b = fold_exact_bound(R)
    xyz = (torch.rand(1, 64, 3, dtype=torch.float64) * 2 - 1) * b
    a, o = ref.query(norm.denormalize(x_std), xyz), fold.query(x_std, xyz)
    for key in ("sigma_raw", "rgb") + (("sdf", "deformation_raw") if kind == "mesh" else ()):
        torch.testing.assert_close(o[key], a[key], rtol=1e-9, atol=1e-9 * (1 + a[key].abs().max().item()))
    if kind == "mesh":  # the 8-corner cube head folds with the statistics tiled per corner
        cubes = torch.arange(64).reshape(8, 8)
        wa = ref.query_cube_weights(norm.denormalize(x_std), xyz, cubes)
        torch.testing.assert_close(fold.query_cube_weights(x_std, xyz, cubes), wa, rtol=1e-9, atol=1e-9)


def test_fold_rejects_a_decoder_of_the_wrong_width():
    dec = nn.Module()
    dec.net = nn.Sequential(nn.Linear(3 * C + 1, 8))
    with pytest.raises(ConfigError, match="cannot fold"):
        fold_into_decoder(LatentNormalizer(C), dec)


# --- spatial weights ---------------------------------------------------------------------------

CENTRE = torch.tensor([0.4, -0.2, 0.1])
RADIUS = 0.35


def sphere_density(xyz: torch.Tensor) -> torch.Tensor:
    inside = (xyz - CENTRE).norm(dim=-1, keepdim=True) < RADIUS
    return inside.float() * 20.0  # activated density, above the mesh threshold 10 inside


def texel_coords(res: int) -> torch.Tensor:
    return (torch.arange(res) + 0.5) / res * 2 - 1  # align_corners=False texel centres


@pytest.mark.parametrize("plane_res", [16, 32, 96])
def test_sphere_projects_to_discs_in_plane_orientation(plane_res):
    occ = occupancy_grid(sphere_density, batch_size=2, resolution=64, threshold=10.0, chunk=50_000)
    assert occ.shape == (2, 64, 64, 64) and occ.dtype == torch.bool
    masks = project_occupancy(occ, plane_res)
    assert masks.shape == (2, 3, plane_res, plane_res)
    t = texel_coords(plane_res)
    tol = 2.0 / plane_res + 2.0 / 63  # one texel + one grid step
    for p, (u, v) in enumerate(PLANE_AXES):
        rows, cols = torch.meshgrid(t, t, indexing="ij")  # rows index v, cols index u
        dist = ((cols - CENTRE[u]) ** 2 + (rows - CENTRE[v]) ** 2).sqrt()
        m = masks[0, p]
        assert m[dist < RADIUS - tol].all(), f"plane {p}: disc interior missing"
        assert not m[dist > RADIUS + tol].any(), f"plane {p}: mask outside the disc"
        centroid_u, centroid_v = cols[m].mean(), rows[m].mean()
        assert abs(centroid_u - CENTRE[u]) < 1.0 / plane_res + 0.02, f"plane {p} u"
        assert abs(centroid_v - CENTRE[v]) < 1.0 / plane_res + 0.02, f"plane {p} v"


def test_dilate_and_importance_weights():
    mask = torch.zeros(1, 3, 9, 9, dtype=torch.bool)
    mask[0, 1, 4, 4] = True
    d = dilate(mask, 2)
    assert d[0, 1].sum() == 25 and d[0, 1, 2:7, 2:7].all() and not d[0, 0].any()
    assert torch.equal(dilate(mask, 0), mask)
    w = importance_weights(d, w_bg=0.1)
    assert w.min().item() == pytest.approx(0.1) and w.max().item() == 1.0 and w.dtype == torch.float32
    with pytest.raises(ConfigError):
        importance_weights(d, w_bg=1.5)


class SphereField:
    """Stand-in for triplane.decoder.TriplaneField: an analytic sphere, whatever the planes."""

    def query(self, planes: torch.Tensor, xyz: torch.Tensor) -> dict[str, torch.Tensor]:
        assert xyz.shape[0] == planes.shape[0]
        sigma = sphere_density(xyz)
        return {"sigma_raw": sigma, "sigma": sigma, "rgb": torch.zeros_like(xyz)}


def test_spatial_weights_through_a_field():
    planes = torch.zeros(2, 3, C, 32, 32)
    w = spatial_weights(SphereField(), planes, grid_res=32, threshold=10.0, dilation=1, w_bg=0.2)
    assert w.shape == (2, 3, 32, 32)
    assert torch.unique(w).tolist() == [pytest.approx(0.2), 1.0]
    undilated = project_occupancy(occupancy_grid(sphere_density, 2, 32, 10.0), 32)
    assert torch.equal(w > 0.5, dilate(undilated, 1))
    assert (w[0, 0] == 1.0).float().mean() < 0.3  # mostly background: a small off-centre sphere


def test_spatial_weights_with_the_triplane_field():
    field_mod = pytest.importorskip("triflow3d.triplane.field", reason="triplane/ not available yet")
    field = field_mod.TriplaneField(C, kind="nerf")
    planes = torch.zeros(1, 3, C, 16, 16)  # zero features: density is set by the last bias alone
    with torch.no_grad():
        field.decoder.net[-1].bias[0] = 50.0  # softplus(50 - 1) > 10 everywhere
    assert spatial_weights(field, planes, grid_res=8).eq(1.0).all()
    with torch.no_grad():
        field.decoder.net[-1].bias[0] = -50.0
    assert spatial_weights(field, planes, grid_res=8, w_bg=0.25).eq(0.25).all()
