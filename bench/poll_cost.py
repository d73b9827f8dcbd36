"""What one idle poll costs the app itself, without a server or a network.

Drives ``project.asgi:application`` and a bare ASGI app (the floor's: read the
body, wait, answer empty) with the same in-process ASGI calls on uvloop, and
reports, for each:

* CPU per poll: BROWSERS browsers each poll ROUNDS times with a hold of HOLD_S, the
  app on its idle path (a session it follows, a cursor it knows);
* tracked objects per held poll: the objects CPython's cyclic collector
  tracks, counted by type with 1,000 polls held and without them. They are
  what each young collection scans, and they grow with N.

The server's own work (parsing, sockets, the response on the wire) is the same
for both and left out; bench/run.py measures the whole. A temporary SQLite
database holds the sessions.

    python bench/poll_cost.py
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROWSERS = 1000  # polling at once, each with its own session
ROUNDS = 40  # polls each browser makes in the CPU measurement
HOLD_S = 0.002  # seconds each poll is held in the CPU measurement
COUNT_HOLD_S = 60.0  # seconds each poll is held while objects are counted
WARMUP_BROWSERS = 50

hold_s = HOLD_S  # the bare app's hold; the project's is LONGPOLL_TIMEOUT

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The floor's app (bench/floor_app.py), with the hold of this run."""
    await receive()
    await asyncio.sleep(hold_s)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def poll_call(session: tuple[str, str], cursor: int | None) -> tuple[dict[str, Any], Any, Any]:
    """The scope, receive and send of one poll, as a server gives them."""
    key, csrf = session
    body = b'{"cursor": %s}' % (b"null" if cursor is None else str(cursor).encode())
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/longpoll/poll/",
        "raw_path": b"/longpoll/poll/",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"x-csrftoken", csrf.encode()),
            (b"cookie", f"sessionid={key}; csrftoken={csrf}".encode()),
            (b"origin", b"http://127.0.0.1:8000"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    answered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] not in (200, 204):
            raise SystemExit(f"poll_cost: the app answered {message['status']}")
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    return scope, receive, send


async def browser(app: App, session: tuple[str, str], rounds: int) -> None:
    cursor = None
    for _ in range(rounds):
        await app(*poll_call(session, cursor))
        cursor = 0  # nothing was ever sent: 0 is the newest id


async def cpu_per_poll(app: App, sessions: list[tuple[str, str]]) -> float:
    """Microseconds of this process's CPU per poll, first polls excluded."""
    await asyncio.gather(*(browser(app, s, 1) for s in sessions))  # first polls: checks
    await asyncio.gather(*(browser(app, s, 2) for s in sessions[:WARMUP_BROWSERS]))
    started = time.process_time()
    await asyncio.gather(*(browser(app, s, ROUNDS) for s in sessions))
    return (time.process_time() - started) / (len(sessions) * ROUNDS) * 1e6


def tracked() -> collections.Counter[str]:
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


async def objects_per_held_poll(app: App, sessions: list[tuple[str, str]]) -> dict[str, float]:
    before = tracked()
    held = [asyncio.ensure_future(app(*poll_call(s, 0))) for s in sessions]
    await asyncio.sleep(0.5)  # every poll is past its checks and waiting
    after = tracked()
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    await asyncio.sleep(0.1)  # the loop lets go of the cancelled timers
    return {name: (after[name] - before[name]) / len(sessions) for name in after}


def setup_django(workdir: str) -> list[tuple[str, str]]:
    """Django on a temporary SQLite file, as bench/send_cost.py sets it up; the sessions."""
    sys.path.insert(0, ROOT)
    os.environ["DJANGO_DEBUG"] = "0"
    from bench.send_cost import setup_django as setup_embedded_django

    setup_embedded_django("embedded", workdir)
    from django.conf import settings

    settings.LONGPOLL_GC_INTERVAL = 0  # the collector's cost is not the poll's (run.py has it)
    from django.contrib.sessions.backends.db import SessionStore
    from django.middleware.csrf import _get_new_csrf_string

    sessions = []
    for _ in range(BROWSERS):
        store = SessionStore()
        store.create()
        sessions.append((str(store.session_key), _get_new_csrf_string()))
    return sessions


async def measure(sessions: list[tuple[str, str]]) -> None:
    global hold_s
    from django.test import override_settings  # it tells the app's cached settings
    from project.asgi import application

    apps: dict[str, App] = {"bare app": bare_app, "project": application}
    hold_s = HOLD_S
    with override_settings(LONGPOLL_TIMEOUT=HOLD_S):
        cpu = {name: await cpu_per_poll(app, sessions) for name, app in apps.items()}
    hold_s = COUNT_HOLD_S
    with override_settings(LONGPOLL_TIMEOUT=COUNT_HOLD_S):
        objects = {name: await objects_per_held_poll(app, sessions) for name, app in apps.items()}
    for name in apps:
        counts = {k: v for k, v in objects[name].items() if v >= 0.1}
        print(
            f"{name}: {cpu[name]:.1f} µs CPU per idle poll; {sum(counts.values()):.1f} tracked objects per held poll"
        )
        print(
            "   "
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        )
    print(f"project - bare app: {cpu['project'] - cpu['bare app']:.1f} µs per poll")


def main() -> None:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="longpoll-poll-cost-") as workdir:
        sessions = setup_django(workdir)
        uvloop.run(measure(sessions))


if __name__ == "__main__":
    main()
