"""The TriFlow training loop: rectified flow on standardised triplanes, plus an optional perceptual
rendering loss through the frozen reconstructor's decoder (research/paper.md s3-4, STYLE C3-13).

One step, in order (``Trainer.train_step``):

1. each rank takes its share of the global batch (``BatchPlan``: a pure function of (seed, step), so
   resuming and changing the world size never change which objects a step sees);
2. per sample, a generator seeded by (seed, step, position in the global batch) draws t, the CFG
   dropout coin and eps, so one process and G processes draw the same numbers;
3. captions -> precomputed embeddings (``TextTable``; dropped ones -> the empty caption);
4. x_t = (1 - t) x0 + t eps, v = eps - x0, loss_i = sum(w (v_hat - v)^2) / sum(w) per sample;
5. optional: x0_hat = x_t - t v_hat, denormalised, rendered at K views of the object (fp32, deterministic),
   compared with those views' images, weighted by lambda (1 - t) [t < t_max];
6. loss = mean over the global batch (gradient accumulation and DDP average to exactly that);
7. non-finite loss or gradient norm: the step is skipped and logged, and training stops after
   ``max_nan_steps`` in a row; else clip, AdamW with the schedule ``lr_at(step)``, EMA update.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from triflow3d import cameras as cam
from triflow3d.conventions import CONVENTIONS_VERSION
from triflow3d.data.latents import STATS_FILE, LatentDataset
from triflow3d.data.views import composite_white, load_rgba, read_cameras, view_file
from triflow3d.errors import ConfigError, TriflowError
from triflow3d.flow.path import (
    interpolate,
    loss_by_t_bin,
    rf_loss,
    sample_t,
    velocity_target,
    x0_from_velocity,
)
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.latents.stats import LatentStats, compute_stats
from triflow3d.models.text_encoder import CachedTextEncoder, TextEmbedding, TextEncoder, make_text_encoder
from triflow3d.models.triflow import TRIFLOW_PRESETS as MODEL_PRESETS
from triflow3d.models.triflow import TriFlow, TriFlowParams
from triflow3d.train import checkpoint as ck
from triflow3d.train.config import TrainConfig
from triflow3d.triplane.volume import RenderOptions, render_rays
from triflow3d.utils.io import append_jsonl, write_json
from triflow3d.utils.progress import progress_bar

logger = logging.getLogger("triflow3d.train")
STATS_SAMPLE = 2048  # triplanes read to compute the normaliser when no stats file exists


class TrainingDivergedError(TriflowError):
    """Too many non-finite steps in a row."""


# --- distributed ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group when WORLD_SIZE > 1 (nccl on GPU, gloo on CPU); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, dev)


def _sum_across(x: Tensor, info: DistInfo) -> Tensor:
    if info.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


# --- data order ----------------------------------------------------------------------------------------
def category(row: dict) -> str:
    return str((row.get("attributes") or {}).get("category", ""))


class BatchPlan:
    """The global batch of every step as a pure function of (seed, step).

    Uniform: one seeded permutation per epoch, read in order (sample p of the run is perm_{p // n}[p % n]).
    Balanced: each step draws ``batch_size`` objects with replacement, p(object) = 1 / (K * n_category).
    """

    def __init__(self, rows: list[dict], batch_size: int, seed: int, balanced: bool):
        self.n, self.batch_size, self.seed, self.balanced = len(rows), batch_size, seed, balanced
        cats = [category(r) for r in rows]
        counts = {c: cats.count(c) for c in set(cats)}
        self.weights = torch.tensor([1.0 / (len(counts) * counts[c]) for c in cats], dtype=torch.float64)

    @lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs, freed with the plan
    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(_mix(self.seed, epoch, -1))
        return torch.randperm(self.n, generator=g).tolist()

    def global_batch(self, step: int) -> list[int]:
        if self.balanced:
            g = torch.Generator().manual_seed(_mix(self.seed, step, -2))
            return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g).tolist()
        start = step * self.batch_size
        return [self._perm(p // self.n)[p % self.n] for p in range(start, start + self.batch_size)]

    def state(self, step: int) -> dict[str, Any]:
        return {"kind": "balanced" if self.balanced else "epochs", "seed": self.seed, "n": self.n,
                "samples_seen": step * self.batch_size, "epoch": step * self.batch_size // max(self.n, 1)}  # fmt: skip


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (sha256, so nearby inputs give unrelated streams)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RankBatches:
    """A batch sampler: this rank's micro-batches (index lists) for steps ``start`` .. ``steps`` - 1."""

    def __init__(self, plan: BatchPlan, start: int, steps: int, rank: int, world: int, accum: int):
        self.plan, self.start, self.steps, self.rank, self.world, self.accum = (
            plan,
            start,
            steps,
            rank,
            world,
            accum,
        )
        self.micro = plan.batch_size // (world * accum)

    def positions(self, micro_index: int) -> list[int]:
        """Positions in the global batch of this rank's micro-batch ``micro_index``."""
        first = (self.rank * self.accum + micro_index) * self.micro
        return list(range(first, first + self.micro))

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            batch = self.plan.global_batch(step)
            for m in range(self.accum):
                yield [batch[p] for p in self.positions(m)]

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accum


def collate(items: list[dict]) -> dict[str, Any]:
    """Dataset items -> triplane (B, 3, C, R, R), weights (B, 3, R, R) or None, and lists of strings."""
    weights = [it.get("weights") for it in items]
    return {
        "triplane": torch.stack([it["triplane"] for it in items]),
        "weights": torch.stack(weights) if all(w is not None for w in weights) else None,
        "caption": [it["caption"] for it in items],
        "id": [it["id"] for it in items],
        "views_dir": [it.get("views_dir", "") for it in items],
    }


# --- text ----------------------------------------------------------------------------------------------
class TextTable:
    """Every caption's embedding computed once (so steps never run the text encoder), optionally centred:
    ``center`` is the mean pooled embedding of the training captions, subtracted from every pooled one."""

    def __init__(self, encoder: TextEncoder, captions: list[str], center: bool, chunk: int = 64):
        unique = sorted(set(captions) | {""})
        self.rows: dict[str, tuple[Tensor, Tensor]] = {}
        for i in range(0, len(unique), chunk):
            part = unique[i : i + chunk]
            emb = encoder(part).to("cpu", torch.float32)
            for j, text in enumerate(part):
                self.rows[text] = (emb.tokens[j][emb.mask[j]].clone(), emb.pooled[j].clone())
        pooled = torch.stack([self.rows[c][1] for c in sorted(set(captions) - {""})] or [self.rows[""][1]])
        self.center: Tensor | None = pooled.mean(0) if center else None

    def __call__(self, captions: list[str], device: torch.device) -> TextEmbedding:
        return self.centred(TextEmbedding.from_rows([self.rows[c] for c in captions])).to(device)

    def centred(self, emb: TextEmbedding) -> TextEmbedding:
        """pooled - center (a no-op without a centre); sampling must apply the same (``LoadedModel``)."""
        if self.center is None:
            return emb
        return TextEmbedding(emb.tokens, emb.mask, emb.pooled - self.center.to(emb.pooled))


def build_text_encoder(cfg: TrainConfig, dim: int | None = None) -> TextEncoder:
    kwargs = {"dim": dim} if cfg.text_encoder == "fake" and dim else {}
    encoder = make_text_encoder(cfg.text_encoder, cfg.text_encoder_path, **kwargs)
    return CachedTextEncoder(encoder, cfg.text_cache) if cfg.text_cache else encoder


# --- per-sample randomness -------------------------------------------------------------------------------
@dataclass
class Draws:
    t: Tensor  # (B,)
    eps: Tensor  # (B, 3, C, R, R)
    drop: Tensor  # (B,) bool: caption replaced by ""
    generators: list[torch.Generator]  # per sample, for the perceptual view / crop choice


def draw(cfg: TrainConfig, step: int, positions: list[int], shape: tuple[int, ...]) -> Draws:
    """t, CFG coin and eps of each sample from a generator seeded by (seed, step, global position)."""
    gens = [torch.Generator().manual_seed(_mix(cfg.seed, step, p)) for p in positions]
    t = torch.cat([sample_t(1, cfg.t_distribution, cfg.t_mean, cfg.t_std, generator=g) for g in gens])
    drop = torch.cat([torch.rand(1, generator=g) < cfg.cfg_dropout for g in gens])
    eps = torch.stack([torch.randn(shape, generator=g) for g in gens])
    return Draws(t, eps, drop, gens)


# --- schedule, EMA -------------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then constant or cosine to ``min_lr`` (a pure function of the step)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)


def ema_decay_at(step: int, decay: float) -> float:
    """Warm-up of the EMA decay, min(decay, (1 + n) / (10 + n)), so short runs get a useful average."""
    return min(decay, (1 + step) / (10 + step))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on tensors with ndim >= 2 only (nanoGPT): biases and norm gains are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


# --- perceptual rendering loss ---------------------------------------------------------------------------
class RenderLoss:
    """Per-sample lambda(t) * perceptual(render(denormalize(x0_hat)), images) over K views of the object.

    lambda(t) = perceptual_weight * (1 - t) * [t < perceptual_t_max]: x0_hat is meaningless at high noise
    (research/paper.md s4). Only samples with lambda > 0 are rendered. Rendering runs in fp32 with the
    deterministic sample placement; ``perceptual_crop`` renders a random crop to bound memory.
    """

    def __init__(self, cfg: TrainConfig, field: nn.Module, loss_fn: nn.Module, normalizer: LatentNormalizer):
        self.cfg, self.field, self.loss_fn, self.normalizer = cfg, field, loss_fn, normalizer
        coarse = max(2, cfg.perceptual_samples // 2)
        self.opts = RenderOptions(samples_coarse=coarse, samples_importance=cfg.perceptual_samples - coarse)

    def weight(self, t: Tensor) -> Tensor:
        return self.cfg.perceptual_weight * (1 - t) * (t < self.cfg.perceptual_t_max).to(t.dtype)

    def targets(self, views_dir: str, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """K random views of one object -> ray origins, dirs (K c c, 3) and images (K, 3, c, c)."""
        obj = Path(views_dir)
        if not views_dir or not (obj / "cameras.json").is_file():
            raise ConfigError(
                f"perceptual loss needs the object's views folder; {views_dir!r} has no cameras.json"
            )
        c2w, K, _, _ = read_cameras(obj)
        s, c = self.cfg.perceptual_size, self.cfg.perceptual_crop or self.cfg.perceptual_size
        pick = torch.randperm(c2w.shape[0], generator=g)[: self.cfg.perceptual_views].tolist()
        o, d = cam.pixel_rays(c2w[pick], K[pick], s)  # (K, S S, 3)
        imgs = [torch.from_numpy(load_rgba(obj / view_file(i), s)).float() / 255.0 for i in pick]
        img = composite_white(torch.stack(imgs))  # (K, 3, S, S)
        i0, j0 = torch.randint(0, s - c + 1, (2,), generator=g).tolist()
        crop = lambda x: x.reshape(len(pick), s, s, 3)[:, i0 : i0 + c, j0 : j0 + c].reshape(-1, 3)  # noqa: E731
        return crop(o), crop(d), img[:, :, i0 : i0 + c, j0 : j0 + c]

    def __call__(
        self, x_t: Tensor, v_hat: Tensor, t: Tensor, views: list[str], gens: list[torch.Generator]
    ) -> Tensor:
        lam = self.weight(t.float())  # (B,)
        out = torch.zeros_like(lam)
        sel = [i for i in range(len(views)) if lam[i] > 0]
        if not sel:
            return out
        with torch.autocast(x_t.device.type, enabled=False):  # fp32 island: renderer and perceptual net
            x0_hat = x0_from_velocity(x_t[sel].float(), v_hat[sel].float(), t[sel].float())
            planes = self.normalizer.denormalize(x0_hat)  # (b, 3, C, R, R) raw
            rays = [self.targets(views[i], gens[i]) for i in sel]
            dev = x_t.device
            o, d = torch.stack([r[0] for r in rays]).to(dev), torch.stack([r[1] for r in rays]).to(dev)
            rgb = render_rays(self.field, planes, o, d, self.opts, deterministic=True)["rgb"]  # (b, K c c, 3)
            c = rays[0][2].shape[-1]
            pred = rgb.reshape(len(sel), -1, c, c, 3).permute(0, 1, 4, 2, 3)  # (b, K, 3, c, c)
            dist_ = torch.stack([self.loss_fn(pred[j], r[2].to(dev)) for j, r in enumerate(rays)])
        return out.index_put((torch.tensor(sel, device=out.device),), lam[sel] * dist_)


# --- logging ---------------------------------------------------------------------------------------------
class RunLogger:
    """Rank 0's sinks: metrics.jsonl (one row per logged step), TensorBoard under tb/, and train.log."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled, self.tb = out, enabled, None
        self.handler: logging.Handler | None = None

    def open(self) -> None:
        if not self.enabled or self.handler is not None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.out / "train.log")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(self.handler)
        logger.setLevel(logging.INFO)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))
        except ImportError:  # tensorboard is the [train] extra
            logger.warning("tensorboard is not installed; logging to metrics.jsonl only")

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.out / "metrics.jsonl", [{"step": step, **values}])
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)

    def images(self, tag: str, images: Tensor, step: int) -> None:
        if self.tb is not None:
            self.tb.add_images(tag, images.clamp(0, 1).cpu(), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.handler is not None:
            logger.removeHandler(self.handler)
            self.handler.close()
        self.tb = self.handler = None


# --- set-up helpers --------------------------------------------------------------------------------------
def open_dataset(cfg: TrainConfig) -> LatentDataset:
    if not cfg.latents:
        raise ConfigError("no latents folder given (--latents)")
    keep = None if cfg.category is None else (lambda row: category(row) == cfg.category)
    ds = LatentDataset(cfg.latents, filter=keep)
    if len(ds) == 0:
        what = f" with category {cfg.category!r}" if cfg.category else ""
        raise ConfigError(f"{cfg.latents}: no objects{what} to train on")
    return ds


def build_normalizer(cfg: TrainConfig, dataset: LatentDataset) -> LatentNormalizer:
    """From --stats, else LATENTS/stats.safetensors, else statistics of up to STATS_SAMPLE triplanes."""
    encoder_id = str(dataset.encoder.get("encoder", ""))
    if cfg.normalizer_mode == "none":
        return LatentNormalizer(dataset.triplane_shape[1], "none", None, encoder_id=encoder_id)
    path = Path(cfg.stats) if cfg.stats else Path(cfg.latents) / STATS_FILE
    if cfg.stats or path.is_file():
        stats = LatentStats.from_safetensors(path)
        if stats.encoder_id and stats.encoder_id != encoder_id:
            raise ConfigError(f"{path}: stats of encoder {stats.encoder_id!r}, latents are {encoder_id!r}")
    else:
        n = min(len(dataset), STATS_SAMPLE)
        logger.info("no %s: computing latent statistics over %d triplanes", path, n)
        stats = compute_stats((dataset[i]["triplane"] for i in range(n)), encoder_id)
    return LatentNormalizer.from_stats(stats, cfg.normalizer_mode, cfg.normalizer_clamp)


def model_params(cfg: TrainConfig, triplane_shape: tuple[int, ...], text_dim: int) -> TriFlowParams:
    """The preset with C, R and the text width taken from the data and the text encoder."""
    if cfg.model not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {cfg.model!r}; expected one of {sorted(MODEL_PRESETS)}")
    _, c, r, _ = triplane_shape
    return replace(MODEL_PRESETS[cfg.model], plane_channels=c, plane_res=r, text_dim=text_dim)


def load_render_field(cfg: TrainConfig, encoder_id: str, device: torch.device) -> nn.Module:
    """The frozen reconstructor's triplane field (decoder) that renders predicted triplanes."""
    from triflow3d.encoders import load_reconstructor

    recon = load_reconstructor(cfg.reconstructor or encoder_id, device=device)
    return recon.synthesizer.float().eval().requires_grad_(False)


def check_batch(cfg: TrainConfig, world: int) -> None:
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by world size {world} x grad_accum {cfg.grad_accum}"
        )


# --- the trainer -----------------------------------------------------------------------------------------
class Trainer:
    """Model, EMA, optimizer, data order and logs of one run; ``fit()`` is the loop.

    ``init``: start from a checkpoint's (EMA) weights, normaliser and text centre with a fresh optimizer
    (fine-tuning). ``resume``: continue a run exactly (weights, EMA, optimizer, step, RNG states).
    ``dataset``, ``text_encoder`` and ``field`` (the frozen renderer) can be injected (tests, notebooks).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        init: str | Path | None = None,
        resume: str | Path | None = None,
        dataset: LatentDataset | None = None,
        text_encoder: TextEncoder | None = None,
        field: nn.Module | None = None,
        dist_info: DistInfo | None = None,
    ):
        if not cfg.out:
            raise ConfigError("no run folder given (--out)")
        if init and resume:
            raise ConfigError("give --init (fine-tune from weights) or --resume (continue a run), not both")
        self.cfg = cfg
        self.info = dist_info or setup_distributed(cfg.device)
        self.device = self.info.device
        self.log = RunLogger(Path(cfg.out), self.info.main)
        self.perceptual_description = "no perceptual term"
        check_batch(cfg, self.info.world)
        self.dataset = dataset if dataset is not None else open_dataset(cfg)
        self.encoder = text_encoder or build_text_encoder(cfg)
        self.source = ck.resolve_checkpoint(resume or init) if (resume or init) else None
        self.source_config = self._check_source()
        self._build_model(resume is not None)
        self.text = self._build_text()
        self.opt = torch.optim.AdamW(
            param_groups(self.raw, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True
        )
        self.plan = BatchPlan(self.dataset.rows, cfg.batch_size, cfg.seed, cfg.balance_classes)
        self.step, self.nan_streak = 0, 0
        if resume is not None:
            self._load_train_state()
        self.model: nn.Module = self.raw
        if self.info.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.raw, device_ids=ids)
        self.field = field
        self.render_loss = self._build_render_loss()
        self._clock = (time.perf_counter(), self.step)

    # --- set-up --------------------------------------------------------------------------------------
    def _check_source(self) -> dict[str, Any]:
        """The source checkpoint's config, after checking it fits these latents and this text encoder."""
        if self.source is None:
            return {}
        conf = ck.read_config(self.source)
        ck.check_compatible(conf, self.dataset.encoder, str(self.source), str(self.cfg.latents))
        want = conf.get("text_encoder", {}).get("name")
        if want != self.encoder.name:
            raise ConfigError(
                f"checkpoint {self.source} was trained with text encoder {want!r}, this run uses {self.encoder.name!r}"
            )
        return conf

    def _build_model(self, resume: bool) -> None:
        cfg = self.cfg
        if self.source is not None:
            params = TriFlowParams(**self.source_config["triflow_params"])
        else:
            params = model_params(cfg, self.dataset.triplane_shape, self.encoder.dim)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.raw = TriFlow(params).to(self.device)
        self.params = params
        if self.source is None:
            self.normalizer = build_normalizer(cfg, self.dataset).to(self.device)
            self.ema = copy.deepcopy(self.raw).requires_grad_(False).eval()
            return
        start = ck.read_weights(self.source, ema=not resume)  # fine-tuning starts from the EMA weights
        ck.load_strict(self.raw, start["model"], str(self.source))
        self.normalizer = LatentNormalizer.from_config(self.source_config["normalizer"])
        ck.load_strict(self.normalizer, start["normalizer"], f"{self.source} (normalizer)")
        self.normalizer.to(self.device)
        self.ema = copy.deepcopy(self.raw).requires_grad_(False).eval()
        if resume:
            ck.load_strict(self.ema, ck.read_weights(self.source, ema=True)["model"], str(self.source))

    def _build_text(self) -> TextTable:
        """Embed every caption once; with a text cache, rank 0 fills it before the others read it."""
        captions = [str(r.get("caption") or "") for r in self.dataset.rows]
        if self.cfg.text_cache and not self.info.main:
            _barrier(self.info)
        table = TextTable(self.encoder, captions, self.cfg.center_text)
        if self.cfg.text_cache and self.info.main:
            _barrier(self.info)
        if self.source is not None:  # the model was trained in the source's text space
            table.center = ck.read_weights(self.source)["text"].get("center")
        return table

    def _build_render_loss(self) -> RenderLoss | None:
        cfg = self.cfg
        if cfg.perceptual == "none":
            return None
        from triflow3d.perceptual import make_perceptual_loss

        if self.field is None:
            self.field = load_render_field(cfg, str(self.dataset.encoder.get("encoder", "")), self.device)
        loss_fn = make_perceptual_loss(cfg.perceptual, l1_weight=cfg.perceptual_l1).to(self.device)
        logger.info("perceptual loss: %s", loss_fn.description)
        self.perceptual_description = loss_fn.description
        return RenderLoss(cfg, self.field, loss_fn, self.normalizer)

    def _load_train_state(self) -> None:
        tensors, info = ck.read_train_state(self.source)
        ck.load_optimizer_state(self.opt, tensors, info["optimizer"])
        ck.set_rng_state(tensors, info["rng"])
        self.step, self.nan_streak = int(info["step"]), int(info["nan_streak"])
        logger.info("resumed %s at step %d (saved by %d ranks)", self.source, self.step, info["world_size"])

    # --- one step --------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the model forward when ``cfg.bf16`` (CPU and CUDA), else a no-op."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def micro_loss(self, batch: dict[str, Any], positions: list[int]) -> tuple[Tensor, dict[str, Any]]:
        """Mean loss of one micro-batch and its per-sample parts (flow, perceptual, t)."""
        cfg, dev = self.cfg, self.device
        x0 = self.normalizer.normalize(batch["triplane"].to(dev))  # (b, 3, C, R, R)
        d = draw(cfg, self.step, positions, tuple(x0.shape[1:]))
        captions = ["" if drop else c for c, drop in zip(batch["caption"], d.drop.tolist())]
        text = self.text(captions, dev)
        weight = batch["weights"]
        weight = (
            weight.to(dev)[:, :, None] if cfg.spatial_weights and weight is not None else None
        )  # (b, 3, 1, R, R)
        t, eps = d.t.to(dev), d.eps.to(dev)
        x_t, v = interpolate(x0, eps, t), velocity_target(x0, eps)
        with self.autocast():
            v_hat = self.model(x_t, t, **text.as_kwargs())
        flow = rf_loss(v_hat, v, weight, reduction="none")  # (b,) fp32
        perc = torch.zeros_like(flow)
        if self.render_loss is not None:
            perc = self.render_loss(x_t, v_hat, t, batch["views_dir"], d.generators)
        loss = (flow + perc).mean()
        return loss, {"positions": positions, "flow": flow.detach(), "perceptual": perc.detach(), "t": t}

    def _gather(self, parts: list[dict[str, Any]]) -> Tensor:
        """Per-sample (flow, perceptual, t) of the whole global batch on every rank -> (3, B) float64."""
        vec = torch.zeros(3, self.cfg.batch_size, dtype=torch.float64, device=self.device)
        for p in parts:
            idx = torch.tensor(p["positions"], device=self.device)
            vec[:, idx] = torch.stack([p["flow"], p["perceptual"], p["t"].float()]).double()
        return _sum_across(vec, self.info)

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, Any]:
        """Accumulate, all-reduce, skip if non-finite, clip, AdamW, EMA. Returns the step's statistics."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        parts = []
        for m, batch in enumerate(micro_batches):
            last = m == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or self.info.world == 1 else self.model.no_sync()
            with sync:
                loss, part = self.micro_loss(batch, self.batches.positions(m))
                (loss / len(micro_batches)).backward()  # DDP averages the ranks: the global mean
            parts.append(part)
        per = self._gather(parts)  # (3, B)
        total = float((per[0] + per[1]).mean())
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm))
        stats = {"loss": total, "flow_loss": float(per[0].mean()), "perceptual_loss": float(per[1].mean()),
                 "lr": lr, "grad_norm": grad_norm, "skipped": 0, **loss_by_t_bin(per[0], per[2])}  # fmt: skip
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            self.opt.zero_grad(set_to_none=True)
            return self._skip(stats)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        update_ema(self.ema, self.raw, ema_decay_at(self.step, cfg.ema_decay))
        self.nan_streak = 0
        return stats

    def _skip(self, stats: dict[str, Any]) -> dict[str, Any]:
        """A non-finite step: no update; log it; stop after ``max_nan_steps`` in a row."""
        self.nan_streak += 1
        stats.update(skipped=1, nan_streak=self.nan_streak)
        logger.warning("step %d: non-finite loss %s / grad norm %s; step skipped (%d in a row)",
                       self.step, stats["loss"], stats["grad_norm"], self.nan_streak)  # fmt: skip
        self.log.scalars(self.step, stats)
        if self.nan_streak >= self.cfg.max_nan_steps:
            raise TrainingDivergedError(
                f"{self.nan_streak} non-finite steps in a row (max_nan_steps={self.cfg.max_nan_steps}) at step "
                f"{self.step}; see {Path(self.cfg.out) / 'metrics.jsonl'}"
            )
        return stats

    # --- the loop --------------------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train from the current step to ``until`` (default ``cfg.steps``), then save a checkpoint."""
        cfg = self.cfg
        end = cfg.steps if until is None else min(until, cfg.steps)
        self.log.open()
        self.write_run_files()
        logger.info("training steps %d..%d on %d rank(s); perceptual loss: %s", self.step, end, self.info.world,
                    self.perceptual_description)  # fmt: skip
        stats: dict[str, Any] = {}
        self.raw.train()
        try:
            with progress_bar(disable=None if self.info.main else True) as bar:
                task = bar.add_task("train", total=cfg.steps, completed=self.step, status="")
                for micro in self.step_batches(end):
                    stats = self.train_step(micro)
                    self.step += 1
                    self.after_step(stats, end)
                    bar.update(task, completed=self.step, status=f"loss {stats['loss']:.4f}")
            self.save()
        finally:
            self.log.close()
        return stats

    def step_batches(self, end: int) -> Iterator[list[dict[str, Any]]]:
        """This rank's ``grad_accum`` micro-batches of each step from the current one to ``end``."""
        cfg = self.cfg
        self.batches = RankBatches(self.plan, self.step, end, self.info.rank, self.info.world, cfg.grad_accum)
        loader = DataLoader(
            self.dataset, batch_sampler=self.batches, collate_fn=collate, num_workers=cfg.num_workers
        )
        micro = iter(loader)
        for _ in range(self.step, end):
            yield [next(micro) for _ in range(cfg.grad_accum)]

    def after_step(self, stats: dict[str, Any], end: int) -> None:
        """Periodic logging, sync checks, sample renders and checkpoints (the step counter is already +1)."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_every == 0 and not stats["skipped"]:
            now = time.perf_counter()
            t0, s0 = self._clock
            stats["samples_per_s"] = (step - s0) * cfg.batch_size / max(now - t0, 1e-9)
            self._clock = (now, step)
            self.log.scalars(step, stats)
        if cfg.sync_check_every and step % cfg.sync_check_every == 0:
            self.log.scalars(step, {"sync_diff": self.sync_diff()})
        if cfg.sample_every and step % cfg.sample_every == 0 and self.info.main:
            self.log_samples()
        if step % cfg.ckpt_every == 0 and step < end:
            self.save()

    def sync_diff(self) -> float:
        """Largest difference between ranks of (sum, sum of squares) of the weights (0 when in sync)."""
        flat = torch.cat([p.detach().double().flatten() for p in self.raw.parameters()])
        v = torch.stack([flat.sum(), flat.square().sum()])
        if self.info.world == 1:
            return 0.0
        hi, lo = v.clone(), v.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        return float((hi - lo).abs().max())

    @torch.no_grad()
    def log_samples(self, size: int = 64, steps: int = 20, cfg_scale: float = 4.0) -> None:
        """EMA samples of ``sample_prompts`` -> one rendered view each (or plane-0 channels) to TensorBoard."""
        from triflow3d.flow.sampling import denoise, get_noise, get_schedule

        prompts = list(self.cfg.sample_prompts)
        cond = self.text.centred(self.encoder(prompts).to("cpu", torch.float32)).to(self.device)
        uncond = self.text([""] * len(prompts), self.device)
        x = get_noise(range(len(prompts)), self.dataset.triplane_shape, self.device)
        with self.autocast():
            x0 = denoise(self.ema, x, get_schedule(steps), cfg_scale, cond.as_kwargs(), uncond.as_kwargs())
        raw = self.normalizer.denormalize(x0.float())  # (n, 3, C, R, R)
        if self.field is None:
            img = raw[:, 0, :3]
            lo, hi = img.amin((1, 2, 3), keepdim=True), img.amax((1, 2, 3), keepdim=True)
            self.log.images("samples/plane0", (img - lo) / (hi - lo).clamp_min(1e-8), self.step)
            return
        rig = cam.zero123pp_rig()
        o, d = cam.pixel_rays(rig.c2w[:1].to(self.device), rig.intrinsics[:1].to(self.device), size)
        n = len(prompts)
        opts = self.render_loss.opts if self.render_loss is not None else RenderOptions(32, 32)
        rgb = render_rays(self.field, raw, o.expand(n, -1, -1), d.expand(n, -1, -1), opts, deterministic=True)
        rgb = rgb["rgb"]  # (n, S S, 3)
        self.log.images("samples/render", rgb.reshape(n, size, size, 3).permute(0, 3, 1, 2), self.step)

    # --- files -----------------------------------------------------------------------------------------
    def checkpoint_config(self) -> dict[str, Any]:
        """config.json of a checkpoint: everything needed to rebuild the model and check its inputs."""
        enc = self.dataset.encoder
        return {
            "format": ck.FORMAT,
            "conventions_version": CONVENTIONS_VERSION,
            "step": self.step,
            "triflow_params": ck.params_dict(self.params),
            "text_encoder": {
                "name": self.encoder.name,
                "kind": self.cfg.text_encoder,
                "dim": self.encoder.dim,
                "path": self.cfg.text_encoder_path,
                "centered": self.text.center is not None,
            },  # fmt: skip
            "normalizer": self.normalizer.config(),
            "encoder": {
                "encoder": enc.get("encoder"),
                "triplane_shape": list(self.dataset.triplane_shape),
                "config_hash": enc.get("config_hash"),
            },  # fmt: skip
            "perceptual": self.perceptual_description,
            "train_config": self.cfg.to_dict(),
        }

    def train_state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Optimizer, step, RNG states and sampler position. Noise, t and dropout come from generators
        seeded by (seed, step, position), so rank 0's global RNG states are all a resume needs."""
        opt_t, opt_info = ck.optimizer_state(self.opt)
        rng_t, rng_info = ck.rng_state()
        info = {"step": self.step, "nan_streak": self.nan_streak, "world_size": self.info.world,
                "sampler": self.plan.state(self.step), "optimizer": opt_info, "rng": rng_info}  # fmt: skip
        return opt_t | rng_t, info

    def save(self) -> Path:
        """Checkpoint RUN/checkpoints/step-NNNNNNN (rank 0 writes; every rank waits for it)."""
        path = ck.step_dir(self.cfg.out, self.step)
        if self.info.main:
            ck.save_checkpoint(path, self.raw, self.ema, self.normalizer, self.checkpoint_config(),
                               self.text.center, self.train_state())  # fmt: skip
            ck.mark_latest(self.cfg.out, path, self.step, self.cfg.keep_checkpoints)
            logger.info("step %d: checkpoint %s", self.step, path)
        _barrier(self.info)
        return path

    def write_run_files(self) -> None:
        """RUN/config.json (the resolved TrainConfig) and RUN/MODEL_CARD.md (rank 0)."""
        if not self.info.main:
            return
        out = Path(self.cfg.out)
        write_json(out / "config.json", self.cfg.to_dict())
        n = sum(p.numel() for p in self.raw.parameters())
        card = [
            "# TriFlow checkpoint", "",
            f"- model: preset `{self.cfg.model}`, arch `{self.params.arch}`, {n / 1e6:.2f} M parameters",
            f"- latents: encoder `{self.dataset.encoder.get('encoder')}`, triplanes {list(self.dataset.triplane_shape)}",
            f"- text encoder: `{self.encoder.name}` (pooled embeddings centred: {self.text.center is not None})",
            f"- normaliser: {self.normalizer.config()}",
            f"- perceptual loss: {self.perceptual_description}",
            f"- training: {self.cfg.steps} steps, global batch {self.cfg.batch_size}, lr {self.cfg.lr}, "
            f"bf16 {self.cfg.bf16}, CFG dropout {self.cfg.cfg_dropout}",
        ]  # fmt: skip
        if self.cfg.perceptual == "random-vgg":
            card.append("- NOTE: random-vgg is a random-weight VGG16 feature distance, NOT LPIPS.")
        (out / "MODEL_CARD.md").write_text("\n".join(card) + "\n")


def resume_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with, with ``overrides`` (e.g. more ``steps``)."""
    saved = ck.read_config(ck.resolve_checkpoint(path))["train_config"]
    return TrainConfig.from_dict(saved).replace(**overrides)


def train(cfg: TrainConfig, init: str | None = None, resume: str | None = None) -> dict[str, Any]:
    """Build a Trainer and run it to ``cfg.steps``; returns the last step's statistics."""
    trainer = Trainer(cfg, init=init, resume=resume)
    try:
        return trainer.fit()
    finally:
        if trainer.info.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
