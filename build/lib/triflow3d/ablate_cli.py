"""``triflow3d ablate``: the ablation study of ``train.ablate`` with each variant measured by ``evaluate``.

An app on top of two stages: training (``triflow3d.train.ablate``) and evaluation
(``triflow3d.evaluation``); see docs/ablations.md.
"""

from __future__ import annotations

import argparse
import shlex
from functools import partial
from pathlib import Path
from typing import Any

from triflow3d.evaluation.evaluate import EvalConfig
from triflow3d.train import ablate as ab


def load_config(path: str | Path) -> ab.AblationConfig:
    """An ablation JSON file, its evaluation settings checked too."""
    return ab.load_config(path, check_eval=EvalConfig.from_dict)


def evaluate_variant(cfg: ab.AblationConfig, progress: bool, run_dir: Path, out: Path) -> dict[str, Any]:
    """``evaluate`` on the variant's last checkpoint (EMA weights) with the ablation's eval settings."""
    from triflow3d.encoders import load_reconstructor
    from triflow3d.evaluation.evaluate import evaluate
    from triflow3d.pipeline import TextTo3DPipeline
    from triflow3d.train.checkpoint import resolve_checkpoint

    recon = load_reconstructor(cfg.reconstructor) if cfg.reconstructor else None
    pipe = TextTo3DPipeline.from_pretrained(resolve_checkpoint(run_dir), reconstructor=recon)
    return evaluate(pipe, EvalConfig.from_dict(cfg.eval), out, str(run_dir), progress=progress)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="ablation JSON (see configs/ablate_small.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder (variants/, ablations.md/.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    command = shlex.join(["triflow3d", "ablate", "--config", str(args.config), "--out", str(args.out)])
    ab.ablate(cfg, args.out, command, partial(evaluate_variant, cfg, not args.no_progress))
    print(f"table: {args.out / 'ablations.md'}")
    return 0
