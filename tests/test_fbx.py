"""Binary FBX: the bounded node reader, and embedded textures reaching the loaded asset.

No FBX exporter is available to the test suite, so binary files are written here: the ASCII fixture
``tests/data/assimp/textured.fbx`` is parsed into its node tree, each value given the binary type assimp
expects (ids int64, ``P`` values by their declared type, geometry arrays double / int32), and written as
binary FBX 7.4 (32-bit offsets) or 7.5 (64-bit), with the PNG as the ``Content`` of its ``Video``.
"""

from __future__ import annotations

import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from triflow3d.assets import AssetError, fbx, load_asset, load_asset_isolated, normalize
from triflow3d.cameras import zero123pp_rig
from triflow3d.render import make_renderer

DATA = Path(__file__).parent / "data" / "assimp"
PNG = (DATA / "material_0.png").read_bytes()
SIZE = 64

# --- a binary FBX writer (typed nodes: (name, [(type code, value)], [children])) ---------------------------

TypedNode = tuple[str, list[tuple[str, object]], list]
_SCALAR = {"Y": "<h", "C": "<?", "I": "<i", "F": "<f", "D": "<d", "L": "<q"}
_ARRAY = {"f": "<f4", "d": "<f8", "l": "<i8", "i": "<i4", "b": "?"}


def _prop(code: str, value, compress: bool) -> bytes:
    if code in _SCALAR:
        return code.encode() + struct.pack(_SCALAR[code], value)
    if code in "SR":
        raw = value.encode("utf-8", "surrogateescape") if code == "S" else value
        return code.encode() + struct.pack("<I", len(raw)) + raw
    raw = np.asarray(value, _ARRAY[code]).tobytes()
    body = zlib.compress(raw) if compress else raw
    return code.encode() + struct.pack("<III", len(np.asarray(value)), int(compress), len(body)) + body


def _node(node: TypedNode, at: int, wide: bool, compress: bool) -> bytes:
    name, props, children = node
    head = struct.Struct("<QQQB" if wide else "<IIIB")
    body = b"".join(_prop(c, v, compress) for c, v in props)
    out = name.encode() + body
    if children:
        for child in children:
            out += _node(child, at + head.size + len(out), wide, compress)
        out += b"\0" * head.size
    return head.pack(at + head.size + len(out), len(props), len(body), len(name)) + out


def write_fbx(nodes: list[TypedNode], version: int = 7400, compress: bool = True) -> bytes:
    wide = version >= 7500
    out = fbx.MAGIC + b"\x1a\x00" + struct.pack("<I", version)
    for node in nodes:
        out += _node(node, len(out), wide, compress)
    return out + b"\0" * (25 if wide else 13)  # the top-level end marker (no footer: readers stop here)


# --- ASCII FBX -> typed nodes ------------------------------------------------------------------------------

_TOKEN = re.compile(
    r'(?P<s>"[^"]*")|;[^\n]*|(?P<k>[A-Za-z_]\w*):|(?P<a>\*\d+)|(?P<n>-?[\d.]+(?:[eE][-+]?\d+)?)|(?P<p>[{},])|(?P<w>\w+)'
)
_ARRAYS = {"Vertices": "d", "Normals": "d", "UV": "d", "Colors": "d", "PolygonVertexIndex": "i",
           "UVIndex": "i", "Materials": "i", "Edges": "i", "NormalsIndex": "i", "ColorIndex": "i"}  # fmt: skip
_INT_TYPES = {"int", "Integer", "enum", "Enum", "bool", "Bool"}
_DOUBLES = {"ModelUVTranslation", "ModelUVScaling"}  # written as integers, read by assimp as floats


def _tokens(text: str) -> list[tuple[str, str]]:
    return [(m.lastgroup, m.group(m.lastgroup)) for m in _TOKEN.finditer(text) if m.lastgroup]


def _parse(tokens: list[tuple[str, str]], i: int, parents: tuple[str, ...]) -> tuple[list[TypedNode], int]:
    nodes = []
    while i < len(tokens) and tokens[i] != ("p", "}"):
        name, raw, children = tokens[i][1], [], []
        i += 1
        while i < len(tokens) and tokens[i][0] != "k" and tokens[i][1] not in "{}":
            raw += [tokens[i]] if tokens[i][1] != "," else []
            i += 1
        if i < len(tokens) and tokens[i] == ("p", "{"):
            children, i = _parse(tokens, i + 1, (*parents, name))
            i += 1
        if raw and raw[0][0] == "a":  # Name: *N { a: values }
            values = [float(v) for _, v in children[0][1]]
            nodes.append((name, [(_ARRAYS[name], values)], []))
        else:
            nodes.append((name, _typed(name, raw, parents), children))
    return nodes, i


def _typed(name: str, raw: list[tuple[str, str]], parents: tuple[str, ...]) -> list[tuple[str, object]]:
    out = []
    for k, (kind, text) in enumerate(raw):
        if kind == "s":
            value = text[1:-1]
            if parents[-1:] == ("Objects",) and k == 1 and "::" in value:  # "Class::name" -> binary form
                cls, _, base = value.partition("::")
                value = f"{base}\x00\x01{cls}"
            out.append(("S", value))
        elif kind == "w":
            out.append(("S", text))
        elif name == "P" and k >= 4:
            kind_of = raw[1][1].strip('"')
            code = "I" if kind_of in _INT_TYPES else "L" if kind_of in ("KTime", "ULongLong") else "D"
            out.append((code, float(text) if code == "D" else int(text)))
        elif "." in text or "e" in text.lower() or name in _DOUBLES:
            out.append(("D", float(text)))
        else:
            wide = (parents[-1:] == ("Objects",) and k == 0) or name == "C" or abs(int(text)) >= 2**31
            out.append(("L" if wide else "I", int(text)))
    return out


def fixture_tree() -> list[TypedNode]:
    text = (DATA / "textured.fbx").read_text()
    return _parse(_tokens(text), 0, ())[0]


def _embed(nodes: list[TypedNode], content: bytes) -> list[TypedNode]:
    """The same tree with ``content`` as the Video's Content (the referenced file name kept)."""
    objects = next(n for n in nodes if n[0] == "Objects")
    video = next(n for n in objects[2] if n[0] == "Video")
    video[2].append(("Content", [("R", content)], []))
    return nodes


def _write(path: Path, nodes: list[TypedNode], version: int = 7400) -> Path:
    path.write_bytes(write_fbx(nodes, version))
    return path


# --- the reader ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version,compress", [(7400, True), (7500, False), (7500, True)])
def test_reader_reads_every_property_type(version, compress):
    props = [("Y", -3), ("C", True), ("I", -70000), ("F", 1.5), ("D", -2.25), ("L", 2**40), ("S", "a\x00\x01b"),
             ("R", b"\x00\xff"), ("f", [1.5, 2.5]), ("d", [0.1]), ("l", [2**40, -1]), ("i", [3, -4]),
             ("b", [True, False]), ("i", [])]  # fmt: skip
    tree = [("Top", props, [("Child", [("I", 1)], []), ("Empty", [], [])]), ("Next", [], [])]
    got_version, nodes = fbx.read_binary(write_fbx(tree, version, compress))
    assert got_version == version and [n.name for n in nodes] == ["Top", "Next"]
    for (code, want), got in zip(props, nodes[0].props, strict=True):
        if code in "fdlib":
            assert got.dtype == np.dtype(_ARRAY[code]) and got.tolist() == pytest.approx(want), code
        else:
            assert got == pytest.approx(want) if code in "FD" else got == want, code
    assert [(c.name, c.props) for c in nodes[0].children] == [("Child", (1,)), ("Empty", ())]


def test_skipped_records_are_left_out_unparsed():
    tree = [("Objects", [], [("Geometry", [("R", b"x")], []), ("Video", [("L", 7)], [])]), ("Other", [], [])]
    data = bytearray(write_fbx(tree))
    data[data.index(b"Geometry") + len("Geometry")] = ord(
        "?"
    )  # an unknown type code, inside a skipped record
    _, nodes = fbx.read_binary(bytes(data), keep=lambda path: path[-1] != "Geometry")
    assert [(n.name, [c.name for c in n.children]) for n in nodes] == [("Objects", ["Video"]), ("Other", [])]
    with pytest.raises(AssetError, match="unknown property type"):
        fbx.read_binary(bytes(data))


def test_embedded_images_map_each_material_to_its_colour_slot():
    def objects(*extra: TypedNode) -> TypedNode:
        base = [
            ("Material", [("L", 1), ("S", "red\x00\x01Material"), ("S", "")], []),
            ("Material", [("L", 2), ("S", "Material::layered"), ("S", "")], []),
            ("Material", [("L", 3), ("S", "bumpy\x00\x01Material"), ("S", "")], []),
            ("Texture", [("L", 10), ("S", "\x00\x01Texture"), ("S", "")], [("RelativeFilename", [("S", "a.png")], [])]),
            ("Texture", [("L", 11), ("S", "\x00\x01Texture"), ("S", "")], []),
            ("LayeredTexture", [("L", 12), ("S", ""), ("S", "")], []),
            ("Video", [("L", 20), ("S", ""), ("S", "Clip")], [("Content", [("R", b"IMAGE-A")], []),
                                                          ("RelativeFilename", [("S", "C:\\x\\A.png")], [])]),
            ("Video", [("L", 21), ("S", ""), ("S", "Clip")], [("Content", [("R", b"IMAGE-B")], [])]),
        ]  # fmt: skip
        return ("Objects", [], base + list(extra))

    links = [("OO", 20, 10, None), ("OO", 21, 11, None), ("OP", 11, 1, "NormalMap"), ("OP", 10, 1, "DiffuseColor"),
             ("OO", 11, 12, None), ("OO", 10, 12, None), ("OP", 12, 2, "DiffuseColor"),
             ("OP", 11, 3, "Bump")]  # fmt: skip
    connections = ("Connections", [], [("C", [("S", k), ("L", c), ("L", p)] + ([("S", s)] if s else []), [])
                                       for k, c, p, s in links])  # fmt: skip
    data = write_fbx([("FBXHeaderExtension", [], []), objects(), connections])
    # the diffuse slot, not the normal map; a layered texture's first layer; no colour slot: nothing
    assert fbx.embedded_images(Path("x.fbx"), data) == {"red": b"IMAGE-A", "layered": b"IMAGE-B"}
    # a Video without Content: the bytes of another Video of the same file (by base name)
    empty = ("Video", [("L", 22), ("S", ""), ("S", "Clip")], [("RelativeFilename", [("S", "tex/a.png")], [])])
    links[0] = ("OO", 22, 10, None)
    connections = ("Connections", [], [("C", [("S", k), ("L", c), ("L", p)] + ([("S", s)] if s else []), [])
                                       for k, c, p, s in links])  # fmt: skip
    data = write_fbx([objects(empty), connections])
    assert fbx.embedded_images(Path("x.fbx"), data)["red"] == b"IMAGE-A"
    assert fbx.embedded_images(DATA / "textured.fbx") == {}  # ASCII


def _malformed_variants(data: bytes) -> dict[str, bytes]:
    out = {f"cut{cut}": data[:cut] for cut in range(0, len(data), max(1, len(data) // 97))}
    video = data.index(b"\x05VideoL") + 1  # the Video record's name (its header is the 13 bytes before)
    for name, at, value in (
        ("end offset past the file", video - 13, struct.pack("<I", len(data) * 4)),
        ("end offset before its properties", video - 13, struct.pack("<I", video)),
        ("property bytes past the record", video - 5, struct.pack("<I", 1 << 30)),
        ("absurd property count", video - 9, struct.pack("<I", 1 << 31)),
        ("string length past the record", data.index(b"R", data.index(b"Content")) + 1, b"\xff\xff\xff\x7f"),
        ("unknown property type", data.index(b"L", video), b"Q"),
    ):
        out[name] = data[:at] + value + data[at + len(value) :]
    vertices = data.index(b"Vertices") + len(b"Vertices")
    out["array count lies"] = data[: vertices + 1] + struct.pack("<I", 10**9) + data[vertices + 5 :]
    out["zlib garbage"] = data[: vertices + 13] + b"\x00" * 20 + data[vertices + 33 :]
    deep: TypedNode = ("Leaf", [], [])
    for _ in range(fbx.MAX_DEPTH + 2):
        deep = ("Deep", [], [deep])
    out["nesting"] = write_fbx([deep])
    return out


def test_malformed_binary_fbx_is_an_asset_error_quickly(tmp_path):
    data = write_fbx(_embed(fixture_tree(), PNG), 7400)
    assert fbx.read_binary(data)[1]  # the intact file reads
    for name, broken in _malformed_variants(data).items():
        start = time.monotonic()
        with pytest.raises(AssetError) as info:
            fbx.read_binary(broken, "broken.fbx")
        assert time.monotonic() - start < 1.0 and info.value.kind == "unreadable", name
        assert info.value.reason.startswith(("malformed binary FBX", "not a binary FBX")), (name, info.value)
    for cut in (len(data) // 2, len(data) - 100):  # through load_asset: assimp refuses it first
        (path := tmp_path / f"cut{cut}.fbx").write_bytes(data[:cut])
        with pytest.raises(AssetError) as info:
            load_asset_isolated(path, timeout_s=30)
        assert info.value.kind == "unreadable", info.value


# --- embedded textures through load_asset ---------------------------------------------------------------


@pytest.fixture(scope="module")
def renderer():
    return make_renderer("raycast")


def _compare(renderer, path: Path, reference: Path) -> tuple[float, float]:
    """(silhouette IoU, max mean-colour difference over the pixels both cover), six Zero123++ views."""
    a, b = (renderer.render(normalize(load_asset(p)), zero123pp_rig(), SIZE) for p in (path, reference))
    iou = float((a.mask & b.mask).sum() / (a.mask | b.mask).sum())
    both = a.mask & b.mask
    colour = float(np.abs(a.rgba[..., :3][both].mean(0) - b.rgba[..., :3][both].mean(0)).max())
    print(f"{path.name} vs {reference.name}: silhouette IoU {iou:.4f}, colour difference {colour:.4f}")  # -s
    return iou, colour


@pytest.mark.parametrize("version", [7400, 7500])
def test_embedded_fbx_texture_renders_like_the_external_file(tmp_path, renderer, version):
    (tmp_path / "external").mkdir()
    external = _write(tmp_path / "external" / "external.fbx", fixture_tree(), version)
    shutil.copy(DATA / "material_0.png", tmp_path / "external" / "material_0.png")
    embedded = _write(tmp_path / "embedded.fbx", _embed(fixture_tree(), PNG), version)
    assert not (tmp_path / "material_0.png").exists()  # only the embedded copy can be used
    assert fbx.embedded_images(embedded) == {"material_0": PNG}

    part, ref = load_asset(embedded).parts[0], load_asset(external).parts[0]
    assert part.texture is not None
    np.testing.assert_array_equal(part.texture, ref.texture)
    np.testing.assert_array_equal(part.texture, load_asset(DATA / "textured.glb").parts[0].texture)
    np.testing.assert_array_equal(part.uv, ref.uv)
    for reference in (external, DATA / "textured.fbx", DATA / "textured.glb"):
        iou, colour = _compare(renderer, embedded, reference)
        assert iou >= 0.95 and colour <= 0.04, (reference.name, iou, colour)


def test_undecodable_or_missing_embedded_texture_keeps_the_material_colour(tmp_path):
    path = _write(tmp_path / "bad_image.fbx", _embed(fixture_tree(), b"not an image"))
    with pytest.warns(UserWarning, match="embedded texture of material 'material_0' cannot be decoded"):
        part = load_asset(path).parts[0]
    assert part.texture is None and part.base_color == pytest.approx((1.0, 1.0, 1.0, 1.0))
    # no Content and no file beside it: a missing referenced file, as for any FBX
    with pytest.raises(AssetError, match="material_0.png") as info:
        load_asset(_write(tmp_path / "no_content.fbx", fixture_tree()))
    assert info.value.kind == "missing file"


def test_a_file_the_scan_refuses_but_assimp_reads_falls_back_to_the_texture_file(tmp_path):
    tree = _embed(fixture_tree(), PNG)
    objects = next(n for n in tree if n[0] == "Objects")[2]
    next(n for n in objects if n[0] == "Material")[2].append(("Junk", [("i", [1, 2, 3])], []))
    data = bytearray(write_fbx(tree))
    at = data.index(b"Junk") + len(b"Junk") + 13  # type code, count, encoding, length: then the zlib data
    data[at : at + 2] = b"\0\0"  # not a zlib header; assimp never inflates an array it does not use
    (tmp_path / "scan.fbx").write_bytes(bytes(data))
    shutil.copy(DATA / "material_0.png", tmp_path / "material_0.png")
    with pytest.warns(UserWarning, match="embedded textures not searched .malformed binary FBX: array"):
        part = load_asset(tmp_path / "scan.fbx").parts[0]
    np.testing.assert_array_equal(part.texture, load_asset(DATA / "textured.fbx").parts[0].texture)
