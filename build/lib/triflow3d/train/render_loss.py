"""The optional perceptual rendering loss: predicted triplanes rendered through the frozen reconstructor's
decoder and compared with the object's views (research/paper.md s4)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from triflow3d import cameras as cam
from triflow3d.data.views import composite_white, load_rgba, read_cameras, view_file
from triflow3d.errors import ConfigError
from triflow3d.flow.path import x0_from_velocity
from triflow3d.latents.normalizer import LatentNormalizer
from triflow3d.train.config import TrainConfig
from triflow3d.triplane.volume import RenderOptions, render_rays


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


def load_render_field(cfg: TrainConfig, encoder_id: str, device: torch.device) -> nn.Module:
    """The frozen reconstructor's triplane field (decoder) that renders predicted triplanes."""
    from triflow3d.encoders import load_reconstructor

    recon = load_reconstructor(cfg.reconstructor or encoder_id, device=device)
    return recon.synthesizer.float().eval().requires_grad_(False)
