"""The demo page as a person uses it, and how the client ends when its session ends."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.browser_helpers import (
    PAGE_TIMEOUT_MS,
    Server,
    chat,
    open_page,
    recorded,
    session_key,
    wait_for_count,
)

pytestmark = pytest.mark.browser


def test_the_counter_button_updates_every_tab(context: Any) -> None:
    first, second = open_page(context), open_page(context)

    first.get_by_role("button", name="Count one up").click()
    first.get_by_role("button", name="Count one up").click()

    for page in (first, second):
        page.wait_for_function("document.getElementById('counter').textContent === '2'")
    # Reloading shows the value the session kept.
    second.reload()
    assert second.locator("#counter").text_content() == "2"


def test_two_sessions_chat_and_markup_stays_text(chromium: Any, server: Server) -> None:
    contexts = [chromium.new_context(base_url=server.url) for _ in range(2)]
    try:
        for ctx in contexts:
            ctx.set_default_timeout(PAGE_TIMEOUT_MS)
        alice, bob = (open_page(ctx) for ctx in contexts)
        line = '<img src=x onerror="window.__injected = true"> hi bob'
        chat(alice, (alice, bob), "alice", line)
        for page in (alice, bob):
            assert page.locator("#chat-log img").count() == 0
            assert page.evaluate("window.__injected") is None
    finally:
        for ctx in contexts:
            ctx.close()


def test_messages_are_data_never_code(context: Any, server: Server) -> None:
    page = open_page(context)
    code = "window.__evaluated = true"

    server.send(session_key(context), "script", code)
    server.send(session_key(context), "test.ping", {"html": "<script>" + code + "</script>"})

    wait_for_count(page, "test.ping", 1)
    assert [m["data"] for m in recorded(page)] == [code, {"html": f"<script>{code}</script>"}]
    assert page.evaluate("window.__evaluated") is None


def test_demo_clock_pushes_from_another_process(context: Any, server: Server) -> None:
    page = open_page(context)

    server.manage("demo_clock", "--count", "2", "--interval", "0.2")

    wait_for_count(page, "demo.clock", 2)
    assert page.locator("#clock").text_content() != "--:--:--"


def test_a_page_whose_session_ended_stops(context: Any) -> None:
    page = open_page(context)
    other = open_page(context)

    # The demo's button logs out, which ends the session: the held poll is refused.
    page.get_by_role("button", name="end this session").click()

    # The leader is refused and stops; the other tab takes over, is refused, stops.
    for tab in (page, other):
        tab.wait_for_function("longpoll.status === 'stopped' && longpoll.role === 'stopped'")
        assert tab.evaluate("__lp.errors") == [{"status": 403, "code": "no_session"}]
