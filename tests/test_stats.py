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
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from longpoll_app import api, counters, queue, reports, retention, send_to_session, sessions, stats
from longpoll_app.models import HubReport, Message
from longpoll_app.runtime import current_hub

from .conftest import Browser, new_session_key

asend = sync_to_async(send_to_session)


@pytest.fixture(autouse=True)
def _fresh_latency() -> None:
    counters.latency.clear()


def run_stats(*args: str) -> str:
    out = StringIO()
    call_command("longpoll_stats", *args, stdout=out)
    return out.getvalue()


def send_every_way_out(settings: Any) -> None:
    """Messages leaving their queues every way: 8 sent, 2 delivered, 1 expired,
    2 dropped, 2 discarded, 1 pending, in 2 sessions left."""
    settings.LONGPOLL_MAX_QUEUE = 3
    a, b, c = new_session_key(), new_session_key(), new_session_key()
    for n in range(5):  # two dropped by the queue cap
        send_to_session(a, "m", n)
    pk_a = sessions.ensure_session_row(a).pk
    queue.acknowledge({(pk_a, a): 4})  # ids 3 and 4 delivered; 1 and 2 were dropped
    send_to_session(b, "m", None)
    Message.objects.filter(session__session_key=b).update(
        created_at=timezone.now() - timedelta(days=1)
    )
    retention.purge_all(100)  # b's message expired
    send_to_session(c, "m", None)
    send_to_session(c, "m", None)
    api.end_session(c)  # c logged out with two pending; a's id 5 is pending


def test_message_totals_add_up(transactional_db: None, settings: Any) -> None:
    send_every_way_out(settings)

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
    queued = [queue.append(key, "m", n) for n in range(4)]
    Message.objects.filter(seq=2).delete()  # gone some other way
    queue.acknowledge({(queued[0].session_pk, key): 4})
    queue.acknowledge({(queued[0].session_pk, key): 4})  # a second process acknowledging again
    assert stats.collect()["messages"]["delivered"] == 3


async def test_latency_is_measured_from_send_to_answer(browser: Browser) -> None:
    await asend(browser.session_key, "slow", 1)
    await asyncio.sleep(0.3)  # the page comes for it 300 ms later
    assert (await browser.poll(None)).status == 200
    held = browser.start({"cursor": 1})
    assert not await held.answered_within(0.1)
    await asend(browser.session_key, "fast", 2)  # answered as it is sent
    assert (await held.response(1.0)).status == 200
    await reports.Reporter(current_hub()).report()
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
    hub = current_hub()
    assert hub.held_polls() == 3
    reporter = reports.Reporter(hub)
    await reporter.report()
    data = await sync_to_async(stats.collect)()
    assert data["held_polls"] == 3
    [process] = data["processes"]
    assert process["process"] == reports.process_name()
    assert (process["held_polls"], process["sessions"], process["hubs"]) == (3, 3, 1)
    # Another process's report counts too; a stopped one's does not.
    await sync_to_async(reports.write_report)(
        "elsewhere:9:1", "elsewhere:9", timezone.now(), 5, 5, {}, set(), None
    )
    await sync_to_async(reports.write_report)(
        "stopped:8:1", "stopped:8", timezone.now(), 7, 7, {}, set(), None
    )
    await HubReport.objects.filter(name="stopped:8:1").aupdate(
        updated_at=timezone.now() - timedelta(minutes=1)
    )
    data = await sync_to_async(stats.collect)()
    assert data["held_polls"] == 8
    assert sorted(p["process"] for p in data["processes"]) == sorted(
        ["elsewhere:9", reports.process_name()]
    )
    for h in held:
        await h.disconnect()


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
    counters.latency.record(12.0)
    reports.write_report(
        "h:1:1", "h:1", timezone.now(), 2, 2, counters.latency.snapshot(), set(), None
    )
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
