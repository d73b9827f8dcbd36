"""Sender: messages at a steady rate to random sessions, or a burst to one.

Project mode calls ``longpoll_app.api.send_to_session`` in a Django-configured
process (run it with the server's environment: DJANGO_SETTINGS_MODULE,
SQLITE_PATH or DATABASE_URL/REDIS_URL), importing the app from the tree named by
BENCH_APP_ROOT (default: this file's repository; bench/ab.py points it at the
tree under test, since the send path is part of what is measured). Baseline mode POSTs to the Tornado
baseline's ``/send`` endpoint over one keep-alive connection to 127.0.0.1.

Every message's data is ``{"t": time.time() just before the send call,
"seq": n, "run": run id}``. The list of (seq, browser index, t) goes to --out as JSON, with
the time each send call took.

    python bench/sender.py --mode project --sessions S --rate 100 --duration 10 --out F
    python bench/sender.py --mode project --sessions S --burst 1000 --burst-index 17 --out F
    python bench/sender.py ... --burst 1000 --atomic   (one transaction; seqs from 2,000,000)
    python bench/sender.py ... --burst 1000 --many     (one send_many_to_session; from 3,000,000)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import inspect
import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

BURST_SEQ = 1_000_000  # must match bench/loadgen.py
# The tree whose longpoll_app and project are imported (set by bench/servers.py's project_env).
APP_ROOT = os.environ.get("BENCH_APP_ROOT") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)


def load_sessions(path: str, mode: str, total: int) -> list[tuple[int, str]]:
    if mode == "baseline":
        return [(i, f"b{i}") for i in range(total)]
    out = []
    with open(path) as fh:
        for line in fh:
            idx, session, _csrf = line.split()
            if int(idx) < total:
                out.append((int(idx), session))
    out.sort()
    if len(out) != total:
        raise SystemExit(f"sender: {len(out)} sessions in {path}, expected {total}")
    return out


def project_sender() -> Callable[[str, dict[str, Any]], None]:
    sys.path.insert(0, APP_ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from longpoll_app.api import send_to_session

    if inspect.iscoroutinefunction(send_to_session):
        loop = asyncio.new_event_loop()

        def send(session: str, data: dict[str, Any]) -> None:
            loop.run_until_complete(send_to_session(session, "bench", data))

        return send

    def send_sync(session: str, data: dict[str, Any]) -> None:
        send_to_session(session, "bench", data)

    return send_sync


def project_many_sender() -> Callable[[str, list[dict[str, Any]]], None]:
    """Sends a whole burst in one ``send_many_to_session`` call."""
    project_sender()  # sets Django up
    from longpoll_app.api import send_many_to_session

    def send_many(session: str, datas: list[dict[str, Any]]) -> None:
        send_many_to_session(session, [("bench", data) for data in datas])

    return send_many


def baseline_sender(port: int) -> Callable[[str, dict[str, Any]], None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(session: str, data: dict[str, Any]) -> None:
        conn.request(
            "POST",
            f"/send?s={session}",
            body=json.dumps(data),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            raise RuntimeError(f"baseline /send answered {resp.status}")

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["project", "baseline"], required=True)
    parser.add_argument("--sessions", help="'index sessionid csrftoken' lines (project)")
    parser.add_argument("--total", type=int, required=True, help="browsers in the run")
    parser.add_argument("--port", type=int, help="baseline server port")
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of steady sending")
    parser.add_argument(
        "--burst", type=int, default=0, help="send this many to one browser instead"
    )
    parser.add_argument("--burst-index", type=int, default=0)
    parser.add_argument(
        "--atomic",
        action="store_true",
        help="project: send the burst inside one transaction.atomic() (visible at commit)",
    )
    parser.add_argument(
        "--many",
        action="store_true",
        help="project: send the burst in one send_many_to_session call",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=30.0,
        help="stop sending after this long, even if not all were sent (reported)",
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--run-id", required=True, help="goes into every message's data")
    args = parser.parse_args()
    if args.many and (args.mode != "project" or args.atomic or not args.burst):
        parser.error("--many needs --mode project and --burst, and excludes --atomic")

    sessions = load_sessions(args.sessions, args.mode, args.total)
    send = project_sender() if args.mode == "project" else baseline_sender(args.port)
    rng = random.Random(args.seed)
    sent: list[tuple[int, int, float]] = []
    call_times: list[float] = []
    errors: list[str] = []
    extra: dict[str, Any] = {}
    if args.mode == "project":  # where send_to_session came from (bench/ab.py checks it)
        extra["app"] = os.path.dirname(os.path.abspath(sys.modules["longpoll_app"].__file__ or ""))

    # One warm-up message (seq -1, left out of every figure) so the first
    # measured send does not pay for opening connections.
    try:
        send(sessions[0][1], {"t": time.time(), "seq": -1, "run": args.run_id})
    except Exception as exc:  # report, don't hide
        errors.append(f"warm-up: {exc!r}")
    time.sleep(0.5)

    lateness: list[float] = []
    if args.many:
        idx, session = sessions[args.burst_index]
        base = BURST_SEQ * 3
        send_many = project_many_sender()
        t = time.time()  # every message carries the call's start
        try:
            send_many(
                session,
                [{"t": t, "seq": base + k, "run": args.run_id} for k in range(args.burst)],
            )
            sent = [(base + k, idx, t) for k in range(args.burst)]
        except Exception as exc:  # the call failed: nothing was sent
            errors.append(repr(exc))
        call_times.append(time.time() - t)
        extra["call_t"] = t
        extra["call_s"] = call_times[-1]
    elif args.burst:
        idx, session = sessions[args.burst_index]
        base = BURST_SEQ * (2 if args.atomic else 1)
        block: Any = contextlib.nullcontext()
        if args.atomic:
            from django.db import transaction

            block = transaction.atomic()
        stop_at = time.time() + args.max_seconds
        try:
            with block:
                for k in range(args.burst):
                    if time.time() > stop_at:
                        extra["cut_short"] = True  # the rest were never sent
                        break
                    t = time.time()
                    try:
                        send(session, {"t": t, "seq": base + k, "run": args.run_id})
                        sent.append((base + k, idx, t))
                    except Exception as exc:
                        errors.append(repr(exc))
                    call_times.append(time.time() - t)
                commit_started = time.time()
        except Exception as exc:  # the commit failed: nothing was sent
            errors.append(f"commit: {exc!r}")
            sent = []
        if args.atomic:
            extra["commit_t"] = commit_started  # the messages become visible from here
            extra["commit_s"] = time.time() - commit_started
    else:
        count = int(args.rate * args.duration)
        t0 = time.time() + 0.05
        stop_at = t0 + args.max_seconds
        for k in range(count):
            if time.time() > stop_at:
                extra["cut_short"] = True  # the sender fell behind: the rest were never sent
                break
            due = t0 + k / args.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            else:
                lateness.append(-delay)
            idx, session = sessions[rng.randrange(len(sessions))]
            t = time.time()
            try:
                send(session, {"t": t, "seq": k, "run": args.run_id})
                sent.append((k, idx, t))
            except Exception as exc:
                errors.append(repr(exc))
            call_times.append(time.time() - t)
    call_times.sort()
    with open(args.out, "w") as fh:
        json.dump(
            {
                "sent": sent,
                "errors": errors[:50],
                "n_errors": len(errors),
                "call_p50": call_times[len(call_times) // 2] if call_times else None,
                "call_max": call_times[-1] if call_times else None,
                "late_sends": len(lateness),
                "first_t": sent[0][2] if sent else None,
                "last_t": sent[-1][2] if sent else None,
                "last_done": time.time(),
                **extra,
            },
            fh,
        )


if __name__ == "__main__":
    main()
