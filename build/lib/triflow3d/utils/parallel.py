"""Ordered parallel map for loading: threads for I/O-bound work (PNG decoding releases the GIL),
processes for Python-bound work (mesh inside/outside tests)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int = 1, processes: bool = False
) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads (or spawned processes), results in input order;
    ``workers <= 1`` runs inline. With ``processes``, ``fn`` and the items must pickle (``fn`` defined
    at module level). An exception raised by ``fn`` is re-raised when its result is reached, as with ``map``.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pool: Executor
    if processes:  # spawn, not fork: the parent may hold CUDA state and threads
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
    with pool:
        yield from pool.map(fn, items, chunksize=8 if processes else 1)
