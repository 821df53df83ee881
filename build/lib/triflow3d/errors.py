"""The typed errors triflow3d raises for bad input. The CLI prints them as one line, no traceback."""

from __future__ import annotations


class TriflowError(Exception):
    """Base class: a problem with the user's input or files, reported without a traceback."""


# Why an asset failed (``AssetError.kind``), so batch reports can count failures by cause. See docs/assets.md.
ASSET_ERROR_KINDS: tuple[str, ...] = (
    "unsupported format",  # a file type (or glTF version) no loader here reads
    "unsupported extension",  # a glTF extension the file requires that we cannot honour
    "unreadable",  # malformed, truncated or garbage bytes; the parser gave up or crashed
    "missing file",  # the file, or a texture / buffer it references, is not there
    "too large",  # over the byte, face or vertex limits
    "invalid geometry",  # out-of-range indices, NaN / inf coordinates
    "no geometry",  # parsed, but no triangle was decoded (the reason says why)
    "empty after normalisation",  # all used vertices coincide: nothing to scale into the sphere
    "timeout",  # the loader ran past its time limit
    "rendered nothing",  # loaded fine, but no view shows a pixel of it
    "invalid",  # anything else
)


class AssetError(TriflowError):
    """A 3D asset could not be loaded or used. The message names the file and the reason.

    ``kind`` is one of :data:`ASSET_ERROR_KINDS` (for per-cause counts); ``reason`` is the readable cause.
    """

    def __init__(self, path: object, reason: str, kind: str = "invalid"):
        if kind not in ASSET_ERROR_KINDS:
            raise ValueError(f"unknown AssetError kind {kind!r}")
        self.path, self.reason, self.kind = str(path), reason, kind
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keeps kind through pickling (the isolated loader's pipe)
        return (AssetError, (self.path, self.reason, self.kind))


class CheckpointError(TriflowError):
    """A checkpoint or model folder is missing, malformed, or does not match what it is loaded into."""


class ConfigError(TriflowError):
    """An invalid configuration value or combination."""
