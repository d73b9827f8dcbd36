"""The follows registry: what a hub knows of each session, and the orders
that reach its held polls."""

from __future__ import annotations

import asyncio

from longpoll_app.follows import END_KEY, RELEASE, WAKE, Follows
from longpoll_app.sessions import SessionRecord, wake_group

KEY, NEW_KEY = "a" * 32, "b" * 32


def registry() -> Follows:
    return Follows(asyncio.get_running_loop())


async def test_a_new_record_starts_the_ids_afresh() -> None:
    follows = registry()
    follow = follows.follow(KEY, covered=False)
    follows.attach(follow, SessionRecord(pk=1, last_id=9, acked_id=9), 0.0)
    follows.attach(follow, SessionRecord(pk=2, last_id=3, acked_id=1), 1.0)
    assert (follow.pk, follow.last_id, follow.acked, follow.drained) == (2, 3, 1, 1)
    assert follows.by_pk == {2: follow}


async def test_the_same_record_only_moves_forward() -> None:
    follows = registry()
    follow = follows.follow(KEY, covered=False)
    follows.attach(follow, SessionRecord(pk=1, last_id=9, acked_id=5), 0.0)
    follows.attach(follow, SessionRecord(pk=1, last_id=4, acked_id=2), 1.0)  # an older read
    assert (follow.last_id, follow.acked, follow.checked_at) == (9, 5, 1.0)


async def test_orders_reach_the_held_polls() -> None:
    follows = registry()
    follow = follows.follow(KEY, covered=True)
    follows.attach(follow, SessionRecord(pk=1, last_id=0, acked_id=0), 0.0)
    woken = follows.wait(follow, 5.0)
    follows.dispatch({"type": WAKE, "pk": 1, "last_id": 4})
    assert await woken is True and follow.last_id == 4
    released = follows.wait(follow, 5.0)
    follows.dispatch({"type": RELEASE, "pk": 1})
    assert await released is False  # as if the hold ran out
    follows.dispatch({"type": "longpoll.unknown", "pk": 1})  # ignored
    assert KEY in follows and not follow.ended


async def test_a_rotated_key_ends_only_the_old_keys_polls() -> None:
    follows = registry()
    old, new = follows.follow(KEY, covered=True), follows.follow(NEW_KEY, covered=True)
    follows.attach(old, SessionRecord(pk=1, last_id=0, acked_id=0), 0.0)
    follows.attach(new, SessionRecord(pk=1, last_id=0, acked_id=0), 0.0)  # the record moved
    held_old, held_new = follows.wait(old, 5.0), follows.wait(new, 5.0)
    follows.dispatch({"type": END_KEY, "group": wake_group(KEY), "pk": 1})
    assert await held_old is True and old.ended
    assert not held_new.done() and NEW_KEY in follows and follows.by_pk == {1: new}
    held_new.cancel()


async def test_holding_counts_the_poll_and_idle_finds_the_quiet_ones() -> None:
    follows = registry()
    busy, quiet = follows.follow(KEY, covered=True), follows.follow(NEW_KEY, covered=True)
    later = follows.loop.time() + 1.0
    follows.hold_starts(busy)
    assert follows.held_polls() == 1
    assert follows.idle(later) == [quiet]
    follows.hold_ends(busy)
    assert follows.held_polls() == 0 and busy.used_at <= follows.loop.time()


async def test_a_timer_answers_false_and_leaves_no_waiter_behind() -> None:
    follows = registry()
    follow = follows.follow(KEY, covered=True)
    assert await follows.wait(follow, 0.01) is False
    assert follow.waiters == set()


async def test_drain_answers_the_held_polls_empty_and_no_poll_waits_after() -> None:
    follows = registry()
    follow = follows.follow(KEY, covered=True)
    follows.attach(follow, SessionRecord(pk=1, last_id=0, acked_id=0), 0.0)
    held = [follows.wait(follow, 5.0) for _ in range(3)]
    follows.drain()
    assert [await waiter for waiter in held] == [False, False, False]  # as if the hold ran out
    later = follows.wait(follow, 5.0)
    assert later.done() and later.result() is False
    await asyncio.sleep(0)  # the done callbacks that forget the waiters
    assert follow.waiters == set()
