"""``TrainConfig``: every knob of a TriFlow training run, as one frozen dataclass with named presets.

Fields carry their help text in ``metadata["help"]`` so the CLI (``train/cli.py``) is generated from
them. The config serialises to plain JSON (``to_dict`` / ``from_dict``) and is written into every run
folder and checkpoint. Presets are plain Python below (``PRESETS``), each value with a reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from triflow3d.errors import ConfigError
from triflow3d.flow.path import OUTPUTS, T_DISTRIBUTIONS
from triflow3d.latents.normalizer import MODES as NORMALIZER_MODES
from triflow3d.perceptual import BACKENDS as PERCEPTUAL_BACKENDS

LR_SCHEDULES = ("constant", "cosine")
LOOPS = ("auto", "loader", "resident")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """A TriFlow training run. ``latents`` and ``out`` are required at run time (CLI ``--latents/--out``)."""

    # --- what is trained -------------------------------------------------------------------------
    model: str = _f(
        "tiny", "TriFlowParams preset (models.triflow.TRIFLOW_PRESETS); C, R and text_dim come from data"
    )
    text_encoder: str = _f("minilm", "frozen text encoder: minilm | clip-l | t5 | fake")
    text_encoder_path: str | None = _f(None, "local model folder for clip-l / t5")
    center_text: bool = _f(False, "subtract the mean pooled caption embedding (saved with the model)")
    output: str | None = _f(
        None,
        f"what the network predicts: {' | '.join(OUTPUTS)} (TriFlowParams.output; None: the preset's, or the "
        "--init checkpoint's; a different one with --init restarts the final layer at zero)",
    )
    out_conv: bool = _f(
        False,
        "a 3 x 3 convolution on each output plane (TriFlowParams.out_conv); with --init, added as the identity",
    )
    # --- data ------------------------------------------------------------------------------------
    latents: str = _f("", "latents folder (triflow3d encode output, with encoder.json)")
    category: str | None = _f(None, "train only on objects whose attributes.category equals this")
    balance_classes: bool = _f(False, "sample categories uniformly (attributes.category), not objects")
    stats: str | None = _f(
        None, "LatentStats safetensors (default: LATENTS/stats.safetensors, else computed)"
    )
    normalizer_mode: str = _f("per-channel", f"latent standardisation: {' | '.join(NORMALIZER_MODES)}")
    normalizer_clamp: float | None = _f(5.0, "clamp standardised latents to +-k (None: off)")
    spatial_weights: bool = _f(True, "weight the flow loss with the per-texel weights sidecar when present")
    text_cache: str | None = _f(None, "folder caching text embeddings across runs (CachedTextEncoder)")
    num_workers: int = _f(0, "DataLoader worker processes")
    # --- optimisation ----------------------------------------------------------------------------
    steps: int = _f(100, "optimizer steps")
    batch_size: int = _f(8, "global batch (all ranks, all accumulation micro-batches)")
    grad_accum: int = _f(1, "micro-batches per optimizer step on each rank")
    lr: float = _f(1e-4, "peak learning rate (AdamW)")
    min_lr: float = _f(0.0, "final learning rate of the cosine schedule")
    lr_schedule: str = _f("constant", f"after warm-up: {' | '.join(LR_SCHEDULES)}")
    lr_reference_batch: int = _f(
        0, "0: lr / min_lr as given; N: they were tuned at global batch N and scale by sqrt(batch_size / N)"
    )
    warmup_steps: int = _f(0, "linear warm-up steps")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.999, "AdamW beta2")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay (norm / embedding parameters excluded)")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0: off)")
    ema_decay: float = _f(0.999, "EMA of the weights; the EMA is what sampling uses")
    bf16: bool = _f(False, "bf16 autocast for the model forward (CPU and GPU); loss, EMA, renderer in fp32")
    seed: int = _f(0, "seeds init, data order, t, noise and CFG dropout")
    max_nan_steps: int = _f(10, "stop after this many non-finite steps in a row (each is skipped)")
    # --- flow loss -------------------------------------------------------------------------------
    t_distribution: str = _f("logit_normal", f"training times: {' | '.join(T_DISTRIBUTIONS)}")
    t_mean: float = _f(0.0, "logit-normal mean")
    t_std: float = _f(1.0, "logit-normal std")
    cfg_dropout: float = _f(0.1, "probability of replacing the caption by the empty caption (for CFG)")
    # --- perceptual rendering loss ---------------------------------------------------------------
    perceptual: str = _f("none", f"backend: {' | '.join(PERCEPTUAL_BACKENDS)} (random-vgg is NOT LPIPS)")
    perceptual_weight: float = _f(0.1, "lambda: loss += lambda (1 - t) [t < t_max] perceptual")
    perceptual_t_max: float = _f(0.5, "apply the perceptual loss only to samples with t below this")
    perceptual_views: int = _f(1, "K views of each object rendered per step")
    perceptual_size: int = _f(32, "render / target image resolution S")
    perceptual_crop: int = _f(0, "render a random C x C crop of the S x S image (0: whole image)")
    perceptual_samples: int = _f(32, "samples per ray (half stratified, half importance)")
    perceptual_l1: float = _f(0.0, "add this * L1 to the perceptual distance")
    reconstructor: str | None = _f(None, "frozen renderer (NAME or NAME:CKPT); default: the latents' encoder")
    # --- logging and checkpoints -----------------------------------------------------------------
    out: str = _f("", "run folder: checkpoints/, tb/, metrics.jsonl, config.json")
    log_every: int = _f(10, "steps between scalar logs")
    ckpt_every: int = _f(1000, "steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = _f(3, "keep the newest N step checkpoints (0: all)")
    sample_every: int = _f(0, "steps between sample renders to TensorBoard (0: off)")
    sample_prompts: tuple[str, ...] = _f(("a red chair", "a blue car"), "prompts for the sample renders")
    sync_check_every: int = _f(0, "DDP: steps between checks that all ranks hold equal weights (0: off)")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N (torchrun: the local rank's GPU)")
    # --- execution (how a step runs; what it computes is set above) ------------------------------
    loop: str = _f(
        "auto",
        "loader: DataLoader batches, per-sample CPU draws (the CPU results); resident: latents, text table and "
        "draws on the device, no per-step host sync; auto: resident on CUDA when the latents fit and there "
        "is no perceptual term, else loader",
    )
    compile: str = _f(
        "auto",
        f"torch.compile of the model in the resident loop: {' | '.join(COMPILE_MODES)} (auto: default on "
        "CUDA, off on the CPU; reduce-overhead adds CUDA graphs); eager if compiling fails",
    )
    tf32: bool = _f(True, "CUDA only: fp32 matrix products and convolutions in TF32 (resident loop)")

    def __post_init__(self) -> None:
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("t_distribution", self.t_distribution, T_DISTRIBUTIONS)
        _check_choice("perceptual", self.perceptual, PERCEPTUAL_BACKENDS)
        _check_choice("normalizer_mode", self.normalizer_mode, NORMALIZER_MODES)
        _check_choice("loop", self.loop, LOOPS)
        _check_choice("compile", self.compile, COMPILE_MODES)
        if self.output is not None:
            _check_choice("output", self.output, OUTPUTS)
        if self.lr_reference_batch < 0:
            raise ConfigError(f"lr_reference_batch must be >= 0, got {self.lr_reference_batch}")
        for name in ("steps", "batch_size", "grad_accum", "perceptual_views", "max_nan_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise ConfigError(f"cfg_dropout must be in [0, 1], got {self.cfg_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr} min_lr={self.min_lr}")
        if self.perceptual_crop and not 16 <= self.perceptual_crop <= self.perceptual_size:
            raise ConfigError(
                f"perceptual_crop must be 0 or in [16, perceptual_size={self.perceptual_size}], "
                f"got {self.perceptual_crop}"
            )
        if self.perceptual != "none" and self.perceptual_size < 16:
            raise ConfigError(f"perceptual_size must be >= 16 (VGG), got {self.perceptual_size}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sample_prompts"] = list(self.sample_prompts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"unknown TrainConfig keys {unknown}")
        d = dict(d)
        if "sample_prompts" in d:
            d["sample_prompts"] = tuple(d["sample_prompts"])
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"TrainConfig.{name} must be one of {choices}, got {value!r}")


PRESETS: dict[str, TrainConfig] = {
    # Unit tests and smoke runs: a few steps of the tiny model, fake text, nothing slow.
    "tiny": TrainConfig(
        model="tiny",
        text_encoder="fake",
        steps=20,
        batch_size=4,
        lr=1e-3,
        warmup_steps=2,
        ema_decay=0.9,
        log_every=1,
        ckpt_every=10,
        cfg_dropout=0.1,
    ),  # fmt: skip
    # The CPU demo on lrm-small latents (3 x 8 x 32 x 32). probe-flow-cpu.md: steps are the bottleneck
    # and conditioning is weak, so: a higher LR (4e-4), bf16 (1.5-1.8x on CPU), centred text embeddings,
    # class-balanced sampling, a short EMA horizon (0.998 ~ 500 steps) that tracks a short run.
    "small": TrainConfig(
        model="small",
        text_encoder="minilm",
        center_text=True,
        balance_classes=True,
        steps=5000,
        batch_size=32,
        lr=4e-4,
        warmup_steps=200,
        lr_schedule="cosine",
        min_lr=4e-5,
        ema_decay=0.998,
        bf16=True,
        log_every=25,
        ckpt_every=500,
        sample_every=1000,
    ),  # fmt: skip
    # Fine-tune a checkpoint (--init) on one category (--category): research/paper.md s11 #17.
    "finetune": TrainConfig(
        model="small",
        text_encoder="minilm",
        center_text=True,
        steps=2000,
        batch_size=32,
        lr=5e-5,
        warmup_steps=100,
        lr_schedule="cosine",
        min_lr=5e-6,
        ema_decay=0.999,
        bf16=True,
        log_every=25,
        ckpt_every=500,
        sample_every=500,
    ),  # fmt: skip
    # research/paper.md Appendix B / s11 #12: AdamW 1e-4, batch 256, EMA 0.9999, bf16, text dropout 0.1,
    # perceptual loss lambda (1 - t) at low t (lpips-vgg needs its weight files on disk).
    "paper": TrainConfig(
        model="paper",
        text_encoder="clip-l",
        steps=300_000,
        batch_size=256,
        lr=1e-4,
        warmup_steps=5000,
        ema_decay=0.9999,
        bf16=True,
        weight_decay=0.01,
        perceptual="lpips-vgg",
        perceptual_weight=0.1,
        perceptual_views=2,
        perceptual_size=192,
        perceptual_crop=128,
        perceptual_samples=128,
        log_every=100,
        ckpt_every=5000,
        sample_every=5000,
        keep_checkpoints=5,
    ),  # fmt: skip
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A named preset with field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown training preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
