"""Per-rank files of sharded stages: one naming scheme, one merge, readers that never drop a rank's rows."""

from __future__ import annotations

import json

from triflow3d.cli import main
from triflow3d.data import ranks
from triflow3d.data.views import MANIFEST, ViewsFolder
from triflow3d.render.views import collect_sources
from triflow3d.utils.io import append_jsonl, read_jsonl


def test_rank_file_names_and_listing(tmp_path):
    assert ranks.rank_file(tmp_path, "manifest.jsonl", 3).name == "manifest-r003.jsonl"
    assert ranks.rank_file(tmp_path, "index.jsonl", 0).name == "index-r000.jsonl"
    assert ranks.stage_file(tmp_path, "manifest.jsonl", 0, 1).name == "manifest.jsonl"
    for name in ("manifest-r001.jsonl", "manifest-r000.jsonl", "manifest-rank1.jsonl", "index-r000.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in ranks.rank_files(tmp_path, "manifest.jsonl")] == [
        "manifest-r000.jsonl",
        "manifest-r001.jsonl",
    ]


def test_merge_keeps_one_row_per_id_and_never_hides_an_ok_row(tmp_path):
    append_jsonl(ranks.rank_file(tmp_path, MANIFEST, 0), [
        {"id": "b", "status": "error", "n": 1}, {"id": "b", "status": "ok", "n": 2},
        {"id": "b", "status": "error", "n": 3},
    ])  # fmt: skip
    append_jsonl(
        ranks.rank_file(tmp_path, MANIFEST, 1), [{"id": "a", "status": "ok", "n": 4}, {"id": "a", "n": 5}]
    )
    rows = ranks.merge(tmp_path, MANIFEST)
    assert [(r["id"], r["n"]) for r in read_jsonl(tmp_path / MANIFEST)] == [("a", 5), ("b", 2)]
    assert rows == ranks.read_rows(tmp_path, MANIFEST)
    assert not ranks.merge_when_complete(tmp_path, MANIFEST, ["a", "b", "c"])  # c has no row yet


def test_sharded_shapes_are_merged_and_rendered_with_their_captions(tmp_path, capsys):
    """`shapes make` in two ranks: the last rank merges, and `render` reads every caption."""
    out = tmp_path / "shapes"
    base = ["shapes", "make", "--n", "3", "--split", "val", "--out", str(out), "--world-size", "2"]
    assert main([*base, "--rank", "0"]) == 0
    assert not (out / MANIFEST).exists()  # rank 1 has not run: nothing to merge yet
    before = {s.id: s.caption for s in collect_sources([out])}  # readers see the rank files already
    assert sorted(before) == ["val-000000", "val-000002"] and all(before.values())
    assert main([*base, "--rank", "1"]) == 0
    merged = read_jsonl(out / MANIFEST)
    assert [r["id"] for r in merged] == ["val-000000", "val-000001", "val-000002"]
    assert all(r["caption"] and r["attributes"] and r["split"] == "val" for r in merged)
    sources = collect_sources([out])
    assert [s.caption for s in sources] == [r["caption"] for r in merged]
    assert main(["shapes", "merge", "--out", str(out)]) == 0  # by hand: the same rows
    assert read_jsonl(out / MANIFEST) == merged


def test_views_folder_reads_unmerged_rank_manifests(tmp_path):
    for rank, ident in enumerate(("a", "b")):
        (tmp_path / ident).mkdir()
        (tmp_path / ident / "cameras.json").write_text(json.dumps({}))
        append_jsonl(
            ranks.rank_file(tmp_path, MANIFEST, rank), [{"id": ident, "status": "ok", "caption": ident}]
        )
    views = ViewsFolder(tmp_path)
    assert views.ids == ["a", "b"] and views.row("b")["caption"] == "b"
