"""Encoders: InstantMesh parity (strict checkpoint load + golden tensors), full-size key manifests,
config parsing, loader errors, save/load round trip, and reduced-precision inference."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from triflow3d import conventions as cv
from triflow3d.encoders import (
    RECONSTRUCTOR_PRESETS,
    ReconstructorConfig,
    build_reconstructor,
    load_reconstructor,
    parse_encoder_spec,
    save_reconstructor,
)
from triflow3d.encoders.loading import WEIGHTS_DIR
from triflow3d.encoders.vit import interpolate_pos_embed
from triflow3d.errors import CheckpointError, ConfigError

TOL = dict(rtol=1e-4, atol=2e-4)  # the parity README's recommendation for fp32 CPU


def tiny_config(**kw) -> ReconstructorConfig:
    base = dict(num_hidden_layers=1, transformer_layers=1, triplane_low_res=4, image_size=64)
    base |= dict(colour_planes=False, triplane_dim=8)  # test_colour_planes_* switch them on
    return dataclasses.replace(RECONSTRUCTOR_PRESETS["lrm-small"], **(base | kw))


# --- parity with upstream (shared data) ---------------------------------------------------------
_CACHE: dict = {}


@pytest.fixture
def nerf_small(parity_dir):
    """(model, inputs, expected) for the reduced NeRF checkpoint, loaded once per module."""
    if "nerf" not in _CACHE:
        model = load_reconstructor(
            "instantmesh-nerf-base",
            checkpoint=parity_dir / "nerf_small.ckpt",
            config=parity_dir / "nerf_small_config.json",
        )
        inputs = load_file(parity_dir / "inputs.safetensors")
        _CACHE["nerf"] = model, inputs, load_file(parity_dir / "expected_nerf_small.safetensors")
    return _CACHE["nerf"]


def test_nerf_small_intermediates_match_upstream(nerf_small):
    model, inp, exp = nerf_small
    images, cams = inp["images"], inp["input_cameras"]
    with torch.no_grad():
        torch.testing.assert_close(model.camera_embedder(cams), exp["camera_embeddings"], **TOL)
        torch.testing.assert_close(
            model.encoder_pos_embed(320, 320), exp["encoder_pos_embed_interpolated"], **TOL
        )
        tokens = model.encode_images(images, cams)  # (1, 6*401, 192), view-major
        torch.testing.assert_close(tokens.reshape(6, 401, 192), exp["encoder_tokens"], **TOL)
        query_tokens = model.transformer_tokens(tokens)
        torch.testing.assert_close(query_tokens, exp["transformer_tokens"], **TOL)
        planes = model.transformer.to_planes(query_tokens)  # forward_planes itself: the mesh test
    assert planes.dtype == torch.float32 and planes.shape == (1, *model.triplane_shape) == (1, 3, 16, 64, 64)
    torch.testing.assert_close(planes, exp["planes"], **TOL)
    # The deconvolution alone is bit-exact on the stored tokens.
    with torch.no_grad():
        torch.testing.assert_close(
            model.transformer.to_planes(exp["transformer_tokens"]), exp["planes"], rtol=0, atol=0
        )


def test_nerf_small_query_matches_upstream(nerf_small):
    model, inp, exp = nerf_small
    with torch.no_grad():
        out = model.query(exp["planes"], inp["query_points"])
    for k in ("sigma_raw", "sigma", "rgb"):
        torch.testing.assert_close(out[k], exp[f"query_{k}"], **TOL)


def test_nerf_small_extract_mesh(nerf_small):
    pytest.importorskip("triflow3d.triplane.mesh", reason="triflow3d.triplane.mesh is not written yet")
    model, inp, exp = nerf_small
    # The random parity field has only ~25 grid cells above the threshold: use the dense grid.
    mesh = model.extract_mesh(exp["planes"], resolution=32, threshold=cv.MESH_THRESHOLD, coarse_to_fine=False)
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    assert mesh.vertices.min() >= -1.0 and mesh.vertices.max() <= 1.0


def test_nerf_small_render_matches_upstream(nerf_small):
    pytest.importorskip("triflow3d.triplane.volume", reason="triflow3d.triplane.volume is not written yet")
    model, inp, exp = nerf_small
    assert (model.render_options.samples_coarse, model.render_options.samples_importance) == (32, 32)
    with torch.no_grad():  # deterministic sampling; chunking must not change the call-wide quirks
        out = model.render(exp["planes"], inp["render_cameras"], 32, deterministic=True, chunk=1500)
    for ours, theirs, atol in (
        ("rgb", "render_rgb", 2e-3),
        ("depth", "render_depth", 5e-3),
        ("alpha", "render_weight", 2e-3),
    ):
        assert out[ours].shape == exp[theirs].shape
        torch.testing.assert_close(out[ours], exp[theirs], rtol=0, atol=atol)
        assert (out[ours] - exp[theirs]).abs().mean() <= 1e-4


def test_mesh_small_planes_match_upstream(parity_dir):
    model = load_reconstructor(
        "instantmesh-mesh-base",
        checkpoint=parity_dir / "mesh_small.ckpt",
        config=parity_dir / "mesh_small_config.json",
    )
    inp, exp = (
        load_file(parity_dir / "inputs.safetensors"),
        load_file(parity_dir / "expected_mesh_small.safetensors"),
    )
    assert model.config.kind == "mesh" and model.config.grid_res == 16
    with torch.no_grad():
        torch.testing.assert_close(
            model.camera_embedder(inp["input_cameras"]), exp["camera_embeddings"], **TOL
        )
        torch.testing.assert_close(
            model.forward_planes(inp["images"], inp["input_cameras"]), exp["planes"], **TOL
        )
    with torch.no_grad():
        out = model.query(exp["planes"], inp["query_points"])
    for k in ("sdf", "deformation_raw", "rgb"):
        torch.testing.assert_close(out[k], exp[f"query_{k}"], **TOL)


@pytest.mark.parametrize("variant", ["nerf_base", "nerf_large", "mesh_base", "mesh_large"])
def test_full_size_layout_matches_manifest(parity_dir, variant):
    manifest = json.loads((parity_dir / f"manifest_instant_{variant}.json").read_text())
    name = "instantmesh-" + variant.replace("_", "-")
    model = build_reconstructor(RECONSTRUCTOR_PRESETS[name], device="meta")  # allocates nothing
    keys = [
        ["lrm_generator." + k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert keys == manifest["keys"]  # names, order, shapes, dtypes
    assert len(keys) == manifest["num_tensors"]
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["total_parameters"]
    assert ReconstructorConfig.from_dict(manifest) == RECONSTRUCTOR_PRESETS[name]


# --- configs ------------------------------------------------------------------------------------
def test_config_from_parity_json_and_round_trip(parity_dir):
    d = json.loads((parity_dir / "mesh_small_config.json").read_text())
    cfg = ReconstructorConfig.from_dict(d)
    assert (cfg.kind, cfg.transformer_dim, cfg.hidden_size, cfg.num_attention_heads) == ("mesh", 128, 192, 3)
    assert cfg.triplane_shape == (3, 16, 64, 64) and cfg.grid_scale == 2.1
    assert ReconstructorConfig.from_dict(cfg.to_dict()) == cfg
    assert (
        ReconstructorConfig.from_dict(json.loads(json.dumps(RECONSTRUCTOR_PRESETS["lrm-small"].to_dict())))
        == RECONSTRUCTOR_PRESETS["lrm-small"]
    )


def test_config_errors():
    good = RECONSTRUCTOR_PRESETS["instantmesh-nerf-base"].to_dict()
    extra = good | {"whatever": 1, "params": good["params"] | {"encoder_freeze": False}}
    assert ReconstructorConfig.from_dict(extra) == RECONSTRUCTOR_PRESETS["instantmesh-nerf-base"]
    missing = good | {"params": {k: v for k, v in good["params"].items() if k != "triplane_dim"}}
    with pytest.raises(ConfigError, match="triplane_dim"):
        ReconstructorConfig.from_dict(missing)
    with pytest.raises(ConfigError, match="transformer_layers"):
        ReconstructorConfig.from_dict(good | {"params": good["params"] | {"transformer_layers": "16"}})
    with pytest.raises(ConfigError, match="encoder_vit_config"):
        ReconstructorConfig.from_dict({"params": good["params"]})
    with pytest.raises(ConfigError, match="divisible"):
        dataclasses.replace(RECONSTRUCTOR_PRESETS["lrm-small"], transformer_heads=5)
    with pytest.raises(ConfigError, match="hidden_size"):
        dataclasses.replace(RECONSTRUCTOR_PRESETS["lrm-small"], encoder_feat_dim=64)


def test_presets_and_specs():
    assert RECONSTRUCTOR_PRESETS["instantmesh-nerf-large"].triplane_shape == (3, 80, 64, 64)
    assert (
        RECONSTRUCTOR_PRESETS["instantmesh-mesh-base"].kind == "mesh"
        and RECONSTRUCTOR_PRESETS["instantmesh-mesh-base"].grid_res == 128
    )
    assert RECONSTRUCTOR_PRESETS["lrm-small"].triplane_shape == (3, 11, 32, 32)
    assert parse_encoder_spec("instantmesh-nerf-large:/x/y.ckpt") == ("instantmesh-nerf-large", "/x/y.ckpt")
    assert parse_encoder_spec("lrm-small") == ("lrm-small", None)
    with pytest.raises(ConfigError, match="unknown reconstructor"):
        parse_encoder_spec("nope:/x.ckpt")


# --- model behaviour ----------------------------------------------------------------------------
def test_pos_embed_interpolation_rule():
    table = torch.randn(1, 1 + 14 * 14, 8)
    assert interpolate_pos_embed(table, 14, 14) is table  # unchanged when the grid matches
    out = interpolate_pos_embed(table, 20, 20)
    assert out.shape == (1, 401, 8) and torch.equal(out[:, 0], table[:, 0])
    grid = table[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, scale_factor=20.1 / 14, mode="bicubic", align_corners=False)  # DINO "+0.1"
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 400, 8))


def test_forward_planes_shapes_and_camera_conditioning():
    model = build_reconstructor(tiny_config(ray_embedding=False)).eval()  # InstantMesh's encoder
    images, cams = torch.rand(2, 3, 3, 64, 64), torch.randn(2, 3, 16)
    with torch.no_grad():
        planes = model.forward_planes(images, cams)
        assert planes.shape == (2, *model.triplane_shape) == (2, 3, 8, 8, 8)
        # adaLN starts at zero: cameras do not change the tokens until trained.
        torch.testing.assert_close(model.encode_images(images, cams), model.encode_images(images, cams + 1))
        for layer in model.encoder.model.encoder.layer:
            nn.init.normal_(layer.adaLN_modulation[1].weight, std=0.1)
        assert not torch.allclose(model.encode_images(images, cams), model.encode_images(images, cams + 1))
        # Batch elements are independent, and tokens are view-major.
        torch.testing.assert_close(
            model.forward_planes(images[1:], cams[1:]), model.forward_planes(images, cams)[1:]
        )
        one = model.encode_images(images[:, 1:2], cams[:, 1:2])
        torch.testing.assert_close(model.encode_images(images, cams)[:, 17:34], one, **TOL)
    with pytest.raises(ValueError, match="cameras"):
        model.forward_planes(images, cams[:, :2])


# --- loading, saving, errors --------------------------------------------------------------------
def _lightning_ckpt(path, state_dict, extra=None):
    sd = {"lrm_generator." + k: v for k, v in state_dict.items()} | (extra or {})
    torch.save({"epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.1.2", "state_dict": sd}, path)


def test_lightning_checkpoint_strict_load_and_errors(tmp_path):
    cfg = tiny_config()
    ref = build_reconstructor(cfg, seed=1)
    sd = ref.state_dict()
    good = tmp_path / "good.ckpt"
    decoys = {
        "lpips.net.scaling_layer.shift": torch.zeros(1, 3, 1, 1),
        "lrm_generator.source_camera.x": torch.ones(2),
    }
    _lightning_ckpt(good, sd, decoys)
    model = load_reconstructor("lrm-small", checkpoint=good, config=cfg)
    assert model.encoder_id == "lrm-small" and not model.training
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())

    bad = dict(sd)
    del bad["transformer.norm.bias"]
    bad["encoder.model.extra.weight"] = torch.zeros(2)
    bad["transformer.deconv.bias"] = torch.zeros(5)
    _lightning_ckpt(tmp_path / "bad.ckpt", bad)
    with pytest.raises(CheckpointError) as err:
        load_reconstructor("lrm-small", checkpoint=tmp_path / "bad.ckpt", config=cfg)
    msg = str(err.value)
    assert "missing keys (1): transformer.norm.bias" in msg
    assert "unexpected keys (1): encoder.model.extra.weight" in msg
    assert "transformer.deconv.bias checkpoint (5,) != model (8,)" in msg

    with pytest.raises(CheckpointError, match="not found"):
        load_reconstructor("instantmesh-nerf-large", checkpoint=tmp_path / "absent.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        load_reconstructor(f"lrm-small:{tmp_path / 'absent'}")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_with_arbitrary_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"lrm_generator.x": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_reconstructor("instantmesh-nerf-base", checkpoint=path)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        load_reconstructor("instantmesh-nerf-base", checkpoint=tmp_path / "junk.ckpt")


def test_save_load_round_trip_lrm_small(tmp_path):
    model = build_reconstructor(RECONSTRUCTOR_PRESETS["lrm-small"], encoder_id="lrm-small", seed=3).eval()
    out = save_reconstructor(model, tmp_path / "lrm-small")
    meta = json.loads((out / "config.json").read_text())
    assert meta["encoder_id"] == "lrm-small" and meta["conventions_version"] == cv.CONVENTIONS_VERSION
    loaded = load_reconstructor("lrm-small", checkpoint=out)
    assert loaded.config == model.config
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    images, cams = torch.rand(1, 2, 3, 64, 64), torch.randn(1, 2, 16)
    with torch.no_grad():
        # requires_grad picks nn.MultiheadAttention's kernel, so match it for a bit-exact comparison.
        model.requires_grad_(False)
        assert torch.equal(loaded.forward_planes(images, cams), model.forward_planes(images, cams))
    meta["conventions_version"] = cv.CONVENTIONS_VERSION + 1
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="conventions version"):
        load_reconstructor("lrm-small", checkpoint=out)


def test_shipped_lrm_small_loads():
    if not (WEIGHTS_DIR / "lrm-small" / "model.safetensors").exists():
        pytest.skip("lrm-small weights are not shipped in this checkout")
    model = load_reconstructor("lrm-small")
    assert model.encoder_id == "lrm-small" and model.triplane_shape == (3, 11, 32, 32)
    assert model.config == RECONSTRUCTOR_PRESETS["lrm-small"]
    assert (WEIGHTS_DIR / "lrm-small" / "model.safetensors").stat().st_size < 20e6  # the limit


def test_lrm_small_without_shipped_weights(tmp_path, monkeypatch):
    import triflow3d.encoders.loading as loading

    monkeypatch.setattr(loading, "WEIGHTS_DIR", tmp_path)  # a checkout without the weights
    with pytest.raises(CheckpointError, match="allow_random"):
        load_reconstructor("lrm-small")
    a = load_reconstructor("lrm-small", allow_random=True)
    b = load_reconstructor("lrm-small", allow_random=True)
    assert a.encoder_id == "lrm-small" and a.triplane_shape == (3, 11, 32, 32)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())  # seeded


def test_bf16_inference_is_close_to_fp32(tmp_path):
    ref = build_reconstructor(tiny_config(), seed=2).eval()
    for layer in ref.encoder.model.encoder.layer:  # make the camera path matter
        nn.init.normal_(layer.adaLN_modulation[1].weight, std=0.05)
    save_reconstructor(ref, tmp_path / "m")
    half = load_reconstructor("lrm-small", checkpoint=tmp_path / "m", dtype=torch.bfloat16)
    assert half.transformer.pos_embed.dtype == torch.bfloat16
    assert next(half.synthesizer.parameters()).dtype == torch.float32  # the field stays fp32
    images, cams = torch.rand(1, 2, 3, 64, 64), torch.randn(1, 2, 16)
    with torch.no_grad():
        p32, p16 = ref.forward_planes(images, cams), half.forward_planes(images, cams)
    assert p16.dtype == torch.float32 and torch.isfinite(p16).all()
    err = (p16 - p32).abs().max() / p32.abs().max()
    assert err < 0.05, err


def test_ray_embedding_gives_cameras_an_effect_from_init():
    from triflow3d.cameras import zero123pp_rig
    from triflow3d.encoders.reconstructor import plucker_patches

    cams = zero123pp_rig().input_cameras()  # (6, 16)
    rays = plucker_patches(cams, 64, 16)
    assert rays.shape == (6, 16, 6 * 16 * 16)
    d = rays.reshape(6, 16, 16, 16, 6)[..., :3]
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(6, 16, 16, 16))
    model = build_reconstructor(tiny_config()).eval()
    assert "encoder.ray_embedder.weight" in model.state_dict()
    assert not any(
        "ray_embedder" in k for k in build_reconstructor(tiny_config(ray_embedding=False)).state_dict()
    )
    images = torch.rand(1, 6, 3, 64, 64)
    with torch.no_grad():
        a = model.encode_images(images, cams[None])
        b = model.encode_images(images, cams.roll(1, 0)[None])
    assert not torch.allclose(a, b)  # which camera saw which image matters before any training
    assert ReconstructorConfig.from_dict(tiny_config().to_dict()).ray_embedding


def test_query_table_draw_is_unchanged_and_skipped_on_meta():
    from triflow3d.encoders.transformer import TriplaneTransformer

    torch.manual_seed(3)
    t = TriplaneTransformer(dim=16, cond_dim=8, layers=1, heads=2, low_res=2, triplane_dim=4)
    torch.manual_seed(3)
    assert torch.equal(t.pos_embed.data, torch.randn(1, 12, 16) * 16**-0.5)  # the draw old weights used
    with torch.device("meta"):
        assert TriplaneTransformer(16, 8, 1, 2, 2, 4).pos_embed.is_meta


def test_mesh_colours_divide_out_the_baked_shading():
    """extract_mesh de-lights vertex colours by the config's baked_shading (lrm-small: its training renders'
    mean shading); InstantMesh's presets leave them as the field gives them."""
    from triflow3d.conventions import srgb_to_linear

    assert all(c.baked_shading == 1.0 for n, c in RECONSTRUCTOR_PRESETS.items() if n.startswith("instant"))
    with pytest.raises(ConfigError, match="baked_shading"):
        tiny_config(baked_shading=0.0)
    as_is = build_reconstructor(tiny_config(baked_shading=1.0), seed=4).eval()
    delit = build_reconstructor(tiny_config(baked_shading=0.5), seed=4).eval()
    planes = torch.randn(1, *as_is.triplane_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        level = float(as_is.query(planes, torch.rand(1, 4096, 3) * 2 - 1)["sigma"].median())
        a, b = (m.extract_mesh(planes, resolution=24, threshold=level) for m in (as_is, delit))
    assert len(a.vertices) > 0 and np.array_equal(a.vertices, b.vertices)
    ca, cb = (srgb_to_linear(m.visual.vertex_colors[:, :3] / 255.0) for m in (a, b))
    unclipped = ca < 0.45
    assert unclipped.mean() > 0.3  # most colours are compared, not clipped away
    np.testing.assert_allclose(cb[unclipped], 2 * ca[unclipped], atol=0.02)


def test_config_hash_ignores_presentation_fields():
    """Latents stay valid when only how meshes are coloured (baked_shading, added after the shipped v3
    latents were made) or how the field reads the planes (plane_filter) changes; any field that decides
    the triplanes changes the identity."""
    from types import SimpleNamespace

    from triflow3d.data.latents import config_hash

    def ident(**kw) -> str:
        return config_hash(SimpleNamespace(config=tiny_config(**kw)))

    assert ident(baked_shading=1.0) == ident(baked_shading=0.5)
    assert ident(plane_filter=0.25) == ident(plane_filter=0.0)  # reads the planes, does not make them
    assert ReconstructorConfig.from_dict(tiny_config(plane_filter=0.25).to_dict()).plane_filter == 0.25
    with pytest.raises(ConfigError, match="plane_filter"):
        tiny_config(plane_filter=0.25, kind="mesh")
    with pytest.raises(ConfigError, match="plane_filter"):
        tiny_config(plane_filter=0.3)
    assert ident(triplane_dim=8) != ident(triplane_dim=4)
    assert ident(input_alpha=True) != ident(input_alpha=False)


def test_rgb_skip_starts_as_a_no_op_folds_and_grows_a_trained_model():
    """The decoder's linear rgb route is zero at the start (a model grown with it computes what the model
    without it did), reaches only the colour logits, and folds through the planes like the first Linear."""
    from triflow3d.triplane.decoder import NerfDecoder

    plain = build_reconstructor(tiny_config(), seed=2).eval()
    grown = build_reconstructor(tiny_config(rgb_skip=True), seed=2).eval()
    missing = grown.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["synthesizer.decoder.rgb_skip.bias", "synthesizer.decoder.rgb_skip.weight"]
    planes = torch.randn(2, *plain.triplane_shape, generator=torch.Generator().manual_seed(1))
    pts = torch.rand(2, 300, 3) * 2 - 1
    with torch.no_grad():
        a, b = plain.query(planes, pts), grown.query(planes, pts)
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["sigma"], b["sigma"])
        dec = NerfDecoder(6, hidden=4, rgb_skip=True)
        dec.rgb_skip.weight.normal_()
        dec.rgb_skip.bias.normal_()
        feats = torch.randn(5, 18)
        plain_dec = NerfDecoder(6, hidden=4)
        plain_dec.net.load_state_dict(dec.net.state_dict())
        delta = dec(feats) - plain_dec(feats)
        assert torch.equal(delta[:, 0], torch.zeros(5)) and delta[:, 1:].abs().min() > 0  # colour only
        p6 = torch.randn(1, 3, 6, 5, 5)
        from triflow3d.triplane.sampling import sample_planes, triplane_features

        xyz = torch.rand(1, 40, 3) * 2 - 1
        folded = dec.forward_folded(sample_planes(dec.fold_planes(p6), xyz))
        torch.testing.assert_close(folded, dec(triplane_features(p6, xyz)), rtol=1e-4, atol=1e-5)
    assert grown.config.identity_dict() != plain.config.identity_dict()
    with pytest.raises(ConfigError, match="rgb_skip"):
        tiny_config(rgb_skip=True, kind="mesh")
    assert ReconstructorConfig.from_dict(grown.config.to_dict()).rgb_skip


def test_colour_planes_hold_the_column_colour_and_drive_the_decoder():
    """With colour_planes the lift writes each column's hull-weighted view colour (a logit) after the learned
    channels, and the decoder's rgb route starts as their mean over the planes: an object of one colour
    comes back in that colour before any training (the route cannot lose a colour axis)."""
    from triflow3d.cameras import zero123pp_rig
    from triflow3d.encoders.lift import column_colour

    # column_colour: a column inside the hull returns its colour's logit, one outside it grey (0)
    rgb = torch.tensor([0.8, 0.3, 0.1]).view(1, 1, 3, 1, 1, 1).expand(1, 3, 3, 2, 2, 5)
    hull = torch.zeros(1, 3, 2, 2, 5)
    hull[..., 0, 0, 1:4] = 1.0
    code = column_colour(rgb, hull)  # (1, 3, 3, 2, 2)
    assert code.shape == (1, 3, 3, 2, 2) and torch.equal(code[..., 1, 1], torch.zeros(1, 3, 3))
    want = torch.logit((3 * torch.tensor([0.8, 0.3, 0.1]) + 0.05) / 3.1)
    torch.testing.assert_close(code[0, :, :, 0, 0], want.expand(3, 3))

    cfg = tiny_config(colour_planes=True, triplane_dim=11, plane_lift_depth=8, image_size=64)
    assert cfg.learned_dim == 8 and cfg.triplane_shape[1] == 11
    model = build_reconstructor(cfg, seed=5).eval()
    with torch.no_grad():  # the MLP's own colour off: what remains is the colour route's start
        model.synthesizer.decoder.net[-1].weight[1:] = 0.0
    rig = zero123pp_rig()
    cams = rig.input_cameras()[None]  # (1, 6, 16)
    images = torch.ones(1, 6, 4, 64, 64)
    images[:, :, :3] = torch.tensor([0.2, 0.7, 0.3]).view(3, 1, 1)  # a green object filling every view
    with torch.no_grad():
        planes = model.forward_planes(images, cams)
        centre = model.query(planes, torch.zeros(1, 1, 3))["rgb"][0, 0]
    assert planes.shape == (1, 3, 11, 8, 8)
    torch.testing.assert_close(centre, torch.tensor([0.2, 0.7, 0.3]), atol=0.01, rtol=0)
    with pytest.raises(ConfigError, match="colour_planes"):
        tiny_config(colour_planes=True, triplane_dim=11, plane_lift_depth=0)
    with pytest.raises(ConfigError, match="colour_planes"):
        tiny_config(colour_planes=True, triplane_dim=11, input_alpha=False)
    assert ReconstructorConfig.from_dict(cfg.to_dict()) == cfg


def test_colour_planes_grow_a_trained_model_keeping_its_density():
    """recon train --init grows a model without colour planes: same learned channels and density, the MLP's
    colour replaced by the colour route (decoder_state_with_colour)."""
    from triflow3d.cameras import zero123pp_rig
    from triflow3d.recon.train import DECODER_PREFIX, decoder_state_with_colour, grown_state
    from triflow3d.triplane.decoder import rgb_from_raw
    from triflow3d.triplane.sampling import sample_planes

    plain = build_reconstructor(tiny_config(plane_lift_depth=4), seed=6).eval()
    grown = build_reconstructor(
        tiny_config(plane_lift_depth=4, colour_planes=True, triplane_dim=11), seed=7
    ).eval()
    grown.load_state_dict(grown_state(plain, grown), strict=False)
    with torch.no_grad():  # a trained-looking lift (its last layer starts at zero)
        for m in (plain, grown):
            g = torch.Generator().manual_seed(0)
            torch.nn.init.normal_(m.plane_lift.context[-1].weight, std=0.1, generator=g)
    images, cams = torch.rand(1, 6, 4, 64, 64), zero123pp_rig().input_cameras()[None]
    pts = torch.rand(1, 500, 3) * 1.6 - 0.8
    with torch.no_grad():
        a, b = plain.forward_planes(images, cams), grown.forward_planes(images, cams)
        assert torch.equal(a, b[:, :, :8])
        qa, qb = plain.query(a, pts), grown.query(b, pts)
        torch.testing.assert_close(qa["sigma_raw"], qb["sigma_raw"], rtol=1e-5, atol=1e-5)
        mean_logit = sample_planes(b[:, :, 8:], pts).mean(1)  # (1, P, 3): the colour route's start
        torch.testing.assert_close(qb["rgb"], rgb_from_raw(mean_logit), rtol=1e-4, atol=1e-4)
    state = decoder_state_with_colour(plain.state_dict(), DECODER_PREFIX, 8)
    assert state[DECODER_PREFIX + "net.0.weight"].shape == (64, 33)
