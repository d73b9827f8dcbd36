"""The phases of one run, in order: warm-up, settle, idle, latency, bursts, drain.

Each phase is a function of the run's `Target` and the options it needs, and
returns its figures (the keys of the results JSON) and, for the sending
phases, what it sent.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from bench.browsers import Browsers
from bench.common import PY, RAW, ROOT, log
from bench.measure import cpu_seconds, machine_busy_seconds, profiled, rss_bytes
from bench.servers import ServerSpec, http_get

WARM_UP_REQUESTS = 20  # health requests before the memory baseline, to warm the request path
SETTLE_HOLDS = 8  # holds the runner waits at most for every browser's first answer
START_DELAY_S = 0.5  # from telling the generators to the first browser's first poll
STAT_EVERY_S = 0.5  # while waiting for the first answers
LAND_EVERY_S = 0.2  # while waiting for sent messages to arrive
BURST_EVERY_S = 0.05  # while waiting for a burst (its figure is read from records, not this)
BURST_WAIT_S = 30.0  # at most, for a burst to arrive
BURST_MAX_SECONDS = 20  # the sender stops a burst after this long (reported as cut short)
BURST_TIMEOUT_S = 300  # the burst's sender process, whatever it does
BURST_SEQ = 1_000_000  # burst seqs start here (must match bench/sender.py, bench/loadgen.py)


@dataclass(frozen=True)
class Target:
    """What the phases of one run measure and talk to."""

    spec: ServerSpec
    port: int
    pid: int  # the server's root process (py-spy attaches to it)
    procs: list[psutil.Process]  # the server's process tree, taken once it answered
    services: Mapping[str, list[psutil.Process]]  # redis and postgres (and burner) processes
    browsers: Browsers
    n: int  # browsers
    hold: float  # seconds a poll is held
    tag: str  # names the run's raw files
    run_id: str  # in every message, so a run counts only its own
    sessions: Path | None  # the project browsers' sessions file


@dataclass(frozen=True)
class Sending:
    """What one sending phase sent, and its figures."""

    figures: dict[str, Any]
    sent: list[list[Any]]  # [seq, browser index, t just before the send call]
    errors: int  # send calls that raised
    window: BurstWindow | None = None  # a burst's, for its delivery figures


@dataclass(frozen=True)
class BurstWindow:
    """Where a burst's messages are and when it was sent, to time its arrival (bench/tally.py)."""

    key: str  # prefix of its figures: burst, burst2, burst3
    seq_lo: int  # its messages' seqs are [seq_lo, seq_lo + BURST_SEQ)
    sent: int
    first_t: float | None  # the first send call's start (the call's, for one send_many)
    last_done: float  # the last send call's end
    commit_t: float | None  # the commit's start, for the burst in one transaction


def _profile_path(target: Target, phase: str, profile: bool) -> Path | None:
    return RAW / f"{target.tag}.{phase}.pyspy.txt" if profile else None


def _sender(target: Target, args: list[str], out: Path, timeout_s: float) -> dict[str, Any]:
    """Runs bench/sender.py for this run with `args`; what it wrote to `out`."""
    mode = "baseline" if target.spec.kind == "baseline" else "project"
    cmd = [PY, "bench/sender.py", "--mode", mode, "--total", str(target.n)]
    cmd += ["--port", str(target.port), "--run-id", target.run_id]
    if target.sessions is not None:
        cmd += ["--sessions", str(target.sessions)]
    subprocess.run(
        [*cmd, *args, "--out", str(out)],
        cwd=ROOT,
        env=dict(target.spec.env),
        check=True,
        timeout=timeout_s,
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# --------------------------------------------------------------------------- before the polls
def warm_up(port: int, health_path: str, procs: list[psutil.Process]) -> int:
    """A few requests through the server's request path; then its RSS, the memory baseline."""
    for _ in range(WARM_UP_REQUESTS):
        http_get(port, health_path)
    time.sleep(0.5)
    return rss_bytes(procs)


def settle(target: Target) -> dict[str, Any]:
    """Starts the polls and waits until every browser has had its first one answered.

    First polls are spread over one hold. The idle window starts once every
    browser has had its first poll answered (about one more hold), so that it
    sees re-polls only, not a backlog of first polls (bounded: SETTLE_HOLDS).
    """
    n, hold = target.n, target.hold
    epoch = time.time() + START_DELAY_S
    target.browsers.start(epoch)
    time.sleep(max(0.0, epoch + hold + 1.0 - time.time()))
    answered = 0
    while time.time() < epoch + SETTLE_HOLDS * hold:
        answered = target.browsers.stat()["answered"]
        if answered >= n:
            break
        time.sleep(STAT_EVERY_S)
    time.sleep(1.0)
    if answered < n:
        log(f"  not settled: {answered} of {n} browsers answered after {SETTLE_HOLDS} holds")
    return {"settled_after_s": time.time() - epoch, "answered_before_window": answered}


# --------------------------------------------------------------------------- idle
def idle(target: Target, *, window_s: float, rss_before: int, profile: bool) -> dict[str, Any]:
    """CPU of the server (and of everything else) and its RSS over window_s with no messages."""
    n = target.n
    st0 = target.browsers.stat()
    gen_procs = target.browsers.procs()
    redis, postgres = target.services["redis"], target.services["postgres"]
    burner = target.services.get("burner", [])  # bench/burner.py, with --burner
    c0, g0 = cpu_seconds(target.procs), cpu_seconds(gen_procs)
    r0, p0, b0 = cpu_seconds(redis), cpu_seconds(postgres), cpu_seconds(burner)
    m0 = machine_busy_seconds()
    w0 = time.monotonic()
    rss_max = 0
    with profiled(target.pid, window_s, _profile_path(target, "idle", profile)):
        while time.monotonic() - w0 < window_s:
            time.sleep(min(1.0, window_s - (time.monotonic() - w0)))
            rss_max = max(rss_max, rss_bytes(target.procs))
        w1 = time.monotonic()
        c1, g1 = cpu_seconds(target.procs), cpu_seconds(gen_procs)
    r1, p1, b1 = cpu_seconds(redis), cpu_seconds(postgres), cpu_seconds(burner)
    m1 = machine_busy_seconds()
    st1 = target.browsers.stat()
    rss1 = rss_bytes(target.procs)
    dt = w1 - w0
    figures = {
        "idle_window_s": dt,
        "idle_cpu": (c1 - c0) / dt,
        "idle_loadgen_cpu": (g1 - g0) / dt,
        "idle_redis_cpu": (r1 - r0) / dt,
        "idle_postgres_cpu": (p1 - p0) / dt,
        "idle_burner_cpu": (b1 - b0) / dt if burner else None,
        # everything else on the machine over the window (other services, other users; not
        # the burner, which is reported apart)
        "idle_other_cpu": ((m1 - m0) - (c1 - c0) - (g1 - g0) - (r1 - r0) - (p1 - p0) - (b1 - b0))
        / dt,
        "held_at_window_start": st0["held"],
        "held_at_window_end": st1["held"],
        "idle_polls_answered": st1["polls"] - st0["polls"],
        "idle_connects": st1["connects"] - st0["connects"],
        "rss_idle_mb": rss1 / 2**20,
        "rss_max_mb": rss_max / 2**20,
        "rss_per_poll_kb": (rss1 - rss_before) / 1024 / n,
    }
    burner_log = f", burner {(b1 - b0) / dt:.1%}" if burner else ""
    log(
        f"  idle cpu {figures['idle_cpu']:.1%} over {dt:.1f}s, held {st0['held']}/{st1['held']} of {n},"
        f" rss +{(rss1 - rss_before) / 2**20:.1f} MB ({figures['rss_per_poll_kb']:.1f} KB/poll),"
        f" loadgen {figures['idle_loadgen_cpu']:.1%}{burner_log},"
        f" rest of machine {figures['idle_other_cpu']:.1%}"
    )
    return figures


# --------------------------------------------------------------------------- sending
def latency(target: Target, *, rate: float, duration: float, profile: bool) -> Sending:
    """rate messages/s for duration s to random browsers; the server's CPU meanwhile.

    Returns once the sender is done and the last messages had one hold + 2 s
    to land, so that the bursts after it start on a quiet server.
    """
    c0 = cpu_seconds(target.procs)
    t0 = time.monotonic()
    with profiled(target.pid, duration + 1, _profile_path(target, "busy", profile)):
        steady = _sender(
            target,
            ["--rate", str(rate), "--duration", str(duration), "--max-seconds", str(duration * 2)],
            RAW / f"{target.tag}.steady.json",
            timeout_s=duration * 5 + 60,
        )
        busy_cpu = (cpu_seconds(target.procs) - c0) / (time.monotonic() - t0)
    target.browsers.wait_for("msgs", len(steady["sent"]), target.hold + 2, LAND_EVERY_S)
    figures = {
        "busy_cpu": busy_cpu,
        "sent_steady": len(steady["sent"]),
        "send_call_p50_ms": steady["call_p50"] * 1000,
        "send_call_max_ms": steady["call_max"] * 1000,
        "late_sends": steady["late_sends"],
        "sender_error_samples": steady["errors"][:5],
        "sender_app": steady.get("app"),  # the longpoll_app the sender imported (project)
    }
    return Sending(figures, steady["sent"], steady["n_errors"])


BurstMode = Literal["calls", "atomic", "many"]


@dataclass(frozen=True)
class _BurstKind:
    key: str  # prefix of the burst's figures in the results
    file: str  # RAW/<tag>.<file>.json: the sender's output
    flags: tuple[str, ...]  # bench/sender.py's
    seq_lo: int  # where the sender starts the burst's seqs
    kept: tuple[str, ...]  # the sender's extra outputs kept in <key>_meta


BURST_KINDS: dict[BurstMode, _BurstKind] = {
    # one send call per message
    "calls": _BurstKind("burst", "burst", (), BURST_SEQ, ()),
    # the same calls inside one transaction.atomic(): all visible at the commit
    "atomic": _BurstKind(
        "burst2", "burst-atomic", ("--atomic",), 2 * BURST_SEQ, ("commit_t", "commit_s")
    ),
    # one send_many_to_session call
    "many": _BurstKind("burst3", "burst-many", ("--many",), 3 * BURST_SEQ, ("call_s",)),
}


def burst_browsers(n: int) -> dict[BurstMode, int]:
    """The browser each burst goes to: fixed per N, and the bulk call's apart from the others."""
    calls = random.Random(n).randrange(n)
    atomic = random.Random(n + 1).randrange(n)
    others = [i for i in range(n) if i not in (calls, atomic)]
    many = random.Random(n + 2).choice(others or list(range(n)))
    return {"calls": calls, "atomic": atomic, "many": many}


def burst(target: Target, *, size: int, index: int, mode: BurstMode, bursts_before: int) -> Sending:
    """`size` messages as fast as one sender can to browser `index`, the `mode` way.

    Waits (at most BURST_WAIT_S) until the browsers have every burst message
    sent so far: `bursts_before` from the run's earlier bursts, and this one's.
    """
    kind = BURST_KINDS[mode]
    out = _sender(
        target,
        [
            *("--burst", str(size), "--burst-index", str(index)),
            *kind.flags,
            *("--max-seconds", str(BURST_MAX_SECONDS)),
        ],
        RAW / f"{target.tag}.{kind.file}.json",
        timeout_s=BURST_TIMEOUT_S,
    )
    sent = out["sent"]
    target.browsers.wait_for("burst", bursts_before + len(sent), BURST_WAIT_S, BURST_EVERY_S)
    figures: dict[str, Any] = {f"{kind.key}_index": index, f"sent_{kind.key}": len(sent)}
    if mode != "many":  # one call is never cut short
        figures[f"{kind.key}_cut_short"] = out.get("cut_short", False)
    if mode == "calls":
        figures["burst_send_s"] = out["last_done"] - out["first_t"] if out["first_t"] else None
    figures[f"{kind.key}_meta"] = {
        "first_t": out["first_t"],
        "last_done": out["last_done"],
        **{k: out.get(k) for k in kind.kept},
    }
    window = BurstWindow(
        kind.key, kind.seq_lo, len(sent), out["first_t"], out["last_done"], out.get("commit_t")
    )
    return Sending(figures, sent, out["n_errors"], window)


def drain(target: Target, sent: int) -> None:
    """Everything sent should be in by now; it gets one more hold (+ 2 s) at most."""
    target.browsers.wait_for("msgs", sent, target.hold + 2, LAND_EVERY_S)
