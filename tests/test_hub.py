"""The per-process hub: wake-ups from other processes, trust, and clean-up."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from longpoll_app.hub import Hub
from longpoll_app.store import SessionRecord

from .conftest import Browser


async def followed(hub: Hub, key: str = "k" * 32, pk: int = 7) -> Any:
    follow = hub.follow(key)
    await hub.subscribe(follow)
    hub.attach(follow, SessionRecord(pk=pk, last_id=0, acked_id=0), hub.loop.time())
    return follow


async def test_wake_from_another_process_arrives_through_redis(
    redis_layer: None, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub.current()
    await hub.ready()
    follow = await followed(hub)
    assert hub.is_trusted(follow)
    waiting = asyncio.ensure_future(hub.wait(follow, 10.0))
    # Past channels-redis's 5 s blocking receive: the hub must still be listening.
    await asyncio.sleep(6.0)
    assert hub.layer is not None
    await hub.layer.group_send(follow.group, {"type": "longpoll.wake", "pk": 7, "last_id": 3})
    assert await asyncio.wait_for(waiting, 2.0) is True
    assert follow.last_id == 3
    assert "unreachable" not in caplog.text


async def test_end_from_another_process_answers_held_polls(layer: str) -> None:
    hub = Hub.current()
    await hub.ready()
    follow = await followed(hub)
    waiting = asyncio.ensure_future(hub.wait(follow, 5.0))
    await asyncio.sleep(0)
    hub._dispatch({"type": "longpoll.end", "pk": 7})
    assert await asyncio.wait_for(waiting, 1.0) is True
    assert follow.ended and follow.session_key not in hub.follows


async def test_stale_or_old_wakeups_change_nothing() -> None:
    hub = Hub.current()
    follow = await followed(hub)
    hub.wake(7, 5)
    hub.wake(7, 4)  # an older id arriving late
    hub.wake(999, 9)  # a session this process does not follow
    assert follow.last_id == 5


async def test_trust_needs_the_watcher_and_expires_after_the_recheck_interval(
    transactional_db: None, settings: Any
) -> None:
    settings.LONGPOLL_SESSION_RECHECK = 0.2
    hub = Hub.current()
    await hub.ready()
    follow = await followed(hub)
    assert not hub.is_trusted(follow)  # read before the watcher watched anything
    await asyncio.sleep(0.15)
    hub.attach(follow, SessionRecord(pk=7, last_id=0, acked_id=0), hub.loop.time())
    assert hub.is_trusted(follow)
    await asyncio.sleep(0.25)
    assert not hub.is_trusted(follow)


async def test_layer_outage_is_logged_once_and_releases_held_polls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub.current()
    follow = await followed(hub)
    waiting = asyncio.ensure_future(hub.wait(follow, 5.0))
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="longpoll_app"):
        for _ in range(3):
            hub._report_outage(ConnectionError("Redis went away"))
    assert await asyncio.wait_for(waiting, 1.0) is True  # answered, to re-poll from the store
    assert not hub.is_trusted(follow)
    assert caplog.text.count("channel layer unreachable") == 1


async def test_sweep_forgets_sessions_that_stopped_polling(layer: str) -> None:
    hub = Hub.current()
    await hub.ready()
    follow = await followed(hub)
    assert hub.follows
    await hub.sweep(idle=0.0)
    assert hub.follows == {} and hub.by_pk == {}
    assert follow.pk is not None


async def test_session_checks_that_arrive_together_share_one_trip(
    make_browser: Any, settings: Any, monkeypatch: Any
) -> None:
    from longpoll_app import store

    settings.LONGPOLL_TIMEOUT = 0.1
    browsers = [await sync_to_async(make_browser)() for _ in range(20)]
    trips: list[int] = []
    verify_sessions = store.verify_sessions

    def counted(polls: list[Any]) -> Any:
        trips.append(len(polls))
        return verify_sessions(polls)

    monkeypatch.setattr(store, "verify_sessions", counted)
    replies = await asyncio.gather(*(b.poll(None) for b in browsers))
    assert [r.status for r in replies] == [204] * 20
    assert sum(trips) == 20 and len(trips) < 20  # the checks that waited went together


async def test_a_failing_watcher_keeps_its_place_and_loses_no_wake_up(
    browser: Browser, settings: Any, monkeypatch: Any, caplog: Any
) -> None:
    """A busy SQLite ("database is locked") only delays wake-ups from other processes."""
    from django.db import OperationalError

    from longpoll_app import store

    settings.LONGPOLL_TIMEOUT = 3.0
    assert (await browser.poll(None)).status == 204
    await asyncio.sleep(0.2)  # the watcher has its watermark
    held = browser.start({"cursor": 0})
    assert not await held.answered_within(0.2)
    messages_since = store.messages_since

    failures = []

    def locked(*args: Any) -> Any:
        failures.append(args)
        raise OperationalError("database is locked")

    monkeypatch.setattr(store, "messages_since", locked)
    # A check that began before the patch would still find the message and wake the
    # poll early (seen on PostgreSQL): queue it only once the checks fail.
    for _ in range(100):
        if failures:
            break
        await asyncio.sleep(0.02)
    assert failures
    # Queued by "another process": straight into the store, no local wake-up.
    queued = await sync_to_async(store.append)(browser.session_key, "late", 1)
    assert not await held.answered_within(0.3)
    monkeypatch.setattr(store, "messages_since", messages_since)
    reply = await held.response(2.0)
    assert reply.json()["messages"] == [{"id": queued.seq, "type": "late", "data": 1}]
    assert "cannot check the store" in caplog.text
