"""The whole chain at a tiny size, through the command line: shapes -> render -> encode -> latents stats
-> latents weights -> train -> a self-contained model folder -> generate a GLB."""

from __future__ import annotations

import json

import pytest
import trimesh

from triflow3d.cli import main
from triflow3d.data.latents import STATS_FILE, LatentDataset, read_index


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_shapes_to_generated_glb(tmp_path, tiny_recon_config, capsys):
    pytest.importorskip("embreex", reason="the smoke run renders with the CPU ray caster")
    from triflow3d.encoders import build_reconstructor, save_reconstructor
    from triflow3d.pipeline import TextTo3DPipeline, median_level

    shapes, views, lat, run = (tmp_path / n for n in ("shapes", "views", "latents", "run"))
    assert main(["shapes", "make", "--n", "4", "--split", "train", "--out", str(shapes)]) == 0
    assert main(["render", str(shapes), "--out", str(views), "--rig", "zero123pp", "--size", "16",
                 "--backend", "raycast"]) == 0  # fmt: skip

    ckpt = tmp_path / "recon"
    recon = build_reconstructor(tiny_recon_config, encoder_id="lrm-small", seed=0).eval()
    save_reconstructor(recon, ckpt)
    encoder = f"lrm-small:{ckpt}"
    capsys.readouterr()
    assert main(["encode", str(views), "--out", str(lat), "--encoder", encoder, "--shard-size", "2"]) == 0
    assert _last_json(capsys)["encoded"] == 4
    rows = read_index(lat)
    assert len(rows) == 4 and all(r["caption"] and r["attributes"]["category"] for r in rows)  # from shapes

    assert main(["latents", "stats", str(lat)]) == 0
    assert (lat / STATS_FILE).is_file()
    assert main(["latents", "weights", str(lat), "--grid", "8", "--encoder", encoder]) == 0
    assert "weights" in LatentDataset(lat)[0]

    assert main(["train", "--preset", "tiny", "--latents", str(lat), "--out", str(run), "--steps", "3",
                 "--device", "cpu"]) == 0  # fmt: skip
    model = TextTo3DPipeline.from_pretrained(run, reconstructor=recon).save_pretrained(tmp_path / "model")

    level = median_level(TextTo3DPipeline.from_pretrained(model)("a red chair", seed=0, steps=2)[0])
    out = tmp_path / "generated"
    assert main(["generate", "a red chair", "--model", str(model), "--out", str(out), "--steps", "2",
                 "--resolution", "16", "--threshold", str(level), "--no-progress"]) == 0  # fmt: skip
    (glb,) = out.glob("*/mesh.glb")
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.faces) > 0
