"""A Redis failover under Sentinel survived with nothing lost (issue 14, point 4).

A master, its replica and three sentinels of the test's own, on free loopback
ports; daphne and uvicorn on PostgreSQL, their channel layer configured with the
sentinels (the demo's ``REDIS_SENTINELS``). Browsers hold polls on both servers
while messages are sent through the other one, so that every prompt delivery is
a wake-up through Redis. The master is killed (SIGKILL); the sentinels promote
the replica. Every message sent must arrive once, in order, and wake-ups must
travel through Redis again soon after the sentinels name the new master.

Timing assertions are generous bounds that still tell behaviours apart: a
wake-up through Redis takes milliseconds, a message that has to wait for the
hold to run out takes up to ``HOLD`` seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from longpoll_app.transports.layer import RETRY_DELAYS, LayerTransport

from .servers import (
    STARTUP_TIMEOUT,
    HttpBrowser,
    Server,
    drop_postgres_database,
    free_port,
    manage,
    migrated_postgres_database,
    postgres_available,
    server_env,
    wait_until,
)

pytestmark = pytest.mark.servers

MASTER_NAME = "mymaster"
DOWN_AFTER = 1000  # milliseconds without an answer before a sentinel calls the master down
# milliseconds: Sentinel's failover-timeout; a failed failover is tried again after twice it
FAILOVER_TIMEOUT = 3000
HOLD = 10.0  # seconds: the demo settings' LONGPOLL_TIMEOUT
REQUEST_TIMEOUT = HOLD + 10  # seconds; no request of this test may take longer
# Longer than redis-py 8's default socket timeout (5 s, as long as channels-redis's
# blocking receive): a hub whose receive were not fitted to it would log an outage.
QUIET = 6.0  # seconds with polls held and nothing sent, before the failover
FAILOVER_BOUND = 20.0  # seconds the sentinels may take to name a new master
# A message woken through Redis arrives in milliseconds (under a second on a loaded
# machine); one that waits for its hold to run out, in up to HOLD seconds.
PROMPT = 3.0  # seconds from a send's answer to the message's arrival
# After the sentinels name the new master: the hub's next attempt to reach the
# layer (at most its longest retry delay away, 5 s), plus a margin for a loaded machine.
RESUME_BOUND = max(RETRY_DELAYS) + 7.0  # seconds
TAIL = 4.0  # seconds of sending after both servers reach the layer again
SEND_PAUSE = 0.2  # seconds between rounds of sends (one per browser)
BYE = "bye"  # the message that ends a browser's polling
# What each server logs when its hub loses the layer, and when it reaches it again.
LOST = LayerTransport.lost_message.partition(" (%s)")[0]
BACK = LayerTransport.back_message


def need_programs() -> None:
    for program in ("redis-server", "redis-sentinel"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed; .ci/run installs it")
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432; .ci/run starts it")


def client(port: int) -> Any:
    import redis

    return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)


def answers(port: int) -> bool:
    import redis

    try:
        return bool(client(port).ping())
    except redis.exceptions.RedisError:
        return False


# -- a master, its replica and three sentinels ----------------------------------------


@dataclass
class RedisNode:
    """A redis-server or redis-sentinel of the test's own. Nothing is saved:
    only replication keeps data across the failover."""

    program: str  # "redis-server" or "redis-sentinel"
    directory: Path
    args: list[str] = field(default_factory=list)  # redis-server's options
    config: list[str] = field(default_factory=list)  # redis-sentinel's config lines
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.program}-{self.port}.log"

    def start(self) -> RedisNode:
        home = self.directory / f"{self.program}-{self.port}"
        home.mkdir()  # its own: a replica's synced dump must not meet the master's
        if self.program == "redis-sentinel":
            # Sentinel rewrites its config file as it learns the others: a file of its own.
            conf = home / "sentinel.conf"
            lines = [f"port {self.port}", "bind 127.0.0.1", f'dir "{home}"', *self.config]
            conf.write_text("\n".join(lines) + "\n")
            cmd = ["redis-sentinel", str(conf)]
        else:
            cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            cmd += ["--save", "", "--appendonly", "no", "--dir", str(home), *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(lambda: self.exited() or answers(self.port), STARTUP_TIMEOUT):
            raise RuntimeError(f"{self.program} did not start:\n{self.log()}")
        if self.exited():
            raise RuntimeError(f"{self.program} exited early:\n{self.log()}")
        return self

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def kill(self) -> None:
        """SIGKILL: as when the machine or the OOM killer ends it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class SentinelCluster:
    master: RedisNode
    replica: RedisNode
    sentinels: list[RedisNode]

    @classmethod
    def start(cls, directory: Path) -> SentinelCluster:
        master = RedisNode("redis-server", directory).start()
        replica = RedisNode(
            "redis-server", directory, args=["--replicaof", "127.0.0.1", str(master.port)]
        )
        monitor = [
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2",  # quorum of 3
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT}",
        ]
        cluster = cls(master, replica, [])
        try:
            replica.start()
            for _ in range(3):
                cluster.sentinels.append(RedisNode("redis-sentinel", directory, config=monitor))
                cluster.sentinels[-1].start()
        except BaseException:
            cluster.kill()
            raise
        return cluster

    def addresses(self) -> str:
        """As the demo's REDIS_SENTINELS takes them."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def ready_for_failover(self) -> bool:
        """Every sentinel knows the other two and the replica, which is in sync:
        a failover started now can be authorized and has a replica to promote."""
        import redis

        try:
            for sentinel in self.sentinels:
                node = client(sentinel.port)
                node.execute_command("SENTINEL", "CKQUORUM", MASTER_NAME)  # raises if not
                master = node.sentinel_master(MASTER_NAME)
                replicas = node.sentinel_slaves(MASTER_NAME)
                if master["num-other-sentinels"] != len(self.sentinels) - 1:
                    return False
                if not any(
                    r["port"] == self.replica.port
                    and r["master-link-status"] == "ok"
                    and not r["is_sdown"]
                    for r in replicas
                ):
                    return False
            info = client(self.replica.port).info("replication")
            return bool(info["master_link_status"] == "up")
        except redis.exceptions.RedisError:
            return False

    def names_master(self, port: int) -> bool:
        """True once a sentinel names ``port`` for the master: the earliest that
        redis-py can learn it (it skips a sentinel that still names the old one,
        which is down by then)."""
        import redis

        for sentinel in self.sentinels:
            try:
                address = client(sentinel.port).sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.exceptions.RedisError:
                continue
            if address and int(address[1]) == port:
                return True
        return False

    def kill(self) -> None:
        for node in [self.master, self.replica, *self.sentinels]:
            node.kill()

    def logs(self) -> str:
        nodes = [self.master, self.replica, *self.sentinels]
        return "\n".join(f"--- {n.log_path.name}\n{n.log()[-3000:]}" for n in nodes)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    need_programs()
    started = SentinelCluster.start(tmp_path)
    yield started
    started.kill()


# -- browsers, each holding polls on one server ----------------------------------------

_client_ids = iter(range(10**9))  # the send endpoint's client ids, unique in the run


@dataclass
class Arrival:
    id: int
    data: Any
    at: float  # time.monotonic() when the answer carrying it arrived


@dataclass
class PollLoop:
    """One browser polling one server without pause, keeping every message once,
    by id, as longpoll.js does."""

    browser: HttpBrowser
    server: Server
    cursor: int | None = None
    arrivals: dict[int, Arrival] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # ids as they arrived, repeats included
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    gaps: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> PollLoop:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 300  # bounded, whatever happens to the test
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                reply = self.browser.poll(self.server, self.cursor, timeout=REQUEST_TIMEOUT)
            except Exception as exc:
                self.errors.append(f"poll on {self.server.kind}: {exc!r}")
                time.sleep(0.5)
                continue
            self.statuses.append(reply.status)
            if reply.status == 200:
                now = time.monotonic()
                body = reply.json()
                self.gaps += bool(body["gap"])
                for message in body["messages"]:
                    self.order.append(message["id"])
                    if message["id"] not in self.arrivals:
                        self.arrivals[message["id"]] = Arrival(message["id"], message["data"], now)
                self.cursor = body["cursor"]
            elif reply.status != 204:
                self.errors.append(f"poll on {self.server.kind}: {reply.status} {reply.body!r}")
                time.sleep(0.5)

    def data(self) -> list[Any]:
        """Data of the messages received, in id order (but the one that ended the loop)."""
        messages = [self.arrivals[i].data for i in sorted(list(self.arrivals))]
        return [data for data in messages if data != BYE]

    def arrival_of(self, data: Any) -> float | None:
        return next((a.at for a in list(self.arrivals.values()) if a.data == data), None)

    def finish(self) -> None:
        """End the loop: a last message answers the poll it holds, if any."""
        self.stop.set()
        body = {"id": f"bye-{next(_client_ids)}", "type": "demo.echo", "data": BYE}
        reply = self.browser.request(self.server, "POST", "/longpoll/send/", body)
        assert reply.status == 200, (reply.status, reply.body)
        assert self.thread is not None
        self.thread.join(REQUEST_TIMEOUT)
        assert not self.thread.is_alive()


@dataclass
class Sent:
    loop: int  # index of the browser's PollLoop
    data: str
    via: str  # "daphne", "uvicorn" or "command"
    started: float  # time.monotonic()
    answered: float
    ok: bool
    detail: str = ""


@dataclass
class Sender:
    """Sends to every browser in turn through the server it does not poll, so
    that only a wake-up through Redis delivers at once."""

    loops: list[PollLoop]
    others: list[Server]  # for each loop, the server its sends go through
    sent: list[Sent] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Sender:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens to the test
        seq = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            for n, loop in enumerate(self.loops):
                self._send(n, loop, f"{n}-{seq}")
            seq += 1
            time.sleep(SEND_PAUSE)

    def _send(self, n: int, loop: PollLoop, data: str) -> None:
        server = self.others[n]
        body = {"id": f"fo-{next(_client_ids)}", "type": "demo.echo", "data": data}
        started = time.monotonic()
        try:
            reply = loop.browser.request(server, "POST", "/longpoll/send/", body, REQUEST_TIMEOUT)
            ok, detail = reply.status == 200, f"{reply.status} {reply.body[:200]!r}"
        except Exception as exc:
            ok, detail = False, repr(exc)
        self.sent.append(Sent(n, data, server.kind, started, time.monotonic(), ok, detail))

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(REQUEST_TIMEOUT)
        assert not self.thread.is_alive()


def command_send(env: dict[str, str], n: int, loop: PollLoop, data: str) -> Sent:
    """``manage.py longpoll_send``: a process of its own, with its own layer."""
    started = time.monotonic()
    done = manage(
        env,
        "longpoll_send",
        loop.browser.cookies["sessionid"],
        "demo.echo",
        json.dumps(data),
        timeout=60,
    )
    return Sent(n, data, "command", started, time.monotonic(), done.returncode == 0, done.stderr)


def arrived(sent: Sent, loops: list[PollLoop]) -> float:
    """When its message arrived (infinity: never)."""
    at = loops[sent.loop].arrival_of(sent.data)
    return math.inf if at is None else at


def latency(sent: Sent, loops: list[PollLoop]) -> float | None:
    """Seconds from a send's answer to its message's arrival (None: not yet)."""
    arrived = loops[sent.loop].arrival_of(sent.data)
    return None if arrived is None else arrived - sent.answered


def log_lines(server: Server, phrase: str) -> list[str]:
    return [line for line in server.log().splitlines() if phrase in line]


def logged(server: Server, phrase: str) -> bool:
    return phrase in server.log()


def assert_clean_log(server: Server) -> None:
    """No traceback, and no error logged but the outage's one line."""
    text = server.log()
    assert "Traceback" not in text, text[-6000:]
    for line in text.splitlines():
        if " ERROR " in line or line.startswith("ERROR:"):
            assert LOST in line, line


def resumed_after(sent: list[Sent], loops: list[PollLoop], since: float) -> float | None:
    """Seconds from ``since`` to the first send from which on every message
    arrived within PROMPT of its send's answer; None if none did."""
    after = sorted((s for s in sent if s.ok and s.started >= since), key=lambda s: s.started)
    resumed: float | None = None
    for s in after:
        took = latency(s, loops)
        if took is None or took > PROMPT:
            resumed = None
        elif resumed is None:
            resumed = s.started
    return None if resumed is None else max(0.0, resumed - since)


# -- the test ---------------------------------------------------------------------------


def test_sentinel_failover_while_polls_are_held_and_messages_are_sent(
    cluster: SentinelCluster, tmp_path: Path
) -> None:
    env = server_env(
        REDIS_SENTINELS=cluster.addresses(),
        REDIS_SENTINEL_MASTER=MASTER_NAME,
        DJANGO_DEBUG="0",
    )
    database = f"longpoll_failover_{os.getpid()}"  # runs side by side share nothing
    migrated_postgres_database(database, env)
    servers = [Server("daphne", env), Server("uvicorn", env)]
    loops: list[PollLoop] = []
    sender: Sender | None = None
    commands: list[Sent] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.start(tmp_path), servers))
        # Two browsers held on each server, their messages sent through the other;
        # a fifth gets its messages from the shell.
        for n in range(5):
            browser = HttpBrowser()
            browser.open_page(servers[n % 2])
            loops.append(PollLoop(browser, servers[n % 2]).start())
        http_loops, command_loop = loops[:4], len(loops) - 1
        others = [servers[(n + 1) % 2] for n in range(len(http_loops))]

        # Polls held and nothing sent, for longer than a socket's default timeout:
        # the hubs block on Redis through the master the sentinels named, and no
        # outage may be logged (meanwhile the sentinels get to know each other).
        quiet_until = time.monotonic() + QUIET
        assert wait_until(cluster.ready_for_failover, STARTUP_TIMEOUT), cluster.logs()
        time.sleep(max(0.0, quiet_until - time.monotonic()))
        for server in servers:
            assert not log_lines(server, LOST), server.log()

        sender = Sender(http_loops, others).start()
        assert wait_until(lambda: len(sender.sent) >= 3 * len(http_loops), HOLD)
        before = list(sender.sent)
        assert wait_until(lambda: None not in [latency(s, loops) for s in before], HOLD)
        assert max(arrived(s, loops) - s.answered for s in before) < PROMPT  # woken through Redis

        with ThreadPoolExecutor(1) as shell:  # one at a time: their order is known
            cluster.master.kill()
            killed_at = time.monotonic()
            during = shell.submit(command_send, env, command_loop, loops[-1], "cmd-during")
            assert wait_until(
                partial(cluster.names_master, cluster.replica.port), FAILOVER_BOUND
            ), cluster.logs()
            named_at = time.monotonic()
            after = shell.submit(command_send, env, command_loop, loops[-1], "cmd-after")
            back_at: dict[str, float] = {}
            for server in servers:
                assert wait_until(partial(logged, server, BACK), RESUME_BOUND), server.log()
                back_at[server.kind] = time.monotonic() - named_at
            commands += [during.result(60), after.result(60)]
        # Sends go on for a while: wake-ups must keep arriving, not just once.
        time.sleep(max(0.0, named_at + max(back_at.values()) + TAIL - time.monotonic()))
        sender.finish()

        # Every message whose send succeeded arrives (a poll held on a server
        # reads the store once its hold runs out, at the latest).
        sent = [s for s in sender.sent + commands if s.ok]
        assert wait_until(lambda: None not in [latency(s, loops) for s in sent], HOLD + 5), [
            loop.data()[-5:] for loop in loops
        ]
        for loop in loops:
            loop.finish()
    finally:
        if sender is not None:
            sender.stop.set()
        for loop in loops:
            loop.stop.set()
        for server in servers:
            server.stop()
        drop_postgres_database(database)

    failover = named_at - killed_at
    in_failover = [s for s in sent if killed_at <= s.started < named_at]
    # When the last message sent during the failover arrived, from the naming.
    caught_up = max((arrived(s, loops) for s in in_failover), default=named_at) - named_at
    prompt_from = resumed_after(sender.sent, loops, named_at)
    layer_back = named_at + max(back_at.values())
    since_back = [arrived(s, loops) - s.answered for s in sender.sent if s.started >= layer_back]
    slowest_send = max(s.answered - s.started for s in sender.sent)
    prompt = "never" if prompt_from is None else f"{prompt_from:+.2f} s"
    print(
        f"\nsentinel failover: new master named {failover:.2f} s after the kill; from "
        f"then, layer reached again by {', '.join(f'{k} {v:+.2f} s' for k, v in back_at.items())}"
        f", the {len(in_failover)} messages sent during the failover all delivered by "
        f"{caught_up:+.2f} s, every message sent from {prompt} on delivered within "
        f"{PROMPT} s (after the layer was back, within {max(since_back, default=0):.3f} s); "
        f"{len(sent)} sends, the slowest answered in {slowest_send:.2f} s; commands took "
        f"{[round(c.answered - c.started, 2) for c in commands]} s"
    )

    # Stored in PostgreSQL first: a send does not need Redis to succeed.
    assert [s for s in sender.sent + commands if not s.ok] == []
    assert in_failover, "no send fell within the failover"
    assert caught_up <= RESUME_BOUND, caught_up
    for n, loop in enumerate(loops):
        assert loop.errors == []
        assert loop.gaps == 0
        assert set(loop.statuses) <= {200, 204}
        # Every message, once, in the order of its sends; no id arrived twice or
        # before a lower one.
        assert loop.data() == [s.data for s in sent if s.loop == n]
        assert loop.order == sorted(set(loop.order)), loop.order
    # Wake-ups travel through Redis again soon after the sentinels name the new
    # master, and go on doing so.
    assert prompt_from is not None and prompt_from <= RESUME_BOUND, prompt_from
    assert any(s.started >= named_at + prompt_from + TAIL / 2 for s in sender.sent)
    for server in servers:
        assert_clean_log(server)
        # The outage is logged once per process, not per request or per attempt.
        assert len(log_lines(server, LOST)) == 1, server.log()
        assert len(log_lines(server, BACK)) == 1, server.log()
        assert len(log_lines(server, "could not wake")) <= 1, server.log()
