"""Rectified-flow maths and samplers: conventions, exact toy fields, schedules, seeded noise, weighted loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from triflow3d.errors import ConfigError
from triflow3d.flow import (
    concat_cond,
    denoise,
    eps_from_velocity,
    get_noise,
    get_schedule,
    guided_velocity,
    interpolate,
    loss_by_t_bin,
    rf_loss,
    sample_t,
    skip_coefficient,
    time_shift,
    velocity_from_output,
    velocity_target,
    x0_from_velocity,
)


def test_interpolate_velocity_x0_consistent():
    x0, eps = torch.randn(4, 3, 2, 5, 5), torch.randn(4, 3, 2, 5, 5)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    x_t, v = interpolate(x0, eps, t), velocity_target(x0, eps)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[3], eps[3])  # t = 0 data, t = 1 noise
    assert torch.allclose(x0_from_velocity(x_t, v, t), x0, atol=1e-6)
    assert torch.allclose(eps_from_velocity(x_t, v, t), eps, atol=1e-6)
    h = 1e-3  # v is the time derivative of the path
    fd = (interpolate(x0, eps, t.clamp(max=1 - h) + h) - interpolate(x0, eps, t.clamp(max=1 - h))) / h
    assert torch.allclose(fd, v, atol=1e-3)


def point_mass_field(c: torch.Tensor):
    """Exact marginal velocity when the data is the single point c: v = (x - c) / t."""
    return lambda x, t, **_: (x - c) / t.view(-1, *[1] * (x.ndim - 1))


def gaussian_field(mu: float, s: float):
    """Exact marginal velocity E[eps - x0 | x_t] for data N(mu, s^2 I)."""

    def fn(x, t, **_):
        t = t.view(-1, *[1] * (x.ndim - 1))
        var = (1 - t) ** 2 * s**2 + t**2
        r = x - (1 - t) * mu
        return t / var * r - (mu + (1 - t) * s**2 / var * r)

    return fn


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_recovers_point_mass(method):
    c = torch.randn(2, 3, 4, 4)
    x0 = denoise(point_mass_field(c), get_noise([1, 2], (3, 4, 4)), get_schedule(7, shift=3.0), method=method)
    assert torch.allclose(x0, c, atol=1e-5)


def test_euler_on_gaussian_maps_noise_to_data_quantile():
    mu, s = 0.5, 0.3
    z = get_noise([0, 1, 2], (64,))
    x0 = denoise(gaussian_field(mu, s), z, get_schedule(400))
    assert torch.allclose(x0, mu + s * z, atol=5e-3)  # the exact ODE map is z -> mu + s z


def test_heun_beats_euler_on_curved_field():
    mu, s = 1.0, 0.5  # s != 1: curved trajectories x_t = (1 - t) mu + sigma_t z
    z = get_noise([3], (256,))
    target = mu + s * z

    def err(method, steps):
        return (denoise(gaussian_field(mu, s), z, get_schedule(steps), method=method) - target).abs().max()

    assert err("heun", 8) < 0.25 * err("euler", 8)
    assert err("heun", 8) / err("heun", 16) > 3.0  # second order: halving the step cuts the error ~4x
    assert err("euler", 8) / err("euler", 16) < 2.5  # first order: ~2x


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_schedule_monotone_from_one_to_zero(shift):
    sched = get_schedule(10, shift)
    assert len(sched) == 11 and sched[0] == 1.0 and sched[-1] == 0.0
    assert all(a > b for a, b in zip(sched, sched[1:]))
    if shift > 1:  # more steps at high noise
        assert all(a >= b for a, b in zip(sched, get_schedule(10)))
    with pytest.raises(ConfigError, match="0"):
        get_schedule(0)


def test_time_shift_fixes_endpoints():
    assert time_shift(0.0, 3.0) == 0.0 and time_shift(1.0, 3.0) == 1.0
    assert math.isclose(time_shift(0.5, 3.0), 0.75)


def test_same_seed_same_noise_regardless_of_batch():
    a = get_noise([7, 11, 13], (3, 2, 4, 4))
    assert a.shape == (3, 3, 2, 4, 4)
    assert torch.equal(a[1], get_noise([11], (3, 2, 4, 4))[0])
    assert torch.equal(a[1], get_noise([5, 6, 11], (3, 2, 4, 4))[2])
    assert not torch.equal(a[0], a[1])
    assert get_noise([1], (2,), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_weighted_loss_plain_mse_and_zero_weight():
    v_hat, v = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    mse = F.mse_loss(v_hat, v)
    assert torch.allclose(rf_loss(v_hat, v), mse)
    assert torch.allclose(rf_loss(v_hat, v, torch.ones(3, 8, 8)), mse)
    assert torch.allclose(rf_loss(v_hat, v, torch.full((2, 3, 1, 8, 8), 0.3)), mse)
    w = torch.ones(3, 8, 8)
    w[1] = 0.0  # plane 1 ignored
    w[0, :4] = 0.0  # top half of plane 0 ignored
    changed = v_hat.clone()
    changed[:, 1] += 10.0
    changed[:, 0, :, :4] -= 5.0
    assert torch.allclose(rf_loss(changed, v, w), rf_loss(v_hat, v, w))
    keep = w[None, :, None].expand_as(v).bool()
    assert torch.allclose(rf_loss(v_hat, v, w), F.mse_loss(v_hat[keep], v[keep]))


def test_per_sample_loss_and_t_bins():
    v_hat, v = (
        torch.zeros(3, 3, 1, 2, 2),
        torch.ones(3, 3, 1, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1, 1),
    )
    per = rf_loss(v_hat, v, reduction="none")
    assert torch.allclose(per, torch.tensor([1.0, 4.0, 9.0]))
    bins = loss_by_t_bin(per, torch.tensor([0.1, 0.15, 0.9]), bins=4)
    assert bins == {"t0.00-0.25": 2.5, "t0.75-1.00": 9.0}


def test_sample_t_distributions():
    g = torch.Generator().manual_seed(0)
    t = sample_t(20000, "logit_normal", generator=g)
    assert 0 < t.min() and t.max() < 1 and abs(t.mean() - 0.5) < 0.01
    assert sample_t(20000, "logit_normal", mean=1.0, generator=g).mean() > 0.6
    u = sample_t(20000, "uniform", generator=g)
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    with pytest.raises(ConfigError, match="gamma"):
        sample_t(4, "gamma")


def test_cfg_is_one_batched_forward():
    calls = []

    def model_fn(x, t, c):
        calls.append(x.shape[0])
        return x * 0 + c.view(-1, 1)

    x = torch.zeros(2, 3)
    v = guided_velocity(
        model_fn, x, 0.5, {"c": torch.tensor([1.0, 2.0])}, {"c": torch.tensor([0.5, 0.5])}, 3.0
    )
    assert calls == [4]
    assert torch.allclose(v, torch.tensor([[2.0] * 3, [5.0] * 3]))  # 0.5 + 3 (c - 0.5)
    guided_velocity(model_fn, x, 0.5, {"c": torch.tensor([1.0, 2.0])}, None, 3.0)
    assert calls[-1] == 2
    denoise(model_fn, x, get_schedule(3), 2.0, {"c": torch.ones(2)}, {"c": torch.zeros(2)}, method="heun")
    assert calls[2:] == [4] * 5  # 2 + 2 + 1: the last Heun step onto t = 0 is Euler


def test_concat_cond_pads_text_lengths():
    cond = {"tok": torch.ones(2, 5, 3), "mask": torch.ones(2, 5, dtype=torch.bool), "none": None}
    uncond = {"tok": torch.ones(2, 2, 3), "mask": torch.ones(2, 2, dtype=torch.bool), "none": None}
    out = concat_cond(cond, uncond)
    assert out["tok"].shape == (4, 5, 3) and out["none"] is None
    assert out["mask"].dtype == torch.bool and out["mask"].sum(1).tolist() == [5, 5, 2, 2]
    assert out["tok"][2:, 2:].abs().sum() == 0
    with pytest.raises(ConfigError, match="uncond"):
        concat_cond({"a": torch.ones(1)}, {"b": torch.ones(1)})


def test_skip_coefficient_is_the_least_squares_coefficient_of_v_on_x_t():
    """c(t) minimises E|v - c x_t|^2 for independent unit-variance x0, eps; c(0) = -1, c(1/2) = 0, c(1) = 1."""
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    assert torch.allclose(skip_coefficient(t)[[0, 2, 4]], torch.tensor([-1.0, 0.0, 1.0]))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 200_000, generator=g), torch.randn(5, 200_000, generator=g)
    x_t, v = interpolate(x0, eps, t), velocity_target(x0, eps)
    fit = (v * x_t).sum(1) / x_t.square().sum(1)  # (5,) least-squares slope per t
    assert torch.allclose(fit, skip_coefficient(t), atol=0.01)
    residual = v - skip_coefficient(t)[:, None] * x_t
    # at pure noise the rest of v is -x0: nothing to copy
    assert torch.allclose(residual[-1], -x0[-1], atol=1e-6)
    assert torch.allclose(velocity_from_output(residual, x_t, t, "skip"), v, atol=1e-5)
    assert torch.allclose(velocity_from_output(x0, x_t, t, "x0")[1:], v[1:], atol=1e-4)
    with pytest.raises(ConfigError, match="unknown model output"):
        velocity_from_output(x0, x_t, t, "eps")
