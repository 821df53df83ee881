"""Sampling: seeded noise, the time schedule, and Euler / Heun loops with classifier-free guidance.

Small pure functions with the loop in plain sight (flux ``sampling.py``). Time runs from t = 1 (noise) to
t = 0 (data); a step is x <- x + (t_next - t) v. The ODE state is kept in fp32 whatever the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from triflow3d.errors import ConfigError
from triflow3d.flow.path import time_shift

ModelFn = Callable[..., Tensor]  # model_fn(x (B, ...), t (B,), **cond) -> v (B, ...)
Cond = dict[str, Tensor | None]
METHODS = ("euler", "heun")


def get_noise(
    seeds: Sequence[int],
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(len(seeds), *shape) standard normal noise; sample i comes from its own CPU generator seeded with
    seeds[i], so a seed gives the same noise on every device and at every batch position."""
    rows = [torch.randn(*shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


def get_schedule(steps: int, shift: float = 1.0) -> list[float]:
    """``steps + 1`` times from 1.0 down to 0.0, uniform in t then SD3-shifted (shift > 1: more time at
    high noise)."""
    if steps < 1:
        raise ConfigError(f"sampling steps must be >= 1, got {steps}")
    return [float(time_shift(1.0 - i / steps, shift)) for i in range(steps + 1)]


def _pad_dim1(x: Tensor, length: int) -> Tensor:
    """Zero / False pad dim 1 of x (B, L, ...) to ``length``."""
    pad = [0, 0] * (x.ndim - 2) + [0, length - x.shape[1]]
    return F.pad(x, pad) if x.dtype != torch.bool else F.pad(x.to(torch.uint8), pad).bool()


def concat_cond(cond: Cond, uncond: Cond) -> Cond:
    """Stack two condition dicts on the batch axis; sequence tensors of different lengths are padded on
    dim 1 (zeros, False for masks), so pass text masks whenever lengths can differ."""
    if cond.keys() != uncond.keys():
        raise ConfigError(f"cond keys {sorted(cond)} differ from uncond keys {sorted(uncond)}")
    out: Cond = {}
    for k in cond:
        a, b = cond[k], uncond[k]
        if a is None or b is None:
            if a is not None or b is not None:
                raise ConfigError(f"condition {k!r} is None in only one of cond / uncond")
            out[k] = None
            continue
        if a.ndim >= 2 and a.shape[1] != b.shape[1]:
            n = max(a.shape[1], b.shape[1])
            a, b = _pad_dim1(a, n), _pad_dim1(b, n)
        out[k] = torch.cat([a, b], dim=0)
    return out


def guided_velocity(
    model_fn: ModelFn, x: Tensor, t: float, cond: Cond, uncond: Cond | None, cfg_scale: float
) -> Tensor:
    """v = v_u + s (v_c - v_u), cond and uncond in one batched forward; a plain forward when s == 1 or
    there is no uncond. Returns fp32."""
    b = x.shape[0]
    if uncond is None or cfg_scale == 1.0:
        tt = torch.full((b,), t, device=x.device, dtype=torch.float32)
        return model_fn(x, tt, **cond).float()
    tt = torch.full((2 * b,), t, device=x.device, dtype=torch.float32)
    v_c, v_u = model_fn(torch.cat([x, x]), tt, **concat_cond(cond, uncond)).float().chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


def denoise(
    model_fn: ModelFn,
    x: Tensor,
    schedule: Sequence[float],
    cfg_scale: float = 1.0,
    cond: Cond | None = None,
    uncond: Cond | None = None,
    method: str = "euler",
) -> Tensor:
    """Integrate dx/dt = v from schedule[0] (noise x) to schedule[-1] (data) -> x0 (fp32).

    ``euler``: one model call per step. ``heun``: predictor-corrector, two calls per step, second order,
    except the final step onto t = 0, which is an Euler step as in EDM (the field can be singular at 0).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown sampler {method!r}; expected one of {METHODS}")
    cond = cond or {}
    x = x.float()
    for t_cur, t_next in zip(schedule[:-1], schedule[1:]):
        dt = t_next - t_cur  # negative: time runs towards the data
        v = guided_velocity(model_fn, x, t_cur, cond, uncond, cfg_scale)
        if (
            method == "heun" and t_next > 0
        ):  # the last step to t = 0 stays Euler (EDM), the field may be singular there
            v_next = guided_velocity(model_fn, x + dt * v, t_next, cond, uncond, cfg_scale)
            v = 0.5 * (v + v_next)
        x = x + dt * v
    return x
