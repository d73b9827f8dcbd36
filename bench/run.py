"""Benchmark runner for issue 5: held polls, idle CPU, memory, latency, loss, bursts.

One command (from the repository root, in the project's virtualenv with
bench/requirements.txt installed):

    python bench/run.py --n 1000 5000 10000

For each N and each server of bench/servers.py, in one run and side by side,
it starts the server, has the load generators (bench/browsers.py,
bench/loadgen.py) open N browsers whose first polls are spread over one hold
period, waits for the steady state, then (bench/phases.py):

  1. idle: server CPU (user+sys from /proc/<pid>/stat of the server's processes)
     over one whole hold period + 1 s with no messages, as a share of one core;
     RSS growth over the same N held polls, per poll;
  2. latency: bench/sender.py sends --rate messages/s for --duration s to random
     browsers (project: send_to_session; baseline: POST /send);
  3. burst: --burst messages to one browser, time until it has them all (for
     the project also in one transaction and in one send_many_to_session call);
  4. loss and failures over the whole run (bench/tally.py).

With --burner DUTY, bench/burner.py keeps DUTY of one core busy (spinning
DUTY * 10 ms of every 10 ms) for the whole of each server's run, from before
the server starts until its browsers have stopped; its measured share is in
the results (burner, idle_burner_cpu) and the report, apart from the rest of
the machine.

Results go to bench/results/results-<stamp>.json (and results-latest.json),
raw per-run files to bench/results/raw/, and the table, the plot
(bench/results/benchmarks.png) and the machine's description into the
generated part of docs/benchmarks.md (bench/report.py).

Only 127.0.0.1 is ever contacted. Every wait is bounded; --max-minutes bounds
the whole run (remaining runs are skipped and said so).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script (python bench/run.py), only bench/ is on the path: the package's parent too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench import phases, report, servers, tally
from bench.browsers import make_sessions_directly, open_browsers
from bench.common import PY, RAW, RESULTS, ROOT, log
from bench.measure import service_procs, tree
from bench.servers import ALL_SERVERS, ServerSpec

SATURATED = 0.80  # idle CPU (share of one core) from which doubling N cannot fit in one core
MULTI_GEN_FROM_N = 2000  # below this N one load generator process is enough
NOFILE_SPARE = 1000  # descriptors beyond the N sockets: files, pipes, the database
BURST_MODES: tuple[phases.BurstMode, ...] = ("calls", "atomic", "many")
BURNER_PERIOD_S = 0.010  # bench/burner.py's period: spin duty * this, sleep the rest
BURNER_STOP_S = 10.0  # the burner writes its figures and exits within this after SIGTERM


@dataclass(frozen=True)
class Options:
    """The command line, parsed once; its fields are the results file's "args"."""

    n: tuple[int, ...]  # sorted, each once
    servers: tuple[str, ...]
    hold: float  # seconds a poll is held
    idle: float  # seconds of the idle window (at least hold + 1)
    rate: float  # steady messages per second
    duration: float  # seconds of steady sending
    burst: int  # messages per burst
    repeat: int
    procs: int  # load generator processes from MULTI_GEN_FROM_N browsers on
    idle_only: bool
    session_setup: str  # direct | http
    max_minutes: float
    no_docs: bool
    initial_cursor: int | None
    profile: bool
    tag: str
    no_skip: bool
    report_only: str | None
    burner: float | None = None  # duty of bench/burner.py over each server's run, or none
    no_latest: bool = False  # leave results-latest.json as it is
    bursts: tuple[str, ...] = BURST_MODES  # the project's burst kinds, in this order

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        fields = vars(args) | {
            "n": tuple(sorted(set(args.n))),
            "servers": tuple(args.servers),
            "bursts": tuple(args.bursts),
        }
        return cls(**fields)

    @property
    def idle_window_s(self) -> float:
        return max(self.idle, self.hold + 1.0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Long-poll benchmark (issue 5)")
    p.add_argument("--n", type=int, nargs="+", default=[1000, 5000, 10000])
    p.add_argument("--servers", nargs="+", default=list(ALL_SERVERS), choices=ALL_SERVERS)
    p.add_argument("--hold", type=float, default=10.0, help="seconds a poll is held")
    p.add_argument("--idle", type=float, default=0.0, help="idle window (at least hold + 1 s)")
    p.add_argument("--rate", type=float, default=100.0, help="steady messages per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of steady sending")
    p.add_argument("--burst", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--procs", type=int, default=2, help="load generator processes")
    p.add_argument("--idle-only", action="store_true", help="skip latency and burst")
    p.add_argument(
        "--session-setup",
        choices=["direct", "http"],
        default="direct",
        help="project sessions: rows made by bench/make_sessions.py, or GET / per browser",
    )
    p.add_argument("--max-minutes", type=float, default=30.0, help="skip runs past this")
    p.add_argument("--no-docs", action="store_true", help="don't touch docs/benchmarks.md")
    p.add_argument(
        "--initial-cursor",
        type=int,
        default=None,
        help="diagnosis only: browsers start with this cursor instead of null",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the server over the idle window and the steady sending (raw stacks in "
        "bench/results/raw/; summarize with bench/pyspy_top.py). Costs CPU: not for the figures.",
    )
    p.add_argument("--tag", default="", help="suffix for the results file")
    p.add_argument(
        "--no-skip",
        action="store_true",
        help="run larger N even for a server already saturated (idle CPU >= 80%% of a core) at a smaller N",
    )
    p.add_argument(
        "--burner",
        type=float,
        metavar="DUTY",
        default=None,
        help="run bench/burner.py (DUTY of one core, e.g. 0.5) for the whole of each server's run",
    )
    p.add_argument(
        "--no-latest",
        action="store_true",
        help="don't copy the results to bench/results/results-latest.json (a trial run)",
    )
    p.add_argument(
        "--bursts",
        nargs="+",
        choices=BURST_MODES,
        default=list(BURST_MODES),
        help="the project's bursts: one send call per message, in one transaction, one send_many",
    )
    p.add_argument(
        "--report-only",
        metavar="RESULTS_JSON",
        help="rewrite docs/benchmarks.md and the plot from a results file; run nothing",
    )
    return p


# --------------------------------------------------------------------------- the burner
@dataclass
class Burner:
    """A running bench/burner.py; `figures` is what it reported at exit (None until then)."""

    duty: float
    proc: subprocess.Popen[bytes] | None
    out: Path
    figures: dict[str, Any] | None = None

    def procs(self) -> list[psutil.Process]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [psutil.Process(self.proc.pid)]

    def share_text(self) -> str:
        return f"{self.figures['share']:.1%}" if self.figures else "(no figures)"


@contextlib.contextmanager
def burning(duty: float | None, out: Path) -> Iterator[Burner | None]:
    """bench/burner.py at `duty` over the block (nothing if duty is None); its figures after."""
    if duty is None:
        yield None
        return
    out.unlink(missing_ok=True)
    cmd = [PY, "bench/burner.py", "--duty", str(duty), "--period", str(BURNER_PERIOD_S)]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    burner = Burner(duty, proc, out)
    try:
        yield burner
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(BURNER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out.exists():
            burner.figures = json.loads(out.read_text())
        log(f"  burner duty {duty:g}: used {burner.share_text()} of a core")


# --------------------------------------------------------------------------- one run
def run_one(
    spec: ServerSpec, n: int, opts: Options, workdir: Path, rep: int, label: str = ""
) -> dict[str, Any]:
    """One server at one N: start it, the browsers, the phases; the run's figures.

    `label` prefixes the run's raw files (bench/ab.py: which tree); with
    opts.burner, bench/burner.py runs from before the server starts until the
    browsers have stopped.
    """
    tag = f"{label}{spec.name}-n{n}-r{rep}"
    with burning(opts.burner, RAW / f"{tag}.burner.json") as burner:
        res = _run_one(spec, n, opts, workdir, rep, tag, burner)
    if burner is not None:
        res["burner"] = burner.figures or {"duty": burner.duty, "share": None}
        res["burner_duty"] = burner.duty
        res["burner_cpu"] = res["burner"]["share"]  # over the whole run, as it measured itself
    return res


def _run_one(
    spec: ServerSpec,
    n: int,
    opts: Options,
    workdir: Path,
    rep: int,
    tag: str,
    burner: Burner | None,
) -> dict[str, Any]:
    run_id = f"{tag}-{time.time():.0f}"
    port = servers.free_port()
    res: dict[str, Any] = {"server": spec.name, "n": n, "rep": rep, "hold": opts.hold, "port": port}
    sessions = workdir / f"sessions-{spec.database}.txt" if spec.database is not None else None
    if spec.database == "scaled":
        servers.flush_redis()
    t_run = time.monotonic()
    sendings: list[phases.Sending] = []
    with servers.running(spec, port, RAW / f"{tag}.server.log") as server:
        server_procs = tree(server.pid)
        services = service_procs()
        if burner is not None:
            services["burner"] = burner.procs()
        res["server_pids"] = [p.pid for p in server_procs]
        if sessions is not None and opts.session_setup == "direct":
            t = time.monotonic()
            make_sessions_directly(spec.env, n, sessions)
            res["setup_s"] = time.monotonic() - t
        with open_browsers(
            mode=spec.kind,
            port=port,
            n=n,
            procs=opts.procs if n >= MULTI_GEN_FROM_N else 1,
            hold=opts.hold,
            tag=tag,
            run_id=run_id,
            initial_cursor=opts.initial_cursor,
            sessions=sessions,
            workdir=workdir,
        ) as browsers:
            if sessions is not None and browsers.cached < n:
                t = time.monotonic()
                browsers.make_sessions_over_http(sessions)
                res["setup_s"] = time.monotonic() - t
                log(f"  created {n - browsers.cached} sessions with GET / in {res['setup_s']:.1f}s")
            rss_before = phases.warm_up(port, spec.health_path, server_procs)
            res["rss_start_mb"] = rss_before / 2**20
            target = phases.Target(
                spec=spec,
                port=port,
                pid=server.pid,
                procs=server_procs,
                services=services,
                browsers=browsers,
                n=n,
                hold=opts.hold,
                tag=tag,
                run_id=run_id,
                sessions=sessions,
            )
            res.update(phases.settle(target))
            res.update(
                phases.idle(
                    target,
                    window_s=opts.idle_window_s,
                    rss_before=rss_before,
                    profile=opts.profile,
                )
            )
            if spec.kind != "floor" and not opts.idle_only:
                sendings = send_messages(target, opts)
                for sending in sendings:
                    res.update(sending.figures)
                res["sender_errors"] = sum(s.errors for s in sendings)
            received = browsers.stop()

    sent = [msg for sending in sendings for msg in sending.sent]
    windows = [s.window for s in sendings if s.window is not None]
    res.update(tally.failures(received, res.get("sender_errors", 0)))
    res.update(tally.delivery(received.records, sent, windows))
    res["run_s"] = time.monotonic() - t_run
    return res


def send_messages(target: phases.Target, opts: Options) -> list[phases.Sending]:
    """The steady sending, then the bursts (all three kinds for the project), then the drain."""
    sendings = [
        phases.latency(target, rate=opts.rate, duration=opts.duration, profile=opts.profile)
    ]
    modes: Sequence[phases.BurstMode] = ["calls"]
    if target.spec.kind == "project":
        modes = [m for m in BURST_MODES if m in opts.bursts]
    indices = phases.burst_browsers(target.n)
    burst_sent = 0
    for mode in modes:
        b = phases.burst(
            target, size=opts.burst, index=indices[mode], mode=mode, bursts_before=burst_sent
        )
        burst_sent += len(b.sent)
        sendings.append(b)
    phases.drain(target, sum(len(s.sent) for s in sendings))
    return sendings


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


def plan(opts: Options) -> Iterator[tuple[int, int, str]]:
    """(repeat, N, server) in run order: every server at one N, then the next N, per repeat."""
    for rep in range(opts.repeat):
        for n in opts.n:
            for name in opts.servers:
                yield rep, n, name


def skip_reason(
    name: str, n: int, rep: int, opts: Options, started: float, saturated: dict[str, int]
) -> str | None:
    """Why this run is not run (listed under the table), or None."""
    if time.time() - started > opts.max_minutes * 60:
        return f"{name} N={n} rep {rep} (past --max-minutes)"
    sat = saturated.get(name)
    if sat is not None and n > sat and not opts.no_skip:
        log(f"{name} N={n}: skipped, saturated at N={sat}")
        return (
            f"{name} N={n} rep {rep} (saturated: idle CPU ≥ {SATURATED:.0%} of a core at N={sat:,})"
        )
    return None


def log_run(r: dict[str, Any]) -> None:
    fmt = report.fmt
    log(
        f"  p50/p99/max {fmt(r.get('lat_p50_ms'), '.1f')}/{fmt(r.get('lat_p99_ms'), '.1f')}/"
        f"{fmt(r.get('lat_max_ms'), '.0f')} ms, lost {r.get('lost')}, failed {r['failed']}"
        f" {r['failures'] or ''}, burst {fmt(r.get('burst_total_ms'))} ms, {r['run_s']:.0f}s"
    )


def main() -> None:
    argp = parser()
    opts = Options.from_args(argp.parse_args())
    if opts.report_only:
        path = Path(opts.report_only).resolve()
        saved = json.loads(path.read_text())
        report.write_docs(saved, path)
        print(report.table_of(saved))
        return

    # The server holds N sockets, each generator N / procs, plus files: N + 1,000 is the need.
    raise_nofile(max(65536, 3 * max(opts.n) + NOFILE_SPARE))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile < max(opts.n) + NOFILE_SPARE:
        argp.error(f"descriptor limit {nofile} is too low for N={max(opts.n)}")

    RAW.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="longpoll-bench-"))
    result: dict[str, Any] = {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "args": dataclasses.asdict(opts),
        "started": started,
        "machine": report.machine(),
        "runs": [],
        "skipped": [],
    }
    log(f"machine: {result['machine']['cpu']}, nofile={resource.getrlimit(resource.RLIMIT_NOFILE)}")
    need_db = servers.databases_needed(opts.servers)
    dbs = servers.prepare_dbs(workdir, need_db) if need_db else {}
    saturated: dict[str, int] = {}  # server -> the smallest N at which it saturated
    results_path = RESULTS / f"results-{stamp}{('-' + opts.tag) if opts.tag else ''}.json"
    try:
        for rep, n, name in plan(opts):
            reason = skip_reason(name, n, rep, opts, started, saturated)
            if reason is not None:
                result["skipped"].append(reason)
                continue
            log(f"{name} N={n} rep {rep}")
            spec = ServerSpec.configure(name, opts.hold, dbs)
            try:
                r = run_one(spec, n, opts, workdir, rep)
            except Exception as exc:  # keep going; the error is reported
                log(f"  ERROR {exc!r}")
                r = {"server": name, "n": n, "rep": rep, "error": repr(exc)}
            result["runs"].append(r)
            if r.get("idle_cpu") is not None and r["idle_cpu"] >= SATURATED:
                saturated[name] = min(n, saturated.get(name, n))
            if "error" not in r:
                log_run(r)
            # written after every run, so that an interrupted invocation keeps what it measured
            result["duration_s"] = time.time() - started
            results_path.write_text(json.dumps(result, indent=1))
    finally:
        result["duration_s"] = time.time() - started
        results_path.write_text(json.dumps(result, indent=1))
        if not opts.no_latest:
            shutil.copy(results_path, RESULTS / "results-latest.json")
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"wrote {results_path}")
    print(report.table_of(result))
    if not opts.no_docs:
        report.write_docs(result, results_path)
        log(f"wrote {report.DOCS} and {report.PLOT}")


if __name__ == "__main__":
    main()
