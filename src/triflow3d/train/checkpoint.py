"""TriFlow training checkpoints: a model folder plus the training state, in a run folder's checkpoints/.

A checkpoint folder (written atomically) is a model folder of :mod:`triflow3d.models.model_folder`
(``model.safetensors``, ``ema.safetensors``, ``config.json``) plus::

    train_state.safetensors + train_state.json
                           optimizer tensors / param groups, step, RNG states (torch, numpy, python),
                           data-sampler position; read back with safetensors + json only (no pickle)

Inference needs only the model folder (:func:`triflow3d.models.model_folder.load_model`).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.latents.normalizer import LatentNormalizer

# The model folder, used by the trainer through this module (``ck.read_weights`` ...) until its split;
# new code imports these from triflow3d.models.model_folder.
from triflow3d.models.model_folder import (  # noqa: F401
    CHECKPOINTS,
    CONFIG,
    EMA_WEIGHTS,
    FORMAT,
    LATEST,
    WEIGHTS,
    load_strict,
    params_dict,
    read_config,
    read_weights,
    resolve_checkpoint,
    write_config,
    write_weights,
)
from triflow3d.utils.io import atomic_path, write_json

STATE, STATE_JSON = "train_state.safetensors", "train_state.json"
_STEP_DIR = re.compile(r"^step-(\d{7})$")


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
    with atomic_path(path) as tmp:
        tmp.mkdir()
        write_weights(tmp / WEIGHTS, model, normalizer, text_center)
        write_weights(tmp / EMA_WEIGHTS, ema, normalizer, text_center)
        write_config(tmp, config)
        if train_state is not None:
            tensors, info = train_state
            save_file(tensors, str(tmp / STATE))
            (tmp / STATE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return Path(path)


def check_compatible(
    ckpt_config: dict[str, Any], encoder: dict[str, Any], ckpt: str, latents: str, grow: bool = False
) -> None:
    """ConfigError unless the latents come from the checkpoint's encoder with its triplane shape; with
    ``grow``, the latents may carry more channels than the checkpoint's (appended ones, ``--grow``)."""
    want = ckpt_config.get("encoder", {})
    want_shape = [int(s) for s in want.get("triplane_shape", [])]
    got_shape = [int(s) for s in encoder.get("triplane_shape", [])]
    grown = (
        grow and len(got_shape) == len(want_shape) == 4 and got_shape[1] > want_shape[1]
        and got_shape[::2] == want_shape[::2] and got_shape[3] == want_shape[3]
    )  # fmt: skip
    if encoder.get("encoder") != want.get("encoder") or (got_shape != want_shape and not grown):
        more = " (--grow: the same shape with more channels)" if grow else ""
        raise ConfigError(
            f"latents {latents} were made by encoder {encoder.get('encoder')!r} with triplane shape {got_shape}, "
            f"but checkpoint {ckpt} was trained on {want.get('encoder')!r} with {want.get('triplane_shape')}{more}"
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
    return Path(run) / CHECKPOINTS / f"step-{step:07d}"


def mark_latest(run: str | Path, ckpt: Path, step: int, keep: int) -> None:
    """Point RUN/checkpoints/latest.json at ``ckpt`` and delete all but the newest ``keep`` step folders."""
    root = Path(run) / CHECKPOINTS
    write_json(root / LATEST, {"path": ckpt.name, "step": step})
    steps = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))
    for old in steps[:-keep] if keep > 0 else []:
        if old != ckpt:
            shutil.rmtree(old, ignore_errors=True)
