"""Do the shipped models give the same results on CUDA as on the CPU?

    .venv/bin/python benchmarks/cuda_parity.py --save ref/cuda_parity.safetensors     # here, on the CPU
    python3 benchmarks/cuda_parity.py --check ref/cuda_parity.safetensors --device cuda   # on the GPU

``--save`` runs the shipped ``lrm-small`` on fixed random views and the shipped ``triflow-small`` on two
prompts (MiniLM text; 25 Euler steps, CFG as shipped), then decodes a 64^3 density grid, and stores the
inputs, the text embeddings and every output. ``--check`` replays them on ``--device`` with the stored
text embeddings (so the GPU machine needs no text-encoder package), in fp32 and under bf16 autocast,
and prints one JSON line per check with the largest absolute and relative differences. It also runs an
``lrm-small`` with the projective lift (``lift_depth`` 16, random weights) on the CPU and on ``--device``.
"""

from __future__ import annotations

import argparse
import json

import torch
from safetensors.torch import load_file, save_file

from triflow3d.cameras import zero123pp_rig
from triflow3d.models.text_encoder import TextEmbedding

PROMPTS = ["a red office chair with wheels", "a small blue wooden table"]
SEEDS = [0, 1]
RECORDED = [*PROMPTS, ""]  # "" is the unconditional prompt of classifier-free guidance


class RecordedText:
    """A text encoder that replays stored embeddings (the TextEncoder protocol, for known prompts only)."""

    def __init__(self, name: str, table: dict[str, TextEmbedding], dim: int, max_length: int = 77):
        self.name, self.table, self.dim, self.max_length = name, table, dim, max_length

    def __call__(self, prompts: list[str]) -> TextEmbedding:
        (p,) = prompts
        return self.table[p]


def run_models(device: str, text=None, autocast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    from triflow3d.encoders import load_reconstructor
    from triflow3d.pipeline import TextTo3DPipeline
    from triflow3d.triplane.mesh import density_grid

    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 6, 3, 128, 128, generator=g)
    cams = zero123pp_rig().input_cameras()[None]
    recon = load_reconstructor("lrm-small", device=device)
    pipe = TextTo3DPipeline.from_pretrained(None, device=device, text_encoder=text, autocast=autocast)
    out = {"images": images}
    with (
        torch.inference_mode(),
        torch.autocast(torch.device(device).type, torch.bfloat16, autocast is not None),
    ):
        out["recon_planes"] = recon.forward_planes(images.to(device), cams.to(device)).float().cpu()
    planes = pipe.sample(PROMPTS, SEEDS, pipe.settings)
    out["gen_planes"] = planes.float().cpu()
    with torch.inference_mode():
        out["gen_density"] = density_grid(pipe.reconstructor.synthesizer, planes[:1], 64).float().cpu()
    for k, p in enumerate(RECORDED):
        e = pipe.text_encoder([p])
        out[f"text{k}_tokens"], out[f"text{k}_mask"], out[f"text{k}_pooled"] = e.tokens, e.mask, e.pooled
    return out


def lift_check(device: str) -> dict:
    """A random lrm-small with the projective lift, CPU vs ``device`` (the lift's projection made non-zero)."""
    import dataclasses

    from triflow3d.encoders import RECONSTRUCTOR_PRESETS, build_reconstructor

    model = build_reconstructor(
        dataclasses.replace(RECONSTRUCTOR_PRESETS["lrm-small"], lift_depth=16), seed=0
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.lift.proj.weight.normal_(0.0, 0.02, generator=g)
        images = torch.rand(2, 6, 3, 128, 128, generator=g)
        cams = zero123pp_rig().input_cameras()[None].expand(2, -1, -1)
        want = model.forward_planes(images, cams)
        got = model.to(device).forward_planes(images.to(device), cams.to(device)).cpu()
    return compare("lift_random", got, want) | {"device": device, "mode": "fp32"}


def compare(name: str, got: torch.Tensor, want: torch.Tensor) -> dict:
    diff = (got - want).abs()
    return {"check": name, "max_abs": float(diff.max()), "max_rel": float(diff.max() / want.abs().max()),
            "mean_abs": float(diff.mean())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", help="write the CPU reference here")
    ap.add_argument("--check", help="replay against this reference")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.save:
        save_file({k: v.contiguous() for k, v in run_models("cpu").items()}, args.save)
        print(json.dumps({"saved": args.save}))
        return
    ref = load_file(args.check)
    table = {p: TextEmbedding(ref[f"text{k}_tokens"], ref[f"text{k}_mask"], ref[f"text{k}_pooled"])
             for k, p in enumerate(RECORDED)}  # fmt: skip
    text = RecordedText("minilm-l6-v2", table, ref["text0_tokens"].shape[-1])
    print(json.dumps(lift_check(args.device)), flush=True)
    for mode, autocast in (("fp32", None), ("bf16", torch.bfloat16)):
        got = run_models(args.device, text, autocast)
        for key in ("recon_planes", "gen_planes", "gen_density"):
            line = compare(key, got[key], ref[key]) | {"device": args.device, "mode": mode}
            if torch.device(args.device).type == "cuda":
                line["gpu"] = torch.cuda.get_device_name()
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
