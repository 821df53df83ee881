"""Optimiser pieces of a TriFlow run: the learning-rate schedule, its batch scaling, parameter groups, EMA."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from triflow3d.train.config import TrainConfig


def peak_lr(cfg: TrainConfig) -> tuple[float, float]:
    """(lr, min_lr) of the run: as given, or scaled from ``lr_reference_batch`` by the square-root rule.

    Adam-type optimisers keep the same training dynamics when the batch grows by k if the learning rate
    grows by sqrt(k) (Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient
    algorithms"; the linear rule of SGD overshoots with Adam). So a recipe tuned at batch 32 with lr 6e-4
    runs at batch 512 with ``--lr 6e-4 --lr-reference-batch 32``: lr 2.4e-3. Warm-up steps are not scaled.
    """
    if not cfg.lr_reference_batch:
        return cfg.lr, cfg.min_lr
    k = math.sqrt(cfg.batch_size / cfg.lr_reference_batch)
    return cfg.lr * k, cfg.min_lr * k


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then constant or cosine to ``min_lr`` (a pure function of the step)."""
    lr, min_lr = peak_lr(cfg)
    if step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on tensors with ndim >= 2 only (nanoGPT): biases and norm gains are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)


@torch.no_grad()
def update_ema_unless(ema: nn.Module, model: nn.Module, decay: float, skip: Tensor) -> None:
    """``update_ema`` that leaves the EMA as it is where ``skip`` (a 0-d float tensor, 1 = skip) is set,
    decided on the device: e += (1 - decay)(1 - skip)(p - e), with no host synchronisation."""
    ema_params = list(ema.parameters())
    diffs = torch._foreach_sub([p.detach() for p in model.parameters()], ema_params)
    torch._foreach_mul_(diffs, (1.0 - skip) * (1.0 - decay))
    torch._foreach_add_(ema_params, diffs)


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the EMA decay, min(decay, (1 + n) / (10 + n)), so short runs get a useful average."""
    return min(decay, (1 + step) / (10 + step))
