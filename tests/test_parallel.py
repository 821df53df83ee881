"""The ordered parallel map (threads or spawned processes) used by the loaders."""

from __future__ import annotations

import time

import pytest

from triflow3d.utils.parallel import ordered_map


def _slow_square(x: int) -> int:
    time.sleep(0.01 * (5 - x))  # later items finish first
    return x * x


@pytest.mark.parametrize("workers", [1, 4])
def test_results_come_in_input_order(workers):
    assert list(ordered_map(_slow_square, range(5), workers)) == [0, 1, 4, 9, 16]


def test_an_error_is_raised_where_its_result_is_reached():
    def f(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    it = ordered_map(f, range(4), workers=3)
    assert next(it) == 0 and next(it) == 1
    with pytest.raises(ValueError, match="two"):
        next(it)


def test_spawned_processes_keep_the_order():
    import math

    assert list(ordered_map(math.factorial, range(20), workers=2, processes=True)) == [
        math.factorial(i) for i in range(20)
    ]
