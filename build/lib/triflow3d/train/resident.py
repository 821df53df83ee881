"""The device-resident loop's data: every triplane, spatial weight and caption embedding of the run held
on the training device in compact form, and each step's object indices copied there ahead of time.

A step then only gathers rows by index (no DataLoader, no per-sample host work, no host synchronisation):
triplanes stay in their 16-bit storage dtype (fp16 as ``encode`` writes them; fp32 shards are stored as
fp16) and are widened to fp32 per batch; the text table is the run's ``TextTable`` padded to its longest
caption. Memory: N x 3 x C x R x R x 2 bytes, e.g. 3000 lrm-small objects (3 x 8 x 32 x 32) take 147 MB
and 100k InstantMesh objects (3 x 80 x 64 x 64) 197 GB, which is why ``loop=auto`` checks the free
device memory first (``fits``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from triflow3d.data.latents import LatentDataset
from triflow3d.models.text_encoder import TextEmbedding
from triflow3d.train.batches import RankBatches
from triflow3d.train.text import TextTable

RESIDENT_SHARE = 0.25  # loop=auto goes resident when the data take at most this share of free memory


def resident_bytes(dataset: LatentDataset) -> int:
    """Device bytes of the resident triplanes and spatial weights (2 bytes per value)."""
    _, c, r, _ = dataset.triplane_shape
    return len(dataset) * 3 * r * r * (c + 1) * 2


def fits(dataset: LatentDataset, device: torch.device) -> bool:
    """Whether the resident data take at most ``RESIDENT_SHARE`` of the device's free memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return resident_bytes(dataset) <= RESIDENT_SHARE * free


def _compact(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float16, torch.bfloat16) else x.to(torch.float16)


@dataclass
class ResidentBatch:
    """One micro-batch gathered on the device."""

    triplane: Tensor  # (b, 3, C, R, R) float32, raw (not yet normalised)
    weights: Tensor | None  # (b, 3, 1, R, R) float32 spatial loss weights, or None
    text: TextEmbedding  # (b, L, D) tokens, mask, pooled (centred like the TextTable)


class ResidentLatents:
    """The run's latents, spatial weights and text table on ``device``."""

    def __init__(self, dataset: LatentDataset, table: TextTable, device: torch.device, weights: bool = True):
        order, self.text = table.padded(device)  # (K, L, D): every caption once, "" included
        row = {c: k for k, c in enumerate(order)}
        self.empty = row[""]
        captions = [str(r.get("caption") or "") for r in dataset.rows]
        self.caption = torch.tensor([row[c] for c in captions], dtype=torch.long, device=device)  # (N,)
        self.triplanes = _compact(dataset.stacked()).to(device)  # (N, 3, C, R, R)
        sidecar = dataset.stacked("weights") if weights else None
        self.weights = None if sidecar is None else _compact(sidecar).to(device)  # (N, 3, R, R)

    def gather(self, idx: Tensor, drop: Tensor) -> ResidentBatch:
        """Objects ``idx`` (b,) on the device; ``drop`` (b,) bool replaces a caption by the empty one."""
        cap = torch.where(drop, torch.full_like(idx, self.empty), self.caption[idx])  # (b,)
        text = TextEmbedding(self.text.tokens[cap], self.text.mask[cap], self.text.pooled[cap])
        weights = None if self.weights is None else self.weights[idx].float()[:, :, None]
        return ResidentBatch(self.triplanes[idx].float(), weights, text)


class IndexFeed:
    """This rank's object indices of the coming steps: computed on the host ``chunk`` steps at a time (from
    the run's ``BatchPlan``, so the same objects as the loader loop) and copied to the device in one
    transfer per chunk, from pinned memory when the device is a GPU."""

    def __init__(self, batches: RankBatches, device: torch.device, chunk: int = 64):
        self.batches, self.device, self.chunk = batches, device, chunk
        self.first, self.block, self._host = -1, torch.empty(0), torch.empty(0)

    def __call__(self, step: int) -> Tensor:
        """(accum, micro) int64 indices of ``step`` on the device."""
        if not self.first <= step < self.first + self.block.shape[0]:
            self.first = step
            end = min(step + self.chunk, max(self.batches.steps, step + 1))
            host = torch.tensor([self.batches.step_indices(s) for s in range(step, end)], dtype=torch.long)
            pinned = host.pin_memory() if self.device.type == "cuda" else host
            self.block = pinned.to(self.device, non_blocking=True)  # (steps, accum, micro)
            self._host = pinned  # alive until the copy has run
        return self.block[step - self.first]
