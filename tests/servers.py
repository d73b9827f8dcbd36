"""Real server processes for the tests that need them, and a tiny HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import http.cookies
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
STARTUP_TIMEOUT = 30.0  # seconds a server may take to accept connections
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # per second, as /proc counts CPU time
IDLE_SHARE = 0.05  # of one core: more, and a server is still at work


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Whether ``condition()`` came true within ``timeout`` seconds (asked every ``interval``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2).close()
        return True
    except Exception:
        return False


def fresh_postgres_database(name: str) -> str:
    """Drop and create a database; return its URL."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def manage(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Server:
    kind: str  # "daphne", "uvicorn", "granian" or "runserver"
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    access_log: bool = False  # uvicorn, granian: log every response, as daphne does anyway
    cwd: Path = ROOT  # the project's folder
    app: str = "project.asgi:application"
    python: str = sys.executable
    workers: int = 1  # granian: worker processes under its supervisor

    def command(self) -> list[str]:
        port = str(self.port)
        if self.kind == "runserver":
            return ["manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
        if self.kind == "daphne":
            return ["-m", "daphne", "-b", "127.0.0.1", "-p", port, self.app]
        if self.kind == "granian":
            # Worker processes under granian's own supervisor (the process
            # started here), their event loops uvloop, as uvicorn's.
            granian = ["-m", "granian", "--interface", "asgi", "--host", "127.0.0.1"]
            granian += ["--port", port, "--workers", str(self.workers), "--loop", "uvloop"]
            access = "--access-log" if self.access_log else "--no-access-log"
            return [*granian, access, self.app]
        uvicorn = ["-m", "uvicorn", "--host", "127.0.0.1", "--port", port, self.app]
        uvicorn += ["--loop", "uvloop", "--http", "httptools"]
        return uvicorn if self.access_log else [*uvicorn, "--no-access-log"]

    @property
    def supervised(self) -> bool:
        """granian serves from a worker process that its supervisor (the process
        started here) forks: a SIGKILL must reach both, or the worker lives on,
        still listening on the port."""
        return self.kind == "granian"

    def start(self, log_dir: Path) -> Server:
        self.log_path = log_dir / f"{self.kind}-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.python, *self.command()],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.supervised,  # a process group of its own to kill
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL to the server, and to its workers when it has any."""
        assert self.process is not None
        if self.supervised:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.kill()
        self.process.wait(10)

    def worker_pids(self) -> list[int]:
        """The processes that run the app: granian's workers, else the server itself."""
        assert self.process is not None
        if not self.supervised:
            return [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def worker_pid(self) -> int:
        """The one process that runs the app."""
        pids = self.worker_pids()
        assert len(pids) == 1, f"{self.kind}: workers {pids}"
        return pids[0]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpBrowser:
    """Cookies and CSRF token of one browser, usable against any of the servers."""

    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        server: Server | Nginx,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 15.0,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        headers = {"Origin": f"http://127.0.0.1:{server.port}"}
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

    def open_page(self, server: Server | Nginx) -> None:
        reply = self.request(server, "GET", "/")
        assert reply.status == 200, reply
        assert "sessionid" in self.cookies and "csrftoken" in self.cookies, self.cookies

    def poll(
        self, server: Server | Nginx, cursor: int | None = None, timeout: float = 15.0
    ) -> Reply:
        return self.request(server, "POST", "/longpoll/poll/", {"cursor": cursor}, timeout)

    def send(self, server: Server | Nginx, client_id: str, type: str, data: Any) -> Reply:
        return self.request(
            server, "POST", "/longpoll/send/", {"id": client_id, "type": type, "data": data}
        )


# -- Fault injection and measurement (test_faults.py, test_soak.py) ------------------


def server_env(**extra: str) -> dict[str, str]:
    """This process's environment for a server or command, without the URLs it may carry."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="project.settings", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def migrated_postgres_database(name: str, env: dict[str, str]) -> str:
    """A fresh database, migrated; its URL. ``env`` gets ``DATABASE_URL``."""
    env["DATABASE_URL"] = fresh_postgres_database(name)
    migrated = manage(env, "migrate", "-v0")
    assert migrated.returncode == 0, migrated.stderr
    return env["DATABASE_URL"]


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis_db(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()


@contextlib.contextmanager
def private_redis(log_dir: Path, fallback_url: str) -> Iterator[str]:
    """The URL of a Redis for one test run: a redis-server of its own when one is
    installed (runs side by side share nothing), else ``fallback_url``, a db
    number of the shared server, flushed before and after."""
    if shutil.which("redis-server") is not None:
        server = RedisServer().start(log_dir)
        try:
            yield server.url()
        finally:
            server.kill()
        return
    flush_redis_db(fallback_url)
    try:
        yield fallback_url
    finally:
        flush_redis_db(fallback_url)


@dataclass
class ServerProcess:
    """Measurements of a running server process, read from /proc."""

    pid: int

    def status(self, field_name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise LookupError(field_name)

    def rss_kb(self) -> int:
        return self.status("VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return self.status("Threads")

    def peer_ports(self) -> set[int]:
        """The remote ports of the TCP sockets this process holds open: a
        connection the server has closed is no longer among them, whatever else
        (database files, pool threads' connections) it opened meanwhile."""
        inodes = set()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        ports = set()
        for table in ("tcp", "tcp6"):
            lines = Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]
            for fields in (line.split() for line in lines):
                if fields[9] in inodes:
                    ports.add(int(fields[2].rsplit(":", 1)[1], 16))
        return ports

    def cpu_ticks(self) -> int:
        # utime and stime: fields 14 and 15, counted after the ")" that ends the name.
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def wait_idle(self, quiet: float = 0.3, timeout: float = 15.0) -> Idle:
        """Wait until the process used at most ``IDLE_SHARE`` of a core for
        ``quiet`` seconds: it has dealt with everything sent to it. False if that
        did not happen within ``timeout``; its repr gives the ticks of each window.

        An idle server is not silent: its paced collector, status reports and
        layer keep-alives take a few ms a second, in bursts (several times that
        for seconds on end, seen in the full suite), and the kernel counts the
        whole process's time in 10 ms ticks. A server still working through
        what was sent to it takes most of a core."""
        allowed = max(1, int(quiet * CLOCK_TICKS * IDLE_SHARE))
        deadline = time.monotonic() + timeout
        windows: list[int] = []
        ticks = self.cpu_ticks()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.cpu_ticks()
            windows.append(now - ticks)
            if windows[-1] <= allowed:
                return Idle(True, quiet, allowed, windows)
            ticks = now
        return Idle(False, quiet, allowed, windows)


@dataclass
class Idle:
    """What ``ServerProcess.wait_idle`` saw: true if the process went idle."""

    idle: bool
    quiet: float  # seconds per window
    allowed: int  # clock ticks a window may use and count as idle
    windows: list[int]  # clock ticks used in each window

    def __bool__(self) -> bool:
        return self.idle

    def __repr__(self) -> str:
        state = "idle" if self.idle else "never idle"
        return (
            f"<{state}: ticks per {self.quiet} s window {self.windows}, "
            f"at most {self.allowed} counts as idle>"
        )


def running(server: Server) -> ServerProcess:
    assert server.process is not None and server.process.poll() is None, server.kind
    return ServerProcess(server.worker_pid())


def kill(server: Server) -> None:
    """SIGKILL: no shutdown code runs, as when the machine or the OOM killer ends it."""
    server.kill()


def restart(server: Server) -> str:
    """Start the server again on its port; the log of the run before, which
    is kept beside the new one."""
    assert server.log_path is not None
    before = server.log()
    server.log_path.rename(server.log_path.with_suffix(f".before-{time.monotonic_ns()}.log"))
    server.start(server.log_path.parent)
    return before


@dataclass
class RedisServer:
    """A redis-server of the test's own, to kill and start again on the same port.

    Nothing is saved to disk, so a restarted server has forgotten everything
    (groups included), as a Redis restarted without persistence has.
    """

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, log_dir: Path) -> RedisServer:
        self.log_path = log_dir / f"redis-{self.port}.log"
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(log_dir)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited early:\n{self.log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.log()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


class PostgresProxy:
    """A TCP proxy to PostgreSQL that can cut the database off and bring it back.

    ``pause()`` closes every open connection and refuses new ones (nothing
    listens on the port), as a database that went down does; ``resume()``
    listens again on the same port. The proxy runs an asyncio loop in a thread
    of its own.
    """

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        import asyncio
        import threading

        self.upstream = upstream
        self.port = free_port()
        self.accepted = 0  # connections taken since the start
        self.loop = asyncio.new_event_loop()
        self._server: Any = None
        self._transports: set[Any] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.resume()

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def resume(self) -> None:
        self._call(self._listen())

    def pause(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self._call(self._cut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _listen(self) -> None:
        import asyncio

        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # listen no more
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        if server is not None:
            # Only now: since Python 3.12.1 wait_closed() also waits for the
            # server's open connections, which the aborts above end.
            await server.wait_closed()

    async def _handle(self, reader: Any, writer: Any) -> None:
        import asyncio

        self.accepted += 1
        self._transports.add(writer.transport)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            self._transports.discard(writer.transport)
            return
        self._transports.add(up_writer.transport)
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._transports.discard(w.transport)
            w.transport.abort()


async def _pipe(reader: Any, writer: Any) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()  # one side ended: end the other too


def raw_request(
    browser: HttpBrowser, server: Server, path: str, body: Any, *, close: bool = True
) -> bytes:
    """The bytes of a JSON POST as ``HttpBrowser`` sends it, for raw sockets."""
    raw = json.dumps(body).encode()
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Origin: http://127.0.0.1:{server.port}",
        f"Cookie: {cookie}",
        f"X-CSRFToken: {browser.cookies['csrftoken']}",
        "Content-Type: application/json",
        f"Content-Length: {len(raw)}",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


async def read_reply(reader: Any) -> Reply:
    """One HTTP/1.1 response from an asyncio stream (Content-Length or none)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Reply(status, headers, body)


# -- nginx in front, as the deployment page configures it -----------------------------

# The page's addresses, each replaced by the test's own.
NGINX_LISTEN = "listen 80;"
NGINX_UPSTREAMS = ["server 127.0.0.1:8001;", "server 127.0.0.1:8002;"]
NGINX_STATIC_ROOT = "/srv/mysite/staticfiles/"
NGINX_TEMP_DIRS = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
# Each request: when it ended, how long it took, its status and the upstreams tried.
ACCESS_FORMAT = "$msec $request_time $status $uri $upstream_addr"


@dataclass
class Nginx:
    """An nginx of the test's own, with the page's configuration in its http block."""

    work: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def configure(self, block: str, upstreams: list[int], static_root: Path) -> Path:
        temp = "\n".join(f"    {name}_temp_path {self.work / name};" for name in NGINX_TEMP_DIRS)
        # Workers run as root when the test does: the project's files are readable
        # by their owner only (pytest's temporary directories are 0700).
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = self.work / "nginx.conf"
        conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.work / 'nginx.pid'};\n"
            f"error_log {self.work / 'error.log'} info;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    log_format upstreams '{ACCESS_FORMAT}';\n"
            f"    access_log {self.work / 'access.log'} upstreams;\n{temp}\n"
            f"{self._own_addresses(block, upstreams, static_root)}\n}}\n"
        )
        return conf

    def _own_addresses(self, block: str, upstreams: list[int], static_root: Path) -> str:
        replacements = {NGINX_LISTEN: f"listen 127.0.0.1:{self.port};"}
        replacements[NGINX_STATIC_ROOT] = f"{static_root}/"
        for placeholder, port in zip(NGINX_UPSTREAMS, upstreams, strict=True):
            replacements[placeholder] = f"server 127.0.0.1:{port};"
        for placeholder, own in replacements.items():
            assert placeholder in block, f"the page's nginx block no longer has {placeholder!r}"
            block = block.replace(placeholder, own)
        return block

    def start(self, conf: Path) -> Nginx:
        nginx = shutil.which("nginx")
        assert nginx is not None
        cmd = [nginx, "-p", str(self.work), "-c", str(conf), "-e", str(self.work / "error.log")]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited early:\n{self.log()}")
            with contextlib.suppress(OSError):
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5).connect()
                return self
            time.sleep(0.1)
        raise RuntimeError(f"nginx did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)

    def log(self) -> str:
        path = self.work / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def requests(self) -> list[Logged]:
        """The access log so far, one entry per request nginx answered."""
        path = self.work / "access.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [Logged.parse(line) for line in lines if line]


@dataclass(frozen=True)
class Logged:
    """A request in the nginx access log (``ACCESS_FORMAT``)."""

    ended: float  # wall-clock seconds, as time.time()
    seconds: float  # how long nginx took to answer it
    status: int
    uri: str
    upstreams: tuple[int, ...]  # the ports nginx tried, in order

    @property
    def started(self) -> float:
        return self.ended - self.seconds

    @classmethod
    def parse(cls, line: str) -> Logged:
        ended, seconds, status, uri, upstreams = line.split(" ", 4)
        ports = tuple(int(port) for port in re.findall(r":(\d+)", upstreams))  # "-": none
        return cls(float(ended), float(seconds), int(status), uri, ports)
