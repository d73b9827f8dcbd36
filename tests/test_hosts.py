"""Many hosts, simulated (issue 14, point 5): two server hosts, PostgreSQL and
Redis, each in a network namespace of the test's own, so that wake-ups and
store reads really cross a network, and a network fault can cut one host off
Redis while everything else keeps working.

The network: a router namespace (``core``, IP forwarding on) with a veth pair
to each of ``db`` (PostgreSQL), ``redis``, ``host-a``, ``host-b`` (one uvicorn
each) and ``client`` (the browsers). Link k is 10.213.k.0/24, the router's end
.1, the other end .2, and the only route anywhere leads into 10.213.0.0/16: no
packet can leave the test's network. No interface or route is added to the
root namespace: the test's HTTP clients make their sockets in a thread that
joined the ``client`` namespace (``setns``), so the same addresses serve
parallel runs (namespace names carry the pid).

The cut between host-b and Redis is a pair of ``blackhole`` policy rules in the
router, both directions: packets vanish silently, as when a cable is pulled,
while host-b still reaches PostgreSQL and the browsers, and host-a still reaches
Redis. No nftables or iptables is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import http.cookies
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from longpoll_app.transports.layer import LayerTransport

from .servers import ROOT, Reply, server_env, wait_until

pytestmark = pytest.mark.servers

HOLD = 10.0  # seconds: the demo settings' LONGPOLL_TIMEOUT
MARGIN = 5.0  # seconds on top of a hold, for a loaded machine
REQUEST_TIMEOUT = HOLD + 10  # seconds: no request of this test may take longer
WAKE_BOUND = 3.0  # seconds from a send to its arrival: a wake-up, far from a 10 s hold
HELD_FOR = 0.5  # seconds a poll has been in flight before a send: held, not on its way
STARTUP_TIMEOUT = 60.0  # seconds for PostgreSQL, Redis or a server to be ready
MIGRATE_TIMEOUT = 180.0  # seconds, on a loaded 2-core machine
# Seconds for host-b to notice the cut, or the link's return. Noticing: the
# receive's socket timeout (5 s, redis-py's default). Return: a reconnect
# attempt's connect timeout (5 s) plus the transport's retry delay (at most 5 s).
LAYER_TIMEOUT = 30.0
LOOP_LIMIT = 300.0  # seconds a poll loop runs at most, whatever happens to the test
OUTAGE_SENDS = 3  # messages per session while host-b is cut off Redis
WAKE_ROUNDS = 3  # sends per session whose wake-up is timed, before the cut and after

NETWORK = "10.213.0.0/16"  # the test's own: only its namespaces have these addresses
LINKS = {"db": 1, "redis": 2, "host-a": 3, "host-b": 4, "client": 5}  # role: link number
PG_PORT = 5432  # inside the db namespace: no clash with the machine's own
REDIS_PORT = 6379  # inside the redis namespace
HTTP_PORT = 8000  # inside each host's namespace
CLONE_NEWNET = 0x40000000  # <sched.h>: setns() joins a network namespace
BYE = "bye"  # the last message of every session: its poll loop ends with it
LOST = LayerTransport.lost_message.split(" (")[0]  # "channel layer unreachable"
BACK = LayerTransport.back_message


def address(role: str) -> str:
    return f"10.213.{LINKS[role]}.2"


def router_address(role: str) -> str:
    return f"10.213.{LINKS[role]}.1"


def run(cmd: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def must(cmd: list[str]) -> None:
    done = run(cmd)
    assert done.returncode == 0, (cmd, done.stderr)


# -- the network ----------------------------------------------------------------------


@dataclass
class Network:
    """The namespaces and links, made by ``build`` and all removed by ``remove``."""

    prefix: str = f"lphosts{os.getpid()}"
    made: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def exec(self, role: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *cmd]

    def build(self) -> None:
        for role in ("core", *LINKS):
            if Path(f"/run/netns/{self.ns(role)}").exists():
                # Left by a run that was killed; its pid was ours, so it is gone.
                run(["ip", "netns", "del", self.ns(role)])
            added = run(["ip", "netns", "add", self.ns(role)])
            if added.returncode != 0:
                pytest.skip(f"cannot make a network namespace: {added.stderr.strip()}")
            self.made.append(self.ns(role))
            must(["ip", "-n", self.ns(role), "link", "set", "lo", "up"])
        core = self.ns("core")
        for role in LINKS:
            # Both ends made inside the namespaces: nothing appears in the root one.
            veth = ["ip", "-n", core, "link", "add", role, "type", "veth"]
            paired = run([*veth, "peer", "name", "eth0", "netns", self.ns(role)])
            if paired.returncode != 0:
                pytest.skip(f"cannot make a veth pair: {paired.stderr.strip()}")
            must(["ip", "-n", core, "addr", "add", f"{router_address(role)}/24", "dev", role])
            must(["ip", "-n", core, "link", "set", role, "up"])
            ns = self.ns(role)
            must(["ip", "-n", ns, "addr", "add", f"{address(role)}/24", "dev", "eth0"])
            must(["ip", "-n", ns, "link", "set", "eth0", "up"])
            must(["ip", "-n", ns, "route", "add", NETWORK, "via", router_address(role)])
        # The namespace's own switch (/proc/sys/net is per namespace).
        must(self.exec("core", "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"))

    def cut(self, one: str, other: str) -> None:
        for rule in self._rules(one, other):
            must(["ip", "-n", self.ns("core"), "rule", "add", *rule])

    def restore(self, one: str, other: str) -> None:
        for rule in self._rules(one, other):
            must(["ip", "-n", self.ns("core"), "rule", "del", *rule])

    @staticmethod
    def _rules(one: str, other: str) -> list[list[str]]:
        # blackhole: dropped without an ICMP error, as a pulled cable does.
        return [
            ["from", address(one), "to", address(other), "blackhole"],
            ["from", address(other), "to", address(one), "blackhole"],
        ]

    def remove(self) -> None:
        # Deleting a namespace destroys its veth ends, and with them their peers.
        for name in reversed(self.made):
            run(["ip", "netns", "del", name])
        self.made.clear()


class NetnsSockets:
    """Sockets made inside a namespace, by a thread that joined it: the test's
    HTTP clients stay in this process, yet never send from the root namespace."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._pool = ThreadPoolExecutor(1, initializer=self._enter)
        self.socket().close()  # the thread did join it (else the pool is broken)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns({self.netns}): {os.strerror(errno)}")
        finally:
            os.close(fd)
        # Make sure: a socket from the root namespace would leave the machine.
        joined = os.stat("/proc/thread-self/ns/net").st_ino
        assert joined == os.stat(f"/run/netns/{self.netns}").st_ino, self.netns

    def socket(self) -> socket.socket:
        return self._pool.submit(socket.socket, socket.AF_INET, socket.SOCK_STREAM).result(10)

    def reachable(self, host: str, port: int) -> bool:
        sock = self.socket()
        try:
            sock.settimeout(1.0)
            sock.connect((host, port))
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def close(self) -> None:
        self._pool.shutdown()


class NetnsConnection(http.client.HTTPConnection):
    """http.client over a socket of the client namespace."""

    def __init__(self, sockets: NetnsSockets, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._sockets = sockets

    def connect(self) -> None:
        sock = self._sockets.socket()
        sock.settimeout(self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect((self.host, self.port))
        self.sock = sock


# -- processes in the namespaces ---------------------------------------------------------


@dataclass
class Daemon:
    """A process started inside a namespace (``ip netns exec`` execs it: the
    Popen is the program itself, so signals reach it)."""

    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    stop_signal: int = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.cmd, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self, ready: Callable[[], bool]) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log()}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start:\n{self.log()}")

    def logged(self, phrase: str) -> bool:
        return phrase in self.log()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def postgres_bin() -> Path | None:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    usable = [b for b in found if (b / "initdb").exists() and (b / "postgres").exists()]
    return usable[-1] if usable else None


def as_postgres(*cmd: str) -> list[str]:
    # PostgreSQL refuses to run as root; setpriv execs (no process in between).
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--", *cmd]


@dataclass
class Host:
    """A server host: a uvicorn in a namespace of its own."""

    role: str
    daemon: Daemon

    @property
    def address(self) -> str:
        return address(self.role)

    def log(self) -> str:
        return self.daemon.log()

    def lines(self, phrase: str) -> list[str]:
        return [line for line in self.log().splitlines() if phrase in line]


@dataclass
class Cluster:
    network: Network
    client: NetnsSockets
    host_a: Host
    host_b: Host


def require_tools() -> Path:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    for tool in ("ip", "setpriv", "redis-server"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (iproute2, util-linux, redis-server)")
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's binaries (initdb, postgres) are not under /usr/lib/postgresql")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres system user to run PostgreSQL as")
    return bin_dir


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    bin_dir = require_tools()
    with contextlib.ExitStack() as stack:
        network = Network()
        stack.callback(network.remove)
        network.build()
        client = NetnsSockets(network.ns("client"))
        stack.callback(client.close)

        # PostgreSQL: a fresh cluster in the db namespace. Its data directory is
        # not under tmp_path, whose parents only root may enter.
        postgres = pwd.getpwnam("postgres")
        data = Path(tempfile.mkdtemp(prefix=f"longpoll-hosts-{os.getpid()}-"))
        stack.callback(shutil.rmtree, data, True)
        os.chown(data, postgres.pw_uid, postgres.pw_gid)
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        made = subprocess.run(
            as_postgres(*initdb, "-E", "UTF8", "--no-locale", "--no-sync"),
            cwd=data,
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT,
            check=False,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        # Trust only the test's own network (no Unix socket either: see below).
        (data / "pg_hba.conf").write_text(f"host all all {NETWORK} trust\n")
        settings = {
            "listen_addresses": address("db"),
            "port": str(PG_PORT),
            "unix_socket_directories": "",  # the machine's PostgreSQL owns the usual one
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "60",  # two servers' pools (20 each) and a migrate
        }
        options = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        pg = Daemon(
            "postgres",
            network.exec("db", *as_postgres(str(bin_dir / "postgres"), "-D", str(data), *options)),
            tmp_path / "postgres.log",
            cwd=data,
            stop_signal=signal.SIGINT,  # "fast" shutdown: SIGTERM waits for clients
        ).start()
        stack.callback(pg.stop)
        pg.wait_ready(partial(pg.logged, "database system is ready to accept connections"))

        redis = Daemon(
            "redis",
            network.exec(
                "redis",
                *("redis-server", "--bind", address("redis"), "--port", str(REDIS_PORT)),
                *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
                # Else it refuses every client not on loopback; only the test's
                # namespaces can reach this address.
                *("--protected-mode", "no"),
            ),
            tmp_path / "redis.log",
        ).start()
        stack.callback(redis.stop)
        redis.wait_ready(partial(redis.logged, "Ready to accept connections"))

        env = server_env(
            DATABASE_URL=f"postgres://postgres@{address('db')}:{PG_PORT}/postgres",
            REDIS_URL=f"redis://{address('redis')}:{REDIS_PORT}/0",
            DJANGO_ALLOWED_HOSTS=f"{address('host-a')},{address('host-b')}",
            DJANGO_DEBUG="0",
        )
        migrated = subprocess.run(
            network.exec("host-a", sys.executable, "manage.py", "migrate", "-v0"),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=MIGRATE_TIMEOUT,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr

        hosts = []
        for role in ("host-a", "host-b"):
            uvicorn = ["-m", "uvicorn", "project.asgi:application", "--host", address(role)]
            uvicorn += ["--port", str(HTTP_PORT), "--loop", "uvloop", "--http", "httptools"]
            daemon = Daemon(
                role,
                network.exec(role, sys.executable, *uvicorn),
                tmp_path / f"{role}.log",
                env=env,
                cwd=ROOT,
            ).start()
            stack.callback(daemon.stop)
            hosts.append(Host(role, daemon))
        for host in hosts:
            host.daemon.wait_ready(partial(client.reachable, host.address, HTTP_PORT))
        yield Cluster(network, client, *hosts)


# -- browsers ---------------------------------------------------------------------------

_client_ids = count()


@dataclass
class Browser:
    """Cookies and CSRF token of one browser; its sockets come from the client
    namespace. One cookie jar for both hosts, as behind a balancer."""

    sockets: NetnsSockets
    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self, host: Host, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT
    ) -> Reply:
        conn = NetnsConnection(self.sockets, host.address, HTTP_PORT, timeout)
        headers = {"Origin": f"http://{host.address}:{HTTP_PORT}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if "csrftoken" in self.cookies:
            headers["X-CSRFToken"] = self.cookies["csrftoken"]
        raw = None if body is None else json.dumps(body).encode()
        if raw is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=raw, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            jar = http.cookies.SimpleCookie(header)
            self.cookies.update({k: m.value for k, m in jar.items()})
        return Reply(response.status, dict(response.headers), data)

    def open_page(self, host: Host) -> None:
        reply = self.request(host, "GET", "/")
        assert reply.status == 200, reply
        assert "sessionid" in self.cookies and "csrftoken" in self.cookies, self.cookies

    def echo(self, host: Host, data: Any) -> None:
        """demo.echo: its handler, on ``host``, sends ``data`` back to this session."""
        body = {"id": f"echo-{next(_client_ids)}", "type": "demo.echo", "data": data}
        reply = self.request(host, "POST", "/longpoll/send/", body)
        assert reply.status == 200, (reply.status, reply.body)


@dataclass
class Receipt:
    id: int
    data: Any
    at: float  # time.monotonic() when the answer carrying it arrived


@dataclass
class PollLoop:
    """One page polling one host without pause, keeping every message it is
    given, duplicates included (so that the test can tell "exactly once")."""

    name: str
    browser: Browser
    host: Host
    cursor: int | None = None
    receipts: list[Receipt] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    gaps: int = 0
    polling_since: float | None = None  # when the poll in flight was sent
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> PollLoop:
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + LOOP_LIMIT
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.polling_since = time.monotonic()
            try:
                reply = self.browser.request(
                    self.host, "POST", "/longpoll/poll/", {"cursor": self.cursor}
                )
            except Exception as exc:
                self.errors.append(f"poll on {self.host.role}: {exc!r}")
                time.sleep(0.5)
                continue
            finally:
                self.polling_since = None
            self.statuses.append(reply.status)
            if reply.status == 204:
                continue
            if reply.status != 200:
                self.errors.append(f"poll on {self.host.role}: {reply.status} {reply.body!r}")
                time.sleep(0.5)
                continue
            now = time.monotonic()
            body = reply.json()
            self.gaps += bool(body["gap"])
            for message in body["messages"]:
                self.receipts.append(Receipt(message["id"], message["data"], now))
            self.cursor = body["cursor"]
            if any(message["data"] == BYE for message in body["messages"]):
                return

    def data(self) -> list[Any]:
        return [r.data for r in list(self.receipts)]

    def has(self, data: Any) -> bool:
        return data in self.data()

    def arrival(self, data: Any) -> float:
        return next(r.at for r in list(self.receipts) if r.data == data)

    def held(self, since: float) -> bool:
        """A poll sent after ``since`` has been in flight for ``HELD_FOR``: held."""
        started = self.polling_since
        return started is not None and started >= since and time.monotonic() - started >= HELD_FOR


def timed_sends(sender: Host, loops: list[PollLoop], label: str, since: float) -> list[float]:
    """Once every loop holds a poll sent after ``since``, send each a message
    through ``sender``; the seconds from each send to its arrival."""
    assert wait_until(lambda: all(loop.held(since) for loop in loops), HOLD + MARGIN), [
        (loop.name, loop.polling_since) for loop in loops
    ]
    started = {}
    for loop in loops:
        started[loop.name] = time.monotonic()
        loop.browser.echo(sender, f"{loop.name}:{label}")
    arrived = wait_until(
        lambda: all(loop.has(f"{loop.name}:{label}") for loop in loops), HOLD + MARGIN
    )
    assert arrived, [(loop.name, loop.data()) for loop in loops]
    return [loop.arrival(f"{loop.name}:{label}") - started[loop.name] for loop in loops]


# -- the scenario ---------------------------------------------------------------------------


def test_wake_ups_cross_hosts_and_a_host_cut_off_redis_loses_nothing(
    cluster: Cluster,
) -> None:
    host_a, host_b = cluster.host_a, cluster.host_b
    loops: list[PollLoop] = []
    for name, host in (("b1", host_b), ("b2", host_b), ("a1", host_a), ("a2", host_a)):
        browser = Browser(cluster.client)
        browser.open_page(host_a)  # every session is made on host-a
        loops.append(PollLoop(name, browser, host).start())
    on_b = [loop for loop in loops if loop.host is host_b]
    expected: dict[str, list[Any]] = {loop.name: [] for loop in loops}

    def send_all(label: str) -> dict[str, float]:
        sent = {}
        for loop in loops:
            loop.browser.echo(host_a, f"{loop.name}:{label}")
            sent[loop.name] = time.monotonic()
            expected[loop.name].append(f"{loop.name}:{label}")
        return sent

    def all_delivered() -> bool:
        return all(loop.data() == expected[loop.name] for loop in loops)

    try:
        # Every host follows its sessions (their first polls read the store).
        send_all("hello")
        assert wait_until(all_delivered, HOLD + MARGIN), [loop.data() for loop in loops]

        # 1. Sends through host-a wake the polls held on host-b, through Redis.
        before: list[float] = []
        for n in range(WAKE_ROUNDS):
            before += timed_sends(host_a, on_b, f"wake-{n}", since=0.0)
            for loop in on_b:
                expected[loop.name].append(f"{loop.name}:wake-{n}")
        assert max(before) < WAKE_BOUND, before
        for host in (host_a, host_b):
            assert host.lines(LOST) == [], host.log()  # both reached Redis all along

        # 2. host-b cut off Redis; PostgreSQL and the browsers still reach it.
        cluster.network.cut("host-b", "redis")
        cut_at = time.monotonic()
        assert wait_until(lambda: host_b.daemon.logged(LOST), LAYER_TIMEOUT), host_b.log()
        noticed = time.monotonic() - cut_at
        sent: dict[str, dict[str, float]] = {}
        for n in range(OUTAGE_SENDS):
            sent[f"outage-{n}"] = send_all(f"outage-{n}")
        # Delivered while the cut lasts: host-b's polls read the store (a poll
        # held when the messages came answers at the end of its hold, the next
        # one reads them).
        assert wait_until(all_delivered, HOLD + MARGIN), [
            (loop.name, loop.data()) for loop in loops
        ]
        assert not host_b.daemon.logged(BACK), host_b.log()  # the cut did hold meanwhile
        from_store = max(
            loop.arrival(f"{loop.name}:{label}") - at[loop.name]
            for label, at in sent.items()
            for loop in loops
        )
        cluster.network.restore("host-b", "redis")
        restored_at = time.monotonic()
        assert wait_until(lambda: host_b.daemon.logged(BACK), LAYER_TIMEOUT), host_b.log()
        back_seen = time.monotonic()
        recovered = back_seen - restored_at
        outage = back_seen - cut_at

        # 3. Wake-ups cross again (the polls after the recovery joined anew).
        after: list[float] = []
        for n in range(WAKE_ROUNDS):
            after += timed_sends(host_a, on_b, f"after-{n}", since=back_seen)
            for loop in on_b:
                expected[loop.name].append(f"{loop.name}:after-{n}")

        for loop in loops:
            loop.browser.echo(host_a, BYE)
            expected[loop.name].append(BYE)
        for loop in loops:
            assert loop.thread is not None
            loop.thread.join(REQUEST_TIMEOUT + HOLD)
            assert not loop.thread.is_alive(), (loop.name, loop.data())
    finally:
        for loop in loops:
            # A loop still running after a failure above stops at its next poll,
            # rather than poll the stopped servers until LOOP_LIMIT.
            loop.stop.set()

    print(
        f"\nacross hosts: a send through host-a woke a poll held on host-b within "
        f"{max(before):.3f} s (median {sorted(before)[len(before) // 2]:.3f} s); "
        f"host-b noticed the cut after {noticed:.1f} s; messages sent meanwhile arrived "
        f"from the store within {from_store:.1f} s; host-b reached Redis again "
        f"{recovered:.1f} s after the link returned ({outage:.1f} s of outage); then "
        f"wake-ups within {max(after):.3f} s"
    )
    assert max(after) < WAKE_BOUND, after
    for loop in loops:
        assert loop.errors == [], (loop.name, loop.errors)
        assert loop.gaps == 0, loop.name
        assert set(loop.statuses) <= {200, 204}, (loop.name, loop.statuses)
        # Every message exactly once (receipts keep duplicates), in order.
        assert loop.data() == expected[loop.name], loop.name
        ids = [r.id for r in loop.receipts]
        assert ids == sorted(set(ids)), (loop.name, ids)
    # The outage is logged once on host-b, and its end once; host-a kept Redis.
    assert len(host_b.lines(LOST)) == 1, host_b.log()
    assert len(host_b.lines(BACK)) == 1, host_b.log()
    assert host_a.lines(LOST) == [] and host_a.lines(BACK) == [], host_a.log()
    for host in (host_a, host_b):
        assert "Traceback" not in host.log(), host.log()
