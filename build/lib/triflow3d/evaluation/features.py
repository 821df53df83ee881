"""Pre-trained image networks for FID / KID / CLIP metrics, behind one small ``FeatureNet`` protocol.

None of these networks ships with triflow3d or any installable package (research/packages.md
section 2): the user supplies the files. A metric whose network is missing is reported as
``{"available": false, "reason": ...}`` and never silently computed with another network.

- ``InceptionTorchScript``: the TorchScript ``inception-2015-12-05.pt`` of StyleGAN2-ADA / StyleGAN3
  / clean-fid (2048-d pool3 features). We quantise [0, 1] images to 0..255 levels (as if saved as
  8-bit files), resize to 299x299 with antialiased bicubic in float (close to clean-fid's "clean"
  PIL-bicubic resize, not byte-identical), and call ``model(x, return_features=True)``; the script
  itself maps 0..255 to [-1, 1]. ``torch.jit.load`` runs code from the file: only a path the user
  names (argument, $TRIFLOW3D_INCEPTION) or the standard cache locations are loaded, and only
  ``.pt`` files.
- ``ClipScorer``: a transformers ``CLIPModel`` + tokenizer from a local folder (``local_files_only``).
  Images are resized (shortest side, antialiased bicubic), centre-cropped and normalised in torch with
  the folder's ``preprocessor_config.json`` values (OpenAI CLIP defaults otherwise).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from triflow3d.errors import ConfigError
from triflow3d.evaluation.image import fid_from_features, kid_from_features, psnr, ssim

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_ENV = "TRIFLOW3D_INCEPTION"
CLIP_ENV = "TRIFLOW3D_CLIP"
INCEPTION_SIZE = 299
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_HUB_NAMES = (
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-large-patch14",
)


@runtime_checkable
class FeatureNet(Protocol):
    """A frozen image network: images (N, 3, H, W) in [0, 1] -> features (N, D)."""

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Unavailable:
    """A network that could not be found; ``reason`` goes into every metric that needed it."""

    what: str
    reason: str


def metric_unavailable(name: str, reason: str) -> dict:
    """The report entry of a metric that was not computed."""
    return {"available": False, "metric": name, "reason": reason}


# --- locating files ------------------------------------------------------------------------------
def inception_candidates(explicit: str | Path | None = None) -> list[Path]:
    """Where ``find_inception`` looks, in order. An explicit path is never replaced by a default."""
    if explicit is not None:
        return [Path(explicit).expanduser()]
    found = [Path(os.environ[INCEPTION_ENV]).expanduser()] if os.environ.get(INCEPTION_ENV) else []
    found.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME)
    found.append(Path(tempfile.gettempdir()) / INCEPTION_FILENAME)  # clean-fid's download folder
    found += sorted(
        (Path.home() / ".cache" / "dnnlib" / "downloads").glob(f"*{INCEPTION_FILENAME}")
    )  # StyleGAN
    return found


def find_inception(explicit: str | Path | None = None) -> Path | None:
    return next((p for p in inception_candidates(explicit) if p.is_file()), None)


def clip_candidates(explicit: str | Path | None = None) -> list[Path]:
    """Local CLIP folders ``find_clip`` looks at: explicit, $TRIFLOW3D_CLIP, the Hugging Face cache."""
    if explicit is not None:
        return [Path(explicit).expanduser()]
    found = [Path(os.environ[CLIP_ENV]).expanduser()] if os.environ.get(CLIP_ENV) else []
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    for name in CLIP_HUB_NAMES:
        found += sorted((hub / f"models--{name.replace('/', '--')}" / "snapshots").glob("*"))
    return found


def find_clip(explicit: str | Path | None = None) -> Path | None:
    return next((p for p in clip_candidates(explicit) if (p / "config.json").is_file()), None)


def _not_found(what: str, looked: list[Path], env: str) -> Unavailable:
    where = ", ".join(str(p) for p in looked) or "(nothing)"
    return Unavailable(what, f"{what} not found (looked in: {where}); pass its path or set {env}")


# --- Inception -----------------------------------------------------------------------------------
class InceptionTorchScript:
    """Inception-v3 pool3 features (N, 2048) from the standard FID TorchScript file."""

    name = "inception-2015-12-05"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 50):
        path = Path(path)
        if path.suffix != ".pt":
            raise ConfigError(
                f"{path}: refusing to load; the Inception network must be a TorchScript .pt file"
            )
        if not path.is_file():
            raise ConfigError(f"{path}: Inception TorchScript file not found")
        self.path, self.device, self.batch_size = path, torch.device(device), batch_size
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format of this file
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(path), map_location=self.device).eval()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] (N, 3, H, W) -> 0..255 float (N, 3, 299, 299), quantised before resizing."""
        x = (images.float().clamp(0, 1) * 255.0).round()
        if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(
                x, size=(INCEPTION_SIZE,) * 2, mode="bicubic", antialias=True, align_corners=False
            )
        return x.clamp(0.0, 255.0)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for batch in torch.as_tensor(images).split(self.batch_size):
            x = self.preprocess(batch).to(self.device)
            out.append(self.model(x, return_features=True).float().reshape(len(batch), -1).cpu())
        return torch.cat(out)


def load_inception(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> FeatureNet | Unavailable:
    """The Inception network, or ``Unavailable`` when no file is found (a bad file still raises)."""
    if path is not None and Path(path).suffix != ".pt":
        raise ConfigError(f"{path}: refusing to load; the Inception network must be a TorchScript .pt file")
    found = find_inception(path)
    if found is None:
        return _not_found(
            f"Inception TorchScript ({INCEPTION_FILENAME})", inception_candidates(path), INCEPTION_ENV
        )
    return InceptionTorchScript(found, device)


# --- CLIP ----------------------------------------------------------------------------------------
def _embedding(out: object) -> torch.Tensor:
    """Projected embedding from ``get_*_features`` (a tensor in transformers 4, an output object in 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


def clip_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """CLIP score per pair (N,) = 100 * max(cos(image_i, text_i), 0) (the torchmetrics convention)."""
    cos = F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
    return 100.0 * cos.clamp_min(0.0)


def r_precision(sim: torch.Tensor, true_idx: torch.Tensor, k: int = 1) -> float:
    """Share of images (rows of sim (N, T)) whose true text (true_idx (N,)) ranks in the top k."""
    true_sim = sim.gather(1, true_idx.view(-1, 1))  # (N, 1)
    rank = (sim > true_sim).sum(dim=1)  # texts strictly better than the true one (ties favour the truth)
    return float((rank < k).float().mean())


class ClipScorer:
    """A local CLIP model: image / text embeddings, CLIP score and CLIP R-precision."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
        from transformers import AutoTokenizer, CLIPModel  # heavy import, only when CLIP is used

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a CLIP model folder (no config.json)")
        self.path, self.device, self.batch_size = path, torch.device(device), batch_size
        self.name = f"clip:{path.name}"
        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        pre = (
            json.loads((path / "preprocessor_config.json").read_text())
            if (path / "preprocessor_config.json").is_file()
            else {}
        )
        size = self.model.config.vision_config.image_size
        crop = pre.get("crop_size", size)
        self.crop = int(crop["height"] if isinstance(crop, dict) else crop)
        resize = pre.get("size", self.crop)
        self.resize = int(resize.get("shortest_edge", self.crop) if isinstance(resize, dict) else resize)
        self.mean = torch.tensor(pre.get("image_mean", CLIP_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.get("image_std", CLIP_STD)).view(1, 3, 1, 1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] (N, 3, H, W) -> normalised (N, 3, crop, crop)."""
        x = images.float().clamp(0, 1)
        h, w = x.shape[-2:]
        scale = self.resize / min(h, w)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for batch in torch.as_tensor(images).split(self.batch_size):
            pixels = self.preprocess(batch).to(self.device)
            out.append(_embedding(self.model.get_image_features(pixel_values=pixels)).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        max_len = self.model.config.text_config.max_position_embeddings
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            ).to(self.device)
            out.append(_embedding(self.model.get_text_features(**tok)).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    __call__ = image_embeddings  # a FeatureNet too (features for FD in CLIP space)

    def score(self, images: torch.Tensor, prompts: Sequence[str], k: int = 1) -> dict[str, float]:
        """Mean CLIP score and R-precision@k of images against their prompts (retrieval over unique prompts)."""
        if len(prompts) != len(images):
            raise ConfigError(f"{len(prompts)} prompts for {len(images)} images")
        unique = sorted(set(prompts))
        txt = self.text_embeddings(unique)  # (T, E)
        img = self.image_embeddings(images)  # (N, E)
        true_idx = torch.tensor([unique.index(p) for p in prompts])
        return {
            "clip_score": float(clip_scores(img, txt[true_idx]).mean()),
            f"clip_r_precision@{k}": r_precision(img @ txt.T, true_idx, k),
            "n_prompts": len(unique),
        }


def load_clip(path: str | Path | None = None, device: str | torch.device = "cpu") -> ClipScorer | Unavailable:
    """The CLIP scorer, or ``Unavailable`` when no local model folder is found (a bad folder still raises)."""
    found = find_clip(path)
    if found is None:
        return _not_found("CLIP model folder", clip_candidates(path), CLIP_ENV)
    return ClipScorer(found, device)


# --- all image metrics ---------------------------------------------------------------------------
def _reason(net: object, what: str) -> str:
    return net.reason if isinstance(net, Unavailable) else f"no {what} network was given"


def _distribution(
    net: FeatureNet, gen: torch.Tensor, ref: torch.Tensor, kid_subset_size: int
) -> dict[str, dict]:
    fg, fr = net(gen).double().numpy(), net(ref).double().numpy()
    kid, kid_std = kid_from_features(fg, fr, subset_size=kid_subset_size)
    info = {"available": True, "network": net.name, "n_gen": len(fg), "n_ref": len(fr)}
    return {
        "fid": {**info, "value": fid_from_features(fg, fr)},
        "kid": {**info, "value": kid, "std": kid_std},
    }


def compute_image_metrics(
    gen_images: torch.Tensor,
    ref_images: torch.Tensor | None,
    prompts: Sequence[str] | None,
    inception: FeatureNet | Unavailable | None = None,
    clip: ClipScorer | Unavailable | None = None,
    extra: Sequence[FeatureNet] = (),
    paired: bool = False,
    kid_subset_size: int = 1000,
) -> dict[str, dict]:
    """Every image metric, each ``{"available": true, "value": ...}`` or ``metric_unavailable(...)``.

    gen_images / ref_images: (N, 3, H, W) in [0, 1] renders. FID / KID use ``inception`` (keys ``fid``,
    ``kid``) and each ``extra`` network (keys ``fid[<name>]``; not comparable to published FID).
    CLIP metrics compare gen images with their prompts. ``paired=True`` (same objects and cameras in
    both sets) adds PSNR and SSIM.
    """
    out: dict[str, dict] = {}
    if ref_images is None or len(ref_images) < 2 or len(gen_images) < 2:
        reason = "FID / KID need at least 2 generated and 2 reference images"
        out |= {k: metric_unavailable(k, reason) for k in ("fid", "kid")}
    else:
        if inception is not None and not isinstance(inception, Unavailable):
            out |= _distribution(inception, gen_images, ref_images, kid_subset_size)
        else:
            reason = _reason(inception, "Inception")
            out |= {k: metric_unavailable(k, reason) for k in ("fid", "kid")}
        for net in extra:
            for k, v in _distribution(net, gen_images, ref_images, kid_subset_size).items():
                out[f"{k}[{net.name}]"] = v
    clip_keys = ("clip_score", "clip_r_precision@1")
    if isinstance(clip, ClipScorer) and prompts:
        scores = clip.score(gen_images, prompts)
        info = {
            "available": True,
            "network": clip.name,
            "n_images": len(gen_images),
            "n_prompts": scores["n_prompts"],
        }
        out |= {k: {**info, "value": scores[k]} for k in clip_keys}
    else:
        reason = (
            "no prompts were given" if not prompts and isinstance(clip, ClipScorer) else _reason(clip, "CLIP")
        )
        out |= {k: metric_unavailable(k, reason) for k in clip_keys}
    if paired:
        out |= _paired_metrics(gen_images, ref_images)
    return out


def _paired_metrics(gen: torch.Tensor, ref: torch.Tensor | None) -> dict[str, dict]:
    if ref is None or tuple(ref.shape) != tuple(gen.shape):
        reason = "PSNR / SSIM need reference images of the same shape as the generated ones"
        return {k: metric_unavailable(k, reason) for k in ("psnr", "ssim")}
    p, s = psnr(gen, ref), ssim(gen, ref)
    return {
        "psnr": {"available": True, "value": float(p.mean()), "n_images": len(p)},
        "ssim": {"available": True, "value": float(s.mean()), "n_images": len(s)},
    }
