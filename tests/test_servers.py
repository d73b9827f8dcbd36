"""Real server processes: two of them on one Redis and PostgreSQL, and the
embedded default on its own. No sticky sessions: a browser's requests go to
whichever server the test picks."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .conftest import REDIS_URL, redis_available
from .servers import (
    HttpBrowser,
    Server,
    drop_postgres_database,
    fresh_postgres_database,
    manage,
    postgres_available,
)

pytestmark = pytest.mark.servers
HOLD = 10.0  # seconds: the demo settings' LONGPOLL_TIMEOUT; a woken poll answers well before


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DJANGO_SETTINGS_MODULE="project.settings", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    if not redis_available():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}; .ci/run starts it")
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432; .ci/run starts it")
    import redis

    servers_redis = REDIS_URL.rsplit("/", 1)[0] + "/12"  # this module's own database
    redis.Redis.from_url(servers_redis).flushdb()
    env = base_env()
    name = f"longpoll_servers_test_{os.getpid()}"
    env.update(DATABASE_URL=fresh_postgres_database(name), REDIS_URL=servers_redis)
    migrated = manage(env, "migrate", "-v0")
    assert migrated.returncode == 0, migrated.stderr
    logs = tmp_path_factory.mktemp("scaled")
    servers = (Server("daphne", env).start(logs), Server("uvicorn", env).start(logs))
    yield servers
    for server in servers:
        server.stop()
        assert "Traceback" not in server.log(), server.log()
        # Wake-ups must have come through Redis all along, not the store fallback.
        assert "channel layer unreachable" not in server.log(), server.log()
    drop_postgres_database(name)


def held(pool: ThreadPoolExecutor, browser: HttpBrowser, server: Server, cursor: int | None) -> Any:
    future = pool.submit(browser.poll, server, cursor)
    time.sleep(0.5)  # let the poll reach the server and be held
    assert not future.done(), future.result()
    return future


@pytest.mark.parametrize("direction", ["daphne->uvicorn", "uvicorn->daphne"])
def test_send_through_one_server_wakes_a_poll_held_on_the_other(
    scaled: tuple[Server, Server], direction: str
) -> None:
    daphne, uvicorn = scaled
    sender, holder = (daphne, uvicorn) if direction.startswith("daphne") else (uvicorn, daphne)
    browser = HttpBrowser()
    browser.open_page(sender)
    with ThreadPoolExecutor(1) as pool:
        poll = held(pool, browser, holder, None)
        started = time.monotonic()
        # demo.echo's handler runs in the sending server and calls send_to_session.
        assert (
            browser.send(sender, f"echo-{sender.kind}", "demo.echo", {"via": direction}).status
            == 200
        )
        reply = poll.result(timeout=HOLD + 5)
    assert reply.status == 200
    assert time.monotonic() - started < HOLD  # woken, not answered by the hold running out
    assert reply.json()["messages"] == [{"id": 1, "type": "demo.echo", "data": {"via": direction}}]


def test_management_command_wakes_a_poll_on_either_server(scaled: tuple[Server, Server]) -> None:
    browser = HttpBrowser()
    browser.open_page(scaled[0])
    cursor = None
    for n, server in enumerate(scaled):
        with ThreadPoolExecutor(1) as pool:
            poll = held(pool, browser, server, cursor)
            sent = manage(server.env, "longpoll_send", browser.cookies["sessionid"], "cmd", str(n))
            assert sent.returncode == 0, sent.stderr
            reply = poll.result(timeout=HOLD + 5)
        assert reply.status == 200
        assert [m["data"] for m in reply.json()["messages"]] == [n]
        cursor = reply.json()["cursor"]


def test_messages_wait_while_no_poll_is_open_and_arrive_in_order(
    scaled: tuple[Server, Server],
) -> None:
    browser = HttpBrowser()
    browser.open_page(scaled[1])
    for n in range(5):
        browser.send(scaled[n % 2], f"m{n}", "demo.echo", n)
    reply = browser.poll(scaled[0], None)
    assert [m["data"] for m in reply.json()["messages"]] == [0, 1, 2, 3, 4]
    # Acknowledged through one server, gone on the other.
    assert browser.poll(scaled[1], reply.json()["cursor"], timeout=HOLD + 5).status == 204


@pytest.mark.parametrize("index", [0, 1], ids=["daphne", "uvicorn"])
def test_client_leaving_while_held_is_harmless(scaled: tuple[Server, Server], index: int) -> None:
    server = scaled[index]
    browser = HttpBrowser()
    browser.open_page(server)
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    body = b'{"cursor": null}'
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(
            b"POST /longpoll/poll/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Origin: http://127.0.0.1:{server.port}\r\nCookie: {cookie}\r\n".encode()
            + f"X-CSRFToken: {browser.cookies['csrftoken']}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.05)
        sock.close()
    time.sleep(0.5)
    # The message sent after they all left is still there for the next poll.
    browser.send(server, "after-leaving", "demo.echo", "still here")
    assert browser.poll(server, None).json()["messages"][0]["data"] == "still here"
    assert "Traceback" not in server.log()


def test_embedded_default_delivers_a_command_send_to_a_held_poll(tmp_path: Path) -> None:
    env = base_env()
    env["SQLITE_PATH"] = str(tmp_path / "embedded.sqlite3")
    assert manage(env, "migrate", "-v0").returncode == 0
    server = Server("daphne", env).start(tmp_path)
    try:
        browser = HttpBrowser()
        browser.open_page(server)
        with ThreadPoolExecutor(1) as pool:
            poll = held(pool, browser, server, None)
            sent = manage(env, "longpoll_send", browser.cookies["sessionid"], "hello", '"world"')
            assert sent.returncode == 0, sent.stderr
            reply = poll.result(timeout=HOLD + 5)
        assert reply.status == 200
        assert reply.json()["messages"] == [{"id": 1, "type": "hello", "data": "world"}]
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_every_asset_of_the_demo_page_loads_on_either_server(scaled: tuple[Server, Server]) -> None:
    """daphne and uvicorn serve no static files themselves (only runserver
    does): the page would load without its client."""
    for server in scaled:
        page = HttpBrowser().request(server, "GET", "/")
        assert page.status == 200
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.body.decode())
        assert any(a.endswith("longpoll.js") for a in assets), assets
        for asset in assets:
            reply = HttpBrowser().request(server, "GET", asset)
            assert reply.status == 200, (server.kind, asset, reply.status)
            assert reply.body, (server.kind, asset)
