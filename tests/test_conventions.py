import math

import pytest
import torch
from safetensors.torch import load_file

from triflow3d import cameras as cam
from triflow3d import conventions as cv


def test_pinned_numbers():
    assert cv.WORLD_UP == (0.0, 0.0, 1.0)
    assert (cv.BOX_MIN, cv.BOX_MAX, cv.BOX_WARP) == (-1.0, 1.0, 2.0)
    assert cv.ZERO123PP_AZIMUTHS_DEG == (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
    assert cv.ZERO123PP_ELEVATIONS_DEG == (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
    assert cv.ZERO123PP_RADIUS == 4.0 and cv.ZERO123PP_FOV_DEG == 30.0
    assert cv.PLANE_AXES == ((0, 1), (0, 2), (2, 1))
    assert cv.PLANE_NORMAL_AXES == (2, 1, 0)
    assert cv.MESH_THRESHOLD == 10.0 and cv.DENSITY_SHIFT == -1.0 and cv.RGB_PADDING == 0.001
    assert cv.T_NOISE == 1.0 and cv.T_DATA == 0.0
    assert cv.focal_from_fov(30.0) == pytest.approx(1.8660254, abs=1e-6)
    # the normalised object must be fully visible from the rig: r <= 4 sin(15 deg)
    assert cv.OBJECT_RADIUS <= cv.ZERO123PP_RADIUS * math.sin(math.radians(cv.ZERO123PP_FOV_DEG / 2))
    for axes, normal in zip(cv.PLANE_AXES, cv.PLANE_NORMAL_AXES):
        assert sorted((*axes, normal)) == [0, 1, 2]


def test_zero123pp_view0_matches_research_notes():
    expected = [-0.5, -0.2962, 0.8138, 3.2552, 0.866, -0.171, 0.4698, 1.8794, 0.0, 0.9397, 0.342, 1.3681]
    expected += [1.866, 1.866, 0.5, 0.5]
    got = cam.zero123pp_rig().input_cameras()[0]
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-4, rtol=0)


def test_c2w_is_opengl_looking_at_origin():
    rig = cam.zero123pp_rig()
    c2w = rig.c2w
    R = c2w[:, :3, :3]
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(6, 3, 3), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(R), torch.ones(6), atol=1e-6)
    pos = c2w[:, :3, 3]
    torch.testing.assert_close(pos.norm(dim=-1), torch.full((6,), 4.0))
    # camera looks down its -z axis, toward the origin
    forward = -R[:, :, 2]
    torch.testing.assert_close(forward, -pos / pos.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    # camera y (up) has a positive world-z component
    assert (R[:, 2, 1] > 0).all()
    el = torch.rad2deg(torch.asin(pos[:, 2] / 4.0))
    torch.testing.assert_close(el, torch.tensor(cv.ZERO123PP_ELEVATIONS_DEG), atol=1e-4, rtol=0)


def test_camera_encodings_round_trip():
    rig = cam.random_rig(5, seed=3)
    c2w, K = cam.decode_input_cameras(rig.input_cameras())
    torch.testing.assert_close(c2w, rig.c2w)
    torch.testing.assert_close(K, rig.intrinsics)
    c2w2, K2 = cam.decode_render_cameras(rig.render_cameras())
    torch.testing.assert_close(c2w2, rig.c2w)
    torch.testing.assert_close(K2, rig.intrinsics)
    torch.testing.assert_close(cam.input_to_render_cameras(rig.input_cameras()), rig.render_cameras())
    torch.testing.assert_close(cam.fov_from_intrinsics(K), torch.full((5,), 30.0))
    with pytest.raises(ValueError, match="last dimension 16"):
        cam.decode_input_cameras(torch.zeros(2, 15))


def test_rays_centre_pixel_points_at_origin_and_corner_up_left():
    rig = cam.zero123pp_rig()
    size = 33  # odd: the middle pixel's centre is the principal point
    o, d = cam.pixel_rays(rig.c2w, rig.intrinsics, size)
    assert o.shape == d.shape == (6, size * size, 3)
    mid = (size // 2) * size + size // 2
    torch.testing.assert_close(d[:, mid], -o[:, mid] / 4.0, atol=1e-6, rtol=0)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(6, size * size))
    # pixel (0, 0) is top-left: in camera space it points left (-x) and up (+y)
    d_cam = torch.einsum("nij,ni->nj", rig.c2w[:, :3, :3], d[:, 0])
    assert (d_cam[:, 0] < 0).all() and (d_cam[:, 1] > 0).all() and (d_cam[:, 2] < 0).all()


def test_parse_rig():
    assert len(cam.parse_rig("zero123pp")) == 6
    assert len(cam.parse_rig("orbit:8")) == 8
    assert len(cam.parse_rig("random:3", seed=1)) == 3
    for bad in ("orbit", "orbit:0", "random:x", "foo"):
        with pytest.raises(ValueError):
            cam.parse_rig(bad)


def test_cameras_match_upstream_parity_vectors(parity_dir):
    inputs = load_file(str(parity_dir / "inputs.safetensors"))
    torch.testing.assert_close(
        cam.zero123pp_rig().input_cameras()[None], inputs["input_cameras"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        cam.orbit_rig(4).render_cameras()[None], inputs["render_cameras"], atol=1e-6, rtol=0
    )
    exp = load_file(str(parity_dir / "expected_nerf_small.safetensors"))
    c2w, K = cam.decode_render_cameras(inputs["render_cameras"][0])
    o, d = cam.pixel_rays(c2w, K, 32)
    torch.testing.assert_close(o, exp["render_ray_origins"], atol=1e-5, rtol=0)
    torch.testing.assert_close(d, exp["render_ray_directions"], atol=1e-5, rtol=0)
