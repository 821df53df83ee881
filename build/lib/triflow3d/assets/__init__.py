"""3D assets: load files into world-space parts, normalise them, and (export.py) write GLB files.

Light imports only (numpy, trimesh, pillow); no torch.
"""

from triflow3d.assets.load import (
    SUPPORTED_EXTENSIONS,
    iter_asset_files,
    load_asset,
    load_asset_isolated,
)
from triflow3d.assets.normalize import normalization_transform, normalize
from triflow3d.assets.types import Asset, MeshPart
from triflow3d.errors import AssetError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Asset",
    "AssetError",
    "MeshPart",
    "iter_asset_files",
    "load_asset",
    "load_asset_isolated",
    "normalization_transform",
    "normalize",
]
