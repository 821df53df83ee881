"""TriFlow model: shapes for every preset, adaLN-Zero at init, symmetries it must (not) have, text
conditioning, the plain-DiT baseline, params validation, and a one-batch overfit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from triflow3d.errors import ConfigError
from triflow3d.flow import interpolate, rf_loss, skip_coefficient, velocity_target, x0_from_velocity
from triflow3d.models import MODELS, TRIFLOW_PRESETS, TriFlow, TriFlowParams, count_params
from triflow3d.models.blocks import DiTBlock, FuseBlock, MMDiTBlock
from triflow3d.models.triflow import add_out_conv, grow_plane_channels, identity_conv

TINY = TRIFLOW_PRESETS["tiny"]


def inputs(p: TriFlowParams, b: int = 2, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, p.plane_channels, p.plane_res, p.plane_res, generator=g)
    tok = torch.randn(b, length, p.text_dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[-1, length // 2 :] = False  # the last prompt is shorter
    return x, torch.rand(b, generator=g), tok, tok.mean(1), mask


def perturbed(p: TriFlowParams, seed: int = 1) -> TriFlow:
    """A model whose zero-initialised parts are no longer zero (as after some training)."""
    model = TriFlow(p)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            w.add_(0.05 * torch.randn(w.shape, generator=g))
    return model


@pytest.mark.parametrize("name", list(TRIFLOW_PRESETS))
def test_output_shape_every_preset(name):
    p = TRIFLOW_PRESETS[name]
    device = "cpu" if name in ("tiny", "tiny-dit", "small") else "meta"
    with torch.device(device):
        model = TriFlow(p)
        x, t, tok, pooled, mask = (a.to(device) for a in inputs(p, b=1))
        with torch.no_grad():
            v = model(x, t, tok, pooled, mask)
    assert v.shape == x.shape and v.device.type == device
    print(f"\n{name:>10}: {count_params(model) / 1e6:8.2f} M params, {p.num_triplane_tokens} triplane tokens")


def test_param_counts_match_docs_order_of_magnitude():
    with torch.device("meta"):
        paper, small = TriFlow(TRIFLOW_PRESETS["paper"]), TriFlow(TRIFLOW_PRESETS["small"])
    assert 300e6 < count_params(paper) < 400e6  # research/paper.md s5.3 estimate: ~0.34 B
    assert 5e6 < count_params(small) < 20e6


def test_zero_output_and_identity_blocks_at_init():
    model = TriFlow(TINY)
    seen = []

    def check(module, args, out):
        if isinstance(module, MMDiTBlock):
            assert all(torch.equal(out[k], args[0][k]) for k in out)
        else:
            assert torch.equal(out, args[0])
        seen.append(type(module).__name__)

    for m in model.modules():
        if isinstance(m, (FuseBlock, MMDiTBlock, DiTBlock)):
            m.register_forward_hook(check)
    v = model(*inputs(TINY))
    assert torch.equal(v, torch.zeros_like(v))
    assert seen.count("FuseBlock") == 6 and seen.count("MMDiTBlock") == 1 and seen.count("DiTBlock") == 2


@pytest.mark.parametrize("output", ["skip", "x0"])
def test_output_parametrisations_turn_the_network_output_into_a_velocity(output):
    """Same weights, three readings of the final Linear: velocity (as is), skip (+ c(t) x_t), x0 (the clean
    triplane: v = (x_t - out) / t). At init (zero output) skip predicts c(t) x_t and x0 predicts x_t / t."""
    p = replace(TINY, output=output)
    x, _, tok, pooled, mask = inputs(p)
    t = torch.tensor([1.0, 0.25])
    tb = t[:, None, None, None, None]
    at_init = TriFlow(p)(x, t, tok, pooled, mask)
    assert torch.allclose(at_init, skip_coefficient(tb) * x if output == "skip" else x / tb)
    plain, model = perturbed(TINY), TriFlow(p)
    model.load_state_dict(plain.state_dict())
    with torch.no_grad():
        net, v = plain(x, t, tok, pooled, mask), model(x, t, tok, pooled, mask)
    assert torch.allclose(
        v, net + skip_coefficient(tb) * x if output == "skip" else (x - net) / tb, atol=1e-6
    )
    if output == "x0":  # the clean estimate x_t - t v is the network's output, exactly what it predicts
        assert torch.allclose(x0_from_velocity(x, v, t), net, atol=1e-5)


def test_out_conv_starts_as_the_identity_and_mixes_neighbouring_patches():
    plain = perturbed(TINY)
    conv = TriFlow(replace(TINY, out_conv=True))
    assert torch.equal(
        conv.out_conv.weight, identity_conv(TINY.plane_channels)["out_conv.weight"]
    )  # own init
    conv.load_state_dict({**plain.state_dict(), **identity_conv(TINY.plane_channels)})
    x, t, tok, pooled, mask = inputs(TINY)
    with torch.no_grad():
        assert torch.allclose(conv(x, t, tok, pooled, mask), plain(x, t, tok, pooled, mask), atol=1e-6)
        params, state = add_out_conv(plain.state_dict(), TINY)
        assert params.out_conv and torch.equal(state["out_conv.weight"], conv.state_dict()["out_conv.weight"])
        conv.out_conv.weight[:, :, 1, 2] = 0.5  # a kernel reaching the right neighbour
        moved = conv(x, t, tok, pooled, mask) - plain(x, t, tok, pooled, mask)
    p = TINY.patch
    assert moved[..., p - 1].abs().sum() > 0  # the last column of a patch now reads its neighbour's first
    with pytest.raises(ConfigError, match="already has"):
        add_out_conv(state, params)
    with pytest.raises(ConfigError, match="output convolution"):
        grow_plane_channels(state, params, TINY.plane_channels + 3)


def test_no_plane_symmetry():
    model = perturbed(TINY)
    x, t, tok, pooled, mask = inputs(TINY)
    with torch.no_grad():
        v = model(x, t, tok, pooled, mask)
        v_swap = model(x[:, [1, 0, 2]], t, tok, pooled, mask)
        v_flip = model(x.flip(-1), t, tok, pooled, mask)
    assert not torch.allclose(v_swap, v[:, [1, 0, 2]], atol=1e-3)  # planes are told apart (plane id)
    assert not torch.allclose(v_flip, v.flip(-1), atol=1e-3)  # and so are positions within a plane


def test_latent_tokens_are_a_set():
    """Learned latent tokens carry no order: permuting them is a relabelling and leaves v unchanged.
    (Each latent is already a distinct learned vector, so a position code on them would add nothing.)"""
    model = perturbed(TINY)
    args = inputs(TINY)
    with torch.no_grad():
        v = model(*args)
        model.latents.copy_(model.latents.flip(0))
        v_perm = model(*args)
        model.latents.copy_(torch.randn_like(model.latents))
        v_other = model(*args)
    assert torch.allclose(v, v_perm, atol=1e-5)
    assert not torch.allclose(v, v_other, atol=1e-3)  # but their values matter


@pytest.mark.parametrize("arch", ["multistream", "dit"])
def test_text_conditions_output_and_padding_is_masked(arch):
    p = replace(TINY, arch=arch)
    model = perturbed(p)
    x, t, tok, pooled, mask = inputs(p)
    with torch.no_grad():
        v = model(x, t, tok, pooled, mask)
        v_other = model(x, t, torch.randn_like(tok), pooled, mask)
        tok_pad = tok.clone()
        tok_pad[~mask] = 1e3  # junk in padded slots changes nothing
        v_pad = model(x, t, tok_pad, pooled, mask)
        v_pool = model(x, t, tok, pooled + 1.0, mask)
    assert not torch.allclose(v, v_other, atol=1e-3)
    assert not torch.allclose(v, v_pool, atol=1e-3)
    assert torch.allclose(v, v_pad, atol=1e-4)


def test_dit_baseline_runs_and_trains():
    p = TRIFLOW_PRESETS["tiny-dit"]
    model = TriFlow(p)
    assert p.joint_streams == ("triplane", "text") and not hasattr(model, "latents")
    v = model(*inputs(p))
    assert v.shape == (2, 3, 8, 16, 16) and torch.equal(v, torch.zeros_like(v))
    v.pow(2).sum().add(model(*inputs(p, seed=1)).sum()).backward()
    assert model.final.linear.weight.grad.abs().sum() > 0
    assert count_params(model) < count_params(TriFlow(TINY))  # no latent stream, no fuse blocks


def test_bf16_autocast_forward():
    model = perturbed(TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = model(*inputs(TINY))
    assert v.shape == (2, 3, 8, 16, 16) and torch.isfinite(v).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"hidden": 66, "heads": 4}, "66 is not divisible by heads 4"),
        ({"plane_res": 18, "patch": 4}, "plane_res 18 is not divisible by patch 4"),
        ({"arch": "unet"}, "unet"),
        ({"num_latents": 0}, "num_latents >= 1, got 0"),
        ({"hidden": 30, "heads": 6}, "hidden 30 must be divisible by 4"),
    ],
)
def test_params_validation_names_numbers(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        replace(TINY, **kwargs)


def test_bad_input_shapes_are_reported():
    model = TriFlow(TINY)
    x, t, tok, pooled, mask = inputs(TINY)
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 16, 16\)"):
        model(x[:, :, :4], t, tok, pooled, mask)
    with pytest.raises(ValueError, match="text_mask"):
        model(x, t, tok, pooled, mask.float())
    assert MODELS["triflow"] is TriFlow


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    p = replace(TINY, plane_channels=2)  # patch dim 32 <= width 64, so one batch can be memorised fast
    model = TriFlow(p)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 2, 16, 16, generator=g)
    eps, t = torch.randn(x0.shape, generator=g), torch.rand(2, generator=g)
    tok = torch.randn(2, 3, p.text_dim, generator=g)
    x_t, v = interpolate(x0, eps, t), velocity_target(x0, eps)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is fastest and fair to a shared machine
    try:
        for _ in range(45):
            loss = rf_loss(model(x_t, t, tok, tok.mean(1)), v)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < losses[0] / 10, losses[::10]


def test_sampling_with_cfg_is_per_seed_deterministic():
    from triflow3d.flow import denoise, get_noise, get_schedule
    from triflow3d.models import FakeTextEncoder

    model = perturbed(TINY).eval()
    enc = FakeTextEncoder(dim=TINY.text_dim)
    shape = (3, TINY.plane_channels, TINY.plane_res, TINY.plane_res)
    sched = get_schedule(3, shift=2.0)

    def sample(prompts, seeds):
        cond, uncond = enc(prompts).as_kwargs(), enc([""] * len(prompts)).as_kwargs()
        with torch.no_grad():
            return denoise(model, get_noise(seeds, shape), sched, 4.0, cond, uncond)

    both = sample(["a red chair", "a tall green tree in a pot"], [1, 2])
    alone = sample(["a tall green tree in a pot"], [2])
    assert both.shape == (2, *shape) and torch.isfinite(both).all()
    assert torch.allclose(both[1], alone[0], atol=1e-4)
