"""The report: results of runs -> the table, the plot and the generated part of docs/benchmarks.md.

Everything here reads a results dict (as written to bench/results/results-*.json),
so `bench/run.py --report-only FILE` redraws the page from any earlier run.
"""

from __future__ import annotations

import itertools
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import HOST, RESULTS, ROOT
from bench.phases import BURST_MAX_SECONDS
from bench.servers import ALL_SERVERS

DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = RESULTS / "benchmarks.png"

# (server, N) -> the figures of its runs, summarized over the repeats
Summary = dict[tuple[str, int], dict[str, Any]]


def machine() -> dict[str, Any]:
    """The machine, the package versions and the commit, for the report."""

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

    versions: dict[str, str | None] = {}
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
    "idle_burner_cpu",
    "burner_duty",
    "burner_cpu",
]


def summarize(runs: list[dict[str, Any]]) -> Summary:
    """Median of each figure over the repeats of one (server, N); max for lost/failed."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        if "error" in r:
            continue
        groups.setdefault((r["server"], r["n"]), []).append(r)
    out: Summary = {}
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
    """A figure for the table: a dash if missing, a share as a percentage with pct_."""
    if v is None:
        return "–"
    if pct_:
        return f"{v * 100:.1f}%"
    return format(v, spec)


def table(summary: Summary, *, steady_sends: int, burst_size: int) -> str:
    """The markdown table, one row per (server, N).

    steady_sends and burst_size are what the runs planned to send (--rate
    times --duration, --burst): a row whose sender fell short is marked.
    """
    head = (
        "| server | N | idle CPU (one core) | × floor (same server) | × baseline | RSS / held poll (KB) "
        "| marginal KB / poll | RSS (MB) | p50 / p99 / max latency (ms) | lost | failed | 1,000-msg burst, 1,000 calls (ms) "
        "| burst in 1 transaction, from commit (ms) | burst, one send_many call (ms) "
        "| Redis CPU | rest of machine CPU |"
    )
    align = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    # With bench/run.py --burner, its share is a column of its own, never in "rest of machine".
    burned = any(s.get("burner_duty") is not None for s in summary.values())
    if burned:
        head += " burner CPU (idle window / whole run) |"
        align += "---:|"
    head += "\n" + align + "\n"
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
        if (
            s["lat_p50_ms"] is not None
            and s["late_sends"]
            and s["sent_steady"]
            and (s["late_sends"] > 0.05 * s["sent_steady"] or s["sent_steady"] < steady_sends)
        ):
            lat += f" ‡ ({s['sent_steady']:.0f} sent, {s['late_sends']:.0f} late)"
        burst = fmt(s["burst_total_ms"])
        if s["burst_after_last_send_ms"] is not None:
            burst += f" ({fmt(s['burst_after_last_send_ms'])} after last send)"
        elif s["sent_burst"] is not None:
            burst = f"incomplete: {fmt(s['burst_received'])} of {fmt(s['sent_burst'])} received"
        if s["sent_burst"] is not None and s["sent_burst"] < burst_size:
            burst += f" ‡ (only {s['sent_burst']:.0f} sent in {BURST_MAX_SECONDS} s)"
        burst2 = fmt(s["burst2_from_commit_ms"])
        if s["burst2_from_commit_ms"] is None and s["sent_burst2"]:
            burst2 = f"incomplete: {fmt(s['burst2_received'])} of {fmt(s['sent_burst2'])}"
        if s["sent_burst2"] is not None and s["sent_burst2"] < burst_size:
            burst2 += f" ‡ (only {s['sent_burst2']:.0f} sent in {BURST_MAX_SECONDS} s)"
        burst3 = fmt(s["burst3_total_ms"])
        if s["burst3_total_ms"] is None and s["sent_burst3"]:
            burst3 = f"incomplete: {fmt(s['burst3_received'])} of {fmt(s['sent_burst3'])}"
        redis_cpu = fmt(s["idle_redis_cpu"], pct_=True) if "scaled" in srv else "–"
        rows.append(
            f"| {srv} | {n:,} | {fmt(cpu, pct_=True)} | {x_floor} | {x_base} | {fmt(s['rss_per_poll_kb'], '.1f')} "
            f"| {fmt(s['rss_per_poll_kb_marginal'], '.1f')} | {fmt(s['rss_idle_mb'], '.0f')} | {lat} "
            f"| {fmt(s['lost'])} | {fmt(s['failed'])} | {burst} | {burst2} | {burst3} | {redis_cpu} "
            f"| {fmt(None if s['idle_other_cpu'] is None else max(0.0, s['idle_other_cpu']), pct_=True)} |"
            + (
                f" {fmt(s['idle_burner_cpu'], pct_=True)} / {fmt(s['burner_cpu'], pct_=True)}"
                f" (duty {fmt(s['burner_duty'], 'g')}) |"
                if burned
                else ""
            )
        )
    return head + "\n".join(rows) + "\n"


def plot(summary: Summary, path: Path, title: str) -> None:
    """Idle CPU and p99 latency against N, one line per server."""
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
        "floor-granian": "tab:brown",
        "project-daphne-embedded": "tab:blue",
        "project-uvicorn-embedded": "tab:cyan",
        "project-daphne-scaled": "tab:green",
        "project-uvicorn-scaled": "tab:olive",
        "project-uvicorn-postgres": "tab:purple",
        "project-granian-embedded": "tab:pink",
        "project-granian-scaled": "tab:orange",
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


# The generated part of docs/benchmarks.md is between these two lines.
BEGIN = "<!-- bench:results:begin (written by bench/run.py; edit outside these markers) -->"
END = "<!-- bench:results:end -->"


def table_of(result: dict[str, Any]) -> str:
    """The table of a results dict, with the sending its own runs planned."""
    a = result["args"]
    return table(
        summarize(result["runs"]),
        steady_sends=int(a["rate"] * a["duration"]),
        burst_size=a["burst"],
    )


def write_docs(
    result: dict[str, Any], results_path: Path, docs: Path = DOCS, plot_path: Path = PLOT
) -> None:
    """Redraws the plot and rewrites the part of `docs` between the bench:results markers."""
    summary = summarize(result["runs"])
    m = result["machine"]
    a = result["args"]
    title = (
        f"{m['cpu']}, {m['cpus']} vCPU, {a['hold']:g} s hold, "
        f"{time.strftime('%Y-%m-%d', time.localtime(result['started']))}"
    )
    plot(summary, plot_path, title)
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    skipped = "".join(f"- skipped: {s}\n" for s in result.get("skipped", []))
    errors = "".join(
        f"- error in {r['server']} N={r['n']}: {r['error'][:300]}\n"
        for r in result["runs"]
        if "error" in r
    )
    burner_note = (
        f"; and not bench/burner.py, which ran at duty {a['burner']:g} (of every"
        " 10 ms it spins duty × 10 ms) for the whole of each server's run, and whose"
        " measured share is its own column"
        if a.get("burner") is not None
        else ""
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

{table_of(result)}
Idle CPU: share of one core, user + sys of the server's processes over the idle
window. × floor: project ÷ the floor under the same server; × baseline: ÷ the
timer baseline at the same N. Lost: sent but not received by the end of the
run (at least one hold after the last send; 30 s for a burst). Failed: polls
answered with an error, dropped or timed out, and send calls that raised (the
failure kinds are in the JSON). ‡: the sender could not keep its rate (sent
late, or cut short after 2× the planned time; bursts after 20 s), so the figure
is bounded by the sender and the saturated machine. Rest of machine: CPU used
during the idle window by everything but the server, the load generators,
Redis and PostgreSQL (other users of this shared machine, e.g. test suites){burner_note}.

![Idle CPU and p99 latency against N](assets/{plot_path.name})

{skipped}{errors}{END}"""
    text = docs.read_text() if docs.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        text = pre + block + post
    else:
        text += "\n" + block + "\n"
    docs.write_text(text)
