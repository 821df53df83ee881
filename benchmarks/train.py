"""TriFlow training step time and peak memory of a training preset (fp32 and bf16 autocast).

    .venv/bin/python benchmarks/train.py [--preset small] [--threads 2] [--steps 8] [--warmup 2] [--batch 32] [--modes fp32 bf16]
    python3 benchmarks/train.py --preset paper --device cuda --batch 32 --warmup 3 --steps 10   # GPU (benchmarks/gpu.sh)

Synthetic latents of the triplane shape the preset's model implies (``TriFlowParams.plane_channels`` and
``plane_res``): ``small`` 3 x 8 x 32 x 32 (lrm-small v3's; the shipped v4's is ``--triplane 11,32``),
``paper`` 3 x 80 x 64 x 64 (InstantMesh's triplane, as in the paper), ``tiny`` 3 x 8 x 16 x 16;
``--triplane C,R`` overrides. A fake text encoder
of width ``--text-dim`` (default: the model preset's ``text_dim``, 384 = MiniLM for ``small``, 768 =
CLIP-L for ``paper``); captions are embedded once before training, so the encoder does not affect step
time. Flow loss only: the perceptual rendering loss is off (the ``paper`` preset's lpips-vgg needs weight
files and rendered views). ``--batch`` is the global batch of one step on one device (the ``paper``
preset's 256 is spread over GPUs). The timed step is ``Trainer.train_step``: per-sample t / eps drawn on
the CPU, forward, backward, clip, AdamW and EMA; ``draw_s`` is the CPU draw alone. ``--loop resident``
(the default on CUDA) times ``Trainer.resident_step`` instead: data, draws and the skip decision on the
device, the model through ``torch.compile`` unless ``--compile off``.

Efficiency (``triflow3d.utils.efficiency``): ``tflop_per_step`` is one step counted by FlopCounterMode on
the eager model (forward + backward), ``mfu`` = achieved FLOP/s / the device's dense peak for the step's
math dtype (``mfu_dtype``: bf16, or tf32 / fp32; "n/a" on a CPU unless ``--peak-tflops`` is given), and
``kernel_share`` the share of ``--profile-steps`` profiled steps' wall time spent in GPU kernels (on a CPU:
in operators).

Each mode runs in a fresh child process so its peak RSS (CPU) or peak allocated memory (CUDA) is its own.
Prints one JSON line per mode. A CUDA out-of-memory prints a line with ``"error": "cuda_oom"`` and the
mode is retried at half the batch (down to ``--min-batch``); a failed child prints a line with
``"error"`` and the other modes still run. The numbers for docs/training.md came from this script.
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

from triflow3d.conventions import CONVENTIONS_VERSION, NUM_PLANES
from triflow3d.data import latents as lt
from triflow3d.models.text_encoder import FakeTextEncoder
from triflow3d.models.triflow import TRIFLOW_PRESETS as MODEL_PRESETS
from triflow3d.train.config import PRESETS
from triflow3d.train.draws import draw
from triflow3d.train.trainer import Trainer
from triflow3d.utils.efficiency import count_flops, efficiency, kernel_share, math_dtype


def triplane_shape(preset: str, override: str | None) -> tuple[int, int, int, int]:
    """(3, C, R, R) of the preset's model, or of ``override`` "C,R"."""
    params = MODEL_PRESETS[PRESETS[preset].model]
    c, r = (int(v) for v in override.split(",")) if override else (params.plane_channels, params.plane_res)
    return (NUM_PLANES, c, r, r)


def write_latents(root: Path, n: int, shape: tuple[int, ...]) -> Path:
    """n random triplanes of ``shape`` with captions and weights, in the LatentDataset format."""
    info = {"encoder": "bench", "config_hash": "bench", "dtype": "float32",
            "conventions_version": CONVENTIONS_VERSION, "triplane_shape": list(shape)}  # fmt: skip
    lt.ensure_encoder_json(root, info)
    g = torch.Generator().manual_seed(0)
    ids, name = [f"obj{i:04d}" for i in range(n)], lt.shard_name(0, 0)
    sha = lt.write_shard(root / name, torch.randn(n, *shape, generator=g), ids, {"encoder": "bench"})
    save_file(
        {"weights": torch.ones(n, 3, shape[2], shape[3])},
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
    """The child: one mode at one batch -> its JSON line (an ``error`` line on CUDA out-of-memory)."""
    torch.set_num_threads(args.threads)
    shape = triplane_shape(args.preset, args.triplane)
    text_dim = args.text_dim or MODEL_PRESETS[PRESETS[args.preset].model].text_dim
    head = {"bench": "train", "preset": args.preset, "mode": args.mode, "device": args.device, "batch": args.batch,
            "triplane": list(shape), "text_dim": text_dim}  # fmt: skip
    try:
        return head | time_steps(args, shape, text_dim)
    except torch.cuda.OutOfMemoryError as e:
        return head | {"error": "cuda_oom", "message": str(e).splitlines()[0][:200],
                       "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20)}  # fmt: skip


def time_steps(args: argparse.Namespace, shape: tuple[int, ...], text_dim: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = write_latents(Path(tmp) / "latents", max(64, args.batch), shape)
        extra = 1 + args.profile_steps  # one eager step counts the FLOPs, then the profiled ones
        cfg = PRESETS[args.preset].replace(latents=str(data), out=str(Path(tmp) / "run"), batch_size=args.batch,
                                           steps=args.warmup + args.steps + extra, bf16=args.mode == "bf16",
                                           device=args.device, perceptual="none", grad_accum=1, loop=args.loop,
                                           compile=args.compile, log_every=10**9)  # fmt: skip
        trainer = Trainer(cfg, text_encoder=FakeTextEncoder(dim=text_dim, max_length=32))
        dev = trainer.device
        cuda = dev.type == "cuda"
        before = rss_mib()
        calls = trainer.step_calls(cfg.steps)

        def one_step() -> None:
            next(calls)()
            trainer.step += 1

        times = []
        for _ in range(args.warmup + args.steps):
            run = next(calls)  # the loader loop reads its batch here, outside the timed step
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            trainer.step += 1
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        timed = sorted(times[args.warmup :])
        compiled, trainer.forward = trainer.forward, trainer.model
        flops = count_flops(one_step)  # the eager model: FlopCounterMode counts operators as they run
        trainer.forward = compiled
        share = kernel_share(one_step, dev, args.profile_steps) if args.profile_steps else None
        params = sum(p.numel() for p in trainer.raw.parameters())
        t0 = time.perf_counter()
        draw(cfg, 0, list(range(args.batch)), shape)
        draw_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    step_s = timed[len(timed) // 2]
    result = {"device": str(dev), "threads": args.threads, "loop": trainer.loop,
              "compile": args.compile, "params_m": round(params / 1e6, 2), "steps_timed": len(timed),
              "step_s_median": round(step_s, 4), "step_s_min": round(timed[0], 4),
              "samples_per_s": round(args.batch / step_s, 1), "draw_s": round(draw_s, 3),
              **efficiency(flops, step_s, dev, math_dtype(dev, cfg.bf16), args.peak_tflops and args.peak_tflops * 1e12),
              "kernel_share": None if share is None else round(share, 3),
              "rss_before_steps_mib": round(before), "peak_rss_mib": round(peak),
              "load_avg_1min": round(os.getloadavg()[0], 1)}  # fmt: skip
    if cuda:
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        result["gpu"] = torch.cuda.get_device_name(dev)
        result["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        result["tf32"] = torch.backends.cuda.matmul.allow_tf32
    return result


def run_child(args: argparse.Namespace, mode: str, batch: int) -> dict:
    """One mode in a fresh process -> its JSON line, or an ``error`` line when the child failed."""
    keys = ("preset", "threads", "steps", "warmup", "device", "loop", "compile", "profile_steps")
    cmd = [sys.executable, __file__, "--mode", mode, f"--batch={batch}"]
    cmd += [f"--{k}={getattr(args, k)}" for k in keys[:4]]
    cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in keys[4:] + ("triplane", "text_dim", "peak_tflops")
            if getattr(args, k) is not None]  # fmt: skip
    head = {"bench": "train", "preset": args.preset, "mode": mode, "device": args.device, "batch": batch}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.mode_timeout)
    except subprocess.TimeoutExpired:
        return head | {"error": "timeout", "timeout_s": args.mode_timeout}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return head | {"error": f"exit {out.returncode}", "stderr_tail": out.stderr.strip()[-800:]}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="training preset (its model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=32, help="global batch of one step")
    p.add_argument("--min-batch", type=int, default=4, help="halve the batch on CUDA OOM down to this")
    p.add_argument("--triplane", help="C,R: triplane channels and resolution (default: the preset's model)")
    p.add_argument("--text-dim", type=int, help="text width (default: the preset's model, 768 for paper)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--mode-timeout", type=float, help="seconds per child process (default: none)")
    p.add_argument("--loop", default="auto", choices=["auto", "loader", "resident"], help="TrainConfig.loop")
    p.add_argument(
        "--compile", default="auto", help="TrainConfig.compile (auto: default on CUDA, off on the CPU)"
    )
    p.add_argument(
        "--profile-steps", type=int, default=2, help="steps under torch.profiler for kernel_share (0: off)"
    )
    p.add_argument(
        "--peak-tflops", type=float, help="the device's dense peak for MFU (default: the table; CPU: n/a)"
    )
    p.add_argument("--mode", help=argparse.SUPPRESS)  # child process: run one mode
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    failed = False
    for mode in args.modes:
        batch = args.batch
        while True:
            result = run_child(args, mode, batch)
            print(json.dumps(result), flush=True)
            if result.get("error") != "cuda_oom" or batch // 2 < args.min_batch:
                break
            batch //= 2
        failed |= "error" in result
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
