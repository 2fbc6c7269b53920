"""Load on a real `bentoml serve`, side by side with a bare BentoML app on the same weights.

Starts the service on localhost (the champion of the params' project), sends
one-image PNG requests of held-out images at each concurrency, then does the
same to the peer (``benchmarks/bare_service.py``: the twenty-line BentoML app
a user would write, nothing logged), one after the other, and prints one
table:

- throughput, p50/p95/p99 latency and 5xx at concurrency 1, 8, 32, 64 for
  both, and the ratio transferops / bare;
- transferops at concurrency 32 with batching off (``serve.batching: false``);
- transferops at concurrency 32 keeping images at the shipped policy
  (``serve.keep``) and with keeping off, each on a fresh server (so the
  hourly cap starts empty), with the images it kept (``/v1/metadata``);
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
from collections import Counter
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
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[leaf] = value
    out.write_text(yaml.safe_dump(raw))
    return out


PRODUCT, BARE = "/v1/classify", "/classify"


async def load(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, path: str = PRODUCT
) -> dict:
    """``concurrency`` clients in a loop for ``seconds``; every latency and status."""
    latencies, statuses, errors = [], [], Counter()
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
                        path, files=[("images", ("x.png", body, "image/png"))]
                    )
                    statuses.append(response.status_code)
                except httpx.HTTPError as err:  # the client's own failure: say which
                    statuses.append(0)
                    errors[type(err).__name__] += 1
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
        "errors": dict(errors),
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


def measure(
    target: str, env: dict, log_file: Path, bodies: list[bytes], seconds: float, path: str
) -> dict[int, dict]:
    """One server, every concurrency level, after a warm-up; {concurrency: result}."""
    process, url = start_server(log_file=log_file, env=env, target=target)
    try:
        asyncio.run(load(url, bodies, 8, 3, path))  # warm-up
        return {c: asyncio.run(load(url, bodies, c, seconds, path)) for c in LEVELS}
    finally:
        stop_server(process)


LEVELS = (1, 8, 32, 64)


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
        help="serve.* override for transferops, e.g. -S serve.workers=2",
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
    os.environ.setdefault("BENTOML_HOME", str(params.paths.bentoml_home))  # the servers' too
    configure_runtime(params.paths.bentoml_home)
    items = HeldOutPool(params.data.source, params.paths.prepared, seed=3).take(500)
    bodies = [png_bytes(image) for image, _ in items]
    tag = champion.current(params.paths.models).tag
    top = ceiling(params, items)

    ours = measure(
        "services.service:Classifier",
        {"TRANSFEROPS_PARAMS": str(batched)},
        work / "transferops.log",
        bodies,
        args.seconds,
        PRODUCT,
    )
    bare = measure(
        "benchmarks.bare_service:Bare",
        {"BARE_MODEL_TAG": tag, "BARE_THREADS": str(params.threads)},
        work / "bare.log",
        bodies,
        args.seconds,
        BARE,
    )
    process, url = start_server(
        log_file=work / "unbatched.log", env={"TRANSFEROPS_PARAMS": str(unbatched)}
    )
    try:
        asyncio.run(load(url, bodies, 8, 3))
        unbatched_32 = asyncio.run(load(url, bodies, 32, args.seconds))
    finally:
        stop_server(process)
    keeping = {}  # concurrency 32, keeping on (the shipped policy) and off, fresh servers
    for name, keep in (("on", True), ("off", False)):
        changes_keep = changes | {"serve.keep.enabled": keep}
        params_keep = absolute_params(args.params, work / f"keep-{name}.yaml", changes_keep)
        process, url = start_server(
            log_file=work / f"keep-{name}.log", env={"TRANSFEROPS_PARAMS": str(params_keep)}
        )
        try:
            asyncio.run(load(url, bodies, 8, 3))
            keeping[name] = asyncio.run(load(url, bodies, 32, args.seconds))
            counts = httpx.get(f"{url}/v1/metadata", timeout=10).json()["keeping"]["counts"]
            keeping[name]["kept"], keeping[name]["offered"] = counts["kept"], counts["offered"]
        finally:
            stop_server(process)
    process, url = start_server(
        log_file=work / "soak.log", env={"TRANSFEROPS_PARAMS": str(batched)}
    )
    try:
        asyncio.run(load(url, bodies, 8, 3))
        soaked, memory = asyncio.run(soak(url, bodies, process, args.soak))
    finally:
        stop_server(process)

    table = Table(
        title=f"serve load: transferops vs a bare BentoML app, {os.cpu_count()} CPUs, "
        f"{params.model.backbone}, one-image PNG requests, {args.seconds:.0f} s per row"
    )
    for column in ("concurrency", "setup", "img/s", "ratio", "% of ceiling"):
        table.add_column(column)
    for column in ("p50 ms", "p95 ms", "p99 ms", "5xx / failed"):
        table.add_column(column)

    def row(concurrency, name, r, ratio=""):
        numbers = [f"{r[k]:.0f}" for k in ("p50", "p95", "p99")]
        share = f"{100 * r['throughput'] / top:.0f}%"
        errors = f"{r['errors_5xx']} / {r['failed']}"
        img_s = f"{r['throughput']:.0f}"
        table.add_row(str(concurrency), name, img_s, ratio, share, *numbers, errors)

    for c in LEVELS:
        row(c, "transferops", ours[c], f"{ours[c]['throughput'] / bare[c]['throughput']:.2f}x")
        row(c, "bare BentoML", bare[c])
    row(32, "transferops, batching off", unbatched_32)
    for name, result in keeping.items():
        kept = f" (kept {result['kept']:,} of {result['offered']:,})" if name == "on" else ""
        ratio = f"{result['throughput'] / bare[32]['throughput']:.2f}x"
        row(32, f"transferops, keeping {name}{kept}", result, ratio)
    table.add_row("-", "forward only (ceiling)", f"{top:.0f}", "", "100%", "", "", "", "")
    Console(width=150).print(table)
    for name, results in (("transferops", ours), ("bare BentoML", bare)):
        for concurrency, r in results.items():
            if r["errors"]:
                print(f"client failures, {name} at concurrency {concurrency}: {r['errors']}")
    print(
        f"soak {args.soak:.0f} s at concurrency 32 (transferops): {soaked['requests']} requests, "
        f"{soaked['throughput']:.0f} img/s, {soaked['errors_5xx']} 5xx, {soaked['failed']} failed; "
        f"server memory MB start {memory[0]:.0f}, end {memory[-1]:.0f}, max {max(memory):.0f}"
    )


if __name__ == "__main__":
    main()
