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

That is the ``loader`` loop (DataLoader batches, per-sample draws on the CPU), the one the CPU runs. The
``resident`` loop (``Trainer.resident_step``, chosen by ``loop=auto`` on CUDA) computes the same loss
from data held on the device (``train.resident``) with one generator per step on the device
(``draws.draw_on_device``), decides the skip of a non-finite step on the device (fused AdamW's
``found_inf``, a masked EMA update) and reads numbers back only every ``log_every`` steps; the model
forward may run through ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from triflow3d.conventions import CONVENTIONS_VERSION
from triflow3d.data.latents import LatentDataset
from triflow3d.errors import ConfigError, TriflowError
from triflow3d.flow.path import interpolate, loss_by_t_bin, rf_loss, velocity_target
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.models.text_encoder import TextEmbedding, TextEncoder
from triflow3d.models.text_table import TextTableEncoder
from triflow3d.models.triflow import TriFlow, TriFlowParams
from triflow3d.train import checkpoint as ck
from triflow3d.train.batches import BatchPlan, RankBatches, collate
from triflow3d.train.build import adapt_source, build_normalizer, check_batch, model_params, open_run_latents
from triflow3d.train.config import TrainConfig
from triflow3d.train.distributed import (
    DistInfo,
    barrier,
    setup_distributed,
    shutdown,
    sum_across,
    weights_spread,
)
from triflow3d.train.draws import draw, draw_on_device
from triflow3d.train.optim import ema_decay_at, lr_at, param_groups, update_ema, update_ema_unless
from triflow3d.train.render_loss import RenderLoss, load_render_field
from triflow3d.train.resident import IndexFeed, ResidentLatents, fits
from triflow3d.train.runlog import RunLogger
from triflow3d.train.samples import sample_images
from triflow3d.train.text import TextTable, build_text_encoder
from triflow3d.utils.budget import TimeBudget
from triflow3d.utils.io import write_json
from triflow3d.utils.progress import progress_bar

logger = logging.getLogger("triflow3d.train")


class TrainingDivergedError(TriflowError):
    """Too many non-finite steps in a row."""


def choose_loop(cfg: TrainConfig, device: torch.device, dataset: LatentDataset) -> str:
    """``cfg.loop``, with ``auto`` resolved: resident on CUDA for the flow loss when the data fit."""
    if cfg.loop == "resident" and cfg.perceptual != "none":
        raise ConfigError("the resident loop trains the flow loss only; use --loop loader with --perceptual")
    if cfg.loop != "auto":
        return cfg.loop
    if device.type != "cuda" or cfg.perceptual != "none":
        return "loader"
    return "resident" if fits(dataset, device) else "loader"


def compile_mode(cfg: TrainConfig, device: torch.device) -> str | None:
    """The torch.compile mode of the resident loop's model, or None (eager)."""
    mode = cfg.compile
    if mode == "auto":
        mode = "default" if device.type == "cuda" else "off"
    return None if mode == "off" else mode


class Trainer:
    """Model, EMA, optimizer, data order and logs of one run; ``fit()`` is the loop.

    ``init``: start from a checkpoint's (EMA) weights, normaliser and text centre with a fresh optimizer
    (fine-tuning). ``resume``: continue a run exactly (weights, EMA, optimizer, step, RNG states).
    ``grow`` (with ``init``): the latents have more channels than the checkpoint's model, appended by a
    grown encoder (``triflow3d recon grow``); the model grows to them (``grow_plane_channels``: it starts
    as the checkpoint's on the old channels) and the normaliser comes from the new latents.
    ``dataset``, ``text_encoder`` and ``field`` (the frozen renderer) can be injected (tests, notebooks);
    ``params``: the architecture of a fresh run (default: the preset's, sized by the data and the text
    encoder); a run from a checkpoint keeps the checkpoint's.
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
        params: TriFlowParams | None = None,
        grow: bool = False,
    ):
        if not cfg.out:
            raise ConfigError("no run folder given (--out)")
        if init and resume:
            raise ConfigError("give --init (fine-tune from weights) or --resume (continue a run), not both")
        if grow and not init:
            raise ConfigError("--grow grows the --init checkpoint's model: give --init")
        self.cfg, self.grow = cfg, grow
        self.info = dist_info or setup_distributed(cfg.device)
        self.device = self.info.device
        self.log = RunLogger(Path(cfg.out), self.info.main)
        self.perceptual_description = "no perceptual term"
        check_batch(cfg, self.info.world)
        self.dataset = dataset if dataset is not None else open_run_latents(cfg)
        self.encoder = text_encoder or build_text_encoder(cfg)
        self.source = ck.resolve_checkpoint(resume or init) if (resume or init) else None
        self.source_config = self._check_source()
        self._build_model(resume is not None, params)
        self.text = self._build_text()
        self.loop = choose_loop(cfg, self.device, self.dataset)
        resident = self.loop == "resident"
        fused = {"fused": True} if resident else {"foreach": True}  # fused: skips a step on the device
        self.opt = torch.optim.AdamW(
            param_groups(self.raw, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused
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
        self.resident = (
            ResidentLatents(self.dataset, self.text, self.device, cfg.spatial_weights) if resident else None
        )
        self.forward: Callable[..., Tensor] = self.model
        self._compile_pending = False
        if resident:
            self._prepare_resident()
        self._clock = (time.perf_counter(), self.step)

    # --- set-up --------------------------------------------------------------------------------------
    def _check_source(self) -> dict[str, Any]:
        """The source checkpoint's config, after checking it fits these latents and this text encoder."""
        if self.source is None:
            return {}
        conf = ck.read_config(self.source)
        ck.check_compatible(conf, self.dataset.encoder, str(self.source), str(self.cfg.latents), self.grow)
        want = conf.get("text_encoder", {}).get("name")
        if want != self.encoder.name:
            raise ConfigError(
                f"checkpoint {self.source} was trained with text encoder {want!r}, this run uses {self.encoder.name!r}"
            )
        return conf

    def _build_model(self, resume: bool, params: TriFlowParams | None) -> None:
        cfg = self.cfg
        start, grown, restart_final = None, False, False
        if self.source is not None:
            params = TriFlowParams(**self.source_config["triflow_params"])
            start = ck.read_weights(self.source, ema=not resume)  # fine-tuning starts from the EMA weights
            params, start["model"], grown, restart_final = adapt_source(
                cfg, params, start["model"], self.dataset.triplane_shape[1], self.grow, str(self.source)
            )
        elif params is None:
            params = model_params(cfg, self.dataset.triplane_shape, self.encoder.dim)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.raw = TriFlow(params).to(self.device)
        self.params = params
        if start is None or grown:  # a fresh run, or new channels: statistics of these latents
            self.normalizer = build_normalizer(cfg, self.dataset).to(self.device)
        else:
            self.normalizer = LatentNormalizer.from_config(self.source_config["normalizer"])
            ck.load_strict(self.normalizer, start["normalizer"], f"{self.source} (normalizer)")
            self.normalizer.to(self.device)
        if start is not None:
            ck.load_strict(self.raw, start["model"], str(self.source))
            if restart_final:
                self.raw.final.zero_init()
        self.ema = copy.deepcopy(self.raw).requires_grad_(False).eval()
        if resume:
            ck.load_strict(self.ema, ck.read_weights(self.source, ema=True)["model"], str(self.source))

    def _build_text(self) -> TextTable:
        """Embed every caption once; with a text cache, rank 0 fills it before the others read it."""
        captions = [str(r.get("caption") or "") for r in self.dataset.rows]
        if self.cfg.text_cache and not self.info.main:
            barrier(self.info)
        table = TextTable(self.encoder, captions, self.cfg.center_text)
        if self.cfg.text_cache and self.info.main:
            barrier(self.info)
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

    def _prepare_resident(self) -> None:
        """The resident loop's device state: generator, skip counters, TF32, the compiled forward."""
        cfg, dev = self.cfg, self.device
        self.gen = torch.Generator(dev)
        self.streak = torch.tensor(float(self.nan_streak), device=dev)  # non-finite steps in a row
        self.skipped = torch.zeros((), device=dev)  # skipped steps since the last log
        if dev.type == "cuda" and cfg.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        mode = compile_mode(cfg, dev)
        if mode is not None:
            self.forward = torch.compile(self.model, mode=None if mode == "default" else mode, dynamic=False)
            self._compile_pending = True
        mib = self.resident.triplanes.numel() * self.resident.triplanes.element_size() / 2**20
        logger.info("resident loop: %d objects (%.0f MiB) on %s, torch.compile %s", len(self.dataset), mib, dev,
                    mode or "off")  # fmt: skip

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
        flow, v_hat, x_t = self.flow_loss(x0, eps, t, text, weight)
        perc = torch.zeros_like(flow)
        if self.render_loss is not None:
            perc = self.render_loss(x_t, v_hat, t, batch["views_dir"], d.generators)
        loss = (flow + perc).mean()
        return loss, {"positions": positions, "flow": flow.detach(), "perceptual": perc.detach(), "t": t}

    def flow_loss(
        self, x0: Tensor, eps: Tensor, t: Tensor, text: TextEmbedding, weight: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample rectified-flow loss (b,) fp32, the predicted velocity and x_t."""
        x_t, v = interpolate(x0, eps, t), velocity_target(x0, eps)
        with self.autocast():
            v_hat = self.forward(x_t, t, **text.as_kwargs())
        return rf_loss(v_hat, v, weight, reduction="none"), v_hat, x_t

    def _gather(self, parts: list[dict[str, Any]]) -> Tensor:
        """Per-sample (flow, perceptual, t) of the whole global batch on every rank -> (3, B) float64."""
        vec = torch.zeros(3, self.cfg.batch_size, dtype=torch.float64, device=self.device)
        for p in parts:
            idx = torch.as_tensor(p["positions"], device=self.device)
            vec[:, idx] = torch.stack([p["flow"], p["perceptual"], p["t"].float()]).double()
        return sum_across(vec, self.info)

    def _set_lr(self) -> float:
        lr = lr_at(self.step, self.cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, Any]:
        """Accumulate, all-reduce, skip if non-finite, clip, AdamW, EMA. Returns the step's statistics."""
        cfg = self.cfg
        lr = self._set_lr()
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
        self._check_streak()
        return stats

    def _check_streak(self) -> None:
        if self.nan_streak >= self.cfg.max_nan_steps:
            raise TrainingDivergedError(
                f"{self.nan_streak} non-finite steps in a row (max_nan_steps={self.cfg.max_nan_steps}) at step "
                f"{self.step}; see {Path(self.cfg.out) / 'metrics.jsonl'}"
            )

    # --- one step of the resident loop ---------------------------------------------------------------
    def resident_step(self) -> dict[str, Any]:
        """One step from the device-resident data, with no host synchronisation: the skip of a non-finite
        step is fused AdamW's ``found_inf`` and a masked EMA update. Returns device tensors; numbers are
        read by ``resident_stats`` only on logging steps."""
        cfg, data = self.cfg, self.resident
        lr = self._set_lr()
        idx = self.feed(self.step)  # (accum, micro)
        shape = tuple(data.triplanes.shape[1:])
        t, drop, eps = draw_on_device(cfg, self.step, cfg.batch_size, shape, self.gen)  # global batch
        parts = []
        for m in range(cfg.grad_accum):
            last = m == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.info.world == 1 else self.model.no_sync()
            pos = self.batches.positions(m)
            sl = slice(pos[0], pos[-1] + 1)
            batch = data.gather(idx[m], drop[sl])
            x0 = self.normalizer.normalize(batch.triplane)  # (b, 3, C, R, R)
            with sync:
                flow, _, _ = self.flow_loss(x0, eps[sl], t[sl], batch.text, batch.weights)
                (flow.mean() / cfg.grad_accum).backward()
            parts.append({"positions": pos, "flow": flow.detach(), "perceptual": torch.zeros_like(flow),
                          "t": t[sl]})  # fmt: skip
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm, foreach=True)
        finite = torch.isfinite(grad_norm)  # the same on every rank (DDP averaged the gradients)
        if self.info.world == 1:
            finite &= torch.isfinite(sum(p["flow"].sum() for p in parts))
        skip = (~finite).float()
        self.opt.found_inf = skip  # fused AdamW leaves parameters and moments as they are when set
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        update_ema_unless(self.ema, self.raw, ema_decay_at(self.step, cfg.ema_decay), skip)
        self.streak = (self.streak + skip) * skip
        self.skipped += skip
        return {"parts": parts, "grad_norm": grad_norm, "lr": lr}

    def resident_stats(self, out: dict[str, Any]) -> dict[str, Any]:
        """The logged numbers of a resident step (one host synchronisation); raises after too many
        non-finite steps in a row."""
        per = self._gather(out["parts"])  # (3, B)
        skipped, self.nan_streak = int(self.skipped), int(self.streak)
        self.skipped.zero_()
        stats = {"loss": float((per[0] + per[1]).mean()), "flow_loss": float(per[0].mean()),
                 "perceptual_loss": float(per[1].mean()), "lr": out["lr"], "grad_norm": float(out["grad_norm"]),
                 "skipped": skipped, "nan_streak": self.nan_streak, **loss_by_t_bin(per[0], per[2])}  # fmt: skip
        if skipped:
            logger.warning("steps up to %d: %d non-finite steps skipped (%d in a row now)", self.step, skipped,
                           self.nan_streak)  # fmt: skip
        self._check_streak()
        return stats

    def _run_resident_step(self) -> dict[str, Any]:
        """``resident_step``; if the compiled forward fails on its first use, train eagerly instead."""
        if not self._compile_pending:
            return self.resident_step()
        try:
            out = self.resident_step()
        except Exception as e:  # noqa: BLE001 - any compiler failure: the eager model computes the same
            logger.warning("torch.compile failed (%s: %s); training eagerly", type(e).__name__, str(e)[:300])
            self.opt.zero_grad(set_to_none=True)
            self.forward = self.model
            out = self.resident_step()
        self._compile_pending = False
        return out

    # --- the loop --------------------------------------------------------------------------------------
    def fit(self, until: int | None = None, time_budget: float | None = None) -> dict[str, Any]:
        """Train from the current step to ``until`` (default ``cfg.steps``), then save a checkpoint.

        ``time_budget`` (seconds): ``cfg.steps`` becomes an upper bound. A fresh run times its first steps
        (within the warm-up, where the schedule does not depend on the length) and then shortens
        ``steps`` so that it ends in time with its schedule complete (config.json records the result); any
        run stops and checkpoints once the budget is spent (resume it to finish).
        """
        cfg = self.cfg
        end = cfg.steps if until is None else min(until, cfg.steps)
        self.log.open()
        self.write_run_files()
        budget = self._budget(time_budget)
        logger.info("training steps %d..%d on %d rank(s), %s loop; perceptual loss: %s", self.step, end,
                    self.info.world, self.loop, self.perceptual_description)  # fmt: skip
        stats: dict[str, Any] = {}
        self.raw.train()
        try:
            with progress_bar(disable=None if self.info.main else True) as bar:
                task = bar.add_task("train", total=cfg.steps, completed=self.step, status="")
                for run_step in self.step_calls(end):
                    out = run_step()
                    self.step += 1
                    if (
                        budget is not None
                        and (fitted := budget.resize(self.step)) is not None
                        and fitted < end
                    ):
                        end = self._shorten(fitted)
                        bar.update(task, total=end)
                    logged = self.resident is None or self.step % cfg.log_every == 0 or self.step == end
                    if logged:
                        stats = out if self.resident is None else self.resident_stats(out)
                        bar.update(task, status=f"loss {stats['loss']:.4f}")
                    self.after_step(
                        stats, end, log=logged and not (self.resident is None and stats["skipped"])
                    )
                    bar.update(task, completed=self.step)
                    if self.step >= end or (budget is not None and budget.over()):
                        break
            self.save()
        finally:
            self.log.close()
        return stats

    def _budget(self, seconds: float | None) -> TimeBudget | None:
        if not seconds:
            return None
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)
        probe = min(20, self.cfg.warmup_steps) if self.cfg.warmup_steps >= 2 else 20
        budget = TimeBudget(seconds, self.step, probe, sync)
        budget.done = self.step > 0  # a resumed run keeps the length it was given
        return budget

    def _shorten(self, end: int) -> int:
        """The run now ends at step ``end``: the schedule's length and config.json follow."""
        logger.info("time budget: the run ends at step %d instead of %d", end, self.cfg.steps)
        self.cfg = self.cfg.replace(steps=end)
        self.write_run_files()
        return end

    def step_calls(self, end: int) -> Iterator[Callable[[], dict[str, Any]]]:
        """One call per step from the current one to ``end``, each running that step (the caller advances
        ``self.step``): ``train_step`` on the loader's micro-batches, or the resident step."""
        if self.resident is None:
            for micro in self.step_batches(end):
                yield lambda micro=micro: self.train_step(micro)
            return
        self.batches = RankBatches(
            self.plan, self.step, end, self.info.rank, self.info.world, self.cfg.grad_accum
        )
        self.feed = IndexFeed(self.batches, self.device)
        for _ in range(self.step, end):
            yield self._run_resident_step

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

    def after_step(self, stats: dict[str, Any], end: int, log: bool = True) -> None:
        """Periodic logging, sync checks, sample renders and checkpoints (the step counter is already +1)."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_every == 0 and log:
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
        return weights_spread(torch.stack([flat.sum(), flat.square().sum()]), self.info)

    def log_samples(self) -> None:
        """EMA samples of ``sample_prompts`` -> one rendered view each (or plane-0 channels) to TensorBoard."""
        opts = self.render_loss.opts if self.render_loss is not None else None
        tag, images = sample_images(self.ema, self.encoder, self.text, self.normalizer, self.field,
                                    list(self.cfg.sample_prompts), self.dataset.triplane_shape, self.autocast(),
                                    opts)  # fmt: skip
        self.log.images(tag, images, self.step)

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
                "path": None if isinstance(self.encoder, TextTableEncoder) else self.cfg.text_encoder_path,
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
        if self.resident is not None:
            self.nan_streak = int(self.streak)
        info = {"step": self.step, "nan_streak": self.nan_streak, "world_size": self.info.world,
                "sampler": self.plan.state(self.step), "optimizer": opt_info, "rng": rng_info,
                "loop": self.loop}  # fmt: skip
        return opt_t | rng_t, info

    def save(self) -> Path:
        """Checkpoint RUN/checkpoints/step-NNNNNNN (rank 0 writes; every rank waits for it)."""
        path = ck.step_dir(self.cfg.out, self.step)
        if self.info.main:
            ck.save_checkpoint(path, self.raw, self.ema, self.normalizer, self.checkpoint_config(),
                               self.text.center, self.train_state())  # fmt: skip
            ck.mark_latest(self.cfg.out, path, self.step, self.cfg.keep_checkpoints)
            logger.info("step %d: checkpoint %s", self.step, path)
        barrier(self.info)
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


def train(
    cfg: TrainConfig,
    init: str | None = None,
    resume: str | None = None,
    time_budget: float | None = None,
    grow: bool = False,
) -> dict[str, Any]:
    """Build a Trainer and run it to ``cfg.steps`` (or its ``time_budget``); returns the last statistics."""
    trainer = Trainer(cfg, init=init, resume=resume, grow=grow)
    try:
        return trainer.fit(time_budget=time_budget)
    finally:
        shutdown(trainer.info)
