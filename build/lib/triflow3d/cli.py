"""The ``triflow3d`` command line: one subcommand per stage.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only for the command that runs, so ``triflow3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from triflow3d import __version__
from triflow3d.errors import TriflowError

# name -> (module, one-line help). Keep in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "shapes": ("triflow3d.shapes.cli", "make the procedural captioned shape benchmark"),
    "render": ("triflow3d.render.cli", "render assets to multi-view RGBA images + cameras"),
    "recon": ("triflow3d.recon.cli", "train / evaluate / export our reconstructor; reconstruct one object"),
    "reconstruct": (
        "triflow3d.recon.reconstruct_cli",
        "one object's views or an asset -> what the encoder captures",
    ),
    "encode": ("triflow3d.encode", "encode rendered views into triplane latent shards"),
    "latents": ("triflow3d.latents.cli", "latent statistics, spatial loss weights and an inspection report"),
    "train": ("triflow3d.train.cli", "train the TriFlow rectified-flow transformer on triplane latents"),
    "generate": (
        "triflow3d.generate_cli",
        "text -> 3D: generate meshes, turntables and triplanes from prompts",
    ),
    "eval": ("triflow3d.evaluation.cli", "evaluate a model on the shape benchmark: metrics, report, figures"),
    "ablate": (
        "triflow3d.ablate_cli",
        "matched small trainings of design variants, evaluated and tabled",
    ),
    "serve": ("triflow3d.serve", "local web app: text -> 3D and reconstruction in the browser (gradio)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triflow3d",
        description="Text-to-3D with a frozen feed-forward reconstruction model as latent encoder.",
    )
    parser.add_argument("--version", action="version", version=f"triflow3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Idle OpenMP threads sleep instead of spinning (libgomp reads this once, when torch is imported,
    # which is below). On a shared CPU spinning threads take the cores from the threads doing the work:
    # `triflow3d reconstruct` ran 4-10x slower beside one other job (docs/encoders.md). An explicit
    # setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except TriflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
