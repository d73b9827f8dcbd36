"""The servers under test: their configurations, their databases, starting and stopping them.

    baseline-tornado        bench/baseline_timer.py (the timer design being replaced)
    floor-daphne            bench/floor_app.py under daphne
    floor-uvicorn           bench/floor_app.py under uvicorn (uvloop + httptools)
    floor-granian           bench/floor_app.py under granian (one worker, uvloop)
    project-daphne-embedded project.asgi:application, daphne, SQLite + in-process layer
    project-uvicorn-embedded   ... uvicorn
    project-daphne-scaled   project.asgi:application, daphne, PostgreSQL + Redis
    project-uvicorn-scaled     ... uvicorn
    project-uvicorn-postgres   ... uvicorn, PostgreSQL alone (LISTEN/NOTIFY wake-ups, no Redis)
    project-granian-embedded, project-granian-scaled   ... granian

Every server is one process, started fresh for every run (granian: its
supervisor and one worker, measured together as the process tree).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from bench.common import BIN, HOST, PY, ROOT, log
from bench.measure import tree

ALL_SERVERS = (
    "baseline-tornado",
    "floor-daphne",
    "floor-uvicorn",
    "floor-granian",
    "project-daphne-embedded",
    "project-uvicorn-embedded",
    "project-daphne-scaled",
    "project-uvicorn-scaled",
    "project-uvicorn-postgres",
    "project-granian-embedded",
    "project-granian-scaled",
)
# granian counts held polls against its backpressure (1,024 by default): past it a
# new request waits for a held one to end. The benchmark holds tens of thousands.
GRANIAN_BACKPRESSURE = 100_000
REDIS_PORT = 6379
PG_PORT = 5432
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "9"))  # flushed before every scaled run
PG_DB = os.environ.get("BENCH_PG_DB", "longpoll_bench")  # dropped and re-created per invocation
PG_ALONE_DB = f"{PG_DB}_alone"  # the PostgreSQL-alone runs' own, so that neither sees the other's
DEFAULT_HOLD_S = 10.0  # the project's LONGPOLL_TIMEOUT default
START_TIMEOUT_S = 60.0  # a server not answering its health path by then failed to start
START_POLL_S = 0.2
STOP_GRACE_S = 8.0  # SIGTERM, then this long before the process tree is killed

# The environment that selects each database: "embedded", "scaled" or "postgres" -> variables.
Databases = Mapping[str, Mapping[str, str]]


def project_env(hold: float, root: Path = ROOT) -> dict[str, str]:
    """What the project's processes (server, sender, make_sessions, migrate) run with.

    `root` is the source tree whose ``longpoll_app`` and ``project`` they import
    (bench/ab.py runs a baseline commit's tree beside the working tree's):
    first on PYTHONPATH, and in BENCH_APP_ROOT, which bench/sender.py,
    bench/make_sessions.py and bench/send_cost.py put first on their sys.path.
    """
    env = {
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "0",  # with DEBUG on, Django keeps every SQL query in memory
        "LONGPOLL_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "BENCH_APP_ROOT": str(root),
    }
    if hold != DEFAULT_HOLD_S:
        # LONGPOLL_TIMEOUT is a Django setting (default 10 s); only short smoke
        # runs change it, through a settings module that wraps the project's.
        env["DJANGO_SETTINGS_MODULE"] = "bench.settings_bench"
        env["BENCH_HOLD"] = str(hold)
    return env


@dataclass(frozen=True)
class ServerSpec:
    """One server under test: its name (one of ALL_SERVERS), hold, environment and source tree."""

    name: str
    hold: float  # seconds a poll is held
    env: Mapping[str, str]
    root: Path = ROOT  # the tree it runs from (its cwd) and imports the app from

    @classmethod
    def configure(cls, name: str, hold: float, dbs: Databases, root: Path = ROOT) -> ServerSpec:
        env = dict(os.environ)
        # The runner's own environment must not pick a database (or a tree) for the server.
        for var in ("REDIS_URL", "DATABASE_URL", "SQLITE_PATH", "BENCH_APP_ROOT"):
            env.pop(var, None)
        database = cls(name, hold, {}).database
        if database is not None:
            env.update(dbs[database])
            env.update(project_env(hold, root))
        env["FLOOR_HOLD"] = str(hold)
        return cls(name, hold, env, root)

    @property
    def kind(self) -> str:
        """baseline | floor | project; also the load generator's --mode."""
        return self.name.split("-")[0]

    @property
    def server(self) -> str:
        """tornado | daphne | uvicorn | granian"""
        return self.name.split("-")[1]

    @property
    def database(self) -> str | None:
        """embedded | scaled | postgres: the database (and session cookies) a project
        server uses."""
        parts = self.name.split("-")
        return parts[2] if self.kind == "project" and len(parts) > 2 else None

    @property
    def health_path(self) -> str:
        return "/health" if self.kind == "baseline" else "/"

    def command(self, port: int) -> list[str]:
        if self.kind == "baseline":
            return [PY, "bench/baseline_timer.py", "--port", str(port), "--hold", str(self.hold)]
        app = "bench.floor_app:app" if self.kind == "floor" else "project.asgi:application"
        if self.server == "daphne":
            return [str(BIN / "daphne"), "-b", HOST, "-p", str(port), "-v", "0", app]
        if self.server == "granian":
            return [
                *(PY, "-m", "granian", "--interface", "asgi", "--host", HOST),
                *("--port", str(port), "--workers", "1", "--loop", "uvloop"),
                *("--backpressure", str(GRANIAN_BACKPRESSURE), "--log-level", "warning"),
                *("--no-access-log", app),
            ]
        return [
            str(BIN / "uvicorn"),
            app,
            "--host",
            HOST,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
            "--lifespan",
            "off",
        ]


# --------------------------------------------------------------------------- databases
def databases_needed(names: Iterable[str]) -> set[str]:
    """The databases the project servers among `names` run on."""
    return {name.split("-")[2] for name in names if name.startswith("project")}


def prepare_dbs(
    workdir: Path, need: set[str], root: Path = ROOT, pg_db: str = PG_DB
) -> dict[str, dict[str, str]]:
    """A fresh SQLite file and a re-created PostgreSQL database, migrated; their environments.

    `root` is the tree whose migrations make the tables; `pg_db` names the
    PostgreSQL databases (pg_db, and pg_db_alone for PostgreSQL alone).
    """
    pg_alone_db = f"{pg_db}_alone"
    dbs: dict[str, dict[str, str]] = {
        "embedded": {"SQLITE_PATH": str(workdir / "embedded.sqlite3")},
        "scaled": {
            "REDIS_URL": f"redis://{HOST}:{REDIS_PORT}/{REDIS_DB}",
            "DATABASE_URL": f"postgres://postgres@{HOST}:{PG_PORT}/{pg_db}",
        },
        # No REDIS_URL: the project's in-process layer, so "auto" wakes through PostgreSQL.
        "postgres": {"DATABASE_URL": f"postgres://postgres@{HOST}:{PG_PORT}/{pg_alone_db}"},
    }
    for db, name in (("scaled", pg_db), ("postgres", pg_alone_db)):
        if db not in need:
            continue
        for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
            subprocess.run(
                ["psql", "-h", HOST, "-U", "postgres", "-q", "-c", sql],
                check=True,
                capture_output=True,
            )
    for db in need:
        env = dict(os.environ)
        env.update(dbs[db])
        env.update(project_env(DEFAULT_HOLD_S, root))
        t = time.monotonic()
        out = subprocess.run(
            [PY, "manage.py", "migrate", "--noinput"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"migrate ({db}) failed:\n{out.stdout}\n{out.stderr}")
        log(f"migrated {db} in {time.monotonic() - t:.1f}s")
    return dbs


def flush_redis() -> None:
    """Empties the scaled runs' Redis database, so no run sees the last one's channels."""
    import redis

    redis.Redis(host=HOST, port=REDIS_PORT, db=REDIS_DB).flushdb()


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> int:
    """The status of one GET on a fresh connection (0 if the server closed without answering)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


@dataclass(frozen=True)
class Server:
    """A started server: its process (the root of its tree) and the port it answers on."""

    spec: ServerSpec
    port: int
    proc: subprocess.Popen[bytes]
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def start(spec: ServerSpec, port: int, log_path: Path) -> Server:
    """Starts the server and waits until its health path answers 200 (bounded)."""
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(
        spec.command(port), cwd=spec.root, env=dict(spec.env), stdout=log_file, stderr=log_file
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_file.close()
            raise RuntimeError(f"{spec.name} exited at start: see {log_path}")
        try:
            if http_get(port, spec.health_path) == 200:
                return Server(spec, port, proc, log_file)
        except OSError:
            pass
        time.sleep(START_POLL_S)
    proc.kill()
    proc.wait()
    log_file.close()
    raise RuntimeError(f"{spec.name} not answering on {port} after {START_TIMEOUT_S:.0f} s")


def stop(server: Server) -> None:
    """SIGTERM, then the whole process tree is killed if it has not exited in STOP_GRACE_S."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            for p in reversed(tree(proc.pid)):
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            proc.wait(10)
    server.log_file.close()


@contextlib.contextmanager
def running(spec: ServerSpec, port: int, log_path: Path) -> Iterator[Server]:
    """The server, started for the block and stopped after it, whatever happens inside."""
    server = start(spec, port, log_path)
    try:
        yield server
    finally:
        stop(server)
