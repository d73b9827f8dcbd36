"""Prometheus metrics: what ``stats`` already counts, in the text format scrapers read.

Optional: it needs ``prometheus-client`` (``pip install
"django-longpoll-channel[prometheus]"``); nothing else in the app imports this
module. docs/metrics.md lists every metric.

Per-process facts come from the reports that every server process writes to
the database every ``LONGPOLL_STATUS_INTERVAL`` seconds (``HubReport``), each
labelled ``process="host:pid"``, so a scrape that a load balancer sends to any
one process reports every live process. Message totals, sessions and pending
messages are the database's, for all processes together. A scrape costs three
queries; no poll and no send writes anything for it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # the URLconf that includes metrics_urls says so at start-up
    raise ImproperlyConfigured(
        "longpoll_app.metrics needs prometheus-client: "
        'pip install "django-longpoll-channel[prometheus]".'
    ) from exc

from . import counters, stats
from .conf import conf
from .models import HubReport, LongpollSession

# Every fifth bound of the stats histogram (each 1.26 times the last): from
# 0.1 ms to 10,000 s in half decades. A count at one of them is exact.
EXPORTED_BUCKETS = range(0, len(counters.BOUNDS), 5)  # indices into counters.BOUNDS
MS_PER_SECOND = 1000.0
HTTP_WHITESPACE = " \t"  # RFC 9110's OWS

PROCESS = ["process"]  # the label of every per-process metric
# collect()'s message counts that only grow, with their metric names.
MESSAGE_COUNTERS = {
    "sent": "Messages queued by send_to_session and its kin.",
    "delivered": "Messages acknowledged by a later poll of their session.",
    "expired": "Messages removed unacknowledged after LONGPOLL_RETENTION.",
    "dropped": "Messages dropped as the oldest of a queue over LONGPOLL_MAX_QUEUE.",
    "discarded": "Messages removed unexpired with their session (logout, clean-up) "
    "or by the admin.",
}


@dataclass
class ProcessReport:
    """What the hubs of one server process last reported, together."""

    held_polls: int = 0
    sessions: int = 0
    started_at: datetime | None = None
    reported_at: datetime | None = None
    latency: dict[str, Any] = field(default_factory=dict)  # the newest hub's histogram
    outage: int = 0  # hubs that cannot get wake-ups now
    outages: int = 0


def live_processes(now: datetime) -> dict[str, ProcessReport]:
    """The fresh reports, by process: a stopped process's are left out, as in ``collect()``."""
    processes: dict[str, ProcessReport] = {}
    reports = HubReport.objects.filter(updated_at__gte=stats.fresh_since(now))
    for report in reports.order_by("process", "updated_at"):
        entry = processes.setdefault(report.process, ProcessReport())
        entry.held_polls += report.held_polls
        entry.sessions += report.sessions
        entry.started_at = min(entry.started_at or report.started_at, report.started_at)
        entry.reported_at = report.updated_at  # newest last, by the ordering
        # Every hub publishes the same process-wide histogram: the newest wins.
        entry.latency = report.latency or {}
        layer = entry.latency.get("layer") or {}
        entry.outage += int(layer.get("outage", 0))
        entry.outages += int(layer.get("outages", 0))
    return processes


def latency_buckets(histogram: dict[str, Any]) -> list[tuple[str, float]]:
    """Cumulative counts at the exported bounds, in seconds, and +Inf."""
    counts = {int(index): int(n) for index, n in histogram.get("buckets", {}).items()}
    buckets: list[tuple[str, float]] = []
    for index in EXPORTED_BUCKETS:
        # The histogram's bucket i holds latencies above BOUNDS[i - 1], up to BOUNDS[i].
        below = sum(n for i, n in counts.items() if i <= index)
        bound = floatToGoString(counters.BOUNDS[index] / MS_PER_SECOND)  # type: ignore[no-untyped-call]
        buckets.append((bound, float(below)))
    buckets.append(("+Inf", float(sum(counts.values()))))
    return buckets


class LongpollCollector(Collector):
    """A custom collector: every scrape reads the reports and totals afresh.

    The view below serves it in a registry of its own; a project with its
    own exposition may instead ``REGISTRY.register(LongpollCollector())``.
    """

    def describe(self) -> Iterable[Metric]:
        # Names only, so that registering does not query the database.
        return self._families({}, None, None, timezone.now())

    def collect(self) -> Iterable[Metric]:
        now = timezone.now()
        return self._families(
            live_processes(now), stats.message_counts(now), LongpollSession.objects.count(), now
        )

    def _families(
        self,
        processes: dict[str, ProcessReport],
        messages: dict[str, int] | None,
        sessions: int | None,
        now: datetime,
    ) -> list[Metric]:
        return [
            *self._process_families(processes, now),
            *self._message_families(messages, sessions),
        ]

    def _process_families(
        self, processes: dict[str, ProcessReport], now: datetime
    ) -> Iterator[Metric]:
        held = GaugeMetricFamily(
            "longpoll_held_polls", "Polls held open, at the process's last report.", labels=PROCESS
        )
        followed = GaugeMetricFamily(
            "longpoll_followed_sessions",
            "Sessions the process follows (polled there lately), at its last report.",
            labels=PROCESS,
        )
        started = GaugeMetricFamily(
            "longpoll_process_start_time_seconds",
            "When the process's hub started, in seconds since the epoch.",
            labels=PROCESS,
        )
        age = GaugeMetricFamily(
            "longpoll_report_age_seconds",
            "Seconds since the process's last report (reports older than three "
            "LONGPOLL_STATUS_INTERVALs are left out).",
            labels=PROCESS,
        )
        outage = GaugeMetricFamily(
            "longpoll_layer_outage",
            "1 while wake-ups cannot arrive: the channel layer (or, without one, the "
            "check of the store for other processes' sends) is failing; polls read the store.",
            labels=PROCESS,
        )
        outages = CounterMetricFamily(
            "longpoll_layer_outages",
            "Layer outages begun since the process started.",
            labels=PROCESS,
        )
        latency = HistogramMetricFamily(
            "longpoll_delivery_latency_seconds",
            "From send_to_session storing a message to a poll reading it for its answer, "
            "since the process started.",
            labels=PROCESS,
        )
        for name, report in sorted(processes.items()):
            label = [name]
            held.add_metric(label, report.held_polls)
            followed.add_metric(label, report.sessions)
            if report.started_at is not None:
                started.add_metric(label, report.started_at.timestamp())
            if report.reported_at is not None:
                age.add_metric(label, max(0.0, (now - report.reported_at).total_seconds()))
            outage.add_metric(label, report.outage)
            outages.add_metric(label, report.outages)
            total = report.latency.get("sum")  # absent from reports of older versions
            seconds = None if total is None else float(total) / MS_PER_SECOND
            latency.add_metric(label, latency_buckets(report.latency), seconds)
        return iter([held, followed, started, age, outage, outages, latency])

    def _message_families(
        self, messages: dict[str, int] | None, sessions: int | None
    ) -> Iterator[Metric]:
        for name, documentation in MESSAGE_COUNTERS.items():
            value = None if messages is None else messages[name]
            yield CounterMetricFamily(f"longpoll_messages_{name}", documentation, value=value)
        yield GaugeMetricFamily(
            "longpoll_messages_pending",
            "Messages stored and not yet past LONGPOLL_RETENTION: the queues' depth.",
            value=None if messages is None else messages["pending"],
        )
        yield GaugeMetricFamily(
            "longpoll_sessions", "Sessions that have a message queue.", value=sessions
        )


registry = CollectorRegistry()
registry.register(LongpollCollector())


# -- the view -------------------------------------------------------------------


def presented_token(request: HttpRequest) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header, if any.

    The scheme is case-insensitive (RFC 9110); spaces and tabs around the token,
    HTTP's own whitespace, are ignored (no other whitespace is).
    """
    header = request.headers.get("Authorization", "").strip(HTTP_WHITESPACE)
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip(HTTP_WHITESPACE) or None


def token_matches(presented: str, expected: str) -> bool:
    # The setting is ASCII (system check E118); a header that is not cannot match.
    if not presented.isascii():
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def refusal(request: HttpRequest) -> JsonResponse | None:
    """A 403 unless the request brings the token or a staff member's session."""
    expected = conf.LONGPOLL_METRICS_TOKEN
    presented = presented_token(request)
    if expected is not None and presented is not None and token_matches(presented, expected):
        return None
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return None
    if presented is None:
        detail = (
            "Send Authorization: Bearer <LONGPOLL_METRICS_TOKEN>, "
            "or log in as a staff member, to see the metrics."
        )
    else:
        detail = "The bearer token is not LONGPOLL_METRICS_TOKEN (or that setting is not set)."
    return JsonResponse({"error": "forbidden", "detail": detail}, status=403)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Every live process's numbers in Prometheus's text format."""
    return refusal(request) or HttpResponse(
        generate_latest(registry), content_type=CONTENT_TYPE_LATEST
    )
