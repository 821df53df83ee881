"""TriFlow training step time and peak memory of the ``small`` preset (fp32 and bf16 autocast).

    .venv/bin/python benchmarks/train.py [--threads 2] [--steps 8] [--warmup 2] [--batch 32] [--modes fp32 bf16]

Synthetic lrm-small-shaped latents (3 x 8 x 32 x 32) and a 384-d fake text encoder (MiniLM's width;
captions are embedded once before training, so the encoder does not affect step time). Each mode runs in
a fresh child process so its peak RSS (CPU) or peak allocated memory (CUDA) is its own. Prints one JSON
line per mode. The numbers for docs/training.md came from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from triflow3d.conventions import CONVENTIONS_VERSION
from triflow3d.data import latents as lt
from triflow3d.models.text_encoder import FakeTextEncoder
from triflow3d.train import PRESETS, Trainer

SHAPE = (3, 8, 32, 32)


def write_latents(root: Path, n: int) -> Path:
    """n random triplanes with captions and weights, in the LatentDataset format."""
    info = {"encoder": "lrm-small", "config_hash": "bench", "dtype": "float32",
            "conventions_version": CONVENTIONS_VERSION, "triplane_shape": list(SHAPE)}  # fmt: skip
    lt.ensure_encoder_json(root, info)
    g = torch.Generator().manual_seed(0)
    ids, name = [f"obj{i:04d}" for i in range(n)], lt.shard_name(0, 0)
    sha = lt.write_shard(root / name, torch.randn(n, *SHAPE, generator=g), ids, {"encoder": "lrm-small"})
    save_file(
        {"weights": torch.ones(n, 3, SHAPE[2], SHAPE[3])},
        str(root / name.replace(".safetensors", ".weights.safetensors")),
    )
    cats = ("chair", "table", "lamp", "car")
    rows = [{"id": i, "shard": name, "row": k, "shard_sha256": sha, "caption": f"a small {cats[k % 4]} number {k}",
             "attributes": {"category": cats[k % 4]}} for k, i in enumerate(ids)]  # fmt: skip
    lt.append_rows(lt.rank_index_path(root, 0), rows)
    lt.merge_index(root)
    return root


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_mode(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_latents(Path(tmp) / "latents", max(64, args.batch))
        cfg = PRESETS["small"].replace(latents=str(data), out=str(Path(tmp) / "run"), batch_size=args.batch,
                                       steps=args.warmup + args.steps, bf16=args.mode == "bf16", device=args.device)  # fmt: skip
        trainer = Trainer(cfg, text_encoder=FakeTextEncoder(dim=384, max_length=32))
        cuda = trainer.device.type == "cuda"
        before = rss_mib()
        times = []
        for micro in trainer.step_batches(cfg.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_step(micro)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            trainer.step += 1
        timed = sorted(times[args.warmup :])
        params = sum(p.numel() for p in trainer.raw.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {"preset": "small", "mode": args.mode, "device": str(trainer.device), "threads": args.threads,
              "batch": args.batch, "params_m": round(params / 1e6, 2), "steps_timed": len(timed),
              "step_s_median": round(timed[len(timed) // 2], 3), "step_s_min": round(timed[0], 3),
              "samples_per_s": round(args.batch / timed[len(timed) // 2], 1),
              "rss_before_steps_mib": round(before), "peak_rss_mib": round(peak),
              "load_avg_1min": round(os.getloadavg()[0], 1)}  # fmt: skip
    if cuda:
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=32, help="global batch (the small preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--mode", help=argparse.SUPPRESS)  # child process: run one mode
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--mode", mode] + [
            f"--{k}={getattr(args, k)}" for k in ("threads", "steps", "warmup", "batch", "device")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
