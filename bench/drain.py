"""How long a server takes to drain on SIGTERM, with N polls held.

For each server, each round: start it (the demo project, embedded SQLite),
hold N polls on it (one per session, each on its own connection), send
SIGTERM, and time every answer and the process's exit.

    python bench/drain.py --n 2000 --servers uvicorn daphne --rounds 3

Prints one line per round and a JSON summary (medians over rounds) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import HOST, PY, log  # noqa: E402
from bench.servers import (  # noqa: E402
    DEFAULT_HOLD_S,
    Databases,
    ServerSpec,
    free_port,
    prepare_dbs,
    start,
    stop,
)

HELD_TIMEOUT_S = 60  # for the server to accept every poll's connection
HELD_SETTLE_S = 1.0  # after that: every poll reached its hold
ANSWER_TIMEOUT_S = 30
MEDIANS = ("held", "answered_p50_ms", "answered_max_ms", "exit_after_last_answer_ms")


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]  # the writer keeps it open


async def hold_poll(port: int, session: str, csrf: str) -> Connection:
    reader, writer = await asyncio.open_connection(HOST, port)
    body = b'{"cursor": null}'
    writer.write(
        (
            f"POST /longpoll/poll/ HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Origin: http://{HOST}:{port}\r\nCookie: sessionid={session}; csrftoken={csrf}\r\n"
            f"X-CSRFToken: {csrf}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    await writer.drain()
    return reader, writer


async def answer_of(connection: Connection) -> tuple[float, int, bool]:
    """When the answer's head arrived, its status (0: closed without one), and
    whether it closes the connection."""
    reader, _ = connection
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return time.perf_counter(), 0, True
    at = time.perf_counter()
    lines = head.decode("latin-1").split("\r\n")
    closes = any(line.lower() == "connection: close" for line in lines)
    return at, int(lines[0].split()[1]), closes


async def accepted(pid: int, count: int) -> None:
    """Until the server holds ``count`` sockets besides its listener: a poll
    still in the accept queue would be reset, not drained, when it stops."""
    deadline = time.monotonic() + HELD_TIMEOUT_S
    while time.monotonic() < deadline:
        fds = Path(f"/proc/{pid}/fd")
        sockets = sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))
        if sockets > count:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server did not accept {count} connections")


async def one_round(
    spec: ServerSpec, sessions: list[tuple[str, str]], log_path: Path
) -> dict[str, Any]:
    port = free_port()
    server = start(spec, port, log_path)
    proc = server.proc
    try:
        connections = [await hold_poll(port, key, csrf) for key, csrf in sessions]
        answers = [asyncio.ensure_future(answer_of(c)) for c in connections]
        await accepted(proc.pid, len(sessions))
        await asyncio.sleep(HELD_SETTLE_S)
        told = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        done = await asyncio.wait_for(asyncio.gather(*answers), ANSWER_TIMEOUT_S)
        await asyncio.to_thread(proc.wait, ANSWER_TIMEOUT_S)
        exited = time.perf_counter()
    finally:
        stop(server)  # after a drain, only closes the log
    # Only the polls still held at SIGTERM: one that had reached the end of its
    # hold meanwhile (a slow server taking in N connections) says nothing of the drain.
    drained = [(at - told, status, closes) for at, status, closes in done if at > told]
    after = sorted(lag for lag, _, _ in drained)
    return {
        "held": len(drained),
        "answered_p50_ms": round(statistics.median(after) * 1000, 1),
        "answered_max_ms": round(after[-1] * 1000, 1),
        "exit_after_last_answer_ms": round((exited - told - after[-1]) * 1000, 1),
        "statuses": sorted({status for _, status, _ in drained}),
        "all_close": all(closes for _, _, closes in drained),
    }


def prepared(workdir: Path, n: int) -> tuple[Databases, list[tuple[str, str]]]:
    """The embedded database, migrated, and ``n`` sessions in it."""
    dbs = prepare_dbs(workdir, {"embedded"})
    env = ServerSpec.configure("project-uvicorn-embedded", DEFAULT_HOLD_S, dbs).env
    out = workdir / "sessions.txt"
    subprocess.run([PY, "bench/make_sessions.py", "--count", str(n), "--out", str(out)],
                   cwd=ROOT, env=dict(env), check=True)  # fmt: skip
    sessions = [tuple(line.split()[1:3]) for line in out.read_text().splitlines()]
    return dbs, sessions  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="polls held at SIGTERM")
    parser.add_argument("--servers", nargs="+", default=["uvicorn", "daphne"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    summary: dict[str, Any] = {"n": args.n, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="longpoll-drain-") as tmp:
        dbs, sessions = prepared(Path(tmp), args.n)
        for kind in args.servers:
            spec = ServerSpec.configure(f"project-{kind}-embedded", DEFAULT_HOLD_S, dbs)
            runs = []
            for index in range(args.rounds):
                result = asyncio.run(one_round(spec, sessions, Path(tmp) / f"{kind}.log"))
                log(kind, index + 1, json.dumps(result))
                runs.append(result)
            summary[kind] = {key: statistics.median(r[key] for r in runs) for key in MEDIANS}
            summary[kind]["statuses"] = sorted({s for r in runs for s in r["statuses"]})
            summary[kind]["all_close"] = all(r["all_close"] for r in runs)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
