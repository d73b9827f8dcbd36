"""A rolling deploy behind nginx: each server restarted in turn while browsers
poll and messages flow, with nothing lost, nothing twice, and no 5xx.

nginx (Debian's, the deployment page's block) round-robins two server processes
of one kind, with no stickiness; 200 browsers poll through it, and another
process sends 20 messages a second. Each server is stopped with SIGTERM and
started again, in turn, twice.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import REDIS_URL
from .servers import (
    ROOT,
    HttpBrowser,
    Nginx,
    Server,
    drop_postgres_database,
    migrated_postgres_database,
    postgres_available,
    private_redis,
    server_env,
)
from .test_install_docs import DEPLOYMENT_PAGE, snippets_from

pytestmark = pytest.mark.servers

BROWSERS = 200
RATE = 20.0  # messages a second, from a process of their own
ROUNDS = 2  # each server restarted this many times
HOLD = 10.0  # seconds: the demo settings' LONGPOLL_TIMEOUT
ANSWERED_WITHIN = 2.0  # seconds: a poll held at SIGTERM answers within this
LATE = 2.0  # seconds: no message arrives later than this after it was sent
STOPPED_WITHIN = 5.0  # seconds from SIGTERM to the process's exit (drain: 2 s at most)
REJOINED_WITHIN = 30.0  # seconds: nginx retries a failed server after fail_timeout (10 s)
DELIVERED_WITHIN = 30.0  # seconds after the last send, for the last answers

SENDER = textwrap.dedent(
    """
    import json, pathlib, sys, time
    import django
    django.setup()
    from longpoll_app.api import send_to_session

    keys, rate, stop = json.loads(sys.argv[1]), float(sys.argv[2]), pathlib.Path(sys.argv[3])
    counts = dict.fromkeys(keys, 0)
    began, sent = time.time(), 0
    while not stop.exists():
        key = keys[sent % len(keys)]
        at = time.time()
        try:
            send_to_session(key, "seq", {"n": counts[key], "at": at})
        except Exception as exc:  # not stored: not expected to arrive
            print(json.dumps({"failed": repr(exc)}), flush=True)
        else:
            counts[key] += 1
        sent += 1
        time.sleep(max(0.0, began + sent / rate - time.time()))
    for key in keys:  # the last message of each session: its browser stops
        send_to_session(key, "bye", None)
    print(json.dumps({"counts": counts}), flush=True)
    """
)


@dataclass
class Page:
    """One simulated browser tab: polls in a loop and keeps what longpoll.js shows."""

    browser: HttpBrowser
    shown: list[tuple[int, float]] = field(default_factory=list)  # (n, latency in seconds)
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    done: bool = False

    def run(self, nginx: Nginx, deadline: float) -> None:
        cursor: int | None = None
        while not self.done and time.monotonic() < deadline:
            try:
                reply = self.browser.poll(nginx, cursor, timeout=HOLD + 5)
            except OSError as exc:
                self.errors.append(repr(exc))
                time.sleep(0.5)
                continue
            received = time.time()
            self.statuses.append(reply.status)
            if reply.status != 200:
                if reply.status != 204:
                    time.sleep(0.5)  # longpoll.js backs off after an error
                continue
            batch = reply.json()
            for message in batch["messages"]:
                if cursor is not None and message["id"] <= cursor:
                    continue  # longpoll.js drops ids it has shown
                if message["type"] == "bye":
                    self.done = True
                else:
                    self.shown.append((message["data"]["n"], received - message["data"]["at"]))
            cursor = batch["cursor"]


@dataclass
class Deploy:
    servers: list[Server]
    nginx: Nginx
    env: dict[str, str]
    logs: Path


@pytest.fixture(params=["uvicorn", "daphne"])
def deploy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deploy]:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable: two server processes need a shared database")
    name = f"test_longpoll_deploy_{request.param}"
    env = server_env()
    with private_redis(tmp_path, REDIS_URL.rsplit("/", 1)[0] + "/13") as redis_url:
        env["REDIS_URL"] = redis_url
        migrated_postgres_database(name, env)
        servers = [Server(request.param, env).start(tmp_path) for _ in range(2)]
        (block,) = snippets_from(DEPLOYMENT_PAGE, ["nginx"])
        (tmp_path / "nginx").mkdir()
        nginx = Nginx(tmp_path / "nginx")
        try:
            nginx.start(nginx.configure(block.code, [s.port for s in servers], tmp_path))
            yield Deploy(servers, nginx, env, tmp_path)
        finally:
            nginx.stop()
            for server in servers:
                server.stop()
            drop_postgres_database(name)


def restart(deploy: Deploy, server: Server) -> float:
    """SIGTERM, wait for the exit, start again, wait until nginx sends it polls
    again; the wall-clock time of the SIGTERM."""
    assert server.process is not None
    told = time.time()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(STOPPED_WITHIN)
    assert server.log_path is not None
    server.log_path.rename(server.log_path.with_suffix(f".{told:.0f}.log"))
    server.start(deploy.logs)
    back = time.time()
    deadline = time.monotonic() + REJOINED_WITHIN
    while not any(
        r.upstreams[-1:] == (server.port,) and r.started > back for r in deploy.nginx.requests()
    ):
        assert time.monotonic() < deadline, "nginx sent the restarted server nothing"
        time.sleep(0.2)
    return told


def test_rolling_deploy_loses_nothing_and_shows_no_error(deploy: Deploy) -> None:
    pages = [Page(HttpBrowser()) for _ in range(BROWSERS)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda page: page.browser.open_page(deploy.nginx), pages))
    keys = [page.browser.cookies["sessionid"] for page in pages]
    stop = deploy.logs / "stop-sending"
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, json.dumps(keys), str(RATE), str(stop)],
        cwd=ROOT,
        env=deploy.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    threads = [threading.Thread(target=p.run, args=(deploy.nginx, deadline)) for p in pages]
    for thread in threads:
        thread.start()
    sigterms: list[tuple[int, float]] = []
    try:
        time.sleep(2.0)  # polls held, messages flowing
        for _ in range(ROUNDS):
            for server in deploy.servers:
                sigterms.append((server.port, restart(deploy, server)))
                time.sleep(1.0)
    finally:
        stop.touch()
        out, err = sender.communicate(timeout=60)
        for thread in threads:
            thread.join(DELIVERED_WITHIN)
    assert sender.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])
    counts, failed = summary["counts"], [line for line in out.splitlines() if "failed" in line]
    assert not failed, failed  # the database stays up: every send is stored

    # Every message arrives exactly once, in order per session, and on time.
    for page, key in zip(pages, keys, strict=True):
        assert page.done, f"{key[:6]}: no bye; shown {len(page.shown)} of {counts[key]}"
        assert [n for n, _ in page.shown] == list(range(counts[key])), key[:6]
        late = [round(lag, 2) for _, lag in page.shown if lag > LATE]
        assert not late, f"{key[:6]}: messages {late} s late"
    # No 5xx, and no request that nginx could not answer at all.
    statuses = [status for page in pages for status in page.statuses]
    assert not [s for s in statuses if s >= 500], sorted(set(statuses))
    assert not [e for page in pages for e in page.errors]
    logged = deploy.nginx.requests()
    assert not [r for r in logged if r.status >= 500], [r for r in logged if r.status >= 500][:5]
    # A poll held when its server was told to stop answered within 2 s, not at
    # the end of its hold.
    for port, told in sigterms:
        held = [r for r in logged if port in r.upstreams and r.started < told < r.ended]
        slow = [round(r.ended - told, 2) for r in held if r.ended - told > ANSWERED_WITHIN]
        assert held and not slow, (port, len(held), slow)
    for server in deploy.servers:
        for log in deploy.logs.glob(f"{server.kind}-{server.port}*.log"):
            assert "Traceback" not in log.read_text(), log
