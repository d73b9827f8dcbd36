"""The hold algorithm, without a server: a hub that runs no loops, and a
reader that stands for the store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from longpoll_app.follows import Follow
from longpoll_app.hold import Ended, hold
from longpoll_app.hub import Hub
from longpoll_app.queue import Batch
from longpoll_app.sessions import SessionRecord

SHORT = 0.05  # seconds: a hold that runs out


class Store:
    """Answers reads from a list of batches, and counts them."""

    def __init__(self, *batches: Batch) -> None:
        self.batches = list(batches)
        self.reads: list[tuple[int | None, tuple[int, int] | None]] = []

    async def __call__(
        self, hub: Hub, follow: Follow, cursor: int | None, ids: tuple[int, int] | None
    ) -> Batch:
        self.reads.append((cursor, ids))
        batch = self.batches.pop(0)
        hub.follows.saw(follow, batch.last_id, hub.loop.time())
        return batch


def empty(last_id: int) -> Batch:
    return Batch(messages=[], cursor=last_id, gap=False, last_id=last_id)


def with_messages(first: int, last: int) -> Batch:
    messages = [{"id": n, "type": "t", "data": n} for n in range(first, last + 1)]
    return Batch(messages=messages, cursor=last, gap=False, last_id=last)


def attached(hub: Hub, last_id: int = 0, acked_id: int = 0, trusted: bool = True) -> Follow:
    if trusted:
        hub.transport.since = hub.loop.time() - 1.0  # wake-ups arrive: what it reads holds
    follow = hub.follow("k" * 32)
    hub.attach(follow, SessionRecord(pk=7, last_id=last_id, acked_id=acked_id), hub.loop.time())
    return follow


@pytest.fixture
async def hub() -> Any:
    hub = Hub(asyncio.get_running_loop(), None)  # no loops started: nothing but the algorithm
    yield hub
    hub.acks.cancel()


async def test_a_trusted_poll_at_the_newest_id_waits_without_reading(hub: Hub) -> None:
    follow = attached(hub, last_id=3, acked_id=3)
    store = Store()
    assert await hold(hub, follow, 3, (3, 3), SHORT, read=store) is None
    assert store.reads == []


async def test_an_untrusted_poll_reads_the_store_and_answers_what_it_found(hub: Hub) -> None:
    follow = attached(hub, last_id=2, trusted=False)
    store = Store(with_messages(1, 2))
    batch = await hold(hub, follow, 0, (2, 0), SHORT, read=store)
    assert batch is not None and [m["id"] for m in batch.messages] == [1, 2]
    assert store.reads == [(0, None)]  # untrusted: the check's ids are not used either


async def test_a_fresh_page_that_found_nothing_waits_like_one_at_the_newest_id(hub: Hub) -> None:
    # Messages 3 and 4 are not acknowledged, yet none is left (they expired, say).
    follow = attached(hub, last_id=4, acked_id=2)
    store = Store(empty(4))
    assert await hold(hub, follow, None, (4, 2), SHORT, read=store) is None
    assert store.reads == [(None, (4, 2))] and follow.drained == 4
    # The next fresh page of that session: the process knows nothing is pending.
    assert await hold(hub, follow, None, (4, 2), SHORT, read=store) is None
    assert len(store.reads) == 1


async def test_a_wake_up_ends_the_hold_with_the_new_messages(hub: Hub) -> None:
    follow = attached(hub, last_id=1, acked_id=1)
    store = Store(with_messages(2, 2))
    holding = asyncio.ensure_future(hold(hub, follow, 1, (1, 1), 5.0, read=store))
    await asyncio.sleep(SHORT)
    assert not holding.done() and follow.held == 1
    hub.follows.wake(7, 2)
    batch = await asyncio.wait_for(holding, 1.0)
    assert batch is not None and batch.cursor == 2
    assert store.reads == [(1, None)] and follow.held == 0


async def test_the_cursor_acknowledges_what_the_page_received(hub: Hub) -> None:
    follow = attached(hub, last_id=5, acked_id=2)
    assert await hold(hub, follow, 5, (5, 2), SHORT, read=Store()) is None
    cursor, _ = hub.acks.pending[(7, "k" * 32)]  # deleted in the next batch, 50 ms on
    assert follow.acked == 5 and cursor == 5


async def test_a_session_that_ends_meanwhile_ends_the_hold(hub: Hub) -> None:
    follow = attached(hub, last_id=1, acked_id=1)
    holding = asyncio.ensure_future(hold(hub, follow, 1, (1, 1), 5.0, read=Store()))
    await asyncio.sleep(SHORT)
    hub.dispatch({"type": "longpoll.end", "pk": 7})
    with pytest.raises(Ended):
        await asyncio.wait_for(holding, 1.0)
    assert "k" * 32 not in hub.follows and follow.held == 0


async def test_a_cancelled_hold_gives_back_what_it_held(hub: Hub) -> None:
    follow = attached(hub, last_id=1, acked_id=1)
    holding = asyncio.ensure_future(hold(hub, follow, 1, (1, 1), 5.0, read=Store()))
    await asyncio.sleep(SHORT)
    assert follow.held == 1 and len(follow.waiters) == 1
    holding.cancel()
    await asyncio.gather(holding, return_exceptions=True)
    assert follow.held == 0 and follow.waiters == set()


class WokenWhileReading(Store):
    """A store whose first read misses a message that is committed, and its
    wake-up delivered, while that read runs (the read's snapshot came first)."""

    async def __call__(
        self, hub: Hub, follow: Follow, cursor: int | None, ids: tuple[int, int] | None
    ) -> Batch:
        if not self.reads:
            assert follow.pk is not None
            hub.follows.wake(follow.pk, 4)  # no poll waits yet: nobody to resolve
        return await super().__call__(hub, follow, cursor, ids)


async def test_a_wake_up_during_the_read_is_not_left_for_the_next_hold(hub: Hub) -> None:
    follow = attached(hub, last_id=3, acked_id=3, trusted=False)
    store = WokenWhileReading(empty(3), with_messages(4, 4))
    held = asyncio.ensure_future(hold(hub, follow, 3, (3, 3), 5.0, read=store))
    batch = await asyncio.wait_for(held, 1.0)  # not at the end of the 5 s hold
    assert batch is not None and [m["id"] for m in batch.messages] == [4]
    assert [cursor for cursor, _ in store.reads] == [3, 3]


async def test_a_newer_id_no_read_finds_costs_one_more_read_then_waits(hub: Hub) -> None:
    """An id the follow knows but the store never shows (it cannot happen while
    ids only grow; if it did) must not spin: one more read, then the hold."""
    follow = attached(hub, last_id=3, acked_id=3, trusted=False)
    follow.last_id = 9
    store = Store(empty(3), empty(3))
    assert await hold(hub, follow, 3, (3, 3), SHORT, read=store) is None
    assert len(store.reads) == 2
