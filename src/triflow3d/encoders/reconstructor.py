"""The reconstructor: multi-view images + cameras -> triplane, and the triplane's field, renders and mesh.

``TriplaneReconstructor`` is InstantMesh's ``InstantNeRF`` / ``InstantMesh`` re-written from
``shared/research/instantmesh.md`` (sections 2, 5 and 9) with the upstream submodule names
(``encoder.model``, ``encoder.camera_embedder``, ``transformer``, ``synthesizer.decoder``), so one
class serves the official checkpoints and our own small ``lrm-small`` model; only the
``ReconstructorConfig`` differs. Every encoder in triflow3d implements this interface.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import nn

from triflow3d import conventions as cv
from triflow3d.encoders.lift import COLOUR_CHANNELS
from triflow3d.encoders.transformer import TriplaneTransformer
from triflow3d.encoders.vit import ModulatedViT, ViTParams
from triflow3d.errors import ConfigError
from triflow3d.triplane.sampling import BINOMIAL_SIDE

KINDS = ("nerf", "mesh")
MODEL_CLASSES = {"nerf": "src.models.lrm.InstantNeRF", "mesh": "src.models.lrm_mesh.InstantMesh"}
DECODER_HIDDEN = 64  # upstream OSGDecoder width (fixed in every variant)
WHITE_TOLERANCE = 2.0 / 255.0  # alpha_from_white: how far from white still counts as background

# Upstream names of the constructor arguments (``params``) and of the HF ViTConfig fields we use.
_PARAM_FIELDS = (
    "encoder_feat_dim",
    "transformer_dim",
    "transformer_layers",
    "transformer_heads",
    "triplane_low_res",
    "triplane_high_res",
    "triplane_dim",
    "rendering_samples_per_ray",
    "ray_embedding",  # triflow3d extension (not upstream): Plucker ray tokens, see CameraConditionedEncoder
    "lift_depth",  # triflow3d extension (not upstream): projective lift of the queries, see encoders/lift.py
    "plane_lift_depth",  # triflow3d extension (not upstream): full-resolution plane lift, see encoders/lift.py
    "input_alpha",  # triflow3d extension (not upstream): the lifts read the inputs' alpha, see encoders/lift.py
    "baked_shading",  # triflow3d extension (not upstream): mean shading of the training renders, mesh colours
    "rgb_skip",  # triflow3d extension (not upstream): a linear route from the features to the rgb logits
    "colour_planes",  # triflow3d extension (not upstream): the plane lift writes column-colour channels
    "plane_filter",  # triflow3d extension (not upstream): the field reads the planes through a 3x3 low-pass
)
_MESH_FIELDS = ("grid_res", "grid_scale")
_VIT_FIELDS = tuple(f.name for f in dataclasses.fields(ViTParams))
_OPTIONAL = {"triplane_high_res", "rendering_samples_per_ray", "grid_res", "grid_scale", "layer_norm_eps"}
_OPTIONAL |= {"qkv_bias", "hidden_act", "num_channels", "ray_embedding", "lift_depth", "plane_lift_depth"}
_OPTIONAL |= {"input_alpha", "baked_shading", "rgb_skip", "colour_planes", "plane_filter"}
# Fields that change only how meshes are coloured, never the triplanes or the field: not part of a
# reconstructor's identity (latents made before such a field existed stay valid).
_PRESENTATION_FIELDS = ("baked_shading",)
# Fields that change only how the field reads triplanes, never the triplanes themselves: latents made
# without them stay valid (the decoder's weights are not part of the identity either).
_FIELD_READ_FIELDS = ("plane_filter",)
# Extensions added after latents were first stored, with their off value: left out of the identity while
# off, so adding an option never invalidates existing latents.
_LATE_FIELDS_OFF = {"rgb_skip": False, "colour_planes": False}


@dataclass(frozen=True)
class ReconstructorConfig(ViTParams):
    """Hyper-parameters, named as upstream's constructor arguments plus (inherited from
    :class:`ViTParams`) the HF ``ViTConfig`` fields of the image encoder."""

    kind: str = "nerf"
    """``nerf`` (density field, volume rendering) or ``mesh`` (FlexiCubes-style SDF heads)."""
    encoder_feat_dim: int = 768
    transformer_dim: int = 1024
    transformer_layers: int = 16
    transformer_heads: int = 16
    triplane_low_res: int = 32
    """Query-token grid side R; planes are 2R x 2R after the stride-2 deconvolution."""
    triplane_high_res: int = 64
    """Stored for fidelity with upstream configs; unused (the upsampling is a fixed x2)."""
    triplane_dim: int = 80
    rendering_samples_per_ray: int = 128
    """Split evenly into coarse and importance samples."""
    ray_embedding: bool = False
    """Not upstream (InstantMesh leaves it off): add per-patch Plucker ray embeddings of each input
    camera to the ViT patch tokens, which gives a model trained from scratch an explicit geometric code
    for every pixel (our ``lrm-small`` uses it; the official checkpoints do not have these weights)."""
    lift_depth: int = 0
    """Not upstream (0 = off, as InstantMesh): start each triplane query token from image features
    sampled at ``lift_depth`` points along its column in every input view (:mod:`triflow3d.encoders.lift`)
    instead of from the learned table alone."""
    plane_lift_depth: int = 0
    """Not upstream (0 = off, as InstantMesh): add planes computed directly from ``plane_lift_depth`` view
    samples along each plane cell's column (:class:`triflow3d.encoders.lift.PlaneLift`, a visual-hull and
    photo-consistency code) to the transformer's planes."""
    input_alpha: bool = False
    """Not upstream (off for InstantMesh, whose ViT sees RGB on white only): the lifts also read each input
    view's alpha (the CNN gets it as a fourth channel, and its min over the views is a visual hull), so
    objects as white as the background stay visible. Inputs given as RGB on white get an alpha estimated
    from the white background (:func:`alpha_from_white`)."""
    baked_shading: float = 1.0
    """Not upstream (1.0 = none, as InstantMesh): the mean shading factor (linear RGB) of the renders the
    field was trained on. Its colours are then albedo times that factor, and ``extract_mesh`` divides it
    out, so vertex colours are albedo (:func:`triflow3d.triplane.mesh.albedo_from_radiance`). Volume
    renders are unchanged. ``lrm-small``: 0.815, measured by ``benchmarks/baked_shading.py`` on the
    project's training renders (headlight shading ``render.shading``, random views)."""
    rgb_skip: bool = False
    """Not upstream (off for InstantMesh): the NeRF decoder also maps the features linearly to its rgb
    logits (:class:`triflow3d.triplane.decoder.NerfDecoder`), zero-initialised, so a model grown with it
    starts as the model without it."""
    colour_planes: bool = False
    """Not upstream (off for InstantMesh): the last 3 of the ``triplane_dim`` channels are not learned but
    written by the plane lift: each cell's column colour as a logit (the views' mean colour along the column,
    weighted by the visual hull, :func:`triflow3d.encoders.lift.column_colour`), and the decoder's rgb route
    starts as their mean over the planes. Colour then reaches the planes and the output at full rank by
    construction. Needs ``plane_lift_depth`` and ``input_alpha``; the transformer and the lift's learned part
    write the other ``triplane_dim - 3`` channels."""
    plane_filter: float = 0.0
    """Not upstream (0 = off, as InstantMesh): the field reads the planes through the separable low-pass
    [a, 1 - 2a, a] of every channel, a = ``plane_filter`` in [0, 0.25] (0.25: the binomial [1 2 1] / 4;
    :class:`triflow3d.triplane.field.TriplaneField`), so texel-to-texel noise in a generated triplane does not
    turn into specks and breaks of density (measured, not in the shipped weights: docs/encoders.md). The
    triplanes themselves are unchanged: not part of the identity of latents."""
    grid_res: int = 128
    """Mesh variant only: FlexiCubes grid resolution."""
    grid_scale: float = 2.1
    """Mesh variant only: the grid spans [-grid_scale/2, grid_scale/2]^3."""

    def __post_init__(self):
        super().__post_init__()  # the ViT fields
        if self.kind not in KINDS:
            raise ConfigError(f"reconstructor kind {self.kind!r} is not one of {KINDS}")
        if self.encoder_feat_dim != self.hidden_size:
            raise ConfigError(
                f"encoder_feat_dim {self.encoder_feat_dim} must equal the ViT hidden_size {self.hidden_size}"
            )
        if self.transformer_dim % self.transformer_heads:
            raise ConfigError(
                f"transformer_dim {self.transformer_dim} is not divisible by transformer_heads "
                f"{self.transformer_heads}"
            )
        for name in ("transformer_layers", "triplane_low_res", "triplane_dim", "rendering_samples_per_ray"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lift_depth", "plane_lift_depth"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.rendering_samples_per_ray % 2:
            raise ConfigError(f"rendering_samples_per_ray {self.rendering_samples_per_ray} must be even")
        if not 0.0 < self.baked_shading <= 1.0:
            raise ConfigError(f"baked_shading must be in (0, 1], got {self.baked_shading}")
        if not 0.0 <= self.plane_filter <= BINOMIAL_SIDE:
            raise ConfigError(f"plane_filter must be in [0, {BINOMIAL_SIDE}], got {self.plane_filter}")
        for name in ("rgb_skip", "plane_filter"):
            if getattr(self, name) and self.kind != "nerf":
                raise ConfigError(f"{name} is a NeRF-decoder option (kind 'nerf')")
        if self.colour_planes and not (
            self.kind == "nerf" and self.plane_lift_depth and self.input_alpha and self.triplane_dim > 3
        ):
            raise ConfigError(
                "colour_planes needs kind 'nerf', a plane lift (plane_lift_depth > 0), input_alpha and "
                "triplane_dim > 3"
            )

    @property
    def learned_dim(self) -> int:
        """Plane channels the transformer and the lift's learned part write (all but the colour planes)."""
        return self.triplane_dim - (COLOUR_CHANNELS if self.colour_planes else 0)

    @property
    def vit_params(self) -> ViTParams:
        return ViTParams(**{name: getattr(self, name) for name in _VIT_FIELDS})

    @property
    def triplane_shape(self) -> tuple[int, int, int, int]:
        """(3, C, R, R) of one triplane, R = 2 * triplane_low_res."""
        r = 2 * self.triplane_low_res
        return (cv.NUM_PLANES, self.triplane_dim, r, r)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReconstructorConfig:
        """Parse ``{"params": {...}, "encoder_vit_config": {...}[, "kind" | "model_class"]}``.

        This is the format of upstream-style config JSONs (the parity ``*_config.json`` files) and of
        :meth:`to_dict`. Unknown keys are ignored; a missing required key raises ConfigError.
        """
        if not isinstance(d, dict) or not isinstance(d.get("params"), dict):
            raise ConfigError("reconstructor config must be a dict with a 'params' dict")
        if not isinstance(d.get("encoder_vit_config"), dict):
            raise ConfigError("reconstructor config must have an 'encoder_vit_config' dict")
        params, vit = d["params"], d["encoder_vit_config"]
        kind = _kind_of(d)
        fields = [*_PARAM_FIELDS, *(_MESH_FIELDS if kind == "mesh" else ())]
        values: dict[str, Any] = {"kind": kind}
        for src, names in ((params, fields), (vit, _VIT_FIELDS)):
            for name in names:
                if name in src:
                    values[name] = _typed(name, src[name])
                elif name not in _OPTIONAL:
                    raise ConfigError(f"reconstructor config is missing required key {name!r}")
        values.setdefault("triplane_high_res", 2 * values["triplane_low_res"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The :meth:`from_dict` format (upstream layout plus ``kind``)."""
        fields = [*_PARAM_FIELDS, *(_MESH_FIELDS if self.kind == "mesh" else ())]
        return {
            "kind": self.kind,
            "model_class": MODEL_CLASSES[self.kind],
            "params": {name: getattr(self, name) for name in fields},
            "encoder_vit_config": {name: getattr(self, name) for name in _VIT_FIELDS},
        }

    def identity_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the presentation-only and field-read fields (and late extensions while
        off): what decides the triplanes."""
        d = self.to_dict()
        d["params"] = {
            k: v
            for k, v in d["params"].items()
            if k not in (*_PRESENTATION_FIELDS, *_FIELD_READ_FIELDS)
            and not (k in _LATE_FIELDS_OFF and v == _LATE_FIELDS_OFF[k])
        }
        return d


def _kind_of(d: dict[str, Any]) -> str:
    if "kind" in d:
        return str(d["kind"])
    model_class = str(d.get("model_class", ""))
    for kind, cls_name in MODEL_CLASSES.items():
        if model_class == cls_name or model_class.endswith("." + cls_name.rsplit(".", 1)[-1]):
            return kind
    return "mesh" if "grid_res" in d["params"] else "nerf"


def _typed(name: str, value: Any) -> Any:
    """Check one config value's type against the dataclass field (ints stay ints, floats accept ints)."""
    want = {f.name: f.type for f in dataclasses.fields(ReconstructorConfig)}[name]
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }[want]
    if not ok:
        raise ConfigError(f"reconstructor config key {name!r} must be {want}, got {value!r}")
    return float(value) if want == "float" else value


class CameraConditionedEncoder(nn.Module):
    """InstantMesh's DinoWrapper: a camera MLP (16 -> D -> D) and the adaLN-modulated ViT.

    With ``ray_embedding`` (a triflow3d extension, off for InstantMesh) each patch token also gets a
    linear embedding of the Plucker coordinates (d, o x d) of the rays through its pixels.
    """

    def __init__(self, p: ViTParams, ray_embedding: bool = False):
        super().__init__()
        d = p.hidden_size
        self.model = ModulatedViT(p)
        self.camera_embedder = nn.Sequential(nn.Linear(cv.INPUT_CAMERA_DIM, d), nn.SiLU(), nn.Linear(d, d))
        self.ray_embedder = nn.Linear(6 * p.patch_size**2, d) if ray_embedding else None

    def forward(self, pixels: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (N, 3, H, W) + cameras (N, 16) -> tokens (N, 1 + h*w, D)."""
        rays = None
        if self.ray_embedder is not None:
            plucker = plucker_patches(cameras, pixels.shape[-1], self.model.params.patch_size)
            rays = self.ray_embedder(plucker.to(self.ray_embedder.weight.dtype))
        return self.model(pixels, self.camera_embedder(cameras.to(pixels.dtype)), rays)


def plucker_patches(cameras: torch.Tensor, size: int, patch: int) -> torch.Tensor:
    """Input cameras (N, 16) -> per-patch Plucker rays (N, (S/p)^2, 6 p^2): (d, o x d) of every pixel."""
    from triflow3d.cameras import decode_input_cameras, pixel_rays

    c2w, K = decode_input_cameras(cameras.float())
    o, d = pixel_rays(c2w, K, size)  # (N, S*S, 3) each
    rays = torch.cat([d, torch.cross(o, d, dim=-1)], dim=-1)  # (N, S*S, 6)
    g = size // patch
    rays = rays.reshape(-1, g, patch, g, patch, 6).permute(0, 1, 3, 2, 4, 5)  # (N, g, g, p, p, 6)
    return rays.reshape(-1, g * g, patch * patch * 6)


class TriplaneReconstructor(nn.Module):
    """Images (B, V, 3, H, W) in [0, 1] + input cameras (B, V, 16) -> triplanes (B, 3, C, R, R).

    ``query``, ``render`` and ``extract_mesh`` evaluate a triplane through the decoder in
    ``self.synthesizer`` (a :class:`triflow3d.triplane.field.TriplaneField`), which always runs in
    float32 even when the rest of the model is bf16/fp16.
    """

    def __init__(self, config: ReconstructorConfig, encoder_id: str = "custom"):
        super().__init__()
        from triflow3d.triplane.field import TriplaneField  # the field is a sibling package

        self.config = config
        self.encoder_id = encoder_id
        c = config
        self.encoder = CameraConditionedEncoder(c.vit_params, c.ray_embedding)
        self.transformer = TriplaneTransformer(
            c.transformer_dim, c.encoder_feat_dim, c.transformer_layers, c.transformer_heads,
            c.triplane_low_res, c.learned_dim,
        )  # fmt: skip
        self.synthesizer = TriplaneField(
            c.triplane_dim, kind=c.kind, hidden=DECODER_HIDDEN, rgb_skip=c.rgb_skip,
            colour_channels=COLOUR_CHANNELS if c.colour_planes else 0, plane_filter=c.plane_filter,
        )  # fmt: skip
        self.lift = None
        if c.lift_depth:
            from triflow3d.encoders.lift import ProjectiveLift

            self.lift = ProjectiveLift(
                c.triplane_low_res, c.lift_depth, c.transformer_dim, alpha=c.input_alpha
            )
        self.plane_lift = None
        if c.plane_lift_depth:
            from triflow3d.encoders.lift import PlaneLift

            self.plane_lift = PlaneLift(
                2 * c.triplane_low_res, c.plane_lift_depth, c.learned_dim, alpha=c.input_alpha,
                colour=c.colour_planes,
            )  # fmt: skip

    @property
    def triplane_shape(self) -> tuple[int, int, int, int]:
        return self.config.triplane_shape

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.transformer.pos_embed.dtype

    # --- image -> triplane ------------------------------------------------------------------
    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> the DINO processor's (x - 0.5) / 0.5, as tensor ops (gradients flow)."""
        return (images - cv.ENCODER_PIXEL_MEAN) / cv.ENCODER_PIXEL_STD

    def camera_embedder(self, cameras: torch.Tensor) -> torch.Tensor:
        """Input cameras (B, V, 16) -> per-view adaLN conditions (B*V, D), view index b*V + v."""
        return self.encoder.camera_embedder(cameras.flatten(0, 1).to(self.compute_dtype))

    def encoder_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """The ViT position table resized for height x width images -> (1, 1 + h*w, D)."""
        return self.encoder.model.embeddings.pos_embed(height, width)

    def encode_images(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) in [0, 1] + (B, V, 16) -> image tokens (B, V*L, D), view-major, CLS kept."""
        _check_inputs(images, cameras)
        pixels = self.normalize_images(images.flatten(0, 1).to(self.compute_dtype))
        tokens = self.encoder(pixels, cameras.flatten(0, 1))  # (B*V, L, D)
        return rearrange(tokens, "(b v) l d -> b (v l) d", b=images.shape[0])

    def transformer_tokens(
        self, image_tokens: torch.Tensor, init: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, V*L, D) [+ lifted starts (B, 3*r*r, D_t)] -> normed query tokens (B, 3*r*r, D_t)."""
        return self.transformer.tokens(image_tokens, init)

    def lifted_queries(
        self, images: torch.Tensor, cameras: torch.Tensor, alpha: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The projective lift's query starts (B, 3*r*r, D_t), or None when the config has no lift."""
        if self.lift is None:
            return None
        return self.lift(images.to(self.compute_dtype), cameras, self._lift_alpha(images, alpha))

    def split_inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs (B, V, 3|4, H, W) in [0, 1] -> RGB on white (B, V, 3, H, W) and alpha (B, V, 1, H, W) or
        None. RGBA is straight (not premultiplied) alpha, as the rendered PNGs hold it."""
        if images.ndim == 5 and images.shape[2] == 4:
            rgb, alpha = images[:, :, :3], images[:, :, 3:]
            return rgb * alpha + cv.BACKGROUND * (1.0 - alpha), alpha
        return images, None

    def _lift_alpha(self, rgb: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor | None:
        if not self.config.input_alpha:
            return None
        return (alpha if alpha is not None else alpha_from_white(rgb)).to(self.compute_dtype)

    def forward_planes(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, H, W) RGB on white or (B, V, 4, H, W) RGBA, in [0, 1], + (B, V, 16) -> triplanes
        (B, 3, C, R, R), float32. The ViT always sees RGB on white (InstantMesh's input)."""
        images, alpha = self.split_inputs(images)
        tokens = self.encode_images(images, cameras)
        init = self.lifted_queries(images, cameras, alpha)
        planes = self.transformer.to_planes(self.transformer_tokens(tokens, init))
        if self.plane_lift is not None:
            lift_alpha = self._lift_alpha(images, alpha)
            lifted = self.plane_lift(images.to(self.compute_dtype), cameras, lift_alpha)  # (B, 3, C, R, R)
            k = planes.shape[2]  # the learned channels; the lift's colour planes (if any) follow them
            planes = torch.cat([planes + lifted[:, :, :k], lifted[:, :, k:]], dim=2)
        return planes.float()

    def forward(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        return self.forward_planes(images, cameras)

    # --- triplane -> field / images / mesh -------------------------------------------------
    @property
    def render_options(self):
        from triflow3d.triplane.volume import RenderOptions

        half = self.config.rendering_samples_per_ray // 2
        return RenderOptions(samples_coarse=half, samples_importance=half)

    def _field_planes(self, planes: torch.Tensor) -> torch.Tensor:
        return planes.to(next(self.synthesizer.parameters()).dtype)

    def query(self, planes: torch.Tensor, xyz: torch.Tensor, chunk: int = 2**18) -> dict[str, torch.Tensor]:
        """Planes (B, 3, C, R, R), points (B, P, 3) in world units -> dict(sigma_raw, sigma, rgb, ...)."""
        planes = self._field_planes(planes)
        return self.synthesizer.query(planes, xyz.to(planes.dtype), chunk)

    def render(
        self,
        planes: torch.Tensor,
        cameras: torch.Tensor,
        size: int,
        deterministic: bool = False,
        chunk: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Volume-render planes (B, 3, C, R, R) from render cameras (B, M, 25).

        Returns rgb (B, M, 3, S, S), depth and alpha (B, M, 1, S, S); ``chunk`` is rays per pass.
        """
        from triflow3d.triplane.volume import render_cameras

        opts = self.render_options
        if chunk is not None:
            opts = dataclasses.replace(opts, chunk=chunk)
        planes = self._field_planes(planes)
        return render_cameras(
            self.synthesizer, planes, cameras.to(planes.dtype), size, opts,
            deterministic=deterministic, generator=generator,
        )  # fmt: skip

    def extract_mesh(
        self, planes: torch.Tensor, resolution: int = 256, threshold: float = cv.MESH_THRESHOLD, **kwargs: Any
    ):
        """One triplane (1, 3, C, R, R) -> a vertex-coloured ``trimesh.Trimesh`` in world units.

        NeRF: the iso-surface of the activated density at ``threshold``; mesh variant: sdf = 0.
        ``kwargs`` go to :func:`triflow3d.triplane.mesh.extract_mesh` (e.g. ``coarse_to_fine``).
        """
        from triflow3d.triplane.mesh import extract_mesh

        if planes.ndim != 5 or planes.shape[0] != 1:
            raise ValueError(f"extract_mesh takes one triplane (1, 3, C, R, R), got {tuple(planes.shape)}")
        kwargs.setdefault("baked_shading", self.config.baked_shading)
        return extract_mesh(self.synthesizer, self._field_planes(planes), resolution, threshold, **kwargs)


def alpha_from_white(rgb: torch.Tensor, tolerance: float = WHITE_TOLERANCE) -> torch.Tensor:
    """An alpha estimate (..., 1, H, W) for RGB on white (..., 3, H, W): 0 where every channel is within
    ``tolerance`` of white, rising linearly to 1 at twice that. A white object on white is lost (give RGBA)."""
    darkest = rgb.amin(dim=-3, keepdim=True)  # (..., 1, H, W)
    return ((cv.BACKGROUND - darkest - tolerance) / tolerance).clamp(0.0, 1.0)


def _check_inputs(images: torch.Tensor, cameras: torch.Tensor) -> None:
    if images.ndim != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be (B, V, 3, H, W), got {tuple(images.shape)}")
    if cameras.shape != (*images.shape[:2], cv.INPUT_CAMERA_DIM):
        raise ValueError(
            f"cameras must be (B, V, {cv.INPUT_CAMERA_DIM}) matching images {tuple(images.shape[:2])}, "
            f"got {tuple(cameras.shape)}"
        )
