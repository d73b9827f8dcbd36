"""Retention: longpoll_purge and the automatic clean-up remove what is no
longer needed, in bounded batches that go through indexes."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from longpoll_app import counters, queue, reports, retention, send_to_session, sessions
from longpoll_app.models import ClientMessage, HeldSession, HubReport, LongpollSession, Message

from .conftest import Browser, new_session_key

LONG_AGO = timedelta(days=2)


def age(queryset: Any, field: str = "created_at", by: timedelta = LONG_AGO) -> None:
    queryset.update(**{field: timezone.now() - by})


def purge(*args: str) -> str:
    out = StringIO()
    call_command("longpoll_purge", *args, stdout=out)
    return out.getvalue()


def test_expired_messages_go_and_fresh_ones_stay(transactional_db: None) -> None:
    key = new_session_key()
    for n in range(5):
        send_to_session(key, "m", n)
    age(Message.objects.filter(data__in=[0, 1, 2]))
    assert "Removed 3 expired message(s)" in purge()
    assert sorted(Message.objects.values_list("seq", flat=True)) == [4, 5]
    assert counters.counters()[counters.EXPIRED] == 3


def test_acknowledged_leftovers_go(transactional_db: None) -> None:
    key = new_session_key()
    queued = [queue.append(key, "m", n) for n in range(3)]
    pk = queued[0].session_pk
    LongpollSession.objects.filter(pk=pk).update(acked_id=2)  # acknowledged, rows still there
    removed, after = retention.purge_acknowledged(0, 100)
    assert (removed, after) == (2, None)
    assert list(Message.objects.values_list("seq", flat=True)) == [3]


def test_old_client_message_ids_are_forgotten(transactional_db: None) -> None:
    key = new_session_key()
    row = sessions.ensure_session_row(key)
    for client_id in ("a", "b", "c"):
        queue.record_client_message(row.pk, client_id)
    age(ClientMessage.objects.filter(client_id__in=["a", "b"]), "received_at")
    assert "2 client message id(s)" in purge()
    assert list(ClientMessage.objects.values_list("client_id", flat=True)) == ["c"]


def test_records_of_ended_and_expired_sessions_go(transactional_db: None) -> None:
    expired, raw_deleted, extended, live = (new_session_key() for _ in range(4))
    for key in (expired, raw_deleted, extended, live):
        send_to_session(key, "m", key[:4])
    Session.objects.filter(session_key=expired).update(expire_date=timezone.now() - LONG_AGO)
    LongpollSession.objects.filter(session_key=expired).update(expires_at=timezone.now() - LONG_AGO)
    # Deleted without the post_delete signal (a raw delete, as some tools do).
    Session.objects.filter(session_key=raw_deleted)._raw_delete(Session.objects.db)
    # The record's expiry is stale, but the session was extended since.
    LongpollSession.objects.filter(session_key=extended).update(
        expires_at=timezone.now() - LONG_AGO
    )

    assert "2 stale session record(s)" in purge()

    left = set(LongpollSession.objects.values_list("session_key", flat=True))
    assert left == {extended, live}
    row = LongpollSession.objects.get(session_key=extended)
    assert row.expires_at == Session.objects.get(session_key=extended).expire_date
    counts = counters.counters()
    assert counts[counters.DISCARDED] == 2 and counts[counters.SENT] == 2  # kept for the stats


def test_reports_of_stopped_processes_go(transactional_db: None) -> None:
    now = timezone.now()
    reports.write_report("gone:1:1", "gone:1", now, 0, 0, {}, {1, 2}, None)
    reports.write_report("here:2:1", "here:2", now, 0, 0, {}, {3}, None)
    HubReport.objects.filter(name="gone:1:1").update(updated_at=now - timedelta(hours=2))
    assert "1 stale process report(s)" in purge()
    assert list(HubReport.objects.values_list("name", flat=True)) == ["here:2:1"]
    assert list(HeldSession.objects.values_list("session_pk", flat=True)) == [3]


def test_batch_size_must_be_positive(transactional_db: None) -> None:
    with pytest.raises(CommandError, match="at least 1"):
        purge("--batch-size", "0")


def test_every_statement_is_bounded(transactional_db: None) -> None:
    """No DELETE covers more than a batch of listed ids, and every SELECT has a LIMIT."""
    keys = [new_session_key() for _ in range(4)]
    for key in keys:
        for n in range(3):
            send_to_session(key, "m", n)
    age(Message.objects.all())
    Session.objects.filter(session_key__in=keys[:2])._raw_delete(Session.objects.db)
    with CaptureQueriesContext(connection) as queries:
        done = retention.purge_all(batch=2)
    assert done.expired == 12 and done.sessions == 2
    deletes = [q["sql"] for q in queries if q["sql"].startswith("DELETE")]
    assert len(deletes) >= 3
    for sql in deletes:
        assert " WHERE " in sql, sql
        for values in re.findall(r" IN \(([^()]*)\)", sql):
            assert len(values.split(",")) <= 2, sql
    selects = [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT") and "longpoll_app" in q["sql"].split(" FROM ")[1][:40]
    ]
    for sql in selects:
        assert "LIMIT" in sql or " IN (" in sql or "WHERE" in sql, sql


def plan_of(cursor: Any, sql: str) -> list[str]:
    """The plan's lines: SQLite's EXPLAIN QUERY PLAN, or PostgreSQL's EXPLAIN."""
    if connection.vendor == "sqlite":
        cursor.execute("EXPLAIN QUERY PLAN " + sql)
        return [str(row[-1]) for row in cursor.fetchall()]
    cursor.execute("EXPLAIN " + sql)
    return [str(row[0]).strip() for row in cursor.fetchall()]


def full_scans(plan: list[str]) -> list[str]:
    if connection.vendor == "sqlite":  # SEARCH: through an index; SCAN: the whole table
        return [step for step in plan if step.startswith("SCAN ") and "CONSTANT" not in step]
    return [step for step in plan if "Seq Scan" in step]


def test_every_statement_goes_through_an_index(transactional_db: None) -> None:
    """The plan of each statement of a pass never walks a whole table. On
    PostgreSQL, sequential scans are switched off for the check: with tiny test
    tables the planner would choose them anyway, and a statement that no index
    can serve still shows one."""
    keys = [new_session_key() for _ in range(3)]
    for key in keys:
        row = sessions.ensure_session_row(key)
        queue.record_client_message(row.pk, "x")
        for n in range(3):
            send_to_session(key, "m", n)
    age(Message.objects.filter(data=0))
    age(ClientMessage.objects.all(), "received_at")
    LongpollSession.objects.filter(session_key=keys[0]).update(expires_at=timezone.now() - LONG_AGO)
    Session.objects.filter(session_key=keys[0]).update(expire_date=timezone.now() - LONG_AGO)
    Session.objects.filter(session_key=keys[1])._raw_delete(Session.objects.db)
    reports.write_report("gone:1:1", "gone:1", timezone.now() - LONG_AGO, 0, 0, {}, {1}, None)
    HubReport.objects.update(updated_at=timezone.now() - LONG_AGO)
    with CaptureQueriesContext(connection) as queries:
        retention.purge_all(batch=100)
    statements = [q["sql"] for q in queries if q["sql"].startswith(("SELECT", "DELETE", "UPDATE"))]
    assert len(statements) > 10
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET enable_seqscan = off")
        try:
            for sql in statements:
                plan = plan_of(cursor, sql)
                assert full_scans(plan) == [], (sql, plan)
        finally:
            if connection.vendor == "postgresql":
                cursor.execute("RESET enable_seqscan")


def test_a_step_is_bounded_and_says_when_more_is_left(transactional_db: None) -> None:
    key = new_session_key()
    for n in range(5):
        send_to_session(key, "m", n)
    age(Message.objects.all())
    walk = retention.Walk()
    first = retention.step(walk, 2)
    assert (first.expired, first.backlog) == (2, True)
    retention.step(walk, 2)
    last = retention.step(walk, 2)
    assert (last.expired, last.backlog) == (1, False)
    assert not Message.objects.exists()


async def test_server_processes_clean_up_on_their_own(browser: Browser, settings: Any) -> None:
    settings.LONGPOLL_CLEANUP_INTERVAL = 0.2
    other = await sync_to_async(new_session_key)()
    await sync_to_async(send_to_session)(other, "old", 1)
    await sync_to_async(age)(Message.objects.all())
    held = browser.start({"cursor": None})  # starts this process's hub, and its clean-up
    assert not await held.answered_within(0.1)
    for _ in range(40):
        if not await Message.objects.aexists():
            break
        await asyncio.sleep(0.05)
    assert not await Message.objects.aexists()
    await held.disconnect()


async def test_no_automatic_clean_up_when_the_interval_is_0(settings: Any) -> None:
    settings.LONGPOLL_CLEANUP_INTERVAL = 0
    await asyncio.wait_for(retention.cleanup_loop(), 0.5)  # returns at once


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        ("LONGPOLL_CLEANUP_INTERVAL", 0, True),
        ("LONGPOLL_CLEANUP_INTERVAL", 60, True),
        ("LONGPOLL_CLEANUP_INTERVAL", -1, False),
        ("LONGPOLL_CLEANUP_INTERVAL", False, False),
        ("LONGPOLL_CLEANUP_BATCH", 0, False),
        ("LONGPOLL_STATUS_INTERVAL", "5", False),
    ],
)
def test_settings_are_checked(settings: Any, name: str, value: Any, ok: bool) -> None:
    from longpoll_app.checks import check_settings

    setattr(settings, name, value)
    assert (check_settings() == []) is ok
