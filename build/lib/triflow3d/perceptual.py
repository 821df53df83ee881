"""Perceptual image losses for the rendering loss, behind one frozen module with named backends.

- ``lpips-vgg``: real LPIPS (v0.1, VGG16): ImageNet VGG16 features (a torchvision-format state dict
  file, loaded strictly) + LPIPS linear heads (``vgg.pth``). Needs both weight files on disk; none ships
  with this project or any installable package (research/packages.md section 2).
- ``random-vgg``: the same VGG16 stack with fixed-seed random weights and uniform heads. A deterministic
  feature-space distance, NOT LPIPS; the honest offline default.
- ``none``: no perceptual term.

Every backend optionally adds ``l1_weight * mean |pred - target|``. Inputs are RGB in [0, 1], shape
(B, 3, H, W) with H, W >= 16. The network is frozen (eval, no parameter gradients); gradients flow to
the input images. Keep the loss out of any module whose state_dict is checkpointed (it is 14.7 M
frozen parameters).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import nn

from triflow3d.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("lpips-vgg", "random-vgg", "none")
VGG16_ENV = "TRIFLOW3D_VGG16"
LPIPS_VGG_ENV = "TRIFLOW3D_LPIPS_VGG"
VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's ImageNet VGG16
# torchvision vgg16().features: conv widths, "M" = max-pool. Module indices match torchvision's.
VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
)
VGG16_TAPS: tuple[int, ...] = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
TAP_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
# LPIPS ScalingLayer: inputs in [-1, 1] are mapped to (x - shift) / scale.
LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
RANDOM_VGG_DESCRIPTION = "random-weight VGG16 features (NOT LPIPS)"


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` up to relu5_3, returning the five tap activations."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU()]
                c_in = int(item)
        self.features = nn.Sequential(*layers)  # conv at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG16_TAPS:
                taps.append(x)
        return taps


class LinearHead(nn.Module):
    """LPIPS ``NetLinLayer``: (dropout,) 1x1 conv to one channel; keys ``model.1.weight`` as upstream."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class FeatureDistance(nn.Module):
    """LPIPS maths over a VGG16 stack: sum_l mean_hw lin_l((unit(f_l(a)) - unit(f_l(b)))^2), (B,)."""

    def __init__(self):
        super().__init__()
        self.net = VGG16Features()
        for i, c in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{i}", LinearHead(c))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b]) * 2.0 - 1.0  # [0, 1] -> [-1, 1], one pass for both images
        feats = self.net((x - self.shift) / self.scale)
        total = 0.0
        for i, f in enumerate(feats):
            fa, fb = _unit(f).chunk(2)
            head: LinearHead = getattr(self, f"lin{i}")
            total = total + head((fa - fb) ** 2).mean((1, 2, 3))
        return total


def _uninitialised_distance() -> FeatureDistance:
    """FeatureDistance without the default init (all weights are overwritten next), buffers filled."""
    with torch.device("meta"):
        distance = FeatureDistance()
    distance.to_empty(device="cpu")
    distance.shift.copy_(torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
    distance.scale.copy_(torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
    return distance


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """Frozen perceptual loss: ``forward(pred, target)`` of (B, 3, H, W) in [0, 1] -> mean over batch."""

    def __init__(
        self,
        backend: str = "random-vgg",
        l1_weight: float = 0.0,
        vgg_path: str | Path | None = None,
        lpips_path: str | Path | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"perceptual backend must be one of {BACKENDS}, got {backend!r}")
        self.backend, self.l1_weight = backend, float(l1_weight)
        self.distance: FeatureDistance | None = None
        if backend == "lpips-vgg":
            self.distance = _uninitialised_distance()
            load_vgg16(self.distance.net, resolve_vgg16_path(vgg_path))
            load_lpips_heads(self.distance, resolve_lpips_head_path(lpips_path))
            self.description = "LPIPS v0.1 (VGG16, ImageNet weights + LPIPS linear heads)"
        elif backend == "random-vgg":
            self.distance = _uninitialised_distance()
            init_random_vgg(self.distance, seed)
            self.description = RANDOM_VGG_DESCRIPTION + f", seed {seed}"
            _warn_random_backend()
        else:
            self.description = "no perceptual term"
        if self.l1_weight:
            self.description += f" + {self.l1_weight:g} * L1"
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)  # frozen: always eval

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) images, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        loss = pred.new_zeros(())
        if self.distance is not None:
            if min(pred.shape[-2:]) < 16:
                raise ValueError(
                    f"VGG16 needs images of at least 16 x 16 pixels, got {tuple(pred.shape[-2:])}"
                )
            loss = loss + self.distance(pred.float(), target.float()).mean()
        if self.l1_weight:
            loss = loss + self.l1_weight * (pred.float() - target.float()).abs().mean()
        return loss

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, description={self.description!r}"


def make_perceptual_loss(name: str, **kwargs) -> PerceptualLoss:
    """Build a backend by name (``lpips-vgg`` | ``random-vgg`` | ``none``); kwargs as PerceptualLoss."""
    return PerceptualLoss(name, **kwargs)


@functools.cache
def _warn_random_backend() -> None:
    logger.warning(
        "perceptual loss uses %s: no ImageNet VGG16 weights are available offline; values are an "
        "uncalibrated feature distance, not comparable to published LPIPS",
        RANDOM_VGG_DESCRIPTION,
    )


# --- weights -----------------------------------------------------------------------------------


def init_random_vgg(distance: FeatureDistance, seed: int) -> None:
    """Fixed-seed He (fan-out) conv weights as torchvision initialises VGG, zero biases; uniform heads."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in distance.net.features:
            if isinstance(m, nn.Conv2d):
                std = (2.0 / (m.out_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                m.bias.zero_()
        for i in range(len(TAP_CHANNELS)):
            # each layer then adds the mean over pixels of |unit(fa) - unit(fb)|^2 / n_layers, in [0, 4]
            getattr(distance, f"lin{i}").model[1].weight.fill_(1.0 / len(TAP_CHANNELS))


def _candidates(explicit: str | Path | None, env: str, defaults: list[Path]) -> list[Path]:
    if explicit is not None:
        return [Path(explicit)]  # an explicit path is never silently replaced by a default
    found = [Path(os.environ[env])] if os.environ.get(env) else []
    return found + defaults


def _resolve(what: str, candidates: list[Path], env: str) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates) or "(nothing)"
    raise ConfigError(f"{what} not found; looked for: {looked}. Pass the path or set {env}.")


def resolve_vgg16_path(explicit: str | Path | None = None) -> Path:
    """Explicit path, else $TRIFLOW3D_VGG16, else torch hub's checkpoints/vgg16-397923af.pth."""
    hub = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    return _resolve("ImageNet VGG16 weights", _candidates(explicit, VGG16_ENV, [hub]), VGG16_ENV)


def resolve_lpips_head_path(explicit: str | Path | None = None) -> Path:
    """Explicit path, else $TRIFLOW3D_LPIPS_VGG, else the vgg.pth bundled with torchmetrics or lpips."""
    bundled = []
    for package, rel in (
        ("torchmetrics", "functional/image/lpips_models/vgg.pth"),
        ("lpips", "weights/v0.1/vgg.pth"),
    ):
        spec = importlib.util.find_spec(package)  # locates without importing
        if spec is not None and spec.origin:
            bundled.append(Path(spec.origin).parent / rel)
    return _resolve(
        "LPIPS VGG linear heads (vgg.pth)", _candidates(explicit, LPIPS_VGG_ENV, bundled), LPIPS_VGG_ENV
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a plain (weights_only) torch state-dict file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors")
    return sd


def _load_strict(module: nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str) -> None:
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: not {what}: missing keys {missing[:6]}, unexpected keys {unexpected[:6]}, "
            f"wrong shapes {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in wrong[:6]]}"
        )
    module.load_state_dict(sd, strict=True)


def load_vgg16(net: VGG16Features, path: Path) -> None:
    """Load torchvision-format VGG16 weights (``features.*``; the ``classifier.*`` head is ignored)."""
    sd = {k: v for k, v in read_state_dict(path).items() if not k.startswith("classifier.")}
    _load_strict(net, sd, path, "a torchvision VGG16 state dict")


def load_lpips_heads(distance: FeatureDistance, path: Path) -> None:
    """Load LPIPS linear heads (keys ``lin{i}.model.1.weight``, shapes (1, C_i, 1, 1))."""
    heads = nn.ModuleDict({f"lin{i}": getattr(distance, f"lin{i}") for i in range(len(TAP_CHANNELS))})
    _load_strict(heads, read_state_dict(path), path, "an LPIPS VGG head file")
