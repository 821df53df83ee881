"""Which colour axes do an encoder's triplanes carry? A linear probe of each object's main colour.

    .venv/bin/python benchmarks/colour_probe.py --latents data/latents_v3/test [--folds 5] [--ridge 1.0]

Features: the mean and standard deviation of every (plane, channel) of each object's stored triplane
(3 x C x 2 numbers). Targets: CIELAB of the object's main colour as the benchmark defines it
(``attributes.colour`` -> ``shapes.palette.PALETTE``). A ridge regression, k-fold over objects, reports
R^2 for L* (lightness), a* (green-red) and b* (blue-yellow), and the accuracy of a linear one-vs-rest
colour-name classifier. The same probe on the inputs' own covered pixels (``--inputs``, read from each
object's views folder) is the reference: what a colour-faithful encoder could pass on. lrm-small v3 on
the 300 test-split objects: R^2 L* 0.56, a* -0.03, b* 0.64 from its planes against 0.68 / 0.73 / 0.77
from its inputs (names 0.38 vs 0.67): its planes have lost the green-red axis. One JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from triflow3d.data.latents import LatentDataset
from triflow3d.evaluation.colour import srgb_to_lab
from triflow3d.shapes.palette import PALETTE


def plane_features(triplane: torch.Tensor) -> np.ndarray:
    """(3, C, R, R) -> (6C,): per-(plane, channel) mean and standard deviation over the texels."""
    t = triplane.float().flatten(2)
    return torch.cat([t.mean(-1).flatten(), t.std(-1).flatten()]).numpy()


def input_features(views_dir: str) -> np.ndarray:
    """Mean sRGB of the covered pixels of an object's input views (3,)."""
    from triflow3d.data.views import load_object

    ov = load_object(Path(views_dir))
    covered = ov.images[:, 3] > 0.5  # (V, H, W)
    return ov.images[:, :3].permute(0, 2, 3, 1)[covered].mean(0).numpy()


def kfold_ridge(x: np.ndarray, y: np.ndarray, folds: int, ridge: float) -> np.ndarray:
    """Out-of-fold predictions (N, K) of a ridge regression with a bias (features standardised per fold)."""
    n = len(x)
    fold = np.arange(n) % folds
    out = np.zeros_like(y, dtype=np.float64)
    for k in range(folds):
        tr, te = fold != k, fold == k
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
        a = np.c_[(x[tr] - mu) / sd, np.ones(tr.sum())]
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y[tr])
        out[te] = np.c_[(x[te] - mu) / sd, np.ones(te.sum())] @ w
    return out


def probe(x: np.ndarray, names: list[str], folds: int, ridge: float) -> dict:
    lab = srgb_to_lab(np.array([PALETTE[n] for n in names]))
    pred = kfold_ridge(x, lab, folds, ridge)
    r2 = 1.0 - ((pred - lab) ** 2).sum(0) / ((lab - lab.mean(0)) ** 2).sum(0)
    classes = sorted(set(names))
    onehot = np.array([[n == c for c in classes] for n in names], dtype=np.float64)
    guess = np.array(classes)[kfold_ridge(x, onehot, folds, ridge).argmax(1)]
    return {
        "r2_L": round(float(r2[0]), 3),
        "r2_a": round(float(r2[1]), 3),
        "r2_b": round(float(r2[2]), 3),
        "name_accuracy": round(float((guess == np.array(names)).mean()), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", required=True, help="latents folder (triflow3d encode) of captioned shapes")
    p.add_argument("--limit", type=int, default=0, help="first N objects (0: all)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--inputs", action="store_true", help="also probe the input views' covered colours")
    args = p.parse_args()
    ds = LatentDataset(args.latents)
    n = min(args.limit or len(ds), len(ds))
    items = [ds[i] for i in range(n)]
    keep = [it for it in items if (it["attributes"] or {}).get("colour") in PALETTE]
    if len(keep) < 2 * args.folds:
        raise SystemExit(f"{args.latents}: only {len(keep)} objects with a palette colour attribute")
    names = [it["attributes"]["colour"] for it in keep]
    out = {"latents": args.latents, "objects": len(keep), "encoder": ds.encoder.get("encoder")}
    out["planes"] = probe(
        np.stack([plane_features(it["triplane"]) for it in keep]), names, args.folds, args.ridge
    )
    if args.inputs:
        feats = np.stack([input_features(it["views_dir"]) for it in keep])
        out["inputs"] = probe(feats, names, args.folds, args.ridge)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
