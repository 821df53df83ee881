"""A text table: the embeddings of a fixed list of texts, computed once by a real encoder and stored in one
safetensors file, standing in for that encoder where its weights are not (a GPU machine that can reach
no model hub and carries 64 MiB, scripts/gpu_train_shipped.sh).

    python -m triflow3d.models.text_table --encoder minilm --texts captions.txt --out table.safetensors

``open_text_encoder(kind, path)`` returns a :class:`TextTableEncoder` when ``path`` is such a file, so
``--text-encoder minilm --text-encoder-path table.safetensors`` trains (and ``triflow3d eval
--text-encoder-path table.safetensors`` evaluates) with the table. The encoder's name, width and
settings are recorded, so a model trained on the table loads the real encoder elsewhere.

Storage: token states and pooled vectors in ``fp16`` (0.02 % relative error) or ``int8`` (the default:
values scaled per feature column, then per row, to 127 levels; about 0.9 % relative error on MiniLM's
token states, against 0.17 % for bf16 (the precision the bf16 training forward casts them to); 384 bytes
a token, about 4.8 KB a shape caption: 14.4 MB for the 3000 train + 60 test captions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from triflow3d.errors import ConfigError
from triflow3d.models.text_encoder import TextEmbedding, TextEncoder, embed_rows, make_text_encoder
from triflow3d.utils.io import atomic_path

FORMAT = "triflow3d.text_table.v1"
DTYPES = ("int8", "fp16")


def open_text_encoder(
    name: str, path: str | Path | None = None, device: torch.device | str = "cpu", **kwargs
) -> TextEncoder:
    """``make_text_encoder(name, path)``, except that a ``path`` naming a text table file (``*.safetensors``)
    of encoder ``name`` returns the table standing in for it."""
    if path is not None and str(path).endswith(".safetensors"):
        return TextTableEncoder(path, kind=name, device=device)
    return make_text_encoder(name, path, device, **kwargs)


def is_text_table(path: str | Path | None) -> bool:
    """Whether ``path`` is a text table file (safetensors with this module's format tag)."""
    if path is None or not str(path).endswith(".safetensors") or not Path(path).is_file():
        return False
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("format") == FORMAT


def _quantize(x: Tensor, name: str) -> dict[str, Tensor]:
    """(T, D) float -> int8 values with a per-column and a per-row scale (x ~= q * row * col)."""
    col = x.abs().amax(0).clamp_min(1e-12)  # (D,)
    y = x / col
    row = (y.abs().amax(1) / 127).clamp_min(1e-12)  # (T,)
    q = (y / row[:, None]).round().clamp(-127, 127).to(torch.int8)
    return {name: q, f"{name}.row_scale": row.float(), f"{name}.col_scale": col.float()}


def _dequantize(t: dict[str, Tensor], name: str) -> Tensor:
    x = t[name].float()
    if f"{name}.row_scale" in t:
        x = x * t[f"{name}.row_scale"][:, None] * t[f"{name}.col_scale"]
    return x


def save_text_table(
    encoder: TextEncoder,
    texts: list[str],
    path: str | Path,
    dtype: str = "int8",
    kind: str = "",
    chunk: int = 64,
) -> Path:
    """Embed ``texts`` (and "") with ``encoder`` and write the table; ``kind`` is the make_text_encoder
    name that rebuilds ``encoder`` (recorded for the models trained on the table)."""
    if dtype not in DTYPES:
        raise ConfigError(f"text table dtype must be one of {DTYPES}, got {dtype!r}")
    unique = sorted(set(texts) | {""})
    rows = embed_rows(encoder, unique, chunk)
    lengths = torch.tensor([t.shape[0] for t, _ in rows])
    tokens = torch.cat([t for t, _ in rows])  # (T, D)
    pooled = torch.stack([p for _, p in rows])  # (K, D)
    tensors = {"offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])}
    for name, x in (("tokens", tokens), ("pooled", pooled)):
        tensors |= _quantize(x, name) if dtype == "int8" else {name: x.half()}
    meta = {"format": FORMAT, "texts": json.dumps(unique), "name": encoder.name, "dim": str(encoder.dim),
            "max_length": str(encoder.max_length), "kind": kind, "dtype": dtype,
            "normalize": json.dumps(getattr(encoder, "normalize", None))}  # fmt: skip
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


class TextTableEncoder:
    """A ``TextEncoder`` that looks its texts up in a text table (ConfigError for a text it lacks)."""

    def __init__(self, path: str | Path, kind: str | None = None, device: torch.device | str = "cpu"):
        if not is_text_table(path):
            raise ConfigError(f"{path}: not a text table ({FORMAT})")
        with safe_open(str(path), framework="pt") as f:
            meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        self.kind, self.path = meta["kind"], Path(path)
        if kind and self.kind and kind != self.kind:
            raise ConfigError(f"{path}: a text table of a {self.kind!r} encoder, not {kind!r}")
        self.name, self.dim, self.max_length = meta["name"], int(meta["dim"]), int(meta["max_length"])
        self.normalize = json.loads(meta.get("normalize", "null"))
        self.device = torch.device(device)
        tokens, pooled = _dequantize(t, "tokens"), _dequantize(t, "pooled")
        off = t["offsets"].tolist()
        texts = json.loads(meta["texts"])
        self.rows = {s: (tokens[off[i] : off[i + 1]], pooled[i]) for i, s in enumerate(texts)}

    def __call__(self, texts: list[str]) -> TextEmbedding:
        if missing := [s for s in texts if s not in self.rows]:
            raise ConfigError(
                f"text table {self.path} lacks {len(missing)} text(s), e.g. {missing[0][:80]!r}"
            )
        return TextEmbedding.from_rows([self.rows[s] for s in texts]).to(self.device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m triflow3d.models.text_table", description=__doc__.splitlines()[0]
    )
    p.add_argument("--encoder", default="minilm", help="minilm | clip-l | t5 | fake")
    p.add_argument("--encoder-path", help="local model folder (clip-l / t5)")
    p.add_argument("--texts", nargs="+", required=True, help="text files, one text per line")
    p.add_argument("--out", required=True, help="the table (.safetensors)")
    p.add_argument("--dtype", choices=DTYPES, default="int8", help="token storage (default int8)")
    args = p.parse_args(argv)
    texts = [line for f in args.texts for line in Path(f).read_text().splitlines() if line.strip()]
    encoder = make_text_encoder(args.encoder, args.encoder_path)
    out = save_text_table(encoder, texts, args.out, args.dtype, kind=args.encoder)
    print(json.dumps({"table": str(out), "texts": len(set(texts) | {""}), "bytes": out.stat().st_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
