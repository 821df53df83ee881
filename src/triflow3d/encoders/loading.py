"""Named reconstructors, their configs, and strict checkpoint loading / saving.

Names (``load_reconstructor(name)``):
    ``instantmesh-{nerf,mesh}-{base,large}``: the official InstantMesh configs. Their weights are the
    user's own ``.ckpt`` files (Lightning containers, keys prefixed ``lrm_generator.``), passed as
    ``checkpoint=`` / ``NAME:PATH`` or found as ``$TRIFLOW3D_INSTANTMESH_DIR/instant_nerf_large.ckpt``.
    ``lrm-small``: our own small reconstructor of the same class; weights ship in
    ``triflow3d/weights/lrm-small/`` (``model.safetensors`` + ``config.json``).

Models are built on the meta device and the checkpoint tensors are assigned, so a large model is
never held twice in memory. ``torch.load`` always runs with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from triflow3d import conventions as cv
from triflow3d.encoders.reconstructor import ReconstructorConfig, TriplaneReconstructor
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.utils.io import atomic_path

LIGHTNING_PREFIX = "lrm_generator."
INSTANTMESH_DIR_ENV = "TRIFLOW3D_INSTANTMESH_DIR"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"

_DINO_VITB16 = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    patch_size=16, image_size=224, layer_norm_eps=1e-12, qkv_bias=True, hidden_act="gelu",
)  # fmt: skip
_BASE = dict(encoder_feat_dim=768, transformer_dim=1024, transformer_heads=16, triplane_low_res=32)
_BASE |= dict(triplane_high_res=64, transformer_layers=12, triplane_dim=40, rendering_samples_per_ray=96)
_LARGE = _BASE | dict(transformer_layers=16, triplane_dim=80, rendering_samples_per_ray=128)
_MESH = dict(kind="mesh", grid_res=128, grid_scale=2.1)

RECONSTRUCTOR_PRESETS: dict[str, ReconstructorConfig] = {
    "instantmesh-nerf-base": ReconstructorConfig(**_DINO_VITB16, **_BASE),
    "instantmesh-nerf-large": ReconstructorConfig(**_DINO_VITB16, **_LARGE),
    "instantmesh-mesh-base": ReconstructorConfig(**_DINO_VITB16, **_BASE, **_MESH),
    "instantmesh-mesh-large": ReconstructorConfig(**_DINO_VITB16, **_LARGE, **_MESH),
    # Our own CPU-trainable reconstructor: 128 px views (16x16 patches), planes 3 x 11 x 32 x 32 (8 learned
    # channels + 3 column-colour channels written by the plane lift), plane lift reading RGBA inputs.
    "lrm-small": ReconstructorConfig(
        encoder_feat_dim=128,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=512,
        patch_size=16,
        image_size=128,
        transformer_dim=192,
        transformer_layers=3,
        transformer_heads=4,
        triplane_low_res=16,
        triplane_high_res=32,
        triplane_dim=11,
        rendering_samples_per_ray=64,
        ray_embedding=True,
        plane_lift_depth=16,
        input_alpha=True,
        baked_shading=0.815,
        colour_planes=True,
    ),  # fmt: skip
}


def list_reconstructors() -> list[str]:
    return list(RECONSTRUCTOR_PRESETS)


def parse_encoder_spec(spec: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME:CHECKPOINT`` -> (name, checkpoint or None)."""
    name, sep, ckpt = spec.partition(":")
    if name not in RECONSTRUCTOR_PRESETS:
        raise ConfigError(f"unknown reconstructor {name!r}; known: {', '.join(RECONSTRUCTOR_PRESETS)}")
    if sep and not ckpt:
        raise ConfigError(f"reconstructor spec {spec!r} has an empty checkpoint after ':'")
    return name, (ckpt or None)


def default_checkpoint(name: str) -> Path | None:
    """Where ``name``'s weights are looked for when no checkpoint is given (None: nowhere configured)."""
    if name.startswith("instantmesh-"):
        root = os.environ.get(INSTANTMESH_DIR_ENV)
        return Path(root) / (name.removeprefix("instantmesh-").replace("-", "_") + ".ckpt") if root else None
    # instant_nerf_large.ckpt etc. above; our own models ship inside the package.
    return WEIGHTS_DIR / name


def resolve_config(name: str, config: Any = None) -> ReconstructorConfig:
    """The preset for ``name``, replaced by ``config``: a ReconstructorConfig, an upstream-format dict
    (``{"params", "encoder_vit_config"}``), a dict of field overrides, or a path to a JSON file."""
    if name not in RECONSTRUCTOR_PRESETS:
        raise ConfigError(f"unknown reconstructor {name!r}; known: {', '.join(RECONSTRUCTOR_PRESETS)}")
    if config is None:
        return RECONSTRUCTOR_PRESETS[name]
    if isinstance(config, ReconstructorConfig):
        return config
    if isinstance(config, str | os.PathLike):
        config = _read_json(Path(config))
    if not isinstance(config, dict):
        raise ConfigError(
            f"reconstructor config must be a dict, path or ReconstructorConfig, got {type(config)}"
        )
    if "params" in config:
        return ReconstructorConfig.from_dict(config)
    known = {f.name for f in dataclasses.fields(ReconstructorConfig)}
    if unknown := sorted(set(config) - known):
        raise ConfigError(f"unknown reconstructor config keys {unknown}")
    return dataclasses.replace(RECONSTRUCTOR_PRESETS[name], **config)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


# --- reading checkpoints -----------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A checkpoint -> (state dict with upstream key names, our config.json dict or None).

    Accepts a folder with ``model.safetensors`` + ``config.json``, a ``.safetensors`` file (its
    sibling ``config.json`` is read if present), or a torch container such as an official
    InstantMesh ``.ckpt`` (only ``state_dict`` keys prefixed ``lrm_generator.`` are kept).
    """
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    if p.suffix == ".safetensors":
        cfg_path = p.with_name(CONFIG_FILE)
        cfg = _read_json(cfg_path) if cfg_path.is_file() else None
        try:
            tensors = load_file(p)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{p}: unreadable safetensors file ({e})") from None
        # Tensors read at unaligned offsets take other SIMD paths (ulp-level differences): realign them.
        return {k: v if v.data_ptr() % 64 == 0 else v.clone() for k, v in tensors.items()}, cfg
    return _state_dict_from_container(_torch_load(p), p), None


def _torch_load(p: Path) -> Any:
    """torch.load with weights_only=True (mmap where the file format allows it)."""
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            return torch.load(p, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        reason = str(e).splitlines()[0]
        raise CheckpointError(
            f"{p}: refused to unpickle; only tensors and plain containers are allowed ({reason})"
        ) from None
    except Exception as e:  # corrupt or foreign file
        raise CheckpointError(f"{p}: cannot read checkpoint ({type(e).__name__}: {e})") from None


def _state_dict_from_container(raw: Any, p: Path) -> dict[str, torch.Tensor]:
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{p}: expected a dict with a 'state_dict', got {type(raw).__name__}")
    if any(str(k).startswith(LIGHTNING_PREFIX) for k in sd):
        sd = {k[len(LIGHTNING_PREFIX) :]: v for k, v in sd.items() if str(k).startswith(LIGHTNING_PREFIX)}
    sd = {k: v for k, v in sd.items() if "source_camera" not in k}
    if bad := [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]:
        raise CheckpointError(f"{p}: state_dict entries are not tensors: {bad[:5]}")
    return sd


# --- building and loading ----------------------------------------------------------------------
def _listing(title: str, items: list[str], limit: int = 12) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{title} ({len(items)}): " + ", ".join(items[:limit]) + more


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict, assigning load: raises CheckpointError listing missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} checkpoint {tuple(state_dict[k].shape)} != model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            _listing(t, x)
            for t, x in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if x
        ]
        raise CheckpointError(f"{source}: checkpoint does not match the model; " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True, assign=True)
    if leftover := [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]:
        raise CheckpointError(f"{source}: tensors left uninitialised after loading: {leftover[:5]}")


def build_reconstructor(
    config: ReconstructorConfig, encoder_id: str = "custom", device: str | torch.device = "cpu", seed: int = 0
) -> TriplaneReconstructor:
    """A reconstructor with fresh weights (seeded; the global RNG is left untouched); "meta" allocates nothing."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return TriplaneReconstructor(config, encoder_id=encoder_id)


def load_reconstructor(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    config: Any = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_random: bool = False,
) -> TriplaneReconstructor:
    """Build reconstructor ``name`` (or ``NAME:CKPT``), load its weights strictly, return it in eval mode.

    ``config`` overrides the preset (see :func:`resolve_config`); otherwise a ``config.json`` next to
    our own checkpoints is used. Without weights, raises CheckpointError unless ``allow_random``.
    The weights are cast to ``dtype`` except the field decoder, which stays float32. Gradients are
    disabled; call ``.train().requires_grad_(True)`` to fine-tune.
    """
    name, spec_ckpt = parse_encoder_spec(name)
    ckpt = checkpoint or spec_ckpt
    path = Path(ckpt) if ckpt is not None else default_checkpoint(name)
    have = path is not None and (path / WEIGHTS_FILE if path.is_dir() else path).is_file()
    if not have and ckpt is not None:
        raise CheckpointError(f"{path}: checkpoint not found")
    if not have and not allow_random:
        where = f"at {path}" if path is not None else f"(set ${INSTANTMESH_DIR_ENV} or pass checkpoint=)"
        raise CheckpointError(
            f"no weights found for reconstructor {name!r} {where}; pass a checkpoint, or allow_random=True"
        )
    if not have:
        model = build_reconstructor(resolve_config(name, config), encoder_id=name)
    else:
        state_dict, saved = read_checkpoint(path)
        if (
            saved is not None
            and saved.get("conventions_version", cv.CONVENTIONS_VERSION) != cv.CONVENTIONS_VERSION
        ):
            raise CheckpointError(
                f"{path}: saved with conventions version {saved['conventions_version']}, "
                f"this triflow3d uses {cv.CONVENTIONS_VERSION}"
            )
        cfg = resolve_config(name, config if config is not None or saved is None else saved)
        model = build_reconstructor(cfg, encoder_id=name, device="meta")
        load_weights(model, state_dict, str(path))
    return finalize(model, dtype, device)


def finalize(
    model: TriplaneReconstructor, dtype: torch.dtype, device: str | torch.device
) -> TriplaneReconstructor:
    """Move to device / dtype (decoder kept float32), eval mode, no gradients."""
    model = model.to(device=device, dtype=dtype)
    model.synthesizer.float()
    return model.eval().requires_grad_(False)


def save_reconstructor(model: TriplaneReconstructor, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (with encoder_id and conventions_version) atomically."""
    meta = {"encoder_id": model.encoder_id, "conventions_version": cv.CONVENTIONS_VERSION}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={k: str(v) for k, v in meta.items()})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta | model.config.to_dict(), indent=2) + "\n")
    return Path(directory)
