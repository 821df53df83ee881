"""Training TriFlow: config presets (``config``), checkpoints (``checkpoint``) and the loop (``trainer``).

``triflow3d train ...`` or ``torchrun --nproc_per_node G -m triflow3d.train ...``; see docs/training.md.
"""

from triflow3d.train.checkpoint import LoadedModel, load_model, resolve_checkpoint
from triflow3d.train.config import PRESETS, TrainConfig, preset
from triflow3d.train.trainer import Trainer, TrainingDivergedError, resume_config, train

__all__ = [
    "PRESETS",
    "LoadedModel",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "load_model",
    "preset",
    "resolve_checkpoint",
    "resume_config",
    "train",
]
