"""Rank 0's sinks of a TriFlow run: metrics.jsonl, TensorBoard under tb/, and train.log."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from triflow3d.utils.io import append_jsonl

logger = logging.getLogger("triflow3d.train")


class RunLogger:
    """Rank 0's sinks: metrics.jsonl (one row per logged step), TensorBoard under tb/, and train.log."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled, self.tb = out, enabled, None
        self.handler: logging.Handler | None = None

    def open(self) -> None:
        if not self.enabled or self.handler is not None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.out / "train.log")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(self.handler)
        logger.setLevel(logging.INFO)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))
        except ImportError:  # tensorboard is the [train] extra
            logger.warning("tensorboard is not installed; logging to metrics.jsonl only")

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.out / "metrics.jsonl", [{"step": step, **values}])
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)

    def images(self, tag: str, images: Tensor, step: int) -> None:
        if self.tb is not None:
            self.tb.add_images(tag, images.clamp(0, 1).cpu(), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.handler is not None:
            logger.removeHandler(self.handler)
            self.handler.close()
        self.tb = self.handler = None
