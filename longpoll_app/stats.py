"""Numbers about the app: what each server process holds, and message totals.

Nothing here writes per poll or per send:

* **Held polls** are known only inside each process (``Hub.follows``). Every
  hub reports them, with the sessions that held a poll, every
  ``LONGPOLL_STATUS_INTERVAL`` seconds: one row in ``HubReport`` and the
  changes to its ``HeldSession`` rows. A report older than three intervals
  belongs to a process that stopped and is ignored.
* **Message totals** come from per-session columns that the queue updates
  anyway (``last_id`` counts every message ever queued, ``delivered`` and
  ``dropped`` are bumped in the same statements that delete those rows), plus
  ``StatsCounter`` rows that take over the totals of removed sessions and
  count what retention removes.
* **Latency** (from ``send_to_session`` storing a message to a poll reading it
  for its answer) is a histogram per process, in memory, published with the
  process's report.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import os
import random
import socket
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from .conf import conf
from .models import HeldSession, HubReport, LongpollSession, Message, StatsCounter

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("longpoll_app")

STALE_AFTER = 3  # reports: a hub that missed this many intervals is taken for stopped
CHUNK = 500  # rows per IN (...) list or bulk insert

# -- counters ----------------------------------------------------------------

# StatsCounter names. "sent", "delivered" and "dropped" hold the totals of
# session rows that were removed; the live rows hold the rest.
SENT, DELIVERED, DROPPED, EXPIRED, DISCARDED = (
    "sent",
    "delivered",
    "dropped",
    "expired",
    "discarded",
)


def add_counts(**amounts: int) -> None:
    """Add to the named counters (in the caller's transaction, if any)."""
    for name, amount in amounts.items():
        if not amount:
            continue
        if not StatsCounter.objects.filter(name=name).update(value=F("value") + amount):
            StatsCounter.objects.bulk_create([StatsCounter(name=name)], ignore_conflicts=True)
            StatsCounter.objects.filter(name=name).update(value=F("value") + amount)


def counters() -> dict[str, int]:
    return dict(StatsCounter.objects.values_list("name", "value"))


# -- latency histogram -----------------------------------------------------------

# Bucket i holds latencies up to BOUNDS[i] milliseconds: ten buckets per decade
# from 0.1 ms to about 3 hours (each bound 26% above the last), then "more".
BOUNDS: list[float] = [0.1 * 10 ** (i / 10) for i in range(81)]


class Histogram:
    """Counts of latencies per bucket, and the largest; thread-safe, and
    mergeable across processes."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.max = 0.0
        self._lock = threading.Lock()

    def record(self, milliseconds: float) -> None:
        index = bisect.bisect_left(BOUNDS, milliseconds)
        with self._lock:
            self.counts[index] = self.counts.get(index, 0) + 1
            self.max = max(self.max, milliseconds)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: ``{"buckets": {index: count}, "max": ms}``."""
        with self._lock:
            buckets = {str(i): n for i, n in sorted(self.counts.items())}
            return {"buckets": buckets, "max": round(self.max, 3)}

    def clear(self) -> None:
        with self._lock:
            self.counts.clear()
            self.max = 0.0


latency = Histogram()  # this process's: store.read records every message it reads


def record_latencies(created: Iterable[datetime], now: datetime) -> None:
    for created_at in created:
        latency.record(max(0.0, (now - created_at).total_seconds() * 1000))


def percentiles(
    histogram: dict[int, int], points: Iterable[float], ceiling: float | None = None
) -> dict[str, float | None]:
    """Percentiles (in ms) of a merged histogram, interpolated inside buckets.

    A bucket spans a factor of 1.26, so a value is within 26% of the truth;
    ``ceiling`` (the largest value seen) caps the estimate.
    """
    total = sum(histogram.values())
    result: dict[str, float | None] = {}
    for point in points:
        key = f"p{point:g}"
        if total == 0:
            result[key] = None
            continue
        rank = point / 100 * total
        seen = 0
        for index in sorted(histogram):
            count = histogram[index]
            if seen + count >= rank:
                low = BOUNDS[index - 1] if index > 0 else 0.0
                high = BOUNDS[index] if index < len(BOUNDS) else BOUNDS[-1] * 10
                high = min(high, ceiling) if ceiling else high
                fraction = (rank - seen) / count if count else 1.0
                # Geometric inside a log-spaced bucket; linear in the first one.
                value = low * (high / low) ** fraction if low > 0 else high * fraction
                result[key] = round(value, 3)
                break
            seen += count
    return result


# -- what each hub reports -------------------------------------------------------

_hub_numbers = itertools.count(1)


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Reporter:
    """Writes one hub's report: its row, and the changes to its held sessions."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.process = process_name()
        self.name = f"{self.process}:{next(_hub_numbers)}"
        self.started_at = timezone.now()
        self.written: set[int] | None = None  # held session pks in the table; None: unknown
        self.last_report = hub.loop.time()

    def held_sessions(self) -> set[int]:
        """Sessions with a poll held now, or at some time since the last report
        (a browser re-polls at once, so one may be between two polls just now)."""
        since = self.last_report
        return {
            follow.pk
            for follow in self.hub.follows.values()
            if follow.pk is not None and (follow.held > 0 or follow.used_at >= since)
        }

    async def report(self) -> None:
        from .hub import run_in_thread

        held = self.held_sessions()
        self.last_report = self.hub.loop.time()
        previous, self.written = self.written, None  # unknown until the write succeeds
        await run_in_thread(write_report)(
            self.name,
            self.process,
            self.started_at,
            self.hub.held_polls(),
            len(self.hub.follows),
            latency.snapshot(),
            held,
            previous,
        )
        self.written = held


def write_report(
    name: str,
    process: str,
    started_at: datetime,
    held_polls: int,
    sessions: int,
    histogram: dict[str, int],
    held: set[int],
    previous: set[int] | None,
) -> None:
    """Store a hub's report; write only the held sessions that changed."""
    with transaction.atomic():
        row, created = HubReport.objects.update_or_create(
            name=name,
            defaults={
                "updated_at": timezone.now(),
                "held_polls": held_polls,
                "sessions": sessions,
                "latency": histogram,
            },
            create_defaults={
                "process": process,
                "started_at": started_at,
                "updated_at": timezone.now(),
                "held_polls": held_polls,
                "sessions": sessions,
                "latency": histogram,
            },
        )
        if created or previous is None:
            HeldSession.objects.filter(hub=row).delete()
            previous = set()
        gone = sorted(previous - held)
        for start in range(0, len(gone), CHUNK):
            HeldSession.objects.filter(hub=row, session_pk__in=gone[start : start + CHUNK]).delete()
        HeldSession.objects.bulk_create(
            [HeldSession(hub=row, session_pk=pk) for pk in sorted(held - previous)],
            batch_size=CHUNK,
            ignore_conflicts=True,
        )


async def report_loop(hub: Hub) -> None:
    """Report the hub every ``LONGPOLL_STATUS_INTERVAL`` seconds, for as long as it runs."""
    reporter = Reporter(hub)
    # The first report comes after a random part of an interval, so that
    # processes started together do not all write at once.
    await asyncio.sleep(conf.LONGPOLL_STATUS_INTERVAL * random.uniform(0.5, 1.0))
    failing = False
    while True:
        try:
            await reporter.report()
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is down: try again next time
            if not failing:
                log.warning("longpoll: could not write this process's report: %s", exc)
            failing = True
        await asyncio.sleep(conf.LONGPOLL_STATUS_INTERVAL)


# -- reading the numbers ---------------------------------------------------------


def fresh_since(now: datetime | None = None) -> datetime:
    """Reports written before this moment come from processes that stopped."""
    now = now or timezone.now()
    return now - timedelta(seconds=STALE_AFTER * conf.LONGPOLL_STATUS_INTERVAL)


def held_session_pks() -> set[int]:
    """Sessions that held a poll in some running process at its last report."""
    return set(
        HeldSession.objects.filter(hub__updated_at__gte=fresh_since()).values_list(
            "session_pk", flat=True
        )
    )


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

    live = LongpollSession.objects.aggregate(
        sent=Sum("last_id"), delivered=Sum("delivered"), dropped=Sum("dropped")
    )
    totals = counters()
    cutoff = now - timedelta(seconds=conf.LONGPOLL_RETENTION)
    return {
        "generated_at": now.isoformat(),
        "report_interval": conf.LONGPOLL_STATUS_INTERVAL,
        "held_polls": sum(p["held_polls"] for p in processes.values()),
        "processes": list(processes.values()),
        "sessions": LongpollSession.objects.count(),
        "messages": {
            "sent": (live["sent"] or 0) + totals.get(SENT, 0),
            "delivered": (live["delivered"] or 0) + totals.get(DELIVERED, 0),
            "expired": totals.get(EXPIRED, 0),
            "dropped": (live["dropped"] or 0) + totals.get(DROPPED, 0),
            "discarded": totals.get(DISCARDED, 0),
            "pending": Message.objects.filter(created_at__gte=cutoff).count(),
        },
        "latency_ms": {
            "count": sum(merged.values()),
            **percentiles(merged, (50, 90, 99), slowest),
            "max": slowest,
        },
    }
