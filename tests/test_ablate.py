"""``triflow3d ablate`` on a tiny encoded latent set: two matched variants, table, skip on re-run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from triflow3d.ablate_cli import load_config
from triflow3d.cli import main
from triflow3d.encode import encode_folder
from triflow3d.encoders import (
    build_reconstructor,
    load_reconstructor,
    save_reconstructor,
)
from triflow3d.errors import ConfigError
from triflow3d.models.triflow import TRIFLOW_PRESETS as MODEL_PRESETS
from triflow3d.recon.synthetic import write_views_folder
from triflow3d.train.ablate import match_dit, n_params

EVAL = {"n_prompts": 2, "points": 64, "refs_per_category": 1, "views": 2, "image_size": 32,
        "resolution": 16, "recon_objects": 1, "steps": 2, "threshold": 0.5}  # fmt: skip


@pytest.fixture(scope="module")
def latents(tmp_path_factory, tiny_recon_config) -> dict:
    """6 objects encoded by a saved random tiny ``lrm-small`` (3 x 4 x 8 x 8 triplanes) + stats."""
    root = tmp_path_factory.mktemp("abl")
    write_views_folder(root / "views", list(range(6)), "zero123pp", 16)
    cfg = tiny_recon_config
    save_reconstructor(build_reconstructor(cfg, encoder_id="lrm-small", seed=3), root / "enc")
    model = load_reconstructor("lrm-small", checkpoint=root / "enc")
    encode_folder(model, root / "views", root / "lat", dtype="fp32", shard_size=4, progress=False)
    assert main(["latents", "stats", str(root / "lat")]) == 0
    return {"lat": root / "lat", "enc": f"lrm-small:{root / 'enc'}", "root": root}


def _config(latents: dict, variants: list[dict], **extra) -> Path:
    cfg = {"latents": str(latents["lat"]), "preset": "tiny", "steps": 3, "seed": 0,
           "overrides": {"batch_size": 2, "ckpt_every": 100, "log_every": 1},
           "reconstructor": latents["enc"], "eval": EVAL, "variants": variants} | extra  # fmt: skip
    path = latents["root"] / f"ablate-{len(variants)}-{len(extra)}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_ablate_two_variants_then_skip(latents, tmp_path, capsys):
    variants = [{"name": "baseline", "description": "per-channel standardisation"},
                {"name": "dit", "arch": "dit", "description": "plain DiT, matched width"}]  # fmt: skip
    config, out = _config(latents, variants), tmp_path / "abl"
    assert main(["ablate", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "baseline: done" in printed and "dit: done" in printed
    table = (out / "ablations.md").read_text()
    assert f"triflow3d ablate --config {config} --out {out}" in table
    assert "| baseline | baseline |" in table and "plain DiT, hidden" in table and "peak mem (MB)" in table
    data = json.loads((out / "ablations.json").read_text())
    base, dit = data["results"]
    assert base["arch"] == "multistream" and dit["arch"] == "dit"
    assert dit["params_reference"] == base["params"]  # same data shapes and text width
    assert abs(dit["params"] / base["params"] - 1) < 0.1
    for r in (base, dit):
        assert r["train_s"] > 0 and r["peak_mem_mb"] > 0 and r["final_loss"] is not None
        assert r["metrics"]["n_generated"] == 2 and "overall" in r["metrics"]
        assert (out / "variants" / r["name"] / "eval" / "report.md").is_file()
    stamp = (out / "variants" / "dit" / "result.json").stat().st_mtime_ns
    assert main(["ablate", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "baseline: skipped (finished)" in printed and "dit: skipped (finished)" in printed
    assert (out / "variants" / "dit" / "result.json").stat().st_mtime_ns == stamp
    assert (out / "ablations.md").read_text().count("| dit |") == 1


def test_match_dit_small_preset():
    params = MODEL_PRESETS["small"]
    dit, n_dit, n_ms = match_dit(params)
    assert dit.arch == "dit" and n_ms == n_params(params)
    assert abs(n_dit / n_ms - 1) < 0.1 and dit.hidden % dit.heads == 0 and dit.hidden % 4 == 0
    wider = dataclasses.replace(dit, hidden=dit.hidden + 12)
    assert abs(n_params(wider) - n_ms) >= abs(n_dit - n_ms)


def test_bad_configs(latents, tmp_path):
    with pytest.raises(ConfigError, match="variant names must be unique"):
        load_config(_config(latents, [{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ConfigError, match="may not override the matched settings"):
        load_config(_config(latents, [{"name": "a", "train": {"steps": 5}}]))
    with pytest.raises(ConfigError, match="normalizer_mode"):
        load_config(_config(latents, [{"name": "a", "train": {"normalizer_mode": "bogus"}}]))
    with pytest.raises(ConfigError, match="unknown eval settings"):
        load_config(_config(latents, [{"name": "a"}], eval={"nope": 1}))
    with pytest.raises(ConfigError, match="must use only"):
        load_config(_config(latents, [{"name": "A B"}]))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_example_config_parses():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "ablate_small.json")
    names = [v.name for v in cfg.variants]
    assert len(names) >= 6 and any(v.arch == "dit" for v in cfg.variants)
