"""Load generator: simulated browsers that each keep one long-poll held.

One process drives a share of the browsers over raw HTTP/1.1 keep-alive
connections (asyncio streams on uvloop: about 10-15% of a core per 1,000
requests a second). The runner (bench/run.py) starts several of these and talks
to each over stdin/stdout, one JSON line per command:

    -> {"cmd": "setup"}            project only: GET / for each browser without
                                   a cached cookie; writes --sessions-out
    <- {"ok": true, "created": n}
    -> {"cmd": "start", "epoch": t} browser g makes its first poll at
                                   t + hold * g / total, then re-polls at once
                                   after every answer
    <- {"ok": true}
    -> {"cmd": "stat"}
    <- {"held": n, "polls": n, "msgs": n, "burst": n, "fail": n, ...}
    -> {"cmd": "stop"}             closes every connection, writes --results-out
    <- {"ok": true}

Modes:
    project   POST /longpoll/poll/ {"cursor": ...} with the session and CSRF
              cookies; 200 {"messages": [...], "cursor", "gap"} or 204
    floor     the same requests (bench/floor_app.py answers 204 after the hold)
    baseline  GET /poll?s=b<index> (bench/baseline_timer.py); 200 one message or 304

Every message's data carries {"t": time sent, "seq": n, "run": run id}; the
browser records (seq, browser index, t, time received) for its run's messages
and only counts others (a durable queue hands an earlier run's unacknowledged
messages to the next run's first poll). Nothing goes to any address but the
--host given, which the runner sets to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any

try:
    import uvloop
except ImportError:  # pragma: no cover - the bench requirements bring it
    uvloop = None

BURST_SEQ = 1_000_000  # seqs at or above this belong to the burst


class Failure(Exception):
    pass


async def read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[bytes, bytes], list[bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1])
    headers: dict[bytes, bytes] = {}
    cookies: list[bytes] = []
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        value = value.strip()
        if key == b"set-cookie":
            cookies.append(value)
        else:
            headers[key] = value
    if status in (204, 304) or status < 200:
        body = b""
    elif b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers, up to the empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.read()
        headers[b"connection"] = b"close"
    return status, headers, cookies, body


class Browser:
    __slots__ = (
        "answered",
        "busy",
        "csrf",
        "cursor",
        "index",
        "reader",
        "request_head",
        "session",
        "writer",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.answered = False  # has had a poll answered
        self.session: str | None = None
        self.csrf: str | None = None
        self.cursor: int | None = None  # set from --initial-cursor at start
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.busy = False
        self.request_head = b""


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host = args.host
        self.port = args.port
        self.hold = args.hold
        self.mode = args.mode
        self.origin = f"http://{args.host}:{args.port}"
        self.browsers = [Browser(g) for g in range(args.index, args.total, args.procs)]
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []
        self.records: list[tuple[int, int, float, float]] = []
        self.seen_burst = 0
        self.msgs = 0
        self.polls = 0
        self.answered = 0  # browsers that have had at least one poll answered
        self.polls_empty = 0
        self.polls_msg = 0
        self.gaps = 0
        self.foreign = 0
        self.held = 0
        self.connects = 0
        self.stale_reconnects = 0
        self.failures: dict[str, int] = {}
        self.fail_samples: list[str] = []
        self.empty_durations: list[float] = []
        self.started_at = 0.0

    # ---- bookkeeping -------------------------------------------------------
    def fail(self, kind: str, detail: str = "") -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        if len(self.fail_samples) < 20:
            self.fail_samples.append(f"{time.time():.3f} {kind} {detail}"[:300])

    def stat(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "polls": self.polls,
            "answered": self.answered,
            "msgs": self.msgs,
            "burst": self.seen_burst,
            "fail": sum(self.failures.values()),
            "failures": self.failures,
            "connects": self.connects,
            "browsers": len(self.browsers),
        }

    # ---- setup (project): GET / for cookies --------------------------------
    def load_sessions(self) -> int:
        if not self.args.sessions_in:
            return 0
        known: dict[int, tuple[str, str]] = {}
        with contextlib.suppress(FileNotFoundError), open(self.args.sessions_in) as fh:
            for line in fh:
                idx, session, csrf = line.split()
                known[int(idx)] = (session, csrf)
        n = 0
        for b in self.browsers:
            if b.index in known:
                b.session, b.csrf = known[b.index]
                n += 1
        return n

    async def setup(self) -> int:
        missing = [b for b in self.browsers if b.session is None]
        queue: asyncio.Queue[Browser] = asyncio.Queue()
        for b in missing:
            queue.put_nowait(b)

        async def worker() -> None:
            reader = writer = None
            while not queue.empty():
                b = queue.get_nowait()
                for _attempt in range(5):
                    try:
                        if writer is None:
                            reader, writer = await asyncio.open_connection(self.host, self.port)
                        writer.write(
                            f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()
                        )
                        status, headers, cookies, _ = await read_response(reader)
                        if status != 200:
                            raise Failure(f"GET / answered {status}")
                        for c in cookies:
                            name, _, rest = c.partition(b"=")
                            value = rest.split(b";", 1)[0].decode()
                            if name == b"sessionid":
                                b.session = value
                            elif name == b"csrftoken":
                                b.csrf = value
                        if headers.get(b"connection", b"").lower() == b"close":
                            writer.close()
                            writer = None
                        break
                    except (OSError, asyncio.IncompleteReadError, Failure) as exc:
                        self.fail("setup", repr(exc))
                        if writer is not None:
                            writer.close()
                        writer = None
                        await asyncio.sleep(0.2)
                if b.session is None or b.csrf is None:
                    raise Failure(f"browser {b.index}: no session/csrf cookie from GET /")
            if writer is not None:
                writer.close()

        await asyncio.gather(
            *(worker() for _ in range(min(self.args.setup_concurrency, len(missing)) or 1))
        )
        if self.args.sessions_out:
            with open(self.args.sessions_out, "w") as fh:
                for b in self.browsers:
                    fh.write(f"{b.index} {b.session} {b.csrf}\n")
        return len(missing)

    # ---- the browsers ------------------------------------------------------
    def build_head(self, b: Browser) -> None:
        host = f"{self.host}:{self.port}"
        if self.mode == "baseline":
            b.request_head = f"GET /poll?s=b{b.index} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        else:
            session = b.session or f"floor{b.index}"
            csrf = b.csrf or "x" * 32
            b.request_head = (
                f"POST /longpoll/poll/ HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/json\r\n"
                f"X-CSRFToken: {csrf}\r\n"
                f"Cookie: sessionid={session}; csrftoken={csrf}\r\n"
                f"Origin: {self.origin}\r\n"
            ).encode()

    def request(self, b: Browser) -> bytes:
        if self.mode == "baseline":
            return b.request_head
        body = b'{"cursor": null}' if b.cursor is None else b'{"cursor": %d}' % b.cursor
        return b.request_head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def close(self, b: Browser) -> None:
        if b.writer is not None:
            b.writer.close()
        b.reader = b.writer = None

    async def run_browser(self, b: Browser, start_at: float) -> None:
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        limit = self.hold + self.args.grace
        reused = False
        while not self.stopping:
            if b.writer is None:
                try:
                    async with asyncio.timeout(10):
                        b.reader, b.writer = await asyncio.open_connection(self.host, self.port)
                    self.connects += 1
                    reused = False
                except (OSError, TimeoutError) as exc:
                    self.fail("connect", repr(exc))
                    b.reader = b.writer = None
                    await asyncio.sleep(1.0)
                    continue
            sent_at = time.time()
            b.busy = True
            self.held += 1
            try:
                b.writer.write(self.request(b))
                async with asyncio.timeout(limit):
                    status, headers, _, body = await read_response(b.reader)
            except TimeoutError:
                # (before OSError: TimeoutError is one of its subclasses)
                self.close(b)
                if self.stopping:
                    return
                self.fail("timeout", f"no answer within {limit}s")
                continue
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                self.close(b)
                if self.stopping:
                    return
                partial = getattr(exc, "partial", b"")
                if reused and not partial and time.time() - sent_at < 0.05:
                    # The server had closed the idle keep-alive connection just
                    # as we reused it: reconnect and ask again, as a browser does.
                    self.stale_reconnects += 1
                    continue
                self.fail("connection", f"{exc!r} after {time.time() - sent_at:.2f}s")
                await asyncio.sleep(0.5)
                continue
            finally:
                b.busy = False
                self.held -= 1
            now = time.time()
            reused = True
            self.polls += 1
            if not b.answered:
                b.answered = True
                self.answered += 1
            if status == 200 and self.mode != "floor":
                try:
                    self.handle_body(b, body, now)
                except (ValueError, KeyError, TypeError) as exc:
                    self.fail("body", f"{exc!r} {body[:100]!r}")
                    await asyncio.sleep(0.5)
            elif status == (304 if self.mode == "baseline" else 204):
                self.polls_empty += 1
                if len(self.empty_durations) < 200_000:
                    self.empty_durations.append(now - sent_at)
            else:
                self.fail(f"status_{status}", body[:200].decode("latin-1"))
                await asyncio.sleep(0.5)
            if headers.get(b"connection", b"").lower() == b"close":
                self.close(b)

    def handle_body(self, b: Browser, body: bytes, now: float) -> None:
        payload = json.loads(body)
        self.polls_msg += 1
        if self.mode == "baseline":
            self.record(b, payload, now)
            return
        for message in payload["messages"]:
            if message.get("type") == "bench":
                self.record(b, message["data"], now)
        b.cursor = payload["cursor"]
        if payload.get("gap"):
            self.gaps += 1

    def record(self, b: Browser, data: dict[str, Any], now: float) -> None:
        if data.get("run") != self.args.run_id:
            # Left in the store by an earlier run on the same database and
            # delivered now (the session's queue is durable): not this run's.
            self.foreign += 1
            return
        seq = int(data["seq"])
        self.records.append((seq, b.index, float(data["t"]), now))
        self.msgs += 1
        if seq >= BURST_SEQ:
            self.seen_burst += 1

    def start(self, epoch: float) -> None:
        self.started_at = epoch
        total = self.args.total
        for b in self.browsers:
            b.cursor = self.args.initial_cursor
            self.build_head(b)
            start_at = epoch + self.hold * b.index / total
            self.tasks.append(asyncio.create_task(self.run_browser(b, start_at)))

    async def stop(self) -> None:
        self.stopping = True
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for b in self.browsers:
            self.close(b)
        durations = sorted(self.empty_durations)

        def pct(p: float) -> float | None:
            return (
                durations[min(len(durations) - 1, int(p * len(durations)))] if durations else None
            )

        result = {
            "index": self.args.index,
            "browsers": len(self.browsers),
            "records": self.records,
            "polls": self.polls,
            "polls_empty": self.polls_empty,
            "polls_msg": self.polls_msg,
            "gaps": self.gaps,
            "foreign": self.foreign,
            "connects": self.connects,
            "stale_reconnects": self.stale_reconnects,
            "failures": self.failures,
            "fail_samples": self.fail_samples,
            "empty_hold": {
                "n": len(durations),
                "min": pct(0.0),
                "p50": pct(0.5),
                "max": durations[-1] if durations else None,
            },
        }
        with open(self.args.results_out, "w") as fh:
            json.dump(result, fh)


async def control(gen: Generator) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ok": True, "ready": True, "browsers": len(gen.browsers), "cached": gen.load_sessions()})
    while True:
        line = await reader.readline()
        if not line:
            await gen.stop()
            return
        cmd = json.loads(line)
        if cmd["cmd"] == "setup":
            try:
                created = await gen.setup()
                reply({"ok": True, "created": created})
            except Failure as exc:
                reply({"ok": False, "error": str(exc)})
        elif cmd["cmd"] == "start":
            gen.start(float(cmd["epoch"]))
            reply({"ok": True})
        elif cmd["cmd"] == "stat":
            reply(gen.stat())
        elif cmd["cmd"] == "stop":
            await gen.stop()
            reply({"ok": True})
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["project", "floor", "baseline"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--total", type=int, required=True, help="browsers over all processes")
    parser.add_argument("--procs", type=int, default=1, help="generator processes in all")
    parser.add_argument("--index", type=int, default=0, help="this process's index")
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds past the hold before a poll counts as timed out",
    )
    parser.add_argument("--sessions-in", help="cached 'index sessionid csrftoken' lines")
    parser.add_argument("--sessions-out")
    parser.add_argument("--setup-concurrency", type=int, default=16)
    parser.add_argument("--results-out", required=True)
    parser.add_argument("--run-id", required=True, help="only messages with this data.run count")
    parser.add_argument(
        "--initial-cursor",
        type=int,
        default=None,
        help="diagnosis only: first cursor sent instead of null (the wire protocol's browser sends null)",
    )
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the load generator only targets the loopback interface")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if uvloop is not None:
        uvloop.install()
    asyncio.run(control(Generator(args)))


if __name__ == "__main__":
    main()
