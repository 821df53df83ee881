"""Benchmark the triplane renderer and mesh extraction on CPU (plain vs fast paths).

    .venv/bin/python benchmarks/reconstruct.py                 # full run (~2-4 min on 2 cores)
    .venv/bin/python benchmarks/reconstruct.py --quick         # small sizes, seconds

Scene: a random triplane with the instant-nerf-base decoder shape (C = 40, hidden 64) whose planes
and decoder are set by hand so the density is an opaque sphere (radius 0.6) with a random-looking
colour, i.e. a field with empty space, a surface and an interior like a reconstructed object.
Optionally (``--parity``) the parity NeRF decoder + stored planes (C = 16, random high-frequency
density everywhere). Prints rays/s (plain vs fast), 256^3 extraction seconds (dense vs
coarse-to-fine), agreement of the two paths, and peak RSS.

JSON modes for any device (the GPU suite, benchmarks/gpu.sh); either or both replace the report above:

    python3 benchmarks/reconstruct.py --device cuda --encode --encoder instantmesh-nerf-large --batches 1 8
    python3 benchmarks/reconstruct.py --device cuda --render --preset instant-nerf-large --features 80

``--end-to-end ASSET``: ``triflow3d reconstruct ASSET --encoder lrm-small`` (asset -> zero123pp views ->
triplane -> 128^3 mesh + 4 renders at the encoder's input size) run ``--repeats`` times in fresh processes,
one JSON line each: the wall seconds of the whole command (imports included) and its own per-stage
seconds (``load`` weights, ``views`` = render the asset, ``encode``, ``mesh``, ``render``, ``save``;
``startup_s`` is the rest: interpreter and imports). Threads: torch's default (all cores) unless
``OMP_NUM_THREADS`` is set.

    python3 benchmarks/reconstruct.py --end-to-end assets/real/avocado.gltf --repeats 3

``--encode``: ``forward_planes`` of ``--encoder`` with random weights (built on the device), 6 views of
``--image-size`` px with the Zero123++ input cameras, per ``--modes`` (fp32; bf16 = bf16 autocast with fp32
weights) and ``--batches``: objects/s and peak CUDA memory (weights included), one JSON line each (a CUDA
out-of-memory gives an ``"error": "cuda_oom"`` line). ``--render``: rays/s of the plain and fast paths on
the sphere scene with ``--features`` channels and ``--chunk`` rays per pass, one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from triflow3d.cameras import orbit_rig, zero123pp_rig
from triflow3d.triplane import TriplaneField
from triflow3d.triplane.mesh import coarse_to_fine_grid, extract_mesh, mesh_from_volume
from triflow3d.triplane.volume import RENDER_PRESETS, render_cameras

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity" / "instantmesh"


def sphere_scene(n_features: int = 40, radius: float = 0.6, sharpness: float = 4000.0, seed: int = 0):
    """(field, planes): sigma_raw = sharpness (r^2 - |x|^2) via plane channel 0, colours from the rest."""
    g = torch.Generator().manual_seed(seed)
    res = 64
    lin = (torch.arange(res) + 0.5) / res * 2 - 1  # texel centres (align_corners=False)
    v, u = torch.meshgrid(lin, lin, indexing="ij")  # rows = v (H), columns = u (W)
    planes = 0.3 * torch.randn(1, 3, n_features, res, res, generator=g)
    planes[0, :, 0] = 0.0
    planes[0, 0, 0] = u**2 + v**2  # plane 0 (u, v) = (x, y)
    planes[0, 1, 0] = v**2  # plane 1 (u, v) = (x, z): z^2
    field = TriplaneField(n_features).eval()
    net = field.decoder.net
    with torch.no_grad():
        for lin_layer in (net[0], net[2], net[4], net[6]):
            lin_layer.weight.mul_(0.5)
        density_in = [0, n_features]  # feature index of (plane 0, ch 0) and (plane 1, ch 0)
        net[0].weight[:, density_in] = 0.0
        net[0].weight[:2] = 0.0
        net[0].weight[0, density_in], net[0].bias[0] = -1.0, radius**2  # relu(r^2 - s)
        net[0].weight[1, density_in], net[0].bias[1] = 1.0, -(radius**2)  # relu(s - r^2)
        for layer in (net[2], net[4]):
            layer.weight[:2], layer.weight[:, :2] = 0.0, 0.0
            layer.weight[0, 0] = layer.weight[1, 1] = 1.0
        net[6].weight[0] = 0.0
        net[6].weight[0, 0], net[6].weight[0, 1] = sharpness, -sharpness
        net[6].weight[1:, :2] = 0.0
    return field, planes


def parity_scene():
    from safetensors.torch import load_file

    ckpt = torch.load(PARITY / "nerf_small.ckpt", map_location="cpu", weights_only=True)
    prefix = "lrm_generator.synthesizer."
    field = TriplaneField(16).eval()
    field.load_state_dict(
        {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    )
    return field, load_file(PARITY / "expected_nerf_small.safetensors")["planes"]


def _sync() -> None:
    """Wait for queued CUDA work (a no-op on the CPU), so timings cover the work itself."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn):
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t


def time_render(
    field, planes, size: int, views: int, opts, repeats: int = 2, paths: tuple[bool, ...] = (False, True)
) -> tuple[dict, dict]:
    """Best seconds and outputs of the plain (False) and fast (True) paths, interleaved (shared machine)."""
    cams = orbit_rig(views).render_cameras()[None].to(planes.device)
    results, best = {}, dict.fromkeys(paths, float("inf"))
    with torch.inference_mode():  # warm-up (thread pool, allocator)
        render_cameras(field, planes, cams[:, :1], 8, dataclasses.replace(opts, fast=paths[-1]), True)
    for _ in range(repeats):
        for fast in paths:
            with torch.inference_mode():
                run = partial(
                    render_cameras, field, planes, cams, size, dataclasses.replace(opts, fast=fast), True
                )
                results[fast], secs = timed(run)
            best[fast] = min(best[fast], secs)
    return best, results


def bench_render(field, planes, size: int, views: int, preset: str, repeats: int = 2) -> None:
    """Rays/s of the plain and fast paths (best of ``repeats``, interleaved: the machine is shared)."""
    rays = views * size * size
    best, results = time_render(field, planes, size, views, RENDER_PRESETS[preset], repeats)
    for fast in (False, True):
        print(
            f"  render {'fast ' if fast else 'plain'}: {rays / best[fast]:8.0f} rays/s  ({rays} rays, {best[fast]:.2f} s)"
        )
    print(f"  speed-up fast / plain: {best[False] / best[True]:.2f}x")
    diff = {
        k: f"{(results[True][k] - results[False][k]).abs().max().item():.1e}"
        for k in ("rgb", "depth", "alpha")
    }
    print(f"  fast vs plain max |diff|: {diff}  mean alpha {results[True]['alpha'].mean().item():.2f}")


def bench_mesh(field, planes, resolution: int, dense: bool) -> None:
    level, margin = 10.0, 5.0  # extract_mesh's NeRF defaults
    with torch.inference_mode():
        (vol, count), secs = timed(
            lambda: coarse_to_fine_grid(field, planes, resolution, level, margin=margin)
        )
        mesh, mc_secs = timed(lambda: mesh_from_volume(field, planes, vol, level))
        print(
            f"  mesh {resolution}^3 coarse-to-fine: {secs + mc_secs:.2f} s (grid {secs:.2f} s, "
            f"{count / resolution**3:.1%} of points evaluated), {len(mesh.faces)} faces"
        )
        if dense:
            ref, secs = timed(lambda: extract_mesh(field, planes, resolution, coarse_to_fine=False))
            same = np.array_equal(ref.vertices, mesh.vertices) and np.array_equal(ref.faces, mesh.faces)
            print(
                f"  mesh {resolution}^3 dense:          {secs:.2f} s, {len(ref.faces)} faces, identical: {same}"
            )


def bench_encoder(name: str, image_size: int) -> None:
    """``forward_planes`` seconds per object (6 views) for a reconstructor with random weights."""
    from triflow3d.encoders import load_reconstructor

    t0 = time.perf_counter()
    model = load_reconstructor(name, allow_random=True)
    build = time.perf_counter() - t0
    images = torch.rand(1, 6, 3, image_size, image_size)
    cams = zero123pp_rig().input_cameras()[None]
    with torch.inference_mode():
        model.forward_planes(images, cams)  # warm-up
        t0 = time.perf_counter()
        planes = model.forward_planes(images, cams)
        secs = time.perf_counter() - t0
    print(f"  {name}: forward_planes {secs:.2f} s/object (6 x {image_size}^2 views) -> {tuple(planes.shape)};"
          f" build {build:.1f} s")  # fmt: skip


def _peak_cuda_mib(device: torch.device) -> int | None:
    return round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def encode_throughput(model, batch: int, mode: str, args: argparse.Namespace) -> dict:
    """forward_planes objects/s at one batch size and mode (``--warmup`` untimed, ``--iters`` timed)."""
    dev = next(model.parameters()).device
    images = torch.rand(batch, 6, 3, args.image_size, args.image_size, device=dev)
    cams = zero123pp_rig().input_cameras()[None].expand(batch, -1, -1).to(dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=mode == "bf16")
    times = []
    with torch.inference_mode(), amp:
        for _ in range(args.warmup):
            model.forward_planes(images, cams)
        for _ in range(args.iters):
            planes, secs = timed(partial(model.forward_planes, images, cams))
            times.append(secs)
    med = sorted(times)[len(times) // 2]
    return {"s_per_batch_median": round(med, 4), "s_per_batch_min": round(min(times), 4),
            "objects_per_s": round(batch / med, 2), "triplane": list(planes.shape[1:])}  # fmt: skip


def encode_json(args: argparse.Namespace) -> None:
    """One JSON line per (mode, batch): the encoder's throughput with random weights."""
    from triflow3d.encoders import build_reconstructor, resolve_config
    from triflow3d.encoders.loading import finalize

    dev = torch.device(args.device)
    t0 = time.perf_counter()
    model = finalize(build_reconstructor(resolve_config(args.encoder), args.encoder, dev), torch.float32, dev)
    _sync()
    build = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    for mode in args.modes:
        for batch in args.batches:
            head = {"bench": "encode", "encoder": args.encoder, "device": str(dev), "mode": mode, "batch": batch,
                    "views": 6, "image_size": args.image_size, "params_m": round(params / 1e6, 1),
                    "build_s": round(build, 2)}  # fmt: skip
            _reset_peak(dev)
            try:
                line = head | encode_throughput(model, batch, mode, args)
            except torch.cuda.OutOfMemoryError as e:
                line = head | {"error": "cuda_oom", "message": str(e).splitlines()[0][:200]}
            print(json.dumps(line | {"peak_cuda_mib": _peak_cuda_mib(dev)}), flush=True)


def render_json(args: argparse.Namespace) -> None:
    """One JSON line: rays/s of the plain and fast renderer paths on the sphere scene."""
    dev = torch.device(args.device)
    field, planes = sphere_scene(args.features)
    field, planes = field.to(dev), planes.to(dev)
    opts = RENDER_PRESETS[args.preset]
    opts = dataclasses.replace(opts, chunk=args.chunk) if args.chunk else opts
    _reset_peak(dev)
    line = {"bench": "render", "device": str(dev), "preset": args.preset, "features": args.features,
            "size": args.size, "views": args.views, "rays": args.views * args.size**2, "chunk": opts.chunk}  # fmt: skip
    try:
        best, results = time_render(field, planes, args.size, args.views, opts)
    except RuntimeError as e:  # the fast path failed (e.g. a device mismatch): time the plain path alone
        line["fast_error"] = str(e).splitlines()[0][:300]
        best, results = time_render(field, planes, args.size, args.views, opts, paths=(False,))
    line |= {
        f"{'fast' if fast else 'plain'}_rays_per_s": round(line["rays"] / secs) for fast, secs in best.items()
    }
    if True in best:
        diff = (results[True]["rgb"] - results[False]["rgb"]).abs().max().item()
        line |= {
            "speedup_fast": round(best[False] / best[True], 2),
            "fast_vs_plain_max_abs_rgb": f"{diff:.1e}",
        }
    line |= {
        "mean_alpha": round(results[False]["alpha"].mean().item(), 3),
        "peak_cuda_mib": _peak_cuda_mib(dev),
    }
    print(json.dumps(line), flush=True)


def end_to_end(asset: str, encoder: str, repeats: int) -> None:
    """One JSON line per run of ``triflow3d reconstruct`` in a fresh process (see the module docstring)."""
    for run in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "triflow3d",
                "reconstruct",
                asset,
                "--encoder",
                encoder,
                "--out",
                tmp,
            ]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        stages = out["seconds"]
        line = {"bench": "reconstruct_end_to_end", "asset": asset, "encoder": encoder, "run": run,
                "wall_s": round(wall, 2), "startup_s": round(wall - sum(stages.values()), 2),
                **{f"{k}_s": round(v, 2) for k, v in stages.items()}, "render_size": out["size"],
                "renders": out["renders"], "vertices": out["vertices"],
                "threads": os.environ.get("OMP_NUM_THREADS", f"default ({os.cpu_count()} cores)")}  # fmt: skip
        print(json.dumps(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="render size per view")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--preset", default="instant-nerf-base", choices=sorted(RENDER_PRESETS))
    ap.add_argument("--mesh-res", type=int, default=256)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense mesh reference")
    ap.add_argument("--parity", action="store_true", help="also run on the parity planes (C = 16)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    ap.add_argument(
        "--encoder",
        default=None,
        help="reconstructor to time (random weights; '' skips; default instantmesh-nerf-base), "
        "or with --end-to-end the shipped one to run (default lrm-small)",
    )
    ap.add_argument(
        "--end-to-end", metavar="ASSET", help="JSON: time `triflow3d reconstruct ASSET` per stage"
    )
    ap.add_argument("--repeats", type=int, default=3, help="--end-to-end: runs (fresh processes)")
    ap.add_argument("--image-size", type=int, default=320, help="input view size for --encoder")
    js = ap.add_argument_group("JSON modes (any device; see the docstring)")
    js.add_argument("--device", default="cpu")
    js.add_argument("--encode", action="store_true", help="JSON: --encoder throughput per mode and batch")
    js.add_argument("--render", action="store_true", help="JSON: rays/s plain vs fast on --device")
    js.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    js.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="objects per forward_planes")
    js.add_argument("--warmup", type=int, default=3, help="untimed forwards per (mode, batch)")
    js.add_argument("--iters", type=int, default=10, help="timed forwards per (mode, batch)")
    js.add_argument("--features", type=int, default=40, help="--render: triplane channels C of the sphere")
    js.add_argument("--chunk", type=int, default=0, help="--render: rays per pass (0: the preset's)")
    args = ap.parse_args()
    if args.end_to_end:
        end_to_end(args.end_to_end, args.encoder or "lrm-small", args.repeats)
        return
    args.encoder = "instantmesh-nerf-base" if args.encoder is None else args.encoder
    if args.encode or args.render:
        torch.set_num_threads(args.threads)
        if args.encode:
            encode_json(args)
        if args.render:
            render_json(args)
        return
    if args.quick:
        args.size, args.views, args.mesh_res = 16, 2, 64
    torch.set_num_threads(args.threads)
    scenes = {"sphere C=40": sphere_scene}
    if args.parity and PARITY.exists():
        scenes["parity C=16"] = parity_scene
    for name, make in scenes.items():
        field, planes = make()
        print(f"[{name}] threads={args.threads} preset={args.preset}")
        bench_render(field, planes, args.size, args.views, args.preset)
        bench_mesh(field, planes, args.mesh_res, dense=not args.no_dense)
    if args.encoder:
        print("[encoder]")
        bench_encoder(args.encoder, 64 if args.quick else args.image_size)
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
