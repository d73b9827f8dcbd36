"""The demo as a person uses it in Chromium, under each server it can be served by.

runserver serves the static files itself under DEBUG; daphne and uvicorn run with DEBUG
off, as in production, and serve none: there the page's client, script and stylesheet
load only because the demo's WhiteNoise serves them. Every test opens the page through
``open_demo``, which fails at once, naming the file, when one of them did not load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.browser.browser_helpers import (
    KIND_SERVER_HOLD,
    PAGE_TIMEOUT_MS,
    RECORDER_JS,
    Server,
    chat,
    session_key,
    wait_for_count,
)

pytestmark = pytest.mark.browser

HOLD = KIND_SERVER_HOLD  # seconds a poll is held on these servers before it answers empty
# Seconds from the start of a send in another process to the held poll's answer at most:
# generous for a loaded machine (a wake-up takes milliseconds), and far enough below
# HOLD that an answer within it is "at once", not "when the hold ended".
AT_ONCE = 3.0
POLL_PATH = "/longpoll/poll/"

# Every script and stylesheet the page references, with the HTTP status the page's own
# Resource Timing entry gives it (0: blocked, as a stylesheet served as text/html is;
# null: never fetched). Complete at the load event, unlike the events Playwright relays.
REFERENCED_FILES_JS = """() => {
  const urls = [
    ...[...document.querySelectorAll("script[src]")].map((e) => e.src),
    ...[...document.querySelectorAll("link[rel=stylesheet]")].map((e) => e.href),
  ];
  const status = (url) => {
    const entries = performance.getEntriesByName(url, "resource");
    return entries.length ? entries[entries.length - 1].responseStatus : null;
  };
  return Object.fromEntries(urls.map((url) => [url, status(url)]));
}"""
# The stylesheets that loaded and hold rules (a sheet that failed to load has none).
LOADED_STYLESHEETS_JS = """() => [...document.styleSheets]
  .filter((sheet) => sheet.href && sheet.cssRules.length > 0)
  .map((sheet) => sheet.href)"""
# Every poll this page has finished: when it started and when its answer ended, in
# seconds since the epoch (the Resource Timing API; Python's time.time() is the same clock).
FINISHED_POLLS_JS = """(path) => performance.getEntriesByType("resource")
  .filter((e) => new URL(e.name).pathname === path)
  .map((e) => ({
    start: (performance.timeOrigin + e.startTime) / 1000,
    end: (performance.timeOrigin + e.responseEnd) / 1000,
  }))"""


class Visitor:
    """One browser context (its own cookies, so its own session) on a server, and what
    went wrong in it: error statuses, failed requests, console errors, uncaught errors."""

    def __init__(self, chromium: Any, server: Server) -> None:
        self.context = chromium.new_context(base_url=server.url)
        self.context.set_default_timeout(PAGE_TIMEOUT_MS)
        self.problems: list[str] = []
        self.context.on("response", self._response)
        self.context.on("requestfailed", self._request_failed)
        self.context.on("console", self._console)
        self.context.on("weberror", self._web_error)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"{response.status} {response.request.method} {response.url}")

    def _request_failed(self, request: Any) -> None:
        self.problems.append(f"failed {request.method} {request.url}: {request.failure}")

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def _web_error(self, error: Any) -> None:
        self.problems.append(f"uncaught: {error.error}")

    def open_demo(self) -> Any:
        """Opens the demo page, checks that every file it references loaded, waits
        until its client's poll is held, and installs the recorder of messages."""
        page = self.context.new_page()
        page.goto("/")  # returns after the load event: every script and stylesheet answered
        referenced: dict[str, int | None] = page.evaluate(REFERENCED_FILES_JS)
        assert any(url.endswith("/longpoll.js") for url in referenced), referenced
        not_ok = {url: status for url, status in referenced.items() if status != 200}
        assert not not_ok, f"files of the page that did not answer 200: {not_ok}"
        assert self.problems == []
        stylesheets = [url for url in referenced if url.endswith(".css")]
        assert sorted(page.evaluate(LOADED_STYLESHEETS_JS)) == sorted(stylesheets)
        page.wait_for_function("window.longpoll && longpoll.role !== 'starting'")
        page.evaluate(RECORDER_JS)
        page.wait_for_function("longpoll.status === 'open'")
        return page

    def session_key(self) -> str:
        return session_key(self.context)


@pytest.fixture
def visit(chromium: Any, server_of_kind: Server) -> Iterator[Callable[[], Visitor]]:
    """Makes visitors of this test's server; their contexts close when the test ends."""
    visitors: list[Visitor] = []

    def make() -> Visitor:
        visitors.append(Visitor(chromium, server_of_kind))
        return visitors[-1]

    yield make
    for visitor in visitors:
        visitor.context.close()


def test_the_page_loads_every_file_and_connects(visit: Callable[[], Visitor]) -> None:
    visitor = visit()
    page = visitor.open_demo()

    # demo.js (not longpoll.js) writes the client's status into the page.
    page.wait_for_function("document.getElementById('status').textContent === 'open'")
    assert visitor.problems == []


def test_the_counter_button_updates_two_tabs_of_one_session(
    visit: Callable[[], Visitor],
) -> None:
    visitor = visit()
    first, second = visitor.open_demo(), visitor.open_demo()

    for value, tab in enumerate((first, second, first), start=1):
        tab.get_by_role("button", name="Count one up").click()
        for page in (first, second):
            page.wait_for_function(
                "(value) => document.getElementById('counter').textContent === String(value)",
                arg=value,
            )
    assert sorted(page.evaluate("longpoll.role") for page in (first, second)) == [
        "follower",
        "leader",
    ]
    assert visitor.problems == []


def test_a_chat_line_reaches_another_session(visit: Callable[[], Visitor]) -> None:
    alice_visitor, bob_visitor = visit(), visit()
    alice, bob = alice_visitor.open_demo(), bob_visitor.open_demo()
    assert alice_visitor.session_key() != bob_visitor.session_key()
    chat(alice, (alice, bob), "alice", "hello from alice")
    assert alice_visitor.problems == [] and bob_visitor.problems == []


def test_a_send_from_another_process_answers_the_held_poll_at_once(
    visit: Callable[[], Visitor], server_of_kind: Server
) -> None:
    visitor = visit()
    page = visitor.open_demo()

    (sent_at,) = server_of_kind.timed_send(visitor.session_key(), "test.ping", [{"n": 1}])

    (message,) = wait_for_count(page, "test.ping", 1)
    polls = page.evaluate(FINISHED_POLLS_JS, POLL_PATH)
    held_at_send = [poll for poll in polls if poll["start"] < sent_at < poll["end"]]
    assert len(held_at_send) == 1, f"no one poll held at the send ({sent_at}): {polls}"
    held = held_at_send[0]
    print(
        f"held poll: started {sent_at - held['start']:.3f} s before the send, "
        f"answered {held['end'] - sent_at:.3f} s after it"
    )
    # Else an answer within AT_ONCE could be the hold ending, not the send waking it.
    assert sent_at + AT_ONCE < held["start"] + HOLD, (held, sent_at)
    assert held["end"] - sent_at < AT_ONCE, f"the held poll answered {held} after {sent_at}"
    assert message["data"] == {"n": 1} and message["at"] / 1000 - sent_at < AT_ONCE
    # The demo's own script shows it in the "What arrived" list.
    assert "test.ping" in page.locator("#log li").first.text_content()
    assert visitor.problems == []
