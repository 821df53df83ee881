"""The web app through its HTTP API: one generation's latency, and 4 clients at once.

    .venv/bin/python benchmarks/serve.py [--model DIR] [--repeats 3] [--clients 4] [--threads 2]

Launches ``triflow3d serve``'s app on 127.0.0.1 (a free port) in this process and calls ``/generate``
with ``gradio_client`` (a real HTTP round trip: queue, upload of the results, download by the client).
Reports: app start (build + launch), the latency of one request (median of ``--repeats`` after a warm-up)
next to the same work called in-process (the difference is the HTTP / queue overhead), and ``--clients``
concurrent clients (separate sessions) each sending one request: all must complete without an error;
the queue runs one request at a time, so the wall time is about clients x one request.
Without ``--model`` the tiny random pipeline (``serve --random``) is measured: the figures are then
mostly the app's own overhead, not the model's. Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_app(model: Path | None, resolution: int, video_size: int):
    from triflow3d.export import ExportOptions
    from triflow3d.pipeline import TextTo3DPipeline, median_level, random_pipeline
    from triflow3d.serve import ServeApp, ServeConfig

    pipe = TextTo3DPipeline.from_pretrained(model) if model else random_pipeline()
    threshold = None if model else median_level(pipe("calibration")[0])
    export = ExportOptions(resolution=resolution, threshold=threshold, frames=24, video_size=video_size)
    return ServeApp(pipe, ServeConfig(export=export))


def one_request(url: str, prompt: str, seed: int, steps: int) -> dict:
    """A fresh client (its own session) sends one /generate request -> timings or the error."""
    from gradio_client import Client

    t0 = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        t1 = time.perf_counter()
        glb = client.predict(prompt, seed, steps, 4.0, "euler", api_name="/generate")[0]
        ok = bool(glb) and Path(glb).stat().st_size > 0
        return {"ok": ok, "connect_s": t1 - t0, "request_s": time.perf_counter() - t1, "error": None}
    except Exception as e:  # reported, counted as a failure
        return {"ok": False, "connect_s": 0.0, "request_s": time.perf_counter() - t0, "error": repr(e)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="model folder (default: the tiny random pipeline)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--resolution", type=int, default=64, help="marching-cubes grid")
    p.add_argument("--video-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    app = build_app(args.model, args.resolution, args.video_size)
    steps = args.steps or app.pipe.settings.steps
    url = app.launch("127.0.0.1", free_port(), block=False, quiet=True)
    start_s = time.perf_counter() - t0
    try:
        one_request(url, "warm-up", 0, steps)
        local = []
        for k in range(args.repeats):
            t = time.perf_counter()
            app.generate("a red office chair", k, steps, 4.0, "euler", None)
            local.append(time.perf_counter() - t)
        http = [one_request(url, "a red office chair", k, steps) for k in range(args.repeats)]
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            jobs = [pool.submit(one_request, url, f"object {k}", k, steps) for k in range(args.clients)]
            many = [j.result() for j in jobs]
        wall = time.perf_counter() - t
    finally:
        app.close()

    lat = statistics.median(r["request_s"] for r in http)
    loc = statistics.median(local)
    errors = [r["error"] for r in http + many if not r["ok"]]
    result = {
        "model": str(args.model or "random tiny"), "steps": steps, "resolution": args.resolution,
        "app_start_s": round(start_s, 2), "http_latency_s": round(lat, 3), "in_process_s": round(loc, 3),
        "http_overhead_s": round(lat - loc, 3), "clients": args.clients, "clients_ok": sum(r["ok"] for r in many),
        "clients_wall_s": round(wall, 2), "client_latency_max_s": round(max(r["request_s"] for r in many), 2),
        "errors": errors, "threads": args.threads,
    }  # fmt: skip
    print(f"app start (build + launch):   {start_s:.2f} s")
    print(f"one request over HTTP:        {lat:.3f} s (in-process {loc:.3f} s, overhead {lat - loc:.3f} s)")
    print(
        f"{args.clients} concurrent clients:        {result['clients_ok']}/{args.clients} ok, "
        f"wall {wall:.2f} s, slowest {result['client_latency_max_s']:.2f} s"
    )
    print(json.dumps(result))
    return 0 if not errors and result["clients_ok"] == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
