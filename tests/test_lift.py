"""Projective lift of the reconstructor's queries, camera projection, and warm-started training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from triflow3d import conventions as cv
from triflow3d.cameras import pixel_rays, project_points, random_rig, zero123pp_rig
from triflow3d.encoders import (
    RECONSTRUCTOR_PRESETS,
    ReconstructorConfig,
    build_reconstructor,
    load_reconstructor,
    save_reconstructor,
)
from triflow3d.encoders.lift import token_columns, view_samples
from triflow3d.errors import ConfigError
from triflow3d.triplane.sampling import project_to_planes

TINY = dict(num_hidden_layers=1, transformer_layers=1, triplane_low_res=4, image_size=32, patch_size=8)
TINY |= dict(plane_lift_depth=0, colour_planes=False, triplane_dim=8)  # the lifts are switched on per test


def tiny(**kw) -> ReconstructorConfig:
    return dataclasses.replace(RECONSTRUCTOR_PRESETS["lrm-small"], **(TINY | kw))


def test_project_points_inverts_pixel_rays():
    rig = random_rig(5, seed=3)
    c2w, K = rig.c2w, rig.intrinsics
    o, d = pixel_rays(c2w, K, 8)
    uv, z = project_points(c2w, K, o + 1.7 * d)
    ij = (torch.arange(8) + 0.5) / 8
    rows, cols = torch.meshgrid(ij, ij, indexing="ij")
    want = torch.stack([cols, rows], -1).reshape(1, -1, 2)  # u = column, v = row
    assert torch.allclose(uv, want.expand_as(uv), atol=1e-5)
    assert (z > 0).all()
    _, z_behind = project_points(c2w, K, o - d)  # behind the camera
    assert (z_behind < 0).all()


def test_token_columns_sit_on_their_cells():
    r, depth = 4, 3
    pts = token_columns(r, depth)  # (3 r r D, 3)
    assert pts.shape == (cv.NUM_PLANES * r * r * depth, 3)
    uv = project_to_planes(pts[None])[0]  # (3, P, 2) grid coordinates in [-1, 1]
    cells = (torch.arange(r) + 0.5) / r * 2 - 1
    for p in range(cv.NUM_PLANES):
        mine = uv[p].reshape(cv.NUM_PLANES, r, r, depth, 2)[p]  # the points of plane p's own tokens
        assert torch.allclose(mine[..., 0], cells[None, :, None].expand(r, r, depth))  # u = column j
        assert torch.allclose(mine[..., 1], cells[:, None, None].expand(r, r, depth))  # v = row i
        # along each column, the missing axis spans the box
        missing = 3 - sum(cv.PLANE_AXES[p])
        col = pts.reshape(cv.NUM_PLANES, r, r, depth, 3)[p, 0, 0, :, missing]
        assert col.min() > cv.BOX_MIN and col.max() < cv.BOX_MAX and len(col.unique()) == depth


def test_lift_starts_as_a_no_op_and_then_sees_the_images():
    torch.manual_seed(0)
    plain = build_reconstructor(tiny(), seed=0).eval()
    lifted = build_reconstructor(tiny(lift_depth=4), seed=0).eval()
    missing = lifted.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("lift.") for k in missing)
    rig = zero123pp_rig()
    images = torch.rand(2, 6, 3, 32, 32)
    cams = rig.input_cameras()[None].expand(2, -1, -1)
    with torch.no_grad():
        assert torch.equal(plain.forward_planes(images, cams), lifted.forward_planes(images, cams))
        init = lifted.lifted_queries(images, cams)
    assert init.shape == (2, cv.NUM_PLANES * 4 * 4, lifted.config.transformer_dim)
    lift, alpha = lifted.lift, torch.ones(2, 6, 1, 32, 32)
    stats_grad = torch.autograd.grad(lift(images, cams, alpha).sum(), lift.proj.weight)[0]
    assert stats_grad.abs().sum() > 0  # the zero-initialised projection learns from the first step
    with torch.no_grad():
        lift.proj.weight.normal_()
        a, b = lift(images, cams, alpha), lift(images.flip(0), cams, alpha)
    assert not torch.allclose(a, b)  # different images, different starts


def test_lift_columns_see_the_object_in_every_view():
    """A sphere seen from every view: column points inside it read the object colour in all views, points
    far outside it read the white background in some view (the multi-view consistency the lift feeds on)."""
    rig = zero123pp_rig()
    s = 64
    c2w, K = rig.c2w, rig.intrinsics
    o, d = pixel_rays(c2w, K, s)  # (V, S*S, 3)
    b = (o * d).sum(-1)
    hit = (b**2 - ((o * o).sum(-1) - 0.5**2)) > 0  # rays hitting a sphere of radius 0.5
    img = torch.ones(len(rig), 3, s * s)
    img[:, 0][hit], img[:, 1][hit], img[:, 2][hit] = 0.8, 0.1, 0.1
    images = img.reshape(1, len(rig), 3, s, s)
    pts = token_columns(8, 8)
    seen = view_samples(torch.nn.Identity(), images, rig.input_cameras()[None], pts)[0, :, 3:]  # raw RGB
    inside = pts.norm(dim=-1) < 0.4
    outside = pts.norm(dim=-1) > 1.2
    red = seen[:, 1] < 0.5  # (V, P)
    assert red[:, inside].all()  # every view sees the object at a point inside it
    assert (~red[:, outside]).any(0).all()  # far points fall on background in some view


def test_plane_lift_starts_as_a_no_op_and_learns():
    plain = build_reconstructor(tiny(), seed=0).eval()
    lifted = build_reconstructor(tiny(plane_lift_depth=4), seed=0).eval()
    missing = lifted.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("plane_lift.") for k in missing)
    images = torch.rand(2, 6, 3, 32, 32)
    cams = zero123pp_rig().input_cameras()[None].expand(2, -1, -1)
    with torch.no_grad():
        assert torch.equal(plain.forward_planes(images, cams), lifted.forward_planes(images, cams))
    lift, alpha = lifted.plane_lift, torch.ones(2, 6, 1, 32, 32)
    out = lift(images, cams, alpha)
    assert out.shape == (2, *lifted.triplane_shape)
    grad = torch.autograd.grad(out.sum(), lift.context[-1].weight)[0]
    assert grad.abs().sum() > 0  # the zero-initialised last layer learns from the first step
    with torch.no_grad():
        lift.context[-1].weight.normal_()
        a, b = lift(images, cams, alpha), lift(images.flip(0), cams, alpha)
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="alpha"):
        lift(images, cams)  # built to read alpha


def test_plane_lift_per_object_on_the_cpu_equals_one_batched_pass():
    """The CPU path (one object at a time, for memory traffic) computes what one pass over the batch does
    (the path on a GPU), values and gradients."""
    lift = build_reconstructor(tiny(plane_lift_depth=4), seed=0).plane_lift
    with torch.no_grad():
        lift.context[-1].weight.normal_()
    images, alpha = torch.rand(3, 6, 3, 32, 32), (torch.rand(3, 6, 1, 32, 32) > 0.5).float()
    cams = zero123pp_rig().input_cameras()[None].expand(3, -1, -1)
    a, b = lift(images, cams, alpha), lift.planes_of(images, cams, alpha)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(a.square().sum(), lift.cnn[0].weight)[0]
    gb = torch.autograd.grad(b.square().sum(), lift.cnn[0].weight)[0]
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)  # summation order: 1.2e-6 seen on one CPU


def test_rgba_inputs_without_input_alpha_are_composited_on_white():
    """A model that does not read alpha (InstantMesh's interface) sees RGBA exactly as RGB on white."""
    from triflow3d.data.views import composite_white

    model = build_reconstructor(tiny(plane_lift_depth=4, input_alpha=False), seed=0).eval()
    rgba = torch.rand(1, 6, 4, 32, 32)
    cams = zero123pp_rig().input_cameras()[None]
    with torch.no_grad():
        assert torch.equal(
            model.forward_planes(rgba, cams), model.forward_planes(composite_white(rgba), cams)
        )


def test_input_alpha_makes_a_white_object_visible():
    """White on white: only the alpha channel tells object from background. The plane lift of a model that
    reads alpha sees it (its min over the views is a visual hull); from RGB alone the estimate is empty."""
    from triflow3d.encoders.reconstructor import alpha_from_white

    model = build_reconstructor(tiny(plane_lift_depth=4), seed=0).eval()
    assert model.config.input_alpha  # the lrm-small preset reads alpha
    cams = zero123pp_rig().input_cameras()[None]
    white = torch.ones(1, 6, 3, 32, 32)
    alpha = torch.zeros(1, 6, 1, 32, 32)
    alpha[..., 8:24, 8:24] = 1.0
    with torch.no_grad():
        model.plane_lift.context[-1].weight.normal_()
        seen = model.forward_planes(torch.cat([white, alpha], 2), cams)
        empty = model.forward_planes(torch.cat([white, torch.zeros_like(alpha)], 2), cams)
        estimated = model.forward_planes(white, cams)  # RGB only: alpha estimated from the background
    assert not torch.allclose(seen, empty)
    assert torch.allclose(estimated, empty)
    grey = torch.full((1, 3, 2, 2), 0.5)
    assert torch.equal(alpha_from_white(grey), torch.ones(1, 1, 2, 2))
    assert torch.equal(alpha_from_white(torch.ones(1, 3, 2, 2)), torch.zeros(1, 1, 2, 2))


def test_config_round_trip_and_validation():
    cfg = tiny(lift_depth=6, plane_lift_depth=5)
    back = ReconstructorConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert (back.lift_depth, back.plane_lift_depth) == (6, 5)
    assert RECONSTRUCTOR_PRESETS["instantmesh-nerf-large"].lift_depth == 0
    assert RECONSTRUCTOR_PRESETS["instantmesh-nerf-large"].plane_lift_depth == 0
    assert not RECONSTRUCTOR_PRESETS["instantmesh-nerf-large"].input_alpha
    assert ReconstructorConfig.from_dict(json.loads(json.dumps(tiny().to_dict()))).input_alpha
    for name in ("lift_depth", "plane_lift_depth"):
        with pytest.raises(ConfigError):
            tiny(**{name: -1})


def test_warm_start_and_frozen_decoder(tmp_path):
    from triflow3d.recon.train import warm_start

    src = build_reconstructor(tiny(), seed=1)
    save_reconstructor(src, tmp_path / "w")
    model = build_reconstructor(tiny(lift_depth=4), seed=2)
    warm_start(model, f"lrm-small:{tmp_path / 'w'}")
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    with pytest.raises(ConfigError):
        warm_start(build_reconstructor(tiny(triplane_dim=4), seed=2), f"lrm-small:{tmp_path / 'w'}")


def test_cli_fine_tunes_with_a_lift_and_a_frozen_decoder(tmp_path):
    """``recon train --init W --freeze-decoder`` with a lift enabled: the decoder stays W's, the rest trains."""
    from safetensors.torch import load_file

    from triflow3d.cli import main
    from triflow3d.recon.synthetic import write_views_folder
    from triflow3d.recon.train import latest_checkpoint

    write_views_folder(tmp_path / "in", [0, 1], "zero123pp", 32)
    start = build_reconstructor(tiny(), seed=1)
    save_reconstructor(start, tmp_path / "w")
    argv = ["recon", "train", "--data", str(tmp_path / "in"), "--out", str(tmp_path / "run"),
            "--model-config", json.dumps(TINY | {"lift_depth": 4}), "--steps", "3", "--batch", "2",
            "--rays", "32", "--sup-size", "16", "--samples", "8", "--warmup", "1", "--ckpt-every", "3",
            "--init", f"lrm-small:{tmp_path / 'w'}", "--freeze-decoder"]  # fmt: skip
    assert main(argv) == 0
    after = load_file(latest_checkpoint(tmp_path / "run") / "model" / "model.safetensors")
    before = start.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("synthesizer."))
    assert not all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("transformer."))
    assert any(k.startswith("lift.") for k in after)
    loaded = load_reconstructor("lrm-small", checkpoint=latest_checkpoint(tmp_path / "run") / "model")
    assert loaded.config.lift_depth == 4 and loaded.lift is not None
    images, cams = torch.rand(1, 6, 3, 32, 32), zero123pp_rig().input_cameras()[None]
    with torch.no_grad():
        assert torch.isfinite(loaded.forward_planes(images, cams)).all()


def test_rgb_plane_lift_grows_to_read_alpha_without_changing_its_output():
    """An RGB-trained model warm-starts an alpha-reading one (recon train --init): the grown lift's alpha
    weights are zero, so the new model makes the same planes from RGBA as the old one from RGB."""
    from triflow3d.recon.train import grown_state

    old = build_reconstructor(tiny(plane_lift_depth=4, input_alpha=False), seed=0).eval()
    with torch.no_grad():  # a trained-looking lift: the zero-initialised last layer is not a no-op
        old.plane_lift.context[-1].weight.normal_(0.0, 0.1)
    new = build_reconstructor(tiny(plane_lift_depth=4, input_alpha=True), seed=1).eval()
    new.load_state_dict(grown_state(old, new))
    g = torch.Generator().manual_seed(0)
    rgba = torch.rand(2, 6, 4, 32, 32, generator=g)
    cams = zero123pp_rig().input_cameras()[None].expand(2, -1, -1)
    with torch.no_grad():
        want = old.forward_planes(rgba, cams)  # RGB composited on white
        got = new.forward_planes(rgba, cams)  # the same RGB, and alpha through zero weights
        fresh = build_reconstructor(tiny(plane_lift_depth=4, input_alpha=True), seed=1).eval()
        assert not torch.allclose(fresh.forward_planes(rgba, cams), want, atol=1e-3)
    assert torch.allclose(got, want, atol=1e-5)
