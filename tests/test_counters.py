"""What the app counts: message totals in StatsCounter rows, and the latency
histogram with its percentiles."""

from __future__ import annotations

import bisect
import itertools
import math
import random
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from longpoll_app import counters
from longpoll_app.counters import BOUNDS, Histogram, percentiles
from longpoll_app.models import StatsCounter

BUCKET_RATIO = 10**0.1  # each bound over the last: ten buckets per decade
WITHIN = 0.26  # relative error of a percentile inside a log-spaced bucket
POINTS = (0, 1, 25, 50, 75, 90, 99, 99.9, 100)  # percentiles the tests ask for


@pytest.fixture(autouse=True)
def _fresh_latency() -> Iterator[None]:
    counters.latency.clear()
    yield
    counters.latency.clear()


# -- BOUNDS -------------------------------------------------------------------


def test_bounds_span_a_tenth_of_a_millisecond_to_hours_in_even_steps() -> None:
    assert len(BOUNDS) == 81
    assert BOUNDS[0] == pytest.approx(0.1)
    assert BOUNDS[10] == pytest.approx(1.0) and BOUNDS[40] == pytest.approx(1000.0)
    assert 2.5 * 3600_000 < BOUNDS[-1] < 3 * 3600_000  # "about 3 hours", in ms
    ratios = [high / low for low, high in itertools.pairwise(BOUNDS)]
    assert all(ratio == pytest.approx(BUCKET_RATIO) for ratio in ratios)
    assert BUCKET_RATIO < 1 + WITHIN  # what the docstring's "within 26%" rests on


# -- Histogram ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("milliseconds", "index"),
    [
        (0.0, 0),
        (0.05, 0),
        (BOUNDS[0], 0),  # a bound belongs to the bucket it closes
        (math.nextafter(BOUNDS[0], math.inf), 1),
        (BOUNDS[40], 40),
        (math.nextafter(BOUNDS[40], math.inf), 41),
        (BOUNDS[-1], len(BOUNDS) - 1),
        (math.nextafter(BOUNDS[-1], math.inf), len(BOUNDS)),  # "more"
        (1e12, len(BOUNDS)),
    ],
)
def test_record_counts_a_latency_in_its_bucket(milliseconds: float, index: int) -> None:
    histogram = Histogram()
    histogram.record(milliseconds)
    assert histogram.counts == {index: 1}
    assert histogram.max == milliseconds and histogram.sum == milliseconds


def test_snapshot_is_json_ready_and_clear_empties_it() -> None:
    histogram = Histogram()
    for ms in (500.0, 0.01, 2.00049, 500.0):
        histogram.record(ms)
    snapshot = histogram.snapshot()
    # Keys are strings (JSON objects have no others), in bucket order.
    small, large = bisect.bisect_left(BOUNDS, 2.00049), bisect.bisect_left(BOUNDS, 500.0)
    assert snapshot["buckets"] == {"0": 1, str(small): 1, str(large): 2}
    assert list(snapshot["buckets"]) == ["0", str(small), str(large)]
    assert snapshot["max"] == 500.0
    assert snapshot["sum"] == round(histogram.sum, 3) == 1002.01  # ms, to the microsecond
    histogram.clear()
    assert histogram.snapshot() == {"buckets": {}, "max": 0.0, "sum": 0.0}


def test_a_snapshot_is_a_copy() -> None:
    histogram = Histogram()
    histogram.record(1.0)
    snapshot = histogram.snapshot()
    histogram.record(1.0)
    assert sum(snapshot["buckets"].values()) == 1


def test_record_from_many_threads_loses_no_count() -> None:
    histogram = Histogram()
    threads_count, per_thread = 8, 5000
    start = threading.Barrier(threads_count)

    def record_many(ms: float) -> None:
        start.wait()
        for _ in range(per_thread):
            histogram.record(ms)

    # Switch threads as often as the interpreter can, so that an unlocked
    # read-modify-write of a count would lose some.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [
            threading.Thread(target=record_many, args=(float(n + 1),)) for n in range(threads_count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert sum(histogram.counts.values()) == threads_count * per_thread
    assert histogram.max == float(threads_count)
    # Whole milliseconds add up exactly in a float.
    assert histogram.sum == per_thread * sum(range(1, threads_count + 1))


def test_record_latencies_measures_from_creation_and_never_goes_negative() -> None:
    now = timezone.now()
    created = [now - timedelta(milliseconds=250), now + timedelta(seconds=2)]  # a clock ahead
    counters.record_latencies(created, now)
    snapshot = counters.latency.snapshot()
    assert snapshot["max"] == 250.0 and snapshot["sum"] == 250.0
    assert snapshot["buckets"]["0"] == 1  # the future one counts as 0 ms


# -- percentiles ------------------------------------------------------------------


def test_percentiles_of_nothing_are_none() -> None:
    assert percentiles({}, POINTS) == {f"p{p:g}": None for p in POINTS}
    assert percentiles({}, (50,), ceiling=10.0) == {"p50": None}
    assert list(percentiles({}, (50, 99.9, 90.0))) == ["p50", "p99.9", "p90"]


def test_percentiles_inside_one_bucket_interpolate_geometrically() -> None:
    index = 40  # latencies above BOUNDS[39], up to 1000 ms
    low, high = BOUNDS[index - 1], BOUNDS[index]
    result = percentiles({index: 10}, (0, 50, 100))
    assert result["p0"] == round(low, 3)
    assert result["p50"] == pytest.approx(math.sqrt(low * high), abs=1e-3)
    assert result["p100"] == round(high, 3)


def test_the_first_bucket_interpolates_linearly_from_zero() -> None:
    result = percentiles({0: 4}, (25, 50, 100))
    assert result == {"p25": round(BOUNDS[0] / 4, 3), "p50": 0.05, "p100": BOUNDS[0]}


def test_the_last_bucket_reaches_ten_times_the_last_bound() -> None:
    top = len(BOUNDS)  # "more": above BOUNDS[-1]
    assert percentiles({top: 1}, (100,)) == {"p100": round(BOUNDS[-1] * 10, 3)}


def test_the_ceiling_caps_the_estimate() -> None:
    index = 40
    result = percentiles({index: 10}, (50, 100), ceiling=950.0)
    assert result["p100"] == pytest.approx(950.0)
    assert result["p50"] == pytest.approx(math.sqrt(BOUNDS[index - 1] * 950.0), abs=1e-3)
    top = len(BOUNDS)  # the largest value seen bounds the open-ended bucket too
    assert percentiles({top: 3}, (100,), ceiling=2e7)["p100"] == pytest.approx(2e7)
    # A ceiling above the bucket changes nothing.
    assert percentiles({index: 10}, (100,), ceiling=5000.0) == {"p100": round(BOUNDS[index], 3)}


def test_a_ceiling_of_zero_still_caps() -> None:
    histogram = Histogram()
    for _ in range(4):
        histogram.record(0.0)
    snapshot = histogram.snapshot()
    merged = {int(i): n for i, n in snapshot["buckets"].items()}
    result = percentiles(merged, (50,), ceiling=snapshot["max"])
    assert result["p50"] is not None and result["p50"] <= snapshot["max"]


def exact_percentile(values: list[float], point: float) -> float:
    """The value of rank ``point``% (the smallest with at least that share at or below it)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(point / 100 * len(ordered)))
    return ordered[rank - 1]


def distributions() -> Iterator[tuple[str, list[float]]]:
    rng = random.Random(20240611)  # fixed: the same samples every run
    yield "log-uniform", [10 ** rng.uniform(-0.6, 6.5) for _ in range(5000)]
    yield "one-value", [42.0] * 100
    yield (
        "two-clusters",
        [rng.uniform(1.0, 1.1) for _ in range(90)] + [rng.uniform(9000, 9100) for _ in range(10)],
    )
    yield "one-outlier", [5.0] * 999 + [3_000_000.0]
    yield "few", [0.3, 7.0, 7.0]
    yield "on-bounds", [BOUNDS[i] for i in range(1, 70, 3)]
    yield "exponential", [rng.expovariate(1 / 80.0) + 0.2 for _ in range(3000)]


@pytest.mark.parametrize(
    "values", [pytest.param(values, id=name) for name, values in distributions()]
)
def test_percentiles_are_within_26_percent_of_the_truth(values: list[float]) -> None:
    histogram = Histogram()
    for ms in values:
        histogram.record(ms)
    snapshot = histogram.snapshot()
    merged = {int(i): n for i, n in snapshot["buckets"].items()}
    result = percentiles(merged, POINTS, snapshot["max"])  # as stats.collect calls it
    estimates: list[float] = []
    for point in POINTS:
        estimate, truth = result[f"p{point:g}"], exact_percentile(values, point)
        assert estimate is not None
        assert abs(estimate - truth) / truth < WITHIN, (point, estimate, truth)
        assert estimate <= snapshot["max"]  # never beyond what was seen
        estimates.append(estimate)
    assert estimates == sorted(estimates)  # a higher percentile is never lower


# -- add_counts and counters() ------------------------------------------------------


def test_add_counts_creates_the_row_then_adds(transactional_db: None) -> None:
    assert counters.counters() == {}
    counters.add_counts(**{counters.SENT: 3})
    assert counters.counters() == {"sent": 3}
    counters.add_counts(**{counters.SENT: 4, counters.EXPIRED: 2})
    assert counters.counters() == {"sent": 7, "expired": 2}
    assert StatsCounter.objects.count() == 2  # one row per name, however often added to


def test_zero_amounts_write_nothing(transactional_db: None) -> None:
    with CaptureQueriesContext(connection) as queries:
        counters.add_counts(sent=0, delivered=0)
    assert len(queries) == 0
    assert not StatsCounter.objects.exists()  # no row made for a zero either
    counters.add_counts(sent=0, delivered=2)
    assert counters.counters() == {"delivered": 2}


def test_counts_added_in_a_rolled_back_transaction_do_not_stay(transactional_db: None) -> None:
    counters.add_counts(sent=1)

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        counters.add_counts(sent=5, discarded=3)  # one row updated, one created
        assert counters.counters() == {"sent": 6, "discarded": 3}
        raise Abort
    assert counters.counters() == {"sent": 1}


def test_percentiles_of_a_known_distribution() -> None:
    histogram = counters.Histogram()
    for ms in range(1, 1001):  # 1 ms to 1 s, evenly
        histogram.record(float(ms))
    snapshot = histogram.snapshot()
    merged = {int(i): n for i, n in snapshot["buckets"].items()}
    result = counters.percentiles(merged, (50, 90, 99), snapshot["max"])
    for point, expected in (("p50", 500), ("p90", 900), ("p99", 990)):
        value = result[point]
        assert value is not None and abs(value - expected) / expected < 0.26, (point, value)
    assert snapshot["max"] == 1000.0
    assert counters.percentiles({}, (50,)) == {"p50": None}
