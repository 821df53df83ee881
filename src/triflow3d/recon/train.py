"""Train our own small reconstructor (``lrm-small``) on rendered views, with exact resume.

One step: encode each object's six Zero123++ views to a triplane, volume-render a random subset of
supervision rays (other views and the input views), and minimise MSE on white-composited colour plus
MSE on coverage (alpha vs mask). AdamW, linear warm-up then cosine decay, gradient clipping.

Run folder: ``train_config.json`` + ``command.txt``, ``tb/`` (TensorBoard), ``log.jsonl``,
``checkpoints/step_XXXXXXX/{model/ (model.safetensors + config.json), state.pt}`` and ``latest.json``.
``state.pt`` holds only tensors and plain containers (optimizer, RNG states, step, data position) and
is read with ``weights_only=True``. Resuming restores all of it, so N steps == k steps + resume to N.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from triflow3d import conventions as cv
from triflow3d.encoders import (
    ReconstructorConfig,
    TriplaneReconstructor,
    build_reconstructor,
    save_reconstructor,
)
from triflow3d.encoders.lift import COLOUR_CHANNELS
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.recon.data import ReconData, sample_rays
from triflow3d.recon.points import occupancy_loss
from triflow3d.utils.budget import TimeBudget
from triflow3d.utils.io import append_jsonl, atomic_path, write_json
from triflow3d.utils.progress import progress_bar
from triflow3d.utils.seeds import mix_seed

LOOPS = ("auto", "host", "resident")


@dataclass(frozen=True)
class ReconTrainConfig:
    """Optimisation and data-sampling knobs (the model itself is a ReconstructorConfig)."""

    steps: int = 6000
    batch: int = 4
    """Objects per step."""
    rays: int = 1024
    """Supervision rays rendered per object per step (random subset, not full images)."""
    fg_fraction: float = 0.5
    """Share of rays drawn from covered pixels (the rest uniformly)."""
    edge_fraction: float = 0.0
    """Share of rays drawn from silhouette-edge pixels (the outline's 3x3 band), where the silhouette
    error lives; ``fg_fraction + edge_fraction <= 1``, the rest uniformly."""
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    mask_weight: float = 0.5
    """Weight of the coverage loss MSE(alpha, mask)."""
    colour_weight: float = 0.0
    """Weight of the covered-ray colour loss: MSE between the target colour and the render's colour
    *before* the background is added, divided by its (detached) opacity, on rays the target covers fully
    and the render at least a little. Unlike the loss on white it cannot be met by trading colour for
    opacity, so it gives hue a gradient from the first step."""
    camera_noise: float = 0.02
    """Uniform noise on the 16 input-camera numbers, as upstream training does."""
    sup_size: int = 128
    """Supervision views are held at this resolution."""
    samples: int = 0
    """Samples per training ray (half stratified, half importance); 0 = the model's own setting."""
    fast_render: bool = True
    """Render the training rays through the renderer's fast path (empty-space skipping, early ray
    termination, a few small decoder calls per object: cheapest on a CPU); ``False`` evaluates every sample
    in one dense decoder call per pass (large kernels: the better choice on a GPU, where the fast path is
    bound by kernel launches)."""
    colour_whiten: bool = False
    """Weigh colour errors (on white and on covered rays) by the inverse covariance of the training views'
    covered colours (:func:`colour_metric`), so every colour axis of the data is learned alike. Plain MSE
    learns the weakest axis last: for the procedural shapes that is green-magenta (1/5 of the brightness
    variance), and ``lrm-small`` v3's planes had lost it (a linear probe of them recovers L* and b* but not
    a*: red, green, purple and pink come back brown or grey). The logged ``colour_mse`` is then the weighed
    one; ``rgb_mse`` and PSNR stay plain."""
    occ_weight: float = 0.0
    """Weight of the direct 3D supervision (inside/outside BCE at the mesh threshold); 0 = off."""
    occ_points: int = 1024
    """3D supervision points drawn per object per step (from ``occ_samples`` precomputed)."""
    occ_samples: int = 8192
    """Labelled points precomputed per object (half near the surface, half uniform in the box)."""
    init: str = ""
    """Start from these weights (``NAME[:CKPT]``, e.g. ``lrm-small``) instead of from scratch; modules the
    trained model lacks (a newly enabled lift) keep their fresh initialisation."""
    fresh_decoder: bool = False
    """With ``init``: the field decoder keeps its fresh initialisation instead of the starting model's
    (a decoder inherited from a run that never learned hue cannot express it)."""
    decoder_only_steps: int = 0
    """For the first N steps only the field decoder learns (the rest is held, and then warms up over
    ``warmup`` steps): with ``fresh_decoder``, its first random gradients do not disturb a warm-started
    encoder."""
    freeze_decoder: bool = False
    """Keep the field decoder fixed (with ``init``: triplanes stay decodable by the starting model's
    decoder, so latents and generators made with it stay valid)."""
    loop: str = "auto"
    """``host``: data and random draws on the CPU, the batch moved per step (the same rays on any device);
    ``resident``: data on the training device, draws from a device generator reseeded every step, numbers
    read back only every ``log_every`` steps; ``auto``: resident on CUDA, host on the CPU."""
    seed: int = 0
    ckpt_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 3

    def __post_init__(self):
        for name in ("steps", "batch", "rays", "ckpt_every", "log_every", "sup_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train {name} must be >= 1, got {getattr(self, name)}")
        if self.samples and self.samples < 8:
            raise ConfigError(f"train samples must be 0 (the model's own) or >= 8, got {self.samples}")
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise ConfigError(f"fg_fraction must be in [0, 1], got {self.fg_fraction}")
        if self.loop not in LOOPS:
            raise ConfigError(f"train loop must be one of {LOOPS}, got {self.loop!r}")
        if not 0.0 <= self.edge_fraction <= 1.0 - self.fg_fraction:
            raise ConfigError(f"edge_fraction must be in [0, 1 - fg_fraction], got {self.edge_fraction}")


def recon_lr_at(step: int, cfg: ReconTrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class DataCursor:
    """Epoch-wise shuffled object order: the permutation is a pure function of (seed, epoch)."""

    seed: int
    epoch: int = 0
    pos: int = 0

    def next(self, n: int, batch: int) -> torch.Tensor:
        out: list[torch.Tensor] = []
        while sum(len(o) for o in out) < batch:
            perm = torch.randperm(
                n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            )
            take = perm[self.pos : self.pos + batch - sum(len(o) for o in out)]
            out.append(take)
            self.pos += len(take)
            if self.pos >= n:
                self.epoch, self.pos = self.epoch + 1, 0
        return torch.cat(out)


def colour_metric(data: ReconData, objects: int = 256, stride: int = 4) -> torch.Tensor:
    """M (3, 3) with ||M e||^2 weighing an sRGB colour error e by the inverse covariance of the colours of
    covered supervision pixels (alpha > 0.99; the first ``objects`` objects, every ``stride``-th pixel):
    M = Sigma^(-1/2) * sqrt(tr(Sigma) / 3), so errors spread like the data keep plain MSE's scale. A pure
    function of the data: a resumed run rebuilds the same M."""
    sup = data.sup[:objects, :, :, ::stride, ::stride].cpu()  # (n, M, 4, s, s) uint8
    px = sup.permute(0, 1, 3, 4, 2).reshape(-1, 4).double() / 255.0
    px = px[px[:, 3] > 0.99, :3]
    if len(px) < 16:
        raise ConfigError(f"colour_whiten: only {len(px)} covered supervision pixels to measure colours on")
    lam, vec = torch.linalg.eigh(torch.cov(px.T))
    lam = lam.clamp_min(1e-3 * float(lam.sum()))  # a degenerate palette (e.g. greyscale) stays finite
    return (vec @ torch.diag((lam.mean() / lam).sqrt()) @ vec.T).float()


def colour_error(pred: torch.Tensor, target: torch.Tensor, metric: torch.Tensor | None) -> torch.Tensor:
    """Squared colour error per channel (..., 3): plain, or of M (pred - target) (:func:`colour_metric`)."""
    e = pred - target
    return (e if metric is None else e @ metric.T).square()


def loss_on_batch(
    model: TriplaneReconstructor,
    data: ReconData,
    idx: torch.Tensor,
    cfg: ReconTrainConfig,
    g: torch.Generator,
    metric: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Render random supervision rays of objects ``idx`` from their predicted triplanes -> losses (colour
    errors weighed by ``metric``, :func:`colour_metric`, when given)."""
    from triflow3d.triplane.volume import render_rays

    # The host loop: data and draws on the CPU (``g`` a CPU generator: the same run on any device), the
    # step's batch moved to the model's device. The resident loop: all of it on the device already.
    dev = next(model.parameters()).device
    images = data.inputs[idx].to(dev).float() / 255.0  # (B, V, 3, H, W)
    cams = data.input_cameras[idx]
    cams = (cams + cfg.camera_noise * (2 * torch.rand(cams.shape, generator=g, device=g.device) - 1)).to(dev)
    rays = sample_rays(data, idx, cfg.rays, cfg.fg_fraction, g, cfg.edge_fraction).to(dev)
    planes = model.forward_planes(images, cams)  # (B, 3, C, R, R)
    opts = train_render_options(model, cfg)
    out = render_rays(model.synthesizer, planes, rays.origins, rays.dirs, opts, False, generator=g)
    rgb_mse = F.mse_loss(out["rgb"], rays.rgb)  # logged (PSNR) unweighted
    rgb_loss = rgb_mse if metric is None else colour_error(out["rgb"], rays.rgb, metric).mean()
    mask_mse = F.mse_loss(out["weight"], rays.alpha)
    losses = {"loss": rgb_loss + cfg.mask_weight * mask_mse, "rgb_mse": rgb_mse, "mask_mse": mask_mse}
    if cfg.colour_weight > 0:
        losses["colour_mse"] = covered_colour_loss(
            out["rgb"], out["weight"], rays.rgb, rays.alpha, metric=metric
        )
        losses["loss"] = losses["loss"] + cfg.colour_weight * losses["colour_mse"]
    if cfg.occ_weight > 0:
        losses["occ_bce"] = occupancy_term(model, planes, data, idx, cfg.occ_points, g)
        losses["loss"] = losses["loss"] + cfg.occ_weight * losses["occ_bce"]
    return losses


def covered_colour_loss(
    rgb: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    alpha: torch.Tensor,
    min_weight: float = 0.05,
    metric: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rendered rgb on white (B, N, 3) and opacity (B, N, 1) vs target colour on white and coverage -> MSE of
    the render's own colour (rgb before the white background, over its detached opacity) on rays the target
    covers fully (alpha > 0.99) and the render covers at least ``min_weight``; 0 when there are none.
    ``metric``: colour errors weighed as in :func:`colour_error`."""
    own = (rgb - (1.0 - weight)) / weight.detach().clamp_min(min_weight)  # (B, N, 3) mean sample colour
    keep = ((alpha > 0.99) & (weight.detach() > min_weight)).to(rgb.dtype)  # (B, N, 1)
    return (colour_error(own, target, metric) * keep).sum() / (3.0 * keep.sum()).clamp_min(1.0)


def body_lr_scale(step: int, cfg: ReconTrainConfig) -> float:
    """The share of the learning rate that everything but the decoder gets: 0 for ``decoder_only_steps``,
    then a linear ramp over ``warmup`` steps (1 throughout when there are none)."""
    if cfg.decoder_only_steps == 0:
        return 1.0
    if step < cfg.decoder_only_steps:
        return 0.0
    return min(1.0, (step - cfg.decoder_only_steps + 1) / max(cfg.warmup, 1))


def warm_start(model: TriplaneReconstructor, spec: str, fresh_decoder: bool = False) -> None:
    """Copy the weights of reconstructor ``spec`` into ``model``; only modules it lacks may stay fresh (and
    the decoder, with ``fresh_decoder``). A plane lift trained on RGB grows to read alpha when ``model``'s
    does (``lift.plane_lift_state_with_alpha``: the grown lift starts as the old one)."""
    from triflow3d.encoders import load_reconstructor

    source = grown_state(load_reconstructor(spec), model)
    if fresh_decoder:
        source = {k: v for k, v in source.items() if not k.startswith(DECODER_PREFIX)}
    target = model.state_dict()
    extra = sorted(set(source) - set(target))
    shapes = sorted(k for k in set(source) & set(target) if source[k].shape != target[k].shape)
    if extra or shapes:
        raise ConfigError(
            f"--init {spec}: does not fit the model (unexpected {extra[:3]}, shapes {shapes[:3]})"
        )
    model.load_state_dict(source, strict=False)


DECODER_PREFIX = "synthesizer.decoder."


def grown_state(source: TriplaneReconstructor, target: TriplaneReconstructor) -> dict[str, torch.Tensor]:
    """``source``'s state dict, its plane lift grown to read alpha when only ``target``'s does, and its
    decoder grown to read colour planes when only ``target`` has them (:func:`decoder_state_with_colour`)."""
    state = source.state_dict()
    if target.config.input_alpha and not source.config.input_alpha and source.config.plane_lift_depth:
        from triflow3d.encoders.lift import plane_lift_state_with_alpha

        state = plane_lift_state_with_alpha(state, "plane_lift.", source.config.plane_lift_depth)
    if target.config.colour_planes and not source.config.colour_planes:
        state = decoder_state_with_colour(state, DECODER_PREFIX, source.config.triplane_dim)
    return state


def decoder_state_with_colour(
    state: dict[str, torch.Tensor], prefix: str, n_features: int, colour: int = COLOUR_CHANNELS
) -> dict[str, torch.Tensor]:
    """A NeRF decoder's state dict -> the same decoder reading ``colour`` more channels per plane: zero
    input weights for them, so density is unchanged, and the MLP's rgb outputs zeroed, so the colour comes
    from the grown decoder's rgb route alone at the start (its fresh init: the planes' colour logits).
    Other keys pass through; features are plane-major."""
    out = dict(state)
    w = state[prefix + "net.0.weight"].unflatten(1, (cv.NUM_PLANES, n_features))  # (H, 3 planes, C)
    out[prefix + "net.0.weight"] = torch.cat([w, w.new_zeros(*w.shape[:2], colour)], dim=2).flatten(1)
    last_w, last_b = state[prefix + "net.6.weight"].clone(), state[prefix + "net.6.bias"].clone()
    last_w[1:], last_b[1:] = 0.0, 0.0  # rows 1:4 are the rgb logits, row 0 the density
    out[prefix + "net.6.weight"], out[prefix + "net.6.bias"] = last_w, last_b
    return out


def occupancy_term(
    model: TriplaneReconstructor, planes: torch.Tensor, data: ReconData, idx: torch.Tensor, n: int, g
) -> torch.Tensor:
    """BCE of ``n`` random labelled 3D points per object against the density at the mesh threshold."""
    if data.points is None or data.occ is None:
        raise ConfigError("occ_weight > 0 needs 3D supervision points (ReconData.points)")
    pick = torch.randint(0, data.points.shape[1], (len(idx), n), generator=g, device=g.device)  # (B, n)
    pts = data.points[idx].gather(1, pick[..., None].expand(-1, -1, 3))
    occ = data.occ[idx].gather(1, pick)
    pts, occ = pts.to(planes.device), occ.to(planes.device)
    return occupancy_loss(model.synthesizer.query(planes, pts)["sigma_raw"], occ)


def train_render_options(model: TriplaneReconstructor, cfg: ReconTrainConfig):
    """The model's render options with ``cfg.samples`` per ray (if set) and ``cfg.fast_render``."""
    opts = model.render_options
    if cfg.samples:
        opts = dataclasses.replace(
            opts, samples_coarse=cfg.samples // 2, samples_importance=cfg.samples - cfg.samples // 2
        )
    return dataclasses.replace(opts, fast=cfg.fast_render)


class ReconTrainer:
    """Holds model, optimiser, RNGs and data cursor; ``run()`` is the loop, ``save()``/``load()`` resume.

    ``device`` holds the model. The host loop keeps the data and every RNG on the CPU and moves each step's
    batch, so a run draws the same rays on any device and may resume on another one. The resident loop
    (``cfg.loop``; the default on CUDA) holds the data on the device (``ReconData.to``) and draws each
    step from a device generator seeded by (seed, step): nothing crosses to the host between logs.
    """

    def __init__(self, cfg: ReconTrainConfig, model_config: ReconstructorConfig, data: ReconData, run_dir: Path,
                 encoder_id: str = "lrm-small", resuming: bool = False, device: str = "cpu"):  # fmt: skip
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.metric = colour_metric(data).to(device) if cfg.colour_whiten else None
        self.model = build_reconstructor(model_config, encoder_id=encoder_id, seed=cfg.seed).train()
        if cfg.init and not resuming:  # a resumed run's weights come from its checkpoint (load())
            warm_start(self.model, cfg.init, cfg.fresh_decoder)
        self.model.to(device)
        if cfg.freeze_decoder:
            self.model.synthesizer.requires_grad_(False)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = []
        for body in (False, True):  # body: everything but the decoder (held while decoder_only_steps run)
            mine = [p for n, p in named if n.startswith(DECODER_PREFIX) != body]
            groups += [
                {"params": [p for p in mine if p.ndim >= 2], "weight_decay": cfg.weight_decay, "body": body},
                {"params": [p for p in mine if p.ndim < 2], "weight_decay": 0.0, "body": body},
            ]
        self.body = [p for n, p in named if not n.startswith(DECODER_PREFIX)]
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)  # rays, camera noise, render jitter
        self.cursor = DataCursor(cfg.seed)
        self.step = 0
        self.wall = 0.0  # training seconds accumulated over resumes
        self.device = torch.device(device)
        self.resident = cfg.loop == "resident" or (cfg.loop == "auto" and self.device.type == "cuda")
        if self.resident:
            self.data = data.to(self.device)
            self.device_gen = torch.Generator(self.device)
            if self.device.type == "cuda":  # fp32 matrix products at the TF32 rate (cuDNN already uses it)
                torch.backends.cuda.matmul.allow_tf32 = True

    # --- one step -------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One step; its numbers (a host synchronisation)."""
        return self.numbers(self.step_tensors())

    def step_tensors(self) -> dict[str, torch.Tensor | float]:
        """One step; its losses and gradient norm as device tensors (nothing read back)."""
        lr, held = recon_lr_at(self.step, self.cfg), self.cfg.decoder_only_steps
        for p in self.body:  # no gradient through the held body: cheaper, and clipping sees the decoder's
            p.requires_grad_(self.step >= held)
        for group in self.opt.param_groups:
            group["lr"] = lr * (body_lr_scale(self.step, self.cfg) if group.get("body") else 1.0)
        idx = self.cursor.next(len(self.data), self.cfg.batch)
        g = self.gen
        if self.resident:
            idx = (idx.pin_memory() if self.device.type == "cuda" else idx).to(self.device, non_blocking=True)
            g = self.device_gen.manual_seed(mix_seed(self.cfg.seed, self.step))
        losses = loss_on_batch(self.model, self.data, idx, self.cfg, g, self.metric)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.step += 1
        return {k: v.detach() for k, v in losses.items()} | {
            "grad_norm": gnorm,
            "lr": lr,
        }

    @staticmethod
    def numbers(out: dict[str, torch.Tensor | float]) -> dict[str, float]:
        nums = {k: float(v) for k, v in out.items()}
        nums["psnr"] = -10.0 * math.log10(max(nums["rgb_mse"], 1e-10))
        return nums

    # --- checkpoints ----------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "wall": self.wall,
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cursor": {"seed": self.cursor.seed, "epoch": self.cursor.epoch, "pos": self.cursor.pos},
        }

    def save(self) -> Path:
        ckdir = self.run_dir / "checkpoints" / f"step_{self.step:07d}"
        with atomic_path(ckdir) as tmp:
            tmp.mkdir()
            save_reconstructor(self.model, tmp / "model")
            torch.save(self.state(), tmp / "state.pt")
        write_json(self.run_dir / "latest.json", {"step": self.step, "dir": ckdir.name})
        self._prune()
        return ckdir

    def _prune(self) -> None:
        dirs = sorted((self.run_dir / "checkpoints").glob("step_*"))
        for d in dirs[: max(0, len(dirs) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(d, ignore_errors=True)

    def load(self, ckdir: Path) -> None:
        try:
            sd = load_file(ckdir / "model" / "model.safetensors")
            st = torch.load(ckdir / "state.pt", map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{ckdir}: cannot read training checkpoint ({e})") from e
        self.model.load_state_dict(sd, strict=True)  # copies into the parameters, on their device
        self.opt.load_state_dict(st["optimizer"])
        self.step, self.wall = int(st["step"]), float(st["wall"])
        self.gen.set_state(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        self.cursor = DataCursor(**st["cursor"])

    # --- loop -----------------------------------------------------------------------------------
    def run(
        self, log: bool = True, time_budget: float | None = None, until: int | None = None
    ) -> dict[str, float]:
        """Train until ``cfg.steps`` (or step ``until``, same schedule); checkpoint every ``ckpt_every``
        steps and at the end.

        ``time_budget`` (seconds): ``cfg.steps`` becomes an upper bound; a fresh run times its first steps
        (inside the warm-up) and shortens ``steps`` to end in time with its schedule complete
        (train_config.json records it); any run checkpoints and stops once the budget is spent.
        """
        writer = _summary_writer(self.run_dir / "tb") if log else None
        budget = self._budget(time_budget)
        last: dict[str, float] = {}
        with progress_bar() as bar:
            task = bar.add_task("train", total=self.cfg.steps, completed=self.step, status="")
            while self.step < min(self.cfg.steps, until or self.cfg.steps):
                t0 = time.perf_counter()
                out = self.step_tensors()
                if (
                    budget is not None
                    and (end := budget.resize(self.step)) is not None
                    and end < self.cfg.steps
                ):
                    self._shorten(end)
                    bar.update(task, total=end)
                logged = self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps
                if logged or not self.resident:
                    last = self.numbers(out)
                self.wall += time.perf_counter() - t0
                if logged:
                    self._log(writer, last)
                status = f"loss {last['loss']:.4f} psnr {last['psnr']:.1f}" if last else ""
                bar.update(task, completed=self.step, status=status)
                stop = (budget is not None and budget.over()) or self.step == until
                if self.step % self.cfg.ckpt_every == 0 or self.step == self.cfg.steps or stop:
                    self.save()
                if stop:
                    break
        if writer is not None:
            writer.close()
        return last

    def _budget(self, seconds: float | None) -> TimeBudget | None:
        if not seconds:
            return None
        sync = (lambda: torch.cuda.synchronize(self.device)) if self.device.type == "cuda" else (lambda: None)
        budget = TimeBudget(
            seconds, self.step, min(20, self.cfg.warmup) if self.cfg.warmup >= 2 else 20, sync
        )
        budget.done = self.step > 0  # a resumed run keeps the length it was given
        return budget

    def _shorten(self, end: int) -> None:
        """The run now ends at step ``end``: the schedule's length and train_config.json follow."""
        print(f"time budget: the run ends at step {end} instead of {self.cfg.steps}", file=sys.stderr)
        self.cfg = dataclasses.replace(self.cfg, steps=end)
        path = self.run_dir / "train_config.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            saved["train"]["steps"] = end
            write_json(path, saved)

    def _log(self, writer, metrics: dict[str, float]) -> None:
        row = {"step": self.step, "wall": round(self.wall, 2), **{k: round(v, 6) for k, v in metrics.items()}}
        append_jsonl(self.run_dir / "log.jsonl", [row])
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"train/{k}", v, self.step)


def _summary_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is the optional [train] extra
        return None
    return SummaryWriter(str(path))


def latest_checkpoint(run_dir: Path) -> Path | None:
    p = Path(run_dir) / "latest.json"
    if not p.exists():
        return None
    d = Path(run_dir) / "checkpoints" / json.loads(p.read_text())["dir"]
    return d if d.is_dir() else None


def check_run_config(
    run_dir: Path, cfg: ReconTrainConfig, model_config: ReconstructorConfig, preset: str = "lrm-small"
) -> None:
    """Write the run's configs, or (on resume) check they match the saved ones except ``steps``."""
    path = Path(run_dir) / "train_config.json"
    new = {"preset": preset, "train": dataclasses.asdict(cfg), "model": model_config.to_dict()}
    if path.exists():
        old = json.loads(path.read_text())

        def comparable(train: dict) -> dict:  # as saved in JSON, without the settings a resume may change
            return json.loads(json.dumps(train)) | {"steps": None, "ckpt_every": None, "log_every": None}

        # a field added since the run started takes its default (what the run did before it existed)
        a = comparable(dataclasses.asdict(ReconTrainConfig()) | old["train"])
        b = comparable(new["train"])
        if a != b or old["model"] != json.loads(json.dumps(new["model"])):
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) or ["model"]
            raise ConfigError(f"{path}: resume with different settings ({', '.join(diff)}); use a new --out")
    write_json(path, new)
    (Path(run_dir) / "command.txt").write_text(" ".join(sys.argv) + "\n")


def machine_description() -> str:
    return f"{platform.node()} {platform.machine()} {platform.processor() or ''} torch {torch.__version__}".strip()
