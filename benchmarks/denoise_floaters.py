"""Where do a generator's floaters come from? One-step clean estimates of noised true latents, meshed.

    .venv/bin/python benchmarks/denoise_floaters.py --latents data/latents_v3/test [--model MODEL]
        [--limit 40] [--t 0 0.05 0.1 0.25 0.5 0.75] [--cfg 1]

Each held-out object's own latent x0 (encoded from its views) is noised to x_t = (1 - t) x0 + t eps and
the model predicts the clean estimate x0_hat = x_t - t v(x_t, t, caption) in one step. Both the estimate and
the decoded mesh are scored like ``triflow3d eval`` scores a generated sample (marching cubes at the
evaluation's resolution and the encoder's level, ``evaluation.geometry.fragmentation``), beside the
latent error. t = 0 is the object itself (the encoder round trip, the ceiling). If the floater share is
already high at small t, the model's fine denoising is imprecise (a rendering loss at low t targets that);
if it stays at the ceiling until large t, the fragments come from how the sampler builds global
structure (cross-plane consistency). One JSON line per t, then a summary line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch

from triflow3d.data.latents import LatentDataset
from triflow3d.evaluation.geometry import FLOATER_SHARE, fragmentation, is_broken
from triflow3d.flow.path import interpolate, x0_from_velocity
from triflow3d.flow.sampling import denoise, get_schedule, guided_velocity
from triflow3d.pipeline import TextTo3DPipeline


def noised(x0n: torch.Tensor, t: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = (1 - t) x0 + t eps with seeded noise, and the times (B,)."""
    eps = torch.randn(x0n.shape, generator=torch.Generator().manual_seed(seed))
    tt = torch.full((len(x0n),), t)
    return interpolate(x0n, eps, tt), tt


def integrated_estimates(pipe: TextTo3DPipeline, x0n: torch.Tensor, captions: list[str], t: float, cfg: float,
                         seed: int) -> torch.Tensor:  # fmt: skip
    """Normalised x0 (B, 3, C, R, R) noised to time t, then the pipeline's sampler from t to 0 (its steps
    below t, its sampler, guidance ``cfg``): what sampling makes of a true global structure."""
    if t == 0.0:
        return x0n
    xt, _ = noised(x0n, t, seed)
    st = pipe.settings
    schedule = [t] + [s for s in get_schedule(st.steps, st.shift) if s < t]
    cond, uncond = pipe.conditions(captions, cfg)
    with torch.no_grad():
        return denoise(pipe.model, xt, schedule, cfg, cond.as_kwargs(),
                       None if uncond is None else uncond.as_kwargs(), st.sampler)  # fmt: skip


def one_step_estimates(pipe: TextTo3DPipeline, x0n: torch.Tensor, captions: list[str], t: float, cfg: float,
                       seed: int) -> torch.Tensor:  # fmt: skip
    """Normalised x0 (B, 3, C, R, R) -> the model's one-step clean estimates at time t (normalised)."""
    if t == 0.0:
        return x0n
    xt, tt = noised(x0n, t, seed)
    cond, uncond = pipe.conditions(captions, cfg)
    with torch.no_grad():
        v = guided_velocity(
            pipe.model, xt, t, cond.as_kwargs(), None if uncond is None else uncond.as_kwargs(), cfg
        )
    return x0_from_velocity(xt, v, tt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", required=True, help="latents folder of held-out objects (with captions)")
    p.add_argument("--model", default=None, help="model folder or run folder (default: the shipped one)")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--t", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.25, 0.5, 0.75])
    p.add_argument(
        "--cfg", type=float, default=None, help="guidance scale (default: 1 one-step, the model's integrated)"
    )
    p.add_argument(
        "--integrate",
        action="store_true",
        help="run the pipeline's sampler from t to 0 instead of one step (SDEdit from the true object)",
    )
    p.add_argument("--resolution", type=int, default=128, help="marching-cubes grid (eval's default)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shift", type=float, default=None, help="schedule time shift (default: the model's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = TextTo3DPipeline.from_pretrained(args.model)
    if args.shift is not None:
        pipe.settings = dataclasses.replace(pipe.settings, shift=args.shift)
    ds = LatentDataset(args.latents)
    n = min(args.limit, len(ds))
    items = [ds[i] for i in range(n)]
    raw = torch.stack([it["triplane"].float() for it in items])  # (N, 3, C, R, R)
    captions = [str(it.get("caption") or "") for it in items]
    categories = [str((it.get("attributes") or {}).get("category", "")) for it in items]
    x0n = pipe.normalizer.normalize(raw)
    cfg = args.cfg if args.cfg is not None else (pipe.settings.cfg if args.integrate else 1.0)
    estimate = integrated_estimates if args.integrate else one_step_estimates
    summary = {}
    for t in args.t:
        shares, comps, errs, broken, per_cat = [], [], [], 0, {}
        for a in range(0, n, args.batch):
            est = estimate(pipe, x0n[a : a + args.batch], captions[a : a + args.batch], t, cfg,
                                     args.seed + a)  # fmt: skip
            errs += (est - x0n[a : a + args.batch]).square().flatten(1).mean(1).tolist()
            planes = pipe.normalizer.denormalize(est)
            for k, plane in enumerate(planes):
                with torch.no_grad():
                    mesh = pipe.reconstructor.extract_mesh(plane[None], args.resolution)
                if is_broken(mesh):
                    broken += 1
                    continue
                share, c = fragmentation(mesh)
                shares.append(share)
                comps.append(c)
                per_cat.setdefault(categories[a + k], []).append(share)
        row = {
            "t": t,
            "objects": n,
            "latent_mse": round(statistics.mean(errs), 4),
            "floater_share": round(statistics.mean(shares), 4) if shares else None,
            "above_0.05": round(sum(s > FLOATER_SHARE for s in shares) / max(len(shares), 1), 3),
            "components_median": statistics.median(comps) if comps else None,
            "broken": broken,
            "per_category": {k: round(statistics.mean(v), 3) for k, v in sorted(per_cat.items())},
        }
        summary[str(t)] = row["floater_share"]
        print(json.dumps(row), flush=True)
    mode = "integrated" if args.integrate else "one step"
    print(
        json.dumps(
            {"model": args.model or "shipped", "mode": mode, "cfg": cfg, "floater_share_by_t": summary}
        )
    )


if __name__ == "__main__":
    main()
