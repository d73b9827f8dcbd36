"""Fixtures of the real-browser tests; see browser_helpers.py for what they run.

They skip, saying why, when Playwright or Debian's Chromium is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.browser.browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    KIND_SERVER_HOLD,
    PAGE_TIMEOUT_MS,
    SERVER_KINDS,
    Server,
    skip_reason,
)


@pytest.fixture(autouse=True)
def _close_hubs() -> None:
    """Replaces tests/conftest.py's async fixture of that name for these tests.

    No hub runs in this process here (the servers are subprocesses), and Playwright's
    sync API keeps its own event loop running in this thread, where pytest-asyncio
    cannot run an async fixture.
    """


# The servers running now, whose logs a failing test's report shows.
_servers: list[Server] = []
_shared: list[Server] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for server in _shared + _servers:
            report.sections.append((f"server log ({server.kind}, {server.url})", server.log_tail()))
    return report


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def make_server(
    chromium: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Server]]:
    """Starts servers for one test; each stops when the test ends."""
    servers = _servers

    def make(**env: str) -> Server:
        server = Server(tmp_path_factory.mktemp("server"), env)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
    servers.clear()


@contextmanager
def _shared_server(
    tmp_path_factory: pytest.TempPathFactory, kind: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    shared = Server(tmp_path_factory.mktemp(f"server-{kind}"), env, kind=kind)
    _shared.append(shared)
    try:
        shared.start()
        yield shared
    finally:
        shared.stop()
        _shared.remove(shared)


@pytest.fixture(scope="module")
def server(chromium: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server (runserver) shared by the tests of a module that do not stop it."""
    with _shared_server(tmp_path_factory, "runserver") as shared:
        yield shared


@pytest.fixture(scope="module", params=SERVER_KINDS, ids=SERVER_KINDS)
def server_of_kind(
    request: pytest.FixtureRequest, chromium: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One server of each kind in turn, shared by the module's tests of that kind
    (pytest runs them together, so only one of these runs at a time)."""
    env = {"TEST_LONGPOLL_TIMEOUT": str(KIND_SERVER_HOLD)}
    with _shared_server(tmp_path_factory, request.param, env) as shared:
        yield shared


@pytest.fixture
def context(chromium: Any, server: Server) -> Iterator[Any]:
    """A fresh browser context (its own cookies, so its own session) on ``server``."""
    ctx = chromium.new_context(base_url=server.url)
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    yield ctx
    ctx.close()
