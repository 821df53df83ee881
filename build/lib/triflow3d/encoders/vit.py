"""A camera-modulated ViT: InstantMesh's DINO image encoder, written from the research notes.

Parameter names follow Hugging Face's ``ViTModel`` (``embeddings.*``, ``encoder.layer.{i}.*``,
``layernorm``) so an InstantMesh checkpoint loads with no renaming; every layer adds an
``adaLN_modulation`` head that shifts and scales both LayerNorms from a per-view camera embedding
(``shared/research/instantmesh.md`` section 2.2). Nothing here subclasses transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from triflow3d.errors import ConfigError

_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass(frozen=True)
class ViTParams:
    """The subset of HF ``ViTConfig`` the encoder needs (same field names)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    patch_size: int = 16
    image_size: int = 224
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    hidden_act: str = "gelu"

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"ViT hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"ViT image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ConfigError(
                f"ViT hidden_act {self.hidden_act!r} unsupported; use one of {sorted(_ACTIVATIONS)}"
            )

    @property
    def grid(self) -> int:
        """Side of the pretrained position-embedding grid (14 for 224 / 16)."""
        return self.image_size // self.patch_size


class LayerNorm32(nn.LayerNorm):
    """nn.LayerNorm (same parameter names) that always normalises in float32: the bf16/fp16 fp32 island."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (N, L, D), shift/scale (N, D) -> x * (1 + scale) + shift."""
    return x * (1 + scale[:, None]) + shift[:, None]


def interpolate_pos_embed(table: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize a (1, 1 + G*G, D) position table to a grid_h x grid_w patch grid (CLS row kept first).

    Reproduces the original DINO rule InstantMesh's vendored ViT uses: bicubic with
    ``scale_factor = (grid + 0.1) / G`` and ``align_corners=False``. The table is returned
    unchanged when the grid already matches and is square.
    """
    n = table.shape[1] - 1
    g = math.sqrt(n)
    if n == grid_h * grid_w and grid_h == grid_w:
        return table
    cls_row, patch = table[:, :1], table[:, 1:]
    dim = table.shape[-1]
    patch = patch.reshape(1, int(g), int(g), dim).permute(0, 3, 1, 2)  # (1, D, G, G)
    scale = ((grid_h + 0.1) / g, (grid_w + 0.1) / g)
    patch = F.interpolate(patch.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    if patch.shape[-2:] != (grid_h, grid_w):
        raise ValueError(
            f"position-embedding resize gave {tuple(patch.shape[-2:])}, wanted {(grid_h, grid_w)}"
        )
    patch = patch.to(table.dtype).permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([cls_row, patch], dim=1)  # (1, 1 + h*w, D)


class PatchEmbeddings(nn.Module):
    def __init__(self, p: ViTParams):
        super().__init__()
        self.projection = nn.Conv2d(
            p.num_channels, p.hidden_size, kernel_size=p.patch_size, stride=p.patch_size
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, h*w, D)
        return self.projection(pixels).flatten(2).transpose(1, 2)


class Embeddings(nn.Module):
    """CLS token + patch tokens + (interpolated) learned positions."""

    def __init__(self, p: ViTParams):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, p.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, p.grid**2 + 1, p.hidden_size))
        self.patch_embeddings = PatchEmbeddings(p)
        self.patch_size = p.patch_size

    def pos_embed(self, height: int, width: int) -> torch.Tensor:
        """The position table for an image of height x width pixels -> (1, 1 + h*w, D)."""
        return interpolate_pos_embed(
            self.position_embeddings, height // self.patch_size, width // self.patch_size
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, 1 + h*w, D)
        x = self.patch_embeddings(pixels)
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        return x + self.pos_embed(*pixels.shape[-2:]).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, p: ViTParams):
        super().__init__()
        d = p.hidden_size
        self.heads = p.num_attention_heads
        self.query = nn.Linear(d, d, bias=p.qkv_bias)
        self.key = nn.Linear(d, d, bias=p.qkv_bias)
        self.value = nn.Linear(d, d, bias=p.qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D)
        def split(t: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (N, H, L, D/H)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return out.transpose(1, 2).flatten(2)


class SelfOutput(nn.Module):
    def __init__(self, p: ViTParams):
        super().__init__()
        self.dense = nn.Linear(p.hidden_size, p.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class Attention(nn.Module):
    def __init__(self, p: ViTParams):
        super().__init__()
        self.attention = SelfAttention(p)
        self.output = SelfOutput(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class Intermediate(nn.Module):
    def __init__(self, p: ViTParams):
        super().__init__()
        self.dense = nn.Linear(p.hidden_size, p.intermediate_size)
        self.approximate = _ACTIVATIONS[p.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x), approximate=self.approximate)


class Output(nn.Module):
    def __init__(self, p: ViTParams):
        super().__init__()
        self.dense = nn.Linear(p.intermediate_size, p.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class ModulatedLayer(nn.Module):
    """Pre-norm ViT layer whose two LayerNorms are adaLN-modulated by the camera embedding."""

    def __init__(self, p: ViTParams):
        super().__init__()
        d = p.hidden_size
        self.attention = Attention(p)
        self.intermediate = Intermediate(p)
        self.output = Output(p)
        self.layernorm_before = LayerNorm32(d, eps=p.layer_norm_eps)
        self.layernorm_after = LayerNorm32(d, eps=p.layer_norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 4 * d))
        nn.init.zeros_(self.adaLN_modulation[1].weight)  # starts as a plain ViT layer
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # x (N, L, D), cond (N, D)
        shift_msa, scale_msa, shift_mlp, scale_mlp = self.adaLN_modulation(cond).chunk(4, dim=-1)
        x = x + self.attention(modulate(self.layernorm_before(x), shift_msa, scale_msa))
        h = modulate(self.layernorm_after(x), shift_mlp, scale_mlp)
        return x + self.output(self.intermediate(h))


class Encoder(nn.Module):
    def __init__(self, p: ViTParams):
        super().__init__()
        self.layer = nn.ModuleList(ModulatedLayer(p) for _ in range(p.num_hidden_layers))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, cond)
        return x


class ModulatedViT(nn.Module):
    """ViT with HF parameter names, no pooler, and camera adaLN in every layer.

    ``forward(pixels (N, 3, H, W) normalised, cond (N, D)) -> (N, 1 + (H/p)(W/p), D)``: the final
    LayerNorm is applied to every token, CLS first, then patches row-major.
    """

    def __init__(self, p: ViTParams):
        super().__init__()
        self.params = p
        self.embeddings = Embeddings(p)
        self.encoder = Encoder(p)
        self.layernorm = LayerNorm32(p.hidden_size, eps=p.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """HF ViT init: trunc-normal(0.02) Linear/Conv weights, zero biases, LN (1, 0); adaLN stays zero."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear | nn.Conv2d) and "adaLN_modulation" not in name:
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=0.02)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=0.02)

    def forward(self, pixels: torch.Tensor, cond: torch.Tensor, extra: torch.Tensor | None = None):
        """``extra`` (N, h*w, D), if given, is added to the patch tokens (not to CLS)."""
        x = self.embeddings(pixels)  # (N, L, D)
        if extra is not None:
            x = torch.cat([x[:, :1], x[:, 1:] + extra.to(x.dtype)], dim=1)
        x = self.encoder(x, cond.to(x.dtype))
        return self.layernorm(x)
