"""Each hub's report: its row, the changes to its held sessions, and the
loop that writes it every LONGPOLL_STATUS_INTERVAL."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from longpoll_app import counters, reports, stats
from longpoll_app.hub import Hub
from longpoll_app.models import HeldSession, HubReport
from longpoll_app.sessions import SessionRecord
from longpoll_app.sql import CHUNK

from .conftest import Browser

REPORT_FAILED = "could not write this process's report"
SLACK = 0.005  # seconds: how early a timer may fire by the clocks compared here


@pytest.fixture(autouse=True)
def _fresh_latency() -> Iterator[None]:
    counters.latency.clear()
    yield
    counters.latency.clear()


def idle_hub() -> Hub:
    """A hub of the running loop that runs no task: reports are made by hand."""
    return Hub(asyncio.get_running_loop(), None)


def held_pks() -> list[int]:
    return sorted(HeldSession.objects.values_list("session_pk", flat=True))


# -- Reporter ---------------------------------------------------------------------


async def test_held_sessions_are_held_now_or_used_since_the_last_report() -> None:
    hub = idle_hub()
    reporter = reports.Reporter(hub)
    since = reporter.last_report

    def followed(key: str, pk: int | None, held: int, used_at: float) -> None:
        follow = hub.follow(key * 32)
        if pk is not None:
            hub.attach(follow, SessionRecord(pk=pk, last_id=0, acked_id=0), since)
        follow.held, follow.used_at = held, used_at

    followed("a", 1, held=1, used_at=since - 100.0)  # held for long
    followed("b", 2, held=0, used_at=since)  # between two polls just now
    followed("c", 3, held=0, used_at=since - 0.001)  # stopped before the last report
    followed("d", None, held=1, used_at=since)  # no record yet: nothing to name
    assert reporter.held_sessions() == {1, 2}
    reporter.last_report = since + 1.0  # a report later, nobody polled again
    assert reporter.held_sessions() == {1}


async def test_a_report_writes_the_hub_s_numbers_and_its_transport_s_state(
    transactional_db: None,
) -> None:
    hub = idle_hub()
    reporter = reports.Reporter(hub)
    other = reports.Reporter(hub)
    assert reporter.name != other.name  # one row per hub, however many in a process
    assert reporter.name.startswith(reports.process_name() + ":")
    follow = hub.follow("a" * 32)
    hub.attach(follow, SessionRecord(pk=7, last_id=0, acked_id=0), hub.loop.time())
    follow.held = 2
    hub.follow("b" * 32)  # followed, but not yet attached to a record
    counters.latency.record(12.0)
    hub.transport.failed(OperationalError("database is locked"))
    await reporter.report()
    row = await HubReport.objects.aget(name=reporter.name)
    assert (row.process, row.held_polls, row.sessions) == (reports.process_name(), 2, 2)
    assert row.started_at == reporter.started_at
    assert row.latency == {**counters.latency.snapshot(), "layer": {"outage": 1, "outages": 1}}
    assert await sync_to_async(held_pks)() == [7]
    assert reporter.written == {7}


async def test_after_a_failed_write_the_next_report_rewrites_everything(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = idle_hub()
    follow = hub.follow("a" * 32)
    hub.attach(follow, SessionRecord(pk=7, last_id=0, acked_id=0), hub.loop.time())
    follow.held = 1
    reporter = reports.Reporter(hub)
    previous: list[set[int] | None] = []
    write_report = reports.write_report

    def flaky(*args: Any, **kwargs: Any) -> None:
        previous.append(args[7])
        if len(previous) == 2:
            raise OperationalError("database is locked")
        write_report(*args, **kwargs)

    monkeypatch.setattr(reports, "write_report", flaky)
    await reporter.report()
    with pytest.raises(OperationalError):
        await reporter.report()
    assert reporter.written is None  # what the table holds is unknown now
    await reporter.report()
    await reporter.report()
    # The first write knows nothing of the table; nor does the one after a failure.
    assert previous == [None, {7}, None, {7}]


# -- write_report -------------------------------------------------------------------


def test_reports_write_only_what_changed(transactional_db: None) -> None:
    now = timezone.now()
    reports.write_report("h:1:1", "h:1", now, 2, 2, {}, {1, 2}, None)
    with CaptureQueriesContext(connection) as same:
        reports.write_report("h:1:1", "h:1", now, 2, 2, {}, {1, 2}, {1, 2})
    assert not [q for q in same if "heldsession" in q["sql"]]
    reports.write_report("h:1:1", "h:1", now, 2, 2, {}, {2, 3}, {1, 2})
    assert sorted(HeldSession.objects.values_list("session_pk", flat=True)) == [2, 3]
    # After a failed write the reporter does not know what is stored: all again.
    reports.write_report("h:1:1", "h:1", now, 1, 1, {}, {4}, None)
    assert list(HeldSession.objects.values_list("session_pk", flat=True)) == [4]


def test_a_report_whose_row_was_removed_is_written_in_full(transactional_db: None) -> None:
    now = timezone.now()
    reports.write_report("h:1:1", "h:1", now, 2, 2, {}, {1, 2}, None)
    HubReport.objects.all().delete()  # taken for a stopped process's, say, and removed
    # The reporter still believes {1, 2} is stored: the new row gets all of {1, 2, 3}.
    reports.write_report("h:1:1", "h:1", now, 3, 3, {}, {1, 2, 3}, {1, 2})
    assert held_pks() == [1, 2, 3]


def test_a_rewrite_keeps_where_the_row_came_from(transactional_db: None) -> None:
    started = timezone.now()
    reports.write_report("h:1:1", "h:1", started, 1, 1, {"buckets": {"3": 1}}, set(), None)
    first = HubReport.objects.get()
    later = timezone.now()
    reports.write_report("h:1:1", "other", later, 5, 6, {"buckets": {}}, set(), set())
    row = HubReport.objects.get()  # still one row for the name
    assert (row.process, row.started_at) == ("h:1", started)
    assert (row.held_polls, row.sessions, row.latency) == (5, 6, {"buckets": {}})
    assert row.updated_at >= first.updated_at


def test_the_layer_state_lands_in_the_latency_json(transactional_db: None) -> None:
    histogram: dict[str, Any] = {"buckets": {"40": 2}, "max": 900.0, "sum": 1700.0}
    layer = {"outage": 1, "outages": 3}
    reports.write_report("h:1:1", "h:1", timezone.now(), 0, 0, histogram, set(), None, layer)
    assert HubReport.objects.get().latency == {**histogram, "layer": layer}
    assert "layer" not in histogram  # the caller's snapshot is left as it was
    reports.write_report("h:1:1", "h:1", timezone.now(), 0, 0, histogram, set(), set())
    assert HubReport.objects.get().latency == histogram  # no state given: none stored


def test_held_sessions_beyond_one_statement_are_written_and_removed(
    transactional_db: None,
) -> None:
    now = timezone.now()
    many = set(range(1, 2 * CHUNK + 2))
    reports.write_report("h:1:1", "h:1", now, 0, 0, {}, many, None)
    assert HeldSession.objects.count() == len(many)
    reports.write_report("h:1:1", "h:1", now, 0, 0, {}, {CHUNK}, many)
    assert held_pks() == [CHUNK]


def test_hubs_keep_their_own_held_sessions(transactional_db: None) -> None:
    now = timezone.now()
    reports.write_report("h:1:1", "h:1", now, 1, 1, {}, {1}, None)
    reports.write_report("h:1:2", "h:1", now, 1, 1, {}, {1, 2}, None)
    reports.write_report("h:1:1", "h:1", now, 0, 0, {}, set(), None)  # rewrites its own only
    assert list(HeldSession.objects.values_list("hub__name", "session_pk").order_by("pk")) == [
        ("h:1:2", 1),
        ("h:1:2", 2),
    ]


# -- report_loop ------------------------------------------------------------------------


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_loop_reports_at_the_interval(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 0.05  # seconds
    settings.LONGPOLL_STATUS_INTERVAL = interval
    written: list[float] = []
    monkeypatch.setattr(reports, "write_report", lambda *a, **k: written.append(time.monotonic()))
    started = time.monotonic()
    task = asyncio.ensure_future(reports.report_loop(idle_hub()))
    try:
        await wait_for(lambda: len(written) >= 4)
    finally:
        await stop(task)
    # The first after half an interval at least (processes started together spread
    # out), then one per interval.
    assert written[0] - started >= interval / 2 - SLACK
    gaps = [b - a for a, b in itertools.pairwise(written)]
    assert all(gap >= interval - SLACK for gap in gaps), gaps


async def test_a_failing_write_is_logged_once_and_retried(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings.LONGPOLL_STATUS_INTERVAL = 0.02  # seconds
    outcomes = iter(["down", "down", "down", "ok", "ok", "down", "down", "ok"])
    calls: list[str] = []

    def write(*args: Any, **kwargs: Any) -> None:
        outcome = next(outcomes, "ok")
        calls.append(outcome)
        if outcome == "down":
            raise OperationalError(f"database is down ({len(calls)})")

    monkeypatch.setattr(reports, "write_report", write)
    task = asyncio.ensure_future(reports.report_loop(idle_hub()))
    try:
        with caplog.at_level(logging.WARNING, logger="longpoll_app"):
            await wait_for(lambda: len(calls) >= 8)
    finally:
        await stop(task)
    warnings = [r.getMessage() for r in caplog.records if REPORT_FAILED in r.getMessage()]
    # Once per outage (the first and the sixth write), with what the database said.
    assert warnings == [
        f"longpoll: {REPORT_FAILED}: database is down (1)",
        f"longpoll: {REPORT_FAILED}: database is down (6)",
    ]


async def test_polls_do_not_write_reports(
    browser: Browser, settings: Any, monkeypatch: Any
) -> None:
    """Reports come from a timer, never from a poll."""
    settings.LONGPOLL_TIMEOUT = 0.05
    writes: list[Any] = []
    monkeypatch.setattr(reports, "write_report", lambda *args: writes.append(args))
    for _ in range(5):
        assert (await browser.poll(0)).status == 204
    assert writes == []


async def test_a_hub_reports_on_its_own(browser: Browser, settings: Any) -> None:
    settings.LONGPOLL_STATUS_INTERVAL = 0.1
    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.05)
    for _ in range(40):
        if await HeldSession.objects.aexists():
            break
        await asyncio.sleep(0.05)
    assert await HeldSession.objects.filter(hub__updated_at__gte=stats.fresh_since()).aexists()
    await held.disconnect()
