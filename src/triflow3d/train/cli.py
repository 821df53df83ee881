"""``triflow3d train`` (and ``python -m triflow3d.train``): flags generated from ``TrainConfig``.

A preset (``--preset``) gives the defaults; every ``TrainConfig`` field is a flag that overrides it
(``--lr 3e-4``, ``--bf16/--no-bf16``, ``--normalizer-clamp none``). ``--resume RUN_OR_CKPT`` continues a
run with its saved config (flags given still override); ``--init CKPT`` fine-tunes from a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from triflow3d.errors import TriflowError
from triflow3d.train.config import PRESETS, TrainConfig


def _optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _flag_kwargs(hint: Any) -> dict[str, Any]:
    """argparse keyword arguments for one TrainConfig field type."""
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return {"type": _optional(inner)}
    if typing.get_origin(hint) is tuple:
        return {"nargs": "+", "type": args[0]}
    return {"type": hint}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", default="small", choices=sorted(PRESETS), help="defaults (default: small)"
    )
    parser.add_argument("--init", help="fine-tune from this checkpoint (or run folder): weights only")
    parser.add_argument(
        "--grow",
        action="store_true",
        help="with --init: the latents carry extra channels appended by a grown encoder (recon grow); the "
        "model grows to them, starting as the checkpoint's on the old channels",
    )
    parser.add_argument("--resume", help="continue this run folder (or checkpoint) exactly, with its config")
    parser.add_argument(
        "--time-budget", type=float, help="seconds: shorten --steps so the run ends in time (Trainer.fit)"
    )
    hints = typing.get_type_hints(TrainConfig)
    group = parser.add_argument_group("TrainConfig fields (override the preset)")
    for f in dataclasses.fields(TrainConfig):
        help_text = f.metadata.get("help", "")
        flags = [f"--{f.name.replace('_', '-')}"] + (["--data"] if f.name == "latents" else [])
        group.add_argument(
            *flags,
            dest=f.name,
            default=argparse.SUPPRESS,
            help=help_text.replace("%", "%%"),
            **_flag_kwargs(hints[f.name]),
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)
    }
    if "sample_prompts" in overrides:
        overrides["sample_prompts"] = tuple(overrides["sample_prompts"])
    if args.resume:
        from triflow3d.train.trainer import resume_config

        return resume_config(args.resume, **overrides)
    return PRESETS[args.preset].replace(**overrides)


def run(args: argparse.Namespace) -> int:
    from triflow3d.train.trainer import train

    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s"
    )
    cfg = config_from_args(args)
    stats = train(cfg, init=args.init, resume=args.resume, time_budget=args.time_budget, grow=args.grow)
    if rank == 0:
        loss = stats.get("loss", float("nan"))
        print(f"trained: loss {loss:.4f}; checkpoints in {cfg.out}/checkpoints")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triflow3d.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except TriflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
