"""The pure-PyTorch volume renderer: analytic fields, fast vs plain, chunking, gradients, parity."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from triflow3d.cameras import orbit_rig
from triflow3d.triplane import TriplaneField
from triflow3d.triplane.volume import RENDER_PRESETS, RenderOptions, render_cameras

TINY = RenderOptions(samples_coarse=16, samples_importance=16, chunk=512)
PLAIN = dataclasses.replace(TINY, fast=False)


class SphereField:
    """Analytic field: density ~ sharp * (r - |x - c|) inside a sphere, a constant colour."""

    kind = "nerf"

    def __init__(self, radius=0.5, sharp=1e4, centre=(0.0, 0.0, 0.0), color=(0.2, 0.4, 0.6)):
        self.radius, self.sharp = radius, sharp
        self.centre, self.color = torch.tensor(centre), torch.tensor(color)
        self.points = 0

    def query(self, planes, xyz, chunk=None):
        self.points += xyz.shape[0] * xyz.shape[1]
        raw = self.sharp * (self.radius - (xyz - self.centre).norm(dim=-1, keepdim=True)) + 1.0
        return {
            "sigma_raw": raw,
            "sigma": torch.nn.functional.softplus(raw - 1),
            "rgb": self.color.expand_as(xyz),
        }


class EmptyField(SphereField):
    def __init__(self):
        super().__init__(radius=-10.0, sharp=10.0)  # density softplus(-100 - 10 |x|) = 0


def cams(n=1):
    return orbit_rig(n).render_cameras()[None]  # (1, n, 25), radius 4.5, fov 30


def test_empty_space_renders_background():
    out = render_cameras(EmptyField(), None, cams(2), 8, TINY, deterministic=True)
    assert out["rgb"].shape == (1, 2, 3, 8, 8) and out["alpha"].shape == (1, 2, 1, 8, 8)
    torch.testing.assert_close(out["rgb"], torch.ones_like(out["rgb"]))
    assert out["alpha"].abs().max() < 1e-6
    black = render_cameras(EmptyField(), None, cams(1), 8, dataclasses.replace(TINY, white_background=False))
    assert black["rgb"].abs().max() < 1e-6


@pytest.mark.parametrize("opts", [TINY, PLAIN], ids=["fast", "plain"])
def test_sphere_silhouette_and_depth(opts):
    size, r = 33, 0.5
    out = render_cameras(SphereField(r), None, cams(1), size, opts, deterministic=True)
    alpha, depth, rgb = out["alpha"][0, 0, 0], out["depth"][0, 0, 0], out["rgb"][0, 0]
    c = size // 2  # the central pixel looks exactly at the origin
    assert alpha[c, c] > 0.999 and alpha[0, 0] < 1e-6
    assert depth[c, c].item() == pytest.approx(4.5 - r, abs=0.03)
    torch.testing.assert_close(rgb[:, c, c], torch.tensor([0.2, 0.4, 0.6]), atol=1e-3, rtol=0)
    torch.testing.assert_close(rgb[:, 0, 0], torch.ones(3), atol=1e-6, rtol=0)
    # projected disc radius in pixels: f * tan(asin(r / d)) * S
    f = 0.5 / torch.tan(torch.deg2rad(torch.tensor(15.0)))
    radius_px = f * torch.tan(torch.asin(torch.tensor(r / 4.5))) * size
    area = (alpha > 0.5).sum().item()
    assert area == pytest.approx(torch.pi * radius_px.item() ** 2, rel=0.1)


def test_deterministic_repeatable_and_random_seeded():
    field, planes = TriplaneField(4).eval(), torch.randn(1, 3, 4, 8, 8)
    with torch.no_grad():
        a = render_cameras(field, planes, cams(1), 6, TINY, deterministic=True)
        b = render_cameras(field, planes, cams(1), 6, TINY, deterministic=True)
        g = [torch.Generator().manual_seed(s) for s in (1, 1, 2)]
        r = [render_cameras(field, planes, cams(1), 6, TINY, generator=gen)["rgb"] for gen in g]
    for k in a:
        assert torch.equal(a[k], b[k])
    assert torch.equal(r[0], r[1]) and not torch.equal(r[0], r[2])


@pytest.mark.parametrize("fast", [True, False])
def test_chunked_equals_unchunked(fast):
    field, planes = TriplaneField(4).eval(), torch.randn(2, 3, 4, 8, 8)
    cameras = torch.cat([cams(2), orbit_rig(2, elevation_deg=-30.0).render_cameras()[None]])
    big = dataclasses.replace(TINY, fast=fast, chunk=10**6)
    small = dataclasses.replace(big, chunk=37)
    with torch.no_grad():
        a = render_cameras(field, planes, cameras, 8, big, deterministic=True)
        b = render_cameras(field, planes, cameras, 8, small, deterministic=True)
    for k in ("rgb", "depth", "alpha"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_fast_matches_plain_and_skips_work():
    fields = {"fast": SphereField(0.6), "plain": SphereField(0.6)}
    fast = dataclasses.replace(TINY, occupancy_resolution=16)  # a small grid for a small render
    outs = {
        k: render_cameras(f, None, cams(2), 24, fast if k == "fast" else PLAIN, deterministic=True)
        for k, f in fields.items()
    }
    for k in ("rgb", "alpha"):
        torch.testing.assert_close(outs["fast"][k], outs["plain"][k], rtol=0, atol=1e-5)
    torch.testing.assert_close(outs["fast"]["depth"], outs["plain"]["depth"], rtol=0, atol=1e-4)
    assert fields["fast"].points < 0.5 * fields["plain"].points  # occupancy grid included


@pytest.mark.parametrize("n_features", [4, 80])  # 80 > hidden: the folded first-layer path
def test_fast_matches_plain_on_a_triplane(n_features):
    field, planes = TriplaneField(n_features).eval(), torch.randn(1, 3, n_features, 8, 8)
    with torch.no_grad():
        a = render_cameras(field, planes, cams(1), 10, TINY, deterministic=True)
        b = render_cameras(field, planes, cams(1), 10, PLAIN, deterministic=True)
    for k in ("rgb", "depth", "alpha"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("opts", [TINY, PLAIN], ids=["fast", "plain"])
def test_gradients_reach_planes(opts):
    field = TriplaneField(4)
    planes = torch.randn(1, 3, 4, 8, 8, requires_grad=True)
    out = render_cameras(field, planes, cams(1), 6, opts, deterministic=False)
    (out["rgb"].mean() + out["depth"].mean() + out["alpha"].mean()).backward()
    assert torch.isfinite(planes.grad).all() and planes.grad.abs().sum() > 0
    assert field.decoder.net[0].weight.grad.abs().sum() > 0


def test_mesh_variant_renders():
    field, planes = TriplaneField(4, "mesh").eval(), torch.randn(1, 3, 4, 8, 8)
    with torch.no_grad():
        out = render_cameras(field, planes, cams(1), 6, TINY, deterministic=True)
    assert torch.isfinite(out["rgb"]).all() and torch.isfinite(out["depth"]).all()
    assert 0 <= out["alpha"].min() and out["alpha"].max() <= 1 + 1e-6


# --- parity against upstream ImportanceRenderer golden tensors -----------------------------------
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_parity_render(parity_dir, fast):
    ckpt = torch.load(parity_dir / "nerf_small.ckpt", map_location="cpu", weights_only=True)
    prefix = "lrm_generator.synthesizer."
    field = TriplaneField(16).eval()
    field.load_state_dict(
        {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    )
    inp, exp = (
        load_file(parity_dir / "inputs.safetensors"),
        load_file(parity_dir / "expected_nerf_small.safetensors"),
    )
    opts = dataclasses.replace(RENDER_PRESETS["parity-small"], fast=fast, chunk=1500)  # chunks straddle views
    with torch.no_grad():
        out = render_cameras(
            field, exp["planes"], inp["render_cameras"], 32, opts, True, return_intermediates=True
        )

    def per_view(x):
        return x.reshape(4, 1024, *x.shape[2:])

    assert torch.equal(per_view(out["ray_valid"]), exp["render_ray_valid"])
    checks = {
        "ray_start": 1e-5,
        "ray_end": 1e-5,
        "depths_coarse": 1e-5,
        "weights_coarse": 2e-4,
        "depths_fine": 2e-3,
    }
    for k, atol in checks.items():
        torch.testing.assert_close(per_view(out[k]), exp[f"render_{k}"], rtol=0, atol=atol)
    for k, ref, atol in (("rgb", "rgb", 2e-3), ("alpha", "weight", 2e-3), ("depth", "depth", 5e-3)):
        torch.testing.assert_close(out[k], exp[f"render_{ref}"], rtol=0, atol=atol)
        assert (out[k] - exp[f"render_{ref}"]).abs().mean() <= 1e-4
