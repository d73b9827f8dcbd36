"""Wake-ups through PostgreSQL alone (``transports/notify.py`` and the NOTIFY
side of ``api``), against the real test database.

They need Django's database to be PostgreSQL: run them with ``DATABASE_URL``
(tests/test_postgres.py runs the whole suite so). The transport must LISTEN on
the very database the sends NOTIFY on, which under pytest-django is the test
database (``test_<name>``), not the one DATABASE_URL names.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection, transaction

from longpoll_app import api, outbox, queue, sessions
from longpoll_app.follows import RELEASE, WAKE, Follows
from longpoll_app.runtime import current_hub
from longpoll_app.transports import notify, orders
from longpoll_app.transports.notify import NotifyTransport
from longpoll_app.transports.orders import CHANNEL

from .conftest import new_session_key
from .test_transports import app_log, attached, registry, until

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs Django's database on PostgreSQL: set DATABASE_URL "
    "(tests/test_postgres.py runs the suite so)",
)

LISTEN_TIMEOUT = 5.0  # seconds a transport may take to LISTEN
WOKEN_WITHIN = 2.0  # seconds: a NOTIFY arrives in milliseconds; a hold lasts far longer
QUIET = 0.3  # seconds in which a wake-up that should not come would have come


@pytest.fixture(autouse=True)
def _postgres_transport(transactional_db: None, settings: Any) -> Iterator[None]:
    # The default ("auto") picks it with no shared layer on PostgreSQL; said
    # outright so that a change of the default does not silently test another.
    settings.LONGPOLL_TRANSPORT = "postgres"
    outbox._failing = False
    yield
    outbox._failing = False


@asynccontextmanager
async def listening(follows: Follows) -> AsyncIterator[NotifyTransport]:
    transport = NotifyTransport(follows)
    task = asyncio.ensure_future(transport.run())
    try:
        await asyncio.wait_for(transport.ready(), LISTEN_TIMEOUT)
        assert math.isfinite(transport.since), "LISTEN failed"
        yield transport
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert transport.connection is None  # closed on the way out


def pg_notify(payload: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


def terminate(pid: int) -> None:
    """Kill a backend from another connection, as an administrator or a
    failover would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


async def session() -> tuple[str, int]:
    key = await sync_to_async(new_session_key)()
    pk = (await sync_to_async(sessions.ensure_session_row)(key)).pk
    return key, pk


async def test_two_hubs_on_the_test_database_both_hear_a_send() -> None:
    key, pk = await session()
    first, second = registry(), registry()
    async with listening(first) as one, listening(second) as two:
        # On the database Django uses under the test run, not the one DATABASE_URL names.
        test_name = connection.settings_dict["NAME"]
        assert test_name.startswith("test_")
        assert one.connection is not None and two.connection is not None
        assert one.connection.info.dbname == two.connection.info.dbname == test_name
        assert one.covers_all and one.name == "postgres"
        follows = [attached(r, key, pk, covered=True) for r in (first, second)]
        assert all(one.is_trusted(f) for f in follows[:1])  # read after LISTEN worked
        waiters = [r.wait(f, 10.0) for r, f in zip((first, second), follows, strict=True)]
        seq = await sync_to_async(api.send_to_session)(key, "hello", {"n": 1})
        done = await asyncio.wait_for(asyncio.gather(*waiters), WOKEN_WITHIN)
        assert done == [True, True]
        assert [f.last_id for f in follows] == [seq, seq] == [1, 1]


async def test_a_rolled_back_send_wakes_nobody_and_a_committed_one_does() -> None:
    key, pk = await session()
    follows = registry()
    async with listening(follows):
        follow = attached(follows, key, pk, covered=True)
        woken = follows.wait(follow, 10.0)

        def rolled_back() -> None:
            with transaction.atomic():
                api.send_to_session(key, "never", 1)
                pg_notify(orders.encode({"type": WAKE, "pk": pk, "last_id": 99}))
                transaction.set_rollback(True)

        def committed() -> int:
            with transaction.atomic():
                seq = api.send_to_session(key, "kept", 2)
                assert not woken.done()  # inside the transaction: not yet
                return seq

        await sync_to_async(rolled_back)()
        await asyncio.sleep(QUIET)
        assert not woken.done() and follow.last_id == 0
        seq = await sync_to_async(committed)()
        assert await asyncio.wait_for(woken, WOKEN_WITHIN) is True
        assert follow.last_id == seq == 1  # the rolled-back message took no id


async def test_an_end_inside_a_transaction_is_told_at_its_commit_only() -> None:
    key, pk = await session()
    follows = registry()
    async with listening(follows):
        follow = attached(follows, key, pk, covered=True)
        held = follows.wait(follow, 10.0)

        def ended_then_rolled_back() -> None:
            with transaction.atomic():
                api.end_session(key)
                transaction.set_rollback(True)

        await sync_to_async(ended_then_rolled_back)()
        await asyncio.sleep(QUIET)
        assert not held.done() and not follow.ended
        await sync_to_async(transaction.atomic()(api.end_session))(key)
        assert await asyncio.wait_for(held, WOKEN_WITHIN) is True
        assert follow.ended and key not in follows


async def test_a_killed_listen_connection_is_one_outage_then_wake_ups_flow_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, pk = await session()
    follows = registry()
    real_params = notify.connection_params
    refused = 0

    def unreachable(alias: str = "default") -> dict[str, Any]:
        nonlocal refused
        refused += 1
        return {**real_params(alias), "port": 1}  # nothing listens there: refused at once

    with caplog.at_level(logging.INFO, logger="longpoll_app"):
        async with listening(follows) as transport:
            follow = attached(follows, key, pk, covered=True)
            assert transport.is_trusted(follow)
            held = follows.wait(follow, 10.0)
            assert transport.connection is not None
            pid = transport.connection.info.backend_pid
            monkeypatch.setattr(notify, "connection_params", unreachable)
            await sync_to_async(terminate)(pid)
            # The held poll answers at once, to read the store; nothing is trusted.
            assert await asyncio.wait_for(held, WOKEN_WITHIN) is True
            assert transport.outage and transport.since == math.inf
            assert not transport.is_trusted(follow)
            await until(lambda: refused >= 2)  # retried with backoff: 0.5 s, then 1 s
            during = follows.wait(follow, 10.0)  # a poll held while no wake-up can arrive
            # Queued meanwhile: its NOTIFY reaches nobody, and the store keeps it.
            missed = await sync_to_async(queue.append)(key, "meanwhile", 1)
            monkeypatch.setattr(notify, "connection_params", real_params)
            await until(lambda: not transport.outage, timeout=10.0)
            # Back: the poll held during the outage reads the store again.
            assert await asyncio.wait_for(during, WOKEN_WITHIN) is True
            assert math.isfinite(transport.since) and transport.connection is not None
            assert transport.connection.info.backend_pid != pid
            follows.saw(follow, missed.seq, transport.loop.time())  # as the poll's read does
            assert transport.is_trusted(follow)
            again = follows.wait(follow, 10.0)
            seq = await sync_to_async(api.send_to_session)(key, "after", 2)
            assert await asyncio.wait_for(again, WOKEN_WITHIN) is True
            assert follow.last_id == seq == 2
    assert transport.outages == 1
    [lost] = app_log(caplog, logging.ERROR)  # once, for the drop and the refused retries
    assert lost.startswith("longpoll: PostgreSQL LISTEN connection lost")
    assert app_log(caplog, logging.WARNING) == ["longpoll: PostgreSQL LISTEN connection back"]
    assert app_log(caplog, logging.INFO) == [
        f"longpoll: wake-ups through PostgreSQL LISTEN/NOTIFY ({CHANNEL})"  # once per hub
    ]


async def test_a_transport_that_cannot_listen_is_ready_and_trusts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_params = notify.connection_params
    monkeypatch.setattr(notify, "connection_params", lambda alias: {**real_params(), "port": 1})
    follows = registry()
    transport = NotifyTransport(follows)
    task = asyncio.ensure_future(transport.run())
    try:
        # Ready all the same: polls read the store rather than wait for LISTEN.
        await asyncio.wait_for(transport.ready(), LISTEN_TIMEOUT)
        assert transport.outage and transport.since == math.inf
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_notifications_that_are_no_orders_of_ours_are_ignored() -> None:
    key, pk = await session()
    follows = registry()
    async with listening(follows) as transport:
        follow = attached(follows, key, pk, covered=True)
        woken = follows.wait(follow, 10.0)
        for payload in (
            "not json",
            "[1, 2]",
            '{"type": "longpoll.wake"}',
            '{"type": "longpoll.wake", "pk": "seven", "last_id": 1}',
            '{"type": "something.else", "pk": 1}',
        ):
            await sync_to_async(pg_notify)(payload)
        await asyncio.sleep(QUIET)
        assert not woken.done() and not transport.outage
        await sync_to_async(pg_notify)(orders.encode({"type": WAKE, "pk": pk, "last_id": 4}))
        assert await asyncio.wait_for(woken, WOKEN_WITHIN) is True
        assert follow.last_id == 4


async def test_a_failing_notify_never_fails_the_send(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, pk = await session()
    monkeypatch.setattr(api, "NOTIFY_SQL", "SELECT no_such_function(%s, %s)")
    with caplog.at_level(logging.DEBUG, logger="longpoll_app"):
        first = await sync_to_async(api.send_to_session)(key, "a", 1)
        second = await sync_to_async(api.send_to_session)(key, "b", 2)
    assert (first, second) == (1, 2)
    batch = await sync_to_async(queue.read)(pk, key, None, 10, None)
    assert batch is not None and [m["data"] for m in batch.messages] == [1, 2]
    warned = [m for m in app_log(caplog, logging.WARNING) if "could not wake" in m]
    assert len(warned) == 1 and "PostgreSQL NOTIFY" in warned[0]  # once for the outage
    monkeypatch.undo()
    assert await sync_to_async(api._notify_now)({"type": WAKE, "pk": pk, "last_id": 2})
    assert not outbox._failing  # it works again: the next failure is logged again


async def test_a_running_hub_carries_an_order_out_once_and_a_wake_idempotently() -> None:
    key, pk = await session()
    hub = current_hub()
    await hub.ready()
    assert isinstance(hub.transport, NotifyTransport)
    follow = hub.follow(key)
    hub.attach(follow, sessions.SessionRecord(pk=pk, last_id=0, acked_id=0), hub.loop.time())
    carried: list[str] = []
    dispatch = hub.follows.dispatch

    def counting(order: dict[str, Any]) -> None:
        carried.append(order["type"])
        dispatch(order)

    hub.follows.dispatch = counting  # type: ignore[method-assign]
    held = hub.wait(follow, 10.0)
    await sync_to_async(api.release_polls)(pk, key)
    assert await asyncio.wait_for(held, WOKEN_WITHIN) is False  # released: answered empty
    await asyncio.sleep(QUIET)
    # Through NOTIFY only, which reaches this process's hub too: a second copy
    # would hit the poll the browser makes in answer to the first.
    assert carried == [RELEASE]
    woken = hub.wait(follow, 10.0)
    await sync_to_async(api.send_to_session)(key, "m", 1)
    assert await asyncio.wait_for(woken, WOKEN_WITHIN) is True
    await until(lambda: carried.count(WAKE) == 2)  # told directly, and heard through NOTIFY
    assert follow.last_id == 1
