"""Training step of our reconstructor (``recon train``) on any device: s/step, objects/s, peak memory.

    .venv/bin/python benchmarks/recon_train.py                          # CPU, batch 4 (the shipped recipe)
    python3 benchmarks/recon_train.py --device cuda --batches 4 16 32   # on a GPU

The model is the ``--preset`` (default ``lrm-small``: the shipped architecture, random weights) and the
step is ``recon.train.ReconTrainer.train_step`` with the shipped recipe's sampling (``--rays`` 2048 rays per
object, ``--samples`` 0 = the model's own 32 + 32, ``--occ-points`` 4096 3D points), through each of the
renderer ``--paths`` (``fast``: empty-space skipping, the default of ``recon train``; ``dense``:
``--no-fast-render``). Data: ``--objects`` random-sphere scenes
rendered analytically (``recon.synthetic``) on the Zero123++ rig (inputs) and 8 random views
(supervision) at the preset's image size; the 3D labels are random (their values do not change the cost).
One JSON line per batch: median / min step seconds, objects/s, ``sample_s`` (the CPU-side ray draw of one
step, inside the step), peak CUDA memory or peak RSS; ``tflop_per_step`` (FlopCounterMode over one whole
step), ``mfu`` against the device's dense peak (``triflow3d.utils.efficiency``; "n/a" on a CPU unless
``--peak-tflops``) and ``kernel_share`` (GPU kernel time / wall time over ``--profile-steps`` steps; on a
CPU, operator time). ``--loop resident`` (the CUDA default) keeps the data on the device.
``--profile`` prints a torch.profiler table of one more step to stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from triflow3d.encoders import resolve_config
from triflow3d.recon.data import load_recon_data, sample_rays
from triflow3d.recon.synthetic import write_views_folder
from triflow3d.recon.train import ReconTrainConfig, ReconTrainer
from triflow3d.utils.efficiency import count_flops, efficiency, kernel_share, math_dtype


def make_data(root: Path, objects: int, image_size: int, occ_samples: int):
    seeds = list(range(objects))
    write_views_folder(root / "inputs", seeds, "zero123pp", image_size)
    write_views_folder(root / "sup", seeds, "random:8", image_size)
    data = load_recon_data([root / "inputs"], [root / "sup"], image_size, image_size, workers=4)
    g = torch.Generator().manual_seed(0)
    data.points = torch.rand(objects, occ_samples, 3, generator=g) * 2 - 1
    data.occ = (torch.rand(objects, occ_samples, generator=g) > 0.5).float()
    return data


def time_batch(args: argparse.Namespace, data, batch: int, fast: bool, run_dir: Path) -> dict:
    mcfg = resolve_config(args.preset)
    extra = 1 + args.profile_steps  # one step counts the FLOPs, then the profiled ones
    cfg = ReconTrainConfig(steps=args.warmup + args.steps + extra, batch=batch, rays=args.rays,
                           samples=args.samples, occ_weight=1.0, occ_points=args.occ_points,
                           occ_samples=data.points.shape[1], sup_size=int(mcfg.image_size), camera_noise=0.0,
                           fast_render=fast, loop=args.loop)  # fmt: skip
    trainer = ReconTrainer(cfg, mcfg, data, run_dir, args.preset, device=args.device)
    dev = trainer.device
    cuda = dev.type == "cuda"
    # the host loop reads its numbers every step (as `recon train` does), the resident one only when logging
    step = trainer.step_tensors if trainer.resident else trainer.train_step
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    timed = sorted(times[args.warmup :])
    flops = count_flops(step)
    share = kernel_share(step, dev, args.profile_steps) if args.profile_steps else None
    if args.profile:
        profile_step(trainer, cuda)
    t0 = time.perf_counter()
    sample_rays(data, torch.arange(batch) % len(data), args.rays, cfg.fg_fraction, torch.Generator())
    sample_s = time.perf_counter() - t0
    step_s = timed[len(timed) // 2]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    out = {"bench": "recon_train", "preset": args.preset, "device": args.device, "batch": batch,
           "path": "fast" if fast else "dense", "loop": "resident" if trainer.resident else "host",
           "rays": args.rays, "samples": args.samples, "threads": torch.get_num_threads(),
           "params_m": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2),
           "steps_timed": len(timed), "step_s_median": round(step_s, 4),
           "step_s_min": round(timed[0], 4), "objects_per_s": round(batch / step_s, 1),
           **efficiency(flops, step_s, dev, math_dtype(dev, False), peak),
           "kernel_share": None if share is None else round(share, 3), "sample_s": round(sample_s, 4)}  # fmt: skip
    if cuda:
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        out["gpu"] = torch.cuda.get_device_name()
    else:
        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def profile_step(trainer: ReconTrainer, cuda: bool) -> None:
    """One more step under torch.profiler: the 15 costliest operators, to stderr."""
    import sys

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
    key = "cuda_time_total" if cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15), file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lrm-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[4])
    ap.add_argument("--rays", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=0, help="samples per ray (0: the model's own)")
    ap.add_argument("--paths", nargs="+", default=["fast", "dense"], choices=["fast", "dense"])
    ap.add_argument("--occ-points", type=int, default=4096)
    ap.add_argument("--objects", type=int, default=0, help="scenes made (default: 2 x the largest batch)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="profile one more step per batch (stderr)")
    ap.add_argument(
        "--loop", default="auto", choices=["auto", "host", "resident"], help="ReconTrainConfig.loop"
    )
    ap.add_argument(
        "--profile-steps", type=int, default=2, help="steps under torch.profiler for kernel_share"
    )
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak for MFU (default: the table)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        size = int(resolve_config(args.preset).image_size)
        data = make_data(Path(tmp), args.objects or 2 * max(args.batches), size, max(8192, args.occ_points))
        for path in args.paths:
            for batch in args.batches:
                run = Path(tmp) / f"run-{path}-{batch}"
                print(json.dumps(time_batch(args, data, batch, path == "fast", run)), flush=True)


if __name__ == "__main__":
    main()
