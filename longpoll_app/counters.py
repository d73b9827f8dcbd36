"""What the app counts: message totals in the database, and this process's
latency histogram in memory. A leaf: any layer may count, and nothing here
imports the rest of the app.

* **Message totals** come from per-session columns that the queue updates
  anyway (``last_id`` counts every message ever queued, ``delivered`` and
  ``dropped`` are bumped in the same statements that delete those rows), plus
  ``StatsCounter`` rows that take over the totals of removed sessions and
  count what retention removes.
* **Latency** (from ``send_to_session`` storing a message to a poll reading it
  for its answer) is a histogram per process, in memory, published with the
  process's report (``reports``).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import F

from .models import StatsCounter

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
        self.sum = 0.0  # milliseconds: Prometheus's histogram _sum
        self._lock = threading.Lock()

    def record(self, milliseconds: float) -> None:
        index = bisect.bisect_left(BOUNDS, milliseconds)
        with self._lock:
            self.counts[index] = self.counts.get(index, 0) + 1
            self.max = max(self.max, milliseconds)
            self.sum += milliseconds

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: ``{"buckets": {index: count}, "max": ms, "sum": ms}``."""
        with self._lock:
            buckets = {str(i): n for i, n in sorted(self.counts.items())}
            return {"buckets": buckets, "max": round(self.max, 3), "sum": round(self.sum, 3)}

    def clear(self) -> None:
        with self._lock:
            self.counts.clear()
            self.max = 0.0
            self.sum = 0.0


latency = Histogram()  # this process's: queue.read records every message it reads


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
                high = min(high, ceiling) if ceiling is not None else high
                fraction = (rank - seen) / count if count else 1.0
                # Geometric inside a log-spaced bucket; linear in the first one.
                value = low * (high / low) ** fraction if low > 0 else high * fraction
                result[key] = round(value, 3)
                break
            seen += count
    return result
