"""Distribution metrics between a generated and a reference set of shapes, from distance matrices.

PointFlow (Yang et al. 2019) conventions, with distances such as the squared Chamfer distance of
``geometry.pairwise_chamfer``. ``d_gr[i, j]`` is the distance from generated shape i to reference j.

- MMD (minimum matching distance): mean over references of the distance to the closest generated
  shape. Lower is better; measures fidelity of the references' best matches.
- COV (coverage): share of references that are the nearest reference of at least one generated shape.
  Higher is better (1 = every reference is matched).
- 1-NNA: leave-one-out 1-nearest-neighbour accuracy of telling generated from reference shapes in
  gen ∪ ref. 0.5 is ideal (indistinguishable); 1.0 = fully separable; below 0.5 means generated
  shapes sit closer to references than references to each other (memorisation: exact copies of the
  reference set give 0.0).

Exact ties (measure zero with real Chamfer values; they matter only in degenerate toy sets):
- COV: every reference at the minimum distance of a generated shape counts as covered (PointFlow's
  argmin takes only the first).
- 1-NNA: a sample whose nearest distance is reached by both a same-set and an other-set sample scores
  0.5 (a coin flip). So a set of identical shapes on both sides (all distances 0) gives 0.5.

Reports multiply values by ``REPORT_SCALE`` (MMD-CD x 1e3, COV and 1-NNA in %); metrics.json keeps
raw values.
"""

from __future__ import annotations

import torch

from triflow3d.errors import ConfigError

REPORT_SCALE: dict[str, float] = {"mmd": 1e3, "cov": 100.0, "1nna": 100.0}


def _check(d: torch.Tensor, shape: tuple[int, int], name: str) -> torch.Tensor:
    d = torch.as_tensor(d, dtype=torch.float64)
    if tuple(d.shape) != shape:
        raise ConfigError(f"{name} has shape {tuple(d.shape)}, expected {shape}")
    return d


def mmd(d_gr: torch.Tensor) -> float:
    """Mean over references of the minimum distance to any generated shape. d_gr: (n_gen, n_ref)."""
    return float(torch.as_tensor(d_gr, dtype=torch.float64).min(dim=0).values.mean())


def coverage(d_gr: torch.Tensor) -> float:
    """Share of references that are (one of) the nearest reference of some generated shape."""
    d = torch.as_tensor(d_gr, dtype=torch.float64)
    nearest = d == d.min(dim=1, keepdim=True).values  # (n_gen, n_ref), ties all marked
    return float(nearest.any(dim=0).double().mean())


def one_nna(d_gr: torch.Tensor, d_gg: torch.Tensor, d_rr: torch.Tensor) -> dict[str, float]:
    """1-NN accuracy over gen ∪ ref (leave-one-out), plus the accuracy on each side."""
    d_gr = torch.as_tensor(d_gr, dtype=torch.float64)
    n, m = d_gr.shape
    d_gg, d_rr = _check(d_gg, (n, n), "d_gg"), _check(d_rr, (m, m), "d_rr")
    full = torch.cat([torch.cat([d_gg, d_gr], 1), torch.cat([d_gr.T, d_rr], 1)], 0)  # (n+m, n+m)
    full.fill_diagonal_(float("inf"))
    is_gen = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)])
    same = is_gen[:, None] == is_gen[None, :]
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    near_same = torch.where(same, full, inf).min(dim=1).values
    near_other = torch.where(~same, full, inf).min(dim=1).values
    score = (near_same < near_other).double() + 0.5 * (near_same == near_other).double()  # (n+m,)
    return {
        "1nna": float(score.mean()),
        "1nna_gen": float(score[:n].mean()),
        "1nna_ref": float(score[n:].mean()),
    }


def distribution_metrics(d_gr: torch.Tensor, d_gg: torch.Tensor, d_rr: torch.Tensor) -> dict[str, float]:
    """MMD, COV and 1-NNA (raw values) from the three distance matrices."""
    return {"mmd": mmd(d_gr), "cov": coverage(d_gr), **one_nna(d_gr, d_gg, d_rr)}
