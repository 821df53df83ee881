"""Deterministic captioned shapes: seed -> spec (attributes + caption, no geometry) -> asset / solid.

Randomness: every draw comes from ``Generator(PCG64([seed, stream]))`` with one stream per concern
(choices, geometry, paint, caption, texture), so e.g. changing a caption template never moves geometry.
No global RNG is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

import manifold3d as m3
import numpy as np
import trimesh

from triflow3d.assets.types import Asset, MeshPart
from triflow3d.conventions import OBJECT_RADIUS
from triflow3d.errors import ConfigError
from triflow3d.shapes.captions import compose_caption
from triflow3d.shapes.categories import CATEGORIES, Draft
from triflow3d.shapes.palette import COLOURS, jittered
from triflow3d.shapes.parts import manifold_to_trimesh, region_solids, whole_solid
from triflow3d.shapes.splits import HELDOUT_COMBOS, P_HELDOUT_TEST, check_split, is_heldout
from triflow3d.shapes.textures import box_uv, cylindrical_uv, make_texture

SHAPES_VERSION: Final[int] = 1  # bump when any change alters the samples a seed produces
FILL_RADIUS: Final[float] = 0.9  # objects are scaled so their farthest vertex is here (< OBJECT_RADIUS)
P_PLAIN: Final[float] = 0.55  # probability that a category with patterns still gets a plain main colour
SMOOTH_ANGLE_DEG: Final[float] = 40.0  # edges sharper than this are split for shading normals
_STREAM_CHOICE, _STREAM_GEOMETRY, _STREAM_PAINT, _STREAM_CAPTION, _STREAM_TEXTURE = range(5)
assert FILL_RADIUS < OBJECT_RADIUS


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, stream]))


@dataclass(frozen=True)
class Paint:
    """One colour group of the object: the regions that share a palette colour become one solid."""

    name: str  # "main" for the main colour's group, else the first region's name
    colour: str
    rgba: tuple[float, float, float, float]
    regions: tuple[str, ...]


@dataclass(frozen=True)
class ShapeSpec:
    seed: int
    split: str
    category: str
    colour: str
    draft: Draft
    paints: tuple[Paint, ...]  # priority order (earlier wins where solids overlap)
    region_colours: dict  # region name -> palette colour
    pattern: str  # "plain" | "stripes" | "checker" | "wood" (on the main group)
    pattern_colour: str | None
    style: str  # "texture" | "vertex" | "material": how colours are stored in the asset
    caption: str
    heldout_combo: bool

    @property
    def colours(self) -> list[str]:
        """The main colour first, then the texture's second colour and the other groups' colours."""
        extra = [self.pattern_colour] if self.pattern_colour else []
        extra += [p.colour for p in self.paints]
        return [self.colour, *dict.fromkeys(c for c in extra if c != self.colour)]

    def attributes(self) -> dict:
        return {
            "category": self.category,
            "colour": self.colour,
            "colours": self.colours,
            "parts": dict(self.draft.parts),
            "size": self.draft.size,
            "pattern": self.pattern,
            "style": self.style,
            "regions": {p.name: p.colour for p in self.paints},
            "heldout_combo": self.heldout_combo,
        }


@dataclass(frozen=True)
class ShapeSample:
    asset: Asset
    caption: str
    attributes: dict
    seed: int


# --- spec (cheap: no geometry) ------------------------------------------------------------------------


def _choose(seed: int, split: str, category: str | None, colour: str | None) -> tuple[str, str, bool]:
    """Category, main colour and whether the pair is a held-out combination (test split only)."""
    rng = _rng(seed, _STREAM_CHOICE)
    names = tuple(CATEGORIES)
    cat = names[int(rng.integers(len(names)))] if category is None else category
    if cat not in CATEGORIES:
        raise ConfigError(f"unknown shape category {cat!r}; expected one of {', '.join(names)}")
    if colour is not None:
        if colour not in COLOURS:
            raise ConfigError(f"unknown colour {colour!r}; expected one of {', '.join(COLOURS)}")
        if split != "test" and is_heldout(cat, colour):
            raise ConfigError(f"({cat}, {colour}) is a held-out combination: only the test split produces it")
        return cat, colour, is_heldout(cat, colour)
    if split == "test" and rng.random() < P_HELDOUT_TEST:
        return cat, HELDOUT_COMBOS[cat], True
    seen = [c for c in COLOURS if not is_heldout(cat, c)]
    return cat, seen[int(rng.integers(len(seen)))], False


def _pick_region_colours(draft: Draft, main: str, rng: np.random.Generator) -> dict[str, str]:
    used = {p.region for p in draft.prims if not p.hole}
    out = {}
    for region in draft.regions:
        if region.name not in used:
            continue
        choice = "main" if region.name == "main" else region.choices[int(rng.integers(len(region.choices)))]
        out[region.name] = main if choice == "main" else choice
    return out


def _paints(
    draft: Draft, main: str, region_colours: dict[str, str], rng: np.random.Generator
) -> tuple[Paint, ...]:
    """Group regions by colour (the main colour's group is named "main"); one jittered RGBA per colour."""
    groups: dict[str, list[str]] = {}
    for region in draft.regions:
        if region.name in region_colours:
            groups.setdefault(region_colours[region.name], []).append(region.name)
    rgba = {c: jittered(c, rng) for c in groups}
    return tuple(
        Paint("main" if c == main else "+".join(names), c, rgba[c], tuple(names))
        for c, names in groups.items()
    )


def sample_spec(seed: int, split: str, category: str | None = None, colour: str | None = None) -> ShapeSpec:
    """Everything about sample ``seed`` except its geometry: attributes, colours and caption (fast)."""
    check_split(split)
    cat, main, heldout = _choose(seed, split, category, colour)
    draft = CATEGORIES[cat](_rng(seed, _STREAM_GEOMETRY))
    rng = _rng(seed, _STREAM_PAINT)
    pattern = "plain"
    if len(draft.patterns) > 1 and rng.random() >= P_PLAIN:
        pattern = draft.patterns[1 + int(rng.integers(len(draft.patterns) - 1))]
    pattern_colour = None
    if pattern in ("stripes", "checker"):
        others = [c for c in COLOURS if c != main]
        pattern_colour = others[int(rng.integers(len(others)))]
    style = "texture" if pattern != "plain" else ("vertex", "material")[int(rng.integers(2))]
    region_colours = _pick_region_colours(draft, main, rng)
    paints = _paints(draft, main, region_colours, rng)
    caption = compose_caption(
        draft, main, pattern, pattern_colour, region_colours, _rng(seed, _STREAM_CAPTION)
    )
    return ShapeSpec(
        seed,
        split,
        cat,
        main,
        draft,
        paints,
        region_colours,
        pattern,
        pattern_colour,
        style,
        caption,
        heldout,
    )


# --- geometry ------------------------------------------------------------------------------------------


def _normaliser(whole: m3.Manifold) -> np.ndarray:  # (3, 4)
    """Centre the bounding box on the origin and put the farthest vertex at FILL_RADIUS."""
    v = np.asarray(whole.to_mesh().vert_properties, dtype=np.float64)[:, :3]
    centre = (v.min(axis=0) + v.max(axis=0)) / 2
    scale = FILL_RADIUS / float(np.linalg.norm(v - centre, axis=1).max())
    m = np.zeros((3, 4))
    m[:, :3], m[:, 3] = np.eye(3) * scale, -centre * scale
    return m


def _solids(spec: ShapeSpec) -> tuple[m3.Manifold, dict[str, m3.Manifold]]:
    """The whole object and one disjoint watertight solid per paint group, centred and scaled."""
    group_of = {r: p.name for p in spec.paints for r in p.regions}
    prims = [p if p.hole else replace(p, region=group_of[p.region]) for p in spec.draft.prims]
    whole = whole_solid(prims)
    m = _normaliser(whole)
    groups = region_solids(prims, [p.name for p in spec.paints])
    return whole.transform(m), {name: s.transform(m) for name, s in groups.items()}


def shape_solid(spec: ShapeSpec) -> trimesh.Trimesh:
    """The watertight union of all parts, in the asset's frame (for occupancy / inside tests)."""
    return manifold_to_trimesh(_solids(spec)[0])


def _unit_normals(n: np.ndarray) -> np.ndarray:  # (N, 3) float32, +z where degenerate
    """Unit normals in float32 that renormalising (in float64, then rounding) leaves unchanged."""
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    out = np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0])).astype(np.float32)
    for _ in range(3):  # float32 rounding can leave a 1-ulp change; iterate to the fixed point
        n64 = out.astype(np.float64)
        out = (n64 / np.linalg.norm(n64, axis=1, keepdims=True)).astype(np.float32)
    return out


def _textured_part(mesh: trimesh.Trimesh, spec: ShapeSpec, paint: Paint) -> MeshPart:
    """Unweld the faces, project uv (glTF convention) and draw the pattern texture."""
    corners, normals = mesh.vertices[mesh.faces], _unit_normals(mesh.vertex_normals)[mesh.faces]  # (F, 3, 3)
    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    if spec.draft.uv == "cylinder":
        uv = cylindrical_uv(corners, lo, hi)
    else:
        uv = box_uv(corners, mesh.face_normals, lo, hi)
    second = (
        jittered(spec.pattern_colour, _rng(spec.seed, _STREAM_TEXTURE)) if spec.pattern_colour else paint.rgba
    )
    texture = make_texture(spec.pattern, paint.rgba, second, _rng(spec.seed, _STREAM_TEXTURE))
    n = len(mesh.faces)
    return MeshPart(
        vertices=corners.reshape(-1, 3).astype(np.float32),
        faces=np.arange(3 * n, dtype=np.int64).reshape(n, 3),
        normals=normals.reshape(-1, 3),
        uv=uv.reshape(-1, 2).astype(np.float32),
        texture=texture,
        name=paint.name,
    )


def _paint_part(solid: m3.Manifold, spec: ShapeSpec, paint: Paint) -> MeshPart:
    mesh = trimesh.graph.smooth_shade(
        manifold_to_trimesh(solid), math.radians(SMOOTH_ANGLE_DEG), facet_minarea=None
    )
    if paint.name == "main" and spec.style == "texture":
        return _textured_part(mesh, spec, paint)
    v = mesh.vertices.astype(np.float32)
    normals = _unit_normals(mesh.vertex_normals)
    part = MeshPart(vertices=v, faces=mesh.faces.astype(np.int64), normals=normals, name=paint.name)
    if spec.style == "vertex":
        return replace(part, vertex_colors=np.tile(np.asarray(paint.rgba, dtype=np.float32), (len(v), 1)))
    return replace(part, base_color=paint.rgba)


def build_asset(spec: ShapeSpec) -> Asset:
    """The coloured / textured mesh parts of ``spec``, one per colour group, z-up, inside FILL_RADIUS."""
    solids = _solids(spec)[1]
    paints = {p.name: p for p in spec.paints}
    parts = tuple(_paint_part(s, spec, paints[name]) for name, s in solids.items())
    meta = {"caption": spec.caption, "attributes": spec.attributes(), "seed": spec.seed, "split": spec.split}
    return Asset(parts=parts, source=f"shapes:{spec.split}:{spec.seed}", meta=meta)


def make_shape(seed: int, split: str, category: str | None = None, colour: str | None = None) -> ShapeSample:
    """Sample ``seed`` of the benchmark (optionally forcing the category and / or main colour)."""
    spec = sample_spec(seed, split, category, colour)
    return ShapeSample(build_asset(spec), spec.caption, spec.attributes(), seed)
