"""Triplane fields: plane sampling, the InstantMesh decoders, volume rendering and mesh extraction.

Conventions (plane axes, box, density activation, rgb clamp) come from :mod:`triflow3d.conventions`.
"""

from triflow3d.triplane.decoder import MeshDecoder, NerfDecoder, density_from_raw, rgb_from_raw
from triflow3d.triplane.field import TriplaneField
from triflow3d.triplane.sampling import planes_to_features, project_to_planes, sample_planes

__all__ = [
    "MeshDecoder",
    "NerfDecoder",
    "TriplaneField",
    "density_from_raw",
    "planes_to_features",
    "project_to_planes",
    "rgb_from_raw",
    "sample_planes",
]
