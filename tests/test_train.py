"""The TriFlow trainer: loss goes down, exact resume, checkpoints, bad inputs, NaN steps, CFG dropout, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from triflow3d import cameras as cam
from triflow3d.conventions import CONVENTIONS_VERSION
from triflow3d.data import latents as lt
from triflow3d.errors import ConfigError
from triflow3d.models.model_folder import load_model
from triflow3d.train import checkpoint as ck
from triflow3d.train.batches import BatchPlan
from triflow3d.train.config import PRESETS
from triflow3d.train.draws import draw
from triflow3d.train.optim import lr_at
from triflow3d.train.text import TextTable
from triflow3d.train.trainer import Trainer, TrainingDivergedError

SHAPE = (3, 8, 16, 16)  # the tiny TriFlow preset's triplanes
CATEGORIES = ("chair", "car")


def make_latents(
    root: Path,
    n: int = 8,
    shape: tuple[int, ...] = SHAPE,
    encoder: str = "lrm-small",
    views: Path | None = None,
    nan: bool = False,
) -> Path:
    """A latents folder in the LatentDataset format: per-category patterns + noise, captions, weights."""
    g = torch.Generator().manual_seed(1)
    lt.ensure_encoder_json(root, {"encoder": encoder, "config_hash": "test", "dtype": "float32",
                                  "conventions_version": CONVENTIONS_VERSION, "triplane_shape": list(shape)})  # fmt: skip
    base = torch.randn(len(CATEGORIES), *shape, generator=g) * 2 + 1
    cats = [CATEGORIES[i % len(CATEGORIES)] for i in range(n)]
    tri = torch.stack([base[CATEGORIES.index(c)] + 0.1 * torch.randn(shape, generator=g) for c in cats])
    if nan:
        tri[:] = float("nan")
    ids = [f"obj{i:02d}" for i in range(n)]
    name = lt.shard_name(0, 0)
    sha = lt.write_shard(root / name, tri, ids, {"encoder": encoder})
    w = 0.1 + 0.9 * (torch.rand(n, 3, shape[2], shape[3], generator=g) > 0.5).float()
    save_file({"weights": w}, str(root / name.replace(".safetensors", ".weights.safetensors")))
    rows = [{"id": i, "shard": name, "row": k, "shard_sha256": sha, "caption": f"a red {c}",
             "attributes": {"category": c}, "views_dir": str(views / i) if views else ""}
            for k, (i, c) in enumerate(zip(ids, cats))]  # fmt: skip
    lt.append_rows(lt.rank_index_path(root, 0), rows)
    lt.merge_index(root)
    return root


def make_views(root: Path, ids: list[str], size: int = 32, n_views: int = 2) -> Path:
    rig = cam.zero123pp_rig()
    for k, i in enumerate(ids):
        d = root / i
        d.mkdir(parents=True)
        meta = {
            "conventions_version": CONVENTIONS_VERSION,
            "render_cameras": rig.render_cameras()[:n_views].tolist(),
        }
        (d / "cameras.json").write_text(json.dumps(meta))
        for v in range(n_views):
            rgba = np.full((size, size, 4), 255, np.uint8)
            rgba[8:24, 8:24, :3] = (40 * k) % 255, 100, 200
            PIL.Image.fromarray(rgba).save(d / f"rgba_{v:03d}.png")
    return root


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    return make_latents(tmp_path_factory.mktemp("latents"))


def tiny(latents: Path, out: Path, **kw) -> object:
    return PRESETS["tiny"].replace(latents=str(latents), out=str(out), device="cpu", **kw)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# --- behaviour -------------------------------------------------------------------------------------------
@torch.no_grad()
def held_out_loss(trainer: Trainer) -> float:
    """Flow loss of the EMA model on all objects at fixed (t, eps) draws (no CFG dropout)."""
    batch = [trainer.dataset[i] for i in range(len(trainer.dataset))]
    x0 = trainer.normalizer.normalize(torch.stack([b["triplane"] for b in batch]))
    d = draw(trainer.cfg.replace(cfg_dropout=0.0), 10**6, list(range(len(batch))), tuple(x0.shape[1:]))
    text = trainer.text([b["caption"] for b in batch], torch.device("cpu"))
    v_hat = trainer.ema(d.t.neg().add(1).view(-1, 1, 1, 1, 1) * x0 + d.t.view(-1, 1, 1, 1, 1) * d.eps, d.t,
                        **text.as_kwargs())  # fmt: skip
    return float((v_hat - (d.eps - x0)).pow(2).mean())


def test_loss_decreases(latents, tmp_path):
    cfg = tiny(latents, tmp_path, steps=40, batch_size=8, lr=5e-3, log_every=1, ckpt_every=100)
    trainer = Trainer(cfg)
    before = held_out_loss(trainer)
    trainer.fit()
    after = held_out_loss(trainer)
    assert after < 0.85 * before, (before, after)
    flow = [r["flow_loss"] for r in metrics(tmp_path) if "flow_loss" in r]
    assert len(flow) == 40 and all(np.isfinite(flow)) and np.mean(flow[-8:]) < np.mean(flow[:8])
    assert all("lr" in r and "grad_norm" in r for r in metrics(tmp_path) if "flow_loss" in r)
    assert any(k.startswith("t0.") for k in metrics(tmp_path)[-1])  # loss by t-bin
    assert list((tmp_path / "tb").iterdir())  # TensorBoard events


def test_resume_is_exact(latents, tmp_path):
    cfg = tiny(latents, tmp_path / "a", steps=6, grad_accum=2, ckpt_every=100, balance_classes=True)
    Trainer(cfg).fit()
    cfg_b = cfg.replace(out=str(tmp_path / "b"))
    Trainer(cfg_b).fit(until=3)  # "killed" after 3 steps; only its checkpoint survives
    Trainer(cfg_b, resume=tmp_path / "b").fit()
    a, b = ck.step_dir(tmp_path / "a", 6), ck.step_dir(tmp_path / "b", 6)
    for name in (ck.WEIGHTS, ck.EMA_WEIGHTS, ck.STATE):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        ta = {k: v for k, v in ta.items() if not k.startswith("rng.")}
        tb = {k: v for k, v in tb.items() if not k.startswith("rng.")}
        assert max_diff(ta, tb) <= 1e-6, name
    assert json.loads((b / ck.STATE_JSON).read_text())["step"] == 6


def test_checkpoint_round_trip(latents, tmp_path):
    trainer = Trainer(tiny(latents, tmp_path, steps=2, sample_every=2))  # sample_every: plane-0 images
    trainer.fit()
    path = ck.resolve_checkpoint(tmp_path)
    assert path == ck.step_dir(tmp_path, 2) and not list(path.glob("*.pt"))
    loaded = load_model(path)
    assert max_diff(loaded.model.state_dict(), trainer.ema.state_dict()) == 0
    assert max_diff(loaded.normalizer.state_dict(), trainer.normalizer.state_dict()) == 0
    assert float(loaded.normalizer.std.std()) > 0  # real per-channel statistics, not the identity
    cfg = loaded.config
    assert cfg["encoder"] == {"encoder": "lrm-small", "triplane_shape": list(SHAPE), "config_hash": "test"}
    assert cfg["conventions_version"] == CONVENTIONS_VERSION and cfg["text_encoder"]["name"] == "fake-32-0"
    x, t = torch.randn(2, *SHAPE), torch.tensor([0.3, 0.7])
    emb = trainer.text(["a red car", ""], torch.device("cpu"))
    assert torch.equal(loaded.model(x, t, **emb.as_kwargs()), trainer.ema(x, t, **emb.as_kwargs()))
    raw = load_model(path, ema=False)
    assert max_diff(raw.model.state_dict(), trainer.raw.state_dict()) == 0


def test_mismatched_encoder_or_shape_is_a_config_error(latents, tmp_path):
    Trainer(tiny(latents, tmp_path / "run", steps=1)).fit()
    other_enc = make_latents(tmp_path / "enc", encoder="instantmesh-nerf-large")
    other_shape = make_latents(tmp_path / "shape", shape=(3, 8, 8, 8))
    for bad in (other_enc, other_shape):
        with pytest.raises(ConfigError, match="checkpoint .* was trained on 'lrm-small'"):
            Trainer(tiny(bad, tmp_path / "ft"), init=tmp_path / "run")
        with pytest.raises(ConfigError, match="triplane shape"):
            Trainer(tiny(bad, tmp_path / "run"), resume=tmp_path / "run")


def test_grow_fine_tunes_onto_latents_with_appended_channels(latents, tmp_path):
    source = Trainer(tiny(latents, tmp_path / "run", steps=2))
    source.fit()
    wide = make_latents(tmp_path / "wide", shape=(3, 11, 16, 16))
    with pytest.raises(ConfigError, match="triplane shape"):
        Trainer(tiny(wide, tmp_path / "plain"), init=tmp_path / "run")
    with pytest.raises(ConfigError, match="give --init"):
        Trainer(tiny(wide, tmp_path / "noinit"), grow=True)
    grown = Trainer(tiny(wide, tmp_path / "ft", steps=2), init=tmp_path / "run", grow=True)
    assert grown.params.plane_channels == 11 and grown.normalizer.mean.shape == (3, 11, 1, 1)
    x, t = torch.randn(2, 3, 11, 16, 16), torch.tensor([0.3, 0.7])
    emb = grown.text(["a red car", ""], torch.device("cpu"))
    with torch.no_grad():
        v = grown.raw(x, t, **emb.as_kwargs())
        v_old = source.ema(x[:, :, :8].contiguous(), t, **emb.as_kwargs())
    assert torch.allclose(v[:, :, :8], v_old, atol=1e-6)  # the old channels: the source model exactly
    assert torch.equal(v[:, :, 8:], torch.zeros_like(v[:, :, 8:]))  # new channels: zero velocity at first
    grown.fit()
    loaded = load_model(ck.resolve_checkpoint(tmp_path / "ft"))
    assert loaded.model.params.plane_channels == 11 and loaded.config["encoder"]["triplane_shape"][1] == 11


def test_fine_tune_from_a_package_with_another_output(latents, tmp_path):
    """--init from a packaged model folder (its EMA as model.safetensors) with --output x0 --out-conv: the
    body's weights are kept, the final layer restarts at zero (its outputs now mean x0), the output
    convolution starts as the identity, and both choices are saved."""
    Trainer(tiny(latents, tmp_path / "run", steps=2)).fit()
    ckpt = ck.resolve_checkpoint(tmp_path / "run")
    package = Path(shutil.copytree(ckpt, tmp_path / "package"))
    (package / "ema.safetensors").replace(package / "model.safetensors")
    source = load_model(package).model
    ft = Trainer(tiny(latents, tmp_path / "ft", steps=2, output="x0", out_conv=True), init=package)
    assert ft.params.output == "x0" and ft.params.out_conv
    state = ft.raw.state_dict()
    for k, v in source.state_dict().items():
        want = torch.zeros_like(v) if k.startswith(("final.linear", "final.adaLN")) else v
        assert torch.equal(state[k], want), k
    assert torch.equal(state["out_conv.weight"][:, :, 1, 1], torch.eye(SHAPE[1]))  # added as the identity
    ft.fit()
    params = load_model(ck.resolve_checkpoint(tmp_path / "ft")).model.params
    assert params.output == "x0" and params.out_conv
    assert Trainer(tiny(latents, tmp_path / "fresh", steps=1, output="skip")).params.output == "skip"
    with pytest.raises(ConfigError, match="output"):
        tiny(latents, tmp_path / "bad", output="eps")


def test_nan_step_is_skipped(latents, tmp_path):
    trainer = Trainer(tiny(latents, tmp_path, steps=4))
    original = trainer.micro_loss
    before: dict = {}

    def poisoned(batch, positions):
        loss, part = original(batch, positions)
        if trainer.step == 2:
            before.update({k: v.clone() for k, v in trainer.raw.state_dict().items()})
            return loss * float("nan"), part
        return loss, part

    trainer.micro_loss = poisoned
    seen = []
    step = trainer.train_step

    def record(micro):
        stats = step(micro)
        if trainer.step == 2:
            assert max_diff(before, trainer.raw.state_dict()) == 0  # no update on the bad step
        seen.append(stats["skipped"])
        return stats

    trainer.train_step = record
    trainer.fit()
    assert seen == [0, 0, 1, 0]
    rows = [r for r in metrics(tmp_path) if r.get("skipped")]
    assert len(rows) == 1 and rows[0]["step"] == 2 and rows[0]["nan_streak"] == 1


def test_stops_after_max_nan_steps(tmp_path):
    bad = make_latents(tmp_path / "nan", nan=True)
    cfg = tiny(
        bad, tmp_path / "run", steps=10, max_nan_steps=3, normalizer_mode="none", normalizer_clamp=None
    )
    with pytest.raises(TrainingDivergedError, match="3 non-finite steps in a row"):
        Trainer(cfg).fit()
    assert [r["step"] for r in metrics(tmp_path / "run") if r.get("skipped")] == [0, 1, 2]


def test_cfg_dropout_rate_and_empty_caption(latents, tmp_path, monkeypatch):
    cfg = PRESETS["tiny"].replace(cfg_dropout=0.25)
    d = draw(cfg, 7, list(range(4000)), (1,))
    assert abs(float(d.drop.float().mean()) - 0.25) < 0.03
    assert torch.equal(d.t, draw(cfg, 7, list(range(4000)), (1,)).t)  # deterministic
    trainer = Trainer(tiny(latents, tmp_path, steps=3, cfg_dropout=0.5))
    seen: list[str] = []
    call = TextTable.__call__
    monkeypatch.setattr(
        TextTable, "__call__", lambda self, c, device: (seen.extend(c), call(self, c, device))[1]
    )
    trainer.fit()
    # the seeded dropout pattern of steps 0, 1, 2 (batch 4), pinned: a change of the draw shows here
    pinned = [True, False, False, False] + [False, False, True, False] + [False, True, True, False]
    assert [c == "" for c in seen] == pinned
    assert 0 < seen.count("") < len(seen)


def test_data_order_balanced_and_filtered(latents, tmp_path):
    rows = [{"attributes": {"category": "chair" if i < 8 else "car"}} for i in range(10)]
    plan = BatchPlan(rows, 50, seed=0, balanced=True)
    picks = sum((plan.global_batch(s) for s in range(40)), [])
    assert abs(np.mean([i >= 8 for i in picks]) - 0.5) < 0.05  # cars: 2 of 10 objects, half the samples
    uniform = BatchPlan(rows, 5, seed=0, balanced=False)
    assert sorted(uniform.global_batch(0) + uniform.global_batch(1)) == list(range(10))  # one epoch
    trainer = Trainer(tiny(latents, tmp_path, category="car"))
    assert len(trainer.dataset) == 4 and {r["attributes"]["category"] for r in trainer.dataset.rows} == {
        "car"
    }
    with pytest.raises(ConfigError, match="no objects with category 'lamp'"):
        Trainer(tiny(latents, tmp_path, category="lamp"))


def test_lr_schedule():
    cfg = PRESETS["tiny"].replace(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4, lr_schedule="cosine")
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3) and lr_at(100, cfg) == pytest.approx(1e-4)
    assert lr_at(50, PRESETS["tiny"].replace(warmup_steps=0)) == PRESETS["tiny"].lr


def test_perceptual_rendering_loss(tmp_path):
    from triflow3d.triplane.field import TriplaneField

    views = make_views(tmp_path / "views", [f"obj{i:02d}" for i in range(4)])
    data = make_latents(tmp_path / "lat", n=4, views=views)
    torch.manual_seed(0)
    field = TriplaneField(SHAPE[1]).requires_grad_(False)
    cfg = tiny(data, tmp_path / "run", steps=2, perceptual="random-vgg", perceptual_t_max=1.0,
               perceptual_size=32, perceptual_crop=16, perceptual_samples=8, perceptual_weight=1.0,
               sample_every=2)  # fmt: skip
    stats = Trainer(cfg, field=field).fit()
    assert stats["perceptual_loss"] > 0 and np.isfinite(stats["loss"])
    assert "NOT LPIPS" in (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "NOT LPIPS" in ck.read_config(ck.resolve_checkpoint(tmp_path / "run"))["perceptual"]


def test_render_loss_weighting_and_gradient(tmp_path):
    from triflow3d.latents.normalizer import LatentNormalizer
    from triflow3d.perceptual import make_perceptual_loss
    from triflow3d.train.render_loss import RenderLoss
    from triflow3d.triplane.field import TriplaneField

    views = make_views(tmp_path, ["a", "b"])
    cfg = PRESETS["tiny"].replace(perceptual="random-vgg", perceptual_size=16, perceptual_samples=8)
    field = TriplaneField(SHAPE[1]).requires_grad_(False)
    loss = RenderLoss(cfg, field, make_perceptual_loss("random-vgg"), LatentNormalizer(SHAPE[1], "none"))
    t = torch.tensor([0.2, 0.9])  # t_max 0.5: only the first sample is rendered
    assert torch.allclose(loss.weight(t), torch.tensor([0.1 * 0.8, 0.0]))
    x_t, v_hat = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE, requires_grad=True)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    per = loss(x_t, v_hat, t, [str(views / "a"), str(views / "b")], gens)
    assert per[0] > 0 and per[1] == 0
    per.sum().backward()
    assert v_hat.grad[0].abs().sum() > 0 and v_hat.grad[1].abs().sum() == 0


# --- entry points ----------------------------------------------------------------------------------------
def test_cli_help(capsys):
    from triflow3d.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0 and "--cfg-dropout" in capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "triflow3d.train", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--cfg-dropout" in out.stdout


def test_cli_train_and_resume(latents, tmp_path):
    from triflow3d.train.cli import main

    base = ["--preset", "tiny", "--latents", str(latents), "--out", str(tmp_path), "--device", "cpu"]
    assert main([*base, "--steps", "2", "--lr", "3e-4", "--normalizer-clamp", "none"]) == 0
    assert main(["--resume", str(tmp_path), "--steps", "4"]) == 0
    conf = ck.read_config(ck.resolve_checkpoint(tmp_path))
    assert conf["step"] == 4 and conf["train_config"]["lr"] == 3e-4 and conf["normalizer"]["clamp"] is None
    assert main([*base, "--batch-size", "3", "--grad-accum", "2"]) == 1  # ConfigError -> exit code 1


def test_two_process_ddp_matches_one_process(latents, tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    args = ["--preset", "tiny", "--latents", str(latents), "--device", "cpu", "--steps", "3", "--batch-size", "4",
            "--grad-accum", "1", "--sync-check-every", "1", "--log-every", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "triflow3d.train",
        *args,
        "--out",
        str(tmp_path / "ddp"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    one = PRESETS["tiny"].replace(latents=str(latents), out=str(tmp_path / "one"), device="cpu", steps=3,
                                  batch_size=4, log_every=1)  # fmt: skip
    Trainer(one).fit()
    ddp, single = ck.step_dir(tmp_path / "ddp", 3), ck.step_dir(tmp_path / "one", 3)
    assert max_diff(load_file(str(ddp / ck.WEIGHTS)), load_file(str(single / ck.WEIGHTS))) < 1e-5
    assert [r["sync_diff"] for r in metrics(tmp_path / "ddp") if "sync_diff" in r] == [0.0, 0.0, 0.0]
    assert json.loads((ddp / ck.STATE_JSON).read_text())["world_size"] == 2
    losses = [[r["loss"] for r in metrics(p) if "loss" in r] for p in (tmp_path / "ddp", tmp_path / "one")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    shutil.rmtree(tmp_path / "ddp")


# --- the CPU results of the loader path, pinned ----------------------------------------------------------
# Computed with the loop as it was before the device-resident path existed (git 3e35b32), on this CPU:
# per-step loss and gradient norm, and three numbers of the final weights and EMA (sum, sum of squares and
# a dot product with sin(0, 1, 2, ...) over every tensor in key order, float64).
REFERENCE_RUNS = {
    "fp32": {
        "loss": [1.964917927980423, 2.0367564260959625, 1.9951125085353851,
                 1.987070083618164, 1.9612633287906647, 1.9352652430534363],
        "grad_norm": [0.2129794955253601, 0.21989771723747253, 0.20922939479351044,
                      0.20057770609855652, 0.19965703785419464, 0.19080978631973267],
        "model": [775.2779320210223, 5022.411265122273, 58.20283640308578],
        "ema": [775.1919894910395, 5022.284272445226, 58.26518416294703],
    },
    "bf16": {
        "loss": [1.964917927980423, 2.0367458164691925, 1.995114028453827,
                 1.987084537744522, 1.9613037407398224, 1.935315102338791],
        "grad_norm": [0.2129892110824585, 0.2198781967163086, 0.20905722677707672,
                      0.20021626353263855, 0.19914865493774414, 0.19014695286750793],
        "model": [775.2668644031094, 5022.4260015065065, 58.20514054447519],
        "ema": [775.1851561538059, 5022.297470873595, 58.26671007307753],
    },
}  # fmt: skip


def fingerprint(sd: dict[str, torch.Tensor]) -> list[float]:
    flat = torch.cat([sd[k].double().flatten() for k in sorted(sd)])
    w = torch.sin(torch.arange(flat.numel(), dtype=torch.float64))
    return [float(flat.sum()), float(flat.square().sum()), float(flat @ w)]


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
def test_cpu_results_match_the_reference(tmp_path, mode):
    data = make_latents(tmp_path / "lat")
    cfg = tiny(data, tmp_path / "run", steps=6, batch_size=4, grad_accum=2, balance_classes=True, center_text=True,
               lr_schedule="cosine", warmup_steps=2, min_lr=1e-4, log_every=1, ckpt_every=100,
               bf16=mode == "bf16")  # fmt: skip
    Trainer(cfg).fit()
    rows = metrics(tmp_path / "run")
    ref, path = REFERENCE_RUNS[mode], ck.step_dir(tmp_path / "run", 6)
    np.testing.assert_allclose([r["loss"] for r in rows], ref["loss"], rtol=2e-6)
    np.testing.assert_allclose([r["grad_norm"] for r in rows], ref["grad_norm"], rtol=2e-5)
    # bf16 CPU matrix products differ with the instruction set (AMX / AVX512-BF16 or emulated): 5e-6 measured
    rtol = 2e-5 if mode == "bf16" else 2e-6
    np.testing.assert_allclose(fingerprint(load_file(str(path / ck.WEIGHTS))), ref["model"], rtol=rtol)
    np.testing.assert_allclose(fingerprint(load_file(str(path / ck.EMA_WEIGHTS))), ref["ema"], rtol=rtol)


# --- the device-resident loop (forced on the CPU here; chosen automatically on CUDA) ----------------------
def test_loop_choice(latents, tmp_path):
    assert Trainer(tiny(latents, tmp_path / "a")).loop == "loader"  # auto on the CPU: today's loop
    assert Trainer(tiny(latents, tmp_path / "b", loop="resident")).loop == "resident"
    with pytest.raises(ConfigError, match="flow loss only"):
        Trainer(tiny(latents, tmp_path / "c", loop="resident", perceptual="random-vgg"))


def test_resident_data_and_order_match_the_loader(latents, tmp_path):
    from triflow3d.train.batches import RankBatches
    from triflow3d.train.resident import IndexFeed

    trainer = Trainer(
        tiny(latents, tmp_path, loop="resident", batch_size=4, grad_accum=2, balance_classes=True)
    )
    data = trainer.resident
    items = [trainer.dataset[i] for i in range(len(trainer.dataset))]
    assert torch.equal(data.triplanes.float(), torch.stack([it["triplane"] for it in items]).half().float())
    assert torch.equal(data.weights.float(), torch.stack([it["weights"] for it in items]).half().float())
    batches = RankBatches(trainer.plan, 0, 10, 0, 1, 2)
    feed = IndexFeed(batches, torch.device("cpu"), chunk=3)
    assert [feed(s).tolist() for s in range(10)] == [batches.step_indices(s) for s in range(10)]
    idx, drop = torch.tensor([0, 1, 2]), torch.tensor([False, True, False])
    got = data.gather(idx, drop).text
    want = trainer.text([items[0]["caption"], "", items[2]["caption"]], torch.device("cpu"))
    for g, w in zip((got.tokens, got.pooled), (want.tokens, want.pooled)):
        assert torch.equal(g[:, : w.shape[1]] if g.ndim == 3 else g, w)
    assert (
        torch.equal(got.mask[:, : want.mask.shape[1]], want.mask)
        and not got.mask[:, want.mask.shape[1] :].any()
    )


def test_resident_loop_learns_and_resumes_exactly(latents, tmp_path):
    cfg = tiny(latents, tmp_path / "a", steps=6, batch_size=4, grad_accum=2, log_every=2, ckpt_every=100,
               loop="resident", lr=5e-3)  # fmt: skip
    Trainer(cfg).fit()
    cfg_b = cfg.replace(out=str(tmp_path / "b"))
    Trainer(cfg_b).fit(until=3)
    Trainer(cfg_b, resume=tmp_path / "b").fit()
    a, b = ck.step_dir(tmp_path / "a", 6), ck.step_dir(tmp_path / "b", 6)
    for name in (ck.WEIGHTS, ck.EMA_WEIGHTS):
        assert max_diff(load_file(str(a / name)), load_file(str(b / name))) == 0, name
    rows = metrics(tmp_path / "a")
    assert [r["step"] for r in rows] == [2, 4, 6] and all(r["skipped"] == 0 for r in rows)
    assert json.loads((a / ck.STATE_JSON).read_text())["loop"] == "resident"
    long = tiny(latents, tmp_path / "c", steps=40, batch_size=8, lr=5e-3, log_every=1, ckpt_every=100,
                loop="resident")  # fmt: skip
    trainer = Trainer(long)
    before = held_out_loss(trainer)
    trainer.fit()
    assert held_out_loss(trainer) < 0.85 * before


def test_resident_loop_skips_non_finite_steps_on_the_device(tmp_path):
    bad = make_latents(tmp_path / "nan", nan=True)
    cfg = tiny(bad, tmp_path / "run", steps=10, max_nan_steps=3, normalizer_mode="none", normalizer_clamp=None,
               loop="resident", log_every=2)  # fmt: skip
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.raw.state_dict().items()}
    ema = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    with pytest.raises(TrainingDivergedError, match="non-finite steps in a row"):
        trainer.fit()
    assert trainer.step == 4  # found at the second logging step
    assert max_diff(before, trainer.raw.state_dict()) == 0 and max_diff(ema, trainer.ema.state_dict()) == 0
    assert [r["skipped"] for r in metrics(tmp_path / "run")] == [2]


def test_resident_loop_falls_back_to_eager_when_compiling_fails(latents, tmp_path, monkeypatch):
    def broken(model, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    cfg = tiny(latents, tmp_path / "c", steps=3, loop="resident", compile="default", ckpt_every=100)
    trainer = Trainer(cfg)
    trainer.fit()
    eager = Trainer(cfg.replace(out=str(tmp_path / "e"), compile="off"))
    eager.fit()
    assert max_diff(trainer.raw.state_dict(), eager.raw.state_dict()) == 0


def fake_clock(monkeypatch, tick: float = 0.1) -> None:
    """TimeBudget's clock advances ``tick`` seconds per reading: the budget logic without the machine's load."""
    import itertools
    import types

    from triflow3d.utils import budget

    ticks = itertools.count()
    monkeypatch.setattr(budget, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) * tick))


def test_time_budget_shortens_the_run(latents, tmp_path, monkeypatch):
    fake_clock(monkeypatch)
    cfg = tiny(latents, tmp_path, steps=100_000, warmup_steps=4, lr_schedule="cosine", log_every=1000,
               ckpt_every=10**6)  # fmt: skip
    trainer = Trainer(cfg)
    trainer.fit(time_budget=3.0)
    # clock readings: start 0, after step 1 0.1, after step 4 0.5 -> 0.133 s a step, 2.5 s left: 18 more
    assert trainer.step == 22 and trainer.cfg.steps == 22
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 22
    assert ck.read_config(ck.resolve_checkpoint(tmp_path))["train_config"]["steps"] == 22


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile_mode", ["off", "default"])
def test_resident_loop_on_cuda(latents, tmp_path, compile_mode):
    cfg = PRESETS["tiny"].replace(latents=str(latents), out=str(tmp_path / "a"), device="cuda", steps=6,
                                  batch_size=4, log_every=2, ckpt_every=100, compile=compile_mode)  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.loop == "resident"
    trainer.fit()
    Trainer(cfg.replace(out=str(tmp_path / "b"))).fit(until=3)
    Trainer(cfg.replace(out=str(tmp_path / "b")), resume=tmp_path / "b").fit()
    a, b = ck.step_dir(tmp_path / "a", 6), ck.step_dir(tmp_path / "b", 6)
    assert max_diff(load_file(str(a / ck.WEIGHTS)), load_file(str(b / ck.WEIGHTS))) < 1e-4
    assert all(np.isfinite(r["loss"]) for r in metrics(tmp_path / "a"))
