"""``triflow3d reconstruct``: the latent encoder used on its own (views folder or asset -> mesh + renders)."""

from triflow3d.recon.cli import add_reconstruct_arguments as add_arguments
from triflow3d.recon.cli import run

__all__ = ["add_arguments", "run"]
