"""Pure-PyTorch volume rendering of triplane fields, with InstantMesh's ImportanceRenderer semantics.

Per ray (all of it written from the published description, see docs/renderer.md):

1. slab intersection with the box; rays that miss get start = min(valid starts) and end =
   max(valid *starts*), taken over the whole call (upstream quirk);
2. ``samples_coarse`` stratified depths (``deterministic``: the mid-jitter 0.5 instead of U(0, 1));
3. samples outside the box get rgb 0 and sigma_raw = -FLT_MAX / 3 (density 0);
4. mid-point compositing (MipRayMarcher2) with softplus(sigma - 1) on the averaged raw sigma;
5. coarse weights -> max-pool 2 / avg-pool 2 / + 0.01 / [1:-1] -> inverse-CDF importance depths
   (``deterministic``: u = linspace(0, 1)), over only the first of the mid-point bins (upstream);
6. merge + sort, composite again; depth = sum w z_mid clamped to the call-wide [min, max] of the
   sample depths; white background rgb += 1 - sum w.

Rays are processed in chunks of ``RenderOptions.chunk``; the call-wide reductions (invalid-ray
fix-up, depth clamp) are computed over all rays, so chunking never changes the result.
``RenderOptions.fast`` skips the evaluation of out-of-box samples (including rays that miss the box)
and stops evaluating a ray once its transmittance is below ``termination_eps``; this changes rgb /
weight by at most ``termination_eps`` and depth by at most ``termination_eps * max depth``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from triflow3d import conventions as cv
from triflow3d.cameras import decode_render_cameras, pixel_rays
from triflow3d.triplane.decoder import density_from_raw
from triflow3d.triplane.grid import query_grid

EMPTY_SIGMA_RAW = torch.finfo(torch.float32).min / 3  # upstream nan_to_num(-inf) / 3: density 0
TRANSMITTANCE_EPS = 1e-10  # upstream cumprod(1 - alpha + 1e-10)
PDF_EPS = 1e-5


class Field(Protocol):
    def query(self, planes, xyz: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class RenderOptions:
    samples_coarse: int = 48
    """Stratified samples per ray (upstream ``depth_resolution``)."""
    samples_importance: int = 48
    """Inverse-CDF samples per ray (upstream ``depth_resolution_importance``); 0 disables them."""
    white_background: bool = True
    box: tuple[float, float] = (cv.BOX_MIN, cv.BOX_MAX)
    """The cube [lo, hi]^3 that bounds the rays and filters samples."""
    chunk: int = 4096
    """Rays per chunk (per batch element); bounds memory, never changes results."""
    fast: bool = True
    """Skip out-of-box samples and terminate rays early (see the module docstring)."""
    termination_eps: float = 1e-8
    """Fast path: stop evaluating a ray once its transmittance falls below this."""
    stages: int = 6
    """Fast path: depth-ordered evaluation stages per pass (termination granularity)."""
    occupancy_resolution: int = 32
    """Fast path: cells per axis of the empty-space grid over the box; 0 disables empty-space skipping."""
    occupancy_threshold: float = 1e-4
    """Fast path: a lattice point whose activated density is below this counts as empty."""
    occupancy_dilation: int = 2
    """Fast path: cells an occupied cell is grown by (must cover one sample spacing)."""


RENDER_PRESETS: dict[str, RenderOptions] = {
    "instant-nerf-large": RenderOptions(samples_coarse=64, samples_importance=64),
    "instant-nerf-base": RenderOptions(samples_coarse=48, samples_importance=48),
    "parity-small": RenderOptions(samples_coarse=32, samples_importance=32),
    "tiny": RenderOptions(samples_coarse=8, samples_importance=8),
}


# --- ray bounds and sample placement --------------------------------------------------------------
def ray_box_bounds(origins: torch.Tensor, dirs: torch.Tensor, box: tuple[float, float]):
    """Slab test against [lo, hi]^3: (B, N, 3) x2 -> start, end (B, N, 1) and valid = end > start.

    Missed rays get start -1, end -2 as upstream (they are fixed up by :func:`fix_invalid_rays`).
    """
    inv = 1.0 / dirs
    t_lo = (box[0] - origins) * inv
    t_hi = (box[1] - origins) * inv
    start = torch.minimum(t_lo, t_hi).amax(dim=-1, keepdim=True)
    end = torch.maximum(t_lo, t_hi).amin(dim=-1, keepdim=True)
    valid = end > start
    start = torch.where(valid, start, torch.full_like(start, -1.0))
    end = torch.where(valid, end, torch.full_like(end, -2.0))
    return start, end, valid


def fix_invalid_rays(start: torch.Tensor, end: torch.Tensor, valid: torch.Tensor):
    """Call-wide upstream quirk: missed rays get [min(valid starts), max(valid starts)] (unchanged when
    no ray is valid). Decided on the tensors' device, with no host synchronisation."""
    lo = torch.where(valid, start, torch.full_like(start, torch.inf)).amin()
    hi = torch.where(valid, start, torch.full_like(start, -torch.inf)).amax()
    keep = valid | ~valid.any()
    return torch.where(keep, start, lo), torch.where(keep, end, hi)


def _draw_device(generator: torch.Generator | None) -> torch.device | None:
    """Random numbers are drawn where the generator lives (the CPU without one), then moved."""
    return None if generator is None else generator.device


def stratified_depths(start, end, n: int, deterministic: bool, generator=None) -> torch.Tensor:
    """start, end (B, N, 1) -> (B, N, n, 1): linspace(start, end) + U(0, 1) (or 0.5) bin widths."""
    steps = torch.arange(n, dtype=start.dtype, device=start.device) / (n - 1)
    depths = start[..., None, :] + steps[:, None] * (end - start)[..., None, :]
    delta = ((end - start) / (n - 1))[..., None, :]
    if deterministic:
        jitter = torch.full_like(depths, 0.5)
    else:
        jitter = torch.rand(
            depths.shape, generator=generator, dtype=depths.dtype, device=_draw_device(generator)
        )
        jitter = jitter.to(depths.device)
    return depths + jitter * delta


def smooth_weights(weights: torch.Tensor) -> torch.Tensor:
    """(R, D-1) coarse weights -> (R, D-3): max-pool 2, avg-pool 2, + 0.01, drop both ends."""
    w = F.max_pool1d(weights[:, None], 2, 1, padding=1)
    w = F.avg_pool1d(w, 2, 1)[:, 0] + 0.01
    return w[:, 1:-1]


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, deterministic: bool, generator=None):
    """Inverse-CDF samples (R, n) from bins (R, K) and weights (R, W); only bins[:, :W + 1] are reachable."""
    rays, nw = weights.shape
    pdf = (weights + PDF_EPS) / torch.sum(weights + PDF_EPS, -1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # (R, W + 1)
    if deterministic:
        u = torch.linspace(0, 1, n, device=bins.device, dtype=bins.dtype).expand(rays, n).contiguous()
    else:
        u = torch.rand(rays, n, generator=generator, dtype=bins.dtype, device=_draw_device(generator)).to(
            bins.device
        )
    inds = torch.searchsorted(cdf, u, right=True)
    idx = torch.stack([(inds - 1).clamp(min=0), inds.clamp(max=nw)], -1).view(rays, 2 * n)
    cdf_g = torch.gather(cdf, 1, idx).view(rays, n, 2)
    bins_g = torch.gather(bins, 1, idx).view(rays, n, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < PDF_EPS, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


@torch.no_grad()
def importance_depths(depths, weights, n: int, deterministic: bool, generator=None) -> torch.Tensor:
    """Coarse depths (B, N, D, 1) + coarse weights (B, N, D-1, 1) -> fine depths (B, N, n, 1), detached."""
    b, r, d, _ = depths.shape
    z = depths.reshape(b * r, d)
    mids = 0.5 * (z[:, :-1] + z[:, 1:])
    w = smooth_weights(weights.reshape(b * r, d - 1).float())
    return sample_pdf(mids, w, n, deterministic, generator).reshape(b, r, n, 1)


# --- compositing ----------------------------------------------------------------------------------
def segment_alpha(sigma_raw: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Mid-point opacity of each segment: (..., D, 1) x2 -> (..., D-1, 1)."""
    deltas = depths[..., 1:, :] - depths[..., :-1, :]
    sigma_mid = density_from_raw((sigma_raw[..., :-1, :] + sigma_raw[..., 1:, :]) / 2)
    return 1 - torch.exp(-sigma_mid * deltas)


def composite(rgb: torch.Tensor, sigma_raw: torch.Tensor, depths: torch.Tensor):
    """MipRayMarcher2: (..., D, 3|1|1) -> rgb (..., 3), depth (..., 1) (unclamped), weights (..., D-1, 1)."""
    alpha = segment_alpha(sigma_raw, depths)
    shifted = torch.cat([torch.ones_like(alpha[..., :1, :]), 1 - alpha + TRANSMITTANCE_EPS], -2)
    weights = alpha * torch.cumprod(shifted, -2)[..., :-1, :]
    rgb_mid = (rgb[..., :-1, :] + rgb[..., 1:, :]) / 2
    depth_mid = (depths[..., :-1, :] + depths[..., 1:, :]) / 2
    return torch.sum(weights * rgb_mid, -2), torch.sum(weights * depth_mid, -2), weights


# --- field evaluation -----------------------------------------------------------------------------
def in_box(points: torch.Tensor, box: tuple[float, float]) -> torch.Tensor:
    """(..., 3) -> (...) bool, inclusive of the faces as upstream."""
    return ((points >= box[0]) & (points <= box[1])).all(-1)


@torch.no_grad()
def occupancy_grid(field: Field, planes, batch: int, opts: RenderOptions, device=None) -> torch.Tensor:
    """Empty-space grid (B, G, G, G) bool over the box: a cell is occupied if a corner of it, or of a
    cell within ``occupancy_dilation`` cells, has density >= ``occupancy_threshold``."""
    g, (lo, hi) = opts.occupancy_resolution, opts.box
    sigma = query_grid(lambda xyz: field.query(planes, xyz)["sigma"], g + 1, batch, lo, hi, None, device)
    sigma = sigma[..., 0][:, None]  # (B, 1, G+1, G+1, G+1): the cells' corners
    occupied = F.max_pool3d((sigma >= opts.occupancy_threshold).float(), 2, 1)  # any corner
    k = opts.occupancy_dilation
    return F.max_pool3d(occupied, 2 * k + 1, 1, padding=k)[:, 0] > 0


def _needed(points: torch.Tensor, opts: RenderOptions, occupancy: torch.Tensor | None) -> torch.Tensor:
    """Samples (B, n, D, 3) that must be evaluated: inside the box and (if given) in an occupied cell."""
    need = in_box(points, opts.box)
    if occupancy is None:
        return need
    b, g = occupancy.shape[0], occupancy.shape[-1]
    lo, hi = opts.box
    ijk = ((points.clamp(lo, hi) - lo) * (g / (hi - lo))).long().clamp_(max=g - 1)  # floor, points >= lo
    flat = (ijk[..., 0] * g + ijk[..., 1]) * g + ijk[..., 2]
    return need & torch.gather(occupancy.reshape(b, -1), 1, flat.reshape(b, -1)).reshape(flat.shape)


def _batch_item(planes, b: int):
    if planes is None:
        return None
    if isinstance(planes, torch.Tensor):
        return planes[b : b + 1]
    return type(planes)(planes.planes[b : b + 1])  # FoldedPlanes


def _query_dense(field: Field, planes, points: torch.Tensor, box) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate every sample (B, n, D, 3), then filter out-of-box ones (the straightforward path)."""
    b, n, d, _ = points.shape
    out = field.query(planes, points.reshape(b, n * d, 3))
    inside = in_box(points, box)[..., None]
    sigma = torch.where(inside, out["sigma_raw"].reshape(b, n, d, 1), EMPTY_SIGMA_RAW)
    rgb = torch.where(inside, out["rgb"].reshape(b, n, d, 3), 0.0)
    return sigma, rgb


def _query_indexed(field: Field, planes, points: torch.Tensor, idx: torch.Tensor, counts: list[int]):
    """Evaluate the samples at sorted flat indices ``idx`` (``counts`` per batch item) of points (B, n, D, 3)."""
    flat = points.reshape(-1, 3).index_select(0, idx)  # (K, 3)
    outs = [
        field.query(_batch_item(planes, b), part[None])
        for b, part in enumerate(flat.split(counts))
        if len(part)
    ]
    return torch.cat([o["sigma_raw"][0] for o in outs]), torch.cat([o["rgb"][0] for o in outs])


def _query_staged(field: Field, planes, points, depths, need, sigma, rgb, opts: RenderOptions):
    """Evaluate the ``need`` samples (B, n, D) in depth-ordered stages, skipping rays that became opaque.

    Skipped samples keep their prefilled values; their segments lie behind transmittance
    < termination_eps, so they change the composite by less than that.
    """
    b, n, d = need.shape
    edges = torch.linspace(0, d, opts.stages + 1).round().long().tolist()
    work = sigma.detach().clone()  # current values, for the termination test only
    trans = torch.ones(b, n, device=need.device)
    alive = torch.ones(b, n, dtype=torch.bool, device=need.device)
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for s, e in zip(edges[:-1], edges[1:]):
        mask = need[..., s:e] & alive[..., None]  # (B, n, e - s)
        nz = mask.nonzero()  # row-major, so sorted by batch item
        if nz.shape[0]:
            idx = (nz[:, 0] * n + nz[:, 1]) * d + s + nz[:, 2]
            sig_k, rgb_k = _query_indexed(field, planes, points, idx, mask.sum((1, 2)).tolist())
            work.view(-1)[idx] = sig_k.detach()[:, 0].to(work.dtype)
            found.append((idx, sig_k, rgb_k))
        if e < d:
            lo = max(s - 1, 0)  # the segments that end in this stage
            with torch.no_grad():
                alpha = segment_alpha(work[..., lo:e, :], depths[..., lo:e, :])
                trans = trans * torch.prod(1 - alpha + TRANSMITTANCE_EPS, dim=-2)[..., 0]
            alive = alive & (trans > opts.termination_eps)
            if not bool(alive.any()):
                break
    if not found:
        return sigma, rgb
    idx, sig, col = (torch.cat(parts) for parts in zip(*found))
    sigma = sigma.reshape(-1, 1).index_put((idx,), sig.to(sigma.dtype)).reshape(sigma.shape)
    rgb = rgb.reshape(-1, 3).index_put((idx,), col.to(rgb.dtype)).reshape(rgb.shape)
    return sigma, rgb


def _coarse_pass(field, planes, points, depths, opts: RenderOptions, occupancy):
    if not opts.fast:
        return _query_dense(field, planes, points, opts.box)
    sigma = torch.full_like(depths, EMPTY_SIGMA_RAW)
    rgb = torch.zeros_like(points)
    return _query_staged(field, planes, points, depths, _needed(points, opts, occupancy), sigma, rgb, opts)


def _fine_pass(field, planes, o, d, z_c, sig_c, rgb_c, z_f, opts: RenderOptions, occupancy):
    """Evaluate the importance samples and merge them with the coarse ones, sorted by depth."""
    n_c = z_c.shape[-2]
    z_all, order = torch.sort(torch.cat([z_c, z_f], -2)[..., 0], dim=-1)
    z_all, order = z_all[..., None], order[..., None]
    if not opts.fast:
        sig_f, rgb_f = _query_dense(field, planes, o[..., None, :] + z_f * d[..., None, :], opts.box)
        sig_all = torch.gather(torch.cat([sig_c, sig_f], -2), -2, order)
        rgb_all = torch.gather(torch.cat([rgb_c, rgb_f], -2), -2, order.expand(*order.shape[:-1], 3))
        return z_all, sig_all, rgb_all
    sig_all = torch.gather(torch.cat([sig_c, torch.full_like(z_f, EMPTY_SIGMA_RAW)], -2), -2, order)
    rgb_fill = torch.zeros(*z_f.shape[:-1], 3, dtype=rgb_c.dtype, device=rgb_c.device)
    rgb_all = torch.gather(torch.cat([rgb_c, rgb_fill], -2), -2, order.expand(*order.shape[:-1], 3))
    points = o[..., None, :] + z_all * d[..., None, :]
    need = (order[..., 0] >= n_c) & _needed(points, opts, occupancy)
    return (z_all, *_query_staged(field, planes, points, z_all, need, sig_all, rgb_all, opts))


def _render_chunk(field, planes, o, d, start, end, opts: RenderOptions, deterministic, generator, occupancy):
    """One chunk of rays (B, n, 3): returns rgb, unclamped depth, weight sum, depth range, intermediates."""
    z_c = stratified_depths(start, end, opts.samples_coarse, deterministic, generator)  # (B, n, Dc, 1)
    sig_c, rgb_c = _coarse_pass(field, planes, o[..., None, :] + z_c * d[..., None, :], z_c, opts, occupancy)
    inter = {"depths_coarse": z_c}
    if opts.samples_importance > 0:
        _, _, w_c = composite(rgb_c, sig_c, z_c)
        z_f = importance_depths(z_c, w_c, opts.samples_importance, deterministic, generator)
        z, sig, rgb = _fine_pass(field, planes, o, d, z_c, sig_c, rgb_c, z_f, opts, occupancy)
        inter.update(weights_coarse=w_c, depths_fine=z_f)
    else:
        z, sig, rgb = z_c, sig_c, rgb_c
    rgb_out, depth, weights = composite(rgb, sig, z)
    return rgb_out, depth, weights.sum(-2), (z.min(), z.max()), inter


# --- public entry points --------------------------------------------------------------------------
def render_rays(
    field: Field,
    planes,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    opts: RenderOptions = RenderOptions(),
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    return_intermediates: bool = False,
) -> dict[str, torch.Tensor]:
    """Render rays (B, N, 3) through planes (B, 3, C, R, R) -> rgb (B, N, 3), depth, weight (B, N, 1).

    All rays of the call share the invalid-ray fix-up and the depth clamp (as upstream renders all
    views in one call). ``return_intermediates`` adds ray_valid/ray_start/ray_end (B, N, 1),
    depths_coarse (B, N, Dc, 1), weights_coarse (B, N, Dc-1, 1) and depths_fine (B, N, Di, 1).
    """
    start, end, valid = ray_box_bounds(origins, dirs, opts.box)
    start, end = fix_invalid_rays(start, end, valid)
    if opts.fast and hasattr(field, "prepare") and planes is not None:
        planes = field.prepare(planes)
    occupancy = None
    if opts.fast and opts.occupancy_resolution > 0:
        occupancy = occupancy_grid(field, planes, origins.shape[0], opts, origins.device)
    parts, z_min, z_max = [], None, None
    for i in range(0, origins.shape[1], opts.chunk):
        sl = slice(i, i + opts.chunk)
        rays = (origins[:, sl], dirs[:, sl], start[:, sl], end[:, sl])
        rgb, depth, weight, (lo, hi), inter = _render_chunk(
            field, planes, *rays, opts, deterministic, generator, occupancy
        )
        z_min = lo if z_min is None else torch.minimum(z_min, lo)
        z_max = hi if z_max is None else torch.maximum(z_max, hi)
        parts.append({"rgb": rgb, "depth": depth, "weight": weight, **inter})
    out = {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}
    depth = torch.nan_to_num(out["depth"], float("inf")).clamp(z_min, z_max)
    rgb = out["rgb"] + 1 - out["weight"] if opts.white_background else out["rgb"]
    result = {"rgb": rgb, "depth": depth, "weight": out["weight"]}
    if return_intermediates:
        extra = {k: v for k, v in out.items() if k not in result}
        result.update(ray_valid=valid, ray_start=start, ray_end=end, **extra)
    return result


def render_cameras(
    field: Field,
    planes,
    cameras25: torch.Tensor,
    size: int,
    opts: RenderOptions = RenderOptions(),
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    return_intermediates: bool = False,
) -> dict[str, torch.Tensor]:
    """Render cameras (B, M, 25) at size S -> rgb (B, M, 3, S, S), depth and alpha (B, M, 1, S, S).

    All B*M views are one call (call-wide reductions included); ray intermediates, if requested,
    are (B, M*S*S, ...) with the ray index m*S*S + i*S + j.
    """
    b, m, _ = cameras25.shape
    c2w, K = decode_render_cameras(cameras25.reshape(b * m, -1).float())
    origins, dirs = pixel_rays(c2w, K, size)  # (B*M, S*S, 3)
    out = render_rays(
        field,
        planes,
        origins.reshape(b, m * size * size, 3),
        dirs.reshape(b, m * size * size, 3),
        opts,
        deterministic,
        generator,
        return_intermediates,
    )

    def image(x: torch.Tensor) -> torch.Tensor:  # (B, M*S*S, C) -> (B, M, C, S, S)
        return x.reshape(b, m, size, size, -1).permute(0, 1, 4, 2, 3)

    images = {
        "rgb": image(out.pop("rgb")),
        "depth": image(out.pop("depth")),
        "alpha": image(out.pop("weight")),
    }
    return {**images, **out}
