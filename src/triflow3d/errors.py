"""The typed errors triflow3d raises for bad input. The CLI prints them as one line, no traceback."""

from __future__ import annotations


class TriflowError(Exception):
    """Base class: a problem with the user's input or files, reported without a traceback."""


class AssetError(TriflowError):
    """A 3D asset could not be loaded or used. The message names the file and the reason."""

    def __init__(self, path: object, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(TriflowError):
    """A checkpoint or model folder is missing, malformed, or does not match what it is loaded into."""


class ConfigError(TriflowError):
    """An invalid configuration value or combination."""
