"""``triflow3d serve``: request checks, and the app launched on 127.0.0.1 driven through gradio_client."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="the web app needs the `serve` extra (gradio)")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from triflow3d.cli import build_parser  # noqa: E402
from triflow3d.errors import ConfigError  # noqa: E402
from triflow3d.export import ExportOptions  # noqa: E402
from triflow3d.pipeline import median_level, random_pipeline  # noqa: E402
from triflow3d.serve import (  # noqa: E402
    DEFAULT_HOST,
    Limits,
    ServeApp,
    ServeConfig,
    Session,
    check_upload,
    close_session,
    validate_request,
)

pytestmark = pytest.mark.filterwarnings(  # pandas 3 deprecations inside gradio's queue
    "ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated"
)
LIMITS = Limits(max_prompt_chars=40, max_upload_mb=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = random_pipeline()
    export = ExportOptions(
        resolution=16, threshold=median_level(pipe("calibration")[0]), frames=3, video_size=32, views_size=32
    )
    app = ServeApp(pipe, ServeConfig(limits=LIMITS, export=export))
    app.url = app.launch("127.0.0.1", free_port(), block=False, quiet=True)
    yield app
    app.close()
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app.url, verbose=False)


# --- request checks -------------------------------------------------------------------------------
def test_validate_request_accepts_and_normalises():
    req = validate_request("  a red\n chair ", 7.0, 25, 4, "heun", LIMITS)
    assert (req.prompt, req.seed, req.steps, req.cfg, req.sampler, req.notices) == (
        "a red chair", 7, 25, 4.0, "heun", ()
    )  # fmt: skip
    long = validate_request("word " * 30, 0, 1, 0, "euler", LIMITS)
    assert len(long.prompt) <= 40 and long.prompt.endswith("word") and "limit 40" in long.notices[0]


@pytest.mark.parametrize(
    "prompt, seed, steps, cfg, sampler, match",
    [
        ("", 0, 10, 4, "euler", "prompt is empty"),
        ("   \n", 0, 10, 4, "euler", "prompt is empty"),
        (None, 0, 10, 4, "euler", "prompt is empty"),
        ("a", -1, 10, 4, "euler", "seed"),
        ("a", 2**31, 10, 4, "euler", "seed"),
        ("a", 1.5, 10, 4, "euler", "seed"),
        ("a", 0, 0, 4, "euler", r"steps .*\[1, 200\]"),
        ("a", 0, 201, 4, "euler", "steps"),
        ("a", 0, "ten", 4, "euler", "steps"),
        ("a", 0, 10, 20.5, "euler", "guidance"),
        ("a", 0, 10, math.nan, "euler", "guidance"),
        ("a", 0, 10, 4, "rk4", "sampler"),
    ],
)
def test_validate_request_rejects(prompt, seed, steps, cfg, sampler, match):
    with pytest.raises(ConfigError, match=match):
        validate_request(prompt, seed, steps, cfg, sampler, LIMITS)


def test_check_upload(tmp_path):
    root = tmp_path / "uploads"
    root.mkdir()
    ok = root / "a.glb"
    ok.write_bytes(b"glTF" + b"\0" * 60)
    assert check_upload(str(ok), (".glb",), 1, root) == ok.resolve()
    outside = tmp_path / "b.glb"
    outside.write_bytes(b"glTF")
    for path, match in [
        (outside, "not an uploaded file"),  # a user-given path outside the upload folder is never opened
        (root / "../b.glb", "not an uploaded file"),
        (root / "missing.glb", "not an uploaded file"),
        (None, "no file"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_upload(path, (".glb",), 1, root)
    (root / "a.exe").write_bytes(b"MZ")
    with pytest.raises(ConfigError, match="unsupported file type .exe"):
        check_upload(root / "a.exe", (".glb", ".obj"), 1, root)
    with open(root / "big.glb", "wb") as f:
        f.truncate(2 * 2**20)
    with pytest.raises(ConfigError, match="over the 1 MB upload limit"):
        check_upload(root / "big.glb", (".glb",), 1, root)


def test_cli_defaults_to_localhost():
    args = build_parser("serve").parse_args(["serve"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 7860, None) and DEFAULT_HOST == "127.0.0.1"


def test_session_cleanup(tmp_path):
    session = Session.create(tmp_path)
    (session.new_folder("x")).mkdir()
    assert session.folder.parent == tmp_path and any(session.folder.iterdir())
    close_session(session)
    close_session(None)  # gradio calls it with whatever the state holds
    assert not session.folder.exists()


# --- the running app ------------------------------------------------------------------------------
def test_generate_through_the_http_api(app):
    import trimesh

    client = Client(app.url, verbose=False)  # a new browser session, whatever ran before
    before = set(app.root.glob("session-*"))
    glb, video, files, info, gallery = client.predict("a red chair", 3, 4, 2.5, "euler", api_name="/generate")
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.faces) > 50 and np.abs(mesh.vertices).max() <= 1.0 + 1e-5
    assert Path(video).suffix == ".mp4" and Path(video).stat().st_size > 0
    assert sorted(Path(f).name for f in files) == ["info.json", "mesh.glb", "mesh.obj", "mesh.ply"]
    assert "a red chair" in info and "seed 3" in info and "steps 4" in info and "cfg 2.5" in info
    assert [g["caption"] for g in gallery] == ["a red chair (seed 3)"]
    # the server side: one new session folder under the app's own root, holding the object's files
    (session,) = set(app.root.glob("session-*")) - before
    (folder,) = [p for p in session.iterdir() if p.is_dir()]
    assert {"mesh.glb", "turntable.mp4", "views.png", "info.json"} <= {p.name for p in folder.iterdir()}
    # same client = same session: the gallery grows; the same seed gives the same mesh
    again = client.predict("a red chair", 3, 4, 2.5, "euler", api_name="/generate")
    assert len(again[4]) == 2
    assert np.allclose(trimesh.load(again[0], force="mesh").vertices, mesh.vertices)


def test_gallery_click_shows_that_result(app):
    from types import SimpleNamespace

    *_, gallery, session = app.generate("a lamp", 1, 2, 3.0, "euler", None)
    *_, gallery, same = app.generate("a mug", 2, 2, 3.0, "euler", session)
    assert same is session and [c for _, c in gallery] == ["a lamp (seed 1)", "a mug (seed 2)"]
    glb, video, files, info = app.select(session, SimpleNamespace(index=0))
    assert "000-a-lamp-s1" in glb and video.endswith("turntable.mp4") and "a lamp" in info and len(files) == 4
    with pytest.raises(ConfigError, match="no longer available"):
        app.select(session, SimpleNamespace(index=2))


def test_generate_errors_are_messages(client):
    with pytest.raises(AppError, match="prompt is empty") as e:
        client.predict("   ", 0, 4, 3.0, "euler", api_name="/generate")
    assert "Traceback" not in str(e.value)
    with pytest.raises(AppError, match="200"):
        client.predict("a mug", 0, 500, 3.0, "euler", api_name="/generate")
    with pytest.raises(AppError, match="20"):
        client.predict("a mug", 0, 4, 25.0, "euler", api_name="/generate")
    with pytest.raises(AppError, match="seed"):
        client.predict("a mug", 2**31, 4, 3.0, "euler", api_name="/generate")


def test_long_prompt_is_cut_with_a_notice(client):
    info = client.predict("a very long prompt " * 10, 0, 2, 3.0, "euler", api_name="/generate")[3]
    assert "it was cut" in info and "limit 40" in info


def test_reconstruct_uploads(app, client, tmp_path):
    import trimesh

    box = tmp_path / "box.glb"
    trimesh.Scene(trimesh.creation.box()).export(box)
    glb, _, files, info, _, views = client.predict(None, handle_file(str(box)), api_name="/reconstruct")
    assert len(trimesh.load(glb, force="mesh").faces) > 0 and "reconstruction of box.glb" in info
    assert len(views) == 6 and "mesh.ply" in [Path(f).name for f in files]
    pngs = []
    for k in range(6):
        pngs.append(tmp_path / f"view{k}.png")
        Image.fromarray(np.full((24, 24, 3), 40 * k, np.uint8)).save(pngs[-1])
    out = client.predict([handle_file(str(p)) for p in pngs], None, api_name="/reconstruct")
    assert "reconstruction of 6 views" in out[3]
    bad = tmp_path / "notes.txt"
    bad.write_text("not a mesh")
    with pytest.raises(AppError, match="(?i)file type"):
        client.predict(None, handle_file(str(bad)), api_name="/reconstruct")
    with pytest.raises(AppError, match="exactly 6"):
        client.predict([handle_file(str(p)) for p in pngs[:2]], None, api_name="/reconstruct")
    with pytest.raises(AppError, match="either"):
        client.predict(None, None, api_name="/reconstruct")
    with pytest.raises(ConfigError, match="not an uploaded file"):  # a path the user typed is never opened
        app.reconstruct(None, str(box), None)


def test_close_removes_files_and_frees_the_port():
    pipe = random_pipeline()
    app = ServeApp(
        pipe, ServeConfig(export=ExportOptions(resolution=8, threshold=0.0, frames=1, video_size=16))
    )
    port = free_port()
    url = app.launch(port=port, block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    session = Session.create(app.root)
    app.close()
    assert not app.root.exists() and not session.folder.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
