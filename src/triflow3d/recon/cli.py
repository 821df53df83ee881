"""``triflow3d recon train|eval|export|reconstruct``: our own reconstructor's commands.

- ``train``: train ``lrm-small`` on rendered views (exact resume with ``--resume``).
- ``eval``: novel-view PSNR and silhouette IoU on held-out objects, one JSON line.
- ``export``: copy a run's checkpoint to a weights folder with a ``model_card.md``.
- ``reconstruct``: one object's views folder (or an asset file, rendered with the zero123pp rig on
  the fly) -> mesh.glb + a few renders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from triflow3d.errors import ConfigError
from triflow3d.utils.device import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recon_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train lrm-small on rendered views")
    t.add_argument("--data", nargs="+", action="extend", required=True, help="zero123pp views folder(s)")
    t.add_argument(
        "--supervision", nargs="+", action="extend", default=[], help="extra views folder(s), same ids"
    )
    t.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.add_argument(
        "--time-budget",
        type=float,
        help="seconds: shorten --steps so the run ends in time (ReconTrainer.run)",
    )
    t.add_argument(
        "--until",
        type=int,
        help="stop after this step (checkpointed); the schedule stays that of --steps, --resume goes on",
    )
    t.add_argument("--preset", default="lrm-small", help="reconstructor preset to train")
    t.add_argument("--model-config", help="JSON file or inline JSON of preset overrides (tiny runs, tests)")
    t.add_argument("--views-per-object", type=int, default=None, help="cap on supervision views per object")
    t.add_argument("--limit", type=int, default=None, help="use only the first N objects")
    t.add_argument("--export", help="after training, write the weights + model_card.md here")
    t.add_argument("--eval-data", help="held-out zero123pp views for the model card's quality numbers")
    t.add_argument("--eval-views", help="held-out novel views (same ids as --eval-data)")
    t.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is best on a busy machine)"
    )
    t.add_argument(
        "--device", default="cpu", help="cpu | cuda | cuda:N | auto (data and RNGs stay on the CPU)"
    )
    t.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="threads that read the views and processes that label 3D points",
    )
    from triflow3d.recon.train import ReconTrainConfig

    for f in dataclasses.fields(ReconTrainConfig):
        if f.name in ("betas",):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            t.add_argument(flag, type=type(f.default), default=f.default)

    e = sub.add_parser("eval", help="novel-view PSNR / silhouette IoU, one JSON line")
    e.add_argument("--data", required=True, help="held-out zero123pp views folder")
    e.add_argument("--views-from", help="novel views of the same ids (default: the input views)")
    _encoder_args(e)
    e.add_argument("--size", type=int, default=128)
    e.add_argument("--limit", type=int, default=None, help="first N objects only")
    e.add_argument("--max-views", type=int, default=None, help="first M target views per object")
    e.add_argument("--json", action="store_true", help="print only the JSON line")
    e.add_argument(
        "--per-object", action="store_true", help="add 'objects': [{id, psnr, iou, views}] to the JSON"
    )
    e.add_argument(
        "--greyscale",
        action="store_true",
        help="add 'greyscale': how much the output changes when the inputs lose their colour (2x time)",
    )
    e.add_argument("--no-roundtrip", dest="roundtrip", action="store_false",
                   help="skip 'roundtrip' (category / colour accuracy of the round-trip meshes)")  # fmt: skip

    x = sub.add_parser("export", help="copy a run checkpoint to a weights folder with a model card")
    x.add_argument("--run", required=True)
    x.add_argument("--export", required=True)
    x.add_argument("--eval-data")
    x.add_argument("--eval-views")

    g = sub.add_parser(
        "grow", help="a trained reconstructor grown into a larger config (no training), to a weights folder"
    )
    g.add_argument("--init", required=True, help="NAME or NAME:CHECKPOINT of the trained reconstructor")
    g.add_argument("--preset", default="lrm-small", help="reconstructor preset to grow into")
    g.add_argument("--model-config", help="JSON file or inline JSON of preset overrides")
    g.add_argument("--export", required=True, help="weights folder to write (replaced)")

    r = sub.add_parser("reconstruct", help="views folder of one object, or an asset file -> mesh + renders")
    add_reconstruct_arguments(r)


def add_reconstruct_arguments(r: argparse.ArgumentParser) -> None:
    """Arguments of ``triflow3d reconstruct`` (also reachable as ``triflow3d recon reconstruct``)."""
    r.add_argument("input", help="a folder with cameras.json + rgba_*.png (zero123pp rig) or a 3D file")
    _encoder_args(r)
    r.add_argument("--out", required=True)
    r.add_argument("--resolution", type=int, default=128, help="marching-cubes grid")
    r.add_argument(
        "--size",
        type=int,
        default=None,
        help="render size (default: the encoder's input size, 128 for lrm-small)",
    )
    r.add_argument("--renders", type=int, default=4, help="number of turntable renders")


def _encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", default="lrm-small", help="NAME or NAME:CHECKPOINT")
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-random", action="store_true", help="random weights (smoke tests only)")


def _load_encoder(args):
    from triflow3d.encoders import load_reconstructor

    device = resolve_device(args.device)
    return load_reconstructor(args.encoder, device=device, allow_random=args.allow_random)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "recon_command", None) is None:  # the top-level ``triflow3d reconstruct``
        return _reconstruct(args)
    actions = {"train": _train, "eval": _eval, "export": _export, "grow": _grow, "reconstruct": _reconstruct}
    return actions[args.recon_command](args)


# --- train / export --------------------------------------------------------------------------------
def _model_config(preset: str, override: str | None):
    from triflow3d.encoders import resolve_config

    if override is None:
        return resolve_config(preset)
    text = override if override.lstrip().startswith("{") else None
    try:
        return resolve_config(preset, json.loads(text) if text else override)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-config: invalid JSON ({e})") from None


def _train(args) -> int:
    from triflow3d.recon.data import load_recon_data
    from triflow3d.recon.train import ReconTrainConfig, ReconTrainer, check_run_config, latest_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [f.name for f in dataclasses.fields(ReconTrainConfig) if f.name != "betas"]
    cfg = ReconTrainConfig(**{n: getattr(args, n) for n in names})
    mcfg = _model_config(args.preset, args.model_config)
    device = resolve_device(args.device)
    run_dir = Path(args.out)
    if run_dir.exists() and any(run_dir.iterdir()) and not args.resume:
        raise ConfigError(f"{run_dir}: run folder is not empty; pass --resume or choose a new --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = run_dir / "train_config.json"
    if args.time_budget and args.resume and saved.is_file():  # the budget of the first run fixed the length
        cfg = dataclasses.replace(cfg, steps=min(cfg.steps, json.loads(saved.read_text())["train"]["steps"]))
    check_run_config(run_dir, cfg, mcfg, args.preset)
    data = load_recon_data(
        args.data, args.supervision, mcfg.image_size, cfg.sup_size, args.views_per_object, args.limit,
        args.workers,
    )  # fmt: skip
    if cfg.occ_weight > 0:
        from triflow3d.recon.points import load_occupancy

        data.points, data.occ = load_occupancy(data.dirs, cfg.occ_samples, cfg.seed, args.workers)
    print(
        f"objects {len(data)} (failed {len(data.failures)}), views/object {data.sup.shape[1]}",
        file=sys.stderr,
    )
    ck = latest_checkpoint(run_dir) if args.resume else None
    trainer = ReconTrainer(cfg, mcfg, data, run_dir, args.preset, resuming=ck is not None, device=device)
    if ck is not None:
        trainer.load(ck)
        print(f"resumed from {ck} at step {trainer.step}", file=sys.stderr)
    last = trainer.run(time_budget=args.time_budget, until=args.until)
    print(json.dumps({"step": trainer.step, "wall_s": round(trainer.wall, 1), **last}))
    if args.export:
        export_run(run_dir, Path(args.export), args.eval_data, args.eval_views, data_dirs=args.data)
    return 0


def _export(args) -> int:
    export_run(Path(args.run), Path(args.export), args.eval_data, args.eval_views)
    return 0


def _grow(args) -> int:
    """The preset (with overrides) warm-started from ``--init`` the way ``recon train --init`` starts, saved
    untrained: the growth rules of :func:`triflow3d.recon.train.grown_state` decide the new weights."""
    from triflow3d.encoders import save_reconstructor
    from triflow3d.encoders.loading import build_reconstructor
    from triflow3d.recon.train import warm_start

    model = build_reconstructor(_model_config(args.preset, args.model_config), encoder_id=args.preset)
    warm_start(model, args.init)
    dest = save_reconstructor(model.eval(), args.export)
    card = f"""# {args.preset}, grown from `{args.init}` (no training)

- Command: `triflow3d recon grow --init {args.init} --preset {args.preset}` (+ `--model-config` if given)
- Model config: `{json.dumps(model.config.to_dict(), sort_keys=True)}`
- Measured quality: not measured (run `triflow3d recon eval`).
"""
    (dest / "model_card.md").write_text(card)
    print(
        json.dumps({"exported": str(dest), "init": args.init, "triplane_shape": list(model.triplane_shape)})
    )
    return 0


def export_run(run_dir: Path, dest: Path, eval_data=None, eval_views=None, data_dirs=None) -> dict | None:
    """Copy the latest checkpoint's weights to ``dest`` and write ``model_card.md`` next to them."""
    from triflow3d.encoders import load_reconstructor, save_reconstructor
    from triflow3d.recon.eval import evaluate_reconstructor
    from triflow3d.recon.train import latest_checkpoint, machine_description

    ck = latest_checkpoint(run_dir)
    if ck is None:
        raise ConfigError(f"{run_dir}: no checkpoint to export")
    cfg = json.loads((run_dir / "train_config.json").read_text())
    name = cfg.get("preset", "lrm-small")
    model = load_reconstructor(name, checkpoint=ck / "model")
    save_reconstructor(model, dest)
    result = evaluate_reconstructor(model, eval_data, eval_views, roundtrip=True) if eval_data else None
    state = torch.load(ck / "state.pt", map_location="cpu", weights_only=True)
    card = model_card(run_dir, cfg, int(state["step"]), float(state["wall"]), machine_description(), result)
    (dest / "model_card.md").write_text(card)
    print(json.dumps({"exported": str(dest), "step": int(state["step"]), "eval": result}))
    return result


def model_card(run_dir: Path, cfg: dict, step: int, wall: float, machine: str, result: dict | None) -> str:
    command = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").exists() else "?"
    quality = json.dumps(result) if result else "not measured (run `triflow3d recon eval`)"
    init = cfg.get("train", {}).get("init")
    start = f"Fine-tuned from ``{init}``" if init else "Trained from scratch"
    return f"""# lrm-small: triflow3d's own small triplane reconstructor

Same class and interface as InstantMesh's NeRF reconstructor (``triflow3d.encoders``), scaled down so it
trains on a CPU. {start} by ``triflow3d recon train`` on procedural shapes
(``triflow3d shapes make``) rendered with ``triflow3d render``; no third-party weights or data.

- Training command: `{command}`
- Steps: {step}; training wall time: {wall / 3600:.2f} h; machine: {machine}
- Data: see the command's views folders (their manifests list the shape seeds / seed ranges).
- Train config: `{json.dumps(cfg.get("train", {}), sort_keys=True)}`
- Model config: `{json.dumps(cfg.get("model", {}), sort_keys=True)}`
- Measured quality (held-out, novel views, 128 px, PSNR on white / silhouette IoU): {quality}
- Targets: PSNR >= 26 dB, IoU >= 0.92.
- Licence: Apache-2.0 (same as the code).
"""


# --- eval / reconstruct ----------------------------------------------------------------------------
def _eval(args) -> int:
    from triflow3d.recon.eval import evaluate_reconstructor

    model = _load_encoder(args)
    result = evaluate_reconstructor(
        model, args.data, args.views_from, args.size, args.limit, args.max_views, args.per_object,
        args.roundtrip, grey=args.greyscale,
    )  # fmt: skip
    print(json.dumps(result))
    return 0


def _reconstruct(args) -> int:
    from PIL import Image

    from triflow3d.assets.export import save_mesh
    from triflow3d.cameras import orbit_rig

    seconds, last = {}, [time.perf_counter()]

    def lap(stage: str) -> None:  # seconds since the previous stage ended
        now = time.perf_counter()
        seconds[stage], last[0] = round(now - last[0], 3), now

    model = _load_encoder(args)
    lap("load")
    views = _input_views(Path(args.input), int(model.config.image_size))
    lap("views")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = next(model.parameters()).device
    size = args.size or int(model.config.image_size)
    with torch.inference_mode():
        images, cams_in = views.images[None].to(dev), views.input_cameras[None].to(dev)  # RGBA
        planes = model.forward_planes(images, cams_in)
        lap("encode")
        mesh = model.extract_mesh(planes, args.resolution)
        lap("mesh")
        cams = orbit_rig(args.renders).render_cameras()[None].to(dev)
        rgb = model.render(planes, cams, size, deterministic=True)["rgb"][0].cpu()  # (M, 3, S, S)
        lap("render")
    save_mesh(mesh, out / "mesh.glb")  # GLB files are Y-up: the writer converts from our z-up world
    for k, img in enumerate(rgb):
        arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(out / f"render_{k:03d}.png")
    lap("save")
    line = {"mesh": str(out / "mesh.glb"), "vertices": len(mesh.vertices), "renders": len(rgb), "size": size}
    print(json.dumps(line | {"seconds": seconds}))
    return 0


def _input_views(src: Path, size: int):
    """A zero123pp views folder, or an asset file rendered on that rig -> its ObjectViews at ``size``."""
    from triflow3d.data.views import is_zero123pp, load_object

    with tempfile.TemporaryDirectory() as tmp:
        folder = src if (src / "cameras.json").exists() else _render_asset(src, Path(tmp), size)
        views = load_object(folder, size)
    if not is_zero123pp(views.c2w):
        raise ConfigError(f"{src}: views are not the zero123pp rig (render with --rig zero123pp)")
    return views


def _render_asset(path: Path, tmp: Path, size: int) -> Path:
    from triflow3d.render import make_renderer
    from triflow3d.render.views import Source, ViewsConfig, render_source

    if not path.is_file():
        raise ConfigError(f"{path}: neither a views folder (with cameras.json) nor an asset file")
    render_source(make_renderer("auto"), Source("asset", path), ViewsConfig(rig="zero123pp", size=size), tmp)
    return tmp / "asset"
