"""``triflow3d latents stats | weights | inspect`` on a tiny encoded folder (random tiny reconstructor)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from triflow3d.cli import main
from triflow3d.data import LatentDataset
from triflow3d.encode import encode_folder
from triflow3d.encoders import (
    build_reconstructor,
    load_reconstructor,
    save_reconstructor,
)
from triflow3d.latents import LatentNormalizer, LatentStats, batch_stats, spatial_weights
from triflow3d.latents.folder import sample_indices
from triflow3d.latents.report import feature_energy, pca_rgb
from triflow3d.recon.synthetic import write_views_folder
from triflow3d.triplane.grid import grid_points

GRID = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_recon_config) -> dict:
    """6 objects encoded by a saved random tiny ``lrm-small`` into shards of 4 (fp32 storage)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("latents")
    write_views_folder(root / "views", list(range(6)), "zero123pp", 16)
    cfg = tiny_recon_config
    save_reconstructor(build_reconstructor(cfg, encoder_id="lrm-small", seed=3), root / "enc")
    model = load_reconstructor("lrm-small", checkpoint=root / "enc")
    s = encode_folder(model, root / "views", root / "lat", dtype="fp32", shard_size=4, progress=False)
    assert s.encoded == 6 and s.shards == 2
    ds = LatentDataset(root / "lat")
    planes = torch.stack([ds[i]["triplane"] for i in range(len(ds))])  # (6, 3, 4, 8, 8)
    sigma = model.query(planes, grid_points(GRID).expand(len(ds), -1, -1))["sigma"]
    return {
        "lat": root / "lat",
        "enc": f"lrm-small:{root / 'enc'}",
        "model": model,
        "planes": planes,
        "threshold": float(sigma.quantile(0.99)),  # a level that gives non-trivial masks on this decoder
    }


def _copy(folder: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder["lat"], tmp_path / "lat"))


def _weights(lat: Path, folder: dict, *extra: str) -> int:
    args = ["latents", "weights", str(lat), "--encoder", folder["enc"], "--grid", str(GRID)]
    return main([*args, "--threshold", str(folder["threshold"]), *extra])


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_stats_files_match_batch_stats(folder, tmp_path):
    lat = _copy(folder, tmp_path)
    assert main(["latents", "stats", str(lat), "--k", "2,4"]) == 0
    got = LatentStats.from_safetensors(lat / "stats.safetensors")
    want = batch_stats(folder["planes"], "lrm-small")
    assert got.encoder_id == "lrm-small" and got.num_triplanes == 6 and got.count == want.count
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-10)
    assert np.array_equal(got.hist, want.hist) and np.array_equal(got.maximum, want.maximum)
    summary = json.loads((lat / "stats.json").read_text())
    assert summary["encoder_id"] == "lrm-small" and summary["source"]["objects"] == 6
    assert set(summary["global"]["tail_fraction_per_channel_std"]) == {"2.0", "4.0"}
    assert np.allclose(summary["per_channel"]["tail_fraction"]["2.0"], got.tail_fraction(2.0))
    assert summary["global"]["std"] == pytest.approx(float(folder["planes"].double().std(unbiased=False)))


def test_stats_sample(folder, tmp_path):
    lat = _copy(folder, tmp_path)
    assert main(["latents", "stats", str(lat), "--sample", "3", "--seed", "5"]) == 0
    got = LatentStats.from_safetensors(lat / "stats.safetensors")
    idx = sample_indices(6, 3, 5)
    assert len(idx) == 3 and got.num_triplanes == 3
    np.testing.assert_allclose(got.mean, batch_stats(folder["planes"][idx]).mean, atol=1e-12)


def test_standardised_per_channel_moments(folder, tmp_path):
    lat = _copy(folder, tmp_path)
    assert main(["latents", "stats", str(lat)]) == 0
    norm = LatentNormalizer.from_stats(LatentStats.from_safetensors(lat / "stats.safetensors"))
    y = norm.normalize(folder["planes"].double()).permute(1, 2, 0, 3, 4).flatten(2)  # (3, C, B R R)
    np.testing.assert_allclose(y.mean(-1).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(y.std(-1, unbiased=False).numpy(), 1.0, atol=1e-4)


def test_weights_written_read_and_idempotent(folder, tmp_path, capsys):
    lat = _copy(folder, tmp_path)
    assert _weights(lat, folder) == 0
    s = _last_json(capsys)
    assert (s["computed"], s["skipped"], s["objects"]) == (6, 0, 6)
    assert 0.0 < s["mean_coverage"] < 1.0
    ds = LatentDataset(lat)
    model = folder["model"]
    for i in range(len(ds)):
        w = ds[i]["weights"]
        assert w.shape == (3, 8, 8) and w.dtype == torch.float32
        assert float(w.min()) >= 0.1 - 1e-7 and float(w.max()) <= 1.0
        ref = spatial_weights(model, ds[i]["triplane"][None], GRID, folder["threshold"], 1, 0.1)[0]
        assert torch.equal(w, ref)
    all_w = torch.stack([ds[i]["weights"] for i in range(len(ds))])
    assert (all_w == 1.0).any() and (all_w < 0.5).any()
    assert json.loads((lat / "weights.json").read_text())["config"]["grid"] == GRID
    sidecars = sorted(lat.glob("*.weights.safetensors"))
    assert len(sidecars) == 2
    mtimes = [p.stat().st_mtime_ns for p in sidecars]
    assert _weights(lat, folder) == 0
    s = _last_json(capsys)
    assert (s["computed"], s["skipped"]) == (0, 6)
    assert [p.stat().st_mtime_ns for p in sidecars] == mtimes
    assert s["mean_coverage"] == pytest.approx(float((all_w > 0.55).float().mean()))
    # other settings: refused unless --overwrite, which recomputes everything
    assert _weights(lat, folder, "--w-bg", "0.2") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _weights(lat, folder, "--w-bg", "0.2", "--overwrite") == 0
    assert _last_json(capsys)["computed"] == 6
    assert float(LatentDataset(lat)[0]["weights"].min()) == pytest.approx(0.2)


def test_weights_stale_shard_recomputed_and_encoder_checked(folder, tmp_path, capsys, tiny_recon_config):
    lat = _copy(folder, tmp_path)
    assert _weights(lat, folder) == 0
    capsys.readouterr()
    # a shard rewritten (new sha in the index) makes its sidecar stale: only that shard is redone
    idx = [json.loads(line) for line in (lat / "index.jsonl").read_text().splitlines()]
    for r in idx:
        if r["shard"].endswith("00001.safetensors"):
            r["shard_sha256"] = "0" * 64
    (lat / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in idx))
    assert _weights(lat, folder) == 0
    assert (_last_json(capsys)["computed"]) == 2
    # no weights for the default encoder name (lrm-small ships none here) / another model's config
    assert main(["latents", "weights", str(lat), "--grid", "4", "--encoder", "lrm-small"]) == 1
    other = dataclasses.replace(tiny_recon_config, intermediate_size=32)
    save_reconstructor(build_reconstructor(other, encoder_id="lrm-small"), tmp_path / "other")
    assert main(["latents", "weights", str(lat), "--encoder", f"lrm-small:{tmp_path / 'other'}"]) == 1
    assert "latents were made by" in capsys.readouterr().err


def _linked_pngs(report: Path) -> list[Path]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    return [report.parent / link for link in links]


def test_inspect_report(folder, tmp_path, capsys):
    lat = _copy(folder, tmp_path)
    assert main(["latents", "stats", str(lat)]) == 0
    assert _weights(lat, folder) == 0
    args = ["latents", "inspect", str(lat), "--out", str(tmp_path / "rep"), "--n-objects", "2"]
    assert main([*args, "--sample", "0", "--render-size", "16", "--encoder", folder["enc"]]) == 0
    report = tmp_path / "rep" / "report.md"
    text = report.read_text()
    pngs = _linked_pngs(report)
    assert {p.name for p in pngs} == {"channels.png", "hist_raw.png", "hist_std.png", "objects.png"}
    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 50
    assert "| all |" in text and "raw inside" in text and "render from Zero123++" in text
    energy = json.loads((tmp_path / "rep" / "report.json").read_text())["energy"]
    ds = LatentDataset(lat)
    w = torch.stack([ds[i]["weights"] for i in range(6)])
    e = feature_energy(folder["planes"], w > 0.55)
    np.testing.assert_allclose(energy["raw"]["in_sum"], e["in_sum"], rtol=1e-6)
    assert np.array_equal(energy["raw"]["in_n"], e["in_n"])


def test_inspect_without_weights_or_render(folder, tmp_path):
    lat = _copy(folder, tmp_path)  # no stats file either: computed on the fly
    assert main(["latents", "inspect", str(lat), "--out", str(tmp_path / "r"), "--no-render"]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "No weights" in text and "computed on the fly" in text
    assert all(p.exists() for p in _linked_pngs(tmp_path / "r" / "report.md"))


def test_pca_rgb_and_energy_units():
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(3, 5, 6, 6, generator=g)
    planes[1, :, 2, 3] = planes[0, :, 1, 1]  # identical features -> identical colour
    rgb = pca_rgb(planes)
    assert rgb.shape == (3, 3, 6, 6) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    assert torch.allclose(rgb[1, :, 2, 3], rgb[0, :, 1, 1])
    x = torch.zeros(1, 3, 2, 2, 2)
    x[0, 0, :, 0, 0] = torch.tensor([3.0, 1.0])  # energy (9 + 1) / 2 = 5 at one texel of plane 0
    mask = torch.zeros(1, 3, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    e = feature_energy(x, mask)
    assert e["in_sum"].tolist() == [5.0, 0.0, 0.0] and e["in_n"].tolist() == [1.0, 0.0, 0.0]
    assert e["out_n"].tolist() == [3.0, 4.0, 4.0] and e["out_sum"].sum() == 0
