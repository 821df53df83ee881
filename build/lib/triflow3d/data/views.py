"""Reading a rendered views folder (the output of ``triflow3d render``).

Layout: ``DIR/<id>/rgba_000.png ...`` (8-bit RGBA), ``DIR/<id>/cameras.json`` {conventions_version, rig,
fov_deg, size, c2w (N, 4, 4), input_cameras (N, 16), render_cameras (N, 25), ...} and
``DIR/manifest.jsonl`` rows {id, source, caption?, attributes?, status "ok" | "failed", ...}.
Images come back as float RGBA in [0, 1], channels first; :func:`composite_white` puts them on white.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from triflow3d import cameras as cam
from triflow3d import conventions as cv
from triflow3d.data import ranks
from triflow3d.errors import ConfigError

MANIFEST = "manifest.jsonl"  # of a views folder, and of the shapes folder it was rendered from
CAMERAS = "cameras.json"


def view_file(k: int, kind: str = "rgba", ext: str = "png") -> str:
    """File name of view ``k`` of one pass: ``rgba_000.png``, ``depth_000.npy``, ``normal_000.png`` ..."""
    return f"{kind}_{k:03d}.{ext}"


@dataclass(frozen=True)
class ObjectViews:
    """All views of one object: images (N, 4, S, S) RGBA in [0, 1] and their cameras."""

    id: str
    images: torch.Tensor  # (N, 4, S, S) float32, or uint8 when loaded with as_uint8
    c2w: torch.Tensor  # (N, 4, 4) OpenGL camera-to-world
    K: torch.Tensor  # (N, 3, 3) normalised intrinsics
    rig: str

    @property
    def input_cameras(self) -> torch.Tensor:  # (N, 16)
        return cam.encode_input_cameras(self.c2w, self.K)

    @property
    def render_cameras(self) -> torch.Tensor:  # (N, 25)
        return cam.encode_render_cameras(self.c2w, self.K)


def composite_white(rgba: torch.Tensor) -> torch.Tensor:
    """(..., 4, H, W) RGBA in [0, 1] -> (..., 3, H, W) RGB on the white background."""
    rgb, a = rgba[..., :3, :, :], rgba[..., 3:4, :, :]
    return rgb * a + cv.BACKGROUND * (1.0 - a)


def load_rgba(path: Path, size: int | None = None) -> np.ndarray:
    """One PNG -> (4, S, S) uint8 RGBA, resized (box filter on premultiplied colour) when ``size`` is set."""
    try:
        img = PIL.Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read image ({e})") from e
    img = img.convert("RGBA")
    if size is not None and img.size != (size, size):
        # Premultiply so transparent pixels' (arbitrary) colour does not bleed into edges.
        img = img.convert("RGBa").resize((size, size), PIL.Image.BOX).convert("RGBA")
    return np.asarray(img).transpose(2, 0, 1).copy()


def read_cameras(obj_dir: Path) -> tuple[torch.Tensor, torch.Tensor, str, dict]:
    """``cameras.json`` -> c2w (N, 4, 4), K (N, 3, 3), rig name, the raw JSON."""
    path = obj_dir / CAMERAS
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read cameras ({e})") from e
    if meta.get("conventions_version", cv.CONVENTIONS_VERSION) != cv.CONVENTIONS_VERSION:
        raise ConfigError(
            f"{path}: conventions_version {meta['conventions_version']} != {cv.CONVENTIONS_VERSION}; re-render"
        )
    if "render_cameras" in meta:
        c2w, K = cam.decode_render_cameras(torch.tensor(meta["render_cameras"], dtype=torch.float32))
    elif "c2w" in meta and "fov_deg" in meta:
        c2w = torch.tensor(meta["c2w"], dtype=torch.float32)
        K = cam.intrinsics_from_fov(float(meta["fov_deg"])).expand(c2w.shape[0], 3, 3).clone()
    else:
        raise ConfigError(f"{path}: needs render_cameras or c2w + fov_deg")
    return c2w.contiguous(), K.contiguous(), str(meta.get("rig", "")), meta


def image_paths(obj_dir: Path, n: int) -> list[Path]:
    paths = [obj_dir / view_file(i) for i in range(n)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"{obj_dir}: cameras.json lists {n} views but {missing[0]} is missing")
    return paths


def load_object(obj_dir: Path, size: int | None = None, as_uint8: bool = False) -> ObjectViews:
    """Images and cameras of one object folder; ``size`` resizes every view to S x S."""
    obj_dir = Path(obj_dir)
    c2w, K, rig, _ = read_cameras(obj_dir)
    imgs = np.stack([load_rgba(p, size) for p in image_paths(obj_dir, c2w.shape[0])])  # (N, 4, S, S)
    images = torch.from_numpy(imgs)
    if not as_uint8:
        images = images.float() / 255.0
    return ObjectViews(obj_dir.name, images, c2w, K, rig)


def is_zero123pp(c2w: torch.Tensor, atol: float = 1e-3) -> bool:
    """Whether the cameras are the six Zero123++ views the reconstructor reads (in order)."""
    ref = cam.zero123pp_rig().c2w
    return c2w.shape == ref.shape and bool(torch.allclose(c2w.float(), ref, atol=atol))


class ViewsFolder:
    """A rendered views folder: ``ids`` (status ok, with cameras.json), per-id manifest rows, loading."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"{self.root}: views folder does not exist")
        self.rows: dict[str, dict] = ranks.read_rows(self.root, MANIFEST)  # rank files not yet merged too
        if self.rows:
            ids = [i for i, r in self.rows.items() if r.get("status", "ok") == "ok"]
        else:  # no manifest: every sub-folder with cameras.json
            ids = [p.name for p in self.root.iterdir() if (p / CAMERAS).exists()]
        self.ids: list[str] = sorted(i for i in ids if (self.root / i / CAMERAS).exists())

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, id: str) -> Path:
        return self.root / id

    def row(self, id: str) -> dict:
        return self.rows.get(id, {"id": id})

    def load(self, id: str, size: int | None = None, as_uint8: bool = False) -> ObjectViews:
        return load_object(self.path(id), size, as_uint8)
