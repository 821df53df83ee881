"""The triplane transformer: learned query tokens cross-attend to image tokens, then deconvolve to planes.

Written from ``shared/research/instantmesh.md`` section 2.3. ``nn.MultiheadAttention`` with the
upstream constructor arguments gives the upstream parameter names (``q_proj_weight`` /
``in_proj_weight``, ``out_proj.weight``, no biases), so checkpoints load without remapping.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from triflow3d import conventions as cv
from triflow3d.encoders.vit import LayerNorm32


class TriplaneBlock(nn.Module):
    """Pre-norm block: cross-attention to the image tokens, self-attention, MLP (LN eps 1e-5, as upstream)."""

    def __init__(self, dim: int, cond_dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm32(dim)
        self.cross_attn = nn.MultiheadAttention(
            dim, heads, kdim=cond_dim, vdim=cond_dim, bias=False, batch_first=True
        )
        self.norm2 = LayerNorm32(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
        self.norm3 = LayerNorm32(dim)
        hidden = int(dim * mlp_ratio)
        # Indices 0 and 3 carry weights (GELU at 1, dropout(0) at 2 and 4), matching upstream keys.
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # x (N, T, D), cond (N, L, Dc)
        h = self.norm1(x)
        x = x + self.cross_attn(h, cond, cond, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class TriplaneTransformer(nn.Module):
    """(N, L, Dc) image tokens -> (N, 3, C, 2R, 2R) planes via 3*R*R learned queries (R = low_res)."""

    def __init__(self, dim: int, cond_dim: int, layers: int, heads: int, low_res: int, triplane_dim: int):
        super().__init__()
        self.low_res = low_res
        table = torch.empty(1, cv.NUM_PLANES * low_res**2, dim)
        if not table.is_meta:  # a meta build is loaded next; meta normal_ imports torch._dynamo (2-5 s)
            table.normal_(0.0, dim**-0.5)  # = torch.randn(...) * dim**-0.5, bit for bit
        self.pos_embed = nn.Parameter(table)
        self.layers = nn.ModuleList(TriplaneBlock(dim, cond_dim, heads) for _ in range(layers))
        self.norm = LayerNorm32(dim, eps=1e-6)
        self.deconv = nn.ConvTranspose2d(dim, triplane_dim, kernel_size=2, stride=2, padding=0)

    def tokens(self, cond: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens (N, L, Dc) -> normed query tokens (N, 3*R*R, D), plane-major then row, column.

        ``init`` (N, 3*R*R, D), if given, is added to the learned query table (the projective lift).
        """
        x = self.pos_embed.to(cond.dtype).expand(cond.shape[0], -1, -1)
        if init is not None:
            x = x + init.to(cond.dtype)
        for layer in self.layers:
            x = layer(x, cond)
        return self.norm(x)

    def to_planes(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, 3*R*R, D) -> (N, 3, C, 2R, 2R): one shared ConvTranspose2d(k=2, s=2) per plane."""
        n, r = tokens.shape[0], self.low_res
        x = rearrange(tokens, "n (p h w) d -> (n p) d h w", p=cv.NUM_PLANES, h=r, w=r)
        x = self.deconv(x)  # (N*3, C, 2R, 2R)
        return rearrange(x, "(n p) c h w -> n p c h w", n=n)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.to_planes(self.tokens(cond))
