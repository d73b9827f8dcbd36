"""A/B regression mode: a pinned baseline commit against the working tree, interleaved.

A short benchmark for any change to the poll or send path, so that a slower
commit is noticed before it lands (a developer tool, not a CI gate):

    python bench/ab.py                                  # both servers, 2 rounds, N = 1,000
    python bench/ab.py --servers project-uvicorn-scaled --rounds 3
    python bench/ab.py --baseline 8e07b32               # another baseline than the pinned one

The baseline commit is pinned in bench/ab-baseline.txt (its first word; the
rest of the line says why it was chosen); --baseline overrides it. Its tree is
extracted with ``git archive`` into a temporary directory (removed after). For
every server kind, the same short run (bench/run.py's run_one: the N browsers,
the idle window, the steady sending, one burst of send calls) alternates
between the baseline tree and the working tree, A B A B ... for --rounds
rounds. Each side runs its own server from its own tree (cwd and PYTHONPATH),
on databases of its own migrated by that tree, and its bench/sender.py and
bench/make_sessions.py import the app from that tree too (BENCH_APP_ROOT):
the send path is part of what is measured. The load generators and the
measuring code are the working tree's for both sides. After each run,
bench/send_cost.py times a block of send_to_session calls in a process that
imports that side's app.

Prints, per server kind, the median of each side over its rounds (lost and
failed: summed), the ratio working / baseline, and "slower" where a cost's
ratio is above --threshold (default 1.15), "worse" where the working tree
lost or failed more. The whole result goes to bench/results/ab-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script (python bench/ab.py), only bench/ is on the path: the package's parent too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# A Redis database of its own, so that an A/B run and a bench/run.py run never flush each other's.
os.environ.setdefault("BENCH_REDIS_DB", "12")

from bench import report, run, servers
from bench.common import BENCH, PY, RESULTS, ROOT, log
from bench.servers import ALL_SERVERS, ServerSpec

BASELINE_FILE = BENCH / "ab-baseline.txt"
PROJECT_SERVERS = tuple(s for s in ALL_SERVERS if s.startswith("project"))
DEFAULT_SERVERS = ("project-uvicorn-embedded", "project-uvicorn-scaled")
SIDES = ("baseline", "working")
PG_DB = {"baseline": "longpoll_bench_ab_base", "working": "longpoll_bench_ab_work"}
SEND_COST_TIMEOUT_S = 300
DEFAULT_THRESHOLD = 1.15


@dataclass(frozen=True)
class Metric:
    key: str  # in a run's figures (bench/run.py's results) or "send_median_ms"
    label: str
    kind: str  # cost: higher is slower; count: more is worse; context: not judged
    scale: float = 1.0  # shown as value * scale
    spec: str = ".1f"


METRICS = (
    Metric("idle_cpu", "idle CPU (% of a core)", "cost", 100.0, ".2f"),
    Metric("rss_per_poll_kb", "RSS / held poll (KB)", "cost"),
    Metric("lat_p50_ms", "p50 latency (ms)", "cost", 1.0, ".2f"),
    Metric("lat_p99_ms", "p99 latency (ms)", "cost", 1.0, ".2f"),
    Metric("lost", "lost", "count", 1.0, ".0f"),
    Metric("failed", "failed", "count", 1.0, ".0f"),
    Metric("burst_total_ms", "burst of 1,000 calls (ms)", "cost", 1.0, ".0f"),
    Metric("send_median_ms", "send_to_session median (ms)", "cost", 1.0, ".3f"),
    # the noise, not judged: what else the shared machine ran during the idle windows, and
    # steady sends the sender made late (its calls slower than 1 / rate: it bounds latency)
    Metric("idle_other_cpu", "rest of machine, idle window (% of a core)", "context", 100.0, ".0f"),
    Metric("late_sends", "late steady sends", "context", 1.0, ".0f"),
    Metric("burner_cpu", "burner, whole run (% of a core)", "context", 100.0, ".0f"),
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help=f"commit to compare with (default: {BASELINE_FILE.name})")
    p.add_argument("--servers", nargs="+", default=list(DEFAULT_SERVERS), choices=PROJECT_SERVERS)
    p.add_argument("--rounds", type=int, default=2, help="A B pairs per server kind")
    p.add_argument("--n", type=int, default=1000, help="held polls")
    p.add_argument("--hold", type=float, default=10.0, help="seconds a poll is held")
    p.add_argument("--idle", type=float, default=11.0, help="idle window (at least hold + 1 s)")
    p.add_argument("--rate", type=float, default=100.0, help="steady messages per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of steady sending")
    p.add_argument("--burst", type=int, default=1000, help="messages in the burst")
    p.add_argument("--send-count", type=int, default=300, help="timed send_to_session calls")
    p.add_argument(
        "--burner",
        type=float,
        metavar="DUTY",
        default=None,
        help="bench/burner.py at DUTY of a core through every run (as bench/run.py --burner)",
    )
    p.add_argument(
        "--report-only",
        metavar="AB_JSON",
        help="print the tables of an earlier bench/results/ab-*.json; run nothing",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="flag a cost whose ratio working / baseline is above this",
    )
    return p


# --------------------------------------------------------------------------- the trees
def git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def pinned_baseline() -> tuple[str, str]:
    """The commit in bench/ab-baseline.txt and why it was chosen (the rest of its line)."""
    for line in BASELINE_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            commit, _, why = line.strip().partition(" ")
            return commit, why.strip()
    raise SystemExit(f"no commit in {BASELINE_FILE}")


def extract(commit: str, dest: Path) -> None:
    """The commit's tree (tracked files only) into dest, with git archive."""
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0:
        raise SystemExit(f"git archive {commit} failed")


def imported_from(spec: ServerSpec) -> str:
    """Where a process with the server's environment and cwd imports longpoll_app from."""
    code = "import os, longpoll_app; print(os.path.dirname(longpoll_app.__file__))"
    out = subprocess.run(
        [PY, "-c", code], cwd=spec.root, env=dict(spec.env), capture_output=True, text=True
    )
    return out.stdout.strip() or out.stderr.strip()[-300:]


def send_cost(spec: ServerSpec, count: int, out: Path) -> dict[str, Any]:
    """bench/send_cost.py (the working tree's) timing send_to_session of the spec's tree."""
    backend = spec.database
    if backend not in ("embedded", "scaled"):
        return {}
    subprocess.run(
        [
            PY,
            str(BENCH / "send_cost.py"),
            "--backend",
            backend,
            "--count",
            str(count),
            "--json-out",
            str(out),
        ],
        cwd=ROOT,
        env=dict(spec.env),
        check=True,
        capture_output=True,
        timeout=SEND_COST_TIMEOUT_S,
    )
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures


# --------------------------------------------------------------------------- the runs
def options(args: argparse.Namespace) -> run.Options:
    """bench/run.py's options for one short run: N, the phases, one burst of send calls."""
    return run.Options(
        n=(args.n,),
        servers=tuple(args.servers),
        hold=args.hold,
        idle=args.idle,
        rate=args.rate,
        duration=args.duration,
        burst=args.burst,
        repeat=args.rounds,
        procs=2,
        idle_only=False,
        session_setup="direct",
        max_minutes=60.0,
        no_docs=True,
        initial_cursor=None,
        profile=False,
        tag="ab",
        no_skip=True,
        report_only=None,
        burner=args.burner,
        no_latest=True,
        bursts=("calls",),
    )


def one_run(
    name: str,
    side: str,
    rnd: int,
    tree: Path,
    workdir: Path,
    dbs: servers.Databases,
    opts: run.Options,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One short run of `side`'s tree (its server, sender and sessions), then its send cost."""
    spec = ServerSpec.configure(name, opts.hold, dbs, root=tree)
    t = time.monotonic()
    try:
        r = run.run_one(spec, args.n, opts, workdir, rnd, label=f"ab-{side}-")
        if r.get("sender_app") and not Path(r["sender_app"]).is_relative_to(tree):
            raise RuntimeError(f"the sender imported {r['sender_app']}, not {tree}'s app")
        cost = send_cost(spec, args.send_count, workdir / f"send-cost-{name}-{rnd}.json")
        if cost:
            if not Path(cost["app"]).is_relative_to(tree):
                raise RuntimeError(f"send_cost imported {cost['app']}, not {tree}'s app")
            r["send_cost"] = cost
            r["send_median_ms"] = cost["single_median_s"] * 1000
    except Exception as exc:  # keep going; the error is reported
        log(f"  ERROR {exc!r}")
        r = {"server": name, "n": args.n, "rep": rnd, "error": repr(exc)}
    r["side"] = side
    r["round"] = rnd
    r["ab_run_s"] = time.monotonic() - t
    if "error" not in r:
        run.log_run(r)
        log(f"  send_to_session median {report.fmt(r.get('send_median_ms'), '.3f')} ms")
    return r


# --------------------------------------------------------------------------- the table
def median_of(runs: list[dict[str, Any]], m: Metric) -> float | None:
    vals = [r[m.key] for r in runs if r.get(m.key) is not None]
    if not vals:
        return None
    return float(sum(vals)) if m.kind == "count" else statistics.median(vals)


def compare(runs: list[dict[str, Any]], name: str, threshold: float) -> list[dict[str, Any]]:
    """One row per metric: the baseline's and the working tree's medians, ratio, flag."""
    ok = [r for r in runs if r.get("server") == name and "error" not in r]
    rows = []
    for m in METRICS:
        base = median_of([r for r in ok if r["side"] == "baseline"], m)
        work = median_of([r for r in ok if r["side"] == "working"], m)
        if m.kind == "context" and base is None and work is None:
            continue  # e.g. the burner's row of a run without one
        ratio = work / base if base and work is not None else None
        flag = ""
        if m.kind == "cost" and ratio is not None:
            flag = "slower" if ratio > threshold else ("faster" if ratio < 1 / threshold else "")
        elif m.kind == "count" and base is not None and work is not None and work > base:
            flag = "worse"
        rows.append(
            {"metric": m.key, "baseline": base, "working": work, "ratio": ratio, "flag": flag}
        )
    return rows


def table(rows: list[dict[str, Any]], name: str, rounds: dict[str, int]) -> str:
    by_key = {m.key: m for m in METRICS}
    lines = [
        f"{name}: median of {rounds['baseline']} baseline and {rounds['working']} working-tree runs",
        "| metric | baseline | working tree | working / baseline | |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        m = by_key[row["metric"]]

        def show(v: float | None, m: Metric = m) -> str:
            return report.fmt(None if v is None else v * m.scale, m.spec)

        lines.append(
            f"| {m.label} | {show(row['baseline'])} | {show(row['working'])} "
            f"| {report.fmt(row['ratio'], '.2f')} | {row['flag']} |"
        )
    return "\n".join(lines) + "\n"


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"machine: {m['cpu']}, {m['cpus']} vCPU ({m['hypervisor'] or 'bare metal'}), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}"
    )


# --------------------------------------------------------------------------- main
def print_result(result: dict[str, Any], threshold: float) -> None:
    """The machine, the two trees, the run's parameters and one table per server kind."""
    a = result["args"]
    commit, why = result["baseline"]["commit"], result["baseline"]["why"]
    head, dirty = result["working"]["head"], result["working"]["uncommitted_app_changes"]
    print(machine_line(result["machine"]))
    print(f"baseline: {commit[:10]} ({why})")
    print(
        f"working tree: HEAD {head[:10]}{' with uncommitted changes to the app' if dirty else ''}"
    )
    print(
        f"N = {a['n']:,}, hold {a['hold']:g} s, idle window {max(a['idle'], a['hold'] + 1):g} s, "
        f"{a['rate']:g} msg/s for {a['duration']:g} s, burst {a['burst']}, "
        f"{a['send_count']} timed send_to_session calls; flagged above × {threshold:g}; "
        + (f"burner at duty {a['burner']:g} through every run; " if a.get("burner") else "")
        + f"{result['duration_s'] / 60:.1f} min"
    )
    for name in a["servers"]:
        ok = [r for r in result["runs"] if r.get("server") == name and "error" not in r]
        rounds = {side: sum(r["side"] == side for r in ok) for side in SIDES}
        print()
        print(table(compare(result["runs"], name, threshold), name, rounds).rstrip("\n"))
    for r in result["runs"]:
        if "error" in r:
            print(f"error: {r['server']} {r['side']} round {r['round'] + 1}: {r['error'][:300]}")


def main() -> None:
    args = parser().parse_args()
    if args.report_only:
        print_result(json.loads(Path(args.report_only).read_text()), args.threshold)
        return
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    pinned, why = pinned_baseline()
    commit = git("rev-parse", "--verify", f"{args.baseline or pinned}^{{commit}}")
    if args.baseline:
        why = "given with --baseline"
    head = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", "longpoll_app", "project"))
    run.raise_nofile(max(65536, 3 * args.n + run.NOFILE_SPARE))
    opts = options(args)
    started = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_path = RESULTS / f"ab-{stamp}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    run.RAW.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="longpoll-ab-"))
    m = report.machine()
    result: dict[str, Any] = {
        "command": "python bench/ab.py " + " ".join(sys.argv[1:]),
        "args": vars(args),
        "baseline": {"commit": commit, "why": why},
        "working": {"head": head, "uncommitted_app_changes": dirty},
        "started": started,
        "machine": m,
        "imports": {},
        "runs": [],
    }
    log(machine_line(m))
    log(
        f"baseline {commit[:10]} ({why}); working tree at {head[:10]}{' + changes' if dirty else ''}"
    )
    try:
        trees = {"baseline": tmp / "baseline", "working": ROOT}
        extract(commit, trees["baseline"])
        need = servers.databases_needed(args.servers)
        dbs: dict[str, servers.Databases] = {}
        for side in SIDES:
            workdir = tmp / f"work-{side}"
            workdir.mkdir()
            dbs[side] = servers.prepare_dbs(workdir, need, root=trees[side], pg_db=PG_DB[side])
        for name in args.servers:
            for side in SIDES:
                spec = ServerSpec.configure(name, args.hold, dbs[side], root=trees[side])
                result["imports"][f"{name} {side}"] = imported_from(spec)
            for rnd in range(args.rounds):
                for side in SIDES:  # A B A B ...
                    log(f"{name} {side} round {rnd + 1}/{args.rounds}")
                    workdir = tmp / f"work-{side}"
                    r = one_run(name, side, rnd, trees[side], workdir, dbs[side], opts, args)
                    result["runs"].append(r)
                    result["duration_s"] = time.time() - started
                    results_path.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        result["duration_s"] = time.time() - started
        result["comparisons"] = {
            name: compare(result["runs"], name, args.threshold) for name in args.servers
        }
        results_path.write_text(json.dumps(result, indent=1))
    log(f"wrote {results_path.relative_to(ROOT)} in {result['duration_s'] / 60:.1f} min")
    print()
    print_result(result, args.threshold)


if __name__ == "__main__":
    main()
