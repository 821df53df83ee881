"""Which objects each step trains on: a pure function of (seed, step), split over ranks and micro-batches.

``BatchPlan`` gives the global batch of a step; ``RankBatches`` cuts it into this rank's ``grad_accum``
micro-batches (a DataLoader batch sampler). Resuming, or changing the world size, never changes which
objects a step sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import torch

from triflow3d.utils.seeds import mix_seed


def category(row: dict) -> str:
    return str((row.get("attributes") or {}).get("category", ""))


class BatchPlan:
    """The global batch of every step as a pure function of (seed, step).

    Uniform: one seeded permutation per epoch, read in order (sample p of the run is perm_{p // n}[p % n]).
    Balanced: each step draws ``batch_size`` objects with replacement, p(object) = 1 / (K * n_category).
    """

    def __init__(self, rows: list[dict], batch_size: int, seed: int, balanced: bool):
        self.n, self.batch_size, self.seed, self.balanced = len(rows), batch_size, seed, balanced
        cats = [category(r) for r in rows]
        counts = {c: cats.count(c) for c in set(cats)}
        self.weights = torch.tensor([1.0 / (len(counts) * counts[c]) for c in cats], dtype=torch.float64)

    @lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs, freed with the plan
    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, -1))
        return torch.randperm(self.n, generator=g).tolist()

    def global_batch(self, step: int) -> list[int]:
        if self.balanced:
            g = torch.Generator().manual_seed(mix_seed(self.seed, step, -2))
            return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g).tolist()
        start = step * self.batch_size
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + self.batch_size)]

    def state(self, step: int) -> dict[str, Any]:
        return {"kind": "balanced" if self.balanced else "epochs", "seed": self.seed, "n": self.n,
                "samples_seen": step * self.batch_size, "epoch": step * self.batch_size // max(self.n, 1)}  # fmt: skip


class RankBatches:
    """A batch sampler: this rank's micro-batches (index lists) for steps ``start`` .. ``steps`` - 1."""

    def __init__(self, plan: BatchPlan, start: int, steps: int, rank: int, world: int, accum: int):
        self.plan, self.start, self.steps, self.rank, self.world, self.accum = (
            plan,
            start,
            steps,
            rank,
            world,
            accum,
        )
        self.micro = plan.batch_size // (world * accum)

    def positions(self, micro_index: int) -> list[int]:
        """Positions in the global batch of this rank's micro-batch ``micro_index``."""
        first = (self.rank * self.accum + micro_index) * self.micro
        return list(range(first, first + self.micro))

    def step_indices(self, step: int) -> list[list[int]]:
        """This rank's ``accum`` micro-batches (object indices) of ``step``."""
        batch = self.plan.global_batch(step)
        return [[batch[p] for p in self.positions(m)] for m in range(self.accum)]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield from self.step_indices(step)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum


def collate(items: list[dict]) -> dict[str, Any]:
    """Dataset items -> triplane (B, 3, C, R, R), weights (B, 3, R, R) or None, and lists of strings."""
    weights = [it.get("weights") for it in items]
    return {
        "triplane": torch.stack([it["triplane"] for it in items]),
        "weights": torch.stack(weights) if all(w is not None for w in weights) else None,
        "caption": [it["caption"] for it in items],
        "id": [it["id"] for it in items],
        "views_dir": [it.get("views_dir", "") for it in items],
    }
