"""Helpers of the real-browser tests: a real server in a subprocess, pages with a recorder.

The server is the demo project run as a person runs it, on a migrated temporary SQLite
database and a free 127.0.0.1 port: by default with ``manage.py runserver`` (which is
daphne's, under DEBUG, and serves the static files itself), or as in production with
``daphne`` or ``uvicorn`` and DEBUG off, where WhiteNoise serves them. When a local
Redis answers, it gets ``REDIS_URL`` too, so that ``manage.py longpoll_send`` in another
process wakes held polls at once (without Redis the server only notices other
processes' sends by checking the database every LONGPOLL_WATCH_INTERVAL).

Chromium is Debian's (``apt-get install chromium``), driven by Playwright's Python API
through ``executable_path``: Playwright's own browser download is not available here.
The tests skip, saying why, when either is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests import servers

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

CHROMIUM = os.environ.get("LONGPOLL_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REDIS_URL = os.environ.get("LONGPOLL_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

SERVER_START_TIMEOUT = 60.0  # seconds for migrate plus the server to answer
SERVER_STOP_TIMEOUT = 10.0  # seconds a server gets to exit on SIGTERM before SIGKILL
PAGE_TIMEOUT_MS = 20_000  # milliseconds Playwright waits for a page condition
# Seconds a poll is held on the servers of conftest's ``server_of_kind``, pinned: their
# tests tell a send that answered a held poll at once from one that waited for its end,
# and a long hold leaves room for a send that a loaded machine starts late.
KIND_SERVER_HOLD = 30.0


def skip_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM}: apt-get install chromium, or set LONGPOLL_TEST_CHROMIUM"
    return None


def _redis_url() -> str | None:
    """REDIS_URL when a Redis answers there, else None (the server then runs without)."""
    if os.environ.get("LONGPOLL_TEST_NO_REDIS") == "1":
        return None
    try:
        import redis
    except ImportError:
        return None
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:
        return None
    return REDIS_URL


# How each kind of server is started, as tests/servers.py starts daphne and uvicorn, and
# its DEBUG (DJANGO_DEBUG, read by project/settings.py): runserver is the developer's,
# daphne and uvicorn run as in production, where no DEBUG-only static view exists.
SERVER_KINDS = ("runserver", "daphne", "uvicorn")
_DEBUG = {"runserver": "1", "daphne": "0", "uvicorn": "0"}


def _serve_command(kind: str, port: int) -> list[str]:
    """The arguments after ``python`` that serve the demo on 127.0.0.1:port, as
    the other server suites run it (uvicorn with uvloop, httptools, access log)."""
    if kind not in SERVER_KINDS:
        raise ValueError(f"unknown server kind {kind!r}: one of {SERVER_KINDS}")
    return servers.Server(kind, {}, port=port, access_log=True).command()


class Server:
    """The demo project served in a subprocess by ``kind``, one of ``SERVER_KINDS``.

    Its database file outlives ``stop()``, so ``start()`` again is a server restart
    with the same sessions and queued messages, on the same port.
    """

    def __init__(
        self, workdir: Path, env: dict[str, str] | None = None, kind: str = "runserver"
    ) -> None:
        if kind not in SERVER_KINDS:
            raise ValueError(f"unknown server kind {kind!r}: one of {SERVER_KINDS}")
        self.kind = kind
        self.workdir = workdir
        self.port = servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.redis_url = _redis_url()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.browser.browser_settings",
            "PYTHONPATH": str(REPO),
            "SQLITE_PATH": str(workdir / "db.sqlite3"),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_DEBUG": _DEBUG[kind],
            **(env or {}),
        }
        self.env.pop("REDIS_URL", None)
        self.env.pop("DATABASE_URL", None)
        if self.redis_url:
            self.env["REDIS_URL"] = self.redis_url
        self.process: subprocess.Popen[bytes] | None = None
        self._migrated = False

    def manage(self, *args: str, timeout: float = 60.0) -> str:
        """Runs a management command against this server's database; returns stdout."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout.decode()}\n{result.stderr.decode()}"
            )
        return result.stdout.decode()

    def start(self) -> None:
        if not self._migrated:
            self.manage("migrate", "--noinput")
            self._migrated = True
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *_serve_command(self.kind, self.port)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise AssertionError(f"the server did not answer in time:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def send(self, session_key: str, type_: str, data: Any) -> None:
        """Pushes one message from another process, with ``manage.py longpoll_send``."""
        self.manage("longpoll_send", session_key, type_, json.dumps(data))

    def timed_send(self, session_key: str, type_: str, payloads: list[Any]) -> list[float]:
        """Like ``send`` for each payload, from one warmed-up process; returns the
        wall-clock time (seconds since the epoch) at which each send began."""
        result = subprocess.run(
            [
                sys.executable,
                str(HERE / "timed_send.py"),
                session_key,
                type_,
                *(json.dumps(p) for p in payloads),
            ],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"timed_send failed:\n{result.stderr.decode()}")
        started: list[float] = json.loads(result.stdout.decode().strip().splitlines()[-1])
        return started

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])


# Records, in the page, every message and client event longpoll.js dispatches.
RECORDER_JS = """() => {
  if (window.__lp) { return; }
  window.__lp = {messages: [], gaps: [], statuses: [], errors: []};
  longpoll.on("*", (data, m) => __lp.messages.push({id: m.id, type: m.type, data, at: Date.now()}));
  longpoll.on("gap", (info) => __lp.gaps.push(info));
  longpoll.on("status", (s) => __lp.statuses.push(s));
  longpoll.on("error", (e) => __lp.errors.push({status: e.status, code: e.code}));
}"""


def open_page(context: Any, path: str = "/", wait_open: bool = True) -> Any:
    """Opens the demo page, waits until longpoll.js has joined (and, by default, until
    this browser's poll is being held), and installs the recorder."""
    page = context.new_page()
    page.goto(path)
    page.wait_for_function("window.longpoll && longpoll.role !== 'starting'")
    page.evaluate(RECORDER_JS)
    if wait_open:
        page.wait_for_function("longpoll.status === 'open'")
    return page


def session_key(context: Any) -> str:
    for cookie in context.cookies():
        if cookie["name"] == "sessionid":
            return str(cookie["value"])
    raise AssertionError("the page set no session cookie")


def recorded(page: Any, type_: str | None = None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = page.evaluate("() => __lp.messages")
    return [m for m in messages if type_ is None or m["type"] == type_]


def wait_for_count(page: Any, type_: str, count: int) -> list[dict[str, Any]]:
    """Waits until the page has dispatched ``count`` messages of a type; returns them."""
    page.wait_for_function(
        "([type, count]) => __lp.messages.filter((m) => m.type === type).length >= count",
        arg=[type_, count],
    )
    return recorded(page, type_)


# Posts to the demo's counter view, which pushes "demo.counter" with send_to_session.
COUNT_UP_JS = """async (times) => {
  const token = document.querySelector("script[data-csrf-token]").dataset.csrfToken;
  const values = [];
  for (let i = 0; i < times; i++) {
    const response = await fetch("/demo/counter/", {
      method: "POST",
      credentials: "same-origin",
      headers: {"X-CSRFToken": token, Accept: "application/json"},
    });
    if (!response.ok) { throw new Error("counter view answered " + response.status); }
    values.push((await response.json()).value);
  }
  return values;
}"""


def count_up(page: Any, times: int) -> list[int]:
    values: list[int] = page.evaluate(COUNT_UP_JS, times)
    return values


def chat(sender: Any, receivers: tuple[Any, ...], name: str, line: str) -> None:
    """Send ``line`` from the demo's chat form as ``name``; wait until every page shows it."""
    sender.fill("#chat-name", name)
    sender.fill("#chat-text", line)
    sender.get_by_role("button", name="Send").click()
    for page in receivers:
        page.wait_for_function(
            "([name, line]) => [...document.querySelectorAll('#chat-log li')]"
            ".some((li) => li.textContent.endsWith(name + ': ' + line))",
            arg=[name, line],
        )
