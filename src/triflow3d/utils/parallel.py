"""Ordered, thread-parallel map for I/O-bound loading (PNG decoding, mesh tests release the GIL)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order; ``workers <= 1`` runs inline.

    An exception raised by ``fn`` is re-raised when its result is reached, as with ``map``.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)
