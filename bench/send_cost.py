"""What one ``send_to_session`` costs the caller, and what a bulk send of 1,000 costs.

Sets Django up as bench/sender.py does (``project.settings``), on a database of
its own: a temporary SQLite file for ``embedded``; for ``scaled``, the
PostgreSQL database and Redis named by DATABASE_URL and REDIS_URL (both
required; the tables are created with ``migrate``). No server runs: this is
the sender's side only (store write plus channel-layer wake). The app is
imported from the tree named by BENCH_APP_ROOT (default: this file's
repository); --json-out writes the figures as JSON too (bench/ab.py reads it).

    python bench/send_cost.py --backend embedded --count 500
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/DB REDIS_URL=redis://127.0.0.1:6379/11 \\
        python bench/send_cost.py --backend scaled --count 500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.environ.get("BENCH_APP_ROOT") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)
WARMUP_CALLS = 20  # opens connections and fills caches before anything is timed
BULK_COUNT = 1000  # messages in the timed send_many_to_session call
BULK_REPEATS = 5  # bulk calls timed; the median is reported


def setup_django(backend: str, workdir: str) -> None:
    sys.path.insert(0, ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if backend == "embedded":
        os.environ.pop("DATABASE_URL", None)
        os.environ.pop("REDIS_URL", None)
        os.environ["SQLITE_PATH"] = os.path.join(workdir, "send_cost.sqlite3")
    elif not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        raise SystemExit("send_cost: --backend scaled needs DATABASE_URL and REDIS_URL")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def new_session_key() -> str:
    from longpoll_app import sessions

    session = sessions.session_store()
    session.save()
    assert session.session_key is not None
    return session.session_key


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def time_single_sends(key: str, count: int) -> list[float]:
    from longpoll_app.api import send_to_session

    for n in range(WARMUP_CALLS):
        send_to_session(key, "warm-up", n)
    costs = []
    for n in range(count):
        t = time.perf_counter()
        send_to_session(key, "bench", {"n": n})
        costs.append(time.perf_counter() - t)
    return costs


def time_bulk_sends(key: str) -> list[float]:
    from longpoll_app.api import send_many_to_session

    messages: list[tuple[str, Any]] = [("bench", {"n": n}) for n in range(BULK_COUNT)]
    send_many_to_session(key, messages[:10])  # warm-up
    totals = []
    for _ in range(BULK_REPEATS):
        t = time.perf_counter()
        send_many_to_session(key, messages)
        totals.append(time.perf_counter() - t)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "scaled"], default="embedded")
    parser.add_argument("--count", type=int, default=500, help="timed send_to_session calls")
    parser.add_argument("--json-out", help="also write the figures (seconds) to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="send-cost-") as workdir:
        setup_django(args.backend, workdir)
        from django.conf import settings

        # Large enough that the timed sends never hit the cap's drop path.
        settings.LONGPOLL_MAX_QUEUE = 10 * (args.count + BULK_COUNT * (BULK_REPEATS + 1))
        costs = sorted(time_single_sends(new_session_key(), args.count))
        p90 = costs[min(len(costs) - 1, int(len(costs) * 0.9))]
        print(f"backend {args.backend}: send_to_session x {args.count} to one session")
        print(f"  median {ms(statistics.median(costs))}, p90 {ms(p90)}, max {ms(costs[-1])}")
        totals = time_bulk_sends(new_session_key())
        print(f"send_many_to_session of {BULK_COUNT} to one session, {BULK_REPEATS} calls")
        print(f"  median {ms(statistics.median(totals))}, max {ms(max(totals))}")
        if args.json_out:
            import longpoll_app

            figures = {
                "backend": args.backend,
                "count": args.count,
                "app": os.path.dirname(os.path.abspath(longpoll_app.__file__)),
                "single_median_s": statistics.median(costs),
                "single_p90_s": p90,
                "single_max_s": costs[-1],
                "bulk_count": BULK_COUNT,
                "bulk_median_s": statistics.median(totals),
            }
            with open(args.json_out, "w") as fh:
                json.dump(figures, fh)


if __name__ == "__main__":
    main()
