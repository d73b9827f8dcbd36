"""The Prometheus endpoint: scraped with Django's test client after real sends,
polls and hub reports, and parsed as Prometheus parses it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import include, path, reverse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from longpoll_app import counters, queue, reports, send_to_session
from longpoll_app.checks import check_settings
from longpoll_app.hub import Hub
from longpoll_app.metrics import LongpollCollector
from longpoll_app.models import HubReport
from longpoll_app.runtime import current_hub
from longpoll_app.transports.layer import LayerTransport

from .conftest import Browser
from .test_stats import send_every_way_out

# This module is the URLconf of its tests: the demo does not route the metrics.
urlpatterns = [
    path("longpoll/", include("longpoll_app.urls")),
    path("metrics", include("longpoll_app.metrics_urls")),
]
pytestmark = pytest.mark.urls(__name__)

TOKEN = "s3cret-Metrics-token_0123456789abcdef"
ME = reports.process_name()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def _fresh_latency() -> None:
    counters.latency.clear()


@pytest.fixture
def latencies(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every latency (ms) this process records, as the histogram receives it."""
    seen: list[float] = []
    record = counters.latency.record

    def recording(milliseconds: float) -> None:
        seen.append(milliseconds)
        record(milliseconds)

    monkeypatch.setattr(counters.latency, "record", recording)
    return seen


def scrape(**headers: str) -> Samples:
    response = Client(headers={"authorization": f"Bearer {TOKEN}", **headers}).get(
        reverse("longpoll_metrics:metrics")
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    assert "no-store" in response["Cache-Control"]
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def processes_in(samples: Samples) -> set[str]:
    return {dict(labels)["process"] for name, labels in samples if name == "longpoll_held_polls"}


def buckets(samples: Samples, process: str) -> dict[float, float]:
    """The latency histogram's cumulative counts of one process, by bound in seconds."""
    return {
        float(dict(labels)["le"]): count
        for (name, labels), count in samples.items()
        if name == "longpoll_delivery_latency_seconds_bucket" and dict(labels)["process"] == process
    }


# -- what the metrics say -------------------------------------------------------


async def test_per_process_numbers_come_from_every_live_report(
    make_browser: Any, settings: Any, latencies: list[float]
) -> None:
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    first, second = [await sync_to_async(make_browser)() for _ in range(2)]
    await sync_to_async(send_to_session)(first.session_key, "slow", 1)
    await asyncio.sleep(0.3)  # the page comes for it 300 ms later
    assert (await first.poll(None)).status == 200
    held = [b.start({"cursor": 1 if b is first else None}) for b in (first, second)]
    for poll in held:
        assert not await poll.answered_within(0.05)
    await sync_to_async(send_to_session)(second.session_key, "fast", 2)  # answered at once
    assert (await held[1].response(1.0)).status == 200
    hub = current_hub()
    await reports.Reporter(hub).report()
    # Another process with two hubs (event loops), and one that stopped.
    other = counters.Histogram()
    for ms in (0.05, 2.0, 40.0, 900.0, 7_000.0):
        other.record(ms)
    for hub_name, polls, layer in (("1", 2, {"outage": 1, "outages": 3}), ("2", 3, None)):
        await sync_to_async(reports.write_report)(
            f"elsewhere:9:{hub_name}",
            "elsewhere:9",
            timezone.now(),
            polls,
            polls + 1,
            other.snapshot(),
            set(),
            None,
            layer=layer,
        )
    await sync_to_async(reports.write_report)(
        "stopped:8:1", "stopped:8", timezone.now(), 7, 7, {}, set(), None
    )
    await HubReport.objects.filter(process="stopped:8").aupdate(
        updated_at=timezone.now() - timedelta(minutes=1)
    )

    samples = await sync_to_async(scrape)()

    assert processes_in(samples) == {ME, "elsewhere:9"}  # the stopped one is left out
    assert value(samples, "longpoll_held_polls", process=ME) == 1  # first's poll, still held
    assert value(samples, "longpoll_followed_sessions", process=ME) == len(hub.follows) == 2
    assert value(samples, "longpoll_held_polls", process="elsewhere:9") == 2 + 3
    assert value(samples, "longpoll_followed_sessions", process="elsewhere:9") == 3 + 4
    assert value(samples, "longpoll_layer_outage", process="elsewhere:9") == 1
    assert value(samples, "longpoll_layer_outages_total", process="elsewhere:9") == 3
    assert value(samples, "longpoll_layer_outage", process=ME) == 0
    assert 0 <= value(samples, "longpoll_report_age_seconds", process=ME) < 5
    started = value(samples, "longpoll_process_start_time_seconds", process=ME)
    assert abs(started - timezone.now().timestamp()) < 30
    # The latency histogram holds exactly what this process recorded.
    assert len(latencies) == 2 and max(latencies) >= 300
    mine = buckets(samples, ME)
    assert (
        mine[float("inf")]
        == value(samples, "longpoll_delivery_latency_seconds_count", process=ME)
        == len(latencies)
    )
    for bound, count in mine.items():
        assert count == sum(1 for ms in latencies if ms / 1000 <= bound), bound
    assert value(samples, "longpoll_delivery_latency_seconds_sum", process=ME) == pytest.approx(
        sum(latencies) / 1000, abs=1e-6
    )
    theirs = buckets(samples, "elsewhere:9")
    for bound, count in theirs.items():
        assert count == sum(1 for ms in (0.05, 2.0, 40.0, 900.0, 7_000.0) if ms / 1000 <= bound)
    assert sorted(mine) == sorted(theirs) and len(mine) == 18  # 17 bounds and +Inf
    await held[0].disconnect()


def test_message_totals_match_the_stats_view(
    transactional_db: None, settings: Any, django_user_model: Any
) -> None:
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    send_every_way_out(settings)

    with CaptureQueriesContext(connection) as queries:
        samples = scrape()
    assert len(queries) == 3  # as docs/metrics.md says a scrape costs
    happened = {"sent": 8, "delivered": 2, "expired": 1, "dropped": 2, "discarded": 2}
    for outcome, count in happened.items():
        assert value(samples, f"longpoll_messages_{outcome}_total") == count, outcome
    assert value(samples, "longpoll_messages_pending") == 1  # a's id 5
    assert value(samples, "longpoll_sessions") == 2  # a and b; c ended
    assert processes_in(samples) == set()  # no server process has reported

    # The same numbers as the staff JSON view.
    django_user_model.objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    staff = Client()
    staff.login(username="sam", password="pw-sam-123456")
    messages = staff.get(reverse("longpoll:stats")).json()["messages"]
    for outcome in happened:
        assert value(samples, f"longpoll_messages_{outcome}_total") == messages[outcome]
    assert value(samples, "longpoll_messages_pending") == messages["pending"]


@pytest.fixture
def failing_store_watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make the hub's checks of the store for other processes' sends fail, until undone."""
    real = queue.messages_since

    def unreachable(*args: Any) -> Any:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(queue, "messages_since", unreachable)
    yield lambda: monkeypatch.setattr(queue, "messages_since", real)


async def wait_for_outage(hub: Hub, outage: int) -> None:
    for _ in range(100):
        if hub.layer_state()["outage"] == outage:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the hub's outage never became {outage}: {hub.layer_state()}")


async def test_a_layer_outage_is_reported(
    browser: Browser, settings: Any, failing_store_watch: Any
) -> None:
    """Without a shared layer, the outage is the store watcher's: it cannot see
    other processes' sends (a shared layer's outage takes the same path)."""
    settings.LONGPOLL_TRANSPORT = "watcher"  # "auto" listens instead on PostgreSQL
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    poll = browser.start({"cursor": None})  # the hub follows a session: the watcher queries
    assert not await poll.answered_within(0.05)
    hub = current_hub()
    await wait_for_outage(hub, 1)
    reporter = reports.Reporter(hub)
    await reporter.report()
    samples = await sync_to_async(scrape)()
    assert value(samples, "longpoll_layer_outage", process=ME) == 1
    assert value(samples, "longpoll_layer_outages_total", process=ME) == 1

    failing_store_watch()  # the database answers again
    await wait_for_outage(hub, 0)
    await reporter.report()
    samples = await sync_to_async(scrape)()
    assert value(samples, "longpoll_layer_outage", process=ME) == 0
    assert value(samples, "longpoll_layer_outages_total", process=ME) == 1  # it only grows
    await poll.disconnect()


async def test_an_unreachable_channel_layer_is_reported(
    transactional_db: None, settings: Any
) -> None:
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    settings.CHANNEL_LAYERS = {  # nothing listens on port 1: every call is refused
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1", "socket_timeout": 1}]},
        }
    }
    hub = current_hub()
    assert isinstance(hub.transport, LayerTransport)  # a shared layer: the receive loop's outage
    await wait_for_outage(hub, 1)
    await reports.Reporter(hub).report()
    samples = await sync_to_async(scrape)()
    assert value(samples, "longpoll_layer_outage", process=ME) == 1
    assert value(samples, "longpoll_layer_outages_total", process=ME) == 1


def test_registering_the_collector_elsewhere_queries_nothing() -> None:
    """describe() gives the names, so a registry that checks for clashes does not
    scrape the database at import (no database access is allowed in this test)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(LongpollCollector())
    names = {metric.name for metric in LongpollCollector().describe()}
    assert {"longpoll_held_polls", "longpoll_messages_sent", "longpoll_layer_outages"} <= names


# -- who may read them ----------------------------------------------------------

RIGHT_HEADERS = [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER   {TOKEN}  ", f"\tBearer {TOKEN}\t"]
WRONG_HEADERS = [
    "Bearer wrong",
    f"Bearer {TOKEN[:-1]}",  # a prefix
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN} {TOKEN}",
    TOKEN,  # no scheme
    f"Token {TOKEN}",
    f"Basic {TOKEN}",
    "Bearer",
    "Bearer ",
    "",
    "Bearer s3cret-Métrics-\u20ac",  # not Latin-1: no header can carry it
    # Unicode whitespace that str.strip() would take off, and HTTP does not.
    f"Bearer {TOKEN}\u00a0",
    f"Bearer {TOKEN}\u0085",
    f"\u00a0Bearer {TOKEN}",
    f"Bearer\t{TOKEN}",  # RFC 9110: only spaces between the scheme and its token
    f"Bearer \u00a0{TOKEN}",
]


def get_metrics(client: Client | None = None, **headers: str) -> Any:
    return (client or Client()).get(reverse("longpoll_metrics:metrics"), headers=headers)


def assert_forbidden(response: Any) -> None:
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert body["error"] == "forbidden" and set(body) == {"error", "detail"}
    assert "LONGPOLL_METRICS_TOKEN" in body["detail"]


@pytest.mark.parametrize("header", RIGHT_HEADERS)
def test_the_right_token_opens_the_metrics(
    transactional_db: None, settings: Any, header: str
) -> None:
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    response = get_metrics(authorization=header)
    assert response.status_code == 200
    assert b"# TYPE longpoll_messages_sent_total counter" in response.content


@pytest.mark.parametrize("header", WRONG_HEADERS)
def test_a_wrong_token_is_refused(transactional_db: None, settings: Any, header: str) -> None:
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    assert_forbidden(get_metrics(authorization=header))


def test_no_credentials_are_refused(transactional_db: None, settings: Any) -> None:
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    response = get_metrics()
    assert_forbidden(response)
    assert "Bearer" in response.json()["detail"]


def test_without_a_token_setting_only_staff_may_look(
    transactional_db: None, django_user_model: Any
) -> None:
    assert_forbidden(get_metrics(authorization=f"Bearer {TOKEN}"))
    assert_forbidden(get_metrics(authorization="Bearer None"))
    client = Client()
    django_user_model.objects.create_user("eve", password="pw-eve-123456")
    client.login(username="eve", password="pw-eve-123456")
    assert_forbidden(get_metrics(client))
    django_user_model.objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    client.login(username="sam", password="pw-sam-123456")
    assert get_metrics(client).status_code == 200


def test_staff_may_look_when_a_token_is_set_too(
    transactional_db: None, settings: Any, django_user_model: Any
) -> None:
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    django_user_model.objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    client = Client()
    client.login(username="sam", password="pw-sam-123456")
    assert get_metrics(client).status_code == 200


def test_only_get(transactional_db: None, settings: Any) -> None:
    settings.LONGPOLL_METRICS_TOKEN = TOKEN
    url = reverse("longpoll_metrics:metrics")
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert Client().post(url, headers=auth).status_code == 405


# -- settings and the optional dependency -------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x",
        TOKEN[:31],  # one short of the least
        "two words " + TOKEN,
        " " + TOKEN,
        TOKEN + "\u00e9",
        TOKEN + "\ud800",  # a lone surrogate could not even be encoded to compare
        12345,
        TOKEN.encode(),
        True,
    ],
)
def test_a_bad_token_setting_is_refused(settings: Any, token: Any) -> None:
    settings.LONGPOLL_METRICS_TOKEN = token
    errors = check_settings()
    assert [e.id for e in errors] == ["longpoll_app.E118"]
    assert "LONGPOLL_METRICS_TOKEN" in errors[0].msg


@pytest.mark.parametrize("token", [None, TOKEN, TOKEN[:32], "A" * 40 + "==", "a.b-c_d~e+f/" * 3])
def test_good_token_settings_pass(settings: Any, token: Any) -> None:
    settings.LONGPOLL_METRICS_TOKEN = token
    assert check_settings() == []


WITHOUT_PROMETHEUS = """
import importlib, pkgutil, sys
sys.modules["prometheus_client"] = None  # as if it were not installed
import django
django.setup()
import longpoll_app
for module in pkgutil.walk_packages(longpoll_app.__path__, "longpoll_app."):
    if not module.name.startswith("longpoll_app.metrics"):
        importlib.import_module(module.name)
from django.core.exceptions import ImproperlyConfigured
try:
    importlib.import_module("longpoll_app.metrics_urls")
except ImproperlyConfigured as exc:
    print("refused:", exc)
"""


def test_the_app_works_without_prometheus_client() -> None:
    """Only the metrics need the extra, and its absence is named where it matters."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PROMETHEUS],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"},
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout
    assert 'pip install "django-longpoll-channel[prometheus]"' in done.stdout
