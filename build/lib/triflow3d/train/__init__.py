"""Training TriFlow: config presets (``config``), checkpoints (``checkpoint``) and the loop (``trainer``).

``triflow3d train ...`` or ``torchrun --nproc_per_node G -m triflow3d.train ...``; see docs/training.md.
Nothing is imported here, so reading a model folder (``triflow3d.models.model_folder``) never loads the
training loop; import from the submodules (``from triflow3d.train.trainer import Trainer``).
"""
