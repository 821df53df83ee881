"""The batch rule of ``shapes make``, ``encode`` and ``generate`` (``render``'s is in test_render.py):
every failed input is reported, the first failure stops the run unless --keep-going, and the exit status
is 1 whenever any input failed."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from triflow3d.cli import main
from triflow3d.errors import AssetError
from triflow3d.recon.synthetic import write_views_folder


def test_shapes_make(tmp_path, monkeypatch, capsys):
    import triflow3d.shapes.cli as shapes_cli

    build = shapes_cli.build_asset
    calls = []

    def flaky(spec):
        calls.append(spec)
        if len(calls) == 2:
            raise ValueError("no room for the handle")
        return build(spec)

    monkeypatch.setattr(shapes_cli, "build_asset", flaky)
    assert main(["shapes", "make", "--n", "4", "--split", "val", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "failed: val-" in err and "no room" in err and "2 input(s) not attempted" in err
    assert len(calls) == 2
    calls.clear()
    argv = ["shapes", "make", "--n", "4", "--split", "val", "--out", str(tmp_path / "b"), "--keep-going"]
    assert main(argv) == 1 and len(calls) == 4
    assert "1 failed" in capsys.readouterr().out


class _Encoder(torch.nn.Module):
    encoder_id = "fake"
    config = SimpleNamespace(image_size=16, to_dict=lambda: {"image_size": 16})
    triplane_shape = (3, 2, 4, 4)

    def forward_planes(self, images, cameras):
        return images.mean((1, 2, 3, 4))[:, None].repeat(1, 96).reshape(-1, 3, 2, 4, 4)


def test_encode(tmp_path, monkeypatch, capsys):
    import triflow3d.encoders as encoders

    views = tmp_path / "views"
    write_views_folder(views, list(range(4)), "zero123pp", 16)
    (views / "sphere-00001" / "rgba_003.png").unlink()
    monkeypatch.setattr(encoders, "load_reconstructor", lambda *a, **kw: _Encoder())
    monkeypatch.setattr(encoders, "parse_encoder_spec", lambda spec: (spec, None))
    common = ["encode", str(views), "--batch", "1", "--encoder", "fake"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "failed: sphere-00001" in err and "2 input(s) not attempted" in err
    assert main([*common, "--out", str(tmp_path / "b"), "--keep-going"]) == 1
    assert '"encoded": 3' in capsys.readouterr().out
    shutil.copy(views / "sphere-00000" / "rgba_003.png", views / "sphere-00001" / "rgba_003.png")
    assert main([*common, "--out", str(tmp_path / "b")]) == 0  # the retry finishes the folder


def test_generate(tmp_path, monkeypatch, capsys):
    import triflow3d.generate_cli as generate_cli

    class Pipe:
        settings = SimpleNamespace(batch_size=8)

        def __call__(self, prompts, seeds, **kw):
            return [SimpleNamespace(prompt=p, seed=s) for p, s in zip(prompts, seeds)]

    exported = []

    def export(out, k, gen, *args):
        exported.append(k)
        if gen.prompt == "a void":
            raise AssetError("<generated>", "the mesh is empty (the field never crosses the threshold)")

    monkeypatch.setattr(generate_cli.TextTo3DPipeline, "from_pretrained", lambda *a, **kw: Pipe())
    monkeypatch.setattr(generate_cli.dataclasses, "replace", lambda s, **kw: s)
    monkeypatch.setattr(generate_cli, "_export_one", export)
    argv = ["generate", "a chair", "a void", "a lamp", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 1 and exported == [0, 1]
    err = capsys.readouterr().err
    assert "failed: prompt 2 'a void'" in err and "1 input(s) not attempted" in err
    exported.clear()
    assert main([*argv, "--keep-going"]) == 1 and exported == [0, 1, 2]
    assert main(["generate", "a chair", "--out", str(tmp_path), "--no-progress"]) == 0


@pytest.mark.parametrize("command", [["render"], ["shapes", "make"], ["encode"], ["generate"]])
def test_every_batch_command_documents_keep_going(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "--keep-going" in capsys.readouterr().out
