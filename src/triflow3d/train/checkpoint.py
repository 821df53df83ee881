"""TriFlow checkpoints: safetensors weights + a JSON config; training state in separate, tensor-only files.

A checkpoint folder (written atomically)::

    model.safetensors      "model.*" (the unwrapped TriFlow state_dict), "normalizer.*" (LatentNormalizer
                           buffers), optional "text.center" (pooled-embedding centre, see center_text)
    ema.safetensors        the same keys with the EMA weights (what sampling loads by default)
    config.json            {format, triflow_params, text_encoder, normalizer, encoder, conventions_version,
                            step, perceptual, train_config}
    train_state.safetensors + train_state.json
                           optimizer tensors / param groups, step, RNG states (torch, numpy, python),
                           data-sampler position; read back with safetensors + json only (no pickle)

Inference needs only ``ema.safetensors`` + ``config.json`` (:func:`load_model`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from triflow3d.conventions import CONVENTIONS_VERSION
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.models.triflow import TriFlow, TriFlowParams
from triflow3d.utils.io import atomic_path, write_json

FORMAT = "triflow3d.triflow.v1"
WEIGHTS, EMA_WEIGHTS, CONFIG = "model.safetensors", "ema.safetensors", "config.json"
STATE, STATE_JSON = "train_state.safetensors", "train_state.json"
LATEST = "latest.json"
_STEP_DIR = re.compile(r"^step-(\d{7})$")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP (``.module``) and torch.compile (``._orig_mod``): never save prefixes."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _cpu(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous() for k, v in sd.items()}


def weights_tensors(
    model: nn.Module, normalizer: LatentNormalizer, text_center: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """One self-contained weights dict: model, normalizer buffers and the optional text centre."""
    tensors = _cpu(unwrap(model).state_dict(), "model.") | _cpu(normalizer.state_dict(), "normalizer.")
    if text_center is not None:
        tensors["text.center"] = text_center.detach().float().cpu().contiguous()
    return tensors


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    ema: nn.Module,
    normalizer: LatentNormalizer,
    config: dict[str, Any],
    text_center: torch.Tensor | None = None,
    train_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (see the module docstring); ``config`` is config.json."""
    meta = {"format": FORMAT, "conventions_version": str(CONVENTIONS_VERSION)}
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(weights_tensors(model, normalizer, text_center), str(tmp / WEIGHTS), metadata=meta)
        save_file(weights_tensors(ema, normalizer, text_center), str(tmp / EMA_WEIGHTS), metadata=meta)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if train_state is not None:
            tensors, info = train_state
            save_file(tensors, str(tmp / STATE))
            (tmp / STATE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return Path(path)


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, checked for format and conventions version."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{path}: not a TriFlow checkpoint (no {CONFIG})")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON ({e})") from e
    if cfg.get("format") != FORMAT:
        raise CheckpointError(f"{file}: format {cfg.get('format')!r}, expected {FORMAT!r}")
    if cfg.get("conventions_version") != CONVENTIONS_VERSION:
        raise CheckpointError(
            f"{file}: saved under conventions v{cfg.get('conventions_version')}, this code is v{CONVENTIONS_VERSION}"
        )
    return cfg


def read_weights(path: str | Path, ema: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """{"model": ..., "normalizer": ..., "text": ...} state dicts from ema.safetensors (or model.safetensors)."""
    file = Path(path) / (EMA_WEIGHTS if ema else WEIGHTS)
    if not file.is_file():
        raise CheckpointError(f"{file}: weights file not found")
    try:
        flat = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: unreadable safetensors ({e})") from e
    out: dict[str, dict[str, torch.Tensor]] = {"model": {}, "normalizer": {}, "text": {}}
    for key, value in flat.items():
        group, _, name = key.partition(".")
        if group not in out:
            raise CheckpointError(f"{file}: unexpected tensor {key!r}")
        out[group][name] = value
    return out


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that names missing / unexpected keys in a CheckpointError."""
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


@dataclass
class LoadedModel:
    """What inference needs: the velocity model, the latent normaliser, the text centre (applied with
    ``TextEmbedding.centred``), config.json."""

    model: TriFlow
    normalizer: LatentNormalizer
    text_center: torch.Tensor | None
    config: dict[str, Any]


def load_model(path: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> LoadedModel:
    """Build TriFlow + LatentNormalizer from a checkpoint folder (EMA weights by default), in eval mode."""
    cfg = read_config(path)
    params = TriFlowParams(**cfg["triflow_params"])
    sd = read_weights(path, ema)
    with torch.device("meta"):
        model = TriFlow(params)
    model = model.to_empty(device="cpu")
    load_strict(model, sd["model"], str(path))
    normalizer = LatentNormalizer.from_config(cfg["normalizer"])
    load_strict(normalizer, sd["normalizer"], f"{path} (normalizer)")
    center = sd["text"].get("center")
    model.eval().requires_grad_(False)
    return LoadedModel(model.to(device), normalizer.to(device), center, cfg)


def check_compatible(ckpt_config: dict[str, Any], encoder: dict[str, Any], ckpt: str, latents: str) -> None:
    """ConfigError unless the latents come from the checkpoint's encoder with its triplane shape."""
    want = ckpt_config.get("encoder", {})
    got_shape = [int(s) for s in encoder.get("triplane_shape", [])]
    if encoder.get("encoder") != want.get("encoder") or got_shape != list(want.get("triplane_shape", [])):
        raise ConfigError(
            f"latents {latents} were made by encoder {encoder.get('encoder')!r} with triplane shape {got_shape}, "
            f"but checkpoint {ckpt} was trained on {want.get('encoder')!r} with {want.get('triplane_shape')}"
        )


# --- training state ----------------------------------------------------------------------------------
def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (tensors "optim.<param>.<name>", JSON param groups + non-tensor state)."""
    sd = opt.state_dict()
    tensors, extra = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                extra[f"{idx}.{name}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state_extra": extra}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in info["state_extra"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in info["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors + JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, py_gauss = random.getstate()
    info = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(py_state), py_gauss],
    }
    return tensors, info


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = info["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def read_train_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    folder = Path(path)
    if not (folder / STATE).is_file() or not (folder / STATE_JSON).is_file():
        raise CheckpointError(f"{folder}: no training state ({STATE} + {STATE_JSON}); cannot resume from it")
    return load_file(str(folder / STATE)), json.loads((folder / STATE_JSON).read_text())


# --- run folders -------------------------------------------------------------------------------------
def step_dir(run: str | Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:07d}"


def mark_latest(run: str | Path, ckpt: Path, step: int, keep: int) -> None:
    """Point RUN/checkpoints/latest.json at ``ckpt`` and delete all but the newest ``keep`` step folders."""
    root = Path(run) / "checkpoints"
    write_json(root / LATEST, {"path": ckpt.name, "step": step})
    steps = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    for old in steps[:-keep] if keep > 0 else []:
        if old != ckpt:
            shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / CONFIG).is_file() and ((p / EMA_WEIGHTS).is_file() or (p / WEIGHTS).is_file()):
        return p
    latest = p / "checkpoints" / LATEST
    if latest.is_file():
        return p / "checkpoints" / json.loads(latest.read_text())["path"]
    raise CheckpointError(
        f"{p}: neither a checkpoint folder ({CONFIG} + {EMA_WEIGHTS}) nor a run folder with checkpoints/{LATEST}"
    )


def params_dict(params: TriFlowParams) -> dict[str, Any]:
    return asdict(params)
