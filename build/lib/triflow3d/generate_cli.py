"""``triflow3d generate``: prompts -> a folder of 3D files per object (mesh, turntable, views, triplane).

Each object is written into a temporary folder next to its final one and renamed when complete, so an
interrupted or failed run never leaves a half-written object. The model is loaded (and every input
checked) before anything is created under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import warnings
from pathlib import Path

import torch

from triflow3d.errors import ConfigError, TriflowError
from triflow3d.export import FORMATS, ExportOptions, export_generated, parse_formats, write_info
from triflow3d.pipeline import RENDERERS, TextTo3DPipeline
from triflow3d.utils.batch import add_keep_going, exit_status, report_failure
from triflow3d.utils.device import resolve_device
from triflow3d.utils.io import append_jsonl, atomic_path
from triflow3d.utils.progress import progress_bar

LOG = "generated.jsonl"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="*", help="text prompts, one object each")
    p.add_argument(
        "--prompts-file", type=Path, help="more prompts, one per line (# comments, blanks skipped)"
    )
    p.add_argument(
        "--unconditional", action="store_true", help="sample without a prompt (needs --n, no prompts)"
    )
    p.add_argument("--n", type=int, help="number of unconditional objects")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per object)")
    p.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="S (prompt k gets S + k) or one per prompt"
    )
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's, 25)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the model's, 4)")
    p.add_argument("--sampler", choices=("euler", "heun"), help="ODE sampler (default: the model's, euler)")
    p.add_argument("--shift", type=float, help="time-schedule shift (default: the model's, 1)")
    p.add_argument("--batch-size", type=int, help="prompts sampled together (default: the model's, 8)")
    p.add_argument(
        "--format", default="glb", help=f"comma-separated outputs: {','.join(FORMATS)} (default glb)"
    )
    p.add_argument("--resolution", type=int, default=128, help="marching-cubes grid resolution (default 128)")
    p.add_argument("--threshold", type=float, help="density iso-level (default: the encoder's, 10)")
    p.add_argument("--decimate", type=int, help="simplify meshes to this many faces")
    p.add_argument("--drop-floaters", action="store_true",
                   help="remove connected pieces with < 5%% of the surface area each (off for metrics)")  # fmt: skip
    p.add_argument("--texture", type=int, default=0, help="UV-textured glb/obj with a texture of this size")
    p.add_argument(
        "--preview", choices=RENDERERS, default="mesh", help="renderer of mp4/gif/png (volume: slow)"
    )
    p.add_argument("--video-size", type=int, default=256, help="turntable frame size, a multiple of 16")
    p.add_argument("--frames", type=int, default=36, help="turntable frames")
    p.add_argument("--fps", type=int, default=12, help="turntable frames per second")
    p.add_argument("--model", type=Path, help="model folder (default: the shipped triflow-small)")
    p.add_argument("--text-encoder-path", type=Path, help="local folder of a clip-l / t5 text encoder")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the TriFlow forward (faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_keep_going(p)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from the command line then the file ("" x N with --unconditional); ConfigError on none or an
    empty one."""
    if args.unconditional or args.n is not None:
        return unconditional_prompts(args)
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        try:
            lines = args.prompts_file.read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"{args.prompts_file}: cannot read prompts file ({e.strerror})") from None
        prompts += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError("no prompts given (pass them as arguments or with --prompts-file)")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ConfigError(f"prompt {i + 1} is empty; describe the object to generate")
    return [p.strip() for p in prompts]


def unconditional_prompts(args: argparse.Namespace) -> list[str]:
    if not args.unconditional or args.n is None or args.n < 1:
        raise ConfigError("unconditional sampling needs both --unconditional and --n N (N >= 1)")
    if args.prompts or args.prompts_file is not None or args.cfg is not None:
        raise ConfigError("--unconditional takes no prompts and no --cfg (there is nothing to guide towards)")
    return [""] * args.n


def seeds_for(seed: list[int], n: int) -> list[int]:
    if len(seed) == 1:
        return [seed[0] + k for k in range(n)]
    if len(seed) != n:
        raise ConfigError(f"--seed got {len(seed)} values for {n} prompts (give one, or one per prompt)")
    return list(seed)


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "object"


def export_options(args: argparse.Namespace) -> ExportOptions:
    for name in ("resolution", "frames", "fps", "video_size"):
        if getattr(args, name) < (2 if name == "resolution" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.video_size % 16:
        raise ConfigError(f"--video-size must be a multiple of 16 (H.264), got {args.video_size}")
    if args.texture < 0 or (args.decimate is not None and args.decimate < 4):
        raise ConfigError("--texture must be >= 0 and --decimate >= 4")
    return ExportOptions(
        resolution=args.resolution, threshold=args.threshold, decimate=args.decimate, texture=args.texture,
        drop_floaters=args.drop_floaters,
        preview=args.preview, video_size=args.video_size, frames=args.frames, fps=args.fps,
        views_size=args.video_size,
    )  # fmt: skip


def _warn_lines(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    caught.clear()


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    seeds = seeds_for(args.seed, len(prompts))
    formats = parse_formats(args.format)
    opts = export_options(args)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    start = time.perf_counter()
    pipe = TextTo3DPipeline.from_pretrained(
        args.model,
        resolve_device(args.device),
        text_encoder_path=args.text_encoder_path,
        autocast=torch.bfloat16 if args.bf16 else None,
    )
    over = dict(
        steps=args.steps, cfg=args.cfg, sampler=args.sampler, shift=args.shift, batch_size=args.batch_size
    )
    settings = dataclasses.replace(pipe.settings, **{k: v for k, v in over.items() if v is not None})
    print(
        f"loaded {args.model or 'the shipped model'} in {time.perf_counter() - start:.1f} s", file=sys.stderr
    )
    failed = 0
    with warnings.catch_warnings(record=True) as caught, progress_bar(args.no_progress or None) as bar:
        warnings.simplefilter("always")
        task = bar.add_task("generate", total=len(prompts), status="")
        for i in range(0, len(prompts), settings.batch_size):
            part = list(range(i, min(i + settings.batch_size, len(prompts))))
            bar.update(task, status=f"sampling {len(part)}")
            if args.unconditional:  # no cfg (checked in unconditional_prompts)
                kw = {k: v for k, v in over.items() if k != "cfg"}
                gens = pipe.unconditional(len(part), [seeds[k] for k in part], **kw)
            else:
                gens = pipe([prompts[k] for k in part], [seeds[k] for k in part], **over)
            _warn_lines(caught)
            for k, gen in zip(part, gens):
                bar.update(task, status=f"exporting {k + 1}")
                try:
                    _export_one(args.out, k, gen, formats, opts, args)
                except TriflowError as e:  # this prompt's object; the others are independent
                    failed += 1
                    report_failure(f"prompt {k + 1} {gen.prompt!r}", str(e))
                _warn_lines(caught)
                bar.advance(task)
                if failed and not args.keep_going:
                    return exit_status(failed, len(prompts) - k - 1)
    return exit_status(failed)


def _export_one(out: Path, index: int, gen, formats: list[str], opts: ExportOptions, args) -> None:
    """Export into OUT/<index>-<slug>-s<seed> atomically, log a row and print the summary line."""
    t0 = time.perf_counter()
    name = f"{index:03d}-{slug(gen.prompt) if gen.prompt else 'unconditional'}-s{gen.seed}"
    with atomic_path(out / name) as tmp:
        result = export_generated(gen, tmp, formats, opts)
        seconds = gen.seconds + time.perf_counter() - t0
        write_info(tmp, gen, result, seconds=round(seconds, 3), model=str(args.model or "triflow-small"))
    for w in result.warnings:
        print(f"warning: {name}: {w}", file=sys.stderr)
    row = {"folder": name, "prompt": gen.prompt, "seed": gen.seed, "files": result.files}
    row |= {"vertices": result.vertices, "faces": result.faces, "seconds": round(seconds, 3), **gen.settings}
    append_jsonl(out / LOG, [row])
    shown = gen.prompt if len(gen.prompt) <= 60 else gen.prompt[:57] + "..."
    print(f"{name}: {shown!r} seed {gen.seed} -> {', '.join(result.files) or 'no files'} | "
          f"{result.vertices} vertices | {seconds:.1f} s")  # fmt: skip
