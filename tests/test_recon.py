"""Our reconstructor's training, exact resume, evaluation JSON and export (tiny configs, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from triflow3d.cameras import zero123pp_rig
from triflow3d.recon.data import camera_frame_dirs, load_recon_data, sample_rays
from triflow3d.recon.eval import psnr, silhouette_iou
from triflow3d.recon.synthetic import random_spheres, write_views_folder
from triflow3d.recon.train import DataCursor, ReconTrainConfig, recon_lr_at


def _needs_renderer():
    pytest.importorskip("triflow3d.encoders")
    pytest.importorskip("triflow3d.triplane.field")
    pytest.importorskip("triflow3d.triplane.volume")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recon")
    write_views_folder(root / "inputs", [0, 1, 2], "zero123pp", 16)
    write_views_folder(root / "sup", [0, 1, 2], "random:4", 16)
    return root / "inputs", root / "sup"


def test_lr_schedule():
    cfg = ReconTrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert recon_lr_at(0, cfg) == pytest.approx(1e-4) and recon_lr_at(9, cfg) == pytest.approx(1e-3)
    assert recon_lr_at(10, cfg) == pytest.approx(1e-3) and recon_lr_at(100, cfg) == pytest.approx(1e-4)
    assert all(recon_lr_at(s, cfg) >= recon_lr_at(s + 1, cfg) for s in range(10, 100))


def test_cursor_epochs_and_restart():
    c = DataCursor(seed=3)
    seen = torch.cat([c.next(5, 2) for _ in range(5)])  # 10 draws = 2 epochs
    assert sorted(seen[:5].tolist()) == list(range(5)) and sorted(seen[5:].tolist()) == list(range(5))
    c2 = DataCursor(seed=3)
    c2.next(5, 2)
    c3 = DataCursor(seed=3, epoch=c2.epoch, pos=c2.pos)
    assert torch.equal(c2.next(5, 3), c3.next(5, 3))


def test_sample_rays_hit_the_spheres(folders):
    inputs, sup = folders
    data = load_recon_data([inputs], [sup], 16, 16)
    assert data.inputs.shape == (3, 6, 4, 16, 16) and data.sup.shape == (3, 10, 4, 16, 16)
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([2, 0])
    rays = sample_rays(data, idx, 256, 0.5, g)
    assert rays.origins.shape == (2, 256, 3) and torch.allclose(rays.dirs.norm(dim=-1), torch.ones(2, 256))
    assert 0.35 < rays.alpha.mean() < 0.9  # about half the rays from covered pixels
    for b, obj in enumerate(idx.tolist()):
        spheres = random_spheres(obj)
        o, d = rays.origins[b], rays.dirs[b]
        hits = torch.zeros(256, dtype=torch.bool)
        for s in spheres:  # ray-sphere test in closed form
            oc = o - torch.tensor(s["center"])
            bb = (oc * d).sum(-1)
            hits |= bb * bb - ((oc * oc).sum(-1) - s["radius"] ** 2) > 0
        covered = rays.alpha[b, :, 0] > 0.5
        assert (covered == hits).float().mean() > 0.97  # edge pixels may differ by resampling only
    assert torch.all(rays.rgb[rays.alpha[..., 0] == 0] == 1.0)  # empty pixels are white


def test_edge_rays_sit_on_the_outline(folders):
    from triflow3d.recon.data import pixel_weights, silhouette_edges

    alpha = torch.zeros(1, 8, 8)
    alpha[0, 2:6, 2:6] = 1.0
    edges = silhouette_edges(alpha)
    assert edges[0, 3:5, 3:5].sum() == 0 and edges[0, 0].sum() == 0  # deep inside / far outside
    assert edges[0, 1, 2] == 1 and edges[0, 2, 2] == 1  # one pixel either side of the outline
    w = pixel_weights(alpha[None], 0.25, 0.5)  # (1, 64)
    assert torch.allclose(w.sum(), torch.tensor(1.0))
    on_edge = edges.flatten() > 0
    assert torch.allclose(w[0, on_edge].sum(), torch.tensor(0.5 + 0.25 * 12 / 16 + 0.25 * 32 / 64))
    assert torch.equal(pixel_weights(alpha[None], 0.5), pixel_weights(alpha[None], 0.5, 0.0))
    data = load_recon_data(*([f] for f in folders), 16, 16)
    rays = sample_rays(data, torch.tensor([0, 1]), 512, 0.0, torch.Generator().manual_seed(0), 1.0)
    assert 0.1 < rays.alpha.mean() < 0.9  # the band holds covered and uncovered pixels
    with pytest.raises(Exception, match="edge_fraction"):
        ReconTrainConfig(fg_fraction=0.6, edge_fraction=0.5)


def test_covered_colour_loss_ignores_opacity():
    """The loss on white can be met by a faint dark render; the covered-ray colour loss cannot."""
    from triflow3d.recon.train import covered_colour_loss

    target, alpha = torch.tensor([[[0.0, 0.8, 0.0]]]), torch.ones(1, 1, 1)  # a green, fully covered pixel
    w = torch.full((1, 1, 1), 0.5)
    faint_green = 0.5 * torch.tensor([0.0, 0.8, 0.0]) + (1 - w)  # right hue, half opaque, on white
    assert covered_colour_loss(faint_green, w, target, alpha) < 1e-12
    grey = torch.full((1, 1, 3), 0.6)  # on white this is closer to the target than faint_green ...
    assert covered_colour_loss(grey, w, target, alpha) > 0.1  # ... but its own colour is far from green
    none = covered_colour_loss(grey, w, target, torch.zeros(1, 1, 1))  # uncovered target: no term
    assert none == 0


def test_camera_frame_dirs_centre_looks_forward():
    K = zero123pp_rig().intrinsics[0]
    d = camera_frame_dirs(K, 2)  # 2x2 pixels around the optical axis
    assert torch.allclose(d[:, 2], torch.full((4,), d[0, 2].item())) and (d[:, 2] < 0).all()
    assert d[0, 0] < 0 < d[1, 0] and d[0, 1] > 0 > d[2, 1]  # row 0 is up, column 0 is left


def test_error_split_by_coverage():
    from triflow3d.recon.eval import error_split

    target = torch.ones(1, 3, 2, 2)  # white everywhere
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])  # top row covered in the target
    alpha = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # left column covered in the render
    rgb = torch.full((1, 3, 2, 2), 0.5)  # error 0.25 per channel, 0.75 per pixel
    assert error_split(rgb, target, alpha, mask).tolist() == [0.75, 1.5, 0.75]  # both / one / neither


def test_metrics():
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0, abs=1e-4)
    m = torch.zeros(2, 1, 4, 4)
    m[0, :, :2] = 1
    al = torch.zeros(2, 1, 4, 4)
    al[0, :, :1] = 0.9
    assert silhouette_iou(al, m).tolist() == [0.5, 1.0]


def _train_cli(folders, tiny: dict, out: Path, steps: int, resume: bool = False, extra=()) -> dict:
    from triflow3d.cli import main

    inputs, sup = folders
    argv = ["recon", "train", "--data", str(inputs), "--supervision", str(sup), "--out", str(out),
            "--model-config", json.dumps(tiny), "--steps", str(steps), "--batch", "2", "--rays", "64",
            "--sup-size", "16", "--warmup", "2", "--ckpt-every", "2", "--log-every", "1", *extra]  # fmt: skip
    assert main(argv + (["--resume"] if resume else [])) == 0
    return {k: v for k, v in _weights(out).items()}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from triflow3d.recon.train import latest_checkpoint

    return load_file(latest_checkpoint(run) / "model" / "model.safetensors")


def test_resume_is_exact(folders, tmp_path, tiny_recon):
    _needs_renderer()
    from safetensors.torch import load_file

    straight = _train_cli(folders, tiny_recon, tmp_path / "a", 4)
    _train_cli(folders, tiny_recon, tmp_path / "b", 2)
    resumed = _train_cli(folders, tiny_recon, tmp_path / "b", 4, resume=True)
    assert straight.keys() == resumed.keys()
    worst = max((straight[k] - resumed[k]).abs().max().item() for k in straight)
    assert worst <= 1e-6
    mid = load_file(tmp_path / "a" / "checkpoints" / "step_0000002" / "model" / "model.safetensors")
    assert max((straight[k] - mid[k]).abs().max().item() for k in straight) > 1e-5  # it did train
    log = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in log)
    assert (tmp_path / "b" / "tb").is_dir() and (tmp_path / "b" / "train_config.json").exists()
    # --until 3 stops a 4-step run after step 3 (a checkpoint, the 4-step schedule); --resume finishes it
    _train_cli(folders, tiny_recon, tmp_path / "c", 4, extra=["--until", "3"])
    assert json.loads((tmp_path / "c" / "latest.json").read_text())["dir"] == "step_0000003"
    finished = _train_cli(folders, tiny_recon, tmp_path / "c", 4, resume=True)
    assert max((straight[k] - finished[k]).abs().max().item() for k in straight) <= 1e-6


def test_fresh_decoder_learns_alone_first(folders, tmp_path, tiny_recon):
    """--init X --fresh-decoder --decoder-only-steps 2: the decoder starts fresh, and for two steps only it
    moves (the rest is X's, untouched); afterwards everything trains."""
    _needs_renderer()
    from triflow3d.recon.train import DECODER_PREFIX, body_lr_scale

    start = tmp_path / "start"
    _train_cli(folders, tiny_recon, tmp_path / "x", 2)
    from triflow3d.cli import main

    assert main(["recon", "export", "--run", str(tmp_path / "x"), "--export", str(start)]) == 0
    x = {k: v for k, v in _weights(tmp_path / "x").items()}
    extra = ["--init", f"lrm-small:{start}", "--fresh-decoder", "--decoder-only-steps", "2"]
    held = _train_cli(folders, tiny_recon, tmp_path / "y", 2, extra=extra)
    assert all(torch.equal(held[k], x[k]) for k in x if not k.startswith(DECODER_PREFIX))
    assert all(not torch.equal(held[k], x[k]) for k in x if k.startswith(DECODER_PREFIX))
    free = _train_cli(folders, tiny_recon, tmp_path / "y", 4, resume=True, extra=extra)
    assert not torch.equal(free["synthesizer.decoder.net.0.weight"], held["synthesizer.decoder.net.0.weight"])
    moved = [k for k in x if not k.startswith(DECODER_PREFIX) and not torch.equal(free[k], held[k])]
    assert moved  # the body trains after the decoder-only steps
    cfg = ReconTrainConfig(decoder_only_steps=2, warmup=4)
    assert [body_lr_scale(s, cfg) for s in range(7)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_parallel_loading_gives_the_same_data(folders):
    inputs, sup = folders
    one = load_recon_data([inputs], [sup], 16, 16)
    three = load_recon_data([inputs], [sup], 16, 16, workers=3)
    assert one.ids == three.ids == ["sphere-00000", "sphere-00001", "sphere-00002"]
    for name in ("inputs", "input_cameras", "sup", "sup_c2w", "sup_K"):
        assert torch.equal(getattr(one, name), getattr(three, name)), name


def test_train_device_flag(folders, tmp_path, capsys):
    """``--device``: a CUDA name on a machine without CUDA is a clear error before anything is written."""
    _needs_renderer()
    from triflow3d.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    inputs, sup = folders
    argv = ["recon", "train", "--data", str(inputs), "--out", str(tmp_path / "gpu"), "--device", "cuda"]
    assert main(argv) == 1
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "gpu").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_follows_the_cpu_run(folders, tmp_path, tiny_recon):
    """The host loop: same rays and jitter (CPU generators) on both devices, so the weights after 3 steps
    agree closely, and a CUDA run resumed on the CPU continues."""
    _needs_renderer()
    cpu = _train_cli(folders, tiny_recon, tmp_path / "cpu", 3)
    gpu = _train_cli(folders, tiny_recon, tmp_path / "gpu", 3, extra=["--device", "cuda", "--loop", "host"])
    assert max((cpu[k] - gpu[k]).abs().max().item() for k in cpu) < 1e-3
    _train_cli(folders, tiny_recon, tmp_path / "gpu", 4, resume=True, extra=["--loop", "host"])
    assert (tmp_path / "gpu" / "checkpoints" / "step_0000004").is_dir()


def test_samples_and_render_path_reach_the_renderer(folders, monkeypatch, tiny_recon):
    """``--samples`` / ``--no-fast-render`` set the options the training rays are rendered with."""
    _needs_renderer()
    import triflow3d.triplane.volume as volume
    from triflow3d.encoders import build_reconstructor, resolve_config
    from triflow3d.recon.train import loss_on_batch

    inputs, sup = folders
    data = load_recon_data([inputs], [sup], 16, 16)
    model = build_reconstructor(resolve_config("lrm-small", tiny_recon), encoder_id="lrm-small")
    seen = []
    real = volume.render_rays
    monkeypatch.setattr(volume, "render_rays", lambda *a, **k: seen.append(a[4]) or real(*a, **k))
    g = torch.Generator().manual_seed(0)
    for cfg in (
        ReconTrainConfig(rays=16, sup_size=16),
        ReconTrainConfig(rays=16, sup_size=16, samples=12, fast_render=False),
    ):
        loss_on_batch(model, data, torch.tensor([0, 1]), cfg, g)["loss"].backward()
    own, dense = seen
    assert (own.samples_coarse, own.samples_importance, own.fast) == (4, 4, True)  # tiny_recon: 8 per ray
    assert (dense.samples_coarse, dense.samples_importance, dense.fast) == (6, 6, False)


def test_a_run_saved_before_a_new_setting_existed_resumes(folders, tmp_path, tiny_recon):
    """A train_config.json without a field added later resumes with that field's default."""
    _needs_renderer()
    _train_cli(folders, tiny_recon, tmp_path / "old", 1)
    path = tmp_path / "old" / "train_config.json"
    saved = json.loads(path.read_text())
    del saved["train"]["fast_render"]
    path.write_text(json.dumps(saved))
    _train_cli(folders, tiny_recon, tmp_path / "old", 2, resume=True)
    assert (tmp_path / "old" / "checkpoints" / "step_0000002").is_dir()


def test_resume_refuses_changed_settings(folders, tmp_path, tiny_recon):
    _needs_renderer()
    from triflow3d.cli import main

    _train_cli(folders, tiny_recon, tmp_path / "r", 1)
    inputs, _ = folders
    argv = ["recon", "train", "--data", str(inputs), "--out", str(tmp_path / "r"), "--model-config",
            json.dumps(tiny_recon), "--steps", "2", "--rays", "32", "--resume"]  # fmt: skip
    assert main(argv) == 1  # ConfigError: rays / batch differ


def test_training_reduces_loss(folders, tmp_path, tiny_recon):
    _needs_renderer()
    _train_cli(folders, tiny_recon, tmp_path / "t", 24, extra=["--lr", "3e-3", "--ckpt-every", "24"])
    log = [json.loads(x) for x in (tmp_path / "t" / "log.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in log[:3]) / 3
    last = sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.8 * first


def test_eval_json_and_export(folders, tmp_path, capsys, tiny_recon):
    _needs_renderer()
    from triflow3d.cli import main

    inputs, sup = folders
    _train_cli(folders, tiny_recon, tmp_path / "run", 2)
    dest = tmp_path / "weights"
    assert main(["recon", "export", "--run", str(tmp_path / "run"), "--export", str(dest)]) == 0
    assert (dest / "model.safetensors").exists() and "Training command" in (
        dest / "model_card.md"
    ).read_text()
    capsys.readouterr()
    argv = ["recon", "eval", "--data", str(inputs), "--views-from", str(sup), "--encoder", f"lrm-small:{dest}",
            "--size", "8", "--max-views", "2", "--json", "--per-object", "--greyscale"]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["greyscale"]) == {"planes_change", "colour_ratio"}
    assert res["greyscale"]["planes_change"] >= 0 and res["greyscale"]["colour_ratio"] >= 0
    assert {"psnr", "iou", "n", "encoder", "size", "novel"} <= set(res)
    assert res["n"] == 3 and res["views"] == 6 and res["novel"] and res["encoder"] == "lrm-small"
    assert 0.0 <= res["iou"] <= 1.0 and 0.0 < res["psnr"] < 60.0
    assert set(res["error_share"]) == {"colour", "silhouette", "background"}
    assert math.isclose(sum(res["error_share"].values()), 1.0, abs_tol=1e-3)
    objs = res["objects"]  # --per-object: one row per object, averaging to the overall numbers
    assert [o["id"] for o in objs] == ["sphere-00000", "sphere-00001", "sphere-00002"]
    assert all(o["views"] == 2 for o in objs) and min(o["psnr"] for o in objs) == res["psnr_min_object"]
    assert math.isclose(sum(o["psnr"] for o in objs) / 3, res["psnr"], abs_tol=1e-3)
    assert math.isclose(sum(o["iou"] for o in objs) / 3, res["iou"], abs_tol=1e-4)
    rt = res["roundtrip"]  # triflow3d eval's scoring of the round-trip meshes (spheres: no attributes)
    assert rt["n"] == 3 and rt["category_accuracy"] is None and rt["colour_accuracy"] is None
    assert {"failure_rate", "floater_share", "fragmented_share", "components_median"} <= set(rt)
    assert "white" not in res  # no attributes, no white objects

    # a manifest naming one object white: 'white' is that object's IoU
    import shutil

    from triflow3d.encoders import load_reconstructor
    from triflow3d.recon.eval import evaluate_reconstructor

    marked = shutil.copytree(inputs, tmp_path / "marked")
    rows = [json.loads(x) for x in (marked / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        r["attributes"] = {"colour": "white" if r["id"] == "sphere-00001" else "red"}
    (marked / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = load_reconstructor("lrm-small", checkpoint=dest)
    got = evaluate_reconstructor(model, marked, sup, 8, max_views=2)
    assert got["white"] == {"n": 1, "iou": objs[1]["iou"]}


def test_greyscale_keeps_alpha_and_luma():
    from triflow3d.recon.eval import greyscale

    rgba = torch.tensor([1.0, 0.0, 0.0, 0.5]).reshape(1, 4, 1, 1).expand(2, 4, 3, 3)
    g = greyscale(rgba)
    assert g.shape == rgba.shape and torch.allclose(g[:, :3], torch.full((2, 3, 3, 3), 0.299))
    assert torch.equal(g[:, 3], rgba[:, 3])
    white = torch.ones(1, 3, 2, 2)
    assert torch.allclose(greyscale(white), white)  # white stays white: the luma weights sum to 1


def test_greyscale_sensitivity_of_a_colour_blind_and_a_colour_copying_model():
    from triflow3d.recon.eval import greyscale_summary

    # per object: planes change, summed render change, summed target chroma
    sums = torch.tensor([[0.1, 0.0, 4.0], [0.3, 1.0, 4.0]], dtype=torch.float64)
    assert greyscale_summary(sums) == {"planes_change": 0.2, "colour_ratio": 0.125}


def test_reconstruct_views_folder(folders, tmp_path, tiny_recon, capsys):
    _needs_renderer()
    from triflow3d.cli import main

    inputs, _ = folders
    _train_cli(folders, tiny_recon, tmp_path / "run", 1)
    dest = tmp_path / "weights"
    assert main(["recon", "export", "--run", str(tmp_path / "run"), "--export", str(dest)]) == 0
    out = tmp_path / "rec"
    argv = ["recon", "reconstruct", str(inputs / "sphere-00001"), "--encoder", f"lrm-small:{dest}",
            "--out", str(out), "--resolution", "16", "--renders", "2"]  # fmt: skip
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["size"] == tiny_recon["image_size"]  # renders default to the encoder's input size
    assert list(line["seconds"]) == ["load", "views", "encode", "mesh", "render", "save"]
    assert (out / "mesh.glb").exists() and sorted(p.name for p in out.glob("render_*.png")) == [
        "render_000.png",
        "render_001.png",
    ]


def test_cli_help():
    from triflow3d.cli import main

    for cmd in (["recon", "train", "--help"], ["recon", "eval", "--help"], ["encode", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0


# --- 3D supervision ---------------------------------------------------------------------------------
def test_occupancy_logit_crosses_zero_at_the_mesh_threshold():
    import torch.nn.functional as F

    from triflow3d import conventions as cv
    from triflow3d.recon.points import raw_at_threshold

    raw = torch.tensor(raw_at_threshold())
    torch.testing.assert_close(F.softplus(raw + cv.DENSITY_SHIFT), torch.tensor(cv.MESH_THRESHOLD))


def test_occupancy_labels_of_a_sphere_and_unknown_labels_are_ignored(tmp_path):
    import json

    import numpy as np
    import trimesh

    from triflow3d.assets import MeshPart
    from triflow3d.assets.export import save_glb
    from triflow3d.assets.types import Asset
    from triflow3d.recon.points import object_occupancy, occupancy_loss

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    save_glb(Asset((MeshPart(sphere.vertices.astype("float32"), sphere.faces),)), tmp_path / "s.glb")
    obj = tmp_path / "views" / "s"
    obj.mkdir(parents=True)
    shift = np.eye(4)
    shift[:3, 3] = [0.2, 0.0, 0.0]  # the render stage's normalisation is applied to the labels
    (obj / "cameras.json").write_text(
        json.dumps({"source": str(tmp_path / "s.glb"), "normalization_transform": shift.tolist()})
    )
    pts, inside = object_occupancy(obj, 2000, seed=0)
    r = np.linalg.norm(pts - [0.2, 0.0, 0.0], axis=1)
    clear = np.abs(r - 0.5) > 0.02  # away from the faceted surface
    assert (inside[clear] == (r[clear] < 0.5)).all() and 0.1 < inside.mean() < 0.9

    from triflow3d.recon.points import load_occupancy

    (tmp_path / "views" / "broken").mkdir()  # no cameras.json: labels unknown (-1), kept in order
    with pytest.warns(UserWarning, match="1 of 3 objects"):
        serial = load_occupancy([obj, tmp_path / "views" / "broken", obj], 500, seed=3)
    with pytest.warns(UserWarning, match="1 of 3 objects"):
        parallel = load_occupancy([obj, tmp_path / "views" / "broken", obj], 500, seed=3, workers=3)
    near = ((serial[0] - torch.tensor([0.2, 0.0, 0.0])).norm(dim=-1) - 0.5).abs() < 0.02  # ray-test noise
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1][~near], parallel[1][~near])
    assert (serial[1][1] == -1).all() and (serial[1][0] >= 0).all()

    raw = torch.zeros(1, 4, 1)
    known = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    unknown = torch.full((1, 4), -1.0)
    both = torch.cat([known, unknown], 1)
    torch.testing.assert_close(occupancy_loss(torch.zeros(1, 8, 1), both), occupancy_loss(raw, known))


# --- the CPU results, pinned -------------------------------------------------------------------------------
# Computed with `recon train` as it was before the device-resident path (git 408e13c, "lrm-small v3
# groundwork"), on this CPU: logged loss and gradient norm per step (6 digits) and three numbers of the
# final weights (sum, sum of squares and a dot product with sin(0, 1, 2, ...), float64, keys in order).
REFERENCE_RUNS = {
    "fast": {"extra": ["--colour-weight", "0.5", "--edge-fraction", "0.2"],
             "loss": [0.440822, 0.380718, 0.415843, 0.419299], "grad_norm": [0.125689, 0.130453, 0.108325, 0.13101],
             "model": [234.07761380560333, 628.8512791168655, 7.847731417383696]},
    "dense": {"extra": ["--no-fast-render", "--samples", "8"],
              "loss": [0.355472, 0.292898, 0.320876, 0.306698], "grad_norm": [0.162426, 0.133447, 0.143596, 0.139479],
              "model": [233.1954242054125, 629.0558094272194, 7.960390494233145]},
}  # fmt: skip


@pytest.mark.parametrize("path", ["fast", "dense"])
def test_cpu_results_match_the_reference(folders, tmp_path, path, tiny_recon):
    _needs_renderer()
    ref = REFERENCE_RUNS[path]
    weights = _train_cli(folders, tiny_recon, tmp_path / path, 4, extra=ref["extra"])
    log = [json.loads(x) for x in (tmp_path / path / "log.jsonl").read_text().splitlines()]
    flat = torch.cat([weights[k].double().flatten() for k in sorted(weights)])
    sin = torch.sin(torch.arange(flat.numel(), dtype=torch.float64))
    got = [float(flat.sum()), float(flat.square().sum()), float(flat @ sin)]
    assert [r["loss"] for r in log] == pytest.approx(ref["loss"], rel=2e-5, abs=2e-6)
    assert [r["grad_norm"] for r in log] == pytest.approx(ref["grad_norm"], rel=2e-5, abs=2e-6)
    assert got == pytest.approx(ref["model"], rel=2e-6)


def test_resident_loop_resumes_exactly_and_learns(folders, tmp_path, tiny_recon):
    """``--loop resident`` (the CUDA default) forced on the CPU: data on the device, a reseeded device
    generator per step, numbers read only on logging steps."""
    _needs_renderer()
    extra = ["--loop", "resident", "--log-every", "2", "--no-fast-render", "--edge-fraction", "0.2"]
    straight = _train_cli(folders, tiny_recon, tmp_path / "a", 4, extra=extra)
    _train_cli(folders, tiny_recon, tmp_path / "b", 2, extra=extra)
    resumed = _train_cli(folders, tiny_recon, tmp_path / "b", 4, resume=True, extra=extra)
    assert max((straight[k] - resumed[k]).abs().max().item() for k in straight) == 0
    log = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and all(math.isfinite(r["loss"]) for r in log)
    _train_cli(
        folders,
        tiny_recon,
        tmp_path / "t",
        24,
        extra=["--lr", "3e-3", "--ckpt-every", "24", "--loop", "resident"],
    )
    log = [json.loads(x) for x in (tmp_path / "t" / "log.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in log[-5:]) / 5 < 0.8 * sum(r["loss"] for r in log[:3]) / 3


def test_time_budget_shortens_a_recon_run(folders, tmp_path, monkeypatch, tiny_recon):
    import itertools
    import types

    from triflow3d.utils import budget

    _needs_renderer()
    ticks = itertools.count()  # TimeBudget's clock: 0.1 s per reading, whatever the machine's load
    monkeypatch.setattr(budget, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) * 0.1))
    _train_cli(
        folders, tiny_recon, tmp_path / "r", 100_000, extra=["--time-budget", "2", "--ckpt-every", "100000"]
    )
    saved = json.loads((tmp_path / "r" / "train_config.json").read_text())["train"]["steps"]
    last = json.loads((tmp_path / "r" / "latest.json").read_text())["step"]
    # readings: start 0, after step 1 0.1, after step 2 (the probe: the warm-up) 0.3 -> 0.2 s a step, 1.7 s left
    assert last == saved == 2 + 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resident_loop_on_cuda_resumes(folders, tmp_path, tiny_recon):
    """On CUDA `auto` is the resident loop; a resumed run follows a straight one (up to the nondeterminism
    of CUDA's atomic adds in grid_sample's backward)."""
    _needs_renderer()
    extra = ["--device", "cuda", "--no-fast-render"]
    straight = _train_cli(folders, tiny_recon, tmp_path / "a", 4, extra=extra)
    _train_cli(folders, tiny_recon, tmp_path / "b", 2, extra=extra)
    resumed = _train_cli(folders, tiny_recon, tmp_path / "b", 4, resume=True, extra=extra)
    assert max((straight[k] - resumed[k]).abs().max().item() for k in straight) < 1e-4
    assert json.loads((tmp_path / "a" / "train_config.json").read_text())["train"]["loop"] == "auto"


def test_colour_metric_whitens_the_training_colours():
    """M Sigma M^T = (tr Sigma / 3) I for the covered pixels' colours, uncovered pixels do not count, and the
    weighed error equals the plain one without a metric."""
    from triflow3d.recon.data import ReconData
    from triflow3d.recon.train import colour_error, colour_metric

    g = torch.Generator().manual_seed(0)
    grey, hue = torch.rand(6, 2, 1, 8, 8, generator=g), torch.rand(6, 2, 1, 8, 8, generator=g)
    rgb = torch.cat(
        [
            0.8 * grey + 0.1 * hue,
            0.8 * grey - 0.1 * hue + 0.1,
            0.3 * torch.rand(grey.shape, generator=g) + 0.2,
        ],
        2,
    )
    alpha = (torch.rand(6, 2, 1, 8, 8, generator=g) > 0.3).float()
    sup = (torch.cat([torch.where(alpha > 0, rgb, torch.ones_like(rgb) * 0.3), alpha], 2) * 255).round()
    data = ReconData([], None, None, sup.to(torch.uint8), None, None, [])
    m = colour_metric(data, stride=1).double()
    px = sup.permute(0, 1, 3, 4, 2).reshape(-1, 4).double() / 255
    cov = torch.cov(px[px[:, 3] > 0.99, :3].T)
    torch.testing.assert_close(
        m @ cov @ m.T, torch.eye(3, dtype=torch.double) * cov.trace() / 3, atol=1e-6, rtol=0
    )
    e = torch.rand(5, 3, generator=g)
    assert torch.equal(colour_error(e, torch.zeros(5, 3), None), e.square())


def test_cli_trains_with_whitened_colours(folders, tmp_path, tiny_recon):
    _needs_renderer()
    out = tmp_path / "w"
    w = _train_cli(folders, tiny_recon, out, 2, extra=["--colour-whiten", "--colour-weight", "1.0"])
    assert all(torch.isfinite(v).all() for v in w.values())
    assert json.loads((out / "train_config.json").read_text())["train"]["colour_whiten"] is True
    _train_cli(folders, tiny_recon, tmp_path / "p", 2, extra=["--colour-weight", "1.0"])
    first = [json.loads((run / "log.jsonl").read_text().splitlines()[0]) for run in (out, tmp_path / "p")]
    assert first[0]["rgb_mse"] == first[1]["rgb_mse"]  # same model, same rays at step 1: plain MSE logged
    assert first[0]["loss"] != first[1]["loss"]  # but the weighed colour errors are what is optimised


def test_cli_grows_a_trained_model_into_colour_planes(folders, tmp_path, tiny_recon):
    """``recon grow`` writes the preset warm-started from a trained run, untrained: same learned channels and
    density, three column-colour channels more (the shipped lrm-small v4 was made this way from v3)."""
    _needs_renderer()
    from triflow3d.cli import main
    from triflow3d.encoders import load_reconstructor
    from triflow3d.recon.data import load_recon_data
    from triflow3d.recon.train import latest_checkpoint

    tiny = tiny_recon | dict(plane_lift_depth=4)
    _train_cli(folders, tiny, tmp_path / "run", 2)
    spec = f"lrm-small:{latest_checkpoint(tmp_path / 'run') / 'model'}"
    grown_cfg = tiny | dict(colour_planes=True, triplane_dim=7)
    argv = ["recon", "grow", "--init", spec, "--model-config", json.dumps(grown_cfg)]
    argv += ["--export", str(tmp_path / "g")]
    assert main(argv) == 0
    plain, grown = load_reconstructor(spec), load_reconstructor(f"lrm-small:{tmp_path / 'g'}")
    assert grown.triplane_shape == (3, 7, 8, 8) and (tmp_path / "g" / "model_card.md").is_file()
    data = load_recon_data([str(folders[0])], [], 16, 16)
    images, cams = data.inputs[:1].float() / 255.0, data.input_cameras[:1]
    pts = torch.rand(1, 200, 3) * 1.6 - 0.8
    with torch.no_grad():
        a, b = plain.forward_planes(images, cams), grown.forward_planes(images, cams)
        assert torch.equal(a, b[:, :, :4])
        torch.testing.assert_close(plain.query(a, pts)["sigma"], grown.query(b, pts)["sigma"])
