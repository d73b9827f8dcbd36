"""Benchmark runner for issue 5: held polls, idle CPU, memory, latency, loss, bursts.

One command (from the repository root, in the project's virtualenv with
bench/requirements.txt installed):

    python bench/run.py --n 1000 5000 10000

For each N and each server, in one run and side by side:

    baseline-tornado        bench/baseline_timer.py (the timer design being replaced)
    floor-daphne            bench/floor_app.py under daphne
    floor-uvicorn           bench/floor_app.py under uvicorn (uvloop + httptools)
    project-daphne-embedded project.asgi:application, daphne, SQLite + in-process layer
    project-uvicorn-embedded   ... uvicorn
    project-daphne-scaled   project.asgi:application, daphne, PostgreSQL + Redis
    project-uvicorn-scaled     ... uvicorn

it starts the server, has the load generators (bench/loadgen.py, several
processes) open N browsers whose first polls are spread over one hold period,
waits for the steady state, then:

  1. idle: server CPU (user+sys from /proc/<pid>/stat of the server's processes)
     over one whole hold period + 1 s with no messages, as a share of one core;
     RSS growth over the same N held polls, per poll;
  2. latency: bench/sender.py sends --rate messages/s for --duration s to random
     browsers (project: send_to_session; baseline: POST /send);
  3. burst: --burst messages to one browser, time until it has them all;
  4. loss and failures over the whole run.

Results go to bench/results/results-<stamp>.json (and results-latest.json),
raw per-run files to bench/results/raw/, and the table, the plot
(bench/results/benchmarks.png) and the machine's description into the
generated part of docs/benchmarks.md.

Only 127.0.0.1 is ever contacted. Every wait is bounded; --max-minutes bounds
the whole run (remaining runs are skipped and said so).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = RESULTS / "benchmarks.png"
PY = sys.executable
BIN = Path(PY).parent
HOST = "127.0.0.1"
BURST_SEQ = 1_000_000
ARGS_RATE_DURATION = [100.0, 10.0]  # set from the arguments in main(); for the table's notes
ARGS_BURST = [1000]
SATURATED = 0.80  # idle CPU (share of one core) from which doubling N cannot fit in one core
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "9"))
PG_DB = os.environ.get("BENCH_PG_DB", "longpoll_bench")

ALL_SERVERS = [
    "baseline-tornado",
    "floor-daphne",
    "floor-uvicorn",
    "project-daphne-embedded",
    "project-uvicorn-embedded",
    "project-daphne-scaled",
    "project-uvicorn-scaled",
]


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# --------------------------------------------------------------------------- processes
class LineProc:
    """A child process spoken to in JSON lines over stdin/stdout, with timeouts."""

    def __init__(
        self, cmd: list[str], stderr_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.err = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, cwd=ROOT, env=env
        )
        self.buf = b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                raise TimeoutError(f"no answer from {self.proc.args[:3]} in {timeout}s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                raise RuntimeError(f"{self.proc.args[:3]} exited (rc={self.proc.wait()})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def ask(self, obj: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        self.send(obj)
        return self.read(timeout)

    def close(self, timeout: float = 10) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """user + sys of the processes, read from /proc/<pid>/stat (fields 14 and 15)."""
    total = 0
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (from /proc/stat), to see what else ran."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def rss_bytes(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def service_procs() -> dict[str, list[psutil.Process]]:
    out: dict[str, list[psutil.Process]] = {"redis": [], "postgres": []}
    for p in psutil.process_iter(["name"]):
        name = p.info["name"] or ""
        if name.startswith("redis-server"):
            out["redis"].append(p)
        elif name.startswith("postgres"):
            out["postgres"].append(p)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> int:
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


# --------------------------------------------------------------------------- servers
class ServerSpec:
    def __init__(self, name: str, hold: float, dbs: dict[str, dict[str, str]]) -> None:
        self.name = name
        kind, *rest = name.split("-")
        self.kind = kind  # baseline | floor | project
        self.server = rest[0]  # tornado | daphne | uvicorn
        self.db = rest[1] if len(rest) > 1 else None  # embedded | scaled
        self.hold = hold
        self.env = dict(os.environ)
        self.env.pop("REDIS_URL", None)
        self.env.pop("DATABASE_URL", None)
        self.env.pop("SQLITE_PATH", None)
        if self.kind == "project":
            assert self.db is not None
            self.env.update(dbs[self.database])
            self.env.update(project_env(hold))
        self.env["FLOOR_HOLD"] = str(hold)

    @property
    def database(self) -> str:
        """embedded or scaled: the database (and session cookies) the server uses."""
        return str(self.db)

    @property
    def mode(self) -> str:
        return self.kind

    @property
    def health_path(self) -> str:
        return "/health" if self.kind == "baseline" else "/"

    def command(self, port: int) -> list[str]:
        if self.kind == "baseline":
            return [PY, "bench/baseline_timer.py", "--port", str(port), "--hold", str(self.hold)]
        app = "bench.floor_app:app" if self.kind == "floor" else "project.asgi:application"
        if self.server == "daphne":
            return [str(BIN / "daphne"), "-b", HOST, "-p", str(port), "-v", "0", app]
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


def project_env(hold: float) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_DEBUG": "0",
        "LONGPOLL_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    if hold != 10.0:
        # LONGPOLL_TIMEOUT is a Django setting (default 10 s); only short smoke
        # runs change it, through a settings module that wraps the project's.
        env["DJANGO_SETTINGS_MODULE"] = "bench.settings_bench"
        env["BENCH_HOLD"] = str(hold)
    return env


def start_server(spec: ServerSpec, port: int, tag: str) -> tuple[subprocess.Popen[bytes], Any]:
    err = open(RAW / f"{tag}.server.log", "wb")
    proc = subprocess.Popen(spec.command(port), cwd=ROOT, env=spec.env, stdout=err, stderr=err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err.close()
            raise RuntimeError(f"{spec.name} exited at start: see {err.name}")
        try:
            if http_get(port, spec.health_path) == 200:
                return proc, err
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{spec.name} not answering on {port} after 60 s")


def stop_server(proc: subprocess.Popen[bytes], err: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(8)
        except subprocess.TimeoutExpired:
            for p in reversed(tree(proc.pid)):
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            proc.wait(10)
    err.close()


# --------------------------------------------------------------------------- databases
def prepare_dbs(workdir: Path, need: set[str]) -> dict[str, dict[str, str]]:
    dbs: dict[str, dict[str, str]] = {
        "embedded": {"SQLITE_PATH": str(workdir / "embedded.sqlite3")},
        "scaled": {
            "REDIS_URL": f"redis://{HOST}:6379/{REDIS_DB}",
            "DATABASE_URL": f"postgres://postgres@{HOST}:5432/{PG_DB}",
        },
    }
    if "scaled" in need:
        for sql in (f"DROP DATABASE IF EXISTS {PG_DB}", f"CREATE DATABASE {PG_DB}"):
            subprocess.run(
                ["psql", "-h", HOST, "-U", "postgres", "-q", "-c", sql],
                check=True,
                capture_output=True,
            )
    for db in need:
        env = dict(os.environ)
        env.update(dbs[db])
        env.update(project_env(10.0))
        t = time.monotonic()
        out = subprocess.run(
            [PY, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"migrate ({db}) failed:\n{out.stdout}\n{out.stderr}")
        log(f"migrated {db} in {time.monotonic() - t:.1f}s")
    return dbs


def flush_redis() -> None:
    import redis

    redis.Redis(host=HOST, port=6379, db=REDIS_DB).flushdb()


# --------------------------------------------------------------------------- profiling
def start_profile(
    args: argparse.Namespace, pid: int, seconds: float, out: Path
) -> subprocess.Popen[bytes] | None:
    """py-spy record (collapsed stacks) of the server, only with --profile: it costs CPU."""
    if not args.profile:
        return None
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--threads",
            "--subprocesses",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def finish_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


# --------------------------------------------------------------------------- one run
def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


SETTLE_HOLDS = 8  # holds the runner waits at most for every browser's first answer


def total_stat(gens: list[LineProc]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "held": 0,
        "polls": 0,
        "answered": 0,
        "msgs": 0,
        "burst": 0,
        "fail": 0,
        "connects": 0,
    }
    for g in gens:
        s = g.ask({"cmd": "stat"}, 30)
        for k in out:
            out[k] += s[k]
    return out


def run_one(
    spec: ServerSpec, n: int, args: argparse.Namespace, workdir: Path, rep: int
) -> dict[str, Any]:
    tag = f"{spec.name}-n{n}-r{rep}"
    port = free_port()
    hold = args.hold
    run_id = f"{tag}-{time.time():.0f}"
    res: dict[str, Any] = {"server": spec.name, "n": n, "rep": rep, "hold": hold, "port": port}
    if spec.kind == "project" and spec.database == "scaled":
        flush_redis()
    t_run = time.monotonic()
    proc, err = start_server(spec, port, tag)
    gens: list[LineProc] = []
    svc = service_procs()
    try:
        server_procs = tree(proc.pid)
        res["server_pids"] = [p.pid for p in server_procs]
        procs_n = args.procs if n >= 2000 else 1
        sessions_file = (
            workdir / f"sessions-{spec.database}.txt" if spec.kind == "project" else None
        )
        if sessions_file is not None and args.session_setup == "direct":
            t = time.monotonic()
            subprocess.run(
                [PY, "bench/make_sessions.py", "--count", str(n), "--out", str(sessions_file)],
                cwd=ROOT,
                env=spec.env,
                check=True,
                timeout=600,
            )
            res["setup_s"] = time.monotonic() - t
        for i in range(procs_n):
            cmd = [
                PY,
                "bench/loadgen.py",
                "--mode",
                spec.mode,
                "--port",
                str(port),
                "--total",
                str(n),
                "--procs",
                str(procs_n),
                "--index",
                str(i),
                "--hold",
                str(hold),
                "--results-out",
                str(RAW / f"{tag}.gen{i}.json"),
                "--run-id",
                run_id,
                *(
                    ["--initial-cursor", str(args.initial_cursor)]
                    if args.initial_cursor is not None
                    else []
                ),
            ]
            if sessions_file is not None:
                cmd += [
                    "--sessions-in",
                    str(sessions_file),
                    "--sessions-out",
                    str(workdir / f"sessions-new-{i}.txt"),
                ]
            gens.append(LineProc(cmd, RAW / f"{tag}.gen{i}.log"))
        cached = sum(g.read(30)["cached"] for g in gens)
        if spec.kind == "project" and cached < n:
            t = time.monotonic()
            for g in gens:
                g.send({"cmd": "setup"})
            for g in gens:
                r = g.read(600)
                if not r.get("ok"):
                    raise RuntimeError(f"session setup failed: {r}")
            merged: dict[int, str] = {}
            for i in range(procs_n):
                for line in open(workdir / f"sessions-new-{i}.txt"):
                    merged[int(line.split()[0])] = line
            if sessions_file.exists():  # type: ignore[union-attr]
                for line in open(sessions_file):  # type: ignore[arg-type]
                    merged.setdefault(int(line.split()[0]), line)
            with open(sessions_file, "w") as fh:  # type: ignore[arg-type]
                fh.writelines(merged[k] for k in sorted(merged))
            res["setup_s"] = time.monotonic() - t
            log(f"  created {n - cached} sessions with GET / in {res['setup_s']:.1f}s")
        # warm the server's request path a little before the memory baseline
        for _ in range(20):
            http_get(port, spec.health_path)
        time.sleep(0.5)
        rss0 = rss_bytes(server_procs)
        res["rss_start_mb"] = rss0 / 2**20

        epoch = time.time() + 0.5
        for g in gens:
            assert g.ask({"cmd": "start", "epoch": epoch})["ok"]
        # Ramp: first polls spread over one hold. The idle window starts once every
        # browser has had its first poll answered (about one more hold), so that it
        # sees re-polls only, not a backlog of first polls (bounded: SETTLE_HOLDS).
        time.sleep(max(0.0, epoch + hold + 1.0 - time.time()))
        answered = 0
        while time.time() < epoch + SETTLE_HOLDS * hold:
            answered = total_stat(gens)["answered"]
            if answered >= n:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        res["settled_after_s"] = time.time() - epoch
        res["answered_before_window"] = answered
        if answered < n:
            log(f"  not settled: {answered} of {n} browsers answered after {SETTLE_HOLDS} holds")

        # ---- idle window: at least one whole hold period, no messages
        window = max(args.idle, hold + 1.0)
        st0 = total_stat(gens)
        gen_procs = [psutil.Process(g.proc.pid) for g in gens]
        c0, g0 = cpu_seconds(server_procs), cpu_seconds(gen_procs)
        r0 = cpu_seconds(svc["redis"]), cpu_seconds(svc["postgres"])
        m0 = machine_busy_seconds()
        w0 = time.monotonic()
        rss_max = 0
        spy = start_profile(args, proc.pid, window, RAW / f"{tag}.idle.pyspy.txt")
        while time.monotonic() - w0 < window:
            time.sleep(min(1.0, window - (time.monotonic() - w0)))
            rss_max = max(rss_max, rss_bytes(server_procs))
        w1 = time.monotonic()
        c1, g1 = cpu_seconds(server_procs), cpu_seconds(gen_procs)
        finish_profile(spy)
        r1 = cpu_seconds(svc["redis"]), cpu_seconds(svc["postgres"])
        m1 = machine_busy_seconds()
        st1 = total_stat(gens)
        rss1 = rss_bytes(server_procs)
        dt = w1 - w0
        res.update(
            idle_window_s=dt,
            idle_cpu=(c1 - c0) / dt,
            idle_loadgen_cpu=(g1 - g0) / dt,
            idle_redis_cpu=(r1[0] - r0[0]) / dt,
            idle_postgres_cpu=(r1[1] - r0[1]) / dt,
            # everything else on the machine over the window (other services, other users)
            idle_other_cpu=((m1 - m0) - (c1 - c0) - (g1 - g0) - (r1[0] - r0[0]) - (r1[1] - r0[1]))
            / dt,
            held_at_window_start=st0["held"],
            held_at_window_end=st1["held"],
            idle_polls_answered=st1["polls"] - st0["polls"],
            idle_connects=st1["connects"] - st0["connects"],
            rss_idle_mb=rss1 / 2**20,
            rss_max_mb=rss_max / 2**20,
            rss_per_poll_kb=(rss1 - rss0) / 1024 / n,
        )
        log(
            f"  idle cpu {res['idle_cpu']:.1%} over {dt:.1f}s, held {st0['held']}/{st1['held']} of {n},"
            f" rss +{(rss1 - rss0) / 2**20:.1f} MB ({res['rss_per_poll_kb']:.1f} KB/poll),"
            f" loadgen {res['idle_loadgen_cpu']:.1%}, rest of machine {res['idle_other_cpu']:.1%}"
        )

        sent: list[list[Any]] = []
        if spec.kind != "floor" and not args.idle_only:
            # ---- steady sending
            sender_base = [
                PY,
                "bench/sender.py",
                "--mode",
                "baseline" if spec.kind == "baseline" else "project",
                "--total",
                str(n),
                "--port",
                str(port),
                "--run-id",
                run_id,
            ]
            if sessions_file is not None:
                sender_base += ["--sessions", str(sessions_file)]
            env = spec.env
            c0 = cpu_seconds(server_procs)
            t0 = time.monotonic()
            spy = start_profile(args, proc.pid, args.duration + 1, RAW / f"{tag}.busy.pyspy.txt")
            out = RAW / f"{tag}.steady.json"
            subprocess.run(
                [
                    *sender_base,
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(args.duration),
                    "--max-seconds",
                    str(args.duration * 2),
                    "--out",
                    str(out),
                ],
                cwd=ROOT,
                env=env,
                check=True,
                timeout=args.duration * 5 + 60,
            )
            steady = json.load(open(out))
            res["busy_cpu"] = (cpu_seconds(server_procs) - c0) / (time.monotonic() - t0)
            finish_profile(spy)
            sent += steady["sent"]
            res.update(
                sent_steady=len(steady["sent"]),
                sender_errors=steady["n_errors"],
                sender_error_samples=steady["errors"][:5],
                send_call_p50_ms=steady["call_p50"] * 1000,
                send_call_max_ms=steady["call_max"] * 1000,
                late_sends=steady["late_sends"],
            )
            # let the last steady messages land before the burst
            deadline = time.monotonic() + hold + 2
            while time.monotonic() < deadline and total_stat(gens)["msgs"] < len(sent):
                time.sleep(0.2)

            # ---- burst to one browser
            burst_index = random.Random(n).randrange(n)
            out = RAW / f"{tag}.burst.json"
            subprocess.run(
                [
                    *sender_base,
                    "--burst",
                    str(args.burst),
                    "--burst-index",
                    str(burst_index),
                    "--max-seconds",
                    "20",
                    "--out",
                    str(out),
                ],
                cwd=ROOT,
                env=env,
                check=True,
                timeout=300,
            )
            burst = json.load(open(out))
            sent += burst["sent"]
            res.update(
                burst_index=burst_index,
                sent_burst=len(burst["sent"]),
                burst_cut_short=burst.get("cut_short", False),
                burst_send_s=burst["last_done"] - burst["first_t"] if burst["first_t"] else None,
                sender_errors=res["sender_errors"] + burst["n_errors"],
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and total_stat(gens)["burst"] < len(burst["sent"]):
                time.sleep(0.05)
            if spec.kind == "project":
                # the same burst inside one transaction.atomic(), to another browser
                burst2_index = random.Random(n + 1).randrange(n)
                out = RAW / f"{tag}.burst-atomic.json"
                subprocess.run(
                    [
                        *sender_base,
                        "--burst",
                        str(args.burst),
                        "--burst-index",
                        str(burst2_index),
                        "--atomic",
                        "--max-seconds",
                        "20",
                        "--out",
                        str(out),
                    ],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    timeout=300,
                )
                burst2 = json.load(open(out))
                sent += burst2["sent"]
                res.update(
                    burst2_index=burst2_index,
                    sent_burst2=len(burst2["sent"]),
                    burst2_cut_short=burst2.get("cut_short", False),
                    sender_errors=res["sender_errors"] + burst2["n_errors"],
                    burst2_meta={
                        "first_t": burst2["first_t"],
                        "last_done": burst2["last_done"],
                        "commit_t": burst2.get("commit_t"),
                        "commit_s": burst2.get("commit_s"),
                    },
                )
                expect = len(burst["sent"]) + len(burst2["sent"])
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and total_stat(gens)["burst"] < expect:
                    time.sleep(0.05)
                # the same burst in one send_many_to_session call, to a third browser
                others = [i for i in range(n) if i not in (burst_index, burst2_index)]
                burst3_index = random.Random(n + 2).choice(others or list(range(n)))
                out = RAW / f"{tag}.burst-many.json"
                subprocess.run(
                    [
                        *sender_base,
                        "--burst",
                        str(args.burst),
                        "--burst-index",
                        str(burst3_index),
                        "--many",
                        "--out",
                        str(out),
                    ],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    timeout=300,
                )
                burst3 = json.load(open(out))
                sent += burst3["sent"]
                res.update(
                    burst3_index=burst3_index,
                    sent_burst3=len(burst3["sent"]),
                    sender_errors=res["sender_errors"] + burst3["n_errors"],
                    burst3_meta={
                        "first_t": burst3["first_t"],  # the call's start
                        "last_done": burst3["last_done"],
                        "call_s": burst3.get("call_s"),
                    },
                )
                expect += len(burst3["sent"])
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and total_stat(gens)["burst"] < expect:
                    time.sleep(0.05)
            # ---- drain: everything sent should be in by now; give it one more hold at most
            deadline = time.monotonic() + hold + 2
            while time.monotonic() < deadline and total_stat(gens)["msgs"] < len(sent):
                time.sleep(0.2)
            res["burst_meta"] = {"first_t": burst["first_t"], "last_done": burst["last_done"]}

        for g in gens:
            g.send({"cmd": "stop"})
        for g in gens:
            g.read(60)
    finally:
        for g in gens:
            if g.proc.poll() is None:
                with contextlib.suppress(OSError):
                    g.proc.stdin.close()  # type: ignore[union-attr]
            g.close()
        stop_server(proc, err)

    # ---- analysis
    records: list[list[Any]] = []
    failures: dict[str, int] = {}
    fail_samples: list[str] = []
    gen_stats = []
    for i in range(len(gens)):
        data = json.load(open(RAW / f"{tag}.gen{i}.json"))
        records += data["records"]
        for k, v in data["failures"].items():
            failures[k] = failures.get(k, 0) + v
        fail_samples += data["fail_samples"][:5]
        gen_stats.append(
            {
                k: data[k]
                for k in (
                    "polls",
                    "polls_empty",
                    "polls_msg",
                    "gaps",
                    "foreign",
                    "connects",
                    "stale_reconnects",
                    "empty_hold",
                )
            }
        )
    res["failures"] = failures
    # Polls and send calls that failed. GET / of the session setup happens
    # before any measurement and is the demo page, not the app: counted apart.
    res["setup_failed"] = failures.pop("setup", 0)
    res["failed"] = sum(failures.values()) + res.get("sender_errors", 0)
    res["fail_samples"] = fail_samples[:10]
    res["gens"] = gen_stats
    res["gaps"] = sum(g["gaps"] for g in gen_stats)
    res["foreign"] = sum(g["foreign"] for g in gen_stats)
    res["stale_reconnects"] = sum(g["stale_reconnects"] for g in gen_stats)
    holds = [g["empty_hold"] for g in gen_stats if g["empty_hold"]["n"]]
    if holds:
        res["empty_hold_min_s"] = min(h["min"] for h in holds)
        res["empty_hold_max_s"] = max(h["max"] for h in holds)
    if sent:
        got: dict[int, list[float]] = {}
        for seq, _idx, t, t_recv in records:
            got.setdefault(seq, []).append(t_recv - t)
        sent_seqs = {s[0] for s in sent}
        res["lost"] = sum(1 for s in sent_seqs if s not in got)
        res["duplicates"] = sum(len(v) - 1 for s, v in got.items() if s >= 0)
        res["unexpected"] = sum(1 for s in got if s >= 0 and s not in sent_seqs)
        lat = [got[s[0]][0] * 1000 for s in sent if s[0] < BURST_SEQ and s[0] in got]
        res["lat_n"] = len(lat)
        res["lat_p50_ms"] = pct(lat, 0.5)
        res["lat_p99_ms"] = pct(lat, 0.99)
        res["lat_max_ms"] = max(lat) if lat else None
        for key, lo, hi in (
            ("burst", BURST_SEQ, 2 * BURST_SEQ),
            ("burst2", 2 * BURST_SEQ, 3 * BURST_SEQ),
            ("burst3", 3 * BURST_SEQ, 4 * BURST_SEQ),  # burst3_total_ms: from the call's start
        ):
            recv = [r[3] for r in records if lo <= r[0] < hi]
            if not res.get(f"sent_{key}"):
                continue
            meta = res[f"{key}_meta"]
            complete = len({r[0] for r in records if lo <= r[0] < hi}) == res[f"sent_{key}"]
            res[f"{key}_complete"] = complete
            res[f"{key}_received"] = len(recv)
            res[f"{key}_total_ms"] = (max(recv) - meta["first_t"]) * 1000 if complete else None
            res[f"{key}_after_last_send_ms"] = (
                (max(recv) - meta["last_done"]) * 1000 if complete else None
            )
            if key == "burst2" and meta.get("commit_t"):
                res["burst2_from_commit_ms"] = (
                    (max(recv) - meta["commit_t"]) * 1000 if complete else None
                )
    else:
        res["lost"] = None
    res["run_s"] = time.monotonic() - t_run
    return res


# --------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    def cmd(*a: str) -> str:
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    lscpu = {}
    for line in cmd("lscpu").splitlines():
        k, _, v = line.partition(":")
        lscpu[k.strip()] = v.strip()
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in (
        "Django",
        "channels",
        "channels-redis",
        "daphne",
        "Twisted",
        "uvicorn",
        "uvloop",
        "httptools",
        "tornado",
        "redis",
        "psycopg",
    ):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": lscpu.get("Model name"),
        "cpus": lscpu.get("CPU(s)"),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "mhz": lscpu.get("CPU max MHz") or lscpu.get("BogoMIPS"),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "redis_server": cmd("redis-server", "--version"),
        "postgres": cmd("psql", "-h", HOST, "-U", "postgres", "-tAc", "show server_version"),
        "git": cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD") or "(no commit yet)",
        "git_dirty": bool(
            cmd("git", "-C", str(ROOT), "status", "--porcelain", "--", "longpoll_app", "project")
        ),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


METRICS = [
    "idle_cpu",
    "rss_per_poll_kb",
    "rss_idle_mb",
    "lat_p50_ms",
    "lat_p99_ms",
    "lat_max_ms",
    "lost",
    "failed",
    "burst_total_ms",
    "burst_after_last_send_ms",
    "idle_redis_cpu",
    "idle_loadgen_cpu",
    "busy_cpu",
    "burst_send_s",
    "held_at_window_end",
    "send_call_p50_ms",
    "burst2_total_ms",
    "burst2_after_last_send_ms",
    "burst2_from_commit_ms",
    "burst3_total_ms",
    "late_sends",
    "sent_steady",
    "sent_burst",
    "sent_burst2",
    "sent_burst3",
    "burst_received",
    "burst2_received",
    "burst3_received",
    "idle_other_cpu",
]


def summarize(runs: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Median of each figure over the repeats of one (server, N); max for lost/failed."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        if "error" in r:
            continue
        groups.setdefault((r["server"], r["n"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        s: dict[str, Any] = {"repeats": len(rs)}
        for m in METRICS:
            vals = [r[m] for r in rs if r.get(m) is not None]
            if not vals:
                s[m] = None
            elif m in ("lost", "failed"):
                s[m] = sum(vals)  # counts add up over repeats
            else:
                s[m] = statistics.median(vals)
        s["rss_per_poll_kb_marginal"] = None
        out[key] = s
    # marginal memory per poll between consecutive N of one server (cancels fixed costs)
    servers = {k[0] for k in out}
    for srv in servers:
        ns = sorted(k[1] for k in out if k[0] == srv)
        for a, b in itertools.pairwise(ns):
            ra, rb = out[(srv, a)].get("rss_idle_mb"), out[(srv, b)].get("rss_idle_mb")
            if ra is not None and rb is not None:
                out[(srv, b)]["rss_per_poll_kb_marginal"] = (rb - ra) * 1024 / (b - a)
    return out


def fmt(v: Any, spec: str = ".0f", pct_: bool = False) -> str:
    if v is None:
        return "–"
    if pct_:
        return f"{v * 100:.1f}%"
    return format(v, spec)


def table(summary: dict[tuple[str, int], dict[str, Any]]) -> str:
    head = (
        "| server | N | idle CPU (one core) | × floor (same server) | × baseline | RSS / held poll (KB) "
        "| marginal KB / poll | RSS (MB) | p50 / p99 / max latency (ms) | lost | failed | 1,000-msg burst, 1,000 calls (ms) "
        "| burst in 1 transaction, from commit (ms) | burst, one send_many call (ms) "
        "| Redis CPU | rest of machine CPU |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    order = {s: i for i, s in enumerate(ALL_SERVERS)}
    for (srv, n), s in sorted(summary.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99))):
        floor = summary.get((f"floor-{srv.split('-')[1]}", n), {}).get("idle_cpu")
        base = summary.get(("baseline-tornado", n), {}).get("idle_cpu")
        cpu = s["idle_cpu"]
        x_floor = (
            f"{cpu / floor:.2f}" if srv.startswith("project") and floor and cpu is not None else "–"
        )
        x_base = (
            f"{cpu / base:.2f}"
            if not srv.startswith("baseline") and base and cpu is not None
            else "–"
        )
        lat = (
            f"{fmt(s['lat_p50_ms'], '.1f')} / {fmt(s['lat_p99_ms'], '.1f')} / {fmt(s['lat_max_ms'], '.0f')}"
            if s["lat_p50_ms"] is not None
            else "–"
        )
        if s["lat_p50_ms"] is not None and s["late_sends"] and s["sent_steady"]:
            expected = int(ARGS_RATE_DURATION[0] * ARGS_RATE_DURATION[1])
            if s["late_sends"] > 0.05 * s["sent_steady"] or s["sent_steady"] < expected:
                lat += f" ‡ ({s['sent_steady']:.0f} sent, {s['late_sends']:.0f} late)"
        burst = fmt(s["burst_total_ms"])
        if s["burst_after_last_send_ms"] is not None:
            burst += f" ({fmt(s['burst_after_last_send_ms'])} after last send)"
        elif s["sent_burst"] is not None:
            burst = f"incomplete: {fmt(s['burst_received'])} of {fmt(s['sent_burst'])} received"
        if s["sent_burst"] is not None and s["sent_burst"] < ARGS_BURST[0]:
            burst += f" ‡ (only {s['sent_burst']:.0f} sent in 20 s)"
        burst2 = fmt(s["burst2_from_commit_ms"])
        if s["burst2_from_commit_ms"] is None and s["sent_burst2"]:
            burst2 = f"incomplete: {fmt(s['burst2_received'])} of {fmt(s['sent_burst2'])}"
        if s["sent_burst2"] is not None and s["sent_burst2"] < ARGS_BURST[0]:
            burst2 += f" ‡ (only {s['sent_burst2']:.0f} sent in 20 s)"
        burst3 = fmt(s["burst3_total_ms"])
        if s["burst3_total_ms"] is None and s["sent_burst3"]:
            burst3 = f"incomplete: {fmt(s['burst3_received'])} of {fmt(s['sent_burst3'])}"
        redis_cpu = fmt(s["idle_redis_cpu"], pct_=True) if "scaled" in srv else "–"
        rows.append(
            f"| {srv} | {n:,} | {fmt(cpu, pct_=True)} | {x_floor} | {x_base} | {fmt(s['rss_per_poll_kb'], '.1f')} "
            f"| {fmt(s['rss_per_poll_kb_marginal'], '.1f')} | {fmt(s['rss_idle_mb'], '.0f')} | {lat} "
            f"| {fmt(s['lost'])} | {fmt(s['failed'])} | {burst} | {burst2} | {burst3} | {redis_cpu} "
            f"| {fmt(None if s['idle_other_cpu'] is None else max(0.0, s['idle_other_cpu']), pct_=True)} |"
        )
    return head + "\n".join(rows) + "\n"


def plot(summary: dict[tuple[str, int], dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {
        "baseline": ("tab:red", "o"),
        "floor": ("tab:gray", "s"),
        "project": ("tab:blue", "^"),
    }
    colors = {
        "baseline-tornado": "tab:red",
        "floor-daphne": "tab:gray",
        "floor-uvicorn": "black",
        "project-daphne-embedded": "tab:blue",
        "project-uvicorn-embedded": "tab:cyan",
        "project-daphne-scaled": "tab:green",
        "project-uvicorn-scaled": "tab:olive",
    }
    for srv in ALL_SERVERS:
        pts = sorted((n, s) for (name, n), s in summary.items() if name == srv)
        if not pts:
            continue
        kind = srv.split("-")[0]
        _, marker = styles[kind]
        ls = "--" if "daphne" in srv else "-"
        ns = [n for n, _ in pts]
        cpu = [s["idle_cpu"] * 100 if s["idle_cpu"] is not None else float("nan") for _, s in pts]
        ax1.plot(ns, cpu, ls, marker=marker, color=colors[srv], label=srv)
        lat = [s["lat_p99_ms"] if s["lat_p99_ms"] is not None else float("nan") for _, s in pts]
        if any(v == v for v in lat):
            ax2.plot(ns, lat, ls, marker=marker, color=colors[srv], label=srv)
    ax1.set_xlabel("held polls (N)")
    ax1.set_ylabel("server CPU with no messages, % of one core")
    ax1.set_title("Idle CPU vs N")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("held polls (N)")
    ax2.set_ylabel("p99 send-to-receive latency (ms, log)")
    ax2.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax2.yaxis.set_major_formatter(ScalarFormatter())
    ax2.set_title("p99 latency vs N")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN = "<!-- bench:results:begin (written by bench/run.py; edit outside these markers) -->"
END = "<!-- bench:results:end -->"


def write_docs(result: dict[str, Any], results_path: Path) -> None:
    summary = summarize(result["runs"])
    m = result["machine"]
    a = result["args"]
    title = (
        f"{m['cpu']}, {m['cpus']} vCPU, {a['hold']:g} s hold, "
        f"{time.strftime('%Y-%m-%d', time.localtime(result['started']))}"
    )
    plot(summary, PLOT, title)
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    skipped = "".join(f"- skipped: {s}\n" for s in result.get("skipped", []))
    errors = "".join(
        f"- error in {r['server']} N={r['n']}: {r['error'][:300]}\n"
        for r in result["runs"]
        if "error" in r
    )
    block = f"""{BEGIN}
### Latest run

`{result["command"]}` — started {time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(result["started"]))},
took {result["duration_s"] / 60:.1f} min; raw figures in `{results_path.relative_to(ROOT)}`.
{"Each figure is the median of " + str(a["repeat"]) + " runs (lost and failed are summed over them)." if a["repeat"] > 1 else "One run per row (no repeats)."}

Machine: {m["cpu"]} ({m["hypervisor"] or "bare metal"} guest), {m["cpus"]} vCPUs ({m["threads_per_core"]} thread per core),
{m["memory_gib"]} GiB RAM, Linux {m["kernel"]}, Python {m["python"]}; {pk};
{m["redis_server"].split(" sha=")[0]}; PostgreSQL {m["postgres"]}. Project at commit {m["git"]}{" (with uncommitted changes in longpoll_app/ or project/)" if m["git_dirty"] else ""}.
Load generators: {a["procs"]} processes (1 below N = 2,000) on the same machine; hold {a["hold"]:g} s;
idle window {max(a["idle"], a["hold"] + 1):g} s; steady sending {a["rate"]:g} msg/s for {a["duration"]:g} s
(≈{int(a["rate"] * a["duration"])} latency samples per row); burst {a["burst"]} messages to one browser.

{table(summary)}
Idle CPU: share of one core, user + sys of the server's processes over the idle
window. × floor: project ÷ the floor under the same server; × baseline: ÷ the
timer baseline at the same N. Lost: sent but not received by the end of the
run (at least one hold after the last send; 30 s for a burst). Failed: polls
answered with an error, dropped or timed out, and send calls that raised (the
failure kinds are in the JSON). ‡: the sender could not keep its rate (sent
late, or cut short after 2× the planned time; bursts after 20 s), so the figure
is bounded by the sender and the saturated machine. Rest of machine: CPU used
during the idle window by everything but the server, the load generators,
Redis and PostgreSQL (other users of this shared machine, e.g. test suites).

![Idle CPU and p99 latency against N](../bench/results/{PLOT.name})

{skipped}{errors}{END}"""
    text = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        text = pre + block + post
    else:
        text += "\n" + block + "\n"
    DOCS.write_text(text)


# --------------------------------------------------------------------------- main
def raise_nofile(want: int) -> None:
    """Held polls are sockets: raise this process's descriptor limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= want:
        return
    new_hard = hard if hard == resource.RLIM_INFINITY else max(hard, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
    except (ValueError, OSError):  # not allowed to raise the hard limit: take what there is
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log(f"descriptor limit: could raise it to {hard} only (wanted {want})")


def main() -> None:
    parser = argparse.ArgumentParser(description="Long-poll benchmark (issue 5)")
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--servers", nargs="+", default=ALL_SERVERS, choices=ALL_SERVERS)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds a poll is held")
    parser.add_argument("--idle", type=float, default=0.0, help="idle window (at least hold + 1 s)")
    parser.add_argument("--rate", type=float, default=100.0, help="steady messages per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of steady sending")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--idle-only", action="store_true", help="skip latency and burst")
    parser.add_argument(
        "--session-setup",
        choices=["direct", "http"],
        default="direct",
        help="project sessions: rows made by bench/make_sessions.py, or GET / per browser",
    )
    parser.add_argument("--max-minutes", type=float, default=30.0, help="skip runs past this")
    parser.add_argument("--no-docs", action="store_true", help="don't touch docs/benchmarks.md")
    parser.add_argument(
        "--initial-cursor",
        type=int,
        default=None,
        help="diagnosis only: browsers start with this cursor instead of null",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the server over the idle window and the steady sending (raw stacks in "
        "bench/results/raw/; summarize with bench/pyspy_top.py). Costs CPU: not for the figures.",
    )
    parser.add_argument("--tag", default="", help="suffix for the results file")
    parser.add_argument(
        "--no-skip",
        action="store_true",
        help="run larger N even for a server already saturated (idle CPU >= 80%% of a core) at a smaller N",
    )
    parser.add_argument(
        "--report-only",
        metavar="RESULTS_JSON",
        help="rewrite docs/benchmarks.md and the plot from a results file; run nothing",
    )
    args = parser.parse_args()
    if args.report_only:
        path = Path(args.report_only).resolve()
        write_docs(json.loads(path.read_text()), path)
        print(table(summarize(json.loads(path.read_text())["runs"])))
        return
    args.n = sorted(set(args.n))
    ARGS_RATE_DURATION[:] = [args.rate, args.duration]
    ARGS_BURST[:] = [args.burst]
    # The server holds N sockets, each generator N / procs, plus files: N + 1,000 is the need.
    raise_nofile(max(65536, 3 * max(args.n) + 1000))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < max(args.n) + 1000:
        parser.error(
            f"descriptor limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]} is too low for N={max(args.n)}"
        )
    RAW.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="longpoll-bench-"))
    need_db = {
        "scaled" if "scaled" in s else "embedded" for s in args.servers if s.startswith("project")
    }
    result: dict[str, Any] = {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "args": vars(args),
        "started": started,
        "machine": machine(),
        "runs": [],
        "skipped": [],
    }
    log(f"machine: {result['machine']['cpu']}, nofile={resource.getrlimit(resource.RLIMIT_NOFILE)}")
    dbs = prepare_dbs(workdir, need_db) if need_db else {}
    saturated: dict[str, int] = {}
    results_path = RESULTS / f"results-{stamp}{('-' + args.tag) if args.tag else ''}.json"
    try:
        for rep in range(args.repeat):
            for n in args.n:
                for name in args.servers:
                    if time.time() - started > args.max_minutes * 60:
                        result["skipped"].append(f"{name} N={n} rep {rep} (past --max-minutes)")
                        continue
                    sat = saturated.get(name)
                    if sat is not None and n > sat and not args.no_skip:
                        result["skipped"].append(
                            f"{name} N={n} rep {rep} (saturated: idle CPU ≥ {SATURATED:.0%} of a core at N={sat:,})"
                        )
                        log(f"{name} N={n}: skipped, saturated at N={sat}")
                        continue
                    log(f"{name} N={n} rep {rep}")
                    spec = ServerSpec(name, args.hold, dbs)
                    try:
                        r = run_one(spec, n, args, workdir, rep)
                    except Exception as exc:  # keep going; the error is reported
                        log(f"  ERROR {exc!r}")
                        r = {"server": name, "n": n, "rep": rep, "error": repr(exc)}
                    result["runs"].append(r)
                    if r.get("idle_cpu") is not None and r["idle_cpu"] >= SATURATED:
                        saturated[name] = min(n, saturated.get(name, n))
                    if "error" not in r:
                        log(
                            f"  p50/p99/max {fmt(r.get('lat_p50_ms'), '.1f')}/{fmt(r.get('lat_p99_ms'), '.1f')}/"
                            f"{fmt(r.get('lat_max_ms'), '.0f')} ms, lost {r.get('lost')}, failed {r['failed']}"
                            f" {r['failures'] or ''}, burst {fmt(r.get('burst_total_ms'))} ms, {r['run_s']:.0f}s"
                        )
                    result["duration_s"] = time.time() - started
                    results_path.write_text(json.dumps(result, indent=1))
    finally:
        result["duration_s"] = time.time() - started
        results_path.write_text(json.dumps(result, indent=1))
        shutil.copy(results_path, RESULTS / "results-latest.json")
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {results_path}")
    summary = summarize(result["runs"])
    print(table(summary))
    if not args.no_docs:
        write_docs(result, results_path)
        log(f"wrote {DOCS} and {PLOT}")


if __name__ == "__main__":
    main()
