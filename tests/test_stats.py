"""Stats: held polls per process, message totals and latency, from
``manage.py longpoll_stats`` and the staff-only JSON view."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from longpoll_app import api, retention, send_to_session, stats, store
from longpoll_app.hub import Hub
from longpoll_app.models import HeldSession, HubReport, Message

from .conftest import Browser, new_session_key

asend = sync_to_async(send_to_session)


@pytest.fixture(autouse=True)
def _fresh_latency() -> None:
    stats.latency.clear()


def run_stats(*args: str) -> str:
    out = StringIO()
    call_command("longpoll_stats", *args, stdout=out)
    return out.getvalue()


def test_message_totals_add_up(transactional_db: None, settings: Any) -> None:
    settings.LONGPOLL_MAX_QUEUE = 3
    a, b, c = new_session_key(), new_session_key(), new_session_key()
    for n in range(5):  # two dropped by the queue cap
        send_to_session(a, "m", n)
    pk_a = store.ensure_session_row(a).pk
    store.acknowledge({pk_a: 4})  # ids 3 and 4 delivered; 1 and 2 were dropped
    send_to_session(b, "m", None)
    Message.objects.filter(session__session_key=b).update(
        created_at=timezone.now() - timedelta(days=1)
    )
    retention.purge_all(100)  # b's message expired
    send_to_session(c, "m", None)
    send_to_session(c, "m", None)
    api.end_session(c)  # c logged out with two pending

    counts = stats.collect()["messages"]
    assert counts == {
        "sent": 8,
        "delivered": 2,
        "expired": 1,
        "dropped": 2,
        "discarded": 2,
        "pending": 1,  # a's id 5
    }
    assert counts["sent"] == sum(v for k, v in counts.items() if k != "sent")


def test_delivered_counts_rows_not_ids(transactional_db: None) -> None:
    key = new_session_key()
    queued = [store.append(key, "m", n) for n in range(4)]
    Message.objects.filter(seq=2).delete()  # gone some other way
    store.acknowledge({queued[0].session_pk: 4})
    store.acknowledge({queued[0].session_pk: 4})  # a second process acknowledging again
    assert stats.collect()["messages"]["delivered"] == 3


def test_percentiles_of_a_known_distribution() -> None:
    histogram = stats.Histogram()
    for ms in range(1, 1001):  # 1 ms to 1 s, evenly
        histogram.record(float(ms))
    snapshot = histogram.snapshot()
    merged = {int(i): n for i, n in snapshot["buckets"].items()}
    result = stats.percentiles(merged, (50, 90, 99), snapshot["max"])
    for point, expected in (("p50", 500), ("p90", 900), ("p99", 990)):
        value = result[point]
        assert value is not None and abs(value - expected) / expected < 0.26, (point, value)
    assert snapshot["max"] == 1000.0
    assert stats.percentiles({}, (50,)) == {"p50": None}


async def test_latency_is_measured_from_send_to_answer(browser: Browser) -> None:
    await asend(browser.session_key, "slow", 1)
    await asyncio.sleep(0.3)  # the page comes for it 300 ms later
    assert (await browser.poll(None)).status == 200
    held = browser.start({"cursor": 1})
    assert not await held.answered_within(0.1)
    await asend(browser.session_key, "fast", 2)  # answered as it is sent
    assert (await held.response(1.0)).status == 200
    await stats.Reporter(Hub.current()).report()
    latency = (await sync_to_async(stats.collect)())["latency_ms"]
    assert latency["count"] == 2
    assert latency["p50"] is not None and latency["p50"] < 250  # the fast one
    assert 300 <= latency["max"] < 1000  # the slow one
    assert latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


async def test_held_polls_per_process_from_the_reports(make_browser: Any, settings: Any) -> None:
    browsers = [await sync_to_async(make_browser)() for _ in range(3)]
    held = [b.start({"cursor": None}) for b in browsers]
    for h in held:
        assert not await h.answered_within(0.05)
    hub = Hub.current()
    assert hub.held_polls() == 3
    reporter = stats.Reporter(hub)
    await reporter.report()
    data = await sync_to_async(stats.collect)()
    assert data["held_polls"] == 3
    [process] = data["processes"]
    assert process["process"] == stats.process_name()
    assert (process["held_polls"], process["sessions"], process["hubs"]) == (3, 3, 1)
    # Another process's report counts too; a stopped one's does not.
    await sync_to_async(stats.write_report)(
        "elsewhere:9:1", "elsewhere:9", timezone.now(), 5, 5, {}, set(), None
    )
    await sync_to_async(stats.write_report)(
        "stopped:8:1", "stopped:8", timezone.now(), 7, 7, {}, set(), None
    )
    await HubReport.objects.filter(name="stopped:8:1").aupdate(
        updated_at=timezone.now() - timedelta(minutes=1)
    )
    data = await sync_to_async(stats.collect)()
    assert data["held_polls"] == 8
    assert sorted(p["process"] for p in data["processes"]) == sorted(
        ["elsewhere:9", stats.process_name()]
    )
    for h in held:
        await h.disconnect()


def test_reports_write_only_what_changed(transactional_db: None) -> None:
    now = timezone.now()
    stats.write_report("h:1:1", "h:1", now, 2, 2, {}, {1, 2}, None)
    with CaptureQueriesContext(connection) as same:
        stats.write_report("h:1:1", "h:1", now, 2, 2, {}, {1, 2}, {1, 2})
    assert not [q for q in same if "heldsession" in q["sql"]]
    stats.write_report("h:1:1", "h:1", now, 2, 2, {}, {2, 3}, {1, 2})
    assert sorted(HeldSession.objects.values_list("session_pk", flat=True)) == [2, 3]
    # After a failed write the reporter does not know what is stored: all again.
    stats.write_report("h:1:1", "h:1", now, 1, 1, {}, {4}, None)
    assert list(HeldSession.objects.values_list("session_pk", flat=True)) == [4]


async def test_polls_do_not_write_reports(
    browser: Browser, settings: Any, monkeypatch: Any
) -> None:
    """Reports come from a timer, never from a poll."""
    settings.LONGPOLL_TIMEOUT = 0.05
    writes: list[Any] = []
    monkeypatch.setattr(stats, "write_report", lambda *args: writes.append(args))
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
    assert await sync_to_async(stats.held_session_pks)() != set()
    await held.disconnect()


def test_stats_view_is_for_staff_only(
    transactional_db: None, client: Client, django_user_model: Any
) -> None:
    url = reverse("longpoll:stats")
    assert client.get(url).status_code == 403
    django_user_model.objects.create_user("eve", password="pw-eve-123456")
    client.login(username="eve", password="pw-eve-123456")
    forbidden = client.get(url)
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
    django_user_model.objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    client.login(username="sam", password="pw-sam-123456")
    send_to_session(client.session.session_key or "", "m", None)
    response = client.get(url)
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    data = response.json()
    assert data["messages"]["sent"] == 1
    assert {"held_polls", "processes", "latency_ms", "report_interval"} <= set(data)
    assert client.post(url).status_code == 405


def test_stats_command(transactional_db: None) -> None:
    key = new_session_key()
    send_to_session(key, "m", None)
    text = run_stats()
    assert "Held polls: 0" in text and "no server process has reported recently" in text
    assert "1 sent, 0 delivered, 1 pending" in text
    assert "no message answered" in text
    stats.latency.record(12.0)
    stats.write_report("h:1:1", "h:1", timezone.now(), 2, 2, stats.latency.snapshot(), set(), None)
    text = run_stats()
    assert "h:1: 2 held" in text and "over 1 message(s)" in text
    data = json.loads(run_stats("--json"))
    assert data["held_polls"] == 2 and data["latency_ms"]["count"] == 1


async def test_a_repoll_acknowledges_what_it_received(browser: Browser, layer: str) -> None:
    assert (await browser.poll(None, timeout=5)).status == 204  # the page has been polling
    held = browser.start({"cursor": 0})
    assert not await held.answered_within(0.2)
    await asend(browser.session_key, "only", 1)  # wakes the held poll
    cursor = (await held.response(1.0)).json()["cursor"]
    again = browser.start({"cursor": cursor})  # the page polls again: it received id 1
    assert not await again.answered_within(0.3)  # acknowledgements are flushed after 50 ms
    await again.disconnect()
    assert not await Message.objects.aexists()
    assert (await sync_to_async(stats.collect)())["messages"]["delivered"] == 1
