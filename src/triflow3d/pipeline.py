"""Text -> 3D: ``TextTo3DPipeline`` (text encoder + TriFlow + LatentNormalizer + frozen reconstructor).

Sampling (STYLE C2 step 7): prompts are encoded (each on its own, so an embedding never depends on the
other prompts of a batch), the pooled vector is centred when the model was trained so; noise comes from
one seeded CPU generator per prompt (``flow.sampling.get_noise``); ``flow.sampling.denoise`` integrates
t = 1 -> 0 with batched classifier-free guidance against the empty prompt; ``LatentNormalizer`` maps the
result back to a raw triplane. The frozen reconstructor's field then gives meshes and renders
(``Generated``).

A model folder (``save_pretrained`` / ``from_pretrained``) is a TriFlow model folder of
``triflow3d.models.model_folder`` (``config.json`` + weights; EMA weights when the folder has them) plus:

    config.json["sampling"]        default steps / cfg / sampler / shift / batch_size
    config.json["reconstructor"]   {"ref": NAME} (a named, shipped reconstructor) or
                                   {"bundled": "reconstructor"}
    reconstructor/                 model.safetensors + config.json of a bundled reconstructor
    model_card.md                  optional, copied through
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from triflow3d import conventions as cv
from triflow3d.encoders import TriplaneReconstructor, build_reconstructor, load_reconstructor, read_checkpoint
from triflow3d.encoders.loading import WEIGHTS_DIR, finalize, load_weights, save_reconstructor
from triflow3d.encoders.reconstructor import ReconstructorConfig
from triflow3d.errors import CheckpointError, ConfigError, TriflowError
from triflow3d.flow.sampling import METHODS, denoise, get_noise, get_schedule
from triflow3d.latents import LatentNormalizer
from triflow3d.models import model_folder as mf
from triflow3d.models.text_encoder import (
    CachedTextEncoder,
    FakeTextEncoder,
    HFTextEncoder,
    MiniLMTextEncoder,
    TextEmbedding,
    TextEncoder,
    embed_rows,
)
from triflow3d.models.text_table import TextTableEncoder, open_text_encoder
from triflow3d.models.triflow import TRIFLOW_PRESETS, TriFlow
from triflow3d.utils.io import atomic_path

DEFAULT_MODEL_DIR = WEIGHTS_DIR / "triflow-small"
RECONSTRUCTOR_DIR, MODEL_CARD = "reconstructor", "model_card.md"
RENDERERS = ("volume", "mesh")


@dataclass(frozen=True)
class SamplerSettings:
    """Sampling defaults of a model (``config.json["sampling"]``); every call may override them."""

    steps: int = 25  # Euler steps (research/probe-flow-cpu.md: 25 steps, CFG 4)
    cfg: float = 4.0  # classifier-free guidance scale s: v = v_u + s (v_c - v_u); 1 = no guidance
    sampler: str = "euler"  # "euler" | "heun"
    shift: float = 1.0  # SD3 time shift of the schedule (> 1: more steps at high noise)
    batch_size: int = 8  # prompts per model batch (CFG doubles it)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"sampling steps must be >= 1, got {self.steps}")
        if self.sampler not in METHODS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; expected one of {METHODS}")
        if not self.shift > 0:
            raise ConfigError(f"time shift must be > 0, got {self.shift}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.cfg >= 0:
            raise ConfigError(f"cfg scale must be >= 0, got {self.cfg}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplerSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


# --- text encoder <-> config ------------------------------------------------------------------------
def text_encoder_spec(encoder: TextEncoder) -> dict[str, Any]:
    """What ``config.json["text_encoder"]`` records to rebuild ``encoder``: name, kind, dim, max_length."""
    inner = encoder.encoder if isinstance(encoder, CachedTextEncoder) else encoder
    spec: dict[str, Any] = {
        "name": encoder.name,
        "dim": int(encoder.dim),
        "max_length": int(encoder.max_length),
    }
    if isinstance(inner, FakeTextEncoder):
        spec |= {"kind": "fake", "seed": inner.seed}
    elif isinstance(inner, MiniLMTextEncoder):
        spec |= {"kind": "minilm", "normalize": inner.normalize}
    elif isinstance(inner, HFTextEncoder):
        spec |= {"kind": inner.kind}
    elif isinstance(inner, TextTableEncoder):  # the table stands in for the encoder that made it
        spec |= {"kind": inner.kind, "path": None}  # path None: the encoder's default weights elsewhere
        spec |= {"normalize": inner.normalize} if inner.normalize is not None else {}
    return spec


def _text_kind(spec: dict[str, Any], train_config: dict[str, Any]) -> str:
    if spec.get("kind"):
        return str(spec["kind"])
    if train_config.get("text_encoder"):
        return str(train_config["text_encoder"])
    name = str(spec.get("name", ""))
    if name.startswith("fake-"):
        return "fake"
    if name.startswith("minilm"):
        return "minilm"
    return name.partition(":")[0]


def build_text_encoder(
    config: dict[str, Any], device: torch.device | str = "cpu", path: str | Path | None = None
) -> TextEncoder:
    """The frozen text encoder a checkpoint config names (``path``: local folder for clip-l / t5)."""
    spec, train = config.get("text_encoder") or {}, config.get("train_config") or {}
    kind = _text_kind(spec, train)
    if kind == "fake":
        m = re.fullmatch(r"fake-(\d+)-(\d+)", str(spec.get("name", "")))
        dim = int(spec.get("dim") or (m and m.group(1)) or config["triflow_params"]["text_dim"])
        seed = int(spec.get("seed", m.group(2) if m else 0))
        kw = {"max_length": int(spec["max_length"])} if spec.get("max_length") else {}
        return FakeTextEncoder(dim=dim, seed=seed, device=device, **kw)
    kw = {"max_length": int(spec["max_length"])} if spec.get("max_length") else {}
    if kind == "minilm" and "normalize" in spec:
        kw["normalize"] = bool(spec["normalize"])
    recorded = spec["path"] if "path" in spec else train.get("text_encoder_path")  # None: the default weights
    return open_text_encoder(kind, path or recorded, device, **kw)


# --- checks -------------------------------------------------------------------------------------------
def check_components(
    model: TriFlow,
    normalizer: LatentNormalizer,
    text_encoder: TextEncoder,
    reconstructor: TriplaneReconstructor,
) -> None:
    """CheckpointError naming both sides when the four components do not fit together."""
    p = model.params
    want = (cv.NUM_PLANES, p.plane_channels, p.plane_res, p.plane_res)
    if tuple(reconstructor.triplane_shape) != want:
        raise CheckpointError(
            f"reconstructor {reconstructor.encoder_id!r} makes triplanes "
            f"{tuple(reconstructor.triplane_shape)}, "
            f"but the TriFlow model expects {want}"
        )
    if normalizer.n_channels != p.plane_channels:
        raise CheckpointError(
            f"normaliser has {normalizer.n_channels} channels, the model {p.plane_channels}"
        )
    if normalizer.encoder_id and normalizer.encoder_id != reconstructor.encoder_id:
        raise CheckpointError(
            f"latent statistics are of encoder {normalizer.encoder_id!r}, "
            f"but the reconstructor is {reconstructor.encoder_id!r}"
        )
    if int(text_encoder.dim) != p.text_dim:
        raise CheckpointError(
            f"text encoder {text_encoder.name!r} has width {text_encoder.dim}, "
            f"the model expects text_dim {p.text_dim}"
        )


def _check_config(config: dict[str, Any], text_encoder: TextEncoder, recon: TriplaneReconstructor, src: str):
    """The checkpoint's recorded encoder id, triplane shape and text encoder against the loaded parts."""
    enc = config.get("encoder") or {}
    if enc.get("encoder") and enc["encoder"] != recon.encoder_id:
        raise CheckpointError(
            f"{src}: model was trained on encoder {enc['encoder']!r}, "
            f"the reconstructor is {recon.encoder_id!r}"
        )
    shape = [int(s) for s in enc.get("triplane_shape") or []]
    if shape and shape != list(recon.triplane_shape):
        raise CheckpointError(
            f"{src}: model was trained on triplanes {shape}, "
            f"the reconstructor makes {list(recon.triplane_shape)}"
        )
    want = (config.get("text_encoder") or {}).get("name")
    if want and want != text_encoder.name:
        raise CheckpointError(
            f"{src}: model was trained with text encoder {want!r}, got {text_encoder.name!r}"
        )


def load_bundled_reconstructor(folder: Path, device: torch.device | str = "cpu") -> TriplaneReconstructor:
    """A reconstructor saved by ``save_reconstructor`` (any config, any encoder id), strictly loaded."""
    state_dict, saved = read_checkpoint(folder)
    if saved is None:
        raise CheckpointError(f"{folder}: bundled reconstructor has no config.json")
    if saved.get("conventions_version", cv.CONVENTIONS_VERSION) != cv.CONVENTIONS_VERSION:
        raise CheckpointError(f"{folder}: saved under conventions v{saved['conventions_version']}")
    model = build_reconstructor(
        ReconstructorConfig.from_dict(saved), saved.get("encoder_id", "custom"), "meta"
    )
    load_weights(model, state_dict, str(folder))
    return finalize(model, torch.float32, device)


def _clean_prompts(prompts: str | list[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ConfigError("no prompts given")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ConfigError(f"prompt {i} is empty; describe the object to generate")
    return [p.strip() for p in prompts]


def _seeds(seed: int | list[int], n: int) -> list[int]:
    """One seed per prompt: an int gives seed, seed + 1, ...; a list must have one per prompt."""
    if isinstance(seed, int | np.integer):
        return [int(seed) + k for k in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ConfigError(f"got {len(seeds)} seeds for {n} prompts")
    return seeds


# --- the result ---------------------------------------------------------------------------------------
@dataclass
class Generated:
    """One generated object: its raw (denormalised) triplane and the frozen field that decodes it."""

    prompt: str
    seed: int
    triplane: Tensor  # (3, C, R, R) raw, float32, CPU
    reconstructor: TriplaneReconstructor = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)  # steps, cfg, sampler, shift
    seconds: float = 0.0  # sampling time (its share of the batch)

    @property
    def encoder_id(self) -> str:
        return self.reconstructor.encoder_id

    @property
    def device(self) -> torch.device:
        return next(self.reconstructor.synthesizer.parameters()).device

    def planes(self) -> Tensor:  # (1, 3, C, R, R) on the reconstructor's device
        return self.triplane[None].to(self.device)

    @torch.no_grad()
    def query_rgb(self, xyz: np.ndarray) -> np.ndarray:
        """Field colour at world points (P, 3) -> (P, 3) float in [0, 1]."""
        pts = torch.as_tensor(np.asarray(xyz, dtype=np.float32), device=self.device)[None]
        return self.reconstructor.query(self.planes(), pts)["rgb"][0].clamp(0, 1).cpu().numpy()

    @torch.no_grad()
    def to_mesh(
        self, resolution: int = 128, threshold: float | None = None, decimate: int | float | None = None
    ):
        """Marching-cubes mesh (trimesh, vertex colours, z-up world units); ``threshold`` None = the
        encoder's default level; ``decimate``: target face count (int) or kept fraction (float < 1)."""
        kw = {} if threshold is None else {"threshold": float(threshold)}
        mesh = self.reconstructor.extract_mesh(self.planes(), resolution, **kw)
        if decimate is not None and len(mesh.faces):
            from triflow3d.triplane.mesh import decimate_mesh

            mesh = decimate_mesh(mesh, decimate)
        return mesh

    @torch.no_grad()
    def render(self, cameras25: Tensor, size: int = 256, deterministic: bool = True) -> dict[str, Tensor]:
        """Volume-render render cameras (M, 25) -> rgb (M, 3, S, S), depth and alpha (M, 1, S, S)."""
        cams = cameras25 if cameras25.ndim == 3 else cameras25[None]
        out = self.reconstructor.render(
            self.planes(), cams.to(self.device), size, deterministic=deterministic
        )
        return {k: out[k][0].cpu() for k in ("rgb", "depth", "alpha")}

    def render_rig(self, rig, size: int, renderer: str = "volume", mesh=None, views_per_pass: int = 4):
        """Images of every camera of a ``cameras.Rig`` -> uint8 (N, S, S, 3) on white.

        ``volume``: the triplane field itself (slow on CPU); ``mesh``: rasterise ``mesh`` (extracted at
        resolution 128 when not given) with the asset renderer (fast, shows the exported mesh).
        """
        if renderer not in RENDERERS:
            raise ConfigError(f"unknown renderer {renderer!r}; expected one of {RENDERERS}")
        if renderer == "mesh":
            from triflow3d.render.meshes import render_mesh

            return render_mesh(self.to_mesh() if mesh is None else mesh, rig, size)
        cams = rig.render_cameras()  # (N, 25)
        parts = [
            self.render(cams[i : i + views_per_pass], size)["rgb"]
            for i in range(0, len(cams), views_per_pass)
        ]
        rgb = torch.cat(parts).clamp(0, 1).permute(0, 2, 3, 1)  # (N, S, S, 3)
        return (rgb * 255).round().to(torch.uint8).numpy()

    def turntable(
        self,
        n_frames: int = 36,
        size: int = 256,
        renderer: str = "volume",
        mesh=None,
        elevation: float | None = None,
    ) -> np.ndarray:
        """``n_frames`` views orbiting the object (InstantMesh's video cameras) -> uint8 (N, S, S, 3)."""
        from triflow3d.cameras import orbit_rig

        elev = cv.RENDER_ELEVATION_DEG if elevation is None else elevation
        return self.render_rig(orbit_rig(n_frames, elev), size, renderer, mesh)

    def views(self, size: int = 256, renderer: str = "volume", mesh=None) -> np.ndarray:
        """The six Zero123++ rig views -> uint8 (6, S, S, 3)."""
        from triflow3d.cameras import zero123pp_rig

        return self.render_rig(zero123pp_rig(), size, renderer, mesh)


# --- the pipeline -------------------------------------------------------------------------------------
class TextTo3DPipeline:
    """Prompts -> ``Generated`` objects. Build from parts (tests, notebooks) or ``from_pretrained``."""

    def __init__(
        self,
        model: TriFlow,
        normalizer: LatentNormalizer,
        text_encoder: TextEncoder,
        reconstructor: TriplaneReconstructor,
        text_center: Tensor | None = None,
        settings: SamplerSettings = SamplerSettings(),
        config: dict[str, Any] | None = None,
        reconstructor_ref: str | None = None,
        model_card: str | None = None,
        autocast: torch.dtype | None = None,
    ):
        check_components(model, normalizer, text_encoder, reconstructor)
        self.model = model.eval().requires_grad_(False)
        self.device = next(model.parameters()).device
        self.normalizer = normalizer.to(self.device)
        self.text_encoder = text_encoder
        self.reconstructor = reconstructor.eval().requires_grad_(False)
        self.text_center = None if text_center is None else text_center.float().to(self.device)
        self.settings = settings
        self.config = dict(config or {})
        self.reconstructor_ref = reconstructor_ref  # a named, shipped reconstructor (saved by reference)
        self.model_card = model_card
        # e.g. torch.bfloat16: the TriFlow forward runs under autocast; the ODE state stays float32
        self.autocast = autocast

    # --- loading / saving --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: torch.device | str = "cpu",
        *,
        text_encoder: TextEncoder | None = None,
        text_encoder_path: str | Path | None = None,
        reconstructor: TriplaneReconstructor | None = None,
        autocast: torch.dtype | None = None,
    ) -> TextTo3DPipeline:
        """Load a model folder or a training run folder (its latest checkpoint; None: the shipped
        ``weights/triflow-small``); EMA weights when present."""
        folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
        if not folder.is_dir():
            hint = (
                " (the shipped default model is not installed; pass a model folder)" if path is None else ""
            )
            raise CheckpointError(f"{folder}: model folder not found{hint}")
        if (folder / "checkpoints").is_dir():  # a training run folder means its latest checkpoint
            folder = mf.resolve_checkpoint(folder)
        try:
            loaded = mf.load_model(folder, device=device)  # EMA weights, else model.safetensors
        except (KeyError, TypeError, RuntimeError) as e:  # bad config keys, mis-shaped weights
            raise CheckpointError(f"{folder}: malformed model folder ({type(e).__name__}: {e})") from None
        config = loaded.config
        recon, ref = reconstructor, None
        if recon is None:
            recon, ref = _load_reconstructor(folder, config, device)
        encoder = text_encoder or build_text_encoder(config, device, text_encoder_path)
        _check_config(config, encoder, recon, str(folder))
        card = folder / MODEL_CARD
        return cls(
            loaded.model, loaded.normalizer, encoder, recon, loaded.text_center,
            SamplerSettings.from_dict(config.get("sampling")), config, ref,
            card.read_text() if card.is_file() else None, autocast,
        )  # fmt: skip

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a self-contained model folder atomically (see the module docstring)."""
        config = self.checkpoint_config()
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            mf.write_weights(tmp / mf.WEIGHTS, self.model, self.normalizer, self.text_center)
            if self.reconstructor_ref is None:
                save_reconstructor(self.reconstructor, tmp / RECONSTRUCTOR_DIR)
            mf.write_config(tmp, config)
            if self.model_card:
                (tmp / MODEL_CARD).write_text(self.model_card)
        return Path(directory)

    def checkpoint_config(self) -> dict[str, Any]:
        """config.json of this pipeline: the source config updated with the components actually held."""
        config = copy.deepcopy(self.config)
        recon = {"ref": self.reconstructor_ref} if self.reconstructor_ref else {"bundled": RECONSTRUCTOR_DIR}
        encoder = {
            "encoder": self.reconstructor.encoder_id,
            "triplane_shape": list(self.reconstructor.triplane_shape),
        }
        config |= {
            "format": mf.FORMAT,
            "conventions_version": cv.CONVENTIONS_VERSION,
            "triflow_params": mf.params_dict(self.model.params),
            "text_encoder": text_encoder_spec(self.text_encoder),
            "normalizer": self.normalizer.config(),
            "encoder": encoder,
            "sampling": dataclasses.asdict(self.settings),
            "reconstructor": recon,
        }  # fmt: skip
        return config

    # --- sampling ----------------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Each prompt encoded alone (batch-independent), padded together, pooled vector centred."""
        rows = embed_rows(self.text_encoder, list(prompts), chunk=1)
        return TextEmbedding.from_rows(rows).to(self.device).centred(self.text_center)

    def conditions(self, prompts: list[str], cfg: float) -> tuple[TextEmbedding, TextEmbedding | None]:
        """The prompts' embeddings and, when guided (``cfg`` != 1), the empty prompt's, one row per prompt."""
        cond = self.encode(prompts)
        if cfg == 1.0:
            return cond, None
        u = self.encode([""])
        return cond, TextEmbedding(
            *(t.expand(len(prompts), *t.shape[1:]) for t in (u.tokens, u.mask, u.pooled))
        )

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], settings: SamplerSettings) -> Tensor:
        """Raw triplanes (B, 3, C, R, R) float32 for one batch of prompts and seeds."""
        p = self.model.params
        shape = (cv.NUM_PLANES, p.plane_channels, p.plane_res, p.plane_res)
        x = get_noise(seeds, shape, device=self.device)  # (B, 3, C, R, R): seed i -> row i, on any device
        cond, uncond = self.conditions(prompts, settings.cfg)
        amp = torch.autocast(
            self.device.type, self.autocast or torch.float32, enabled=self.autocast is not None
        )
        with amp:
            x0 = denoise(
                self.model, x, get_schedule(settings.steps, settings.shift), settings.cfg,
                cond.as_kwargs(), None if uncond is None else uncond.as_kwargs(), settings.sampler,
            )  # fmt: skip
        return self.normalizer.denormalize(x0.float())

    def __call__(
        self,
        prompts: str | list[str],
        seed: int | list[int] = 0,
        steps: int | None = None,
        cfg: float | None = None,
        sampler: str | None = None,
        shift: float | None = None,
        batch_size: int | None = None,
        callback=None,
    ) -> list[Generated]:
        """Generate one object per prompt. ``seed``: an int gives prompt k the seed ``seed + k``, a list
        one seed per prompt; a (prompt, seed) pair gives the same object whatever else is in the batch.
        ``callback(done, total)`` is called after each batch (progress bars)."""
        prompts = _clean_prompts(prompts)
        over = dict(steps=steps, cfg=cfg, sampler=sampler, shift=shift, batch_size=batch_size)
        return self._generate(prompts, _seeds(seed, len(prompts)), over, callback)

    def unconditional(
        self,
        n: int,
        seed: int | list[int] = 0,
        steps: int | None = None,
        sampler: str | None = None,
        shift: float | None = None,
        batch_size: int | None = None,
        callback=None,
    ) -> list[Generated]:
        """``n`` objects without a prompt. Training replaces a caption by the empty caption with probability
        ``cfg_dropout`` (``train.trainer``), so the null condition is the encoded empty prompt (centred like
        every prompt), exactly the unconditional branch of CFG; there is no guidance (cfg 1). Seeds as in
        ``__call__``; ``Generated.prompt`` is ""."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ConfigError(f"unconditional sampling needs n >= 1 objects, got {n!r}")
        over = dict(steps=steps, cfg=1.0, sampler=sampler, shift=shift, batch_size=batch_size)
        return self._generate([""] * int(n), _seeds(seed, int(n)), over, callback)

    def _generate(self, prompts: list[str], seeds: list[int], over: dict, callback) -> list[Generated]:
        """Batches of ``sample`` with the model's settings updated by the non-None values of ``over``."""
        settings = dataclasses.replace(self.settings, **{k: v for k, v in over.items() if v is not None})
        info = {k: getattr(settings, k) for k in ("steps", "cfg", "sampler", "shift")}
        out: list[Generated] = []
        for i in range(0, len(prompts), settings.batch_size):
            batch, bseeds = prompts[i : i + settings.batch_size], seeds[i : i + settings.batch_size]
            start = time.perf_counter()
            planes = self.sample(batch, bseeds, settings).cpu()
            each = (time.perf_counter() - start) / len(batch)
            out += [
                Generated(p, s, x, self.reconstructor, info, each) for p, s, x in zip(batch, bseeds, planes)
            ]
            if callback is not None:
                callback(len(out), len(prompts))
        return out


def _load_reconstructor(
    folder: Path, config: dict[str, Any], device: torch.device | str
) -> tuple[TriplaneReconstructor, str | None]:
    """The bundled reconstructor, else the named one the config refers to (its shipped weights)."""
    spec = config.get("reconstructor") or {}
    if spec.get("bundled"):
        return load_bundled_reconstructor(folder / spec["bundled"], device), None
    name = spec.get("ref") or (config.get("encoder") or {}).get("encoder")
    if not name:
        raise CheckpointError(
            f"{folder}: {mf.CONFIG} names no reconstructor (no 'reconstructor' or 'encoder')"
        )
    try:
        return load_reconstructor(name, device=device), name
    except TriflowError as e:
        raise CheckpointError(f"{folder}: cannot load its reconstructor {name!r}: {e}") from None


# --- tiny random components (smoke runs, UI tests, benchmarks; never results) -------------------------
RANDOM_TEXT_DIM = 32
RANDOM_RECONSTRUCTOR = dict(  # overrides of lrm-small: planes 3 x 8 x 8 x 8 (5 learned + its 3 colour channels)
    num_hidden_layers=1, transformer_layers=1, triplane_low_res=4, image_size=16, patch_size=8,
    rendering_samples_per_ray=8, triplane_dim=8,
)  # fmt: skip


def random_reconstructor(encoder_id: str = "random-tiny", seed: int = 0) -> TriplaneReconstructor:
    """lrm-small's class at R = 8 with random weights."""
    from triflow3d.encoders import resolve_config

    return build_reconstructor(
        resolve_config("lrm-small", RANDOM_RECONSTRUCTOR), encoder_id, seed=seed
    ).eval()


def random_triflow(
    seed: int = 0, text_dim: int = RANDOM_TEXT_DIM, channels: int = RANDOM_RECONSTRUCTOR["triplane_dim"]
) -> TriFlow:
    """TriFlow ``tiny`` at R = 8 for ``channels``-channel planes (default: the random reconstructor's) with
    every weight drawn (adaLN-Zero would start at zero velocity)."""
    params = dataclasses.replace(
        TRIFLOW_PRESETS["tiny"], plane_channels=channels, plane_res=8, patch=2, text_dim=text_dim
    )
    model = TriFlow(params)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def random_pipeline(seed: int = 0, encoder_id: str = "random-tiny", **parts: Any) -> TextTo3DPipeline:
    """Tiny random-weight components (``random_triflow``, ``random_reconstructor``, a fake text encoder):
    noise-shaped objects in well under a second. ``parts`` replace any ``TextTo3DPipeline`` argument."""
    recon = random_reconstructor(encoder_id, seed)
    defaults = dict(
        model=random_triflow(seed), normalizer=LatentNormalizer(recon.triplane_shape[1], encoder_id=encoder_id),
        text_encoder=FakeTextEncoder(RANDOM_TEXT_DIM), reconstructor=recon,
        settings=SamplerSettings(steps=4, cfg=3.0),
    )  # fmt: skip
    return TextTo3DPipeline(**(defaults | parts))


def median_level(gen: Generated, seed: int = 0) -> float:
    """The median activated density of ``gen``'s field around the centre: a level a random field always
    crosses, so meshes of random objects are never empty."""
    xyz = torch.rand(1, 4096, 3, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8
    return float(gen.reconstructor.query(gen.planes(), xyz)["sigma"].median())


__all__ = [
    "DEFAULT_MODEL_DIR",
    "Generated",
    "SamplerSettings",
    "TextTo3DPipeline",
    "build_text_encoder",
    "check_components",
    "load_bundled_reconstructor",
    "median_level",
    "random_pipeline",
    "text_encoder_spec",
]
