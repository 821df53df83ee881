"""Encode-stage throughput: objects/s for lrm-small (random weights; timing does not depend on them),
image loading and shard writing included, plus storage per object.

    .venv/bin/python benchmarks/encode.py --objects 32 --threads 2 [--size 320] [--encoder lrm-small]

Prints one JSON line. Target: >= 5 objects/s on 2 CPU cores for lrm-small.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from triflow3d.encode import encode_folder
from triflow3d.encoders import load_reconstructor
from triflow3d.recon.synthetic import write_views_folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--objects", type=int, default=32)
    p.add_argument("--size", type=int, default=320, help="rendered view size on disk (render default 320)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--encoder", default="lrm-small")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_reconstructor(args.encoder, allow_random=True)
    with tempfile.TemporaryDirectory() as tmp:
        views = Path(tmp) / "views"
        write_views_folder(views, list(range(args.objects)), "zero123pp", args.size)
        result = {
            "encoder": args.encoder,
            "objects": args.objects,
            "threads": args.threads,
            "view_size": args.size,
        }
        for dtype in ("fp16", "fp32"):
            out = Path(tmp) / f"lat-{dtype}"
            t0 = time.perf_counter()
            s = encode_folder(model, views, out, dtype=dtype, batch=args.batch, progress=False)
            dt = time.perf_counter() - t0
            nbytes = sum(f.stat().st_size for f in out.glob("shard-*.safetensors"))
            result[f"objects_per_s_{dtype}"] = round(s.encoded / dt, 2)
            result[f"bytes_per_object_{dtype}"] = round(nbytes / s.encoded)
        result["triplane_shape"] = list(model.triplane_shape)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
