"""Text -> GLB on the CPU: warm seconds per prompt at default settings, cold start, peak memory.

    .venv/bin/python benchmarks/generate.py [--model DIR] [--threads 2] [--prompts 3]

Targets (2 CPU cores): prompt -> GLB <= 5 s with the model loaded; cold start (imports + load) <= 15 s;
peak RSS <= 4 GB. Without ``--model`` the shipped ``weights/triflow-small`` is used; while it does not
exist, a randomly initialised ``small`` TriFlow with lrm-small's triplane shape (3 x 8 x 32 x 32), the
MiniLM text encoder and lrm-small (shipped weights, else random) is saved to a temporary folder and
measured instead (the output says so). Sampling time does not depend on the weights; mesh time does: a
random field either never reaches the density level (no mesh: a lower bound) or, at its median density,
gives a noise surface with far more triangles than an object (an upper bound). Both are reported.

The measurement runs in a fresh child process so that imports are cold. Prints one JSON line.
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


def make_random_model(folder: Path) -> None:
    """Save a random ``small`` TriFlow pipeline with lrm-small's triplane shape and MiniLM text."""
    import dataclasses

    import torch

    from triflow3d.encoders import load_reconstructor
    from triflow3d.latents import LatentNormalizer
    from triflow3d.models import PRESETS, TriFlow, make_text_encoder
    from triflow3d.pipeline import TextTo3DPipeline

    torch.manual_seed(0)
    recon = load_reconstructor("lrm-small", allow_random=True)
    _, c, r, _ = recon.triplane_shape
    model = TriFlow(dataclasses.replace(PRESETS["small"], plane_channels=c, plane_res=r, text_dim=384))
    with torch.no_grad():  # leave adaLN-Zero's identity so the velocity is not zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
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
    from triflow3d.export import save_mesh
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
                save_mesh(mesh, Path(tmp) / f"{k}.glb")
            sample.append(t1 - t0)
            mesh_default.append(time.perf_counter() - t1)
        t2 = time.perf_counter()  # once: the noise surface of the last object at its median density
        xyz = torch.rand(1, 20000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
        noise = gen.to_mesh(threshold=float(gen.reconstructor.query(gen.planes(), xyz)["sigma"].median()))
        save_mesh(noise, Path(tmp) / "noise.glb")
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model folder (default: the shipped triflow-small)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the TriFlow forward")
    p.add_argument("--_measure", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_make_random", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
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
