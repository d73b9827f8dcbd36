"""PostgreSQL alone as the wake-up engine, with real server processes: two
uvicorns on one database and no Redis (``REDIS_URL`` unset, so the demo's
settings give the process-local layer and "auto" picks LISTEN/NOTIFY).

The servers reach PostgreSQL through a ``PostgresProxy``, which the last test
cuts off and brings back while messages are sent. No sticky sessions: a
browser's requests go to whichever server the test picks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from .servers import (
    POSTGRES_ADMIN_URL,
    HttpBrowser,
    PostgresProxy,
    Reply,
    Server,
    drop_postgres_database,
    manage,
    migrated_postgres_database,
    postgres_available,
    server_env,
)

pytestmark = pytest.mark.servers
HOLD = 10.0  # seconds: the demo settings' LONGPOLL_TIMEOUT
WOKEN_WITHIN = 3.0  # seconds: a NOTIFY takes milliseconds; generous, and far from the hold
HELD_FOR = 0.5  # seconds a poll is given to reach its server and be held
OUTAGE = 3.0  # seconds PostgreSQL stays cut off
BACK_WITHIN = 20.0  # seconds both LISTEN connections may take to return (backoff: up to 5 s)
SEND_PAUSE = 0.05  # seconds between two sends: a steady stream, within the rate limit


@dataclass
class Cluster:
    servers: tuple[Server, Server]
    proxy: PostgresProxy
    database: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432; .ci/run starts it")
    env = server_env()  # no REDIS_URL: nothing but PostgreSQL between the processes
    name = f"longpoll_pg_alone_{os.getpid()}"
    direct = migrated_postgres_database(name, env)
    proxy = PostgresProxy()
    env["DATABASE_URL"] = direct.replace("127.0.0.1:5432", proxy.url_host)
    logs = tmp_path_factory.mktemp("pg-alone")
    servers = (Server("uvicorn", env).start(logs), Server("uvicorn", env).start(logs))
    try:
        yield Cluster(servers, proxy, name)
    finally:
        for server in servers:
            server.stop()
        proxy.close()
        drop_postgres_database(name)
    for server in servers:
        # The one transport named: no Redis, and not the store watcher.
        assert "wake-ups through PostgreSQL LISTEN/NOTIFY" in server.log(), server.log()
        assert "Internal Server Error" not in server.log(), server.log()


def listening(database: str) -> int:
    """The connections LISTENing on the database, one per running hub."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN %%'",
            [database],
        ).fetchone()
    assert row is not None
    return int(row[0])


def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def held(pool: ThreadPoolExecutor, browser: HttpBrowser, server: Server, cursor: Any) -> Any:
    future = pool.submit(browser.poll, server, cursor)
    time.sleep(HELD_FOR)
    assert not future.done(), future.result()
    return future


def answered(poll: Future[Reply], after: float) -> tuple[Reply, float]:
    """The poll's reply, and how long after ``after`` (monotonic) it came."""
    reply = poll.result(timeout=HOLD + 5)
    return reply, time.monotonic() - after


def test_a_management_command_wakes_a_poll_on_either_server(cluster: Cluster) -> None:
    browser = HttpBrowser()
    browser.open_page(cluster.servers[0])
    cursor = None
    for n, server in enumerate(cluster.servers):
        with ThreadPoolExecutor(1) as pool:
            poll = held(pool, browser, server, cursor)
            sent = manage(server.env, "longpoll_send", browser.cookies["sessionid"], "cmd", str(n))
            assert sent.returncode == 0, sent.stderr
            reply, late = answered(poll, time.monotonic())
        assert reply.status == 200 and late < WOKEN_WITHIN, (reply, late)
        assert [m["data"] for m in reply.json()["messages"]] == [n]
        cursor = reply.json()["cursor"]
    # Both hubs listen, each on one connection of its own.
    assert listening(cluster.database) == 2


@pytest.mark.parametrize("direction", ["first-to-second", "second-to-first"])
def test_a_send_through_one_server_wakes_a_poll_held_on_the_other(
    cluster: Cluster, direction: str
) -> None:
    first, second = cluster.servers
    sender, holder = (first, second) if direction == "first-to-second" else (second, first)
    browser = HttpBrowser()
    browser.open_page(sender)
    with ThreadPoolExecutor(1) as pool:
        poll = held(pool, browser, holder, None)
        # demo.echo's handler runs in the sending server and calls send_to_session.
        assert browser.send(sender, f"echo-{direction}", "demo.echo", direction).status == 200
        reply, late = answered(poll, time.monotonic())
    assert reply.status == 200 and late < WOKEN_WITHIN, (reply, late)
    assert reply.json()["messages"] == [{"id": 1, "type": "demo.echo", "data": direction}]


@dataclass
class Inbox:
    """What a page that polls without pause, alternating between the servers, received."""

    browser: HttpBrowser
    servers: tuple[Server, Server]
    arrived: dict[int, list[float]] = field(default_factory=dict)  # data -> arrival times
    order: list[int] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        cursor = None
        turn = 0
        while not self.stop.is_set():
            server = self.servers[turn % 2]
            turn += 1
            try:
                reply = self.browser.poll(server, cursor, timeout=HOLD + 5)
            except OSError:  # the server cut the connection while PostgreSQL was away
                time.sleep(0.2)
                continue
            self.statuses.append(reply.status)
            if reply.status == 200:
                now = time.monotonic()
                for message in reply.json()["messages"]:
                    self.arrived.setdefault(message["data"], []).append(now)
                    self.order.append(message["data"])
                cursor = reply.json()["cursor"]
            elif reply.status != 204:
                time.sleep(float(reply.headers.get("Retry-After", "0.5")))


def test_nothing_sent_is_lost_when_postgresql_goes_away_and_returns(cluster: Cluster) -> None:
    browser = HttpBrowser()
    browser.open_page(cluster.servers[0])
    inbox = Inbox(browser, cluster.servers)
    poller = threading.Thread(target=inbox.run, daemon=True)
    poller.start()
    sent: dict[int, float] = {}  # data -> when its send answered 200
    send_statuses: list[int | str] = []
    n = 0

    def send_some(count: int) -> None:
        nonlocal n
        for _ in range(count):
            server = cluster.servers[n % 2]
            try:
                reply = browser.send(server, f"m{n}", "demo.echo", n)
                send_statuses.append(reply.status)
                if reply.status == 200:
                    sent[n] = time.monotonic()
            except OSError as exc:
                send_statuses.append(type(exc).__name__)
            n += 1
            time.sleep(SEND_PAUSE)

    try:
        send_some(20)
        until(lambda: listening(cluster.database) == 2, BACK_WITHIN, "both hubs to LISTEN")
        cluster.proxy.pause()  # every connection cut, new ones refused
        cut_at = time.monotonic()
        while time.monotonic() - cut_at < OUTAGE:
            send_some(1)  # these fail (503, or a cut connection): not counted as sent
        cluster.proxy.resume()
        send_some(20)
        until(lambda: listening(cluster.database) == 2, BACK_WITHIN, "both hubs to LISTEN again")
        back_at = time.monotonic()
        send_some(20)
        until(lambda: set(sent) <= set(inbox.arrived), HOLD + 5, "every sent message")
    finally:
        inbox.stop.set()
        poller.join(HOLD + 5)
    # Every message whose send succeeded arrived, once, in the order it was sent; a
    # send that failed may have been stored all the same (503 after the handler ran).
    assert set(sent) <= set(inbox.arrived)
    assert all(len(times) == 1 for times in inbox.arrived.values()), inbox.arrived
    assert inbox.order == sorted(inbox.order)
    assert set(inbox.arrived) <= set(range(n))
    # The outage was real, and answered as one: 503s, never a 500.
    assert any(status != 200 for status in send_statuses), send_statuses
    assert set(inbox.statuses) <= {200, 204, 503}, sorted(set(inbox.statuses))
    assert set(send_statuses) - {200, 503} <= {"RemoteDisconnected", "ConnectionResetError"}
    # Once LISTEN was back, wake-ups flowed again: no message waited for a hold to end.
    after = [data for data, at in sent.items() if at >= back_at]
    assert after
    late = {data: inbox.arrived[data][0] - sent[data] for data in after}
    assert max(late.values()) < WOKEN_WITHIN, late
    for server in cluster.servers:
        log = server.log()
        assert log.count("PostgreSQL LISTEN connection lost") == 1, log
        assert "PostgreSQL LISTEN connection back" in log, log
