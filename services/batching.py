"""Adaptive batching inside one process: requests wait while the model works.

Each image of a request joins a queue; one task hands the model everything
queued (up to ``max_batch``) as soon as the previous batch is done, so a
quiet server answers one image at once and a busy one forms full batches,
without a second process or a round trip over HTTP. The model runs in one
dedicated thread: the event loop keeps reading, decoding and answering
others meanwhile. A full queue refuses at once (:class:`Busy`) instead of
holding requests it cannot serve in time. No BentoML here: tested on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any


class Busy(Exception):
    """The server cannot take this work now; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Batcher:
    """Feeds ``run(items) -> results`` (one result per item) with batches from many callers."""

    def __init__(
        self, run: Callable[[list], list], max_batch: int, max_queue: int, wait_s: float = 0.0
    ) -> None:
        self.run, self.max_batch, self.max_queue = run, max_batch, max_queue
        self.wait_s = wait_s
        self.coming = 0  # images admitted and being decoded: the next batch waits for them
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.batches: list[int] = []  # sizes of the latest batches (for tests and metrics)

    @contextmanager
    def announced(self, count: int) -> Iterator[None]:
        """``count`` images will be submitted when the block ends (they are being decoded)."""
        self.coming += count
        try:
            yield
        finally:
            self.coming -= count

    async def submit(self, items: Sequence) -> list:
        """The results for ``items``, in order; :class:`Busy` when the queue is full."""
        if self._queue is None:  # created in the serving loop, on first use
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve(), name="batcher")
        waiting = self._queue.qsize()
        if waiting + len(items) > self.max_queue:
            raise Busy(
                f"{waiting} images already wait for the model; {len(items)} more would pass "
                f"serve.max_queue = {self.max_queue}",
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures, strict=True):
            self._queue.put_nowait((item, future))
        return list(await asyncio.gather(*futures))

    async def _serve(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if self.coming <= 0 or left <= 0:
                    break
                try:  # images being decoded now join this batch instead of the next
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except TimeoutError:
                    break
            batch = [(item, future) for item, future in batch if not future.cancelled()]
            if not batch:
                continue
            self.batches = [*self.batches[-99:], len(batch)]
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run, [item for item, _ in batch]
                )
            except Exception as err:  # every caller of this batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
