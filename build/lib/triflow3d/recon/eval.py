"""Evaluate a reconstructor on held-out objects: novel-view PSNR (on white) and silhouette IoU.

For each object of a zero123pp views folder the six input views give a triplane; it is rendered
deterministically from the cameras of ``views_from`` (a folder rendered with another rig for the same
ids) or, without it, from the input cameras themselves (then ``novel`` is false). PSNR is per view on
white-composited colour, IoU per view between rendered alpha > 0.5 and the target mask alpha > 0.5;
both are averaged over all views. ``error_share`` splits the summed squared colour error of all views
into pixels covered in both the render and the target (``colour``), in exactly one of them
(``silhouette``) and in neither (``background``): where the PSNR is lost.

With ``greyscale`` each object is encoded a second time from greyscale copies of its input views
(:func:`greyscale`: R = G = B = BT.601 luma, alpha kept) and rendered from the same cameras; the dict
then holds ``greyscale``: ``planes_change``, the mean over objects of ||planes(grey) - planes|| /
||planes|| (Frobenius norms of the whole triplane), and ``colour_ratio``, the summed absolute change of
the rendered colour over the target's covered pixels (mask > 0.5, all views and objects pooled) divided
by the summed |target - greyscale(target)| there. An encoder that renders what it is given scores
``colour_ratio`` near 1 (its renders lose as much colour as the inputs did), one that reads brightness
only scores 0 (see ``docs/encoders.md``).

With ``roundtrip`` the dict also holds ``roundtrip``: the round trip's category / main-colour accuracy
and fragmentation on each object's own caption attributes, scored by ``triflow3d eval``'s code
(``evaluation.evaluate.views_roundtrip``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from triflow3d.data.views import ViewsFolder, composite_white
from triflow3d.errors import ConfigError, TriflowError
from triflow3d.evaluation.evaluate import views_roundtrip
from triflow3d.evaluation.image import psnr as image_psnr
from triflow3d.utils.progress import progress_bar

MAX_PSNR_DB = 100.0  # what an MSE floor of 1e-10 gave
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma of the sRGB values (PIL's "L" conversion)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (M, 3, S, S) images in [0, 1] -> (M,) float32; ``pred`` is clamped to
    [0, 1] and identical images give 100 dB (not inf) so means stay finite. See ``evaluation.image.psnr``."""
    return image_psnr(pred.clamp(0, 1), target).clamp_max(MAX_PSNR_DB).float()


def silhouette_iou(alpha: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image IoU of (M, 1, S, S) coverages thresholded at ``threshold`` -> (M,); empty vs empty = 1."""
    a, m = (alpha > threshold).flatten(1), (mask > threshold).flatten(1)
    inter, union = (a & m).sum(1).float(), (a | m).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def error_split(
    rgb: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Summed squared error of (M, 3, S, S) images on white -> (3,): pixels covered (alpha / mask > 0.5)
    in both, in exactly one, in neither."""
    se = (rgb.clamp(0, 1) - target).square().sum(1)  # (M, S, S)
    a, m = alpha[:, 0] > 0.5, mask[:, 0] > 0.5
    return torch.stack([se[a & m].sum(), se[a ^ m].sum(), se[~a & ~m].sum()]).double()


def score_views(rgb: torch.Tensor, alpha: torch.Tensor, target: torch.Tensor):
    """Renders on white rgb (M, 3, S, S) and alpha (M, 1, S, S) vs RGBA targets (M, 4, S, S) -> per-view
    PSNR (M,) on white, IoU (M,) and the error split (3,) of :func:`error_split`."""
    mask, white = target[:, 3:], composite_white(target)
    return psnr(rgb, white), silhouette_iou(alpha, mask), error_split(rgb, white, alpha, mask)


def greyscale(images: torch.Tensor) -> torch.Tensor:
    """(..., 3 | 4, H, W) RGB(A) -> the same with R = G = B = the BT.601 luma; alpha is kept."""
    w = torch.tensor(GREY_WEIGHTS, dtype=images.dtype, device=images.device)
    luma = torch.einsum("c,...chw->...hw", w, images[..., :3, :, :]).unsqueeze(-3)
    return torch.cat([luma.expand(*luma.shape[:-3], 3, *luma.shape[-2:]), images[..., 3:, :, :]], -3)


@torch.inference_mode()
def evaluate_object(
    model,
    inputs: ViewsFolder,
    id: str,
    targets: ViewsFolder,
    size: int,
    max_views: int | None,
    grey: bool = False,
):
    """-> per-view PSNR (M,), IoU (M,), the error split (3,) of :func:`error_split` for one object, and
    with ``grey`` the greyscale sums (3,) (planes change, render change, target chroma; else None)."""
    inp = inputs.load(id, int(model.config.image_size))
    tgt = targets.load(id, size)
    dev = next(model.parameters()).device
    images, in_cams = inp.images[None].to(dev), inp.input_cameras[None].to(dev)  # (1, V, 4, H, W) RGBA
    cams = tgt.render_cameras[:max_views][None].to(dev)  # (1, M, 25)
    target = tgt.images[:max_views]  # (M, 4, S, S)

    def encode_render(views: torch.Tensor):  # the model composites what it needs
        planes = model.forward_planes(views, in_cams)
        out = model.render(planes, cams, size, deterministic=True)
        rgb, alpha = out["rgb"][0].float().cpu(), out["alpha"][0].float().cpu()
        return planes, rgb, alpha.reshape(target[:, 3:].shape)

    planes, rgb, alpha = encode_render(images)
    scores = score_views(rgb, alpha, target)
    if not grey:
        return *scores, None
    planes_g, rgb_g, _ = encode_render(greyscale(images))
    covered = (target[:, 3:] > 0.5).expand_as(rgb)
    white = composite_white(target)
    sums = [(planes_g - planes).norm() / planes.norm().clamp_min(1e-12), (rgb_g - rgb).abs()[covered].sum(),
            (white - greyscale(white)).abs()[covered].sum()]  # fmt: skip
    return *scores, torch.stack([x.double().cpu() for x in sums])


def evaluate_reconstructor(
    model,
    data: str | Path,
    views_from: str | Path | None = None,
    size: int = 128,
    limit: int | None = None,
    max_views: int | None = None,
    per_object: bool = False,
    roundtrip: bool = False,
    grey: bool = False,
) -> dict:
    """Mean PSNR / IoU over the objects of ``data`` (and their views in ``views_from``) -> a JSON-able dict.

    With ``per_object`` the dict also lists ``objects``: ``{id, psnr, iou, views}`` per evaluated object;
    with ``grey`` it holds ``greyscale`` (see the module docstring; twice the work); ``white`` is the mean
    IoU of the objects whose main colour (manifest attributes) is white, when there are any.
    """
    t0 = time.perf_counter()
    inputs = ViewsFolder(data)
    targets = ViewsFolder(views_from) if views_from else inputs
    ids = [i for i in inputs.ids if i in targets.ids][:limit]
    if not ids:
        raise ConfigError(f"no objects common to {data} and {views_from or data}")
    psnrs, ious, done, fails = [], [], [], []
    split = torch.zeros(3, dtype=torch.float64)
    greys = []
    model.eval()
    with progress_bar() as bar:
        task = bar.add_task("eval", total=len(ids), status="")
        for i in ids:
            try:
                p, q, err, g = evaluate_object(model, inputs, i, targets, size, max_views, grey)
            except TriflowError as e:
                fails.append({"id": i, "error": str(e)})
                continue
            split += err
            greys += [g] if g is not None else []
            psnrs.append(p)
            ious.append(q)
            done.append(i)
            bar.advance(task)
    if not psnrs:
        raise ConfigError(f"every object failed to evaluate, e.g. {fails[0]}")
    p, q = torch.cat(psnrs), torch.cat(ious)
    objects = {"objects": object_rows(done, psnrs, ious)} if per_object else {}
    white = [float(x.mean()) for i, x in zip(done, ious) if main_colour(inputs, i) == "white"]
    if white:  # objects as white as the background: only their alpha (or shading) tells them apart
        objects["white"] = {"n": len(white), "iou": round(sum(white) / len(white), 5)}
    if greys:
        objects["greyscale"] = greyscale_summary(torch.stack(greys))
    if roundtrip:
        objects["roundtrip"] = views_roundtrip(model, inputs, done)
    return {
        "psnr": round(float(p.mean()), 4),
        "psnr_min_object": round(min(float(x.mean()) for x in psnrs), 4),
        "iou": round(float(q.mean()), 5),
        "n": len(psnrs),
        "views": int(p.numel()),
        "failed": len(fails),
        "error_share": {
            k: round(v, 4)
            for k, v in zip(
                ("colour", "silhouette", "background"), (split / split.sum().clamp_min(1e-12)).tolist()
            )
        },
        "encoder": str(getattr(model, "encoder_id", "custom")),
        "size": size,
        "novel": views_from is not None,
        "data": str(data),
        "views_from": str(views_from) if views_from else None,
        "seconds": round(time.perf_counter() - t0, 2),
        **objects,
    }


def main_colour(folder: ViewsFolder, id: str) -> str | None:
    """The object's main colour from its manifest attributes (procedural shapes), else None."""
    return (folder.row(id).get("attributes") or {}).get("colour")


def object_rows(ids: list[str], psnrs: list[torch.Tensor], ious: list[torch.Tensor]) -> list[dict]:
    """Per-object means of per-view PSNR (M,) / IoU (M,) -> ``[{id, psnr, iou, views}]`` in input order."""
    return [
        {
            "id": i,
            "psnr": round(float(p.mean()), 4),
            "iou": round(float(q.mean()), 5),
            "views": int(p.numel()),
        }
        for i, p, q in zip(ids, psnrs, ious, strict=True)
    ]


def greyscale_summary(sums: torch.Tensor) -> dict:
    """Per-object greyscale sums (N, 3) of :func:`evaluate_object` -> ``{planes_change, colour_ratio}``."""
    return {
        "planes_change": round(float(sums[:, 0].mean()), 4),
        "colour_ratio": round(float(sums[:, 1].sum() / sums[:, 2].sum().clamp_min(1e-12)), 4),
    }


def quality_ok(result: dict, min_psnr: float = 26.0, min_iou: float = 0.92) -> bool:
    """The shipped lrm-small targets."""
    return result["psnr"] >= min_psnr and result["iou"] >= min_iou and not math.isnan(result["psnr"])
