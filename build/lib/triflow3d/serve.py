"""``triflow3d serve``: a local web app (gradio) for text -> 3D and for the frozen reconstructor.

Tab "Text to 3D": prompt, seed / steps / guidance / sampler -> an interactive GLB viewer, a turntable MP4,
GLB / OBJ / PLY downloads and a gallery of this session's results. Tab "Reconstruct": six Zero123++ rig
views (images) or one asset file (rendered to those six views) -> what the encoder reconstructs.

Safety: bound to 127.0.0.1 unless ``--host`` says otherwise, no share link, analytics off, no web fonts;
requests are queued and run one at a time; every input is checked (ranges, prompt length, upload type by
extension, size, and that the file is one of gradio's own uploads: no user-given path is ever opened);
bad input is shown as a ``gr.Error`` message, never a traceback. Each browser session writes into its own
temporary folder under a per-app root, removed when the session ends and when the app closes.
The generation function is exposed over gradio's HTTP API as ``/generate`` (also ``/reconstruct``).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import html
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from triflow3d import conventions as cv
from triflow3d.errors import ConfigError, TriflowError
from triflow3d.export import ExportOptions, export_generated, write_info

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
try:
    import gradio as gr
except ImportError:  # the optional `serve` extra is not installed: ServeApp says how to get it
    gr = None

if TYPE_CHECKING:
    from triflow3d.encoders import TriplaneReconstructor
    from triflow3d.pipeline import Generated, TextTo3DPipeline

log = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
SEED_MAX = 2**31 - 1
SAMPLERS: tuple[str, ...] = ("euler", "heun")
ASSET_EXTENSIONS: tuple[str, ...] = (".glb", ".obj", ".ply", ".stl", ".off")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OUTPUT_FORMATS: tuple[str, ...] = ("glb", "obj", "ply", "mp4", "png")
DOWNLOADS: tuple[str, ...] = ("mesh.glb", "mesh.obj", "mesh.ply", "info.json")
SYSTEM_FONTS = (["ui-sans-serif", "system-ui", "sans-serif"], ["ui-monospace", "monospace"])


@dataclass(frozen=True)
class Limits:
    """What a request may ask for; anything else is refused with a message."""

    max_prompt_chars: int = 300  # longer prompts are cut at a word boundary, with a notice
    steps: tuple[int, int] = (1, 200)
    cfg: tuple[float, float] = (0.0, 20.0)
    max_upload_mb: int = 50


@dataclass(frozen=True)
class ServeConfig:
    """App settings: limits, how results are exported, and the request queue."""

    limits: Limits = Limits()
    export: ExportOptions = ExportOptions(frames=24, fps=12, video_size=256, views_size=128)
    recon_resolution: int | None = None  # marching cubes of reconstructions (None: export.resolution)
    queue_size: int = 16  # waiting requests beyond this are refused ("queue is full")
    title: str = "TriFlow3D"


@dataclass(frozen=True)
class Request:
    """One checked generation request."""

    prompt: str
    seed: int
    steps: int
    cfg: float
    sampler: str
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    """One exported object of a session (its folder holds the files)."""

    folder: Path
    caption: str
    info: str

    def file(self, name: str) -> str | None:
        p = self.folder / name
        return str(p) if p.is_file() else None

    def downloads(self) -> list[str]:
        return [f for f in map(self.file, DOWNLOADS) if f]


# --- request checks (pure) ------------------------------------------------------------------------
def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer() or not lo <= number <= hi:
        raise ConfigError(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}")
    return int(number)


def _real(name: str, value: Any, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not lo <= number <= hi:  # also refuses NaN
        raise ConfigError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return number


def clean_prompt(prompt: Any, max_chars: int) -> tuple[str, tuple[str, ...]]:
    """Stripped prompt (cut at a word boundary past ``max_chars``) and notices; ConfigError when empty."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the prompt is empty: describe the object to generate")
    text = " ".join(prompt.split())  # newlines and runs of spaces -> one space
    if len(text) <= max_chars:
        return text, ()
    cut = text[: max_chars + 1].rsplit(" ", 1)[0] if " " in text[:max_chars] else text[:max_chars]
    notice = f"the prompt had {len(text)} characters; it was cut to the first {len(cut)} (limit {max_chars})"
    return cut.rstrip(), (notice,)


def validate_request(prompt: Any, seed: Any, steps: Any, cfg: Any, sampler: Any, limits: Limits) -> Request:
    """Check one generation request against ``limits`` -> Request (ConfigError naming the bad value)."""
    text, notices = clean_prompt(prompt, limits.max_prompt_chars)
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return Request(
        prompt=text,
        seed=_integer("seed", seed, 0, SEED_MAX),
        steps=_integer("steps", steps, *limits.steps),
        cfg=_real("guidance", cfg, *limits.cfg),
        sampler=sampler,
        notices=notices,
    )


def upload_folder() -> Path:
    """Where gradio keeps uploaded files (GRADIO_TEMP_DIR or <tmp>/gradio)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()).resolve()


def check_upload(path: Any, extensions: tuple[str, ...], max_mb: int, root: Path | None = None) -> Path:
    """An uploaded file gradio handed us -> its resolved path, after checking that it lies inside gradio's
    upload folder (``root``), has one of ``extensions`` and is at most ``max_mb`` MiB."""
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ConfigError("no file was uploaded")
    p = Path(path).resolve()
    name = Path(path).name
    if not p.is_relative_to(root or upload_folder()) or not p.is_file():
        raise ConfigError(f"{name}: not an uploaded file")
    if p.suffix.lower() not in extensions:
        raise ConfigError(
            f"{name}: unsupported file type {p.suffix or '(none)'}; expected {', '.join(extensions)}"
        )
    size = p.stat().st_size
    if size > max_mb * 2**20:
        raise ConfigError(f"{name}: {size / 2**20:.1f} MB is over the {max_mb} MB upload limit")
    if size == 0:
        raise ConfigError(f"{name}: the file is empty")
    return p


# --- sessions -------------------------------------------------------------------------------------
@dataclass
class Session:
    """One browser session: a private temporary folder and the results made in it."""

    folder: Path
    results: list[Result] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path) -> Session:
        return cls(Path(tempfile.mkdtemp(prefix="session-", dir=root)))

    def new_folder(self, name: str) -> Path:
        from triflow3d.generate_cli import slug

        return self.folder / f"{len(self.results):03d}-{slug(name)}"

    def gallery(self) -> list[tuple[str, str]]:
        return [(r.file("views.png"), r.caption) for r in self.results if r.file("views.png")]

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def close_session(session: Session | None) -> None:
    """gr.State delete callback: the session ended (tab closed, expired) or the app is closing."""
    if isinstance(session, Session):
        session.close()


def _user_errors(fn):
    """Show TriflowError (and gradio's own) as a gr.Error message; log anything else, show no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except TriflowError as e:
            raise gr.Error(html.escape(str(e)), print_exception=False) from None
        except Exception as e:
            log.exception("request failed")
            raise gr.Error(
                f"internal error ({type(e).__name__}); see the server log", print_exception=False
            ) from None

    return wrapper


def _caption(gen: Generated) -> str:
    return f"{gen.prompt} (seed {gen.seed})" if gen.settings else gen.prompt


def _info_text(gen: Generated, faces: int, seconds: float, notices: list[str]) -> str:
    """Markdown summary of one result (user text escaped)."""
    sampling = [f"seed {gen.seed}", *(f"{k} {v}" for k, v in gen.settings.items())] if gen.settings else []
    stats = " | ".join([*sampling, f"{faces} faces", f"{seconds:.1f} s"])
    return "\n\n".join(
        [f"**{html.escape(gen.prompt)}**", stats, *(f"note: {html.escape(n)}" for n in notices)]
    )


def _gallery(label: str, columns: int, height: int) -> gr.Gallery:
    return gr.Gallery(label=label, columns=columns, height=height, object_fit="contain", allow_preview=False)


# --- the app --------------------------------------------------------------------------------------
class ServeApp:
    """The web app around a pipeline: ``build()`` the gradio Blocks, ``launch()`` it, ``close()`` it."""

    def __init__(self, pipe: TextTo3DPipeline, config: ServeConfig = ServeConfig()):
        if gr is None:
            raise ConfigError("the web app needs gradio: pip install -e '.[serve]'")
        self.pipe, self.config = pipe, config
        self.root = Path(tempfile.mkdtemp(prefix="triflow3d-serve-"))
        self.lock = threading.Lock()  # the queue runs one request at a time; this guards direct calls too
        self.demo: gr.Blocks | None = None
        atexit.register(self.cleanup)

    @property
    def reconstructor(self) -> TriplaneReconstructor:
        return self.pipe.reconstructor

    # --- handlers -------------------------------------------------------------------------------
    def generate(
        self, prompt: str, seed: float, steps: float, cfg: float, sampler: str, session: Session | None
    ):
        """One prompt -> (glb, mp4, downloads, info, gallery, session)."""
        req = validate_request(prompt, seed, steps, cfg, sampler, self.config.limits)
        session = session if isinstance(session, Session) else Session.create(self.root)
        start = time.perf_counter()
        with self.lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gen = self.pipe(req.prompt, seed=req.seed, steps=req.steps, cfg=req.cfg, sampler=req.sampler)[0]
        notices = [*req.notices, *(str(w.message) for w in caught)]
        result = self._export(gen, session, req.prompt, notices, start)
        return self._outputs(result, session)

    def reconstruct(self, images: list[str] | None, asset: str | None, session: Session | None):
        """Six rig views or one asset file -> (glb, mp4, downloads, info, gallery, input views, session)."""
        from triflow3d.pipeline import Generated

        images, start = [p for p in images or [] if p], time.perf_counter()
        if bool(images) == bool(asset):
            raise ConfigError("upload either the six rig views or one 3D file")
        views, name = self._rig_views(images) if images else self._render_asset(asset)
        session = session if isinstance(session, Session) else Session.create(self.root)
        device = next(self.reconstructor.parameters()).device
        cams = self._rig().input_cameras()[None].to(device, views.dtype)  # (1, 6, 16)
        with self.lock, torch.inference_mode():
            planes = (
                self.reconstructor.forward_planes(views[None].to(device), cams)[0].float().cpu()
            )  # (3, C, R, R)
        gen = Generated(f"reconstruction of {name}", 0, planes, self.reconstructor, {})
        cfg = self.config
        opts = dataclasses.replace(cfg.export, resolution=cfg.recon_resolution or cfg.export.resolution)
        result = self._export(gen, session, gen.prompt, [], start, opts)
        shown = [
            (np.asarray(v.permute(1, 2, 0).mul(255).round().byte()), f"view {k}") for k, v in enumerate(views)
        ]
        return (*self._outputs(result, session)[:-1], shown, session)

    def select(self, session: Session | None, evt: gr.SelectData):
        """A gallery click -> that result's viewer, video, downloads and info."""
        if not isinstance(session, Session) or not 0 <= evt.index < len(session.results):
            raise ConfigError("that result is no longer available")
        return self._outputs(session.results[evt.index], session)[:4]

    # --- helpers --------------------------------------------------------------------------------
    def _export(
        self, gen: Generated, session: Session, name: str, notices: list[str], start: float, opts=None
    ):
        folder = session.new_folder(f"{name}-s{gen.seed}")
        with self.lock:
            out = export_generated(gen, folder, OUTPUT_FORMATS, opts or self.config.export)
        seconds = time.perf_counter() - start
        notices = notices + out.warnings
        write_info(folder, gen, out, seconds=round(seconds, 3), notices=notices)
        result = Result(folder, _caption(gen), _info_text(gen, out.faces, seconds, notices))
        session.results.append(result)
        return result

    @staticmethod
    def _outputs(result: Result, session: Session):
        return (
            result.file("mesh.glb"),
            result.file("turntable.mp4"),
            result.downloads(),
            result.info,
            session.gallery(),
            session,
        )

    @staticmethod
    def _rig():
        from triflow3d.cameras import zero123pp_rig

        return zero123pp_rig()

    def _rig_views(self, images: list[str]) -> tuple[torch.Tensor, str]:
        """Six uploaded images in rig order -> (6, 4, S, S) RGBA in [0, 1] (images without alpha: opaque)."""
        from triflow3d.data.views import load_rgba

        if len(images) != len(cv.ZERO123PP_AZIMUTHS_DEG):
            raise ConfigError(f"upload exactly {len(cv.ZERO123PP_AZIMUTHS_DEG)} rig views, got {len(images)}")
        size, lim = int(self.reconstructor.config.image_size), self.config.limits
        paths = [check_upload(p, IMAGE_EXTENSIONS, lim.max_upload_mb) for p in images]
        rgba = np.stack([load_rgba(p, size) for p in paths])  # (6, 4, S, S) uint8
        return torch.from_numpy(rgba).float() / 255.0, f"{len(paths)} views"

    def _render_asset(self, asset: str) -> tuple[torch.Tensor, str]:
        """One uploaded asset file -> its six rig views (6, 4, S, S) RGBA, as the render stage makes them."""
        from triflow3d.assets import load_asset_isolated, normalize
        from triflow3d.render import make_renderer

        lim = self.config.limits
        path = check_upload(asset, ASSET_EXTENSIONS, lim.max_upload_mb)
        loaded = load_asset_isolated(path, timeout_s=60.0, max_bytes=lim.max_upload_mb * 2**20)
        size = int(self.reconstructor.config.image_size)
        with self.lock:
            rgba = make_renderer("auto").render(normalize(loaded), self._rig(), size).rgba
        return torch.from_numpy(np.ascontiguousarray(rgba)).permute(0, 3, 1, 2).float(), path.name

    # --- gradio ---------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        """The gradio Blocks: two tabs, per-session state, a queue of one worker."""
        lim = self.config.limits
        with gr.Blocks(title=self.config.title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
            session = gr.State(None, delete_callback=close_session)
            gr.Markdown(
                f"# {self.config.title}\nText to 3D with a frozen reconstruction model as latent encoder."
            )
            with gr.Tab("Text to 3D"):
                self._text_tab(session, lim)
            with gr.Tab("Reconstruct"):
                self._recon_tab(session, lim)
        demo.queue(default_concurrency_limit=1, max_size=self.config.queue_size)
        self.demo = demo
        return demo

    def _result_panel(self) -> list:
        with gr.Column(scale=2):
            viewer = gr.Model3D(
                label="3D model (drag to rotate)", clear_color=(1.0, 1.0, 1.0, 1.0), height=420
            )
            video = gr.Video(label="turntable", format=None, autoplay=True, loop=True, height=300)
        with gr.Column(scale=1):
            info = gr.Markdown()
            files = gr.File(label="downloads", file_count="multiple", interactive=False)
        return [viewer, video, files, info]

    def _text_tab(self, session, lim: Limits) -> None:
        s = self.pipe.settings
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", placeholder="a red chair with four legs", lines=2,
                                    max_length=lim.max_prompt_chars * 4, elem_id="prompt")  # fmt: skip
                seed = gr.Number(
                    0, label=f"seed (0 to {SEED_MAX})", precision=0
                )  # checked by validate_request
                steps = gr.Slider(
                    *lim.steps, value=min(max(s.steps, lim.steps[0]), lim.steps[1]), step=1, label="steps"
                )
                cfg = gr.Slider(*lim.cfg, value=min(s.cfg, lim.cfg[1]), step=0.1, label="guidance (CFG)")
                sampler = gr.Radio(
                    list(SAMPLERS), value=s.sampler if s.sampler in SAMPLERS else "euler", label="sampler"
                )
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            outputs = self._result_panel()
        gallery = _gallery("this session", 8, 180)
        button.click(
            _user_errors(self.generate), [prompt, seed, steps, cfg, sampler, session], [*outputs, gallery, session],
            api_name="generate", concurrency_limit=1,
        )  # fmt: skip
        prompt.submit(
            _user_errors(self.generate), [prompt, seed, steps, cfg, sampler, session], [*outputs, gallery, session],
            api_visibility="private",
        )  # fmt: skip
        gallery.select(_user_errors(self.select), [session], outputs, api_visibility="private")

    def _recon_tab(self, session, lim: Limits) -> None:
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown("Upload the **six Zero123++ rig views** in rig order, or **one 3D file**.")
                images = gr.File(
                    label="six rig views", file_count="multiple", file_types=list(IMAGE_EXTENSIONS)
                )
                asset = gr.File(label="or one 3D file", file_types=list(ASSET_EXTENSIONS))
                button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
                inputs = _gallery("encoder input views", 3, 240)
            outputs = self._result_panel()
        gallery = _gallery("this session", 8, 180)
        button.click(
            _user_errors(self.reconstruct), [images, asset, session], [*outputs, gallery, inputs, session],
            api_name="reconstruct", concurrency_limit=1,
        )  # fmt: skip

    def launch(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True, **kwargs) -> str:
        """Serve on ``host:port`` (no share link); returns the local URL. ``block=False`` returns at once."""
        demo = self.demo or self.build()
        theme = gr.themes.Default(font=SYSTEM_FONTS[0], font_mono=SYSTEM_FONTS[1])  # no Google Fonts requests
        _, url, _ = demo.launch(
            server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
            max_file_size=f"{self.config.limits.max_upload_mb}mb", show_error=False, theme=theme,
            prevent_thread_lock=not block, **kwargs,
        )  # fmt: skip
        return url

    def close(self) -> None:
        """Stop the server and remove every session's files."""
        if self.demo is not None:
            self.demo.close(verbose=False)
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- CLI ------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", default=DEFAULT_HOST, help="interface to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 7860)")
    p.add_argument("--model", type=Path, help="model folder (default: the shipped triflow-small)")
    p.add_argument("--text-encoder-path", type=Path, help="local folder of a clip-l / t5 text encoder")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--resolution", type=int, default=128, help="marching-cubes grid (default 128)")
    p.add_argument("--threshold", type=float, help="density iso-level (default: the encoder's)")
    p.add_argument("--video-size", type=int, default=256, help="turntable size, a multiple of 16")
    p.add_argument("--frames", type=int, default=24, help="turntable frames")
    p.add_argument("--max-upload-mb", type=int, default=50, help="largest accepted upload")
    p.add_argument("--queue-size", type=int, default=16, help="most requests waiting in the queue")
    p.add_argument(
        "--random", action="store_true", help="tiny random weights instead of a model (UI smoke tests)"
    )


def config_from_args(args: argparse.Namespace, threshold: float | None = None) -> ServeConfig:
    if args.video_size < 16 or args.video_size % 16:
        raise ConfigError(f"--video-size must be a positive multiple of 16, got {args.video_size}")
    if args.resolution < 8 or args.frames < 1 or args.max_upload_mb < 1 or args.queue_size < 1:
        raise ConfigError("--resolution must be >= 8 and --frames, --max-upload-mb, --queue-size >= 1")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    export = ExportOptions(
        resolution=args.resolution, threshold=args.threshold if args.threshold is not None else threshold,
        frames=args.frames, video_size=args.video_size, views_size=min(args.video_size, 256),
    )  # fmt: skip
    return ServeConfig(
        limits=Limits(max_upload_mb=args.max_upload_mb), export=export, queue_size=args.queue_size
    )


def run(args: argparse.Namespace) -> int:
    from triflow3d.pipeline import TextTo3DPipeline
    from triflow3d.utils.device import resolve_device

    config_from_args(args)  # fail on bad options before loading anything
    if args.random:
        from triflow3d.pipeline import median_level, random_pipeline

        pipe = random_pipeline()
        threshold = median_level(pipe("calibration")[0])
    else:
        device = resolve_device(args.device)
        pipe = TextTo3DPipeline.from_pretrained(args.model, device, text_encoder_path=args.text_encoder_path)
        threshold = None
    app = ServeApp(pipe, config_from_args(args, threshold))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the app", args.host)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` also removes the session files
    try:
        app.launch(args.host, args.port, block=True)
    finally:
        app.close()
    return 0
