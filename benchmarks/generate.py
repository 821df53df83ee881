"""Text -> GLB on the CPU: warm seconds per prompt at default settings, cold start, peak memory.

    .venv/bin/python benchmarks/generate.py [--model DIR] [--threads 2] [--prompts 3]

Targets (2 CPU cores): prompt -> GLB <= 5 s with the model loaded; cold start (imports + load) <= 15 s;
peak RSS <= 4 GB. Without ``--model`` the shipped ``weights/triflow-small`` is used; while it does not
exist, a randomly initialised ``small`` TriFlow with lrm-small's triplane shape (3 x 11 x 32 x 32), the
MiniLM text encoder and lrm-small (shipped weights, else random) is saved to a temporary folder and
measured instead (the output says so). Sampling time does not depend on the weights; mesh time does: a
random field either never reaches the density level (no mesh: a lower bound) or, at its median density,
gives a noise surface with far more triangles than an object (an upper bound). Both are reported.

The measurement runs in a fresh child process so that imports are cold. Prints one JSON line.

``--sampler-only`` (any device; the GPU suite, benchmarks/gpu.sh) times only what runs on the
accelerator, with random weights and a fake text encoder of the model's width, in this process:

    python3 benchmarks/generate.py --sampler-only --device cuda --presets small paper --modes fp32 bf16

- ``TextTo3DPipeline.sample``: ``--steps`` Euler steps with CFG ``--cfg`` (cond and uncond in one
  batched forward) for a batch of ``--prompts`` prompts, for each TriFlow preset (``small``: lrm-small's
  3 x 11 x 32 x 32 triplane, MiniLM width 384; ``paper``: InstantMesh's 3 x 80 x 64 x 64, CLIP-L width
  768; ``tiny``: 3 x 8 x 16 x 16 for smoke runs) and mode (fp32, bf16 autocast). One JSON line each.
- triplane -> activated density grid (the mesh extraction's grid query, ``triplane.mesh.density_grid``,
  dense, at each ``--grid-res``) through the preset's reconstructor decoder (lrm-small / random
  instantmesh-nerf-large), and once the coarse-to-fine grid at the largest resolution (on a random field
  it refines almost nothing: a lower bound). Marching cubes and GLB export are not timed. One JSON line
  per preset.

A CUDA out-of-memory gives an ``"error": "cuda_oom"`` line and the other presets / modes still run.
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

T_START = time.perf_counter()
PROMPTS = ["a red office chair with wheels", "a blue ceramic mug with a handle", "a small wooden table"]


# The reconstructor whose triplanes (and decoder) each TriFlow preset is sized for (config overrides).
RECONSTRUCTOR_OF = {
    "tiny": ("lrm-small", {"triplane_low_res": 8}),  # 3 x 11 x 16 x 16, smoke runs only
    "small": ("lrm-small", {}),  # 3 x 11 x 32 x 32
    "paper": ("instantmesh-nerf-large", {}),  # 3 x 80 x 64 x 64
}


def random_triflow(params, device: str = "cpu"):
    """A TriFlow of ``params`` built on ``device``, its weights moved off adaLN-Zero's identity (so the
    velocity is not zero)."""
    import torch

    from triflow3d.models import TriFlow

    with torch.device(device):
        model = TriFlow(params)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def make_random_model(folder: Path) -> None:
    """Save a random ``small`` TriFlow pipeline with lrm-small's triplane shape and MiniLM text."""
    import dataclasses

    import torch

    from triflow3d.encoders import load_reconstructor
    from triflow3d.latents import LatentNormalizer
    from triflow3d.models import TRIFLOW_PRESETS, make_text_encoder
    from triflow3d.pipeline import TextTo3DPipeline

    torch.manual_seed(0)
    recon = load_reconstructor("lrm-small", allow_random=True)
    _, c, r, _ = recon.triplane_shape
    model = random_triflow(
        dataclasses.replace(TRIFLOW_PRESETS["small"], plane_channels=c, plane_res=r, text_dim=384)
    )
    pipe = TextTo3DPipeline(
        model, LatentNormalizer(c, encoder_id="lrm-small"), make_text_encoder("minilm"), recon
    )
    pipe.reconstructor_ref = "lrm-small" if _has_shipped_lrm() else None  # shipped weights: by reference
    pipe.save_pretrained(folder)


def _has_shipped_lrm() -> bool:
    from triflow3d.encoders.loading import WEIGHTS_DIR

    return (WEIGHTS_DIR / "lrm-small" / "model.safetensors").is_file()


def measure(model: Path, threads: int, n_prompts: int, bf16: bool) -> dict:
    """Runs in the child: cold start, then per-prompt sampling / mesh / GLB at default settings."""
    import torch

    torch.set_num_threads(threads)
    from triflow3d.export import save_generated_mesh
    from triflow3d.pipeline import TextTo3DPipeline

    pipe = TextTo3DPipeline.from_pretrained(model, autocast=torch.bfloat16 if bf16 else None)
    cold = time.perf_counter() - T_START
    pipe(PROMPTS[0], seed=0)  # warm-up (first-call allocations)
    sample, mesh_default = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(n_prompts):
            t0 = time.perf_counter()
            gen = pipe(PROMPTS[k % len(PROMPTS)], seed=k)[0]
            t1 = time.perf_counter()
            mesh = gen.to_mesh()  # default resolution 128 and level
            if len(mesh.faces):
                save_generated_mesh(mesh, Path(tmp) / f"{k}.glb")
            sample.append(t1 - t0)
            mesh_default.append(time.perf_counter() - t1)
        t2 = time.perf_counter()  # once: the noise surface of the last object at its median density
        xyz = torch.rand(1, 20000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
        noise = gen.to_mesh(threshold=float(gen.reconstructor.query(gen.planes(), xyz)["sigma"].median()))
        save_generated_mesh(noise, Path(tmp) / "noise.glb")
        glb_noise, faces_noise = [time.perf_counter() - t2], [len(noise.faces)]
    med = lambda xs: round(sorted(xs)[len(xs) // 2], 3)  # noqa: E731
    return {
        "settings": {k: getattr(pipe.settings, k) for k in ("steps", "cfg", "sampler", "shift")},
        "threads": threads,
        "bf16": bf16,
        "cold_start_s": round(cold, 2),
        "sample_s": med(sample),
        "mesh_glb_default_level_s": med(mesh_default),
        "prompt_to_glb_s_lower": round(med(sample) + med(mesh_default), 3),
        "mesh_glb_noise_surface_s": med(glb_noise),
        "noise_surface_faces": int(med(faces_noise)),
        "prompt_to_glb_s_upper": round(med(sample) + med(glb_noise), 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "triplane_shape": list(gen.reconstructor.triplane_shape),
        "params_M": round(sum(p.numel() for p in pipe.model.parameters()) / 1e6, 2),
    }


def random_preset_pipeline(preset: str, device: str):
    """A TextTo3DPipeline of a random ``preset`` TriFlow, a random reconstructor of its triplane shape and
    a fake text encoder of its width, all on ``device`` (nothing saved or downloaded); fp32 (set
    ``.autocast`` for bf16)."""
    import dataclasses

    import torch

    from triflow3d.encoders import build_reconstructor, resolve_config
    from triflow3d.encoders.loading import finalize
    from triflow3d.latents import LatentNormalizer
    from triflow3d.models import TRIFLOW_PRESETS, FakeTextEncoder
    from triflow3d.pipeline import TextTo3DPipeline

    name, overrides = RECONSTRUCTOR_OF[preset]
    recon = finalize(
        build_reconstructor(resolve_config(name, overrides), name, device), torch.float32, device
    )
    torch.manual_seed(0)
    params = dataclasses.replace(TRIFLOW_PRESETS[preset], plane_channels=recon.triplane_shape[1])
    text = FakeTextEncoder(dim=params.text_dim, max_length=77, device=device)
    normalizer = LatentNormalizer(params.plane_channels, encoder_id=name)
    return TextTo3DPipeline(random_triflow(params, device), normalizer, text, recon)


def _timed(fn, repeats: int, device) -> tuple[list[float], object]:
    """Seconds of ``repeats`` calls of fn() (after one untimed warm-up), CUDA-synchronised."""
    import torch

    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    out = fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times), out


def _peak_mib(device) -> int | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20) if torch.device(device).type == "cuda" else None


def time_sampler(pipe, args: argparse.Namespace, mode: str) -> dict:
    """Seconds of ``pipe.sample`` for one batch of ``--prompts`` prompts (``--steps`` Euler steps, CFG)."""
    from triflow3d.pipeline import SamplerSettings

    prompts = [PROMPTS[k % len(PROMPTS)] for k in range(args.prompts)]
    settings = SamplerSettings(steps=args.steps, cfg=args.cfg, batch_size=len(prompts))
    times, planes = _timed(
        lambda: pipe.sample(prompts, list(range(len(prompts))), settings), args.repeats, args.device
    )
    med = times[len(times) // 2]
    forwards = args.steps * (2 if args.cfg != 1.0 else 1) * len(prompts)  # model rows evaluated
    return {"mode": mode, "prompts": len(prompts), "steps": args.steps, "cfg": args.cfg,
            "params_m": round(sum(p.numel() for p in pipe.model.parameters()) / 1e6, 2),
            "triplane": list(planes.shape[1:]), "sample_s_median": round(med, 4), "sample_s_min": round(times[0], 4),
            "s_per_object": round(med / len(prompts), 4), "model_rows_per_s": round(forwards / med, 1)}  # fmt: skip


def time_grid(pipe, args: argparse.Namespace) -> dict:
    """Seconds of the dense density grid at each ``--grid-res`` and of one coarse-to-fine grid."""
    from functools import partial

    import torch

    from triflow3d.conventions import MESH_THRESHOLD
    from triflow3d.flow.sampling import get_noise
    from triflow3d.triplane.mesh import coarse_to_fine_grid, density_grid

    field = pipe.reconstructor.synthesizer
    planes = get_noise([0], pipe.reconstructor.triplane_shape, args.device)  # (1, 3, C, R, R)
    out: dict = {"decoder": pipe.reconstructor.encoder_id, "triplane": list(planes.shape[1:])}
    with torch.inference_mode():
        for res in args.grid_res:
            times, _ = _timed(partial(density_grid, field, planes, res), args.repeats, args.device)
            out[f"dense_{res}_s"] = round(times[len(times) // 2], 4)
            out[f"dense_{res}_mpoints_per_s"] = round(res**3 / times[len(times) // 2] / 1e6, 1)
        res = max(args.grid_res)
        t0 = time.perf_counter()
        _, count = coarse_to_fine_grid(field, planes, res, MESH_THRESHOLD, margin=0.5 * MESH_THRESHOLD)
        out[f"coarse_to_fine_{res}_s_random_field"] = round(time.perf_counter() - t0, 4)
        out[f"coarse_to_fine_{res}_points_frac"] = round(count / res**3, 4)
    return out


def sampler_only(args: argparse.Namespace) -> None:
    """One JSON line per (preset, mode) for the sampler and one per preset for the grid query."""
    from functools import partial

    import torch

    torch.set_num_threads(args.threads)
    for preset in args.presets:
        head = {"preset": preset, "device": args.device}
        pipe = random_preset_pipeline(preset, args.device)
        for mode in args.modes:
            pipe.autocast = torch.bfloat16 if mode == "bf16" else None
            line = _guard(partial(time_sampler, pipe, args, mode), args.device, mode)
            print(json.dumps({"bench": "generate_sampler"} | head | line), flush=True)
        line = _guard(partial(time_grid, pipe, args), args.device, "fp32")
        print(json.dumps({"bench": "density_grid"} | head | line), flush=True)
        del pipe
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()


def _guard(fn, device, mode: str) -> dict:
    """fn() with its peak CUDA memory, or an error line on CUDA out-of-memory."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        return fn() | {"peak_cuda_mib": _peak_mib(device)}
    except torch.cuda.OutOfMemoryError as e:
        return {"mode": mode, "error": "cuda_oom", "message": str(e).splitlines()[0][:200],
                "peak_cuda_mib": _peak_mib(device)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model folder (default: the shipped triflow-small)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the TriFlow forward")
    g = p.add_argument_group("--sampler-only (sampler + density grid, random weights; see the docstring)")
    g.add_argument("--sampler-only", action="store_true", help="time the sampler and grid query only")
    g.add_argument("--device", default="cpu")
    g.add_argument("--presets", nargs="+", default=["small", "paper"], choices=sorted(RECONSTRUCTOR_OF))
    g.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    g.add_argument("--steps", type=int, default=25, help="Euler steps (the shipped default)")
    g.add_argument("--cfg", type=float, default=4.0, help="CFG scale (the shipped default)")
    g.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    g.add_argument("--grid-res", type=int, nargs="+", default=[128, 256], help="density grid sizes G (G^3)")
    p.add_argument("--_measure", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_make_random", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sampler_only:
        return sampler_only(args)
    if args._make_random:
        return make_random_model(args._make_random)
    if args._measure:
        return print(json.dumps(measure(args._measure, args.threads, args.prompts, args.bf16)))
    from triflow3d.pipeline import DEFAULT_MODEL_DIR

    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        model, note = args.model or DEFAULT_MODEL_DIR, "trained model"
        if args.model is None and not (DEFAULT_MODEL_DIR / "config.json").is_file():
            model, note = Path(tmp) / "random-small", "RANDOM small TriFlow (shipped model not trained yet)"
            subprocess.run([sys.executable, __file__, "--_make_random", str(model)], check=True, env=env)
        cmd = [sys.executable, __file__, "--_measure", str(model), "--threads", str(args.threads)]
        cmd += ["--prompts", str(args.prompts)] + (["--bf16"] if args.bf16 else [])
        out = subprocess.run(cmd, check=True, env=env, capture_output=True)
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    result |= {"model": str(args.model or "triflow-small"), "note": note}
    result["targets"] = {"prompt_to_glb_s": 5.0, "cold_start_s": 15.0, "peak_rss_gb": 4.0}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
