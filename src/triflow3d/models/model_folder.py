"""A TriFlow model folder: safetensors weights + a JSON config, read by inference and written by training.

A model folder (a training checkpoint, or what ``TextTo3DPipeline.save_pretrained`` writes)::

    model.safetensors      "model.*" (the unwrapped TriFlow state_dict), "normalizer.*" (LatentNormalizer
                           buffers), optional "text.center" (the pooled-embedding centre)
    ema.safetensors        the same keys with the EMA weights (what sampling loads by default)
    config.json            {format, triflow_params, text_encoder, normalizer, encoder, conventions_version, ...}

A training run folder keeps its model folders as ``RUN/checkpoints/step-NNNNNNN`` and names the newest in
``RUN/checkpoints/latest.json`` (:func:`resolve_checkpoint` follows it). The training state that sits
beside the weights in a checkpoint is :mod:`triflow3d.train.checkpoint`'s.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from triflow3d.conventions import CONVENTIONS_VERSION
from triflow3d.errors import CheckpointError
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.models.triflow import TriFlow, TriFlowParams

FORMAT = "triflow3d.triflow.v1"
WEIGHTS, EMA_WEIGHTS, CONFIG = "model.safetensors", "ema.safetensors", "config.json"
CHECKPOINTS, LATEST = "checkpoints", "latest.json"  # RUN/checkpoints/latest.json -> {"path", "step"}


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


def write_weights(
    path: Path, model: nn.Module, normalizer: LatentNormalizer, text_center: torch.Tensor | None
) -> None:
    """One weights file (``WEIGHTS`` or ``EMA_WEIGHTS`` of a folder being written)."""
    meta = {"format": FORMAT, "conventions_version": str(CONVENTIONS_VERSION)}
    save_file(weights_tensors(model, normalizer, text_center), str(path), metadata=meta)


def write_config(folder: Path, config: dict[str, Any]) -> None:
    (Path(folder) / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def params_dict(params: TriFlowParams) -> dict[str, Any]:
    return asdict(params)


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a model folder, checked for format and conventions version."""
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
    if ema and not file.is_file() and (Path(path) / WEIGHTS).is_file():
        file = Path(path) / WEIGHTS  # a packaged model folder holds its (EMA) weights as model.safetensors
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
    """Build TriFlow + LatentNormalizer from a model folder (EMA weights by default), in eval mode."""
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


def resolve_checkpoint(path: str | Path) -> Path:
    """A model folder, or a training run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / CONFIG).is_file() and ((p / EMA_WEIGHTS).is_file() or (p / WEIGHTS).is_file()):
        return p
    latest = p / CHECKPOINTS / LATEST
    if latest.is_file():
        return p / CHECKPOINTS / json.loads(latest.read_text())["path"]
    raise CheckpointError(
        f"{p}: neither a checkpoint folder ({CONFIG} + {EMA_WEIGHTS}) nor a run folder with "
        f"{CHECKPOINTS}/{LATEST}"
    )
