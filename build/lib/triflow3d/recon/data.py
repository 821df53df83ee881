"""In-memory training data for the reconstructor: input views, supervision views, random ray subsets.

Everything is preloaded as uint8 (input RGBA at the model's image size, composited by the model; supervision
RGBA at ``sup_size``), so a training step only gathers pixels. Rays are built per chosen pixel from a
per-intrinsics table of camera-frame directions, rotated by each view's c2w.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from triflow3d.cameras import pixel_rays
from triflow3d.data.views import ViewsFolder, is_zero123pp
from triflow3d.errors import ConfigError, TriflowError
from triflow3d.utils.parallel import ordered_map
from triflow3d.utils.progress import progress_bar


@dataclass
class ReconData:
    """N objects: inputs (N, V, 4, H, W) uint8 RGBA, input cameras (N, V, 16), supervision views
    sup (N, M, 4, S, S) uint8 RGBA with c2w (N, M, 4, 4) and K (N, M, 3, 3)."""

    ids: list[str]
    inputs: torch.Tensor
    input_cameras: torch.Tensor
    sup: torch.Tensor
    sup_c2w: torch.Tensor
    sup_K: torch.Tensor
    failures: list[str]
    dirs: list[Path] | None = None  # each object's input views folder
    points: torch.Tensor | None = None  # (N, P, 3) 3D supervision points, when enabled
    occ: torch.Tensor | None = None  # (N, P) inside labels of those points
    frame_dirs: torch.Tensor | None = None  # (S*S, 3) camera-frame ray directions of the shared sup_K

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> ReconData:
        """A copy with every tensor on ``device`` (uint8 images stay uint8) and the supervision views'
        shared field of view checked once and turned into ``frame_dirs``: the device-resident data of a
        training run, from which ``sample_rays`` draws with no host synchronisation."""
        K0 = self.sup_K[0, 0]
        if not torch.allclose(self.sup_K, K0.expand_as(self.sup_K)):
            raise ConfigError("supervision views must share one field of view")
        move = {
            f: getattr(self, f)
            for f in ("inputs", "input_cameras", "sup", "sup_c2w", "sup_K", "points", "occ")
        }
        move = {k: None if v is None else v.to(device) for k, v in move.items()}
        dirs = camera_frame_dirs(K0, self.sup.shape[-1]).to(device)
        return ReconData(self.ids, failures=self.failures, dirs=self.dirs, frame_dirs=dirs, **move)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def load_recon_data(
    inputs: list[str | Path],
    supervision: list[str | Path],
    image_size: int,
    sup_size: int,
    views_per_object: int | None = None,
    limit: int | None = None,
    workers: int = 1,
) -> ReconData:
    """Objects present in an input (zero123pp) folder; supervision = the input views plus every view of
    the same id in the ``supervision`` folders (the first ``views_per_object`` views in total, if set).
    ``workers`` threads read the images (the result does not depend on it)."""
    in_folders = [ViewsFolder(p) for p in inputs]
    sup_folders = [ViewsFolder(p) for p in supervision]
    pairs = [(f, i) for f in in_folders for i in f.ids][:limit]
    if not pairs:
        raise ConfigError(f"no objects found in {[str(p) for p in inputs]}")

    def load(pair: tuple[ViewsFolder, str]) -> tuple | str:
        try:
            return _load_one(*pair, sup_folders, image_size, sup_size, views_per_object)
        except TriflowError as e:
            return f"{pair[1]}: {e}"

    rows: list[tuple] = []
    fails: list[str] = []
    with progress_bar() as bar:
        task = bar.add_task("load views", total=len(pairs), status="")
        for row in ordered_map(load, pairs, workers):
            (fails if isinstance(row, str) else rows).append(row)
            bar.advance(task)
    if not rows:
        raise ConfigError(f"no loadable objects: {fails[:3]}")
    m = min(r[3].shape[0] for r in rows)  # equal view counts, so objects stack
    ids, inp, cams, sup, c2w, K, dirs = zip(
        *[(r[0], r[1], r[2], r[3][:m], r[4][:m], r[5][:m], r[6]) for r in rows]
    )
    return ReconData(
        list(ids),
        torch.stack(inp),
        torch.stack(cams),
        torch.stack(sup),
        torch.stack(c2w),
        torch.stack(K),
        fails,
        list(dirs),
    )


def _load_one(
    folder: ViewsFolder, id: str, sup_folders: list[ViewsFolder], image_size: int, sup_size: int, n
):
    inp = folder.load(id, image_size)
    if not is_zero123pp(inp.c2w):
        raise ConfigError(f"{folder.path(id)}: input views are not the zero123pp rig")
    views = [folder.load(id, sup_size, as_uint8=True)]
    views += [
        f.load(id, sup_size, as_uint8=True) for f in sup_folders if id in f.rows or (f.path(id)).is_dir()
    ]
    sup = torch.cat([v.images for v in views])[:n]  # (M, 4, S, S)
    c2w = torch.cat([v.c2w for v in views])[:n]
    K = torch.cat([v.K for v in views])[:n]
    return id, _to_uint8(inp.images), inp.input_cameras, sup, c2w, K, folder.path(id)


@dataclass
class RayBatch:
    origins: torch.Tensor  # (B, N, 3)
    dirs: torch.Tensor  # (B, N, 3) unit
    rgb: torch.Tensor  # (B, N, 3) target colour on white
    alpha: torch.Tensor  # (B, N, 1) target coverage

    def to(self, device: torch.device | str) -> RayBatch:
        return RayBatch(*(t.to(device) for t in (self.origins, self.dirs, self.rgb, self.alpha)))


def camera_frame_dirs(K: torch.Tensor, size: int) -> torch.Tensor:
    """Unit ray directions (S*S, 3) in the OpenGL camera frame for intrinsics K (3, 3)."""
    _, d = pixel_rays(torch.eye(4)[None], K[None].float(), size)
    return d[0]


def silhouette_edges(alpha: torch.Tensor) -> torch.Tensor:
    """Coverage (..., S, S) -> 1.0 on the outline's 3x3 band (pixels whose neighbourhood holds both covered
    and uncovered pixels), else 0.0."""
    m = (alpha > 0.5).float().flatten(0, -3)[:, None]  # (N, 1, S, S)
    grown = F.max_pool2d(m, 3, stride=1, padding=1)
    shrunk = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return (grown - shrunk).reshape(alpha.shape)


def pixel_weights(alpha: torch.Tensor, fg_fraction: float, edge_fraction: float = 0.0) -> torch.Tensor:
    """Coverage (B, M, S, S) -> unnormalised ray-drawing weights (B, M*S*S): ``fg_fraction`` of the mass on
    covered pixels, ``edge_fraction`` on the outline band (:func:`silhouette_edges`), the rest uniform."""
    B, M, S, _ = alpha.shape
    flat = alpha.reshape(B, M * S * S)
    fg = (flat > 0).float()
    rest = 1.0 - fg_fraction - edge_fraction
    w = fg_fraction * fg / fg.sum(1, keepdim=True).clamp_min(1.0) + rest / (M * S * S)
    if edge_fraction > 0:
        edge = silhouette_edges(alpha).reshape(B, M * S * S)
        w = w + edge_fraction * edge / edge.sum(1, keepdim=True).clamp_min(1.0)
    return w


def sample_rays(
    data: ReconData,
    idx: torch.Tensor,
    n_rays: int,
    fg_fraction: float,
    g: torch.Generator,
    edge_fraction: float = 0.0,
) -> RayBatch:
    """``n_rays`` random pixels per object: a ``fg_fraction`` share drawn from covered pixels, an
    ``edge_fraction`` share from the silhouette's outline band, the rest uniformly."""
    sup = data.sup[idx]  # (B, M, 4, S, S) uint8
    B, M, _, S, _ = sup.shape
    w = pixel_weights(sup[:, :, 3].float() / 255.0, fg_fraction, edge_fraction)
    flat = torch.multinomial(w, n_rays, replacement=True, generator=g)  # (B, N) over views x pixels
    view, pix = flat // (S * S), flat % (S * S)
    c2w = data.sup_c2w[idx].gather(1, view[..., None, None].expand(B, n_rays, 4, 4))  # (B, N, 4, 4)
    if data.frame_dirs is not None:  # resident data: the shared field of view was checked by ReconData.to
        d_cam = data.frame_dirs[pix]  # (B, N, 3)
    else:
        K0 = data.sup_K[idx[0], 0]
        if not torch.allclose(data.sup_K[idx], K0.expand_as(data.sup_K[idx])):
            raise ConfigError("supervision views must share one field of view")
        d_cam = camera_frame_dirs(K0, S)[pix]  # (B, N, 3)
    dirs = torch.einsum("bnij,bnj->bni", c2w[..., :3, :3], d_cam)
    rgba = sup.permute(0, 1, 3, 4, 2).reshape(B, M * S * S, 4).gather(1, flat[..., None].expand(B, n_rays, 4))
    rgba = rgba.float() / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    return RayBatch(c2w[..., :3, 3].contiguous(), dirs, rgb, rgba[..., 3:])
