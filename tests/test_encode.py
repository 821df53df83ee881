"""The encode stage and the latent shards: round trip, idempotence, crash safety, captions, ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from triflow3d.data import LatentDataset
from triflow3d.data import latents as lt
from triflow3d.encode import caption_for, encode_folder, load_captions
from triflow3d.errors import ConfigError
from triflow3d.recon.synthetic import write_views_folder

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class _Cfg:
    image_size: int = 16

    def to_dict(self) -> dict:
        return {"image_size": self.image_size}


class FakeEncoder(torch.nn.Module):
    """Duck-typed reconstructor: the triplane is a deterministic function of the images and cameras."""

    encoder_id = "fake"
    config = _Cfg()
    triplane_shape = (3, 2, 4, 4)

    def forward_planes(self, images: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        feats = torch.cat([images.mean((2, 3, 4)), cameras.mean(-1)], -1)  # (B, 2V)
        return feats.repeat(1, 8)[:, :96].reshape(b, 3, 2, 4, 4)


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("views")
    write_views_folder(root, list(range(5)), "zero123pp", 16)
    return root


def _encode(views, out, **kw):
    kw.setdefault("shard_size", 2)
    return encode_folder(FakeEncoder(), views, out, progress=False, **kw)


def test_round_trip_and_layout(views, tmp_path):
    s = _encode(views, tmp_path, dtype="fp32")
    assert (s.encoded, s.skipped, s.failed, s.shards) == (5, 0, 0, 3)
    assert s.merged["objects"] == 5
    info = json.loads((tmp_path / "encoder.json").read_text())
    assert info["triplane_shape"] == [3, 2, 4, 4] and info["dtype"] == "fp32" and info["encoder"] == "fake"
    ds = LatentDataset(tmp_path)
    assert len(ds) == 5
    item = ds[3]
    assert set(item) >= {"triplane", "caption", "attributes", "id", "views_dir"}
    assert item["triplane"].dtype == torch.float32 and item["triplane"].shape == (3, 2, 4, 4)
    from triflow3d.data.views import ViewsFolder

    ov = ViewsFolder(views).load(item["id"], 16)
    want = FakeEncoder().forward_planes(ov.images[None], ov.input_cameras[None])[0]  # encoders take RGBA
    assert torch.equal(item["triplane"], want)
    assert item["caption"].startswith("a ") and Path(item["views_dir"]) == (views / item["id"]).resolve()
    assert item["attributes"]["n"] >= 1
    rows = lt.read_jsonl(tmp_path / "index.jsonl")
    assert all(len(r["shard_sha256"]) == 64 for r in rows)
    assert LatentDataset(tmp_path, filter=lambda r: r["id"].endswith("1"))[0]["id"] == "sphere-00001"


def test_latents_and_views_move_together(views, tmp_path):
    """index rows name views folders relative to the latents folder; old absolute ones still read."""
    import shutil

    root = tmp_path / "project"
    shutil.copytree(views, root / "views")
    _encode(root / "views", root / "latents")
    assert lt.read_jsonl(root / "latents" / "index.jsonl")[0]["views_dir"] == "../views/sphere-00000"
    moved = tmp_path / "moved"
    root.rename(moved)
    item = LatentDataset(moved / "latents")[0]
    assert Path(item["views_dir"]) == (moved / "views" / "sphere-00000").resolve()
    assert (Path(item["views_dir"]) / "cameras.json").is_file()
    old = {"views_dir": "/data/views/sphere-00000"}  # written before relative paths
    assert lt.views_dir(moved / "latents", old) == "/data/views/sphere-00000"
    assert lt.views_dir(moved / "latents", {}) == ""


def test_fp16_storage(views, tmp_path):
    _encode(views, tmp_path, dtype="fp16")
    from safetensors import safe_open

    with safe_open(str(tmp_path / lt.shard_name(0, 0)), "pt") as f:
        assert f.get_tensor("triplanes").dtype == torch.float16
    assert LatentDataset(tmp_path)[0]["triplane"].dtype == torch.float32


def test_idempotent_rerun(views, tmp_path):
    _encode(views, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    s = _encode(views, tmp_path)
    assert (s.encoded, s.skipped, s.shards) == (0, 5, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_crash_leftovers_are_ignored_and_redone(views, tmp_path):
    _encode(views, tmp_path)
    # Simulate a crash: the last shard's index rows never landed (orphan shard), the index ends in a
    # torn line, a temp folder of a half-written shard remains, and a shard on disk is corrupted.
    idx = lt.rank_index_path(tmp_path, 0)
    rows = lt.read_jsonl(idx)
    keep = [r for r in rows if r["shard"] != lt.shard_name(0, 2)]
    idx.write_text("".join(json.dumps(r) + "\n" for r in keep) + '{"id": "torn')
    tmp = tmp_path / ".shard-r000-00003.safetensors.abc.tmp"
    tmp.mkdir()
    (tmp / "shard-r000-00003.safetensors").write_bytes(b"garbage")
    (tmp_path / lt.shard_name(0, 1)).write_bytes(b"corrupted")
    (tmp_path / "index.jsonl").unlink()
    s = _encode(views, tmp_path)
    assert s.skipped == 2 and s.encoded == 3  # shard 0 kept; shard 1 (bad sha) and 2 (orphan) redone
    ds = LatentDataset(tmp_path)
    assert sorted(r["id"] for r in ds.rows) == [f"sphere-{i:05d}" for i in range(5)]
    assert {r["shard"] for r in ds.rows}.isdisjoint({lt.shard_name(0, 1), lt.shard_name(0, 2)})
    assert s.merged["orphan_shards"] == [lt.shard_name(0, 1), lt.shard_name(0, 2)]
    assert all(ds[i]["triplane"].isfinite().all() for i in range(len(ds)))


def test_failures_recorded_and_retried(views, tmp_path):
    broken = tmp_path / "views"
    shutil.copytree(views, broken)
    (broken / "sphere-00002" / "rgba_004.png").unlink()
    out = tmp_path / "lat"
    s = _encode(broken, out)
    assert (
        s.failed == 1 and s.failures[0]["id"] == "sphere-00002" and "rgba_004.png" in s.failures[0]["error"]
    )
    assert s.merged == {"objects": 4, "failed": 1, "orphan_shards": []}
    shutil.copy(views / "sphere-00002" / "rgba_004.png", broken / "sphere-00002" / "rgba_004.png")
    s2 = _encode(broken, out)
    assert (s2.encoded, s2.skipped, s2.failed) == (1, 4, 0) and s2.merged["objects"] == 5


def test_two_ranks_merge_when_all_done(views, tmp_path):
    s0 = _encode(views, tmp_path, rank=0, world_size=2)
    assert s0.encoded == 3 and s0.merged is None and not (tmp_path / "index.jsonl").exists()
    s1 = _encode(views, tmp_path, rank=1, world_size=2)
    assert s1.encoded == 2 and s1.merged["objects"] == 5
    assert {r["shard"][:10] for r in LatentDataset(tmp_path).rows} == {"shard-r000", "shard-r001"}


def test_encoder_mismatch_and_missing_json(views, tmp_path):
    _encode(views, tmp_path, dtype="fp16")
    with pytest.raises(ConfigError, match="dtype"):
        _encode(views, tmp_path, dtype="fp32")
    with pytest.raises(ConfigError, match="encoder.json"):
        LatentDataset(tmp_path / "nowhere")
    info = json.loads((tmp_path / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps(info | {"triplane_shape": [3, 2, 8, 8]}))
    with pytest.raises(ConfigError, match="shape"):
        LatentDataset(tmp_path)[0]


def test_weights_sidecar_hook(views, tmp_path):
    _encode(views, tmp_path)
    name = lt.shard_name(0, 0)
    save_file(
        {"weights": torch.arange(2.0)[:, None].expand(2, 5).contiguous()},
        tmp_path / f"{name[:-12]}.weights.safetensors",
    )
    ds = LatentDataset(tmp_path)
    by_id = {ds[i]["id"]: ds[i] for i in range(len(ds))}
    assert torch.equal(by_id["sphere-00001"]["weights"], torch.ones(5))
    assert "weights" not in by_id["sphere-00004"]


def test_captions_files(tmp_path):
    cap3d = tmp_path / "Cap3D_automated_Objaverse.csv"
    cap3d.write_text('abc123,"A red chair, wooden"\nsphere-00001,a ball\n')
    caps = load_captions(cap3d)
    assert caps == {"abc123": "A red chair, wooden", "sphere-00001": "a ball"}
    headed = tmp_path / "c.csv"
    headed.write_text("uid,caption\nx,y\n")
    assert load_captions(headed) == {"x": "y"}
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"id": "a", "caption": "one"}\n{"uid": "b", "text": "two"}\n')
    assert load_captions(jl) == {"a": "one", "b": "two"}
    assert (
        caption_for({"id": "q", "source": "/data/abc123.glb", "caption": "m"}, caps) == "A red chair, wooden"
    )
    assert caption_for({"id": "q", "caption": "m"}, caps) == "m"
    assert caption_for({"id": "q"}, None) == ""
    bad = tmp_path / "bad.csv"
    bad.write_text("onlyid\n")
    with pytest.raises(ConfigError, match="bad.csv"):
        load_captions(bad)


def test_captions_override_and_missing_count(views, tmp_path):
    caps = tmp_path / "caps.csv"
    caps.write_text("sphere-00000,custom text\n")
    s = encode_folder(FakeEncoder(), views, tmp_path / "lat", captions=load_captions(caps), progress=False)
    rows = {r["id"]: r for r in LatentDataset(tmp_path / "lat").rows}
    assert rows["sphere-00000"]["caption"] == "custom text" and s.no_caption == 0
    bare = tmp_path / "bare"
    shutil.copytree(views, bare)
    (bare / "manifest.jsonl").unlink()
    s2 = encode_folder(FakeEncoder(), bare, tmp_path / "lat2", progress=False)
    assert s2.no_caption == 5 and s2.encoded == 5


def _tiny_checkpoint(path: Path, tiny: dict) -> Path:
    encoders = pytest.importorskip("triflow3d.encoders")
    pytest.importorskip("triflow3d.triplane.field")
    cfg = encoders.resolve_config("lrm-small", tiny)
    encoders.save_reconstructor(encoders.build_reconstructor(cfg, encoder_id="lrm-small"), path)
    return path


def test_torchrun_two_processes(views, tmp_path, tiny_recon):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not available")
    ckpt = _tiny_checkpoint(tmp_path / "ckpt", tiny_recon)
    out = tmp_path / "lat"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "triflow3d.cli", "encode", str(views),
           "--encoder", f"lrm-small:{ckpt}", "--out", str(out), "--shard-size", "2", "--dtype", "fp32"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "index.jsonl").exists()  # the rank that appended last saw everything and merged
    ds = LatentDataset(out)
    assert len(ds) == 5 and {r["shard"][:10] for r in ds.rows} == {"shard-r000", "shard-r001"}
    assert ds[0]["triplane"].shape == (3, 4, 8, 8)
