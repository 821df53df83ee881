"""The object categories of the shape benchmark: one builder per category, parametric in its parts.

A builder draws proportions and part choices from the geometry stream and returns a :class:`Draft`:
primitives tagged with colour regions, the structured ``parts`` attributes, a proportion word and the
phrases a caption may use. Builders place the object roughly on z = 0 in arbitrary units; the
generator centres and scales it afterwards. Nothing here touches geometry kernels, so drafts are cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from triflow3d.shapes.parts import Prim, Vec3, box, cylinder, hull, lathe, sphere, torus

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
FRAME_COLOURS = ("main", "main", "black", "brown", "grey", "white")


@dataclass(frozen=True)
class Region:
    """A colour region: ``choices`` are palette names or "main" (the object's main colour)."""

    name: str
    choices: tuple[str, ...] = ("main",)


@dataclass(frozen=True)
class Phrase:
    """A caption fragment about a part, e.g. ``"{n} {c}legs"``.

    ``{c}`` becomes the region's colour word plus a space (or nothing); ``article`` prefixes a / an.
    """

    text: str
    region: str | None = None
    article: bool = False


@dataclass
class Draft:
    nouns: tuple[str, ...]  # caption nouns, canonical first
    prims: list[Prim]
    regions: tuple[Region, ...]  # priority order (earlier wins where solids overlap); includes "main"
    parts: dict
    size: str  # "short" | "regular" | "tall" (proportions within the category; scale is normalised away)
    phrases: list[Phrase] = field(default_factory=list)
    patterns: tuple[str, ...] = ("plain",)  # texture patterns the main region may take
    uv: str = "box"  # "box" | "cylinder" projection for textures


def size_word(x: float, lo: float, hi: float) -> str:
    """Tertiles of ``x`` over its sampling range [lo, hi]."""
    t = (x - lo) / (hi - lo)
    return "short" if t < 1 / 3 else "tall" if t > 2 / 3 else "regular"


def rod(a: Vec3, b: Vec3, radius: float, region: str = "main", segments: int = 12) -> Prim:
    """A cylinder from point ``a`` to point ``b``."""
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = pb - pa
    length = float(np.linalg.norm(d))
    theta = math.degrees(math.acos(np.clip(d[2] / length, -1.0, 1.0)))
    phi = math.degrees(math.atan2(d[1], d[0]))
    centre = tuple(float(x) for x in (pa + pb) / 2)
    return cylinder(centre, length, radius, region=region, rotation=(0.0, theta, phi), segments=segments)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _choice(rng: np.random.Generator, options: tuple, p: tuple[float, ...] | None = None):
    return options[int(rng.choice(len(options), p=p))]


def _ring(n: int, radius: float, z: float, start_deg: float = 0.0) -> list[Vec3]:
    angles = [math.radians(start_deg + 360.0 * i / n) for i in range(n)]
    return [(radius * math.cos(a), radius * math.sin(a), z) for a in angles]


# --- seating -------------------------------------------------------------------------------------------


def _chair_base(rng: np.random.Generator, w: float, d: float, h: float, parts: dict) -> list[Prim]:
    """Legs (3 splayed / 4 straight) or an office pedestal with a five-arm star and optional wheels."""
    if parts["base"] == "pedestal":
        prims = [cylinder((0, 0, (h + 0.09) / 2), h - 0.07, 0.035, region="frame", segments=16)]
        for a in range(5):
            ang = 72.0 * a
            prims.append(
                box(
                    (0.13 * math.cos(math.radians(ang)), 0.13 * math.sin(math.radians(ang)), 0.1),
                    (0.26, 0.04, 0.04),
                    "frame",
                    (0, 0, ang),
                )
            )
        feet = _ring(5, 0.25, 0.05)
        if parts["wheels"]:
            prims += [sphere(p, 0.05, "wheels", segments=12) for p in feet]
        else:
            prims += [cylinder((p[0], p[1], 0.06), 0.06, 0.03, region="frame", segments=12) for p in feet]
        return prims
    r = min(w, d) * 0.06 / 2 + 0.01
    if parts["legs"] == 3:
        tops, feet = _ring(3, min(w, d) * 0.32, h, 90), _ring(3, min(w, d) * 0.45, 0.0, 90)
        return [rod(a, b, r, "frame") for a, b in zip(tops, feet)]
    xs, ys = (w / 2 - 0.04, -(w / 2 - 0.04)), (d / 2 - 0.04, -(d / 2 - 0.04))
    return [box((x, y, h / 2), (2 * r, 2 * r, h), "frame") for x in xs for y in ys]


def _chair_back(rng: np.random.Generator, w: float, d: float, h: float, parts: dict) -> list[Prim]:
    style, yb = parts["backrest"], -d / 2 + 0.03
    hb = {"straight": _u(rng, 0.3, 0.42), "tall": _u(rng, 0.6, 0.75), "slatted": _u(rng, 0.35, 0.5)}[style]
    z0 = h + 0.02
    if style != "slatted":
        return [box((0, yb, z0 + hb / 2), (w * _u(rng, 0.85, 1.0), 0.05, hb))]
    slats = int(rng.integers(3, 6))
    parts["slats"] = slats
    prims = [box((x, yb, z0 + hb / 2), (0.04, 0.05, hb)) for x in (w / 2 - 0.02, -w / 2 + 0.02)]
    for i in range(slats):  # vertical slats between the posts, joined by a top rail
        x = -w / 2 + w * (i + 1) / (slats + 1)
        prims.append(box((x, yb, z0 + hb / 2), (0.03, 0.03, hb)))
    prims.append(box((0, yb, z0 + hb - 0.03), (w, 0.05, 0.06)))
    return prims


def build_chair(rng: np.random.Generator) -> Draft:
    base = _choice(rng, ("legs", "legs", "pedestal"))
    w, d, h = _u(rng, 0.42, 0.56), _u(rng, 0.4, 0.52), _u(rng, 0.38, 0.5)
    parts = {
        "base": base,
        "legs": 0,
        "wheels": False,
        "armrests": bool(rng.random() < (0.6 if base == "pedestal" else 0.3)),
        "backrest": _choice(rng, ("straight", "tall", "slatted")),
    }
    if base == "pedestal":
        parts["wheels"] = bool(rng.random() < 0.75)
    else:
        parts["legs"] = int(_choice(rng, (3, 4), (0.3, 0.7)))
    round_seat = parts["legs"] == 3 or (base == "pedestal" and rng.random() < 0.3)
    seat = (
        cylinder((0, 0, h), 0.06, max(w, d) / 2, segments=32) if round_seat else box((0, 0, h), (w, d, 0.06))
    )
    prims = [seat, *_chair_back(rng, w, d, h, parts), *_chair_base(rng, w, d, h, parts)]
    if parts["armrests"]:
        xa = max(w, d) / 2 * 0.8 if round_seat else w / 2
        for x in (xa, -xa):
            prims += [
                box((x, 0.0, h + 0.22), (0.05, d * 0.85, 0.04)),
                box((x, 0.0, h + 0.11), (0.04, 0.04, 0.22)),
            ]
    nouns = (
        ("office chair", "desk chair", "swivel chair")
        if base == "pedestal"
        else ("chair", "dining chair", "side chair")
    )
    phrases = [
        Phrase(
            {"tall": "tall backrest", "straight": "straight back", "slatted": "slatted back"}[
                parts["backrest"]
            ],
            article=True,
        )
    ]
    phrases += [Phrase("armrests")] if parts["armrests"] else []
    phrases += [Phrase("{c}wheels", "wheels")] if parts["wheels"] else []
    phrases += [Phrase(f"{NUMBER_WORDS[parts['legs']]} {{c}}legs", "frame")] if parts["legs"] else []
    regions = (Region("main"), Region("frame", FRAME_COLOURS), Region("wheels", ("black", "black", "grey")))
    size = "tall" if parts["backrest"] == "tall" else "regular"
    return Draft(nouns, prims, regions, parts, size, phrases, ("plain", "wood", "checker"), "box")


def build_stool(rng: np.random.Generator) -> Draft:
    legs, h = int(_choice(rng, (3, 4))), _u(rng, 0.4, 0.85)
    r, square = _u(rng, 0.15, 0.22), bool(rng.random() < 0.3)
    parts = {
        "legs": legs,
        "seat": "square" if square else "round",
        "footrest": bool(rng.random() < (0.7 if h > 0.62 else 0.2)),
    }
    seat = box((0, 0, h), (1.6 * r, 1.6 * r, 0.05)) if square else cylinder((0, 0, h), 0.05, r, segments=32)
    prims = [seat]
    tops, feet = _ring(legs, r * 0.7, h, 45), _ring(legs, r * 1.05, 0.0, 45)
    prims += [rod(a, b, 0.018, "frame") for a, b in zip(tops, feet)]
    if parts["footrest"]:
        zf = h * 0.3
        prims.append(torus((0, 0, zf), r * (1.05 - 0.35 * zf / h), 0.012, "frame", segments=24))
    tall = h > 0.62
    nouns = ("bar stool", "tall stool", "stool") if tall else ("stool", "low stool", "seat")
    phrases = [
        Phrase(f"{NUMBER_WORDS[legs]} {{c}}legs", "frame"),
        Phrase(f"{parts['seat']} seat", article=True),
    ]
    phrases += [Phrase("{c}footrest", "frame", article=True)] if parts["footrest"] else []
    regions = (Region("main"), Region("frame", FRAME_COLOURS))
    return Draft(nouns, prims, regions, parts, size_word(h, 0.4, 0.85), phrases, ("plain", "wood"), "box")


def _bench_seat(rng: np.random.Generator, L: float, d: float, h: float, slatted: bool) -> list[Prim]:
    if not slatted:
        return [box((0, 0, h), (L, d, 0.06))]
    n = int(rng.integers(3, 5))
    pitch = d / n
    return [box((0, -d / 2 + pitch * (i + 0.5), h), (L, pitch * 0.8, 0.05)) for i in range(n)]


def build_bench(rng: np.random.Generator) -> Draft:
    L, d, h = _u(rng, 1.2, 1.8), _u(rng, 0.35, 0.5), _u(rng, 0.4, 0.48)
    parts = {
        "backrest": bool(rng.random() < 0.55),
        "legs": int(_choice(rng, (4, 2))),
        "slatted": bool(rng.random() < 0.5),
    }
    parts["armrests"] = bool(parts["backrest"] and rng.random() < 0.4)
    prims = _bench_seat(rng, L, d, h, parts["slatted"])
    xs = (L / 2 - 0.08, -(L / 2 - 0.08))
    prims += [box((x, 0, h - 0.035), (0.07, d, 0.03)) for x in xs]  # cross beams under the seat
    if parts["legs"] == 4:
        prims += [box((x, y, h / 2), (0.06, 0.06, h)) for x in xs for y in (d / 2 - 0.05, -(d / 2 - 0.05))]
    else:  # two side panels
        prims += [box((x, 0, h / 2), (0.05, d * 0.9, h)) for x in xs]
    if parts["backrest"]:
        hb = _u(rng, 0.3, 0.45)
        prims += [box((x, -d / 2, h + hb / 2), (0.05, 0.05, hb + 0.06), "frame") for x in xs]
        prims += [box((0, -d / 2, h + hb * f), (L, 0.04, hb * 0.22)) for f in (0.45, 0.85)]
    if parts["armrests"]:
        prims += [box((x * 1.04, 0, h + 0.2), (0.05, d, 0.04), "frame") for x in xs]
        prims += [box((x * 1.04, d * 0.4, h + 0.1), (0.04, 0.04, 0.2), "frame") for x in xs]
    nouns = (
        ("bench", "park bench", "garden bench")
        if parts["backrest"]
        else ("bench", "seat bench", "backless bench")
    )
    phrases = [Phrase("backrest", article=True)] if parts["backrest"] else [Phrase("no backrest")]
    phrases += [Phrase("slatted seat", article=True)] if parts["slatted"] else []
    phrases += [Phrase("{c}armrests", "frame")] if parts["armrests"] else []
    phrases += [Phrase("four legs")] if parts["legs"] == 4 else [Phrase("two solid side panels")]
    regions = (Region("frame", FRAME_COLOURS), Region("main"))
    return Draft(
        nouns,
        prims,
        regions,
        parts,
        size_word(L / d, 1.2 / 0.5, 1.8 / 0.35),
        phrases,
        ("plain", "wood"),
        "box",
    )


# --- tables and storage --------------------------------------------------------------------------------


def build_table(rng: np.random.Generator) -> Draft:
    kind, top = _choice(rng, ("dining", "dining", "coffee")), _choice(rng, ("rectangular", "round"))
    h = _u(rng, 0.7, 0.78) if kind == "dining" else _u(rng, 0.36, 0.46)
    legs = 4 if top == "rectangular" else int(_choice(rng, (1, 3, 4)))
    parts = {"kind": kind, "top": top, "legs": legs}
    t = _u(rng, 0.035, 0.06)
    if top == "rectangular":
        w, d = _u(rng, 0.9, 1.6), _u(rng, 0.55, 0.9)
        prims = [box((0, 0, h - t / 2), (w, d, t))]
        feet = [(x, y, 0.0) for x in (w / 2 - 0.06, -(w / 2 - 0.06)) for y in (d / 2 - 0.06, -(d / 2 - 0.06))]
    else:
        w = d = 2 * _u(rng, 0.4, 0.65)
        prims = [cylinder((0, 0, h - t / 2), t, w / 2, segments=40)]
        feet = _ring(legs, w / 2 - 0.08, 0.0, 45)
    if legs == 1:
        prims += [
            cylinder((0, 0, h / 2), h, 0.05, region="legs", segments=16),
            cylinder((0, 0, 0.02), 0.04, w * 0.3, region="legs", segments=32),
        ]
    else:
        prims += [rod(f, (f[0], f[1], h - t / 2), 0.025, "legs") for f in feet]
    nouns = (
        ("table", "dining table", "kitchen table")
        if kind == "dining"
        else ("coffee table", "low table", "side table")
    )
    legs_phrase = (
        Phrase("{c}single pedestal", "legs", True)
        if legs == 1
        else Phrase(f"{NUMBER_WORDS[legs]} {{c}}legs", "legs")
    )
    phrases = [legs_phrase, Phrase(f"{top} top", article=True)]
    regions = (Region("main"), Region("legs", FRAME_COLOURS))
    return Draft(
        nouns,
        prims,
        regions,
        parts,
        size_word(h / max(w, d), 0.36 / 1.3, 0.78 / 0.8),
        phrases,
        ("plain", "wood", "checker"),
        "box",
    )


def build_shelf(rng: np.random.Generator) -> Draft:
    w, d, h, t = _u(rng, 0.6, 1.2), _u(rng, 0.25, 0.4), _u(rng, 0.6, 1.8), _u(rng, 0.025, 0.04)
    shelves = int(rng.integers(2, 6))
    parts = {"shelves": shelves, "back": bool(rng.random() < 0.6), "feet": bool(rng.random() < 0.3)}
    z0 = 0.06 if parts["feet"] else 0.0
    prims = [box((x, 0, z0 + h / 2), (t, d, h)) for x in (w / 2 - t / 2, -(w / 2 - t / 2))]
    prims += [box((0, 0, z0 + t / 2 + (h - t) * i / shelves), (w, d, t)) for i in range(shelves + 1)]
    if parts["back"]:
        prims.append(box((0, -d / 2 + 0.01, z0 + h / 2), (w, 0.02, h), "back"))
    if parts["feet"]:
        prims += [
            box((x, y, 0.04), (0.05, 0.05, 0.08), "back")
            for x in (w / 2 - 0.04, -(w / 2 - 0.04))
            for y in (d / 2 - 0.04, -(d / 2 - 0.04))
        ]
    nouns = ("bookshelf", "bookcase", "shelf") if h > 1.0 else ("shelf", "shelving unit", "low shelf")
    phrases = [Phrase(f"{NUMBER_WORDS[shelves]} shelves")]
    phrases += (
        [Phrase("{c}back panel", "back", True)] if parts["back"] else [Phrase("open back", article=True)]
    )
    regions = (Region("main"), Region("back", FRAME_COLOURS))
    return Draft(
        nouns,
        prims,
        regions,
        parts,
        size_word(h / w, 0.6 / 1.2, 1.8 / 0.6),
        phrases,
        ("plain", "wood"),
        "box",
    )


# --- household objects ---------------------------------------------------------------------------------


def build_lamp(rng: np.random.Generator) -> Draft:
    parts = {"shade": _choice(rng, ("cone", "cylinder", "dome")), "base": _choice(rng, ("round", "square"))}
    pole, rs, hs = _u(rng, 0.45, 1.0), _u(rng, 0.18, 0.3), _u(rng, 0.18, 0.3)
    rb = _u(rng, 0.12, 0.2)
    prims = [
        cylinder((0, 0, 0.02), 0.04, rb, region="stand", segments=32)
        if parts["base"] == "round"
        else box((0, 0, 0.02), (2 * rb, 2 * rb, 0.04), "stand"),
        cylinder((0, 0, pole / 2), pole, 0.015, region="stand", segments=12),
    ]
    zs = pole - hs * 0.3
    if parts["shade"] == "cone":
        prims.append(cylinder((0, 0, zs + hs / 2), hs, rs, rs * 0.45, segments=32))
    elif parts["shade"] == "cylinder":
        prims.append(cylinder((0, 0, zs + hs / 2), hs, rs * 0.85, segments=32))
    else:  # a dome: quarter ellipse profile
        prof = [(rs * math.cos(a), zs + hs * math.sin(a)) for a in np.linspace(0.0, math.pi / 2 * 0.92, 8)]
        prims.append(lathe((0, 0, 0), prof, segments=32))
    nouns = ("floor lamp", "standing lamp", "lamp") if pole > 0.8 else ("lamp", "table lamp", "desk lamp")
    phrases = [
        Phrase(f"{parts['shade']} shade" if parts["shade"] != "dome" else "dome-shaped shade", article=True),
        Phrase(f"{parts['base']} {{c}}base", "stand", True),
    ]
    regions = (Region("main"), Region("stand", ("main", "black", "grey", "white", "brown")))
    return Draft(
        nouns,
        prims,
        regions,
        parts,
        size_word(pole, 0.45, 1.0),
        phrases,
        ("plain", "stripes", "checker"),
        "cylinder",
    )


def build_mug(rng: np.random.Generator) -> Draft:
    r, h = _u(rng, 0.28, 0.42), _u(rng, 0.55, 1.05)
    parts = {"handle": bool(rng.random() < 0.75), "shape": _choice(rng, ("straight", "tapered"))}
    top = r * (1.18 if parts["shape"] == "tapered" else 1.0)
    wall = 0.05
    prims = [
        cylinder((0, 0, h / 2), h, r, top, segments=40),
        cylinder((0, 0, h / 2 + 0.06), h, r - wall, top - wall, segments=40, hole=True),
    ]
    if parts["handle"]:
        R = h * 0.24
        prims.append(
            torus(
                ((r + top) / 2 + R * 0.35, 0, h * 0.52), R, 0.045, "handle", (90, 0, 0), scale=(0.8, 1.0, 1.0)
            )
        )
    nouns = ("mug", "coffee mug", "cup") if parts["handle"] else ("cup", "tumbler", "beaker")
    phrases = [Phrase("{c}handle", "handle", True)] if parts["handle"] else [Phrase("no handle")]
    phrases += [Phrase("tapered body", article=True)] if parts["shape"] == "tapered" else []
    regions = (Region("handle", ("main", "main", "white", "black")), Region("main"))
    return Draft(
        nouns,
        prims,
        regions,
        parts,
        size_word(h / r, 0.55 / 0.42, 1.05 / 0.28),
        phrases,
        ("plain", "stripes", "checker"),
        "cylinder",
    )


def build_bottle(rng: np.random.Generator) -> Draft:
    parts = {
        "shape": _choice(rng, ("round", "round", "square")),
        "neck": _choice(rng, ("long", "short")),
        "cap": bool(rng.random() < 0.7),
    }
    R, H = _u(rng, 0.16, 0.28), _u(rng, 0.45, 1.0)
    rn, s = R * _u(rng, 0.3, 0.45), _u(rng, 0.1, 0.22)
    ln = _u(rng, 0.18, 0.3) if parts["neck"] == "long" else _u(rng, 0.05, 0.1)
    shoulder = [(rn + (R - rn) * math.cos(a), H + s * math.sin(a)) for a in np.linspace(0, math.pi / 2, 6)]
    if parts["shape"] == "round":
        prims = [lathe((0, 0, 0), [(R * 0.92, 0.0), (R, 0.03), *shoulder, (rn, H + s + ln)], segments=32)]
    else:
        top = [(r * 0.85, z) for r, z in shoulder]
        prims = [
            box((0, 0, H / 2), (1.7 * R, 1.7 * R, H)),
            lathe((0, 0, 0), [(R * 0.85, H - 0.02), *top, (rn * 0.85, H + s + ln)], segments=32),
        ]
    if parts["cap"]:
        hc = _u(rng, 0.05, 0.1)
        prims.append(cylinder((0, 0, H + s + ln + hc / 2 - 0.01), hc, rn * 1.2, segments=24, region="cap"))
    nouns = ("bottle", "water bottle", "flask")
    phrases = [Phrase(f"{parts['neck']} neck", article=True)]
    phrases += [Phrase("{c}cap", "cap", True)] if parts["cap"] else [Phrase("no cap")]
    phrases += [Phrase("square body", article=True)] if parts["shape"] == "square" else []
    regions = (Region("cap", ("white", "black", "red", "blue", "grey", "yellow")), Region("main"))
    return Draft(
        nouns,
        prims,
        regions,
        parts,
        size_word(H / R, 0.45 / 0.28, 1.0 / 0.16),
        phrases,
        ("plain", "stripes", "checker"),
        "cylinder",
    )


_VASE_PROFILES = {  # radii at 6 evenly spaced heights, bottom to top (then scaled)
    "round": (0.22, 0.38, 0.42, 0.3, 0.16, 0.19),
    "slender": (0.13, 0.17, 0.16, 0.12, 0.09, 0.13),
    "bowl": (0.22, 0.4, 0.47, 0.5, 0.5, 0.49),
}
_VASE_HEIGHTS = {"round": (0.7, 1.0), "slender": (0.9, 1.3), "bowl": (0.35, 0.5)}


def build_vase(rng: np.random.Generator) -> Draft:
    shape = _choice(rng, tuple(_VASE_PROFILES))
    parts = {
        "shape": shape,
        "handles": int(_choice(rng, (0, 2), (0.7, 0.3))),
        "rim": bool(rng.random() < 0.3),
    }
    h = _u(rng, *_VASE_HEIGHTS[shape])
    radii = np.asarray(_VASE_PROFILES[shape]) * rng.uniform(0.85, 1.15, size=6)
    zs = np.linspace(0.0, h, 6)
    first = 1 if shape == "bowl" else 4  # the opening reaches down to control point `first`
    depth = h - zs[first] + 0.05 * h
    prims = [
        lathe((0, 0, 0), list(zip(radii.tolist(), zs.tolist())), segments=40),
        cylinder((0, 0, h), 2 * depth, float(radii[first:].min()) * 0.7, segments=32, hole=True),
    ]
    if parts["rim"]:
        prims.append(torus((0, 0, h), radii[-1] * 0.9, 0.03, "rim", segments=32))
    if parts["handles"]:
        zh = float(zs[4])
        for side in (1.0, -1.0):
            prims.append(
                torus((side * (radii[4] + 0.07), 0, zh), 0.12, 0.025, "handles", (90, 0, 0), (0.7, 1.0, 1.0))
            )
    nouns = ("vase", "flower vase", "urn" if parts["handles"] else "pot")
    phrases = [
        Phrase(f"{shape} body", article=True) if shape != "bowl" else Phrase("wide bowl shape", article=True)
    ]
    phrases += [Phrase("two {c}handles", "handles")] if parts["handles"] else []
    phrases += [Phrase("{c}rim", "rim", True)] if parts["rim"] else []
    regions = (
        Region("rim", ("white", "black", "yellow", "brown")),
        Region("handles", ("main", "main", "black", "white")),
        Region("main"),
    )
    aspect = h / (2 * float(radii.max()))
    return Draft(
        nouns,
        prims,
        regions,
        parts,
        size_word(aspect, 0.35, 3.5) if shape != "bowl" else "short",
        phrases,
        ("plain", "stripes", "checker"),
        "cylinder",
    )


# --- vehicles, buildings, nature -----------------------------------------------------------------------

_CAR_TYPES = {  # body height, cabin length fraction, cabin height, cabin x-offset fraction
    "sedan": (0.28, 0.5, 0.26, -0.05),
    "suv": (0.36, 0.62, 0.3, -0.12),
    "pickup": (0.34, 0.32, 0.3, 0.12),
    "van": (0.42, 0.78, 0.34, -0.08),
    "bus": (0.5, 0.94, 0.4, 0.0),
}
_CAR_NOUNS = {
    "sedan": ("car", "sedan", "automobile"),
    "suv": ("suv", "suv car", "off-road car"),
    "pickup": ("pickup truck", "pickup", "truck"),
    "van": ("van", "minivan", "delivery van"),
    "bus": ("bus", "coach", "city bus"),
}


def _car_cabin(L: float, W: float, z0: float, kind: str) -> list[Prim]:
    _, frac, hc, off = _CAR_TYPES[kind]
    lc, xc = L * frac, L * off
    slant = 0.0 if kind == "bus" else lc * 0.18
    lo = [(xc + sx * lc / 2, sy * W * 0.45, z0) for sx in (1, -1) for sy in (1, -1)]
    hi = [(xc + sx * (lc / 2 - slant), sy * W * 0.4, z0 + hc) for sx in (1, -1) for sy in (1, -1)]
    prims = [hull(lo + hi)]
    win_len, win_h = max(lc - 2 * slant, 0.1) * 0.85, hc * 0.55  # side windows, slightly proud of the cabin
    for sy in (1, -1):
        prims.append(
            box((xc, sy * W * 0.425, z0 + hc * 0.55), (win_len, 0.06, win_h), "windows", (sy * 7.0, 0, 0))
        )
    return prims


def build_car(rng: np.random.Generator) -> Draft:
    kind = _choice(rng, tuple(_CAR_TYPES))
    L, W = _u(rng, 1.6, 2.0) * (1.3 if kind == "bus" else 1.0), _u(rng, 0.75, 0.9)
    hb = _CAR_TYPES[kind][0] * _u(rng, 0.9, 1.1)
    wr = _u(rng, 0.15, 0.2)
    wheels = 6 if kind == "bus" else 4
    parts = {"type": kind, "wheels": wheels, "lights": bool(rng.random() < 0.5)}
    zb = wr * 0.9  # body bottom
    prims = [box((0, 0, zb + hb / 2), (L, W, hb)), *_car_cabin(L, W, zb + hb - 0.005, kind)]
    if kind == "pickup":  # an open bed behind the cabin
        prims.append(box((-L * 0.26, 0, zb + hb), (L * 0.42, W * 0.7, hb * 0.8), hole=True))
    axles = [L * 0.33, -L * 0.33] + ([-L * 0.33 + 2.3 * wr] if wheels == 6 else [])
    for x in axles:
        for sy in (1, -1):
            prims.append(
                cylinder((x, sy * (W / 2 - 0.02), wr), 0.14, wr, region="wheels", rotation=(90, 0, 0))
            )
    if parts["lights"]:
        prims += [
            sphere((L / 2 - 0.02, sy * W * 0.32, zb + hb * 0.65), 0.06, "lights", segments=12)
            for sy in (1, -1)
        ]
    phrases = [Phrase(f"{NUMBER_WORDS[wheels]} {{c}}wheels", "wheels"), Phrase("{c}windows", "windows")]
    phrases += [Phrase("{c}headlights", "lights")] if parts["lights"] else []
    regions = (
        Region("wheels", ("black", "black", "grey")),
        Region("windows", ("black", "grey", "white", "blue")),
        Region("lights", ("yellow", "white")),
        Region("main"),
    )
    return Draft(
        _CAR_NOUNS[kind], prims, regions, parts, "regular", phrases, ("plain", "stripes", "checker"), "box"
    )


def _rocket_fins(n: int, R: float, z0: float, height: float, span: float) -> list[Prim]:
    """``n`` swept fins (thin convex hulls) around the bottom of a body of radius R."""
    fins, t = [], 0.02
    for k in range(n):
        a = math.radians(360.0 * k / n)
        c, s = math.cos(a), math.sin(a)
        pts = [
            (r * c - dt * s, r * s + dt * c, z)
            for r, z in ((R * 0.9, z0 + height), (R * 0.9, z0), (R + span, z0 - 0.1))
            for dt in (t, -t)
        ]
        fins.append(hull(pts, "fins"))
    return fins


def build_rocket(rng: np.random.Generator) -> Draft:
    R, Lb = _u(rng, 0.12, 0.2), _u(rng, 0.8, 1.4)
    parts = {
        "fins": int(_choice(rng, (3, 4))),
        "windows": int(rng.integers(0, 4)),
        "nose": _choice(rng, ("cone", "round")),
    }
    z0, hn = 0.15, R * _u(rng, 1.8, 3.0)
    prims = [
        cylinder((0, 0, z0 + Lb / 2), Lb, R, segments=32),
        cylinder((0, 0, z0 / 2 + 0.01), z0, R * 0.5, R * 0.8, "nozzle"),
    ]
    if parts["nose"] == "cone":
        prims.append(cylinder((0, 0, z0 + Lb + hn / 2 - 0.01), hn, R, 0.005, "nose", segments=32))
    else:
        prof = [
            (R * math.cos(a) ** 0.7 + 1e-3, z0 + Lb - 0.01 + hn * math.sin(a))
            for a in np.linspace(0, math.pi / 2, 8)
        ]
        prims.append(lathe((0, 0, 0), prof, "nose", segments=32))
    prims += _rocket_fins(parts["fins"], R, z0, Lb * _u(rng, 0.25, 0.4), R * _u(rng, 0.8, 1.4))
    for i in range(parts["windows"]):
        zw = z0 + Lb * (0.75 - 0.18 * i)
        prims.append(cylinder((R, 0, zw), 0.04, R * 0.3, region="windows", rotation=(0, 90, 0), segments=20))
    phrases = [
        Phrase(f"{NUMBER_WORDS[parts['fins']]} {{c}}fins", "fins"),
        Phrase(f"{{c}}{'pointed' if parts['nose'] == 'cone' else 'rounded'} nose", "nose", True),
    ]
    if parts["windows"]:
        noun = "window" if parts["windows"] == 1 else "windows"
        phrases.append(Phrase(f"{NUMBER_WORDS[parts['windows']]} {{c}}{noun}", "windows"))
    regions = (
        Region("windows", ("white", "blue", "black", "yellow")),
        Region("fins", ("main", "red", "white", "grey", "black")),
        Region("nose", ("main", "main", "red", "white", "grey")),
        Region("nozzle", ("grey", "black")),
        Region("main"),
    )
    return Draft(
        ("rocket", "space rocket", "rocket ship"),
        prims,
        regions,
        parts,
        size_word(Lb / R, 0.8 / 0.2, 1.4 / 0.12),
        phrases,
        ("plain", "stripes", "checker"),
        "cylinder",
    )


def build_tree(rng: np.random.Generator) -> Draft:
    foliage = _choice(rng, ("round", "pine", "column"))
    ht, rt = _u(rng, 0.25, 0.5), _u(rng, 0.05, 0.09)
    prims = [cylinder((0, 0, ht / 2), ht + 0.1, rt * 1.3, rt, "trunk", segments=16)]
    if foliage == "round":
        layers = int(rng.integers(1, 4))
        r = _u(rng, 0.3, 0.45)
        prims.append(sphere((0, 0, ht + r * 0.8), r, segments=24))
        for k in range(layers - 1):
            a = rng.uniform(0, 2 * math.pi)
            prims.append(
                sphere(
                    (r * 0.6 * math.cos(a), r * 0.6 * math.sin(a), ht + r * (0.9 + 0.3 * k)),
                    r * 0.7,
                    segments=20,
                )
            )
    elif foliage == "pine":
        layers, r, hl = int(rng.integers(2, 5)), _u(rng, 0.3, 0.45), _u(rng, 0.35, 0.5)
        for k in range(layers):
            prims.append(
                cylinder((0, 0, ht + hl * 0.55 * k + hl / 2), hl, r * (1 - 0.2 * k), 0.01, segments=24)
            )
    else:
        layers, r = 1, _u(rng, 0.16, 0.24)
        prims.append(sphere((0, 0, ht + r * 2.6), r, scale=(1.0, 1.0, 3.0), segments=24))
    parts = {"foliage": foliage, "layers": layers}
    nouns = {
        "round": ("tree", "leafy tree", "round tree"),
        "pine": ("pine tree", "fir tree", "conifer"),
        "column": ("cypress tree", "narrow tree", "tree"),
    }[foliage]
    phrases = [Phrase("{c}trunk", "trunk", True)]
    phrases += [Phrase(f"{NUMBER_WORDS[layers]} layers of branches")] if foliage == "pine" else []
    regions = (Region("main"), Region("trunk", ("brown", "brown", "brown", "grey", "black")))
    return Draft(nouns, prims, regions, parts, size_word(ht, 0.25, 0.5), phrases, ("plain",), "cylinder")


def build_house(rng: np.random.Generator) -> Draft:
    w, d = _u(rng, 0.8, 1.3), _u(rng, 0.7, 1.0)
    parts = {
        "floors": int(_choice(rng, (1, 2))),
        "roof": _choice(rng, ("gable", "flat", "pyramid")),
        "chimney": bool(rng.random() < 0.5),
    }
    h, hr = 0.45 * parts["floors"], _u(rng, 0.3, 0.5)
    prims = [box((0, 0, h / 2), (w, d, h))]
    if parts["roof"] == "gable":
        eave = [(sx * (w / 2 + 0.05), sy * (d / 2 + 0.05), h) for sx in (1, -1) for sy in (1, -1)]
        prims.append(hull(eave + [(sx * (w / 2 + 0.05), 0.0, h + hr) for sx in (1, -1)], "roof"))
    elif parts["roof"] == "pyramid":
        eave = [(sx * (w / 2 + 0.05), sy * (d / 2 + 0.05), h) for sx in (1, -1) for sy in (1, -1)]
        prims.append(hull(eave + [(0.0, 0.0, h + hr)], "roof"))
    else:
        hr = 0.06
        prims.append(box((0, 0, h + 0.03), (w + 0.06, d + 0.06, 0.06), "roof"))
    if parts["chimney"]:
        hc = max(hr, 0.3)
        prims.append(box((w * 0.25, d * 0.2, h + hc / 2), (0.1, 0.1, hc), "roof"))
    prims.append(box((0, d / 2, 0.15), (0.16, 0.04, 0.3), "door"))
    for f in range(parts["floors"]):
        zw = 0.45 * f + 0.27
        prims += [box((sx * w * 0.3, d / 2, zw), (0.14, 0.04, 0.12), "windows") for sx in (1, -1)]
    nouns = (
        ("house", "cottage", "small house") if parts["floors"] == 1 else ("house", "two-storey house", "home")
    )
    phrases = [Phrase(f"{{c}}{parts['roof']} roof", "roof", True), Phrase("{c}door", "door", True)]
    phrases += [Phrase("chimney", article=True)] if parts["chimney"] else []
    regions = (
        Region("door", ("brown", "red", "white", "blue", "black")),
        Region("windows", ("white", "blue", "grey")),
        Region("roof", ("red", "brown", "grey", "black")),
        Region("main"),
    )
    return Draft(
        nouns,
        prims,
        regions,
        parts,
        "tall" if parts["floors"] == 2 else "regular",
        phrases,
        ("plain", "wood"),
        "box",
    )


# Category name -> builder. The order is part of the benchmark definition: append, never reorder.
CATEGORIES: dict[str, Callable[[np.random.Generator], Draft]] = {
    "chair": build_chair,
    "table": build_table,
    "stool": build_stool,
    "bench": build_bench,
    "lamp": build_lamp,
    "mug": build_mug,
    "bottle": build_bottle,
    "vase": build_vase,
    "car": build_car,
    "shelf": build_shelf,
    "rocket": build_rocket,
    "tree": build_tree,
    "house": build_house,
}
