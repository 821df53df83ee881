"""Small building blocks shared by every TriFlow block: norms, adaLN modulation, embedders, final layer.

flux / DiT style. Norms run in fp32 (an fp32 island under bf16 autocast) and cast back to the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from triflow3d.conventions import TIME_EMBED_SCALE


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        rrms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x32 * rrms * self.scale.float()).to(x.dtype)


class QKNorm(nn.Module):
    """Separate RMSNorms on queries and keys (per head dim) to keep attention logits bounded."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of flow time t in [0, 1] -> (B, dim), fp32.

    t is multiplied by ``conventions.TIME_EMBED_SCALE`` here and nowhere else (flux ``time_factor``).
    """
    t = TIME_EMBED_SCALE * t.float()  # (B,)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear, used for the timestep and pooled-text embeddings."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


def mlp(dim: int, ratio: float) -> nn.Sequential:
    """The transformer feed-forward: Linear -> GELU(tanh) -> Linear."""
    hidden = int(dim * ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


@dataclass
class ModulationOut:
    """One adaLN triple, each (B, 1, D): x -> (1 + scale) * norm(x) + shift, residual gated by gate."""

    shift: Tensor
    scale: Tensor
    gate: Tensor

    def modulate(self, x: Tensor) -> Tensor:
        return (1 + self.scale) * x + self.shift


class Modulation(nn.Module):
    """adaLN-Zero: conditioning vector (B, D) -> ``n`` ModulationOut triples.

    The linear is zero-initialised (``zero_init``), so every gate starts at 0 and the block is the identity.
    """

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.lin = nn.Linear(dim, 3 * n * dim)

    def forward(self, vec: Tensor) -> list[ModulationOut]:
        out = self.lin(nn.functional.silu(vec))[:, None, :].chunk(3 * self.n, dim=-1)  # 3n x (B, 1, D)
        return [ModulationOut(*out[3 * i : 3 * i + 3]) for i in range(self.n)]

    def zero_init(self) -> None:
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + LayerNorm + Linear to the patch dimension; zero-initialised (adaLN-Zero)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)  # (B, 1, D) each
        return self.linear((1 + scale) * self.norm(x) + shift)  # (B, N, out_dim)

    def zero_init(self) -> None:
        for lin in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
