"""Real server processes for the tests that need them, and a tiny HTTP client."""

from __future__ import annotations

import http.client
import http.cookies
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
STARTUP_TIMEOUT = 30.0  # seconds a server may take to accept connections


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_available() -> bool:
    try:
        import psycopg

        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2).close()
        return True
    except Exception:
        return False


def fresh_postgres_database(name: str) -> str:
    """Drop and create a database; return its URL."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def manage(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Server:
    kind: str  # "daphne" or "uvicorn"
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self, log_dir: Path) -> Server:
        self.log_path = log_dir / f"{self.kind}-{self.port}.log"
        if self.kind == "daphne":
            cmd = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
        else:
            cmd = ["-m", "uvicorn", "--host", "127.0.0.1", "--port", str(self.port)]
            cmd += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *cmd, "project.asgi:application"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not start:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpBrowser:
    """Cookies and CSRF token of one browser, usable against any of the servers."""

    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self, server: Server, method: str, path: str, body: Any = None, timeout: float = 15.0
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        headers = {"Origin": f"http://127.0.0.1:{server.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if "csrftoken" in self.cookies:
            headers["X-CSRFToken"] = self.cookies["csrftoken"]
        raw = None if body is None else json.dumps(body).encode()
        if raw is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=raw, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            jar = http.cookies.SimpleCookie(header)
            self.cookies.update({k: m.value for k, m in jar.items()})
        return Reply(response.status, dict(response.headers), data)

    def open_page(self, server: Server) -> None:
        reply = self.request(server, "GET", "/")
        assert reply.status == 200, reply
        assert "sessionid" in self.cookies and "csrftoken" in self.cookies, self.cookies

    def poll(self, server: Server, cursor: int | None = None, timeout: float = 15.0) -> Reply:
        return self.request(server, "POST", "/longpoll/poll/", {"cursor": cursor}, timeout)

    def send(self, server: Server, client_id: str, type: str, data: Any) -> Reply:
        return self.request(
            server, "POST", "/longpoll/send/", {"id": client_id, "type": type, "data": data}
        )
