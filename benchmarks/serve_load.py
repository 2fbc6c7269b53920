"""Load on a real `bentoml serve`: throughput and latency against the model's own ceiling.

Starts the service on localhost (the champion of the params' project), sends
one-image requests of held-out Fashion-MNIST PNGs at each concurrency, and
prints one table:

- throughput and p50/p95/p99 latency at concurrency 1, 8, 32, 64 (batching on);
- the same at concurrency 32 with batching off (``serve.batching: false``);
- the ceiling: the same model's batched forward pass in this process
  (``serve.max_batch_size`` images, preprocessed), no HTTP;
- a soak: 60 s at concurrency 32, counting 5xx and sampling the memory of
  every server process.

Run from the project root after training (e.g. on the demo's workspace, whose
models the demo saved in the project's store):

    BENTOML_HOME=$PWD/.bentoml .venv/bin/python benchmarks/serve_load.py \
        --params demo-workspace/params.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
import yaml
from rich.console import Console
from rich.table import Table

from flows.serving import start_server, stop_server
from services.client import png_bytes
from transferops.config import load_params
from transferops.data.shifts import HeldOutPool
from transferops.models.classifier import embed_and_classify
from transferops.registry import champion
from transferops.registry.store import load_stored
from transferops.runtime import configure_runtime


def absolute_params(params_file: Path, out: Path, changes: dict) -> Path:
    """The params file with every path absolute (the server runs elsewhere) and ``changes``."""
    raw = yaml.safe_load(params_file.read_text())
    base = params_file.resolve().parent
    raw["paths"] = {k: str((base / v).resolve()) for k, v in raw["paths"].items()}
    for key, value in changes.items():
        section, leaf = key.split(".")
        raw[section][leaf] = value
    out.write_text(yaml.safe_dump(raw))
    return out


async def load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients in a loop for ``seconds``; every latency and status."""
    latencies, statuses = [], []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                body = bodies[i % len(bodies)]
                i += concurrency
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/classify", files=[("images", ("x.png", body, "image/png"))]
                    )
                    statuses.append(response.status_code)
                except httpx.HTTPError:
                    statuses.append(0)
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    ok = sum(s == 200 for s in statuses)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else (0, 0, 0)
    return {
        "throughput": ok / elapsed,
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "errors_5xx": sum(s >= 500 for s in statuses),
        "failed": sum(s == 0 for s in statuses),
        "requests": len(statuses),
    }


def ceiling(params, items, seconds: float = 10) -> float:
    """Images per second of the champion's batched forward pass (preprocessed, no HTTP)."""
    torch.set_num_threads(params.threads)
    holder = champion.current(params.paths.models)
    model, config = load_stored(holder.tag)
    from transferops.models.classifier import eval_transform

    transform = eval_transform(config)
    size = params.serve.max_batch_size
    batch = torch.stack([transform(image.convert("RGB")) for image, _ in items[:size]])
    embed_and_classify(model, batch)  # warm-up
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        embed_and_classify(model, batch)
        done += len(batch)
    return done / (time.perf_counter() - began)


def server_memory_mb(process) -> float:
    root = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 1e6


async def soak(url: str, bodies: list[bytes], process, seconds: float) -> tuple[dict, list]:
    samples: list[float] = []

    async def sample() -> None:
        while True:
            samples.append(server_memory_mb(process))
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample())
    result = await load(url, bodies, 32, seconds)
    sampler.cancel()
    samples.append(server_memory_mb(process))
    return result, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seconds", type=float, default=15, help="per concurrency level")
    parser.add_argument("--soak", type=float, default=60, help="seconds at concurrency 32")
    parser.add_argument(
        "-S",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="serve.* override for both servers, e.g. -S serve.workers=2",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    changes = dict(o.split("=", 1) for o in args.overrides)
    changes = {k: yaml.safe_load(v) for k, v in changes.items()}
    batched = absolute_params(args.params, work / "batched.yaml", changes)
    unbatched = absolute_params(
        args.params, work / "unbatched.yaml", changes | {"serve.batching": False}
    )
    params = load_params(batched)
    os.environ.setdefault("BENTOML_HOME", str(params.paths.bentoml_home))  # the server's too
    configure_runtime(params.paths.bentoml_home)
    items = HeldOutPool(params.data.source, params.paths.prepared, seed=3).take(500)
    bodies = [png_bytes(image) for image, _ in items]
    rows = [("forward only (ceiling)", "-", {"throughput": ceiling(params, items)})]

    process, url = start_server(
        log_file=work / "batched.log", env={"TRANSFEROPS_PARAMS": str(batched)}
    )
    try:
        asyncio.run(load(url, bodies, 8, 3))  # warm-up
        for concurrency in (1, 8, 32, 64):
            result = asyncio.run(load(url, bodies, concurrency, args.seconds))
            rows.append(("batching on", str(concurrency), result))
        soaked, memory = asyncio.run(soak(url, bodies, process, args.soak))
    finally:
        stop_server(process)
    process, url = start_server(
        log_file=work / "unbatched.log", env={"TRANSFEROPS_PARAMS": str(unbatched)}
    )
    try:
        asyncio.run(load(url, bodies, 8, 3))
        rows.append(("batching off", "32", asyncio.run(load(url, bodies, 32, args.seconds))))
    finally:
        stop_server(process)

    top = rows[0][2]["throughput"]
    table = Table(title=f"serve load, {os.cpu_count()} CPUs, {params.model.backbone}")
    for column in ("setup", "concurrency", "img/s", "% of ceiling", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column)
    table.add_column("5xx / failed")
    for name, concurrency, r in rows:
        numbers = [f"{r.get(k, 0):.0f}" for k in ("p50", "p95", "p99")] if "p50" in r else [""] * 3
        errors = f"{r['errors_5xx']} / {r['failed']}" if "requests" in r else ""
        share = f"{100 * r['throughput'] / top:.0f}%"
        table.add_row(name, concurrency, f"{r['throughput']:.0f}", share, *numbers, errors)
    Console().print(table)
    print(
        f"soak {args.soak:.0f} s at concurrency 32: {soaked['requests']} requests, "
        f"{soaked['throughput']:.0f} img/s, {soaked['errors_5xx']} 5xx, {soaked['failed']} failed; "
        f"server memory MB start {memory[0]:.0f}, end {memory[-1]:.0f}, max {max(memory):.0f}"
    )


if __name__ == "__main__":
    main()
