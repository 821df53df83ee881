"""Image-to-triplane reconstructors (InstantMesh re-implementation and our own ``lrm-small``).

``load_reconstructor("instantmesh-nerf-large", checkpoint="instant_nerf_large.ckpt")`` returns a
:class:`TriplaneReconstructor`: ``forward_planes(images, cameras)`` -> (B, 3, C, R, R) triplanes, plus
``query``, ``render`` and ``extract_mesh`` through the frozen field decoder. See docs/encoders.md.
"""

from triflow3d.encoders.loading import (
    RECONSTRUCTOR_PRESETS,
    build_reconstructor,
    list_reconstructors,
    load_reconstructor,
    parse_encoder_spec,
    read_checkpoint,
    resolve_config,
    save_reconstructor,
)
from triflow3d.encoders.reconstructor import ReconstructorConfig, TriplaneReconstructor

__all__ = [
    "RECONSTRUCTOR_PRESETS",
    "ReconstructorConfig",
    "TriplaneReconstructor",
    "build_reconstructor",
    "list_reconstructors",
    "load_reconstructor",
    "parse_encoder_spec",
    "read_checkpoint",
    "resolve_config",
    "save_reconstructor",
]
