"""Evaluation metrics: geometry (Chamfer, F-score, failures), distributions (MMD / COV / 1-NNA),
colour attributes, image metrics (PSNR, SSIM, FID, KID, CLIP) and reports. See docs/evaluation.md.

Light imports only: transformers is imported when a CLIP model is actually loaded.
"""

from triflow3d.evaluation.colour import classify_colour, classify_colours, dominant_colour, srgb_to_lab
from triflow3d.evaluation.distribution import REPORT_SCALE, coverage, distribution_metrics, mmd, one_nna
from triflow3d.evaluation.features import (
    ClipScorer,
    FeatureNet,
    InceptionTorchScript,
    Unavailable,
    compute_image_metrics,
    find_clip,
    find_inception,
    load_clip,
    load_inception,
    metric_unavailable,
)
from triflow3d.evaluation.geometry import (
    FScore,
    broken_reason,
    chamfer_distance,
    f_score,
    is_broken,
    nn_classify,
    pairwise_chamfer,
    sample_surface,
)
from triflow3d.evaluation.image import fid_from_features, frechet_distance, kid_from_features, psnr, ssim
from triflow3d.evaluation.report import bar_chart, versions, write_report
from triflow3d.utils.images import save_grid

__all__ = [
    "REPORT_SCALE",
    "ClipScorer",
    "FScore",
    "FeatureNet",
    "InceptionTorchScript",
    "Unavailable",
    "bar_chart",
    "broken_reason",
    "chamfer_distance",
    "classify_colour",
    "classify_colours",
    "compute_image_metrics",
    "coverage",
    "distribution_metrics",
    "dominant_colour",
    "f_score",
    "fid_from_features",
    "find_clip",
    "find_inception",
    "frechet_distance",
    "is_broken",
    "kid_from_features",
    "load_clip",
    "load_inception",
    "metric_unavailable",
    "mmd",
    "nn_classify",
    "one_nna",
    "pairwise_chamfer",
    "psnr",
    "sample_surface",
    "save_grid",
    "srgb_to_lab",
    "ssim",
    "versions",
    "write_report",
]
