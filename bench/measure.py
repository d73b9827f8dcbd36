"""Readings the phases take: CPU and RSS of process trees, the machine's busy time, py-spy.

CPU comes from /proc/<pid>/stat rather than psutil so that one reading is one
file read per process, at the kernel's tick (SC_CLK_TCK, 100 Hz here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench.common import BIN

CLK_TCK = os.sysconf("SC_CLK_TCK")  # ticks per second of /proc's CPU times
PROFILE_RATE_HZ = 200  # py-spy samples per second with --profile


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (a server that forks workers is all of them)."""
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


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
    """The Redis and PostgreSQL processes running now, to report their CPU apart."""
    out: dict[str, list[psutil.Process]] = {"redis": [], "postgres": []}
    for p in psutil.process_iter(["name"]):
        name = p.info["name"] or ""
        if name.startswith("redis-server"):
            out["redis"].append(p)
        elif name.startswith("postgres"):
            out["postgres"].append(p)
    return out


def pct(values: list[float], p: float) -> float | None:
    """The p-quantile (0..1) of the values, interpolated between neighbours; None if empty."""
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


@contextlib.contextmanager
def profiled(pid: int, seconds: float, out: Path | None) -> Iterator[None]:
    """py-spy record (collapsed stacks to `out`) of the process over the block; off if out is None.

    Only with --profile: py-spy costs the server CPU, so profiled figures are
    not the table's. On leaving, waits (bounded) for py-spy to write its file.
    """
    if out is None:
        yield
        return
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(PROFILE_RATE_HZ),
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
    try:
        yield
    finally:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
