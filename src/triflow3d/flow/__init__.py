"""Rectified flow: the interpolation path and loss (``path``) and the samplers (``sampling``)."""

from triflow3d.flow.path import (
    OUTPUTS,
    eps_from_velocity,
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
from triflow3d.flow.sampling import concat_cond, denoise, get_noise, get_schedule, guided_velocity

__all__ = [
    "OUTPUTS",
    "concat_cond",
    "denoise",
    "eps_from_velocity",
    "get_noise",
    "get_schedule",
    "guided_velocity",
    "interpolate",
    "loss_by_t_bin",
    "rf_loss",
    "sample_t",
    "skip_coefficient",
    "time_shift",
    "velocity_from_output",
    "velocity_target",
    "x0_from_velocity",
]
