"""How much can a reconstructor's decoder show? Fit one object's triplane directly to its views.

    .venv/bin/python benchmarks/decoder_capacity.py [--encoder lrm-small] [--objects 1] [--steps 300]

Starts from the encoder's own triplane for a held-out object and optimises it (Adam, random ray batches
of the training views, colour on white + coverage loss, as ``recon train``, dense rendering with the
model's own samples per ray), once with the decoder frozen and once with the decoder trained too.

Training views: the six input views and the novel views from ``--max-views`` on. Held-out views: the
first ``--max-views`` novel views, exactly the ones ``triflow3d recon eval --max-views 4`` scores; every
50 steps they are rendered whole (deterministic, the model's render path) and scored with the same code
(``recon.eval.score_views``: PSNR on white, silhouette IoU). So step 0 is what the encoder gives for this
object, and the frozen run's held-out PSNR is what any image encoder could give through that decoder
(at this step budget and from these views; one object, so a spot check rather than a mean). A large gap
to the joint run means the decoder, not the encoder, limits quality. One JSON line per (object, run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import torch.nn.functional as F

from triflow3d.data.views import ViewsFolder
from triflow3d.encoders import load_reconstructor
from triflow3d.recon.data import ReconData, load_recon_data, sample_rays
from triflow3d.recon.eval import score_views
from triflow3d.triplane.volume import render_rays

INPUT_VIEWS = 6


def training_views(data: ReconData, max_views: int) -> ReconData:
    """``data`` without the held-out novel views (supervision rows 6 .. 6 + max_views - 1)."""
    keep = [*range(INPUT_VIEWS), *range(INPUT_VIEWS + max_views, data.sup.shape[1])]
    return dataclasses.replace(
        data, sup=data.sup[:, keep], sup_c2w=data.sup_c2w[:, keep], sup_K=data.sup_K[:, keep]
    )


@torch.no_grad()
def heldout(model, planes: torch.Tensor, target: torch.Tensor, cameras: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR / IoU of the whole held-out views (M, 4, S, S) rendered deterministically."""
    out = model.render(planes, cameras[None], target.shape[-1], deterministic=True)
    p, q, _ = score_views(out["rgb"][0], out["alpha"][0], target)
    return round(float(p.mean()), 2), round(float(q.mean()), 4)


def fit(args, data: ReconData, index: int, target, cameras, train_decoder: bool) -> dict:
    model = load_reconstructor(args.encoder)
    idx = torch.tensor([index])
    with torch.no_grad():
        planes = model.forward_planes(data.inputs[idx].float() / 255.0, data.input_cameras[idx])
    planes.requires_grad_(True)
    groups = [{"params": [planes], "lr": 0.05}]
    if train_decoder:
        model.synthesizer.requires_grad_(True)
        groups.append({"params": list(model.synthesizer.parameters()), "lr": 3e-3})
    opt = torch.optim.Adam(groups)
    opts = dataclasses.replace(model.render_options, fast=False)  # dense: every sample gets a gradient
    train = training_views(data, args.max_views)
    g = torch.Generator().manual_seed(args.seed)
    curve = []
    for step in range(args.steps + 1):
        if step % 50 == 0 or step == args.steps:
            curve.append(heldout(model, planes, target, cameras))
        if step == args.steps:
            break
        rays = sample_rays(train, idx, args.rays, 0.5, g)
        out = render_rays(model.synthesizer, planes, rays.origins, rays.dirs, opts, False, generator=g)
        loss = F.mse_loss(out["rgb"], rays.rgb) + 0.5 * F.mse_loss(out["weight"], rays.alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"encoder": args.encoder, "object": data.ids[index], "decoder": "trained" if train_decoder else "frozen",
            "steps": args.steps, "train_views": int(train.sup.shape[1]), "heldout_views": int(target.shape[0]),
            "heldout_psnr_every_50": [p for p, _ in curve], "heldout_iou_every_50": [q for _, q in curve],
            "encoder_psnr": curve[0][0], "final_psnr": curve[-1][0], "final_iou": curve[-1][1]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="lrm-small")
    p.add_argument("--data", default="data/views/test", help="zero123pp views (inputs, also trained on)")
    p.add_argument("--views", default="data/views_random/test", help="novel views of the same ids")
    p.add_argument("--objects", type=int, nargs="+", default=[1], help="indices of objects in --data")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rays", type=int, default=2048, help="training rays per step")
    p.add_argument("--max-views", type=int, default=4, help="held-out novel views (recon eval's)")
    p.add_argument("--size", type=int, default=128, help="supervision and held-out image size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    image_size = load_reconstructor(args.encoder).config.image_size
    data = load_recon_data([args.data], [args.views], image_size, args.size, None, max(args.objects) + 1)
    novel = ViewsFolder(args.views)
    for index in args.objects:
        tgt = novel.load(data.ids[index], args.size)
        target, cameras = tgt.images[: args.max_views], tgt.render_cameras[: args.max_views]
        for train_decoder in (False, True):
            print(json.dumps(fit(args, data, index, target, cameras, train_decoder)), flush=True)


if __name__ == "__main__":
    main()
