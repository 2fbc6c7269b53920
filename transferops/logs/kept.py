"""Production images kept for the next dataset version, and the store's retention.

The service offers every image it answered to an :class:`ImageKeeper`, which
applies the policy (``serve.keep``): on or off, a sampled ``fraction``, at
most ``per_hour`` images an hour per worker. What it keeps goes to a writer
thread through a queue bounded in bytes (``queue_mb``): no answer waits on a
disk, and a full queue drops the image (counted), it never blocks. The writer
stores each image as a file named by its content (sha256) under
``<paths.prediction_log>/kept/``,
folders ``0700`` and files ``0600`` (the service's user alone reads them),
exactly as sent when its largest side is at most the kept side
(``side_factor`` x the model's input side), otherwise decoded under the same
limits as the request, holding its pixels against the service's pixel budget
(``hold``: every full-size pixel of a process under one bound), and shrunk to
it; then it links the file from the prediction row (``image``). Free disk
under ``min_free_mb``, or a failed write, skips the image and logs it:
keeping stops, serving does not.

The same thread applies retention (``serve.retention_days``) every
``prune_every_s``: predictions, their feedback and kept images older than that
are deleted (``keptfiles.prune_store``), so a store under steady traffic stops
growing. The files' layout, and reading them back with their labels, are
``transferops/logs/keptfiles.py``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from PIL import Image

from transferops.config import ServeParams
from transferops.data.imagecheck import BadImage, decode_upload, read_header
from transferops.data.pictures import shrink, to_rgb
from transferops.logs.keptfiles import kept_root, prune_store, write_private
from transferops.logs.predictions import PredictionLog

log = logging.getLogger(__name__)
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "GIF": ".gif",
            "BMP": ".bmp", "TIFF": ".tif"}  # fmt: skip
PRUNE_EVERY_S = 600.0
BATCH_S = 0.5  # the writer wakes at most this often under load, and writes what queued
LINK = "UPDATE predictions SET image = ? WHERE request_id = ?"


@dataclass
class KeepCounts:
    """What the keeper did with the images offered to it, since it started."""

    offered: int = 0
    kept: int = 0
    not_sampled: int = 0
    over_hourly_cap: int = 0
    queue_full: int = 0
    disk_low: int = 0
    no_pixel_budget: int = 0  # the service's pixel budget stayed full: not decoded, not kept
    failed: int = 0
    pruned_rows: int = 0
    pruned_images: int = 0


class ImageKeeper:
    """Keeps a sample of the served images on disk, off the answers' path."""

    def __init__(
        self,
        log_store: PredictionLog,
        serve: ServeParams,
        *,
        prune_every_s: float = PRUNE_EVERY_S,
        seed: int | None = None,
        hold: Callable[[int], AbstractContextManager] | None = None,
    ) -> None:
        """``hold(pixels)``: held while an image is decoded again (the service passes its
        pixel budget's ``hold``; it may raise when the budget stays full)."""
        self.store = log_store
        self._hold = hold or (lambda pixels: nullcontext())
        self.serve, self.policy = serve, serve.keep
        self.root = kept_root(log_store.directory)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)  # an existing folder too: kept images are the users' data
        self.counts = KeepCounts()
        self._random = random.Random(seed)
        self._hour, self._this_hour = -1, 0
        self._queue: queue.Queue = queue.Queue()
        self._queued_bytes, self._bytes_lock = 0, threading.Lock()
        self._max_bytes = int(self.policy.queue_mb * 2**20)
        self._prune_every_s = prune_every_s
        self._warned: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name="image-keeper", daemon=True)
        self._thread.start()

    def offer(self, request_id: str, data: bytes, side: int) -> bool:
        """Queue one served image for keeping (at most ``side`` px on its largest side).

        Never blocks and never raises: an image the policy does not keep, or
        that finds the queue full, is counted and dropped.
        """
        self.counts.offered += 1
        if not self.policy.enabled:
            return False
        if self._random.random() >= self.policy.fraction:
            self.counts.not_sampled += 1
            return False
        hour = int(time.time() // 3600)
        if hour != self._hour:
            self._hour, self._this_hour = hour, 0
        if self._this_hour >= self.policy.per_hour:
            self.counts.over_hourly_cap += 1
            return False
        with self._bytes_lock:
            if self._queued_bytes + len(data) > self._max_bytes:
                self.counts.queue_full += 1
                return False
            self._queued_bytes += len(data)
        self._queue.put_nowait((request_id, data, side))
        self._this_hour += 1
        return True

    def describe(self) -> dict:
        return {"policy": self.policy.model_dump(), "counts": asdict(self.counts)}

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued image is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        next_prune = time.monotonic()
        while True:
            if time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + self._prune_every_s
            try:
                item = self._queue.get(timeout=max(0.01, next_prune - time.monotonic()))
            except queue.Empty:
                continue
            # Woken by every image, this thread took the GIL from the event loop and the
            # model ~200 times a second under load (docs/benchmarks.md): let a batch gather.
            time.sleep(BATCH_S)
            items = [item]
            while items[-1] is not None:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = items[-1] is None
            written = [self._write(i) for i in items if i is not None]
            self._link([link for link in written if link is not None], len(items))
            if stop:
                return

    def _write(self, item: tuple[str, bytes, int]) -> tuple[str, str] | None:
        request_id, data, side = item
        with self._bytes_lock:
            self._queued_bytes -= len(data)
        try:
            free = shutil.disk_usage(self.root).free
            if free < self.policy.min_free_mb * 2**20:
                self.counts.disk_low += 1
                self._warn("disk", f"{free / 2**20:.0f} MB free < serve.keep.min_free_mb: "
                           "not keeping images (serving goes on)")  # fmt: skip
                return None
            body, suffix = self._fit(data, side)
            if body is None:
                return None
            digest = hashlib.sha256(body).hexdigest()
            relative = f"{digest[:2]}/{digest}{suffix}"
            write_private(self.root / relative, body)
            return request_id, relative
        except (OSError, BadImage) as err:
            self.counts.failed += 1
            self._warn("write", f"an image was not kept: {err}")
            return None

    def _fit(self, data: bytes, side: int) -> tuple[bytes | None, str]:
        """The bytes to keep and their suffix: as sent when the largest side fits in
        ``side``, else a shrunk copy, decoded holding its pixels against the budget
        (None when the budget stays full)."""
        header = read_header(data)
        if isinstance(header, str):
            raise BadImage(header)
        if max(header["width"], header["height"]) <= side:
            return data, SUFFIXES.get(header["format"], ".img")
        with ExitStack() as held:
            try:
                held.enter_context(self._hold(header["width"] * header["height"]))
            except Exception as busy:  # the budget stayed full: requests come first
                self.counts.no_pixel_budget += 1
                self._warn("budget", f"an image was not kept: {busy}")
                return None, ""
            return shrunk_copy(data, header["format"], side, self.serve)

    def _link(self, links: list[tuple[str, str]], handled: int) -> None:
        try:
            if links:
                with self.store.transaction() as db:
                    db.executemany(LINK, [(relative, rid) for rid, relative in links])
                self.counts.kept += len(links)
        except Exception as err:  # a locked or full database: the images stay unlinked
            self.counts.failed += len(links)
            self._warn("link", f"kept images were not linked: {err}")
        finally:
            for _ in range(handled):
                self._queue.task_done()

    def _prune(self) -> None:
        if self.serve.retention_days is None:
            return
        cutoff = datetime.now(UTC) - timedelta(days=self.serve.retention_days)
        try:
            rows, images = prune_store(self.store, cutoff)
        except Exception as err:
            self._warn("prune", f"retention did not run: {err}")
            return
        self.counts.pruned_rows += rows
        self.counts.pruned_images += images

    def _warn(self, kind: str, message: str) -> None:
        """Log a problem at most once a minute per kind (a full disk repeats per image)."""
        now = time.monotonic()
        if now - self._warned.get(kind, -60.0) >= 60.0:
            self._warned[kind] = now
            log.warning(message)


def shrunk_copy(data: bytes, image_format: str, side: int, serve: ServeParams) -> tuple[bytes, str]:
    """``data`` decoded (under ``serve``'s limits), turned upright, flattened and shrunk to
    ``side`` on its largest side, and its suffix: JPEG stays JPEG (quality 90), anything
    else becomes PNG."""
    image = decode_upload(
        data,
        max_bytes=serve.max_image_bytes,
        max_pixels=serve.max_pixels,
        formats=serve.formats,
        draft_side=side,
    )
    reduced, _ = shrink(image, side)  # whole-factor first, as serving does: no full-size copy
    del image
    small = to_rgb(reduced)
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image_format in ("JPEG", "MPO"):
        small.save(out, format="JPEG", quality=90)
        return out.getvalue(), ".jpg"
    small.save(out, format="PNG")
    return out.getvalue(), ".png"
