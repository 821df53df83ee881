"""TextTo3DPipeline and ``triflow3d generate`` with tiny random components (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from triflow3d.cli import main
from triflow3d.encoders import RECONSTRUCTOR_PRESETS, build_reconstructor
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.evaluation.geometry import fragmentation
from triflow3d.latents import LatentNormalizer
from triflow3d.models import FakeTextEncoder
from triflow3d.pipeline import SamplerSettings, TextTo3DPipeline, median_level, random_triflow
from triflow3d.train import checkpoint as ck

ENCODER_ID = "tiny-recon"
TEXT_DIM = 32


@pytest.fixture(scope="module")
def pipe(tiny_pipeline) -> TextTo3DPipeline:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pipe) -> Path:
    return pipe.save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


# --- sampling -------------------------------------------------------------------------------------
def test_same_seed_same_triplane_and_seeds_differ(pipe):
    a, b = pipe("a red chair", seed=3)[0], pipe("a red chair", seed=3)[0]
    assert a.triplane.shape == (3, 8, 8, 8) and a.triplane.dtype == torch.float32
    assert torch.equal(a.triplane, b.triplane) and (a.prompt, a.seed) == ("a red chair", 3)
    c = pipe("a red chair", seed=4)[0]
    assert (a.triplane - c.triplane).abs().max() > 0.1
    assert a.settings == {"steps": 3, "cfg": 3.0, "sampler": "euler", "shift": 1.0}


def test_batch_composition_does_not_change_an_object(pipe):
    prompts = ["a red chair", "a tall blue mug with a round handle"]
    both = pipe(prompts, seed=[5, 9])
    for k, (prompt, seed) in enumerate(zip(prompts, [5, 9])):
        alone = pipe(prompt, seed=seed)[0]
        torch.testing.assert_close(both[k].triplane, alone.triplane, atol=1e-5, rtol=0)
    split = pipe(prompts, seed=[5, 9], batch_size=1)
    torch.testing.assert_close(split[1].triplane, both[1].triplane, atol=1e-5, rtol=0)
    # an int seed gives prompt k the seed seed + k
    assert [g.seed for g in pipe(prompts, seed=5)] == [5, 6]


def test_euler_and_heun(pipe):
    e = pipe("a chair", seed=1, sampler="euler")[0].triplane
    h = pipe("a chair", seed=1, sampler="heun")[0].triplane
    assert torch.isfinite(h).all() and (e - h).abs().max() > 1e-4
    # Heun's last step onto t = 0 is an Euler step, so with one step both samplers agree exactly.
    torch.testing.assert_close(
        pipe("a chair", seed=1, sampler="heun", steps=1)[0].triplane,
        pipe("a chair", seed=1, sampler="euler", steps=1)[0].triplane,
        atol=0,
        rtol=0,
    )


def test_bf16_autocast_is_close_and_deterministic(pipe, tiny_pipeline):
    ref = pipe("a chair", seed=1)[0].triplane
    fast = tiny_pipeline(autocast=torch.bfloat16)
    a, b = fast("a chair", seed=1)[0].triplane, fast("a chair", seed=1)[0].triplane
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert 0 < (a - ref).abs().max() < 0.1 * ref.abs().max()


def test_guidance_text_and_denormalisation_matter(pipe, tiny_pipeline):
    base = pipe("a chair", seed=2)[0].triplane
    assert (pipe("a chair", seed=2, cfg=1.0)[0].triplane - base).abs().max() > 1e-4
    assert (pipe("a lamp", seed=2)[0].triplane - base).abs().max() > 1e-4
    norm = LatentNormalizer(8, encoder_id=ENCODER_ID)
    norm.mean.fill_(100.0)
    norm.std.fill_(2.0)
    shifted = tiny_pipeline(normalizer=norm)("a chair", seed=2)[0].triplane
    torch.testing.assert_close(shifted, base * (2.0 + 1e-6) + 100.0, atol=1e-3, rtol=0)
    centred = tiny_pipeline(text_center=torch.ones(TEXT_DIM))("a chair", seed=2)[0].triplane
    assert (centred - base).abs().max() > 1e-4


def test_unconditional_is_the_null_condition_of_training(tiny_pipeline):
    """Training drops a caption to "" (TextTable, centred); sampling without a prompt uses exactly that
    embedding, with no guidance: the same velocity as the unconditional branch of CFG (cfg 0)."""
    from triflow3d.train.text import TextTable

    encoder = FakeTextEncoder(TEXT_DIM)
    table = TextTable(encoder, ["a red chair", "a blue mug"], center=True)
    pipe = tiny_pipeline(text_encoder=encoder, text_center=table.center)
    trained, sampled = table([""], torch.device("cpu")), pipe.encode([""])
    torch.testing.assert_close(sampled.pooled, trained.pooled)
    torch.testing.assert_close(sampled.tokens[sampled.mask], trained.tokens[trained.mask])
    gens = pipe.unconditional(3, seed=[5, 6, 7], batch_size=2)
    assert [(g.prompt, g.seed, g.settings["cfg"]) for g in gens] == [("", 5, 1.0), ("", 6, 1.0), ("", 7, 1.0)]
    torch.testing.assert_close(gens[1].triplane, pipe.unconditional(1, seed=6)[0].triplane, atol=1e-5, rtol=0)
    cfg0 = pipe("a red chair", seed=6, cfg=0.0)[0].triplane  # v = v_u + 0 (v_c - v_u)
    torch.testing.assert_close(gens[1].triplane, cfg0, atol=1e-4, rtol=0)
    assert (gens[0].triplane - gens[1].triplane).abs().max() > 0.1
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="n >= 1"):
            pipe.unconditional(bad)


def test_bad_prompts_and_seeds(pipe):
    for bad in ("", "   ", ["a chair", ""], []):
        with pytest.raises(ConfigError):
            pipe(bad)
    with pytest.raises(ConfigError, match="2 prompts"):
        pipe(["a", "b"], seed=[1, 2, 3])
    with pytest.raises(ConfigError, match="sampler"):
        pipe("a chair", sampler="rk4")


def test_components_must_agree(tiny_pipeline):
    with pytest.raises(CheckpointError, match="width 16"):
        tiny_pipeline(text_encoder=FakeTextEncoder(16))
    with pytest.raises(CheckpointError, match="other-recon"):
        tiny_pipeline(normalizer=LatentNormalizer(8, encoder_id="other-recon"))
    small = build_reconstructor(dataclasses.replace(RECONSTRUCTOR_PRESETS["lrm-small"], triplane_low_res=2))
    with pytest.raises(CheckpointError, match="expects"):
        tiny_pipeline(reconstructor=small)


# --- the generated object -----------------------------------------------------------------------------
def test_mesh_render_and_turntable(pipe):
    gen = pipe("a red chair", seed=0)[0]
    mesh = gen.to_mesh(resolution=16, threshold=median_level(gen))
    assert len(mesh.faces) > 50 and mesh.visual.kind == "vertex"
    assert np.abs(mesh.vertices).max() <= 1.0 + 1e-6
    fewer = gen.to_mesh(resolution=16, threshold=median_level(gen), decimate=len(mesh.faces) // 4)
    assert 0 < len(fewer.faces) < len(mesh.faces) / 2 and fewer.visual.kind == "vertex"
    from triflow3d.cameras import orbit_rig

    out = gen.render(orbit_rig(2).render_cameras(), size=8)
    assert out["rgb"].shape == (2, 3, 8, 8) and out["alpha"].shape == (2, 1, 8, 8)
    frames = gen.turntable(n_frames=3, size=8)
    assert frames.shape == (3, 8, 8, 3) and frames.dtype == np.uint8
    raster = gen.turntable(n_frames=3, size=16, renderer="mesh", mesh=mesh)
    assert raster.shape == (3, 16, 16, 3) and (raster < 250).any()
    assert gen.views(size=8).shape == (6, 8, 8, 3)


# --- folders ------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(pipe, model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["config.json", "model.safetensors", "reconstructor"]
    loaded = TextTo3DPipeline.from_pretrained(model_dir)
    assert loaded.settings == pipe.settings and loaded.reconstructor.encoder_id == ENCODER_ID
    assert isinstance(loaded.text_encoder, FakeTextEncoder) and loaded.text_encoder.dim == TEXT_DIM
    a, b = pipe("a red chair", seed=7)[0], loaded("a red chair", seed=7)[0]
    assert torch.equal(a.triplane, b.triplane)
    # saving again (now with a model card) reproduces the same folder contents
    loaded.model_card = "# tiny\n"
    again = loaded.save_pretrained(model_dir.parent / "again")
    assert (again / "model_card.md").read_text() == "# tiny\n"
    assert TextTo3DPipeline.from_pretrained(again).model_card == "# tiny\n"


def test_loads_a_trainer_checkpoint_with_ema(tmp_path, pipe):
    ema = random_triflow(seed=1)
    config = pipe.checkpoint_config()
    config.pop("reconstructor")
    config.pop("sampling")
    ck.save_checkpoint(tmp_path / "ckpt", pipe.model, ema, pipe.normalizer, config)
    loaded = TextTo3DPipeline.from_pretrained(tmp_path / "ckpt", reconstructor=pipe.reconstructor)
    for k, v in ema.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k  # EMA weights, not the raw ones
    assert loaded.settings == SamplerSettings()
    with pytest.raises(CheckpointError, match="tiny-recon"):  # no reconstructor recorded: by encoder id
        TextTo3DPipeline.from_pretrained(tmp_path / "ckpt")


def test_missing_and_mismatched_folders(tmp_path, model_dir):
    with pytest.raises(CheckpointError, match="not found"):
        TextTo3DPipeline.from_pretrained(tmp_path / "nope")
    broken = Path(shutil.copytree(model_dir, tmp_path / "broken"))
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        TextTo3DPipeline.from_pretrained(broken)
    other = Path(shutil.copytree(model_dir, tmp_path / "other"))
    cfg = json.loads((other / "config.json").read_text())
    cfg["encoder"]["encoder"] = "instantmesh-nerf-large"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="instantmesh-nerf-large"):
        TextTo3DPipeline.from_pretrained(other)
    with pytest.raises(CheckpointError, match="fake-16-0"):
        TextTo3DPipeline.from_pretrained(model_dir, text_encoder=FakeTextEncoder(16))


# --- CLI ----------------------------------------------------------------------------------------------
def _cli(model_dir: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--model", str(model_dir), "--out", str(out), "--no-progress", *extra])


def test_cli_generates_files(tmp_path, model_dir, pipe, capsys):
    thr = median_level(pipe("a red chair", seed=4)[0])
    args = ["a red chair", "--seed", "4", "--format", "glb,ply,gif,png,triplane", "--resolution", "16"]
    args += ["--threshold", str(thr), "--frames", "3", "--video-size", "32", "--steps", "2"]
    assert _cli(model_dir, tmp_path / "out", *args) == 0
    folder = tmp_path / "out" / "000-a-red-chair-s4"
    files = sorted(p.name for p in folder.iterdir())
    assert files == [
        "info.json",
        "mesh.glb",
        "mesh.ply",
        "triplane.safetensors",
        "turntable.gif",
        "views.png",
    ]
    info = json.loads((folder / "info.json").read_text())
    assert info["prompt"] == "a red chair" and info["seed"] == 4 and info["vertices"] > 0
    assert info["settings"]["steps"] == 2
    row = json.loads((tmp_path / "out" / "generated.jsonl").read_text())
    assert row["folder"] == folder.name and row["files"] == files[1:]
    out = capsys.readouterr().out
    assert "000-a-red-chair-s4: 'a red chair' seed 4 -> mesh.glb" in out and "vertices" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [folder.name, "generated.jsonl"]


def test_cli_prompts_file_and_long_prompt(tmp_path, model_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\na mug\n\n" + " ".join(["word"] * 40) + "\n")
    assert _cli(model_dir, tmp_path / "out", "--prompts-file", str(prompts), "--format", "triplane") == 0
    err = capsys.readouterr().err
    assert "truncated to max_length=16" in err
    assert len(list((tmp_path / "out").glob("00*-s*"))) == 2


@pytest.mark.parametrize(
    "case", ["empty", "no-prompts", "missing-model", "mismatched", "bad-format", "seed-count", "export-fails"]
)
def test_cli_bad_input_leaves_nothing(tmp_path, model_dir, monkeypatch, capsys, case):
    out, prompt, extra = tmp_path / "out", ["a chair"], []
    if case == "empty":
        prompt = ["a chair", ""]
    elif case == "no-prompts":
        prompt = []
    elif case == "missing-model":
        model_dir = tmp_path / "missing"
    elif case == "mismatched":
        model_dir = Path(shutil.copytree(model_dir, tmp_path / "m"))
        cfg = json.loads((model_dir / "config.json").read_text())
        cfg["encoder"]["encoder"] = "lrm-small"
        (model_dir / "config.json").write_text(json.dumps(cfg))
    elif case == "bad-format":
        extra = ["--format", "glb,fbx"]
    elif case == "seed-count":
        extra = ["--seed", "1", "2"]
    else:
        from triflow3d import export
        from triflow3d.errors import AssetError

        def fail(*a, **k):
            raise AssetError("x.glb", "disk full")

        monkeypatch.setattr(export, "save_png", fail)
        extra = ["--format", "triplane,png", "--video-size", "16"]
    assert _cli(model_dir, out, *prompt, *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    first = (
        "failed: prompt 1" if case == "export-fails" else "error: "
    )  # a per-prompt failure (utils/batch.py)
    assert err[-1].startswith(first) and "Traceback" not in "".join(err)
    assert not out.exists() or list(out.iterdir()) == []


def test_cli_unconditional_and_drop_floaters(tmp_path, model_dir, pipe, capsys):
    thr = median_level(pipe.unconditional(1, seed=0)[0])
    args = ["--unconditional", "--n", "2", "--format", "ply", "--resolution", "16", "--threshold", str(thr)]
    assert _cli(model_dir, tmp_path / "u", *args) == 0
    folders = sorted(p.name for p in (tmp_path / "u").glob("00*"))
    assert folders == ["000-unconditional-s0", "001-unconditional-s1"]
    info = json.loads((tmp_path / "u" / folders[0] / "info.json").read_text())
    assert info["prompt"] == "" and info["settings"]["cfg"] == 1.0
    assert _cli(model_dir, tmp_path / "c", *args, "--drop-floaters") == 0
    raw, clean = (trimesh.load(tmp_path / d / folders[0] / "mesh.ply") for d in ("u", "c"))
    assert fragmentation(clean).floater_share == 0.0 and 0 < len(clean.faces) <= len(raw.faces)
    for bad in (["a chair", "--unconditional", "--n", "2"], ["--unconditional"], ["--n", "2"],
                ["--unconditional", "--n", "2", "--cfg", "3"]):  # fmt: skip
        assert _cli(model_dir, tmp_path / "bad", *bad) == 1
        assert "--unconditional" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_help():
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0


def test_from_pretrained_accepts_a_training_run_folder(model_dir, tmp_path, pipe):
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "checkpoints" / "step-0000007")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"path": "step-0000007"}))
    loaded = TextTo3DPipeline.from_pretrained(run)  # the run folder resolves to its latest checkpoint
    a = loaded("a red chair", seed=1)[0].triplane
    torch.testing.assert_close(a, pipe("a red chair", seed=1)[0].triplane)


def test_the_shipped_default_model_loads():
    from triflow3d.pipeline import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "model.safetensors").exists():
        pytest.skip("the shipped triflow-small is not in this checkout")
    pipe = TextTo3DPipeline.from_pretrained()  # lrm-small triplanes, MiniLM text
    assert pipe.reconstructor.encoder_id == "lrm-small"
