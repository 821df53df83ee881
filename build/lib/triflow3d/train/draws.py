"""The random numbers of a training step: t, the CFG dropout coin and the noise eps of each sample.

Two ways, each a pure function of (seed, step[, position]) so that resuming replays them exactly:

- ``draw`` (the loader loop, the CPU default): one CPU generator per sample, seeded by (seed, step, its
  position in the global batch), so one process and G processes draw the same numbers;
- ``draw_on_device`` (the device-resident loop): one generator on the training device per step, seeded by
  (seed, step), drawing the whole global batch in three calls; each rank keeps its positions. Different
  numbers from ``draw`` (another generator), same distribution; no per-sample host work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from triflow3d.flow.path import sample_t
from triflow3d.train.config import TrainConfig
from triflow3d.utils.seeds import mix_seed


@dataclass
class Draws:
    t: Tensor  # (B,)
    eps: Tensor  # (B, 3, C, R, R)
    drop: Tensor  # (B,) bool: caption replaced by ""
    generators: list[torch.Generator]  # per sample, for the perceptual view / crop choice


def draw(cfg: TrainConfig, step: int, positions: list[int], shape: tuple[int, ...]) -> Draws:
    """t, CFG coin and eps of each sample from a generator seeded by (seed, step, global position)."""
    gens = [torch.Generator().manual_seed(mix_seed(cfg.seed, step, p)) for p in positions]
    t = torch.cat([sample_t(1, cfg.t_distribution, cfg.t_mean, cfg.t_std, generator=g) for g in gens])
    drop = torch.cat([torch.rand(1, generator=g) < cfg.cfg_dropout for g in gens])
    eps = torch.stack([torch.randn(shape, generator=g) for g in gens])
    return Draws(t, eps, drop, gens)


def draw_on_device(
    cfg: TrainConfig, step: int, batch: int, shape: tuple[int, ...], generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """t (B,), drop (B,) bool and eps (B, *shape) of a whole global batch of ``batch`` samples, drawn on
    ``generator``'s device after reseeding it with (seed, step)."""
    generator.manual_seed(mix_seed(cfg.seed, step, -3))
    dev = generator.device
    t = sample_t(batch, cfg.t_distribution, cfg.t_mean, cfg.t_std, generator=generator, device=dev)
    drop = torch.rand(batch, generator=generator, device=dev) < cfg.cfg_dropout
    eps = torch.randn((batch, *shape), generator=generator, device=dev)
    return t, drop, eps
