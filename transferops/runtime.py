"""Process-wide runtime settings: telemetry off, library homes, CPU threads, start-up.

Every entry point calls :func:`configure_runtime` before it imports Prefect,
BentoML, DVC, Great Expectations or Evidently, because several of them read
their settings from the environment at import time.
"""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

# Each library's own opt-out switch (read from their source, 2026-11).
TELEMETRY_OFF: dict[str, str] = {
    "DO_NOT_TRACK": "1",  # Evidently, and the cross-tool convention
    "ITERATIVE_DO_NOT_TRACK": "1",  # dvclive / iterative-telemetry
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "True",
    "GX_ANALYTICS_ENABLED": "False",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


ACTIVATE_MARK = "# transferops: telemetry off (make install)"


def activate_lines() -> str:
    """What ``make install`` appends to ``.venv/bin/activate``: the opt-outs, exported, so
    every command the docs print (``prefect server start``, ``bentoml serve``,
    ``evidently ui``) runs with telemetry off in an activated shell."""
    exports = [f"export {key}={value}" for key, value in TELEMETRY_OFF.items()]
    return "\n".join([ACTIVATE_MARK, *exports])


def configure_runtime(bentoml_home: Path | None = None) -> None:
    """Turn telemetry off and point BentoML at the project's model store.

    Args:
        bentoml_home: BentoML's store; set only when the caller did not set
            ``BENTOML_HOME`` already (tests and users may override it).
    """
    for key, value in TELEMETRY_OFF.items():
        os.environ[key] = value
    if bentoml_home is not None:
        os.environ.setdefault("BENTOML_HOME", str(Path(bentoml_home).resolve()))
    logging.basicConfig(
        level=os.environ.get("TRANSFEROPS_LOGLEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # These log their own internals at INFO (matplotlib: "generated new
    # fontManager" on a fresh machine's first plot); keep ours readable.
    for noisy in ("great_expectations", "evidently", "httpx", "dvc", "filelock", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


PILLOW_BLOCK = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MB on 64-bit)


def return_decoded_images_to_the_os() -> None:
    """Let the memory of a big decoded image go back to the OS when it is freed.

    Pillow allocates pixels in blocks of 16 MB. glibc serves a 16 MB block
    from a mapping at first, but after such a mapping is freed it raises its
    mmap threshold, and later blocks come from its heap and stay resident
    after they are freed: a few large uploads leave a server hundreds of MB
    bigger for good. Blocks of 64 MB are above the highest threshold glibc
    sets on its own, so they are always mapped and unmapped. (A fixed low
    threshold through ``mallopt`` does the same but makes every tensor of a
    forward pass a fresh mapping: 40% slower serving, measured.)
    """
    from PIL import Image

    Image.core.set_block_size(PILLOW_BLOCK)


def select_device(requested: str) -> str:
    """Resolve ``auto`` to ``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("params: device = 'cuda' but no CUDA device is available")
    return requested


def set_threads(threads: int) -> None:
    """Fix the CPU thread count of torch and of the BLAS and OpenMP pools that numpy,
    SciPy and scikit-learn loaded, so runs are repeatable and do not oversubscribe.

    Left alone, numpy's OpenBLAS starts a thread per core whatever torch was told,
    and its idle threads spin: 3% of the test suite's CPU, measured with ``perf``.
    """
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def pause_garbage_collector() -> None:
    """Pause Python's cyclic garbage collector while a process starts up.

    Importing torch, timm, Great Expectations... makes about a million objects that
    live as long as the process, and the collector walked them again and again as
    they were made: 13-17% of a torch stage's CPU (``gc.callbacks``, 2026-11-30).
    :func:`end_of_startup` ends the pause.
    """
    gc.disable()


def end_of_startup(*, collect: bool = True) -> None:
    """Freeze what start-up made (modules, a model) out of the collector's sight,
    then let it run again, for the garbage the work itself makes.

    Only where :func:`pause_garbage_collector` paused it: a process that merely
    imported a stage module (a test, a flow) keeps its collector as it was.

    Args:
        collect: first collect what start-up left unreachable (one full pass: 0.4 s
            after torch's import), so that none of it is kept for the process's life:
            for servers and test workers. A stage, done in minutes, skips it.
    """
    if not gc.isenabled():
        if collect:
            gc.collect()
        gc.freeze()
        gc.enable()


def loader_for(dataset, batch_size: int, device: str, shuffle: bool = False):
    """Batches in order; on CUDA, worker processes and pinned memory."""
    import torch

    cuda = device == "cuda"
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=min(8, os.cpu_count() or 1) if cuda else 0,
        pin_memory=cuda,
    )


def place_model(model, device: str):
    """``model`` on ``device``, channels-last (in place; returned for chaining).

    Channels-last suits the backbones' depthwise convolutions on CPU as well as
    on CUDA: Lite0 ran a forward and backward pass 2.7x faster at 32 px and 1.6x
    at 64 px on this project's 2-core CPU (docs/benchmarks.md).
    """
    import torch

    return model.to(device, memory_format=torch.channels_last)


def to_device(images, device: str):
    """A tensor on ``device``; a batch of images (4-D) channels-last, as ``place_model``."""
    import torch

    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images


def autocast(device: str):
    """bf16 autocast on CUDA, a no-op elsewhere."""
    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")
