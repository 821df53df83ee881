"""Attention on ``F.scaled_dot_product_attention`` and the 2-D sin-cos positions of triplane tokens.

Positions are additive (MAE / DiT style), not RoPE: the latent tokens of TriFlow have no spatial position,
and most attention in the model is between triplane tokens and latent tokens (fuse blocks), where a
rotary phase on one side only would have no meaning. Positions are built in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Multi-head attention. q (B, H, Lq, Dh), k and v (B, H, Lk, Dh) -> (B, Lq, H * Dh).

    ``key_mask`` (B, Lk) bool marks the keys that may be attended to (False = padding). Every query must
    see at least one key; TriFlow guarantees it because latent / triplane keys are never masked.
    """
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Lk)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, Lq, Dh)
    return rearrange(x, "B H L D -> B L (H D)")


def sincos_1d(pos: Tensor, dim: int) -> Tensor:
    """Sin-cos embedding of positions (N,) -> (N, dim), fp32; ``dim`` must be even."""
    omega = 1.0 / 10000 ** (
        torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    )  # (dim/2,)
    out = pos.double()[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(height: int, width: int, dim: int) -> Tensor:
    """Fixed 2-D sin-cos positions for a (height, width) token grid, row-major -> (height * width, dim).

    Half of the channels encode the row, half the column (MAE ``get_2d_sincos_pos_embed``); ``dim % 4 == 0``.
    """
    rows, cols = torch.meshgrid(
        torch.arange(height, device="cpu"), torch.arange(width, device="cpu"), indexing="ij"
    )  # explicit CPU: exact positions even under a meta / cuda default-device context
    emb_row = sincos_1d(rows.reshape(-1), dim // 2)  # (H*W, dim/2)
    emb_col = sincos_1d(cols.reshape(-1), dim // 2)
    return torch.cat([emb_row, emb_col], dim=1)  # (H*W, dim)


def cat_key_masks(masks: list[Tensor | None], lengths: list[int]) -> Tensor | None:
    """Concatenate per-stream key masks (B, L_i) bool (None = all valid) -> (B, sum L_i), or None."""
    if all(m is None for m in masks):
        return None
    ref = next(m for m in masks if m is not None)
    full = [
        m if m is not None else torch.ones(ref.shape[0], n, dtype=torch.bool, device=ref.device)
        for m, n in zip(masks, lengths)
    ]
    return torch.cat(full, dim=1)
