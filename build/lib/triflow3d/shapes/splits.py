"""Benchmark splits: per-sample seeds from (split, index) and the held-out (category, colour) combinations.

See docs/shapes.md. Everything here is part of the benchmark definition: changing it changes the data.
"""

from __future__ import annotations

import hashlib
from typing import Final

from triflow3d.errors import ConfigError

SPLITS: Final[tuple[str, ...]] = ("train", "val", "test")
_SPLIT_CODE: Final[dict[str, int]] = {"train": 0, "val": 1, "test": 2}

# One main colour per category that train and val never produce; test produces it with probability
# P_HELDOUT_TEST (and marks the sample "heldout_combo": true), otherwise a seen combination.
HELDOUT_COMBOS: Final[dict[str, str]] = {
    "chair": "green",
    "table": "blue",
    "stool": "red",
    "bench": "purple",
    "lamp": "orange",
    "mug": "yellow",
    "bottle": "pink",
    "vase": "grey",
    "car": "white",
    "shelf": "black",
    "rocket": "brown",
    "tree": "pink",
    "house": "yellow",
}
P_HELDOUT_TEST: Final[float] = 0.25


def check_split(split: str) -> str:
    if split not in _SPLIT_CODE:
        raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def sample_seed(split: str, index: int, offset: int = 0) -> int:
    """The seed of sample ``index`` of ``split``: a 64-bit hash, tagged with the split in its low 2 bits.

    Seeds of different splits therefore never coincide (``seed % 4`` is the split code), and all seeds
    are below 2**50 so they survive JSON readers that use doubles. ``offset`` selects another stream
    (0 is the canonical benchmark).
    """
    code = _SPLIT_CODE[check_split(split)]
    if index < 0:
        raise ConfigError(f"sample index must be >= 0, got {index}")
    digest = hashlib.blake2b(f"triflow3d-shapes:{split}:{offset}:{index}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 16) * 4 + code


def split_of_seed(seed: int) -> str | None:
    """The split a :func:`sample_seed` seed belongs to (None for seed % 4 == 3, which no split uses)."""
    code = seed % 4
    return SPLITS[code] if code < len(SPLITS) else None


def sample_id(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def is_heldout(category: str, colour: str) -> bool:
    return HELDOUT_COMBOS.get(category) == colour
