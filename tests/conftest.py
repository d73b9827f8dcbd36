"""Shared fixtures: a browser with a real session, and ASGI requests against
the project's application, as Channels' ``testing`` helpers drive it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from channels.testing import ApplicationCommunicator
from django.urls import get_resolver
from django.utils.crypto import get_random_string

from longpoll_app import handlers, sessions
from longpoll_app.runtime import close_hub, running_hubs

from .servers import Reply

# Branch coverage of longpoll_app that the whole suite must reach (pytest-cov
# measures every run; only a run of everything is held to it).
COVERAGE_GATE = 93  # percent of lines and branches, a point under what the suite reached


def pytest_configure(config: pytest.Config) -> None:
    narrowing = ("markexpr", "keyword", "lf", "deselect", "ignore", "ignore_glob")
    narrowed = any(getattr(config.option, name, None) for name in narrowing)
    whole_suite = config.args_source is pytest.Config.ArgsSource.TESTPATHS and not narrowed
    # pytest-cov reads its own copy of the options, made before conftests load.
    cov = config.pluginmanager.getplugin("_cov")
    if whole_suite and cov is not None and not cov.options.cov_fail_under:
        cov.options.cov_fail_under = COVERAGE_GATE


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
        client: tuple[str, int] = ("127.0.0.1", 50000),
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
            "client": client,
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
    session = sessions.session_store()
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


@pytest.fixture
def registered() -> Iterator[dict[str, Any]]:
    """The handler registry, emptied of the demo's handlers for the test."""
    # The URLconf imports the demo, which registers its handlers: load it first,
    # or a test run alone would see the demo register over its handlers.
    get_resolver().url_patterns  # noqa: B018
    saved = dict(handlers._handlers)
    handlers._handlers.clear()  # the demo's own handlers are not part of these tests
    yield handlers._handlers
    handlers._handlers.clear()
    handlers._handlers.update(saved)


@pytest.fixture(autouse=True)
def _fresh_settings(settings: Any) -> None:
    settings.LONGPOLL_TIMEOUT = 2.0
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


# Tests of the demo project itself (its page, its URLs and its template), by
# (module, function): tests/settings.py routes only the app and the admin.
DEMO_TESTS = {
    ("tests.test_routing", "test_other_paths_reach_django"),
    ("tests.test_templatetags", "test_the_demo_page_sets_session_and_csrf_cookies"),
}


@pytest.fixture(autouse=True)
def _demo_project(request: pytest.FixtureRequest, settings: Any) -> None:
    """The demo's URLconf and templates for the tests of the demo, whatever the
    settings module; on project.settings this changes nothing."""
    if (request.module.__name__, request.function.__name__) in DEMO_TESTS:
        settings.ROOT_URLCONF = "project.urls"
        demo_templates = Path(__file__).resolve().parent.parent / "templates"
        settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [demo_templates]}]


@pytest.fixture(autouse=True)
def _app_log_reaches_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's settings give the app's logger its own handler and stop it
    # there; caplog listens on the root logger.
    monkeypatch.setattr(logging.getLogger("longpoll_app"), "propagate", True)


@pytest.fixture(autouse=True)
async def _close_hubs() -> AsyncIterator[None]:
    yield
    loop = asyncio.get_running_loop()
    for hub in running_hubs():
        if hub.loop is loop:
            await close_hub(hub)


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


def use_redis_layer(settings: Any, host: str | dict[str, Any] = REDIS_URL) -> None:
    if not redis_available():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}; .ci/run starts it")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [host],  # the plain form a project copies
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
