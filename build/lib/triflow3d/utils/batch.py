"""How batch commands (render, shapes make, encode, generate) treat an input that fails.

One rule for all of them (docs/assets.md, "Batch commands"): every failed input is reported on stderr
as ``failed: <input>: <reason>`` (and in the command's manifest or log); by default the command stops at
the first failure, and ``--keep-going`` attempts every input. The exit status is 1 when any input
failed, with or without ``--keep-going``, and 0 only when every input was done (now or by an earlier run).
"""

from __future__ import annotations

import argparse
import sys

KEEP_GOING_HELP = (
    "go on after an input fails (default: stop at the first failure); each failure is reported and "
    "the exit status is 1 whenever any input failed"
)


def add_keep_going(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-going", action="store_true", help=KEEP_GOING_HELP)


def report_failure(item: object, reason: str) -> None:
    print(f"failed: {item}: {reason}", file=sys.stderr)


def exit_status(failed: int, not_attempted: int = 0) -> int:
    """1 when any input failed, else 0; says how many inputs a stop at the first failure left out."""
    if not_attempted:
        print(
            f"stopped at the first failure: {not_attempted} input(s) not attempted "
            "(--keep-going goes on past failed inputs)",
            file=sys.stderr,
        )
    return 1 if failed else 0
