"""End to end in headless Chromium: type a prompt, click Generate, see the 3D viewer draw the GLB.

Chromium is Debian's package (``scripts/install_browser.sh``), driven over the Chrome DevTools Protocol
with ``websocket-client``; no test tool downloads a browser. Skips with a message when either is missing.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="the web app needs the `serve` extra (gradio)")
websocket = pytest.importorskip("websocket", reason="the browser test drives Chromium with websocket-client")
from PIL import Image  # noqa: E402

from triflow3d.export import ExportOptions  # noqa: E402
from triflow3d.pipeline import median_level, random_pipeline  # noqa: E402
from triflow3d.serve import ServeApp, ServeConfig  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated"
)
# The flags this machine needs (no GPU, a closed network); SwiftShader gives WebGL without a GPU.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--window-size=1280,1400",
    "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
)  # fmt: skip


def find_chromium() -> str | None:
    for name in (os.environ.get("TRIFLOW3D_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := check():
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


class Page:
    """The smallest CDP client: one page target, synchronous commands."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # skip events until our answer arrives
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, js: str):
        out = self.call("Runtime.evaluate", expression=js, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{js}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def rect(self, selector: str) -> dict | None:
        """Viewport rectangle of the first element matching ``selector`` (None when absent or empty)."""
        js = f"(() => {{const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
        js += " const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height};})()"
        r = self.eval(js)
        return r if r and r["width"] > 0 and r["height"] > 0 else None

    def click(self, selector: str) -> None:
        r = self.rect(selector)
        x, y = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, clip: dict) -> np.ndarray:
        shot = self.call("Page.captureScreenshot", format="png", clip={**clip, "scale": 1})
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium not found: run scripts/install_browser.sh (Debian package `chromium`)")
    return path


@pytest.fixture(scope="module")
def app():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = random_pipeline()
    export = ExportOptions(
        resolution=24, threshold=median_level(pipe("calibration")[0]), frames=3, video_size=32, views_size=48
    )
    app = ServeApp(pipe, ServeConfig(export=export))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.url = app.launch("127.0.0.1", port, block=False, quiet=True)
    yield app
    app.close()
    torch.set_num_threads(old)


@pytest.fixture
def page(chromium, app, tmp_path):
    profile = tmp_path / "profile"  # a fresh, empty profile every run
    proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", app.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.is_file() and port_file.read_text().strip(), 20, "Chromium to start")
        port = port_file.read_text().split()[0]

        def page_target():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                return next(
                    (t for t in json.load(r) if t["type"] == "page" and "webSocketDebuggerUrl" in t), None
                )

        page = Page(wait_for(page_target, 10, "the page target")["webSocketDebuggerUrl"])
        yield page
        page.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_type_prompt_generate_and_view(page, app):
    wait_for(
        lambda: page.eval("document.readyState") == "complete" and page.rect("#prompt textarea"),
        30,
        "the app",
    )
    time.sleep(1.0)  # let the front end attach its event handlers
    page.eval("document.querySelector('#prompt textarea').focus()")
    page.call("Input.insertText", text="a small red chair")
    assert page.eval("document.querySelector('#prompt textarea').value") == "a small red chair"
    page.click("#generate")

    # the downloads list names the GLB once the request finished, and the server wrote it
    links = "[...document.querySelectorAll('a')].map(a => a.textContent + ' ' + a.href).join('\\n')"
    wait_for(lambda: "mesh.glb" in (page.eval(links) or ""), 40, "the result (mesh.glb download)")
    # other tests of this module may have generated in their own sessions of the shared app
    glbs = [p for p in app.root.glob("session-*/*/mesh.glb") if "a-small-red-chair" in p.parent.name]
    assert len(glbs) == 1 and glbs[0].stat().st_size > 1000

    # the 3D viewer's WebGL canvas is laid out and, after a moment to draw, is not blank
    canvas = wait_for(
        lambda: (r := page.rect("canvas")) and r["width"] > 100 and r, 20, "the model viewer canvas"
    )
    spread = wait_for(lambda: _drawn(page, canvas), 15, "the viewer to draw the mesh", every=0.5)
    assert spread > 5.0
    if out := os.environ.get("TRIFLOW3D_BROWSER_ARTIFACTS"):  # keep what the browser showed (CI artifacts)
        Path(out).mkdir(parents=True, exist_ok=True)
        size = page.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        full = page.screenshot({"x": 0, "y": 0, "width": size[0], "height": size[1]})
        Image.fromarray(full).save(Path(out) / "serve_generate.png")
    errors = page.eval("[...document.querySelectorAll('.toast-body')].map(e => e.textContent).join(' ')")
    assert not errors, errors


def _drawn(page: Page, canvas: dict) -> float | None:
    """Pixel spread of the canvas region of a screenshot when it shows more than the flat white
    background (some pixels clearly darker), else None."""
    pixels = page.screenshot(canvas).astype(np.float32)  # (H, W, 3)
    covered = (pixels.min(axis=-1) < 200).mean()
    return float(pixels.std()) if pixels.std() > 5.0 and covered > 0.01 else None


def test_session_folder_is_private(app):
    """Each session writes into its own folder under the app's temporary root, which other users cannot
    list, and closing the session removes it (runs with or without the browser test before it)."""
    glb, *_, session = app.generate("a blue mug", 2, 2, 3.0, "euler", None)
    other = app.generate("a red chair", 3, 2, 3.0, "euler", None)[-1]  # a new browser session
    assert session.folder != other.folder
    for s in (session, other):
        assert s.folder.parent == app.root and s.folder.name.startswith("session-")
        assert stat.S_IMODE(s.folder.stat().st_mode) == 0o700
    assert Path(glb).is_file() and Path(glb).resolve().is_relative_to(session.folder.resolve())
    assert stat.S_IMODE(app.root.stat().st_mode) == 0o700
    session.close()
    assert not session.folder.exists() and other.folder.is_dir()
