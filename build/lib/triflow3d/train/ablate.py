"""Ablations: matched small-scale trainings of design variants, each evaluated and tabled
(``triflow3d ablate``, wired to the evaluation in ``triflow3d.ablate_cli``).

Every variant trains on the same encoded latents from the same preset, steps, seed and batch plan (so the
same data order), differing only in its ``train`` overrides (e.g. ``normalizer_mode``: the trainer builds
``LatentNormalizer.from_stats`` of LATENTS/stats.safetensors in that mode; ``spatial_weights``: the
latents' ``weights`` sidecars; ``perceptual``) or its architecture: ``"arch": "dit"`` is the plain DiT
baseline whose width is chosen so its parameter count matches the multi-stream model's (both recorded).
Each finished variant writes OUT/variants/NAME/result.json and is skipped on a re-run with the same
spec; an interrupted one resumes from its last checkpoint. See docs/ablations.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from triflow3d.errors import ConfigError
from triflow3d.models.triflow import TriFlow, TriFlowParams, count_params
from triflow3d.train.build import model_params, open_run_latents
from triflow3d.train.config import preset
from triflow3d.train.text import build_text_encoder
from triflow3d.train.trainer import Trainer
from triflow3d.utils.io import write_json

RESULT, SPEC = "result.json", "spec.json"
ARCH_CHOICES = (None, "dit")
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class Variant:
    name: str  # folder name: lower-case letters, digits, - _ .
    train: dict = field(default_factory=dict)  # TrainConfig overrides of this variant
    arch: str | None = None  # "dit": plain DiT at (about) the multi-stream parameter count
    description: str = ""


@dataclass(frozen=True)
class AblationConfig:
    latents: str  # an encoded latents folder (with stats.safetensors / weights sidecars as needed)
    variants: tuple[Variant, ...]
    preset: str = "small"  # TrainConfig preset shared by every variant
    overrides: dict = field(default_factory=dict)  # TrainConfig overrides shared by every variant
    steps: int = 500
    seed: int = 0
    reconstructor: str | None = None  # NAME or NAME:CKPT (default: the latents' encoder's shipped weights)
    eval: dict = field(default_factory=dict)  # evaluation settings (EvalConfig fields, small N)


def load_config(path: str | Path, check_eval: Callable[[dict], Any] | None = None) -> AblationConfig:
    """Read and check an ablation JSON file (ConfigError naming the file and the problem); ``check_eval``
    validates the ``eval`` settings (the evaluation's own config parser)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ablation config ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    known = {f.name for f in dataclasses.fields(AblationConfig)}
    if not isinstance(raw, dict) or not raw.get("latents") or not raw.get("variants"):
        raise ConfigError(f"{path}: needs 'latents' and a non-empty 'variants' list")
    if unknown := sorted(set(raw) - known):
        raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
    variants = tuple(_variant(v, path) for v in raw["variants"])
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: variant names must be unique, got {names}")
    cfg = AblationConfig(**(raw | {"variants": variants}))
    if check_eval is not None:
        check_eval(cfg.eval)  # fail now, not after the first training
    for v in variants:
        train_config(cfg, v, Path("."))
    return cfg


def _variant(v: Any, path: Path) -> Variant:
    known = {f.name for f in dataclasses.fields(Variant)}
    if not isinstance(v, dict) or not isinstance(v.get("name"), str) or set(v) - known:
        raise ConfigError(
            f"{path}: each variant is an object with 'name' and optional {sorted(known - {'name'})}"
        )
    if not v["name"] or set(v["name"]) - _NAME_CHARS:
        raise ConfigError(f"{path}: variant name {v['name']!r} must use only a-z, 0-9, '-', '_', '.'")
    if v.get("arch") not in ARCH_CHOICES:
        raise ConfigError(f"{path}: variant {v['name']!r}: arch must be 'dit' or absent, got {v['arch']!r}")
    return Variant(**v)


def train_config(cfg: AblationConfig, variant: Variant, run_dir: Path):
    """The variant's TrainConfig: preset + shared overrides + its own, with the matched settings pinned."""
    pinned = {
        "latents": cfg.latents,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "out": str(run_dir),
        "sample_every": 0,
    }
    if cfg.reconstructor:
        pinned["reconstructor"] = cfg.reconstructor
    if clash := sorted(set(variant.train) & set(pinned)):
        raise ConfigError(f"variant {variant.name!r} may not override the matched settings {clash}")
    try:
        return preset(cfg.preset, **(cfg.overrides | variant.train | pinned))
    except TypeError as e:
        raise ConfigError(f"variant {variant.name!r}: bad TrainConfig override ({e})") from None


# --- width-matched DiT ------------------------------------------------------------------------------------
def n_params(params: TriFlowParams) -> int:
    with torch.device("meta"):
        return count_params(TriFlow(params))


def match_dit(params: TriFlowParams) -> tuple[TriFlowParams, int, int]:
    """The plain DiT of ``params``' depths and heads whose width gives the parameter count closest to the
    multi-stream model's -> (dit params, dit count, multi-stream count)."""
    target = n_params(dataclasses.replace(params, arch="multistream"))
    step = math.lcm(params.heads, 4)  # hidden must divide by the heads and by 4 (2-D sin-cos positions)
    best = None
    for hidden in range(step, 4 * params.hidden + step, step):
        p = dataclasses.replace(params, arch="dit", hidden=hidden)
        n = n_params(p)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (p, n)
        if n > target:
            break
    return best[0], best[1], target


def variant_params(cfg, arch: str | None, dataset, text_dim: int) -> tuple[TriFlowParams, int | None]:
    """A fresh variant's architecture and, for the plain DiT, the multi-stream parameter count it matches."""
    reference = model_params(cfg, dataset.triplane_shape, text_dim)
    if arch != "dit":
        return reference, None
    dit, _, target = match_dit(reference)
    return dit, target


# --- one variant ------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory while the block runs: CUDA max allocated, or the process's resident set size sampled
    every ``interval`` s from /proc (includes the interpreter and torch baseline, equal for every variant)."""

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.device, self.interval, self.peak_mb, self.start_mb = device, interval, 0.0, 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):  # not Linux: the lifetime peak is all there is
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.peak_mb = self.start_mb = self.rss_mb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())
        if self.device.type == "cuda":
            self.start_mb, self.peak_mb = 0.0, torch.cuda.max_memory_allocated(self.device) / 2**20


def variant_spec(cfg: AblationConfig, variant: Variant) -> dict[str, Any]:
    """What a finished result must match to be reused (training, architecture and evaluation settings)."""
    tc = train_config(cfg, variant, Path("run")).to_dict()
    return {"train_config": tc, "arch": variant.arch, "eval": cfg.eval}


def train_variant(cfg: AblationConfig, variant: Variant, vdir: Path) -> dict[str, Any]:
    """Train (or resume) one variant; -> parameters, time, peak memory and the last loss."""
    run_dir = vdir / "run"
    spec = variant_spec(cfg, variant)
    resume = None
    if (vdir / SPEC).is_file() and json.loads((vdir / SPEC).read_text()) == spec:
        resume = str(run_dir) if (run_dir / "checkpoints" / "latest.json").is_file() else None
    else:
        shutil.rmtree(vdir, ignore_errors=True)
        write_json(vdir / SPEC, spec)
    tc = train_config(cfg, variant, run_dir)
    dataset, encoder = open_run_latents(tc), build_text_encoder(tc)
    params, reference = variant_params(tc, variant.arch, dataset, encoder.dim)  # a resumed run keeps its own
    trainer = Trainer(tc, resume=resume, dataset=dataset, text_encoder=encoder, params=params)
    t0 = time.perf_counter()
    with PeakMemory(trainer.device) as mem:
        stats = trainer.fit()
    return {
        "params": count_params(trainer.raw), "params_reference": reference,
        "arch": trainer.params.arch, "hidden": trainer.params.hidden, "resumed": resume is not None,
        "train_s": round(time.perf_counter() - t0, 2), "peak_mem_mb": round(mem.peak_mb, 1),
        "peak_mem_growth_mb": round(mem.peak_mb - mem.start_mb, 1),
        "memory_kind": "cuda max allocated" if trainer.device.type == "cuda" else "process RSS",
        "final_loss": float(stats["loss"]) if "loss" in stats else None, "steps": cfg.steps,
    }  # fmt: skip


# (run dir, eval out dir) -> metrics of the variant's last checkpoint
Evaluate = Callable[[Path, Path], dict[str, Any]]


def run_variant(cfg: AblationConfig, variant: Variant, out: Path, evaluate: Evaluate) -> dict[str, Any]:
    vdir = out / "variants" / variant.name
    if (vdir / RESULT).is_file():
        done = json.loads((vdir / RESULT).read_text())
        if done.get("spec") == variant_spec(cfg, variant):
            return done | {"skipped": True}
    trained = train_variant(cfg, variant, vdir)
    metrics = evaluate(vdir / "run", vdir / "eval")
    result = {"name": variant.name, "description": variant.description, "train": variant.train,
              **trained, "metrics": metrics, "spec": variant_spec(cfg, variant)}  # fmt: skip
    write_json(vdir / RESULT, result)
    return result | {"skipped": False}


# --- all variants + the table -----------------------------------------------------------------------------
COLUMNS: tuple[tuple[str, str, float], ...] = (  # header, metric path, report scale
    ("failure (%)", "failure_rate", 100.0),
    ("category acc", "overall.category_accuracy", 1.0),
    ("colour acc", "overall.colour_accuracy", 1.0),
    ("Chamfer x1e3", "overall.chamfer", 1e3),
    ("MMD-CD x1e3", "overall.mmd", 1e3),
    ("COV (%)", "overall.cov", 100.0),
    ("1-NNA (%)", "overall.1nna", 100.0),
    ("FID", "image.fid", 1.0),
    ("recon PSNR", "reconstruction.psnr", 1.0),
)


def _get(metrics: dict, path: str) -> Any:
    v: Any = metrics
    for key in path.split("."):
        v = v.get(key) if isinstance(v, dict) else None
    if isinstance(v, dict):  # {"available": ..., "value": ...}
        v = v.get("value") if v.get("available") else None
    return v


def _num(v: Any, scale: float = 1.0, digits: str = ".4g") -> str:
    return (
        "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(float(v) * scale, digits)
    )


def _change(r: dict) -> str:
    parts = [f"{k}={v}" for k, v in r["train"].items()]
    if r["arch"] == "dit":
        parts.append(f"plain DiT, hidden {r['hidden']}")
    return ", ".join(parts) or "baseline"


def markdown(cfg: AblationConfig, results: list[dict], command: str) -> str:
    head = [
        "variant",
        "change",
        "params (M)",
        "train (s)",
        "peak mem (MB)",
        "final loss",
        *(c[0] for c in COLUMNS),
    ]
    lines = ["# Ablations", "", "```", command, "```", "",
             f"Latents `{cfg.latents}`, preset `{cfg.preset}` + {json.dumps(cfg.overrides, sort_keys=True)}, "
             f"{cfg.steps} steps, seed {cfg.seed} (same initial seed and data order for every variant). "
             f"Evaluation: {json.dumps(cfg.eval, sort_keys=True)}; each variant's full report is "
             "`variants/NAME/eval/report.md`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in results:
        row = [r["name"], _change(r), _num(r["params"], 1e-6, ".3f"), _num(r["train_s"], digits=".1f"),
               _num(r["peak_mem_mb"], digits=".0f"), _num(r["final_loss"])]  # fmt: skip
        row += [_num(_get(r["metrics"], path), scale) for _, path, scale in COLUMNS]
        lines.append("| " + " | ".join(row) + " |")
    kind = results[0]["memory_kind"] if results else "n/a"
    lines += ["", f"Peak memory: {kind} during training (process RSS includes what earlier variants left "
              "allocated; `peak_mem_growth_mb` in ablations.json is the rise during the variant).", ""]  # fmt: skip
    for r in results:
        if r["params_reference"]:
            ratio = r["params"] / r["params_reference"]
            lines.append(f"- `{r['name']}`: plain DiT hidden {r['hidden']}, {r['params']:,} parameters vs "
                         f"{r['params_reference']:,} for the multi-stream model ({ratio:.3f}x).")  # fmt: skip
    return "\n".join(lines) + "\n"


def ablate(cfg: AblationConfig, out: str | Path, command: str, evaluate: Evaluate) -> list[dict]:
    """Train and evaluate every variant (finished ones are reused); write ablations.md / .json."""
    out = Path(out)
    results = []
    for variant in cfg.variants:
        r = run_variant(cfg, variant, out, evaluate)
        print(f"{variant.name}: {'skipped (finished)' if r['skipped'] else 'done'}", flush=True)
        results.append(r)
    write_json(
        out / "ablations.json", {"command": command, "config": dataclasses.asdict(cfg), "results": results}
    )
    (out / "ablations.md").write_text(markdown(cfg, results, command))
    return results
