"""The procedural captioned shape benchmark: parametric objects, captions, attributes and splits.

See docs/shapes.md. ``make_shape(seed, split)`` builds one sample; ``sample_spec`` gives its caption and
attributes without building geometry; ``shape_solid`` gives the watertight union for inside tests.
"""

from triflow3d.shapes.categories import CATEGORIES
from triflow3d.shapes.generate import (
    SHAPES_VERSION,
    ShapeSample,
    ShapeSpec,
    build_asset,
    make_shape,
    sample_spec,
    shape_solid,
)
from triflow3d.shapes.palette import COLOURS, PALETTE
from triflow3d.shapes.splits import HELDOUT_COMBOS, SPLITS, sample_id, sample_seed

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "HELDOUT_COMBOS",
    "PALETTE",
    "SHAPES_VERSION",
    "SPLITS",
    "ShapeSample",
    "ShapeSpec",
    "build_asset",
    "make_shape",
    "sample_id",
    "sample_seed",
    "sample_spec",
    "shape_solid",
]
