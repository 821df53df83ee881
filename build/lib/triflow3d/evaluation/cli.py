"""``triflow3d eval``: the benchmark evaluation of a model folder -> metrics.json, report.md, figures.

See ``evaluation/evaluate.py`` for the protocol and docs/evaluation.md section 7 for the metrics.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from triflow3d.evaluation.evaluate import EvalConfig

_DEFAULTS = EvalConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="model folder (default: the shipped triflow-small)")
    p.add_argument("--prompts", default="shapes:test",
                   help="shapes:SPLIT, freeform (the committed free-form set), unconditional (no prompt; "
                   "--n-prompts objects) or a JSONL file (default shapes:test)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output folder (report, metrics, figures, cache)")
    p.add_argument(
        "--n-prompts", type=int, default=_DEFAULTS.n_prompts, help="first N prompts (default %(default)s)"
    )
    p.add_argument("--n-per-prompt", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed: prompt i, sample k gets seed + i K + k")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--cfg", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--sampler", choices=("euler", "heun"), help="ODE sampler (default: the model's)")
    p.add_argument("--batch-size", type=int, help="prompts sampled together (default: the model's)")
    p.add_argument("--resolution", type=int, default=_DEFAULTS.resolution, help="marching-cubes grid")
    p.add_argument("--threshold", type=float, help="density iso-level (default: the encoder's, 10)")
    p.add_argument("--points", type=int, default=_DEFAULTS.points, help="surface points per shape")
    p.add_argument("--refs-per-category", type=int, default=_DEFAULTS.refs_per_category,
                   help="reference-bank shapes per category (default %(default)s)")  # fmt: skip
    p.add_argument("--views", type=int, default=_DEFAULTS.views, help="orbit render views per object")
    p.add_argument("--image-size", type=int, default=_DEFAULTS.image_size, help="render size in pixels")
    p.add_argument("--recon-objects", type=int, default=_DEFAULTS.recon_objects,
                   help="held-out shapes for the encoder round trip (0: skip)")  # fmt: skip
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip the ceiling (round trip of each benchmark prompt's own shape)")  # fmt: skip
    p.add_argument("--inception", help="Inception TorchScript .pt for FID / KID (else $TRIFLOW3D_INCEPTION)")
    p.add_argument("--clip", help="local CLIP model folder (else $TRIFLOW3D_CLIP / the HF cache)")
    p.add_argument("--text-encoder-path", type=Path, help="local folder of a clip-l / t5 text encoder")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print every metric as one JSON object (last line)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    keys = ("prompts", "n_prompts", "n_per_prompt", "seed", "steps", "cfg", "sampler", "batch_size",
            "resolution", "threshold", "points", "refs_per_category", "views", "image_size",
            "recon_objects", "ceiling", "inception", "clip")  # fmt: skip
    return EvalConfig(**{k: getattr(args, k) for k in keys})


def _fmt(v: object, scale: float = 1.0) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v) * scale:.3g}"


def summary_line(m: dict) -> str:
    o = m["overall"]
    c = (m.get("ceiling") or {}).get("overall")
    ceiling = (
        f" (ceiling: category {_fmt(c['category_accuracy'])}, colour {_fmt(c['colour_accuracy'])}, "
        f"floater share {_fmt(c['floater_share'])})"
        if c
        else ""
    )
    d = m.get("distribution") or o
    return (
        f"{m['n_generated']} objects, failure {_fmt(m['failure_rate'], 100)}%, "
        f"category acc {_fmt(o['category_accuracy'])}, colour acc {_fmt(o['colour_accuracy'])}, "
        f"floater share {_fmt(o['floater_share'])} ({_fmt(o['fragmented_share'], 100)}% above 0.05)"
        f"{ceiling}, MMD-CD x1e3 {_fmt(d['mmd'], 1e3)}, COV {_fmt(d['cov'], 100)}%, "
        f"1-NNA {_fmt(d['1nna'], 100)}%"
    )


def run(args: argparse.Namespace) -> int:
    from triflow3d.evaluation.evaluate import evaluate
    from triflow3d.pipeline import TextTo3DPipeline

    cfg = config_from_args(args)
    pipe = TextTo3DPipeline.from_pretrained(
        args.model, device=args.device, text_encoder_path=args.text_encoder_path
    )
    metrics = evaluate(pipe, cfg, args.out, str(args.model or "triflow-small"), progress=not args.no_progress)
    print(summary_line(metrics))
    print(f"report: {args.out / 'report.md'}")
    if args.json:
        print(json.dumps(metrics))
    return 0
