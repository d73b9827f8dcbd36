"""The N simulated browsers of one run: load generator processes (bench/loadgen.py).

The runner speaks to each generator in JSON lines over its stdin/stdout (the
protocol is in bench/loadgen.py's docstring); every read is bounded. The
browsers of one project database keep their sessions in one file
(`index sessionid csrftoken` lines), made once per invocation and reused by
the next servers and N on that database.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import PY, RAW, ROOT

SESSIONS_TIMEOUT_S = 600  # making 10,000 sessions, directly or with GET /
READY_TIMEOUT_S = 30  # a generator's first line (how many cached sessions it loaded)
STAT_TIMEOUT_S = 30
STOP_TIMEOUT_S = 60  # a generator closes every connection and writes its results
# The counters of a generator's "stat" answer that add up over generators.
STAT_KEYS = ("held", "polls", "answered", "msgs", "burst", "fail", "connects")
# A generator's per-run figures kept in the results (see bench/loadgen.py).
GEN_STAT_KEYS = (
    "polls",
    "polls_empty",
    "polls_msg",
    "gaps",
    "foreign",
    "connects",
    "stale_reconnects",
    "empty_hold",
)


class LineProc:
    """A child process spoken to in JSON lines over stdin/stdout, with timeouts."""

    def __init__(
        self, cmd: list[str], stderr_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.cmd = cmd
        self.err = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, cwd=ROOT, env=env
        )
        self.buf = b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                raise TimeoutError(f"no answer from {self.cmd[:3]} in {timeout}s")
            chunk = os.read(self.proc.stdout.fileno(), 65536)  # type: ignore[union-attr]
            if not chunk:
                raise RuntimeError(f"{self.cmd[:3]} exited (rc={self.proc.wait()})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, obj: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        self.send(obj)
        return self.read(timeout)

    def close(self, timeout: float = 10) -> None:
        """Ends the child (closing its stdin stops a generator) and waits, bounded."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


@dataclass(frozen=True)
class Received:
    """What the browsers of one run recorded, merged over the generators."""

    records: list[list[Any]]  # [seq, browser index, t sent, t received] per message of the run
    failures: dict[str, int]  # failed requests by kind
    fail_samples: list[str]
    gen_stats: list[dict[str, Any]]  # GEN_STAT_KEYS of each generator


class Browsers:
    """The started generators of one run; `open_browsers` makes them."""

    def __init__(self, gens: list[LineProc], results: list[Path], new_sessions: list[Path]) -> None:
        self.gens = gens
        self.results = results  # each generator's --results-out
        self.new_sessions = new_sessions  # each generator's --sessions-out (project)
        # Each generator's first line says how many browsers found a cached session.
        self.cached = sum(g.read(READY_TIMEOUT_S)["cached"] for g in gens)

    def procs(self) -> list[psutil.Process]:
        return [psutil.Process(g.proc.pid) for g in self.gens]

    def make_sessions_over_http(self, sessions: Path) -> None:
        """GET / for every browser without a cached session; all sessions merged into the file."""
        for g in self.gens:
            g.send({"cmd": "setup"})
        for g in self.gens:
            r = g.read(SESSIONS_TIMEOUT_S)
            if not r.get("ok"):
                raise RuntimeError(f"session setup failed: {r}")
        merged: dict[int, str] = {}
        for path in self.new_sessions:
            for line in open(path):
                merged[int(line.split()[0])] = line
        if sessions.exists():
            for line in open(sessions):
                merged.setdefault(int(line.split()[0]), line)
        with open(sessions, "w") as fh:
            fh.writelines(merged[k] for k in sorted(merged))

    def start(self, epoch: float) -> None:
        """Browser g of N makes its first poll at epoch + hold * g / N, then re-polls at once."""
        for g in self.gens:
            assert g.ask({"cmd": "start", "epoch": epoch})["ok"]

    def stat(self) -> dict[str, int]:
        """The STAT_KEYS counters, summed over the generators."""
        out = dict.fromkeys(STAT_KEYS, 0)
        for g in self.gens:
            s = g.ask({"cmd": "stat"}, STAT_TIMEOUT_S)
            for k in out:
                out[k] += s[k]
        return out

    def wait_for(self, counter: str, count: int, timeout_s: float, every_s: float) -> None:
        """Until the browsers' `counter` (e.g. msgs received) reaches count, at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.stat()[counter] < count:
            time.sleep(every_s)

    def stop(self) -> Received:
        """Every generator closes its connections and writes its results; they are read back."""
        for g in self.gens:
            g.send({"cmd": "stop"})
        for g in self.gens:
            g.read(STOP_TIMEOUT_S)
        records: list[list[Any]] = []
        failures: dict[str, int] = {}
        fail_samples: list[str] = []
        gen_stats = []
        for path in self.results:
            data = json.loads(path.read_text())
            records += data["records"]
            for k, v in data["failures"].items():
                failures[k] = failures.get(k, 0) + v
            fail_samples += data["fail_samples"][:5]
            gen_stats.append({k: data[k] for k in GEN_STAT_KEYS})
        return Received(records, failures, fail_samples, gen_stats)


def make_sessions_directly(env: Mapping[str, str], count: int, sessions: Path) -> None:
    """bench/make_sessions.py: the rows GET / would make, in bulk, appended to the file."""
    subprocess.run(
        [PY, "bench/make_sessions.py", "--count", str(count), "--out", str(sessions)],
        cwd=ROOT,
        env=dict(env),
        check=True,
        timeout=SESSIONS_TIMEOUT_S,
    )


@contextlib.contextmanager
def open_browsers(
    *,
    mode: str,
    port: int,
    n: int,
    procs: int,
    hold: float,
    tag: str,
    run_id: str,
    initial_cursor: int | None,
    sessions: Path | None,
    workdir: Path,
) -> Iterator[Browsers]:
    """`procs` generators sharing N browsers of `mode` (loadgen's --mode), closed after the block.

    Their logs and results go to RAW/<tag>.gen<i>.{log,json}; project browsers
    read their cookies from `sessions` (None for the others).
    """
    gens: list[LineProc] = []
    results: list[Path] = []
    new_sessions: list[Path] = []
    try:
        for i in range(procs):
            results.append(RAW / f"{tag}.gen{i}.json")
            cmd = [
                PY,
                "bench/loadgen.py",
                "--mode",
                mode,
                "--port",
                str(port),
                "--total",
                str(n),
                "--procs",
                str(procs),
                "--index",
                str(i),
                "--hold",
                str(hold),
                "--results-out",
                str(results[-1]),
                "--run-id",
                run_id,
                *(["--initial-cursor", str(initial_cursor)] if initial_cursor is not None else []),
            ]
            if sessions is not None:
                new_sessions.append(workdir / f"sessions-new-{i}.txt")
                cmd += ["--sessions-in", str(sessions), "--sessions-out", str(new_sessions[-1])]
            gens.append(LineProc(cmd, RAW / f"{tag}.gen{i}.log"))
        yield Browsers(gens, results, new_sessions)
    finally:
        for g in gens:
            g.close()
