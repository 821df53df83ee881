"""Training cost of TriFlow (multistream) vs the plain-DiT baseline as the triplane grows.

For each plane resolution R (fixed patch p, so 3 (R/p)^2 triplane tokens) and each architecture this
measures one training step (forward + backward, no optimizer): median wall time, FLOPs (exact, from
``torch.utils.flop_counter``), peak memory (CUDA: max allocated; CPU: peak RSS growth of a fresh child
process) and the bytes autograd saves for backward. Multistream cost grows linearly in the token count;
the DiT's attention grows quadratically.

    python benchmarks/train_scaling.py                      # CPU, ~1-3 min, prints a table
    python benchmarks/train_scaling.py --csv scaling.csv --png scaling.png --device cuda --res 16 32 64 128

The PNG is drawn with Pillow.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from triflow3d.models.triflow import TRIFLOW_PRESETS, TriFlow, count_params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int, nargs="+", default=[16, 32, 64], help="plane resolutions R")
    ap.add_argument("--archs", nargs="+", default=["multistream", "dit"])
    ap.add_argument("--preset", default="tiny", help="base preset (depths, width) before the overrides")
    ap.add_argument("--patch", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--latents", type=int, default=64)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median) after one warm-up")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=None, help="write the table here")
    ap.add_argument("--png", default=None, help="plot here (PNG)")
    ap.add_argument("--child", nargs=2, metavar=("ARCH", "RES"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(args: argparse.Namespace, arch: str, res: int) -> dict:
    """One (arch, R) point, run in this process (a fresh child for clean CPU peak memory)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    p = replace(
        TRIFLOW_PRESETS[args.preset], arch=arch, plane_res=res, patch=args.patch, hidden=args.hidden,
        heads=args.heads, num_latents=args.latents, plane_channels=args.channels,
    )  # fmt: skip
    model = TriFlow(p).to(dev)
    b, c = args.batch, args.channels
    x = torch.randn(b, 3, c, res, res, device=dev)
    t, tok = torch.rand(b, device=dev), torch.randn(b, args.text_len, p.text_dim, device=dev)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x, t, tok, tok.mean(1)).square().mean().backward()

    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    rss0 = _rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        mem0 = torch.cuda.memory_allocated(dev)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t_: t_):
        step()  # warm-up, also measures memory
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - mem0
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    # the fused CPU / CUDA attention kernels have no FLOP formula: count with the math backend (bmm)
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        step()
    times = []
    for _ in range(args.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return {
        "arch": arch, "res": res, "tokens": p.num_triplane_tokens, "params_m": round(count_params(model) / 1e6, 3),
        "step_ms": round(1000 * statistics.median(times), 1), "gflops": round(fc.get_total_flops() / 1e9, 3),
        "peak_mb": round(max(peak, 0) / 2**20, 1), "saved_mb": round(sum(saved.values()) / 2**20, 1),
    }  # fmt: skip


def run_child(arch: str, res: int, argv: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", arch, str(res)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    cols = [
        "arch",
        "res",
        "tokens",
        "params_m",
        "step_ms",
        "x_time",
        "gflops",
        "x_flops",
        "peak_mb",
        "saved_mb",
    ]
    base = {r["arch"]: r for r in rows if r["res"] == min(x["res"] for x in rows)}
    for r in rows:
        r["x_time"] = round(r["step_ms"] / base[r["arch"]]["step_ms"], 1)
        r["x_flops"] = round(r["gflops"] / base[r["arch"]]["gflops"], 1)
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def plot(rows: list[dict], path: str) -> None:
    """Three log-log panels (step time, GFLOPs, peak memory vs triplane tokens) side by side, Pillow only."""
    from PIL import Image

    from triflow3d.evaluation.report import line_chart

    panels = []
    for key in ("step_ms", "gflops", "peak_mb"):
        series = {
            arch: [(r["tokens"], r[key]) for r in rows if r["arch"] == arch]
            for arch in dict.fromkeys(r["arch"] for r in rows)
        }
        panels.append(line_chart(series, f"{path}.{key}.png", title=f"{key} vs triplane tokens"))
    images = [Image.open(p) for p in panels]
    out = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    for k, img in enumerate(images):
        out.paste(img, (sum(i.width for i in images[:k]), 0))
    out.save(path)
    for p in panels:
        p.unlink()
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, args.child[0], int(args.child[1]))))
        return 0
    rows = [run_child(arch, res, argv) for res in args.res for arch in args.archs]
    print_table(rows)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {args.csv}")
    if args.png:
        plot(rows, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
