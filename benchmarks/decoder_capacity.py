"""How much can a reconstructor's decoder show? Fit one object's triplane directly to its views.

    .venv/bin/python benchmarks/decoder_capacity.py [--encoder lrm-small] [--object 1] [--steps 300]

Starts from the encoder's own triplane for a held-out object and optimises it (Adam, random ray batches,
colour on white + coverage loss, as ``recon train``) against the object's input and novel views, once
with the decoder frozen and once with the decoder trained too. The PSNR reached by the frozen run is
an upper bound on what any image encoder can give through that decoder (at this step budget); a large
gap to the joint run means the decoder, not the encoder, limits quality. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import torch
import torch.nn.functional as F

from triflow3d.encoders import load_reconstructor
from triflow3d.recon.data import load_recon_data, sample_rays
from triflow3d.triplane.volume import render_rays


def fit(encoder: str, data, index: int, steps: int, train_decoder: bool, seed: int = 0) -> dict:
    model = load_reconstructor(encoder)
    idx = torch.tensor([index])
    with torch.no_grad():
        planes = model.forward_planes(data.inputs[idx].float() / 255.0, data.input_cameras[idx])
    planes.requires_grad_(True)
    groups = [{"params": [planes], "lr": 0.05}]
    if train_decoder:
        model.synthesizer.requires_grad_(True)
        groups.append({"params": list(model.synthesizer.parameters()), "lr": 3e-3})
    opt = torch.optim.Adam(groups)
    opts = dataclasses.replace(model.render_options, samples_coarse=16, samples_importance=16, fast=False)
    g = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(steps + 1):
        rays = sample_rays(data, idx, 2048, 0.5, g)
        out = render_rays(model.synthesizer, planes, rays.origins, rays.dirs, opts, False, generator=g)
        rgb_mse = F.mse_loss(out["rgb"], rays.rgb)
        loss = rgb_mse + 0.5 * F.mse_loss(out["weight"], rays.alpha)
        if step < steps:
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step % 50 == 0:
            curve.append(round(-10 * math.log10(max(rgb_mse.item(), 1e-10)), 2))
    return {"encoder": encoder, "object": data.ids[index], "decoder": "trained" if train_decoder else "frozen",
            "steps": steps, "psnr_every_50": curve, "final_psnr": curve[-1]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="lrm-small")
    p.add_argument("--data", default="data/views/test", help="zero123pp views (input + supervision)")
    p.add_argument("--views", default="data/views_random/test", help="novel views of the same ids")
    p.add_argument("--object", type=int, default=1, help="index of the object in --data")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    image_size = load_reconstructor(args.encoder).config.image_size
    data = load_recon_data([args.data], [args.views], image_size, 128, None, args.object + 1)
    for train_decoder in (False, True):
        print(json.dumps(fit(args.encoder, data, args.object, args.steps, train_decoder)), flush=True)


if __name__ == "__main__":
    main()
