"""TriFlow's three blocks: FuseBlock (cross-attention between two streams), MMDiTBlock (joint attention
with separate weights per named stream, SD3 / flux double-stream style) and DiTBlock (self-attention).

All are pre-norm with adaLN-Zero: a conditioning vector ``vec`` (B, D) gives shift / scale / gate for the
attention and MLP branches, and zero-initialised gates make every block the identity at init.
One ``StreamLayer`` holds the per-stream weights; the blocks only differ in who attends to whom.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from triflow3d.models.attention import attention, cat_key_masks
from triflow3d.models.layers import Modulation, ModulationOut, QKNorm, mlp


class StreamLayer(nn.Module):
    """The weights one stream owns in a block: adaLN modulation, q(kv) projection, QK-norm, output
    projection and MLP. Attention itself is done by the caller (self, joint or cross)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, self_kv: bool = True):
        super().__init__()
        self.heads = heads
        self.n_proj = 3 if self_kv else 1  # q, k, v from this stream, or q only (fuse target)
        self.mod = Modulation(dim, 2)  # attention branch, MLP branch
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, self.n_proj * dim)
        self.qk_norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(dim, mlp_ratio)

    def project(self, x: Tensor, mod: ModulationOut) -> Tensor:
        """(B, L, D) -> (n_proj, B, H, L, Dh): q, k, v (or q only) of the modulated, normalised stream."""
        qkv = self.qkv(mod.modulate(self.norm1(x)))  # (B, L, n_proj * D)
        return rearrange(qkv, "B L (K H D) -> K B H L D", K=self.n_proj, H=self.heads)

    def residual(self, x: Tensor, attn: Tensor, mods: list[ModulationOut]) -> Tensor:
        """Gated attention residual, then gated MLP residual. x, attn: (B, L, D)."""
        x = x + mods[0].gate * self.proj(attn)
        return x + mods[1].gate * self.mlp(mods[1].modulate(self.norm2(x)))


class MMDiTBlock(nn.Module):
    """Joint attention over named streams, each with its own weights (nn.ModuleDict, never a copied branch).

    The streams are concatenated in ``self.streams`` order, attend jointly, and are split back by length.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, streams: tuple[str, ...]):
        super().__init__()
        self.streams = tuple(streams)
        self.layers = nn.ModuleDict({s: StreamLayer(dim, heads, mlp_ratio) for s in self.streams})

    def forward(
        self, xs: dict[str, Tensor], vec: Tensor, key_masks: dict[str, Tensor | None] | None = None
    ) -> dict[str, Tensor]:
        key_masks = key_masks or {}
        lengths = [xs[s].shape[1] for s in self.streams]
        mods = {s: self.layers[s].mod(vec) for s in self.streams}

        # per-stream projections and QK-norm
        qkvs = []
        for s in self.streams:
            q, k, v = self.layers[s].project(xs[s], mods[s][0])  # (B, H, L_s, Dh) each
            q, k = self.layers[s].qk_norm(q, k, v)
            qkvs.append((q, k, v))

        # joint attention over the concatenation
        q, k, v = (torch.cat([t[i] for t in qkvs], dim=2) for i in range(3))  # (B, H, sum L_s, Dh)
        mask = cat_key_masks([key_masks.get(s) for s in self.streams], lengths)
        out = attention(q, k, v, mask).split(lengths, dim=1)  # per stream (B, L_s, D)

        # per-stream residuals
        return {s: self.layers[s].residual(xs[s], o, mods[s]) for s, o in zip(self.streams, out)}


class DiTBlock(nn.Module):
    """Self-attention + MLP on one stream with adaLN-Zero (DiT)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.layer = StreamLayer(dim, heads, mlp_ratio)

    def forward(self, x: Tensor, vec: Tensor, key_mask: Tensor | None = None) -> Tensor:
        mods = self.layer.mod(vec)
        q, k, v = self.layer.project(x, mods[0])  # (B, H, L, Dh) each
        q, k = self.layer.qk_norm(q, k, v)
        return self.layer.residual(x, attention(q, k, v, key_mask), mods)  # (B, L, D)


class FuseBlock(nn.Module):
    """Cross-attention + MLP from a source stream into a target stream (target queries, source keys /
    values), pre-norm with adaLN-Zero on the target. Only the target is updated.

    As a "read" fuse the target is the latent stream and the source the triplane stream; as a "write"
    fuse the other way round. Cost is O(L_target * L_source), linear in the triplane token count.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.target = StreamLayer(dim, heads, mlp_ratio, self_kv=False)
        self.source_norm = nn.LayerNorm(dim, eps=1e-6)
        self.kv = nn.Linear(dim, 2 * dim)

    def forward(self, x: Tensor, source: Tensor, vec: Tensor, source_mask: Tensor | None = None) -> Tensor:
        mods = self.target.mod(vec)
        (q,) = self.target.project(x, mods[0])  # (B, H, Lx, Dh)
        kv = self.kv(self.source_norm(source))  # (B, Ls, 2D)
        k, v = rearrange(kv, "B L (K H D) -> K B H L D", K=2, H=self.target.heads)
        q, k = self.target.qk_norm(q, k, v)
        return self.target.residual(x, attention(q, k, v, source_mask), mods)  # (B, Lx, D)
