"""What one server holds at once: budgets shared by concurrent requests, and text it accepts.

A :class:`Budget` is an allowance (decoded pixels, body bytes) that requests
draw from while they hold the thing and give back when done. Asking for more
than is left waits up to ``wait_s`` for others to finish, then refuses with
:class:`~services.batching.Busy` (503 with Retry-After) naming the budget and
the numbers; asking for more than the whole budget can never succeed, so it
is a 413 at once. Threads (decoding) and the event loop (reading bodies) both
draw: the lock is a plain threading one, and the event loop only takes what
is free without waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.exceptions import HTTPException

from services.batching import Busy
from transferops.names import text_problem


def checked_text(field: str, value: str | None) -> str | None:
    """``value`` when it is acceptable caller text (``transferops.names``); a 400 naming it."""
    problem = None if value is None else text_problem(field, value)
    if problem:
        raise HTTPException(400, problem)
    return value


class Budget:
    """``limit`` units (pixels, bytes) shared by everything in flight in this process."""

    def __init__(self, name: str, limit: int, wait_s: float, unit: str) -> None:
        self.name, self.limit, self.wait_s, self.unit = name, limit, wait_s, unit
        self.used = 0
        self._free = threading.Condition()

    def _refuse(self, amount: int) -> Busy:
        return Busy(
            f"server busy: {self.used:,} {self.unit} in flight + {amount:,} > {self.name} = "
            f"{self.limit:,}; retry shortly",
            retry_after=max(1, round(self.wait_s)),
        )

    def _too_big(self, amount: int) -> HTTPException:
        return HTTPException(
            413, f"{amount:,} {self.unit} > {self.name} = {self.limit:,}: never fits"
        )

    def try_take(self, amount: int) -> None:
        """Take ``amount`` now or refuse (503); for the event loop, which must not wait."""
        if amount > self.limit:
            raise self._too_big(amount)
        with self._free:
            if self.used + amount > self.limit:
                raise self._refuse(amount)
            self.used += amount

    def give(self, amount: int) -> None:
        with self._free:
            self.used -= amount
            self._free.notify_all()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        """Hold ``amount`` for the block, waiting up to ``wait_s`` for room (threads only)."""
        if amount > self.limit:
            raise self._too_big(amount)
        with self._free:
            if not self._free.wait_for(lambda: self.used + amount <= self.limit, self.wait_s):
                raise self._refuse(amount)
            self.used += amount
        try:
            yield
        finally:
            self.give(amount)
