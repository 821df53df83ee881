"""TriFlow: the multi-stream rectified-flow transformer on triplanes (paper Figure 2, research/paper.md s5).

Three token streams, each with its own input Linear:

- triplane: each plane patchified (patch p) -> 3 (R/p)^2 tokens, plus fixed 2-D sin-cos positions
  (shared by the planes) and a learned plane-id embedding;
- latent: M learned tokens (a fixed count, so the heavy blocks cost O(M^2), independent of R);
- text: the frozen text encoder's token states (B, L, text_dim), padded tokens masked out of attention.

Stage 1 (x1): read fuse (triplane -> latent); MM-DiT x ``mmdit_depth`` on (latent, text); write fuse
(latent -> triplane); then the text tokens join the latent stream (concatenation). Stages 2.. (x
``dit_stages``): read fuse; DiT x ``dit_depth`` on latent(+text); write fuse. A final adaLN + Linear on
the triplane stream gives, unpatchified to (B, 3, C, R, R), the velocity or (``output``) what it is
computed from with the input: ``skip`` (v = c(t) x_t + out) or ``x0`` (the clean triplane;
``flow.path.velocity_from_output``), optionally after a 3 x 3 convolution of each plane (``out_conv``).
Conditioning: timestep embedding + pooled text -> adaLN-Zero in every block.

``arch="dit"`` is the plain baseline with the same block budget and no latent stream: MM-DiT x
``mmdit_depth`` on (triplane, text), then the text joins the triplane stream and DiT x
``dit_stages * dit_depth`` runs over the concatenation (full attention over all triplane tokens: O(N^2)).
It has no fuse blocks, so it has fewer parameters than the multistream model of the same preset.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
from einops import rearrange
from torch import Tensor, nn

from triflow3d.conventions import NUM_PLANES
from triflow3d.errors import ConfigError
from triflow3d.flow.path import OUTPUTS, velocity_from_output
from triflow3d.models.attention import cat_key_masks, sincos_2d
from triflow3d.models.blocks import DiTBlock, FuseBlock, MMDiTBlock
from triflow3d.models.layers import FinalLayer, MLPEmbedder, Modulation, timestep_embedding

# Stream names. Joint attention concatenates streams in the order of ``TriFlowParams.joint_streams``.
TRIPLANE, LATENT, TEXT = "triplane", "latent", "text"
ARCHS = ("multistream", "dit")


@dataclass(frozen=True)
class TriFlowParams:
    """Every size of a TriFlow network. Validated on construction; see ``TRIFLOW_PRESETS``."""

    plane_channels: int = 8  # C of the (3, C, R, R) triplane
    plane_res: int = 32  # R
    patch: int = 4  # p: each plane becomes (R/p)^2 tokens of C p^2 values
    hidden: int = 256  # model width d
    heads: int = 4
    num_latents: int = 64  # M learned latent tokens (multistream only)
    text_dim: int = 384  # text encoder width (MiniLM 384, CLIP-L 768)
    mlp_ratio: float = 4.0
    mmdit_depth: int = 3  # MM-DiT blocks in stage 1
    dit_depth: int = 3  # DiT blocks in each later stage
    dit_stages: int = 2  # number of later stages
    time_dim: int = 256  # sinusoidal timestep features before the MLP
    arch: str = "multistream"  # "multistream" (TriFlow) | "dit" (plain DiT baseline)
    output: str = "velocity"  # what the final Linear predicts: velocity | skip | x0 (flow.path)
    out_conv: bool = False  # a 3 x 3 convolution on each output plane (U-ViT's final conv), identity at init

    def __post_init__(self) -> None:
        positive = ("plane_channels", "plane_res", "patch", "hidden", "heads", "text_dim", "mmdit_depth")
        for name in positive + ("time_dim",):
            if getattr(self, name) < 1:
                raise ConfigError(f"TriFlowParams.{name} must be >= 1, got {getattr(self, name)}")
        if self.output not in OUTPUTS:
            raise ConfigError(f"TriFlowParams.output must be one of {OUTPUTS}, got {self.output!r}")
        if self.arch not in ARCHS:
            raise ConfigError(f"TriFlowParams.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.plane_res % self.patch:
            raise ConfigError(f"plane_res {self.plane_res} is not divisible by patch {self.patch}")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.hidden % 4:
            raise ConfigError(f"hidden {self.hidden} must be divisible by 4 for 2-D sin-cos positions")
        if self.dit_stages < 0 or self.dit_depth < 0:
            raise ConfigError(f"dit_stages {self.dit_stages} and dit_depth {self.dit_depth} must be >= 0")
        if self.arch == "multistream" and self.num_latents < 1:
            raise ConfigError(f"multistream needs num_latents >= 1, got {self.num_latents}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")

    @property
    def grid(self) -> int:
        """Tokens per plane side, R / p."""
        return self.plane_res // self.patch

    @property
    def num_triplane_tokens(self) -> int:
        return NUM_PLANES * self.grid**2

    @property
    def patch_dim(self) -> int:
        return self.plane_channels * self.patch**2

    @property
    def joint_streams(self) -> tuple[str, ...]:
        """The streams the MM-DiT blocks attend over jointly, in concatenation order."""
        return (LATENT, TEXT) if self.arch == "multistream" else (TRIPLANE, TEXT)


_TINY = TriFlowParams(
    plane_channels=8, plane_res=16, patch=4, hidden=64, heads=4, num_latents=16, text_dim=32,
    mmdit_depth=1, dit_depth=1, dit_stages=2, time_dim=64,
)  # fmt: skip
# Sized so that the shipped CPU model trains thousands of steps in well under an hour on 2 cores:
# the same stage layout as the paper with 2 MM-DiT and 2 x 2 DiT blocks instead of 3 and 2 x 3.
_SMALL = TriFlowParams(
    plane_channels=8, plane_res=32, patch=4, hidden=192, heads=4, num_latents=32, text_dim=384,
    mmdit_depth=2, dit_depth=2,
)  # fmt: skip
_BASE = TriFlowParams(
    plane_channels=80, plane_res=64, patch=2, hidden=768, heads=12, num_latents=256, text_dim=384,
)  # fmt: skip
_PAPER = TriFlowParams(
    plane_channels=80, plane_res=64, patch=2, hidden=1024, heads=16, num_latents=256, text_dim=768,
)  # fmt: skip

TRIFLOW_PRESETS: dict[str, TriFlowParams] = {
    "tiny": _TINY,  # unit tests: 3 x 8 x 16 x 16 triplanes, 48 triplane tokens
    "small": _SMALL,  # CPU demo on lrm-small triplanes 3 x 8 x 32 x 32: 192 triplane tokens
    "base": _BASE,  # InstantMesh triplanes 3 x 80 x 64 x 64 with MiniLM text, 3072 triplane tokens
    "paper": _PAPER,  # research/paper.md s5.3 default: d 1024, 16 heads, M 256, CLIP-L text
}
TRIFLOW_PRESETS.update({f"{k}-dit": replace(v, arch="dit") for k, v in list(TRIFLOW_PRESETS.items())})


def grow_plane_channels(
    state: dict[str, Tensor], params: TriFlowParams, channels: int
) -> tuple[TriFlowParams, dict[str, Tensor]]:
    """A trained model's weights for triplanes with ``channels`` > C channels, the new ones appended.

    The triplane input Linear gets zero columns for the new channels and the output Linear zero rows
    (patch values are ordered (C p q)), so the grown model ignores the new channels and predicts zero
    velocity on them: on the old channels it is the trained model, exactly. Used to fine-tune a
    generator onto an encoder grown with extra channels (``triflow3d train --init CKPT --grow``).
    """
    c = params.plane_channels
    if params.out_conv:
        raise ConfigError("growing a model with an output convolution is not supported")
    if channels <= c:
        raise ConfigError(f"cannot grow a model of {c} plane channels to {channels}")
    grown = replace(params, plane_channels=channels)
    pp, out = params.patch**2, dict(state)
    w_in = state["triplane_in.weight"].reshape(params.hidden, c, pp)  # (D, C, p^2)
    out["triplane_in.weight"] = torch.cat(
        [w_in, w_in.new_zeros(params.hidden, channels - c, pp)], dim=1
    ).reshape(params.hidden, grown.patch_dim)
    w_out, b_out = state["final.linear.weight"], state["final.linear.bias"]  # (C p^2, D), (C p^2,)
    out["final.linear.weight"] = torch.cat([w_out, w_out.new_zeros((channels - c) * pp, params.hidden)])
    out["final.linear.bias"] = torch.cat([b_out, b_out.new_zeros((channels - c) * pp)])
    return grown, out


def identity_conv(channels: int) -> dict[str, Tensor]:
    """The output convolution's weights that pass every channel through unchanged."""
    weight = torch.zeros(channels, channels, 3, 3)
    weight[:, :, 1, 1] = torch.eye(channels)
    return {"out_conv.weight": weight, "out_conv.bias": torch.zeros(channels)}


def add_out_conv(state: dict[str, Tensor], params: TriFlowParams) -> tuple[TriFlowParams, dict[str, Tensor]]:
    """A trained model's weights with the output convolution added as the identity: the same function,
    now able to learn to blend neighbouring patches across their seams (``triflow3d train --init CKPT
    --out-conv``)."""
    if params.out_conv:
        raise ConfigError("the model already has an output convolution")
    return replace(params, out_conv=True), {**state, **identity_conv(params.plane_channels)}


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@functools.lru_cache(maxsize=8)
def _pos_embed(grid: int, dim: int) -> Tensor:
    return sincos_2d(grid, grid, dim)  # (grid^2, dim) fp32, built on the CPU and cached


class Stage(nn.Module):
    """One read fuse -> blocks -> write fuse group of the multistream model (a container, no forward)."""

    def __init__(self, p: TriFlowParams, joint: bool):
        super().__init__()
        self.read = FuseBlock(p.hidden, p.heads, p.mlp_ratio)  # triplane -> latent
        depth = p.mmdit_depth if joint else p.dit_depth
        self.blocks = nn.ModuleList(
            [
                MMDiTBlock(p.hidden, p.heads, p.mlp_ratio, p.joint_streams)
                if joint
                else DiTBlock(p.hidden, p.heads, p.mlp_ratio)
                for _ in range(depth)
            ]
        )
        self.write = FuseBlock(p.hidden, p.heads, p.mlp_ratio)  # latent -> triplane


class TriFlow(nn.Module):
    """Velocity model v(x_t, t, text) for (B, 3, C, R, R) triplanes; see the module docstring."""

    def __init__(self, params: TriFlowParams):
        super().__init__()
        self.params = p = params
        d = p.hidden
        self.triplane_in = nn.Linear(p.patch_dim, d)
        self.plane_embed = nn.Parameter(torch.zeros(NUM_PLANES, d))
        self.text_in = nn.Linear(p.text_dim, d)
        self.time_in = MLPEmbedder(p.time_dim, d)
        self.pooled_in = MLPEmbedder(p.text_dim, d)
        if p.arch == "multistream":
            self.latents = nn.Parameter(torch.zeros(p.num_latents, d))
            self.latent_in = nn.Linear(d, d)
            self.stages = nn.ModuleList(
                [Stage(p, joint=True)] + [Stage(p, joint=False) for _ in range(p.dit_stages)]
            )
        else:
            self.joint_blocks = nn.ModuleList(
                [MMDiTBlock(d, p.heads, p.mlp_ratio, p.joint_streams) for _ in range(p.mmdit_depth)]
            )
            self.blocks = nn.ModuleList(
                [DiTBlock(d, p.heads, p.mlp_ratio) for _ in range(p.dit_stages * p.dit_depth)]
            )
        self.final = FinalLayer(d, p.patch_dim)
        if p.out_conv:  # per plane, across patch seams; replicate padding at the plane borders
            self.out_conv = nn.Conv2d(
                p.plane_channels, p.plane_channels, 3, padding=1, padding_mode="replicate"
            )
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT init: xavier Linears, N(0, 0.02) embeddings, adaLN-Zero (modulations and output zeroed)."""

        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(_basic)
        for emb in (self.time_in, self.pooled_in):
            nn.init.normal_(emb.in_layer.weight, std=0.02)
            nn.init.normal_(emb.out_layer.weight, std=0.02)
        nn.init.normal_(self.plane_embed, std=0.02)
        if self.params.arch == "multistream":
            nn.init.normal_(self.latents, std=0.02)
        for m in self.modules():
            if isinstance(m, Modulation):
                m.zero_init()
        self.final.zero_init()
        if self.params.out_conv:
            self.load_state_dict(identity_conv(self.params.plane_channels), strict=False)

    # --- tokens <-> triplane -------------------------------------------------------------------------
    def embed_triplane(self, x: Tensor) -> Tensor:
        """(B, 3, C, R, R) -> (B, 3 (R/p)^2, D): patchify each plane, add positions and the plane id."""
        p = self.params
        tok = rearrange(x, "B P C (h p) (w q) -> B P (h w) (C p q)", p=p.patch, q=p.patch)
        pos = _pos_embed(p.grid, p.hidden).to(device=x.device, dtype=tok.dtype)  # (h w, D)
        tok = self.triplane_in(tok) + pos[None, None] + self.plane_embed[None, :, None]  # (B, 3, h w, D)
        return tok.flatten(1, 2)

    def unpatchify(self, y: Tensor) -> Tensor:
        """(B, 3 (R/p)^2, C p^2) -> (B, 3, C, R, R)."""
        p = self.params
        return rearrange(
            y,
            "B (P h w) (C p q) -> B P C (h p) (w q)",
            P=NUM_PLANES,
            h=p.grid,
            w=p.grid,
            p=p.patch,
            q=p.patch,
        )

    # --- forward ---------------------------------------------------------------------------------------
    def forward(
        self, x: Tensor, t: Tensor, text_tokens: Tensor, text_pooled: Tensor, text_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, 3, C, R, R), t (B,), text_tokens (B, L, text_dim), text_pooled (B, text_dim),
        text_mask (B, L) bool (True = real token) or None -> velocity (B, 3, C, R, R)."""
        self._check_inputs(x, t, text_tokens, text_pooled, text_mask)
        tri = self.embed_triplane(x)  # (B, N, D)
        txt = self.text_in(text_tokens)  # (B, L, D)
        t_emb = timestep_embedding(t, self.params.time_dim).to(self.time_in.in_layer.weight.dtype)
        vec = self.time_in(t_emb) + self.pooled_in(text_pooled)  # (B, D)
        body = self._multistream if self.params.arch == "multistream" else self._dit
        tri = body(tri, txt, vec, text_mask)  # (B, N, D)
        out = self.unpatchify(self.final(tri, vec))  # (B, 3, C, R, R)
        if self.params.out_conv:
            out = self.out_conv(out.flatten(0, 1)).unflatten(0, out.shape[:2])
        return velocity_from_output(out, x, t, self.params.output)

    def _multistream(self, tri: Tensor, txt: Tensor, vec: Tensor, text_mask: Tensor | None) -> Tensor:
        first, *rest = self.stages
        lat = self.latent_in(self.latents).expand(tri.shape[0], -1, -1)  # (B, M, D)

        # stage 1: read, MM-DiT on (latent, text), write
        lat = first.read(lat, tri, vec)
        streams = {LATENT: lat, TEXT: txt}
        for block in first.blocks:
            streams = block(streams, vec, {TEXT: text_mask})
        tri = first.write(tri, streams[LATENT], vec)

        # text joins the latent stream
        lat = torch.cat([streams[LATENT], streams[TEXT]], dim=1)  # (B, M + L, D)
        lat_mask = cat_key_masks([None, text_mask], [streams[LATENT].shape[1], txt.shape[1]])

        # stages 2..: read, DiT on latent(+text), write
        for stage in rest:
            lat = stage.read(lat, tri, vec)
            for block in stage.blocks:
                lat = block(lat, vec, lat_mask)
            tri = stage.write(tri, lat, vec, lat_mask)
        return tri

    def _dit(self, tri: Tensor, txt: Tensor, vec: Tensor, text_mask: Tensor | None) -> Tensor:
        n = tri.shape[1]
        streams = {TRIPLANE: tri, TEXT: txt}
        for block in self.joint_blocks:
            streams = block(streams, vec, {TEXT: text_mask})
        h = torch.cat([streams[TRIPLANE], streams[TEXT]], dim=1)  # (B, N + L, D)
        mask = cat_key_masks([None, text_mask], [n, txt.shape[1]])
        for block in self.blocks:
            h = block(h, vec, mask)
        return h[:, :n]

    def _check_inputs(
        self, x: Tensor, t: Tensor, text_tokens: Tensor, text_pooled: Tensor, text_mask: Tensor | None
    ) -> None:
        p = self.params
        want = (NUM_PLANES, p.plane_channels, p.plane_res, p.plane_res)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"TriFlow expects x of shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}"
            )
        b = x.shape[0]
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
        if text_tokens.ndim != 3 or text_tokens.shape[0] != b or text_tokens.shape[2] != p.text_dim:
            raise ValueError(f"text_tokens must be ({b}, L, {p.text_dim}), got {tuple(text_tokens.shape)}")
        if text_pooled.shape != (b, p.text_dim):
            raise ValueError(f"text_pooled must be ({b}, {p.text_dim}), got {tuple(text_pooled.shape)}")
        if text_mask is not None and (
            text_mask.shape != text_tokens.shape[:2] or text_mask.dtype != torch.bool
        ):
            raise ValueError(f"text_mask must be bool {tuple(text_tokens.shape[:2])}, got {text_mask.dtype} "
                             f"{tuple(text_mask.shape)}")  # fmt: skip
