"""Reading the app's numbers, for the admin, ``longpoll_stats``, the stats
view and the metrics: what the running processes hold (their reports, see
``reports``) and the message totals (see ``counters``). Nothing here writes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from . import counters, sql
from .conf import conf
from .models import HubReport, LongpollSession
from .queue import oldest_kept

STALE_AFTER = 3  # reports: a hub that missed this many intervals is taken for stopped


def fresh_since(now: datetime | None = None) -> datetime:
    """Reports written before this moment come from processes that stopped."""
    now = now or timezone.now()
    return now - timedelta(seconds=STALE_AFTER * conf.LONGPOLL_STATUS_INTERVAL)


def collect() -> dict[str, Any]:
    """Everything ``longpoll_stats`` and the stats view show, as JSON-ready data."""
    now = timezone.now()
    reports = list(
        HubReport.objects.filter(updated_at__gte=fresh_since(now)).order_by("process", "name")
    )
    processes: dict[str, dict[str, Any]] = {}
    histograms: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for report in reports:
        entry = processes.setdefault(
            report.process,
            {
                "process": report.process,
                "held_polls": 0,
                "sessions": 0,
                "hubs": 0,
                "started_at": report.started_at.isoformat(),
                "reported_at": report.updated_at.isoformat(),
            },
        )
        entry["held_polls"] += report.held_polls
        entry["sessions"] += report.sessions
        entry["hubs"] += 1
        entry["reported_at"] = max(entry["reported_at"], report.updated_at.isoformat())
        # Every hub of a process publishes the same process-wide histogram: keep the newest.
        newest = histograms.get(report.process)
        if newest is None or newest[0] < report.updated_at:
            histograms[report.process] = (report.updated_at, report.latency)
    merged: dict[int, int] = {}
    slowest: float | None = None
    for _, histogram in histograms.values():
        for index, count in histogram.get("buckets", {}).items():
            merged[int(index)] = merged.get(int(index), 0) + int(count)
        if histogram.get("buckets"):
            slowest = max(slowest or 0.0, float(histogram.get("max", 0.0)))

    return {
        "generated_at": now.isoformat(),
        "report_interval": conf.LONGPOLL_STATUS_INTERVAL,
        "held_polls": sum(p["held_polls"] for p in processes.values()),
        "processes": list(processes.values()),
        "sessions": LongpollSession.objects.count(),
        "messages": message_counts(now),
        "latency_ms": {
            "count": sum(merged.values()),
            **counters.percentiles(merged, (50, 90, 99), slowest),
            "max": slowest,
        },
    }


def message_counts(now: datetime | None = None) -> dict[str, int]:
    """Messages ever sent, how they left the queues, and how many are pending.

    One statement, so one snapshot of the tables: with two, a session removed in
    between would count twice (its totals live, then moved to the counters), and
    a total that then went down would read as a counter reset to Prometheus.
    """
    cutoff = oldest_kept(now or timezone.now())
    params = [*COUNTED, connection.ops.adapt_datetimefield_value(cutoff)]
    with connection.cursor() as cursor:
        cursor.execute(sql.message_counts(connection.vendor, len(COUNTED)), params)
        row = [int(value) for value in cursor.fetchone()]
    live = dict(zip(sql.LIVE_TOTALS, row, strict=False))
    counted = dict(zip(COUNTED, row[len(sql.LIVE_TOTALS) :], strict=False))
    return {
        "sent": live["last_id"] + counted[counters.SENT],
        "delivered": live["delivered"] + counted[counters.DELIVERED],
        "expired": counted[counters.EXPIRED],
        "dropped": live["dropped"] + counted[counters.DROPPED],
        "discarded": counted[counters.DISCARDED],
        "pending": row[-1],
    }


COUNTED = (
    counters.SENT,
    counters.DELIVERED,
    counters.DROPPED,
    counters.EXPIRED,
    counters.DISCARDED,
)  # StatsCounter rows read
