"""The in-process batcher and the shared budgets, without a server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from starlette.exceptions import HTTPException

from services.batching import Batcher, Busy
from services.limits import Budget, checked_text


def slow_double(items: list[int]) -> list[int]:
    time.sleep(0.05)
    return [2 * i for i in items]


async def callers(batcher: Batcher, count: int) -> list[list[int]]:
    return await asyncio.gather(*(batcher.submit([i]) for i in range(count)))


def test_concurrent_callers_share_batches_and_each_gets_its_own_answer() -> None:
    batcher = Batcher(slow_double, max_batch=8, max_queue=100)
    answers = asyncio.run(callers(batcher, 20))
    assert answers == [[2 * i] for i in range(20)]
    assert max(batcher.batches) == 8, "callers waiting while the model works form full batches"
    assert len(batcher.batches) < 20


def test_batching_off_is_one_image_per_forward() -> None:
    batcher = Batcher(slow_double, max_batch=1, max_queue=100)
    asyncio.run(callers(batcher, 5))
    assert batcher.batches == [1] * 5


def test_a_full_queue_refuses_at_once() -> None:
    started, gate = threading.Event(), threading.Event()

    def gated(items: list[int]) -> list[int]:
        started.set()
        gate.wait(5)
        return items

    batcher = Batcher(gated, max_batch=2, max_queue=4)

    async def flood() -> list:
        first = asyncio.ensure_future(batcher.submit([1, 2, 3, 4]))
        while not started.is_set():  # the model took [1, 2]; [3, 4] wait
            await asyncio.sleep(0.01)
        with pytest.raises(Busy, match=r"2 images already wait .* serve\.max_queue = 4"):
            await batcher.submit([5, 6, 7])
        gate.set()
        return await first

    assert asyncio.run(flood()) == [1, 2, 3, 4]


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    calls = []

    def fragile(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("model broke")
        return items

    batcher = Batcher(fragile, max_batch=4, max_queue=10)

    async def twice() -> list:
        with pytest.raises(RuntimeError, match="model broke"):
            await batcher.submit([1])
        return await batcher.submit([2])

    assert asyncio.run(twice()) == [2]


def test_budget_waits_for_room_then_refuses_naming_the_limit() -> None:
    budget = Budget("serve.max_pixels_in_flight", 100, wait_s=0.2, unit="pixels")
    released = threading.Event()

    def holder() -> None:
        with budget.hold(80):
            released.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    time.sleep(0.05)
    with budget.hold(20):  # fits beside the holder
        assert budget.used == 100
    refused = r"80 pixels in flight \+ 30 > serve\.max_pixels_in_flight = 100"
    with pytest.raises(Busy, match=refused), budget.hold(30):
        pass
    released.set()
    thread.join()
    with budget.hold(100):  # the holder gave its share back
        assert budget.used == 100
    assert budget.used == 0


def test_budget_larger_than_the_whole_is_413_and_the_event_loop_never_waits() -> None:
    budget = Budget("serve.max_bytes_in_flight", 10, wait_s=5, unit="bytes")
    with pytest.raises(HTTPException) as refused:
        budget.try_take(11)
    assert refused.value.status_code == 413 and "never fits" in refused.value.detail
    budget.try_take(8)
    began = time.perf_counter()
    with pytest.raises(Busy):
        budget.try_take(3)
    assert time.perf_counter() - began < 1, "try_take refuses without waiting"
    budget.give(8)
    assert budget.used == 0


@pytest.mark.parametrize(
    "value", ["north", "Zürich Nord", "shop-12/aisle_3", "a@b.c+d:e", "店舗", "x" * 64]
)
def test_plain_group_names_pass(value: str) -> None:
    assert checked_text("group", value) == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * 65, "<script>alert(1)</script>", "$\\frac{1}{0}$", "a\nb", "quote'd", "tab\tx"],
)
def test_hostile_group_names_are_refused_by_name(value: str) -> None:
    with pytest.raises(HTTPException) as refused:
        checked_text("group", value)
    assert refused.value.status_code == 400 and refused.value.detail.startswith("group ")
