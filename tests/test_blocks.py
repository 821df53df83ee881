"""TriFlow building blocks: adaLN-Zero identity at init, masks, per-stream weights, fp32 islands."""

from __future__ import annotations

import math

import pytest
import torch

from triflow3d.conventions import TIME_EMBED_SCALE
from triflow3d.models.attention import attention, cat_key_masks, sincos_2d
from triflow3d.models.blocks import DiTBlock, FuseBlock, MMDiTBlock
from triflow3d.models.layers import FinalLayer, Modulation, RMSNorm, timestep_embedding

D, H = 32, 4


def zero_init(block: torch.nn.Module) -> torch.nn.Module:
    for m in block.modules():
        if isinstance(m, Modulation):
            m.zero_init()
    return block


def perturb(block: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return block


def test_blocks_are_identity_at_init():
    vec = torch.randn(2, D)
    x, y = torch.randn(2, 7, D), torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert torch.equal(zero_init(DiTBlock(D, H, 4.0))(x, vec, None), x)
    assert torch.equal(zero_init(FuseBlock(D, H, 4.0))(x, y, vec, mask), x)
    out = zero_init(MMDiTBlock(D, H, 4.0, ("latent", "text")))({"latent": x, "text": y}, vec, {"text": mask})
    assert torch.equal(out["latent"], x) and torch.equal(out["text"], y)
    final = FinalLayer(D, 12)
    final.zero_init()
    assert torch.equal(final(x, vec), torch.zeros(2, 7, 12))


def test_blocks_change_inputs_after_perturbation():
    vec = torch.randn(2, D)
    x, y = torch.randn(2, 7, D), torch.randn(2, 5, D)
    out = perturb(FuseBlock(D, H, 4.0))(x, y, vec)
    assert out.shape == x.shape and not torch.allclose(out, x)
    out = perturb(MMDiTBlock(D, H, 2.0, ("a", "b")))({"a": x, "b": y}, vec)
    assert out["a"].shape == x.shape and out["b"].shape == y.shape and not torch.allclose(out["b"], y)


def test_mmdit_masked_tokens_do_not_leak_and_stream_order_is_fixed():
    block = perturb(MMDiTBlock(D, H, 4.0, ("latent", "text")))
    assert set(block.layers.keys()) == {"latent", "text"}  # separate weights per stream
    vec, lat, txt = torch.randn(2, D), torch.randn(2, 6, D), torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = block({"latent": lat, "text": txt}, vec, {"text": mask})
    txt2 = txt.clone()
    txt2[1, 3:] = 100.0  # padded tokens: must not change anything else
    out2 = block({"text": txt2, "latent": lat}, vec, {"text": mask})  # dict order does not matter
    assert torch.allclose(out["latent"], out2["latent"], atol=1e-5)
    assert torch.allclose(out["text"][1, :3], out2["text"][1, :3], atol=1e-5)
    txt2[1, 0] += torch.randn(D)  # a real token does change the latent stream
    out3 = block({"latent": lat, "text": txt2}, vec, {"text": mask})
    assert not torch.allclose(out["latent"][1], out3["latent"][1], atol=1e-4)


def test_fuse_reads_only_from_source_and_respects_mask():
    block = perturb(FuseBlock(D, H, 4.0))
    vec, x, y = torch.randn(1, D), torch.randn(1, 4, D), torch.randn(1, 6, D)
    mask = torch.tensor([[True, True, True, True, False, False]])
    y2 = y.clone()
    y2[:, 4:] = -50.0
    assert torch.allclose(block(x, y, vec, mask), block(x, y2, vec, mask), atol=1e-5)
    assert torch.allclose(block(x, y, vec, mask), block(x, y[:, :4], vec), atol=1e-5)


def test_attention_mask_equals_attention_on_subset():
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    k, v = torch.cat([k, torch.randn(1, 2, 3, 8)], 2), torch.cat([v, torch.randn(1, 2, 3, 8)], 2)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    assert torch.allclose(attention(q, k, v, mask), attention(q, k[:, :, :4], v[:, :, :4]), atol=1e-6)
    assert cat_key_masks([None, None], [2, 3]) is None
    assert cat_key_masks([None, mask], [2, 7]).tolist() == [[True, True] + mask[0].tolist()]


def test_timestep_embedding_scales_t_inside():
    emb = timestep_embedding(torch.tensor([0.25]), 8)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    want = torch.cat([torch.cos(TIME_EMBED_SCALE * 0.25 * freqs), torch.sin(TIME_EMBED_SCALE * 0.25 * freqs)])
    assert emb.shape == (1, 8) and torch.allclose(emb[0], want, atol=1e-4)


def test_rmsnorm_is_fp32_island():
    x = (torch.randn(2, 5, 16) * 300).bfloat16()
    y = RMSNorm(16)(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float().pow(2).mean(-1), torch.ones(2, 5), atol=2e-2)


@pytest.mark.parametrize("h,w", [(4, 4), (2, 5)])
def test_sincos_2d_positions_distinct(h, w):
    pe = sincos_2d(h, w, 16)
    assert pe.shape == (h * w, 16) and pe.dtype == torch.float32
    assert torch.cdist(pe, pe).add(torch.eye(h * w) * 10).min() > 0.1  # all positions distinct
