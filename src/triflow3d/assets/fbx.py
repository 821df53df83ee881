"""Binary FBX: a bounded node-record reader, and the textures a file embeds, by material.

assimp reads FBX geometry and materials, but assimp-py cannot hand over the images a file embeds (the
``Content`` of its ``Video`` objects, as Mixamo, Sketchfab and Blender's "embed media" write them). This
module finds them: :func:`embedded_images` maps each material name (as assimp names it) to the bytes of
the image connected to its base-colour / diffuse slot, the way ``gltf.gltf1_embedded_images`` does for
glTF 1.0.

The binary layout (FBX SDK 7.x, as documented by Blender's importer): a 27-byte header (the magic,
``\\x1a\\x00``, the uint32 version), then node records. A record is ``end offset, property count, property
bytes, name length`` (uint32 each below version 7500, uint64 from 7500 on; the name length is one byte),
the name, the properties, then nested records closed by an all-zero record of the header's size. A
property is a type code and its value: ``Y C I F D L`` scalars, ``f d l i b`` arrays (count, encoding,
byte length; encoding 1 is zlib), ``S R`` strings and raw bytes (uint32 length). Every offset and length is
checked against the file, so a malformed file is an ``AssetError``, never an out-of-range read or a loop;
records that :func:`read_binary` is told to skip are jumped over by their end offset, unparsed.

ASCII FBX could hold base64 ``Content`` too; exporters do not write that, so it yields nothing here.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triflow3d.errors import AssetError

MAGIC = b"Kaydara FBX Binary  \x00"
HEADER_BYTES = len(MAGIC) + 2 + 4  # magic, b"\x1a\x00", uint32 version
MAX_DEPTH = 64  # real files nest about 6 deep
# Material slots holding the colour map, in the order ``assimp.py`` prefers them (aiTextureType
# BASE_COLOR, which assimp fills from these three, before DIFFUSE, which it fills from DiffuseColor).
COLOR_SLOTS: tuple[str, ...] = (
    "Maya|baseColor",
    "Maya|TEX_color_map",
    "3dsMax|Parameters|base_color_map",
    "DiffuseColor",
)
_SCALARS: dict[bytes, tuple[str, int]] = {
    b"Y": ("<h", 2),
    b"C": ("<?", 1),
    b"I": ("<i", 4),
    b"F": ("<f", 4),
    b"D": ("<d", 8),
    b"L": ("<q", 8),
}
_ARRAYS: dict[bytes, np.dtype] = {
    b"f": np.dtype("<f4"),
    b"d": np.dtype("<f8"),
    b"l": np.dtype("<i8"),
    b"i": np.dtype("<i4"),
    b"b": np.dtype("?"),
}
_MAX_ZLIB_RATIO = 1100  # deflate expands at most ~1032x: a larger claimed size is a lie
_TEXTURE_OBJECTS = frozenset({"Material", "Texture", "LayeredTexture", "Video"})

Value = bool | int | float | str | bytes | np.ndarray
Keep = Callable[[tuple[str, ...]], bool]


@dataclass(frozen=True)
class Node:
    """One node record: its name, property values and nested records."""

    name: str
    props: tuple[Value, ...] = ()
    children: tuple[Node, ...] = ()

    def child(self, name: str) -> Node | None:
        return next((c for c in self.children if c.name == name), None)


class _Malformed(Exception):
    """Raised inside the reader; :func:`read_binary` turns it into an AssetError naming the file."""


def is_binary(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def read_binary(data: bytes, source: object = "<bytes>", keep: Keep | None = None) -> tuple[int, list[Node]]:
    """(version, top-level nodes) of a binary FBX file's bytes.

    ``keep(path)``, given the names from the top-level record down to a record, says whether to parse the
    record; one not kept is skipped whole (checked for its bounds only) and left out. Raises AssetError
    (kind "unreadable") for anything malformed or truncated.
    """
    if not is_binary(data):
        raise AssetError(source, "not a binary FBX file (no 'Kaydara FBX Binary' header)", "unreadable")
    buf = memoryview(data)
    try:
        if len(buf) < HEADER_BYTES:
            raise _Malformed(f"truncated header ({len(buf)} bytes)")
        (version,) = struct.unpack_from("<I", buf, HEADER_BYTES - 4)
        reader = _Reader(buf, wide=version >= 7500, keep=keep or (lambda path: True))
        return version, reader.top_level()
    except _Malformed as e:
        raise AssetError(source, f"malformed binary FBX: {e}", "unreadable") from None


class _Reader:
    def __init__(self, buf: memoryview, wide: bool, keep: Keep):
        self.buf, self.keep = buf, keep
        self.head = struct.Struct("<QQQB" if wide else "<IIIB")  # end offset, #props, props bytes, name len

    def top_level(self) -> list[Node]:
        nodes, pos = [], HEADER_BYTES
        while True:  # the list ends with an all-zero record; the footer after it is not read
            if self._is_null(pos, len(self.buf)):
                return nodes
            node, pos = self._node(pos, len(self.buf), ())
            if node is not None:
                nodes.append(node)

    def _is_null(self, pos: int, limit: int) -> bool:
        if pos + self.head.size > limit:
            raise _Malformed(f"truncated at byte {pos} (a record needs {self.head.size} bytes)")
        return not any(self.buf[pos : pos + self.head.size])

    def _node(self, pos: int, limit: int, parents: tuple[str, ...]) -> tuple[Node | None, int]:
        """The record at ``pos`` (which must end by ``limit``), or None when skipped; and where it ends."""
        end, count, props_bytes, name_len = self.head.unpack_from(self.buf, pos)
        name_at = pos + self.head.size
        props_at = name_at + name_len
        props_end = props_at + props_bytes
        if not props_end <= end <= limit:
            raise _Malformed(f"record at byte {pos} claims to end at {end}, outside {props_end}..{limit}")
        if len(parents) >= MAX_DEPTH:
            raise _Malformed(f"records nested deeper than {MAX_DEPTH}")
        path = (*parents, bytes(self.buf[name_at:props_at]).decode("ascii", "replace"))
        if not self.keep(path):
            return None, end
        props = self._props(props_at, props_end, count)
        children: list[Node] = []
        if props_end < end:  # a nested list, closed by an all-zero record
            close = end - self.head.size
            if close < props_end:
                raise _Malformed(f"record at byte {pos}: nested list shorter than its end marker")
            at = props_end
            while at < close:
                child, at = self._node(at, close, path)
                if child is not None:
                    children.append(child)
            if not self._is_null(close, end):
                raise _Malformed(f"record at byte {pos}: nested list not closed by an end marker")
        return Node(path[-1], tuple(props), tuple(children)), end

    def _props(self, pos: int, end: int, count: int) -> list[Value]:
        if count > end - pos:  # each property takes at least 2 bytes
            raise _Malformed(f"{count} properties cannot fit in {end - pos} bytes at byte {pos}")
        out = []
        for _ in range(count):
            value, pos = self._prop(pos, end)
            out.append(value)
        if pos != end:
            raise _Malformed(f"properties end at byte {pos}, not at {end} as their record says")
        return out

    def _take(self, pos: int, size: int, end: int) -> memoryview:
        if size < 0 or pos + size > end:
            raise _Malformed(f"a property at byte {pos} runs past its record (needs {size} bytes)")
        return self.buf[pos : pos + size]

    def _prop(self, pos: int, end: int) -> tuple[Value, int]:
        code = bytes(self._take(pos, 1, end))
        pos += 1
        if code in _SCALARS:
            fmt, size = _SCALARS[code]
            return struct.unpack(fmt, self._take(pos, size, end))[0], pos + size
        if code in (b"S", b"R"):
            (size,) = struct.unpack("<I", self._take(pos, 4, end))
            raw = bytes(self._take(pos + 4, size, end))
            return (raw.decode("utf-8", "surrogateescape") if code == b"S" else raw), pos + 4 + size
        if code in _ARRAYS:
            count, encoding, size = struct.unpack("<III", self._take(pos, 12, end))
            raw = self._take(pos + 12, size, end)
            return _array(_ARRAYS[code], count, encoding, raw, pos), pos + 12 + size
        raise _Malformed(f"unknown property type {code!r} at byte {pos - 1}")


def _array(dtype: np.dtype, count: int, encoding: int, raw: memoryview, pos: int) -> np.ndarray:
    expected = count * dtype.itemsize
    if encoding == 0:
        data = bytes(raw)
    elif encoding == 1:
        if expected > _MAX_ZLIB_RATIO * len(raw) + 64:
            raise _Malformed(f"array at byte {pos} claims {count} values from {len(raw)} compressed bytes")
        inflate = zlib.decompressobj()
        try:
            data = inflate.decompress(raw, expected + 1)  # one more: a longer stream is a lie too
        except zlib.error as e:
            raise _Malformed(f"array at byte {pos}: zlib data does not decode ({e})") from None
    else:
        raise _Malformed(f"array at byte {pos}: unknown encoding {encoding}")
    if len(data) != expected:
        raise _Malformed(f"array at byte {pos} holds {len(data)} bytes, not the {expected} of {count} values")
    return np.frombuffer(data, dtype).copy()


# --- embedded textures ------------------------------------------------------------------------------------


def _texture_records(path: tuple[str, ...]) -> bool:
    """Only what links materials to images: Objects' materials, textures, videos, and the connections."""
    if path[0] == "Connections":
        return True
    return path[0] == "Objects" and (len(path) == 1 or path[1] in _TEXTURE_OBJECTS)


def embedded_images(path: Path, data: bytes | None = None) -> dict[str, bytes]:
    """{material name: embedded image bytes} of a binary FBX file; {} for ASCII FBX.

    The image is the one connected (through a Texture, or the first Texture of a LayeredTexture) to the
    material's colour slot (:data:`COLOR_SLOTS`, first found). Raises AssetError for a malformed file.
    """
    data = path.read_bytes() if data is None else data
    if not is_binary(data):
        return {}
    _, nodes = read_binary(data, path, keep=_texture_records)
    return material_images(nodes)


def material_images(nodes: list[Node]) -> dict[str, bytes]:
    """{material name: image bytes} from the Objects and Connections of a parsed FBX tree."""
    objects = {o.props[0]: o for top in nodes if top.name == "Objects" for o in top.children if _ident(o)}
    inputs: dict[object, list[object]] = {}  # texture -> its videos, layered texture -> its textures
    slots: dict[object, dict[str, object]] = {}  # material -> {slot (lower case): (layered) texture}
    for child, parent, slot in _links(nodes):
        kinds = _kind(objects.get(child)), _kind(objects.get(parent))
        if kinds in (("Video", "Texture"), ("Texture", "LayeredTexture")):
            inputs.setdefault(parent, []).append(child)
        elif kinds[0] in ("Texture", "LayeredTexture") and kinds[1] == "Material" and slot:
            slots.setdefault(parent, {}).setdefault(slot.lower(), child)
    by_file = _contents_by_file(objects)
    out: dict[str, bytes] = {}
    for ident, material in objects.items():
        found = slots.get(ident, {}) if material.name == "Material" else {}
        texture = next((found[s.lower()] for s in COLOR_SLOTS if s.lower() in found), None)
        data = _texture_content(texture, objects, inputs, by_file) if texture is not None else None
        if data:
            out.setdefault(_object_name(material), data)
    return out


def _ident(node: Node) -> bool:
    """Whether an object has an id (7.x: an int64; 6.x: its name) to be connected by."""
    return bool(node.props) and isinstance(node.props[0], (int, str))


def _links(nodes: list[Node]) -> list[tuple[object, object, str]]:
    """(child id, parent id, property name or "") of each connection ("C" in 7.x, "Connect" in 6.x)."""
    out = []
    for top in nodes:
        for c in top.children if top.name == "Connections" else ():
            ids = c.props[1:3]
            if c.name in ("C", "Connect") and len(ids) == 2 and all(isinstance(i, (int, str)) for i in ids):
                slot = c.props[3] if len(c.props) > 3 and isinstance(c.props[3], str) else ""
                out.append((c.props[1], c.props[2], slot))
    return out


def _kind(node: Node | None) -> str | None:
    return None if node is None else node.name


def _object_name(node: Node) -> str:
    """An object's name as assimp gives it: 7.x ids come first; "name\\x00\\x01Class" or "Class::name"."""
    raw = node.props[1] if isinstance(node.props[0], int) and len(node.props) > 1 else node.props[0]
    name = raw if isinstance(raw, str) else ""
    if "\x00\x01" in name:
        return name.split("\x00\x01")[0]
    return name.split("::", 1)[1] if name.startswith(f"{node.name}::") else name


def _string(node: Node, name: str) -> str:
    field = node.child(name)
    value = field.props[0] if field is not None and field.props else ""
    return value if isinstance(value, str) else ""


def _file_key(node: Node) -> str:
    """The base name of the file a Video or Texture names, lower case ("" when none)."""
    name = _string(node, "RelativeFilename") or _string(node, "FileName") or _string(node, "Filename")
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower()


def _content(video: Node) -> bytes | None:
    field = video.child("Content")
    value = field.props[0] if field is not None and field.props else None
    return value if isinstance(value, bytes) and value else None


def _contents_by_file(objects: dict[object, Node]) -> dict[str, bytes]:
    """{file base name: bytes}: exporters may embed an image once and leave other Videos of it empty."""
    out: dict[str, bytes] = {}
    for node in objects.values():
        data = _content(node) if node.name == "Video" else None
        if data and _file_key(node):
            out.setdefault(_file_key(node), data)
    return out


def _texture_content(
    texture: object,
    objects: dict[object, Node],
    inputs: dict[object, list[object]],
    by_file: dict[str, bytes],
) -> bytes | None:
    node = objects[texture]
    if node.name == "LayeredTexture":  # its first layer
        layers = [t for t in inputs.get(texture, []) if _kind(objects.get(t)) == "Texture"]
        return _texture_content(layers[0], objects, inputs, by_file) if layers else None
    for video in inputs.get(texture, []):
        data = _content(objects[video]) or by_file.get(_file_key(objects[video]))
        if data:
            return data
    return by_file.get(_file_key(node))
