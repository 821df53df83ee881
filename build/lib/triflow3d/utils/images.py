"""Pictures as files: any image-like value -> PIL, labelled grids, atomic PNG writes (Pillow only)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from triflow3d.utils.io import atomic_path


def to_pil(image: object) -> Image.Image:
    """PIL RGB image from a PIL image, a (3, H, W) / (H, W, 3) tensor or array in [0, 1] or uint8."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return Image.fromarray(a).convert("RGB")


def load_font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def save_grid(
    images: Sequence[object],
    rows: int,
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
    pad: int = 4,
) -> Path:
    """Tile images into ``rows`` rows (row-major) on white, with an optional label under each tile."""
    tiles = [to_pil(im) for im in images]
    if not tiles or rows < 1:
        raise ValueError(f"save_grid needs images and rows >= 1, got {len(tiles)} images, rows={rows}")
    cols = math.ceil(len(tiles) / rows)
    w, h = max(t.width for t in tiles), max(t.height for t in tiles)
    label_h = 16 if labels else 0
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, tile in enumerate(tiles):
        x, y = pad + (i % cols) * (w + pad), pad + (i // cols) * (h + label_h + pad)
        grid.paste(tile, (x + (w - tile.width) // 2, y + (h - tile.height) // 2))
        if labels and i < len(labels):
            draw.text((x + 2, y + h + 2), str(labels[i]), fill="black", font=load_font())
    return save_png(grid, path)


def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """A PIL image or a (H, W[, C]) uint8 array as a PNG, written atomically."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
