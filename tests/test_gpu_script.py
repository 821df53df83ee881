"""The rehearsal of scripts/gpu_train_shipped.sh: the same script, tiny, on the CPU, end to end and again.

It runs what a GPU slot runs (data on several processes, the resident training loops, the text table that
stands in for MiniLM there, export, both evaluations, packing under the return limits), so a slot is never
lost to a crash; the second call finds every stage done and only packs again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from triflow3d.models.text_encoder import FakeTextEncoder
from triflow3d.models.text_table import save_text_table
from triflow3d.shapes.generate import sample_spec
from triflow3d.shapes.splits import sample_seed

ROOT = Path(__file__).parents[1]
TINY_LRM = dict(
    encoder_feat_dim=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    patch_size=8, image_size=16, transformer_dim=32, transformer_layers=1, transformer_heads=2,
    triplane_low_res=4, triplane_high_res=8, triplane_dim=4, rendering_samples_per_ray=8,
)  # fmt: skip
N_TRAIN, N_TEST = 6, 2


def captions(split: str, n: int) -> list[str]:
    return [sample_spec(sample_seed(split, i), split).caption for i in range(n)]


def run_script(tmp: Path, table: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(tmp / "out"), "PYTHON": sys.executable, "GTS_WORK": str(tmp / "work"),
           "GTS_DEVICE": "cpu", "GTS_NPROC": "2", "GTS_N_TRAIN": str(N_TRAIN), "GTS_N_TEST": str(N_TEST),
           "GTS_SIZE": "16", "GTS_LRM_CONFIG": json.dumps(TINY_LRM), "GTS_LRM_S": "30", "GTS_LRM_STEPS": "3",
           "GTS_LRM_BATCH": "2", "GTS_LRM_RAYS": "64", "GTS_LRM_WARMUP": "2", "GTS_LRM_OCC": "64",
           "GTS_LRM_ARGS": "--sup-size 16 --occ-samples 256 --loop resident", "GTS_TEXT": "table",
           "GTS_TEXT_TABLE": str(table), "GTS_FLOW_PRESET": "tiny", "GTS_FLOW_STEPS": "3", "GTS_FLOW_BATCH": "4",
           "GTS_FLOW_WARMUP": "2", "GTS_FLOW_S": "30", "GTS_FLOW_ARGS": "--loop resident --compile off",
           "GTS_EVAL_PROMPTS": "2", "GTS_EVAL_RES": "16", "GTS_EVAL_REFS": "1", "GTS_EVAL_POINTS": "64",
           "GTS_EVAL_RECON": "1", "GTS_EVAL_VIEWS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}  # fmt: skip
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train_shipped.sh")], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def results(tmp: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp / "out" / "results.jsonl").read_text().splitlines()]


def test_gpu_script_rehearsal_on_the_cpu(tmp_path):
    pytest.importorskip("embreex")
    table = save_text_table(FakeTextEncoder(dim=32), captions("train", N_TRAIN) + captions("test", N_TEST),
                            tmp_path / "table.safetensors", kind="fake")  # fmt: skip
    first = run_script(tmp_path, table)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stages = {r["stage"]: r for r in results(tmp_path) if "stage" in r}
    names = ("data", "lrm", "lrm_export", "latents", "flow", "eval_lrm", "flow_export", "eval_flow")
    assert all(stages[n]["rc"] == 0 for n in names), stages
    rows = {k: v for r in results(tmp_path) for k, v in r.items() if k in ("lrm_step", "flow_step", "psnr")}
    assert rows["lrm_step"] == 3 and rows["flow_step"] == 3 and rows["psnr"] > 0
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == ["logs.tar.gz", "lrm-small-gpu.tar", "results.jsonl", "triflow-small-gpu.tar.part-aa"]
    assert all(p.stat().st_size < 16 * 2**20 for p in (tmp_path / "out").iterdir())

    # what comes back loads on the CPU: the reconstructor, and the generator with its real (fake) encoder
    back = tmp_path / "back"
    for tar in ("lrm-small-gpu.tar", "triflow-small-gpu.tar.part-aa"):
        with tarfile.open(tmp_path / "out" / tar) as t:
            t.extractall(back, filter="data")
    from triflow3d.encoders import load_reconstructor
    from triflow3d.pipeline import TextTo3DPipeline

    recon = load_reconstructor(f"lrm-small:{back / 'lrm-small-gpu'}")
    pipe = TextTo3DPipeline.from_pretrained(back / "triflow-small-gpu", reconstructor=recon)
    assert pipe.text_encoder.name == "fake-32-0" and pipe.config["text_encoder"]["path"] is None
    assert "eval_flow" in json.loads((back / "triflow-small-gpu" / "eval.json").read_text().splitlines()[-1])
    assert pipe.sample(["a red chair"], [0], pipe.settings).isfinite().all()

    again = run_script(tmp_path, table)  # every stage finished: nothing is redone
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already") == len(names)
