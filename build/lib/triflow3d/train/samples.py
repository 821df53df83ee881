"""Sample images of a run for TensorBoard: EMA samples of fixed prompts, rendered (or plane 0 shown)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from triflow3d import cameras as cam
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.models.text_encoder import TextEncoder
from triflow3d.train.text import TextTable
from triflow3d.triplane.volume import RenderOptions, render_rays


@torch.no_grad()
def sample_images(
    ema: nn.Module,
    encoder: TextEncoder,
    table: TextTable,
    normalizer: LatentNormalizer,
    field: nn.Module | None,
    prompts: list[str],
    triplane_shape: tuple[int, ...],
    autocast: torch.autocast,
    opts: RenderOptions | None = None,
    size: int = 64,
    steps: int = 20,
    cfg_scale: float = 4.0,
) -> tuple[str, Tensor]:
    """EMA samples of ``prompts`` -> (tag, images (n, 3, H, W) in [0, 1]): one rendered view each through
    the frozen ``field``, or the first three channels of plane 0 (min-max scaled) without one."""
    from triflow3d.flow.sampling import denoise, get_noise, get_schedule

    device = next(ema.parameters()).device
    cond = encoder(prompts).to("cpu", torch.float32).centred(table.center).to(device)
    uncond = table([""] * len(prompts), device)
    x = get_noise(range(len(prompts)), triplane_shape, device)
    with autocast:
        x0 = denoise(ema, x, get_schedule(steps), cfg_scale, cond.as_kwargs(), uncond.as_kwargs())
    raw = normalizer.denormalize(x0.float())  # (n, 3, C, R, R)
    if field is None:
        img = raw[:, 0, :3]
        lo, hi = img.amin((1, 2, 3), keepdim=True), img.amax((1, 2, 3), keepdim=True)
        return "samples/plane0", (img - lo) / (hi - lo).clamp_min(1e-8)
    rig = cam.zero123pp_rig()
    o, d = cam.pixel_rays(rig.c2w[:1].to(device), rig.intrinsics[:1].to(device), size)
    n = len(prompts)
    rgb = render_rays(field, raw, o.expand(n, -1, -1), d.expand(n, -1, -1), opts or RenderOptions(32, 32),
                      deterministic=True)["rgb"]  # (n, S S, 3)  # fmt: skip
    return "samples/render", rgb.reshape(n, size, size, 3).permute(0, 3, 1, 2)
