"""Shared fixtures: a browser with a real session, and ASGI requests against
the project's application, as Channels' ``testing`` helpers drive it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.testing import ApplicationCommunicator
from django.utils.crypto import get_random_string

from longpoll_app import store
from longpoll_app.hub import Hub

from .servers import Reply

HOST = "testserver"
ORIGIN = f"http://{HOST}"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
REDIS_PREFIX = f"longpoll-test-{os.getpid()}:"


@dataclass
class Browser:
    """A browser with a saved session and a CSRF cookie, as the demo page leaves it."""

    session_key: str
    csrf: str = field(default_factory=lambda: get_random_string(32))

    def scope(
        self,
        path: str = "/longpoll/poll/",
        method: str = "POST",
        headers: dict[str, str | None] | None = None,
        cookies: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        jar = {"sessionid": self.session_key, "csrftoken": self.csrf}
        if cookies is not None:
            jar = cookies
        base: dict[str, str | None] = {
            "host": HOST,
            "origin": ORIGIN,
            "content-type": "application/json",
            "x-csrftoken": self.csrf,
            "cookie": "; ".join(f"{k}={v}" for k, v in jar.items()),
        }
        base.update(headers or {})
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in base.items() if v is not None],
            "client": ("127.0.0.1", 50000),
            "server": (HOST, 80),
        }

    def start(self, body: Any = None, **scope_kwargs: Any) -> Held:
        """Send a request and return it unanswered, to await or abandon."""
        from project.asgi import application

        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        comm = ApplicationCommunicator(application, self.scope(**scope_kwargs))
        held = Held(comm)
        held.sent = asyncio.ensure_future(comm.send_input({"type": "http.request", "body": raw}))
        return held

    async def request(self, body: Any = None, timeout: float = 5.0, **scope_kwargs: Any) -> Reply:
        return await self.start(body, **scope_kwargs).response(timeout)

    async def poll(self, cursor: int | None = None, timeout: float = 5.0) -> Reply:
        return await self.request({"cursor": cursor}, timeout=timeout)

    async def send(self, client_id: str, type: str, data: Any = None) -> Reply:
        return await self.request(
            {"id": client_id, "type": type, "data": data}, path="/longpoll/send/"
        )


@dataclass
class Held:
    comm: ApplicationCommunicator
    sent: Any = None

    async def response(self, timeout: float = 5.0) -> Reply:
        await self.sent
        start = await self.comm.receive_output(timeout)
        assert start["type"] == "http.response.start", start
        body = await self.comm.receive_output(timeout)
        await self.comm.send_input({"type": "http.disconnect"})
        await self.comm.wait(timeout)
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return Reply(start["status"], headers, body["body"])

    async def answered_within(self, timeout: float) -> bool:
        await self.sent
        return not await self.comm.receive_nothing(timeout)

    async def disconnect(self) -> None:
        await self.sent
        await self.comm.send_input({"type": "http.disconnect"})
        await self.comm.wait(2.0)


def new_session_key(**data: Any) -> str:
    session = store.session_store()
    session.update(data)
    session.save()
    assert session.session_key is not None
    return session.session_key


@pytest.fixture
def browser(transactional_db: None) -> Browser:
    return Browser(new_session_key())


@pytest.fixture
def make_browser(transactional_db: None) -> Any:
    def make(**session_data: Any) -> Browser:
        return Browser(new_session_key(**session_data))

    return make


@pytest.fixture(autouse=True)
def _fresh_settings(settings: Any) -> None:
    settings.LONGPOLL_TIMEOUT = 2.0
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture(autouse=True)
def _app_log_reaches_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's settings give the app's logger its own handler and stop it
    # there; caplog listens on the root logger.
    monkeypatch.setattr(logging.getLogger("longpoll_app"), "propagate", True)


@pytest.fixture(autouse=True)
async def _close_hubs() -> AsyncIterator[None]:
    yield
    loop = asyncio.get_running_loop()
    for hub in Hub.running():
        if hub.loop is loop:
            await hub.aclose()


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


def use_redis_layer(settings: Any) -> None:
    if not redis_available():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}; .ci/run starts it")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "capacity": 10_000,
                # Per test process, so that runs side by side do not see each other.
                "prefix": REDIS_PREFIX,
            },
        }
    }


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{REDIS_PREFIX}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
def layer(request: pytest.FixtureRequest, settings: Any) -> Iterator[str]:
    """Run the test once with the in-process layer and once with real Redis."""
    if request.param == "redis":
        use_redis_layer(settings)
    yield request.param
    if request.param == "redis":
        flush_redis()


@pytest.fixture
def redis_layer(settings: Any) -> Iterator[None]:
    use_redis_layer(settings)
    yield
    flush_redis()
