"""Evaluate a reconstructor on held-out objects: novel-view PSNR (on white) and silhouette IoU.

For each object of a zero123pp views folder the six input views give a triplane; it is rendered
deterministically from the cameras of ``views_from`` (a folder rendered with another rig for the same
ids) or, without it, from the input cameras themselves (then ``novel`` is false). PSNR is per view on
white-composited colour, IoU per view between rendered alpha > 0.5 and the target mask alpha > 0.5;
both are averaged over all views. ``error_share`` splits the summed squared colour error of all views
into pixels covered in both the render and the target (``colour``), in exactly one of them
(``silhouette``) and in neither (``background``): where the PSNR is lost.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from triflow3d.data.views import ViewsFolder, composite_white
from triflow3d.errors import ConfigError, TriflowError
from triflow3d.evaluation.image import psnr as image_psnr
from triflow3d.utils.progress import progress_bar

MAX_PSNR_DB = 100.0  # what an MSE floor of 1e-10 gave


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


@torch.inference_mode()
def evaluate_object(
    model, inputs: ViewsFolder, id: str, targets: ViewsFolder, size: int, max_views: int | None
):
    """-> per-view PSNR (M,), IoU (M,) and the error split (3,) of :func:`error_split` for one object."""
    inp = inputs.load(id, int(model.config.image_size))
    tgt = targets.load(id, size)
    dev = next(model.parameters()).device
    images = inp.images[None].to(dev)  # (1, V, 4, H, W) RGBA: the model composites what it needs
    planes = model.forward_planes(images, inp.input_cameras[None].to(dev))
    cams = tgt.render_cameras[:max_views][None].to(dev)  # (1, M, 25)
    out = model.render(planes, cams, size, deterministic=True)
    target = tgt.images[:max_views]  # (M, 4, S, S)
    rgb, alpha = out["rgb"][0].float().cpu(), out["alpha"][0].float().cpu()
    alpha, mask, white = alpha.reshape(target[:, 3:].shape), target[:, 3:], composite_white(target)
    return psnr(rgb, white), silhouette_iou(alpha, mask), error_split(rgb, white, alpha, mask)


def evaluate_reconstructor(
    model,
    data: str | Path,
    views_from: str | Path | None = None,
    size: int = 128,
    limit: int | None = None,
    max_views: int | None = None,
    per_object: bool = False,
) -> dict:
    """Mean PSNR / IoU over the objects of ``data`` (and their views in ``views_from``) -> a JSON-able dict.

    With ``per_object`` the dict also lists ``objects``: ``{id, psnr, iou, views}`` per evaluated object.
    """
    t0 = time.perf_counter()
    inputs = ViewsFolder(data)
    targets = ViewsFolder(views_from) if views_from else inputs
    ids = [i for i in inputs.ids if i in targets.ids][:limit]
    if not ids:
        raise ConfigError(f"no objects common to {data} and {views_from or data}")
    psnrs, ious, done, fails = [], [], [], []
    split = torch.zeros(3, dtype=torch.float64)
    model.eval()
    with progress_bar() as bar:
        task = bar.add_task("eval", total=len(ids), status="")
        for i in ids:
            try:
                p, q, err = evaluate_object(model, inputs, i, targets, size, max_views)
            except TriflowError as e:
                fails.append({"id": i, "error": str(e)})
                continue
            split += err
            psnrs.append(p)
            ious.append(q)
            done.append(i)
            bar.advance(task)
    if not psnrs:
        raise ConfigError(f"every object failed to evaluate, e.g. {fails[0]}")
    p, q = torch.cat(psnrs), torch.cat(ious)
    objects = {"objects": object_rows(done, psnrs, ious)} if per_object else {}
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


def quality_ok(result: dict, min_psnr: float = 26.0, min_iou: float = 0.92) -> bool:
    """The shipped lrm-small targets."""
    return result["psnr"] >= min_psnr and result["iou"] >= min_iou and not math.isnan(result["psnr"])
