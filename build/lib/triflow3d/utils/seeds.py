"""Seeds derived from integers, so every random stream of a run is a pure function of (seed, step, ...)."""

from __future__ import annotations

import hashlib


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (sha256, so nearby inputs give unrelated streams)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
