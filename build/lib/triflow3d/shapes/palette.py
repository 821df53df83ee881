"""The fixed colour palette of the shape benchmark: named sRGB colours, caption synonyms, jitter."""

from __future__ import annotations

from typing import Final

import numpy as np

# Named sRGB colours in [0, 1]. The order is part of the benchmark definition: do not reorder.
PALETTE: Final[dict[str, tuple[float, float, float]]] = {
    "red": (0.80, 0.12, 0.12),
    "orange": (0.95, 0.50, 0.10),
    "yellow": (0.95, 0.83, 0.15),
    "green": (0.20, 0.60, 0.22),
    "blue": (0.15, 0.33, 0.80),
    "purple": (0.50, 0.22, 0.65),
    "pink": (0.96, 0.56, 0.72),
    "white": (0.92, 0.92, 0.90),
    "black": (0.09, 0.09, 0.10),
    "brown": (0.48, 0.30, 0.15),
    "grey": (0.52, 0.52, 0.54),
}
COLOURS: Final[tuple[str, ...]] = tuple(PALETTE)

# Caption words per colour; the first is the canonical name and is used most often.
COLOUR_SYNONYMS: Final[dict[str, tuple[str, ...]]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "lemon yellow", "bright yellow"),
    "green": ("green", "emerald green", "grass green"),
    "blue": ("blue", "cobalt blue", "royal blue"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "rose pink", "light pink"),
    "white": ("white", "ivory", "snow white"),
    "black": ("black", "jet black", "pitch black"),
    "brown": ("brown", "chocolate brown", "dark brown"),
    "grey": ("grey", "gray", "ash grey"),
}

JITTER: Final[float] = 0.035  # max per-channel sRGB offset added to a palette colour per object


def quantize(rgb: np.ndarray) -> np.ndarray:
    """Round colours to multiples of 1/255 (what 8-bit files store), so files round-trip exactly."""
    return (np.round(np.clip(np.asarray(rgb, dtype=np.float64), 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def jittered(name: str, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """The palette colour ``name`` with a small uniform per-channel jitter, quantised, as RGBA."""
    base = np.asarray(PALETTE[name], dtype=np.float64)
    rgb = quantize(base + rng.uniform(-JITTER, JITTER, size=3))
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)


def colour_word(name: str, rng: np.random.Generator, p_canonical: float = 0.6) -> str:
    """A caption word for the colour: the canonical name with probability ``p_canonical``, else a synonym."""
    words = COLOUR_SYNONYMS[name]
    if len(words) == 1 or rng.random() < p_canonical:
        return words[0]
    return str(words[int(rng.integers(1, len(words)))])
