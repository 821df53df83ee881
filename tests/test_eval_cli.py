"""``triflow3d eval`` on a tiny random pipeline: metrics, report, figures, JSON line, free-form prompts."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from triflow3d.cli import main
from triflow3d.errors import ConfigError
from triflow3d.evaluation.evaluate import (
    Bank,
    EvalConfig,
    PromptRow,
    Sample,
    category_distribution,
    load_prompts,
    object_records,
    summarize,
)
from triflow3d.pipeline import median_level
from triflow3d.shapes import CATEGORIES, sample_seed, sample_spec

SMALL = ["--points", "64", "--refs-per-category", "1", "--views", "2", "--image-size", "32",
         "--resolution", "16", "--recon-objects", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_pipeline) -> dict:
    pipe = tiny_pipeline()
    level = median_level(pipe("a chair", seed=0)[0])
    return {"dir": pipe.save_pretrained(tmp_path_factory.mktemp("m") / "tiny"), "threshold": level}


@pytest.fixture(scope="module")
def shapes_run(model, tmp_path_factory, monkeypatch_module) -> dict:
    out = tmp_path_factory.mktemp("eval") / "run"
    args = ["eval", "--model", str(model["dir"]), "--prompts", "shapes:test", "--n-prompts", "2",
            "--out", str(out), "--threshold", str(model["threshold"]), "--json", *SMALL]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the first run, whichever test asks first
        assert main(args) == 0
    return {"out": out, "args": args, "printed": printed.getvalue()}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.delenv("TRIFLOW3D_INCEPTION", raising=False)
    mp.delenv("TRIFLOW3D_CLIP", raising=False)
    mp.setenv("HF_HUB_CACHE", "/nonexistent-hf-cache")
    yield mp
    mp.undo()


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_eval_shapes_test(shapes_run):
    m = _last_json(shapes_run["printed"])
    out = shapes_run["out"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"]["n_generated"] == m["n_generated"] == 2
    for key in ("failure_rate", "overall", "per_category", "image", "reconstruction", "timing"):
        assert key in m
    for key in ("category_accuracy", "colour_accuracy", "chamfer", "fscore@0.02", "mmd", "cov", "1nna",
                "floater_share", "fragmented_share", "components_median"):  # fmt: skip
        assert key in m["overall"]
    assert 0.0 <= m["failure_rate"] <= 1.0
    want = {sample_spec(sample_seed("test", i), "test").category for i in range(2)}
    assert set(m["per_category"]) == want
    if m["n_failed"] < 2:  # the median-density level gives real meshes on the random field
        assert 0.0 <= m["overall"]["category_accuracy"] <= 1.0 and m["overall"]["chamfer"] > 0
    for k in ("fid", "kid", "clip_score", "clip_r_precision@1"):
        assert m["image"][k]["available"] is False and m["image"][k]["reason"]
    assert "CLIP model folder not found" in m["image"]["clip_score"]["reason"]
    rec = m["reconstruction"]
    assert rec["psnr"]["available"] and math.isfinite(rec["psnr"]["value"]) and 0 < rec["ssim"]["value"] <= 1
    report = (out / "report.md").read_text()
    assert "## Protocol" in report and "elevation 20 deg, FoV 30 deg" in report
    assert "Unavailable metrics" in report and "Inception" in report
    for name in ("grid.png", "per_category_category_accuracy.png"):
        assert (out / "figures" / name).is_file() and f"figures/{name}" in report
    assert len(list((out / "cache").glob("refs-*.npz"))) == 1
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2
    ceiling = m["ceiling"]["overall"]  # the round trip of each prompt's own shape, scored the same way
    assert ceiling["n"] == 2 and set(ceiling) == set(m["overall"]) - {"mmd", "cov", "1nna"}
    assert [json.loads(x)["row"] for x in (out / "ceiling.jsonl").read_text().splitlines()] == [0, 1]
    row = m["vs_ceiling"]["category_accuracy"]
    assert (
        row["model"] == m["overall"]["category_accuracy"] and row["ceiling"] == ceiling["category_accuracy"]
    )
    assert "## vs_ceiling" in report and "## ceiling" in report and "floater share" in report
    if m["n_failed"] < 2:
        assert 0.0 <= m["overall"]["floater_share"] <= 1.0 and m["overall"]["components_median"] >= 1


def test_eval_is_deterministic_and_reuses_cache(shapes_run, capsys):
    first = json.loads((shapes_run["out"] / "metrics.json").read_text())["metrics"]
    assert main(shapes_run["args"]) == 0
    again = _last_json(capsys.readouterr().out)
    for key in ("overall", "per_category", "reconstruction"):
        assert json.dumps(again[key], sort_keys=True) == json.dumps(first[key], sort_keys=True)
    assert len(list((shapes_run["out"] / "cache").glob("refs-*.npz"))) == 1


def test_eval_jsonl_free_form(model, tmp_path, capsys, monkeypatch_module):
    path = tmp_path / "prompts.jsonl"
    rows = [{"caption": "a small wooden boat with a sail"},
            {"caption": "a red chair", "attributes": {"category": "chair", "colour": "red"}}]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    args = ["eval", "--model", str(model["dir"]), "--prompts", str(path), "--out", str(out), "--json",
            "--threshold", str(model["threshold"]), "--n-per-prompt", "2", *SMALL[:-2], "0", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    m = _last_json(capsys.readouterr().out)
    assert m["n_prompts"] == 2 and m["n_generated"] == 4
    assert set(m["per_category"]) == {"chair"} and m["per_category"]["chair"]["n"] == 2
    assert m["overall"]["chamfer"] is None  # free-form prompts have no ground-truth shape
    assert m["reconstruction"]["psnr"]["available"] is False
    assert m["seen_vs_heldout"] == {}


def test_ceiling_and_recon_eval_share_one_scoring(model, tmp_path):
    """views_roundtrip (``recon eval``) on rendered test shapes gives exactly the eval's ceiling records."""
    from triflow3d.data.views import ViewsFolder
    from triflow3d.evaluation.evaluate import ceiling_samples, ceiling_tables, reference_bank, views_roundtrip
    from triflow3d.pipeline import TextTo3DPipeline
    from triflow3d.render import make_renderer

    assert main(["shapes", "make", "--n", "2", "--split", "test", "--out", str(tmp_path / "s")]) == 0
    assert main(["render", str(tmp_path / "s"), "--out", str(tmp_path / "v"), "--rig", "zero123pp",
                 "--size", "16"]) == 0  # fmt: skip
    recon = TextTo3DPipeline.from_pretrained(model["dir"]).reconstructor
    cfg = EvalConfig(points=64, refs_per_category=1, views=1, image_size=16, resolution=16,
                     threshold=model["threshold"])  # fmt: skip
    folder = ViewsFolder(tmp_path / "v")
    got = views_roundtrip(recon, folder, folder.ids, cfg, progress=False)
    rows, renderer = load_prompts("shapes:test", 2), make_renderer(cfg.render_backend)
    bank = reference_bank(cfg, renderer, None)
    want = ceiling_tables(
        object_records(ceiling_samples(recon, rows, cfg, renderer, False), rows, bank, cfg), ()
    )
    assert got["n"] == 2 and got["category_accuracy"] is not None and got["chamfer"] is None  # no truth
    same = ("n", "failure_rate", "category_accuracy", "colour_accuracy", "colour_accuracy_plain",
            "floater_share", "fragmented_share", "components_median")  # fmt: skip
    groups = [(got, want["overall"])] + [(got["seen_vs_heldout"][k], want[k]) for k in ("seen", "heldout")]
    assert [[g[k] for k in same] for g, _ in groups] == [[w[k] for k in same] for _, w in groups]


def test_freeform_prompt_set():
    """The committed free-form set: >= 60 prompts, every category, valid attributes, never the templates."""
    from triflow3d.evaluation.evaluate import FREEFORM_FILE
    from triflow3d.shapes import PALETTE
    from triflow3d.shapes.splits import is_heldout

    rows = load_prompts("freeform", 1000)
    assert len(rows) >= 60 and rows == load_prompts(str(FREEFORM_FILE), 1000)
    assert {r.attributes["category"] for r in rows} == set(CATEGORIES)
    assert {r.attributes["colour"] for r in rows} == set(PALETTE)
    assert all(r.attributes["heldout_combo"] == is_heldout(r.attributes["category"], r.attributes["colour"])
               for r in rows)  # fmt: skip
    assert len({r.caption for r in rows}) == len(rows)
    assert "never train" in FREEFORM_FILE.read_text().splitlines()[1].lower()
    # not in the caption templates' words: none equals a benchmark caption (checked on 20k train when written)
    bench = {
        sample_spec(sample_seed(s, i), s).caption
        for s, n in (("train", 1000), ("test", 300))
        for i in range(n)
    }
    assert not bench & {r.caption for r in rows}


def test_eval_unconditional(model, tmp_path, capsys, monkeypatch_module):
    out = tmp_path / "run"
    args = ["eval", "--model", str(model["dir"]), "--prompts", "unconditional", "--n-prompts", "3",
            "--out", str(out), "--json", "--threshold", str(model["threshold"]), *SMALL[:-2], "0", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    m = _last_json(capsys.readouterr().out)
    assert m["n_generated"] == 3 and "ceiling" not in m and m["per_category"] == {}
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in samples] == [("", 0), ("", 1), ("", 2)]
    d = m["distribution"]  # against the whole bank: 13 categories x 1 reference
    if m["n_failed"] < 3:
        assert (
            d["n_ref"] == len(CATEGORIES)
            and d["n_gen"] == 3 - m["n_failed"]
            and 1 <= d["categories_hit"] <= 3
        )
        assert 0.0 <= d["cov"] <= 1.0 and 0.0 <= d["1nna"] <= 1.0 and d["mmd"] > 0
    assert m["image"]["clip_score"]["available"] is False


def test_bad_prompt_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "a chair"}\n{"text": "no caption"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: .*caption"):
        load_prompts(str(bad), 10)
    bad.write_text('{"caption": "a dragon", "attributes": {"category": "dragon"}}\n')
    with pytest.raises(ConfigError, match="unknown category 'dragon'"):
        load_prompts(str(bad), 10)
    with pytest.raises(ConfigError, match="unknown split"):
        load_prompts("shapes:nope", 1)
    assert main(["eval", "--prompts", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"),
                 "--model", str(tmp_path / "nomodel")]) == 1  # fmt: skip


def test_shapes_prompts_include_heldout_and_truth():
    rows = load_prompts("shapes:test", 40)
    assert len(rows) == 40 and all(r.shape_seed is not None and r.split == "test" for r in rows)
    assert any(r.attributes["heldout_combo"] for r in rows) and not all(
        r.attributes["heldout_combo"] for r in rows
    )


def test_metric_maths_on_known_objects():
    """Exact copies of the bank classify perfectly, with zero MMD and full coverage."""
    rng = np.random.default_rng(0)
    cats = list(CATEGORIES)[:2]
    pts = rng.normal(size=(4, 32, 3)).astype(np.float32) + np.repeat([[0], [0], [5], [5]], 1, 0)[:, None]
    bank = Bank(pts, [cats[0], cats[0], cats[1], cats[1]], np.zeros((4, 1, 2, 2, 3), np.uint8), "k")
    rows = [PromptRow("x", {"category": c, "colour": "red", "pattern": "plain", "heldout_combo": h})
            for c, h in ((cats[0], False), (cats[1], True))]  # fmt: skip
    samples = [Sample(k // 2, "x", k, points=pts[k], colour="red" if k else "blue") for k in range(4)]
    samples.append(Sample(1, "x", 9, failure="empty (no vertices or faces)"))
    records = object_records(samples, rows, bank, EvalConfig(points=32))
    s = summarize(records, (0.02,))
    assert s["n"] == 5 and s["failure_rate"] == pytest.approx(0.2)
    assert s["category_accuracy"] == 1.0 and s["colour_accuracy"] == 0.75 and s["chamfer"] is None
    dist = category_distribution(samples, rows, bank)
    assert dist[cats[0]]["mmd"] == 0.0 and dist[cats[0]]["cov"] == 1.0 and dist[cats[0]]["n_gen"] == 2
    assert summarize([r for r in records if r["heldout_combo"]], ())["n"] == 3


def test_eval_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="points"):
        EvalConfig(points=0)
    with pytest.raises(ConfigError, match="unknown eval settings"):
        EvalConfig.from_dict({"nope": 1})
    assert EvalConfig.from_dict({"fscore_taus": [0.1]}).fscore_taus == (0.1,)


def test_cli_registered():
    from triflow3d.cli import COMMANDS

    assert COMMANDS["eval"][0] == "triflow3d.evaluation.cli" and "ablate" in COMMANDS
