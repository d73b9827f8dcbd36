"""Work that polls hand over one at a time, done for many in one trip.

Every poll checks its session and acknowledges its cursor; one thread hop and
one query each would make a busy server a busy database client, and a thread
hop costs more than the query. A ``Coalescer`` gathers the items by key,
merges those of one key, and runs one batch call (in a worker thread) for the
lot: a thousand browsers (re)connecting cost a few queries, not thousands.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .limits import TokenBuckets
from .sql import is_outage
from .threads import run_in_thread

log = logging.getLogger("longpoll_app")

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")


@dataclass(frozen=True)
class Pace:
    """How trips go: after ``delay`` seconds of gathering, at most ``rate``
    a second once busy (``burst`` at once after a quiet spell), at most
    ``batch`` keys each; after an outage, again in ``retry`` seconds with the
    items kept (None: the waiting callers get the error)."""

    delay: float = 0.0  # seconds
    rate: float | None = None  # trips per second
    burst: int = 1
    batch: int = 1_000_000  # keys
    retry: float | None = None  # seconds


class Coalescer(Generic[K, V, R]):
    """Batches ``add(key, value)`` into calls of ``run_batch({key: value})``.

    ``run_batch`` is synchronous (it runs in a worker thread) and returns the
    result of each key it has one for. When a batch fails with an error that
    is not an outage, each key is tried alone, so that the error fails only
    the caller whose item caused it.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        run_batch: Callable[[dict[K, V]], dict[K, R]],
        merge: Callable[[V, V], V],
        pace: Pace,
        describe: str,
    ) -> None:
        self.loop = loop
        self.run_batch = run_batch
        self.merge = merge
        self.pace = pace
        self.describe = describe  # for the log: "check sessions", ...
        self.pending: dict[K, tuple[V, list[asyncio.Future[R | None]]]] = {}
        self._trips = TokenBuckets()  # one bucket: this coalescer's trips
        self._running: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, key: K, value: V) -> asyncio.Future[R | None]:
        """A future for the key's result (None if the batch gave it none)."""
        waiter: asyncio.Future[R | None] = self.loop.create_future()
        known = self.pending.get(key)
        if known is None:
            self.pending[key] = (value, [waiter])
        else:
            self.pending[key] = (self.merge(known[0], value), [*known[1], waiter])
        self._schedule(self.pace.delay)
        return waiter

    def _schedule(self, delay: float) -> None:
        if self._running is not None or self._timer is not None:
            return
        if delay > 0:
            self._timer = self.loop.call_later(delay, self._start)
        else:
            self._start()

    def _start(self) -> None:
        self._timer = None
        if self._running is None:
            self._running = self.loop.create_task(self._run())

    async def _run(self) -> None:
        batch: dict[K, tuple[V, list[asyncio.Future[R | None]]]] = {}
        kept = False
        try:
            while self.pending and not kept:
                while self.pace.rate is not None and (
                    wait := self._trips.take("", self.pace.rate, self.pace.burst)
                ):
                    await asyncio.sleep(wait)  # the items that arrive meanwhile join this trip
                keys = list(itertools.islice(self.pending, self.pace.batch))
                batch = {key: self.pending.pop(key) for key in keys}
                kept = not await self._trip(batch)
                batch = {}
        except asyncio.CancelledError:  # the hub is closing: so are the callers waiting
            for _, waiters in [*batch.values(), *self.pending.values()]:
                for waiter in waiters:
                    waiter.cancel()
            self.pending.clear()
            raise
        finally:
            self._running = None
            if self.pending:  # kept after an outage, or added during the last trip
                self._schedule(self.pace.retry if kept and self.pace.retry else self.pace.delay)

    async def _trip(self, batch: dict[K, tuple[V, list[asyncio.Future[R | None]]]]) -> bool:
        """One batch call; False if an outage kept the items for a retry."""
        try:
            results = await run_in_thread(self.run_batch)(
                {key: value for key, (value, _) in batch.items()}
            )
        except Exception as exc:
            if is_outage(exc) and self.pace.retry is not None:
                log.warning("longpoll: could not %s; will retry", self.describe, exc_info=True)
                for key, (value, waiters) in batch.items():
                    known = self.pending.get(key)
                    if known is not None:
                        value, waiters = self.merge(value, known[0]), [*waiters, *known[1]]
                    self.pending[key] = (value, waiters)
                return False
            elif len(batch) > 1 and not is_outage(exc):
                for key, entry in batch.items():  # something in one item broke the batch
                    await self._trip({key: entry})
            else:
                for _, waiters in batch.values():
                    _fail(waiters, exc)
            return True
        for key, (_, waiters) in batch.items():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(results.get(key))
        return True

    async def flush(self) -> None:
        """Run what is pending now (at close)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.pending and self._running is None:
            batch, self.pending = self.pending, {}
            await self._trip(batch)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running is not None:
            self._running.cancel()


def _fail(waiters: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)
