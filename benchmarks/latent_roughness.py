"""How rough are a generator's triplanes, and is the roughness what fragments them?

    .venv/bin/python benchmarks/latent_roughness.py --latents data/latents/test [--model MODEL]
        [--limit 24] [--smoothed]

For the first ``--limit`` held-out objects: their encoded latents and the model's samples for their
captions (seeds 0.., the model's sampler settings). Roughness is the root-mean-square difference of
neighbouring texels of the standardised planes (both axes), split into pairs across a TriFlow patch
boundary and pairs inside a patch. Each triplane is meshed like ``triflow3d eval`` meshes a sample
(marching cubes at the evaluation's resolution and the encoder's level) and scored by
``evaluation.geometry.fragmentation``. ``--smoothed`` adds the same figures for the planes low-passed by
``triplane.sampling.smooth_planes`` before the field reads them (the ``plane_filter`` of the
reconstructor; with a reconstructor that already filters, the planes are filtered twice). One JSON line
per set, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from triflow3d.data.latents import LatentDataset
from triflow3d.evaluation.geometry import FLOATER_SHARE, fragmentation, is_broken
from triflow3d.pipeline import TextTo3DPipeline
from triflow3d.triplane.sampling import smooth_planes


def roughness(z: torch.Tensor, patch: int) -> dict[str, float]:
    """Standardised planes (N, 3, C, R, R) -> RMS neighbour difference across / inside patch boundaries."""
    across, inside = [], []
    for dim in (-1, -2):
        d = z.diff(dim=dim).square()  # pair k = texels k, k + 1 along dim
        edge = (torch.arange(d.shape[dim]) % patch) == patch - 1
        across.append(d.index_select(dim, edge.nonzero()[:, 0]).flatten())
        inside.append(d.index_select(dim, (~edge).nonzero()[:, 0]).flatten())
    return {
        "rms_across_patches": round(float(torch.cat(across).mean().sqrt()), 3),
        "rms_inside_patches": round(float(torch.cat(inside).mean().sqrt()), 3),
    }


def fragments(pipe: TextTo3DPipeline, planes: torch.Tensor, resolution: int) -> dict[str, float | int]:
    """Raw planes (N, 3, C, R, R) -> mean floater share, share above 0.05, median components, broken."""
    shares, comps, broken = [], [], 0
    for plane in planes:
        with torch.no_grad():
            mesh = pipe.reconstructor.extract_mesh(plane[None], resolution)
        if is_broken(mesh):
            broken += 1
            continue
        share, c = fragmentation(mesh)
        shares.append(share)
        comps.append(c)
    return {
        "floater_share": round(statistics.mean(shares), 4) if shares else None,
        "above_0.05": round(sum(s > FLOATER_SHARE for s in shares) / max(len(shares), 1), 3),
        "components_median": statistics.median(comps) if comps else None,
        "broken": broken,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", required=True, help="latents folder of held-out objects (with captions)")
    p.add_argument("--model", default=None, help="model folder or run folder (default: the shipped one)")
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--smoothed", action="store_true", help="also score the planes low-passed first")
    p.add_argument("--resolution", type=int, default=128, help="marching-cubes grid (eval's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = TextTo3DPipeline.from_pretrained(args.model)
    ds = LatentDataset(args.latents)
    items = [ds[i] for i in range(min(args.limit, len(ds)))]
    encoded = torch.stack([it["triplane"].float() for it in items])  # (N, 3, C, R, R) raw
    captions = [str(it.get("caption") or "") for it in items]
    generated = torch.stack([g.triplane for g in pipe(captions, seed=args.seed)])
    sets = {"encoded": encoded, "generated": generated}
    if args.smoothed:
        sets |= {f"{k}, smoothed": smooth_planes(v) for k, v in list(sets.items())}
    summary = {}
    for name, planes in sets.items():
        z = pipe.normalizer.normalize(planes)
        row = {"set": name, "objects": len(planes), **roughness(z, pipe.model.params.patch)}
        row |= fragments(pipe, planes, args.resolution)
        summary[name] = row["floater_share"]
        print(json.dumps(row), flush=True)
    print(json.dumps({"model": args.model or "shipped", "floater_share": summary}))


if __name__ == "__main__":
    main()
