"""How wake-ups from other processes reach a hub: the base's trust rule and
outage bookkeeping, the choice of a transport, the store watcher, and the
channel-layer transport (PostgreSQL's, against a real database:
test_transports_notify.py)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer
from django.db import OperationalError

from longpoll_app import queue, sessions
from longpoll_app.follows import END, WAKE, Follow, Follows
from longpoll_app.hub import Hub, make_transport
from longpoll_app.runtime import current_hub
from longpoll_app.sessions import SessionRecord
from longpoll_app.transports import chosen
from longpoll_app.transports import layer as layer_transport
from longpoll_app.transports.base import Transport
from longpoll_app.transports.layer import LAYER_CONCURRENCY, PROBE_GROUP, LayerTransport
from longpoll_app.transports.notify import NotifyTransport
from longpoll_app.transports.notify import connection_params as notify_params
from longpoll_app.transports.orders import decode, encode
from longpoll_app.transports.watcher import StoreWatcher

from .conftest import REDIS_URL, Browser, flush_redis, new_session_key, use_redis_layer

WATCH_INTERVAL = 0.02  # seconds: the watcher's pace in these tests
KEY = "k" * 32


async def followed(hub: Hub, key: str = "k" * 32, pk: int = 7) -> Any:
    # As tests/test_hub.py's helper: a session the hub follows, read just now.
    follow = hub.follow(key)
    await hub.subscribe(follow)
    hub.attach(follow, SessionRecord(pk=pk, last_id=0, acked_id=0), hub.loop.time())
    return follow


class Quiet(Transport):
    """A transport that carries nothing: the base's rules alone."""

    async def run(self) -> None:
        await asyncio.Event().wait()


def registry() -> Follows:
    return Follows(asyncio.get_running_loop())


def attached(follows: Follows, key: str, pk: int, covered: bool, last_id: int = 0) -> Follow:
    """A follow of ``key`` whose record (``pk``) the store gave just now."""
    follow = follows.follow(key, covered=covered)
    follows.attach(follow, SessionRecord(pk=pk, last_id=last_id, acked_id=0), follows.loop.time())
    return follow


@asynccontextmanager
async def running(transport: Transport) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(transport.run())
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def app_log(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "longpoll_app" and r.levelno == level
    ]


# -- base: trust ------------------------------------------------------------------

INF = math.inf


@pytest.mark.parametrize(
    ("pk", "since", "subscribed_at", "checked_at", "trusted"),
    [
        pytest.param(None, 0.0, -INF, 10.0, False, id="no-record"),
        pytest.param(7, INF, -INF, 10.0, False, id="transport-not-working"),
        pytest.param(7, 5.0, -INF, 10.0, True, id="read-after-both"),
        pytest.param(7, 10.0, -INF, 10.0, True, id="read-as-it-began"),
        pytest.param(7, 10.001, -INF, 10.0, False, id="read-before-the-transport"),
        pytest.param(7, 5.0, 10.0, 10.0, True, id="read-as-subscribed"),
        pytest.param(7, 5.0, 12.0, 10.0, False, id="read-before-subscribing"),
        pytest.param(7, 5.0, INF, 10.0, False, id="never-subscribed"),
        pytest.param(7, 12.0, 11.0, 10.0, False, id="read-before-both"),
    ],
)
async def test_a_follow_is_trusted_when_read_after_wake_ups_began(
    pk: int | None, since: float, subscribed_at: float, checked_at: float, trusted: bool
) -> None:
    transport = Quiet(registry())
    transport.since = since
    follow = Follow(
        session_key=KEY, group="g", pk=pk, checked_at=checked_at, subscribed_at=subscribed_at
    )
    assert transport.is_trusted(follow) is trusted


async def test_a_new_transport_trusts_nothing_and_is_not_ready() -> None:
    transport = Quiet(registry())
    assert transport.since == INF and not transport.is_ready()
    assert transport.state() == {"outage": 0, "outages": 0}
    assert not transport.must_subscribe(Follow(session_key=KEY, group="g"))


# -- base: outages ------------------------------------------------------------------

TRANSPORTS: list[Any] = [
    pytest.param(Quiet, "wake-ups cannot arrive", "wake-ups arrive again", id="base"),
    pytest.param(
        StoreWatcher,
        "cannot check the store for new messages",
        "checking the store for new messages again",
        id="watcher",
    ),
    pytest.param(
        lambda follows: LayerTransport(follows, InMemoryChannelLayer()),
        "channel layer unreachable",
        "channel layer reachable again",
        id="layer",
    ),
    pytest.param(
        NotifyTransport,
        "PostgreSQL LISTEN connection lost",
        "PostgreSQL LISTEN connection back",
        id="postgres",
    ),
]


@pytest.mark.parametrize(("make", "lost", "back"), TRANSPORTS)
async def test_an_outage_is_logged_once_and_counted(
    make: Callable[[Follows], Transport], lost: str, back: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = make(registry())
    with caplog.at_level(logging.DEBUG, logger="longpoll_app"):
        transport.recovered()  # nothing was lost: nothing to say
        assert app_log(caplog, logging.WARNING) == []
        for n in range(3):
            transport.failed(ConnectionError(f"refused {n}"))
        assert transport.outage and transport.state() == {"outage": 1, "outages": 1}
        [error] = app_log(caplog, logging.ERROR)
        assert error.startswith(f"longpoll: {lost}") and "refused 0" in error  # the first cause
        transport.recovered()
        transport.recovered()
        assert app_log(caplog, logging.WARNING) == [f"longpoll: {back}"]
        assert transport.state() == {"outage": 0, "outages": 1}
        transport.failed(ConnectionError("refused again"))
    assert transport.state() == {"outage": 1, "outages": 2}  # a second outage, logged again
    assert len(app_log(caplog, logging.ERROR)) == 2


@pytest.mark.parametrize(
    "make",
    [lambda follows: LayerTransport(follows, InMemoryChannelLayer()), NotifyTransport],
    ids=["layer", "postgres"],
)
async def test_a_lost_transport_answers_held_polls_and_a_recovered_one_again(
    make: Callable[[Follows], Transport],
) -> None:
    """The behaviour the layer and PostgreSQL transports share (base.py): what
    the hub knew may be stale, so held polls read the store, at once and again
    when wake-ups arrive once more."""
    follows = registry()
    transport = make(follows)
    transport.recovered()
    follow = attached(follows, KEY, 7, covered=True)
    assert transport.is_trusted(follow)
    held = follows.wait(follow, 5.0)
    transport.failed(ConnectionError("gone"))
    assert await asyncio.wait_for(held, 1.0) is True
    assert transport.since == INF and not transport.is_trusted(follow)
    during = follows.wait(follow, 5.0)
    before = transport.loop.time()
    transport.recovered()
    assert await asyncio.wait_for(during, 1.0) is True
    assert before <= transport.since <= transport.loop.time() and transport.is_ready()


# -- choosing the transport (LONGPOLL_TRANSPORT) ----------------------------------------------


@pytest.mark.parametrize(
    ("setting", "shared_layer", "vendor", "kind"),
    [
        ("auto", True, "postgresql", "layer"),
        ("auto", True, "sqlite", "layer"),
        ("auto", False, "postgresql", "postgres"),
        ("auto", False, "sqlite", "watcher"),
        ("layer", True, "sqlite", "layer"),
        ("postgres", True, "postgresql", "postgres"),  # Redis configured, yet not used
        ("watcher", True, "postgresql", "watcher"),
        # What the system checks refuse (E005, E120) falls back to what always works.
        ("layer", False, "postgresql", "watcher"),
        ("postgres", False, "sqlite", "watcher"),
        ("redis", False, "postgresql", "postgres"),
    ],
)
def test_the_transport_follows_the_setting_and_the_setup(
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    shared_layer: bool,
    vendor: str,
    kind: str,
) -> None:
    from django.db import connection

    settings.LONGPOLL_TRANSPORT = setting
    monkeypatch.setattr(connection, "vendor", vendor)
    assert chosen(shared_layer) == kind


async def test_a_hub_gets_the_chosen_transport(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    follows = registry()
    assert isinstance(make_transport(follows, InMemoryChannelLayer()), LayerTransport)
    settings.LONGPOLL_TRANSPORT = "watcher"
    assert isinstance(make_transport(follows, None), StoreWatcher)
    assert "cannot work" not in caplog.text
    settings.LONGPOLL_TRANSPORT = "postgres"
    from django.db import connection

    if connection.vendor == "postgresql":
        assert isinstance(make_transport(follows, None), NotifyTransport)
    else:
        with caplog.at_level(logging.ERROR, logger="longpoll_app"):
            assert isinstance(make_transport(follows, None), StoreWatcher)
        [error] = app_log(caplog, logging.ERROR)
        assert "LONGPOLL_TRANSPORT 'postgres' cannot work here" in error


def test_orders_travel_as_compact_json_and_anything_else_is_no_order() -> None:
    order = {"type": END, "pk": 7}
    assert encode(order) == '{"type":"longpoll.end","pk":7}'
    assert decode(encode(order)) == order
    assert decode("not json") is None and decode("[1]") is None and decode('"x"') is None


def test_the_listen_connection_is_made_as_django_connects() -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("Django's database is not PostgreSQL (set DATABASE_URL)")
    params = notify_params()
    assert params["dbname"] == connection.settings_dict["NAME"]  # the test database
    assert "cursor_factory" not in params and "pool" not in params  # Django's own
    assert params["connect_timeout"] == 5 and params["keepalives"] == 1


# -- watcher ------------------------------------------------------------------------------


async def test_with_nothing_followed_the_watcher_trusts_nothing_and_asks_nothing(
    settings: Any,
) -> None:
    # No database here: a query would fail (pytest-django refuses it) and count as an outage.
    settings.LONGPOLL_WATCH_INTERVAL = WATCH_INTERVAL
    watcher = StoreWatcher(registry())
    assert watcher.covers_all  # every session's wake-ups come without subscribing
    async with running(watcher):
        await asyncio.wait_for(watcher.ready(), 2.0)
        await asyncio.sleep(3 * WATCH_INTERVAL)
        assert watcher.since == INF
        assert not watcher.outage


async def test_the_watcher_wakes_follows_for_messages_queued_after_its_watermark(
    transactional_db: None, settings: Any
) -> None:
    settings.LONGPOLL_WATCH_INTERVAL = WATCH_INTERVAL
    key, stranger = await sync_to_async(new_session_key)(), await sync_to_async(new_session_key)()
    old = await sync_to_async(queue.append)(key, "old", 1)  # before the watcher looked
    follows = registry()
    watcher = StoreWatcher(follows)
    # Read before message 1, on purpose: the watermark leaves older messages to
    # the poll's own read, which ``since`` tells apart.
    follow = attached(follows, key, old.session_pk, covered=watcher.covers_all)
    woken = follows.wait(follow, 5.0)
    began = follows.loop.time()
    async with running(watcher):
        await until(lambda: math.isfinite(watcher.since))
        assert began <= watcher.since <= follows.loop.time()
        assert not watcher.is_trusted(follow)  # read before the watcher watched
        await asyncio.sleep(3 * WATCH_INTERVAL)
        assert not woken.done() and follow.last_id == 0  # message 1 is not the watcher's
        await sync_to_async(queue.append)(stranger, "other", None)  # nobody here follows it
        new = await sync_to_async(queue.append)(key, "new", 2)
        assert await asyncio.wait_for(woken, 2.0) is True
        assert follow.last_id == new.seq == 2
        # Nothing followed any more: no watermark, no trust, no queries.
        follows.remove(follow)
        await until(lambda: watcher.since == INF)
        # Followed again: a new watermark, from a later moment.
        before = follows.loop.time()
        attached(follows, key, old.session_pk, covered=True, last_id=2)
        await until(lambda: math.isfinite(watcher.since))
        assert watcher.since >= before


async def test_a_failing_look_keeps_the_watermark(
    transactional_db: None,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.LONGPOLL_WATCH_INTERVAL = WATCH_INTERVAL
    key = await sync_to_async(new_session_key)()
    pk = (await sync_to_async(sessions.ensure_session_row)(key)).pk
    real = queue.messages_since
    looked: list[tuple[int, bool]] = []  # (watermark asked after, whether the look failed)
    down = False

    def look(watermark: int) -> list[tuple[int, int, int]]:
        looked.append((watermark, down))
        if down:
            raise OperationalError("database is locked")
        return real(watermark)

    monkeypatch.setattr(queue, "messages_since", look)
    follows = registry()
    watcher = StoreWatcher(follows)
    follow = attached(follows, key, pk, covered=True)
    woken = follows.wait(follow, 5.0)
    with caplog.at_level(logging.WARNING, logger="longpoll_app"):
        async with running(watcher):
            await until(lambda: len(looked) >= 2)
            watermark, since = looked[-1][0], watcher.since
            down = True
            await until(lambda: sum(failed for _, failed in looked) >= 3)
            # Queued by "another process" while the looks fail: straight into the store.
            queued = await sync_to_async(queue.append)(key, "late", 1)
            await asyncio.sleep(3 * WATCH_INTERVAL)
            assert not woken.done()  # delayed...
            assert watcher.outage and watcher.since == since  # ...not lost: trust stays
            down = False
            assert await asyncio.wait_for(woken, 2.0) is True
            assert follow.last_id == queued.seq
    # The failed looks, and the good one after them, asked from where the last
    # good one before them left off.
    assert all(w == watermark for w, failed in looked if failed)
    last_failure = max(i for i, (_, failed) in enumerate(looked) if failed)
    assert looked[last_failure + 1] == (watermark, False)  # the look that found the message
    assert not watcher.outage and watcher.outages == 1
    assert caplog.text.count("cannot check the store for new messages") == 1
    assert caplog.text.count("checking the store for new messages again") == 1


async def test_a_watcher_that_cannot_take_its_watermark_trusts_nothing(
    transactional_db: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.LONGPOLL_WATCH_INTERVAL = WATCH_INTERVAL
    newest = queue.newest_message_pk
    failing = True

    def watermark() -> int:
        if failing:
            raise OperationalError("could not connect to server")
        return newest()

    monkeypatch.setattr(queue, "newest_message_pk", watermark)
    follows = registry()
    watcher = StoreWatcher(follows)
    follow = attached(follows, KEY, 7, covered=True)
    async with running(watcher):
        # Ready all the same: polls read the store rather than wait for the watcher.
        await asyncio.wait_for(watcher.ready(), 2.0)
        await asyncio.sleep(2 * WATCH_INTERVAL)
        assert watcher.outage and watcher.since == INF and not watcher.is_trusted(follow)
        failing = False
        await until(lambda: math.isfinite(watcher.since))
        assert not watcher.outage


async def test_trust_needs_the_watcher(transactional_db: None, settings: Any) -> None:
    settings.LONGPOLL_TRANSPORT = "watcher"  # the default picks PostgreSQL's on PostgreSQL
    hub = current_hub()
    await hub.ready()
    follow = await followed(hub)
    assert not hub.is_trusted(follow)  # read before the watcher watched anything
    await asyncio.sleep(0.15)
    hub.attach(follow, SessionRecord(pk=7, last_id=0, acked_id=0), hub.loop.time())
    assert hub.is_trusted(follow)
    hub.transport.since = math.inf  # the watcher failed: what the hub knows may be stale
    assert not hub.is_trusted(follow)


async def test_a_failing_watcher_keeps_its_place_and_loses_no_wake_up(
    browser: Browser, settings: Any, monkeypatch: Any, caplog: Any
) -> None:
    """A busy SQLite ("database is locked") only delays wake-ups from other processes."""
    from django.db import OperationalError

    from longpoll_app import queue

    settings.LONGPOLL_TRANSPORT = "watcher"  # the default picks PostgreSQL's on PostgreSQL
    settings.LONGPOLL_TIMEOUT = 3.0
    assert (await browser.poll(None)).status == 204
    await asyncio.sleep(0.2)  # the watcher has its watermark
    held = browser.start({"cursor": 0})
    assert not await held.answered_within(0.2)
    messages_since = queue.messages_since

    failures = []

    def locked(*args: Any) -> Any:
        failures.append(args)
        raise OperationalError("database is locked")

    monkeypatch.setattr(queue, "messages_since", locked)
    # A check that began before the patch would still find the message and wake the
    # poll early (seen on PostgreSQL): queue it only once the checks fail.
    for _ in range(100):
        if failures:
            break
        await asyncio.sleep(0.02)
    assert failures
    # Queued by "another process": straight into the store, no local wake-up.
    queued = await sync_to_async(queue.append)(browser.session_key, "late", 1)
    assert not await held.answered_within(0.3)
    monkeypatch.setattr(queue, "messages_since", messages_since)
    reply = await held.response(2.0)
    assert reply.json()["messages"] == [{"id": queued.seq, "type": "late", "data": 1}]
    assert "cannot check the store" in caplog.text


# -- channel layer --------------------------------------------------------------------------


def counted(calls: list[tuple[str, str]], method: Any) -> Callable[[str, str], Any]:
    async def call(group: str, channel: str) -> None:
        calls.append((group, channel))
        await method(group, channel)

    return call


async def test_the_layer_transport_starts_by_asking_the_layer() -> None:
    layer = InMemoryChannelLayer()
    discarded: list[tuple[str, str]] = []
    layer.group_discard = counted(discarded, layer.group_discard)
    transport = LayerTransport(registry(), layer)
    assert not transport.covers_all and transport.channel_name is None
    began = transport.loop.time()
    async with running(transport):
        await asyncio.wait_for(transport.ready(), 2.0)
        assert transport.channel_name is not None
        # A round trip to the server before wake-ups are said to arrive.
        assert discarded == [(PROBE_GROUP, transport.channel_name)]
        assert began <= transport.since <= transport.loop.time() and not transport.outage


async def test_subscribe_joins_the_group_once_and_again_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    layer = InMemoryChannelLayer()
    added: list[tuple[str, str]] = []
    layer.group_add = counted(added, layer.group_add)
    follows = registry()
    transport = LayerTransport(follows, layer)
    follow = attached(follows, KEY, 7, covered=transport.covers_all)
    assert not transport.must_subscribe(follow)  # no channel yet: nothing to join with
    await transport.subscribe(follow)
    assert added == [] and follow.subscribed_at == INF
    async with running(transport):
        await asyncio.wait_for(transport.ready(), 2.0)
        assert transport.must_subscribe(follow)
        began = transport.loop.time()
        await transport.subscribe(follow)
        assert added == [(follow.group, transport.channel_name)]
        assert began <= follow.subscribed_at <= transport.loop.time()
        assert not transport.must_subscribe(follow)
        await transport.subscribe(follow)  # an idle re-poll: no round trip
        assert len(added) == 1
        # channels-redis forgets a group membership after its group_expiry: join again.
        monkeypatch.setattr(layer_transport, "RESUBSCRIBE_AFTER", 0.05)
        await asyncio.sleep(0.06)
        assert transport.must_subscribe(follow)
        first = follow.subscribed_at
        await transport.subscribe(follow)
        assert len(added) == 2 and follow.subscribed_at > first


async def test_a_failed_join_leaves_the_follow_untrusted_without_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = InMemoryChannelLayer()

    async def refuse(group: str, channel: str) -> None:
        raise ConnectionError("Too many connections")

    follows = registry()
    transport = LayerTransport(follows, layer)
    follow = attached(follows, KEY, 7, covered=False)
    async with running(transport):
        await asyncio.wait_for(transport.ready(), 2.0)
        layer.group_add = refuse
        with caplog.at_level(logging.DEBUG, logger="longpoll_app"):
            await transport.subscribe(follow)
        assert follow.subscribed_at == INF and not transport.is_trusted(follow)
        assert not transport.outage  # the receive loop says whether the layer is down
        assert transport.must_subscribe(follow)  # the next poll tries again
        assert "could not join" in caplog.text


async def test_joins_in_flight_are_bounded() -> None:
    layer = InMemoryChannelLayer()
    release = asyncio.Event()
    in_flight, most = 0, 0

    async def slow_join(group: str, channel: str) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await release.wait()
        in_flight -= 1

    follows = registry()
    transport = LayerTransport(follows, layer)
    many = [
        attached(follows, f"{n:032d}", n + 1, covered=False) for n in range(3 * LAYER_CONCURRENCY)
    ]
    async with running(transport):
        await asyncio.wait_for(transport.ready(), 2.0)
        layer.group_add = slow_join
        joins = asyncio.gather(*(transport.subscribe(f) for f in many))
        await asyncio.sleep(0.05)
        assert most == LAYER_CONCURRENCY  # a thousand browsers must not open a thousand sockets
        release.set()
        await joins
    assert all(math.isfinite(f.subscribed_at) for f in many)


async def test_orders_sent_to_the_group_reach_the_follows_through_run() -> None:
    layer = InMemoryChannelLayer()
    follows = registry()
    transport = LayerTransport(follows, layer)
    follow = attached(follows, KEY, 7, covered=False)
    async with running(transport):
        await asyncio.wait_for(transport.ready(), 2.0)
        await transport.subscribe(follow)
        assert transport.is_trusted(follow) is False  # read before it joined
        woken = follows.wait(follow, 5.0)
        # As api.wake sends it from another process.
        await layer.group_send(follow.group, {"type": WAKE, "pk": 7, "last_id": 3})
        assert await asyncio.wait_for(woken, 2.0) is True
        assert follow.last_id == 3
        ended = follows.wait(follow, 5.0)
        await layer.group_send(follow.group, {"type": END, "pk": 7})
        assert await asyncio.wait_for(ended, 2.0) is True
        assert follow.ended and KEY not in follows


async def test_failed_answers_held_polls_and_distrusts_everything() -> None:
    layer = InMemoryChannelLayer()
    follows = registry()
    transport = LayerTransport(follows, layer)
    follow = attached(follows, KEY, 7, covered=False)
    async with running(transport):
        await asyncio.wait_for(transport.ready(), 2.0)
        await transport.subscribe(follow)
        follows.attach(follow, SessionRecord(pk=7, last_id=0, acked_id=0), transport.loop.time())
        assert transport.is_trusted(follow)
        held = follows.wait(follow, 5.0)
        transport.failed(ConnectionError("Redis went away"))
        assert await asyncio.wait_for(held, 1.0) is True  # answered now: re-poll from the store
        assert transport.since == INF and follow.subscribed_at == INF
        assert not transport.is_trusted(follow)
        # Even once the layer works again, until the follow has joined again.
        transport.recovered()
        follows.attach(follow, SessionRecord(pk=7, last_id=0, acked_id=0), transport.loop.time())
        assert not transport.is_trusted(follow) and transport.must_subscribe(follow)


async def test_recovered_resets_subscriptions_and_wakes_held_polls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    layer = InMemoryChannelLayer()
    follows = registry()
    transport = LayerTransport(follows, layer)
    follow = attached(follows, KEY, 7, covered=False)
    async with running(transport):
        await asyncio.wait_for(transport.ready(), 2.0)
        await transport.subscribe(follow)
        transport.outage = True  # as after an outage the receive loop saw
        held = follows.wait(follow, 5.0)
        began = transport.loop.time()
        with caplog.at_level(logging.WARNING, logger="longpoll_app"):
            transport.recovered()
        # A restarted Redis forgot the groups: every follow joins again.
        assert follow.subscribed_at == INF and transport.must_subscribe(follow)
        assert await asyncio.wait_for(held, 1.0) is True
        assert transport.since >= began and transport.is_ready()
        assert caplog.text.count("channel layer reachable again") == 1


async def test_the_receive_loop_survives_an_outage(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(layer_transport, "RETRY_DELAYS", (0.01,))
    layer = InMemoryChannelLayer()
    real_new_channel, real_receive = layer.new_channel, layer.receive
    refusals = {"new_channel": 1, "receive": 0}

    async def new_channel(prefix: str = "specific.") -> str:
        if refusals["new_channel"]:
            refusals["new_channel"] -= 1
            raise ConnectionError("Connection refused")
        return await real_new_channel(prefix)

    async def receive(channel: str) -> dict[str, Any]:
        if refusals["receive"]:
            refusals["receive"] -= 1
            raise ConnectionError("Connection reset by peer")
        return await real_receive(channel)

    layer.new_channel = new_channel
    layer.receive = receive
    follows = registry()
    transport = LayerTransport(follows, layer)
    follow = attached(follows, KEY, 7, covered=False)
    with caplog.at_level(logging.WARNING, logger="longpoll_app"):
        async with running(transport):
            # Ready at the first failure: polls read the store meanwhile.
            await asyncio.wait_for(transport.ready(), 2.0)
            await until(lambda: transport.channel_name is not None)
            assert not transport.outage and transport.outages == 1
            await transport.subscribe(follow)
            first = transport.channel_name
            # The connection drops while receiving: a new channel, joined afresh.
            refusals["receive"] = 1
            await layer.group_send(follow.group, {"type": WAKE, "pk": 7, "last_id": 1})
            await until(lambda: transport.outages == 2 and not transport.outage)
            await until(lambda: transport.channel_name is not None)
            assert transport.channel_name != first
            assert transport.must_subscribe(follow)
            await transport.subscribe(follow)
            woken = follows.wait(follow, 5.0)
            await layer.group_send(follow.group, {"type": WAKE, "pk": 7, "last_id": 2})
            assert await asyncio.wait_for(woken, 2.0) is True
    assert caplog.text.count("channel layer unreachable") == 2
    assert caplog.text.count("channel layer reachable again") == 2


async def test_unsubscribe_leaves_the_group_and_a_failure_is_an_outage() -> None:
    layer = InMemoryChannelLayer()
    discarded: list[tuple[str, str]] = []
    follows = registry()
    transport = LayerTransport(follows, layer)
    follow = attached(follows, KEY, 7, covered=False)
    await transport.unsubscribe(follow)  # no channel: nothing to leave
    async with running(transport):
        await asyncio.wait_for(transport.ready(), 2.0)
        layer.group_discard = counted(discarded, layer.group_discard)
        await transport.subscribe(follow)
        await transport.unsubscribe(follow)
        assert discarded == [(follow.group, transport.channel_name)]

        async def refuse(group: str, channel: str) -> None:
            raise ConnectionError("Connection refused")

        layer.group_discard = refuse
        await transport.unsubscribe(follow)
        assert transport.outage and transport.since == INF


async def test_layer_outage_is_logged_once_and_releases_held_polls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = current_hub()
    follow = await followed(hub)
    waiting = asyncio.ensure_future(hub.wait(follow, 5.0))
    await asyncio.sleep(0)
    transport = LayerTransport(hub.follows, InMemoryChannelLayer())  # as the hub's, were it shared
    with caplog.at_level(logging.ERROR, logger="longpoll_app"):
        for _ in range(3):
            transport.failed(ConnectionError("Redis went away"))
    assert await asyncio.wait_for(waiting, 1.0) is True  # answered, to re-poll from the store
    assert not transport.is_trusted(follow)
    assert caplog.text.count("channel layer unreachable") == 1


@pytest.mark.parametrize(
    ("host", "listen"),
    [
        # As a project copies it: redis-py 8 times reads out after 5 s, as long
        # as channels-redis's own blocking receive.
        (REDIS_URL, 6.0),
        (f"{REDIS_URL}?socket_timeout=1", 2.5),
        ({"address": REDIS_URL, "socket_timeout": 15}, 6.0),
    ],
    ids=["plain-url", "url-timeout-1s", "dict-timeout-15s"],
)
async def test_wake_from_another_process_arrives_through_redis(
    settings: Any, caplog: pytest.LogCaptureFixture, host: Any, listen: float
) -> None:
    use_redis_layer(settings, host)
    try:
        hub = current_hub()
        await hub.ready()
        follow = await followed(hub)
        assert hub.is_trusted(follow)
        waiting = asyncio.ensure_future(hub.wait(follow, 10.0))
        # Past every socket timeout and blocking receive: the hub must still be
        # listening, with no outage logged.
        await asyncio.sleep(listen)
        layer = hub.transport.layer  # type: ignore[attr-defined]
        await layer.group_send(follow.group, {"type": "longpoll.wake", "pk": 7, "last_id": 3})
        assert await asyncio.wait_for(waiting, 2.0) is True
        assert follow.last_id == 3
        assert "unreachable" not in caplog.text
    finally:
        flush_redis()


@pytest.mark.parametrize(("setting", "kind"), [("auto", "watcher"), ("postgres", "watcher")])
def test_without_psycopg_3_postgresql_is_watched_not_listened_to(
    settings: Any, monkeypatch: pytest.MonkeyPatch, setting: str, kind: str
) -> None:
    """Django also runs on psycopg2, and the [postgres] extra is optional."""
    from django.db import connection

    from longpoll_app import transports

    settings.LONGPOLL_TRANSPORT = setting
    monkeypatch.setattr(connection, "vendor", "postgresql")
    monkeypatch.setattr(transports, "_has_psycopg", lambda: False)
    assert chosen(False) == kind


def test_the_app_imports_without_psycopg() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"  # an import of it raises ImportError
        "import django; django.setup()\n"
        "import longpoll_app.hub, longpoll_app.api, longpoll_app.transports.notify\n"
        "print('ok')"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env.pop("DATABASE_URL", None)  # SQLite: the settings must not need psycopg themselves
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.stdout.split() == ["ok"], result.stderr
