"""The coalescer: items of many callers in one batch call, and what a failure
costs each of them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from django.db import OperationalError

from longpoll_app.coalesce import Coalescer, Pace


class Batches:
    """A batch function that records its calls; ``fail`` decides per batch."""

    def __init__(self, fail: Any = None) -> None:
        self.calls: list[dict[str, int]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, items: dict[str, int]) -> dict[str, int]:
        with self.lock:
            self.calls.append(dict(items))
        if self.fail is not None and (exc := self.fail(items)) is not None:
            raise exc
        return {key: value * 10 for key, value in items.items()}


def coalescer(batches: Batches, pace: Pace | None = None) -> Coalescer[str, int, int]:
    return Coalescer(asyncio.get_running_loop(), batches, max, pace or Pace(), "test")


async def test_items_that_arrive_together_go_in_one_call() -> None:
    batches = Batches()
    together = coalescer(batches, Pace(delay=0.02))
    results = await asyncio.gather(*(together.add(f"k{n}", n) for n in range(50)))
    assert results == [n * 10 for n in range(50)]
    assert len(batches.calls) == 1


async def test_items_of_one_key_are_merged_and_every_caller_gets_the_result() -> None:
    batches = Batches()
    merging = coalescer(batches, Pace(delay=0.02))
    results = await asyncio.gather(merging.add("k", 3), merging.add("k", 9), merging.add("k", 1))
    assert results == [90, 90, 90] and batches.calls == [{"k": 9}]


async def test_while_a_trip_runs_the_next_items_wait_and_go_together() -> None:
    batches = Batches()
    paced = coalescer(batches, Pace(rate=1000.0, burst=1))
    first = paced.add("a", 1)  # goes at once
    await asyncio.sleep(0)
    rest = [paced.add(f"k{n}", n) for n in range(20)]
    await asyncio.gather(first, *rest)
    assert batches.calls[0] == {"a": 1} and sum(len(c) for c in batches.calls) == 21
    assert len(batches.calls) < 21


async def test_an_item_that_breaks_its_batch_fails_only_its_caller() -> None:
    def bad_item(items: dict[str, int]) -> Exception | None:
        return ValueError("this one") if "bad" in items else None

    batches = Batches(bad_item)
    split = coalescer(batches, Pace(delay=0.02))
    good, bad = split.add("good", 1), split.add("bad", 2)
    assert await good == 10
    with pytest.raises(ValueError, match="this one"):
        await bad
    assert batches.calls == [{"good": 1, "bad": 2}, {"good": 1}, {"bad": 2}]


async def test_an_outage_fails_every_caller_at_once_without_retry() -> None:
    batches = Batches(lambda items: OperationalError("gone"))
    failing = coalescer(batches, Pace(delay=0.02))
    answers = await asyncio.gather(failing.add("a", 1), failing.add("b", 2), return_exceptions=True)
    assert [type(a) for a in answers] == [OperationalError, OperationalError]
    assert len(batches.calls) == 1  # not split: every item would fail alike


async def test_with_retry_an_outage_keeps_the_items_for_a_later_trip() -> None:
    down = [True]
    batches = Batches(lambda items: OperationalError("gone") if down[0] else None)
    retrying = coalescer(batches, Pace(delay=0.01, retry=0.05))
    kept = retrying.add("a", 1)
    await asyncio.sleep(0.03)
    assert not kept.done() and len(batches.calls) == 1
    down[0] = False
    later = retrying.add("a", 4)  # merged with the kept item
    assert await asyncio.wait_for(kept, 1.0) == 40 and await later == 40
    assert batches.calls[-1] == {"a": 4}


async def test_flush_runs_what_is_pending_now() -> None:
    batches = Batches()
    slow = coalescer(batches, Pace(delay=60.0))
    pending = slow.add("a", 1)
    await slow.flush()
    assert pending.done() and await pending == 10


async def test_cancel_cancels_the_callers_of_a_running_trip() -> None:
    release = threading.Event()

    def blocked(items: dict[str, int]) -> None:
        release.wait(5)
        return None

    batches = Batches(blocked)
    stuck = coalescer(batches)
    waiting = stuck.add("a", 1)
    await asyncio.sleep(0.05)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
