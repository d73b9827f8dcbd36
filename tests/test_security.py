"""Security properties beyond the per-status tests: HTTPS CSRF rules, session
isolation, and payloads that stay data."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from longpoll_app.api import send_to_session
from longpoll_app.models import LongpollSession

from .conftest import Browser

asend = sync_to_async(send_to_session)


async def secure_poll(browser: Browser, headers: dict[str, str | None]) -> Any:
    from channels.testing import ApplicationCommunicator

    from project.asgi import application

    scope = browser.scope(headers=headers)
    scope["scheme"] = "https"
    comm = ApplicationCommunicator(application, scope)
    await comm.send_input({"type": "http.request", "body": b'{"cursor": null}'})
    start = await comm.receive_output(5)
    body = await comm.receive_output(5)
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(2)
    return start["status"], body["body"]


async def test_https_without_referer_or_origin_is_refused(browser: Browser) -> None:
    status, body = await secure_poll(browser, {"origin": None})
    assert status == 403
    assert b"Referer checking failed - no Referer." in body


async def test_https_with_a_foreign_referer_is_refused(browser: Browser) -> None:
    status, body = await secure_poll(
        browser, {"origin": None, "referer": "https://evil.example/page"}
    )
    assert status == 403
    assert b"does not match any trusted origins" in body


async def test_https_with_same_site_referer_passes(browser: Browser, settings: Any) -> None:
    settings.LONGPOLL_TIMEOUT = 0.1
    status, _ = await secure_poll(browser, {"origin": None, "referer": "https://testserver/"})
    assert status == 204


async def test_each_session_sees_only_its_own_messages(make_browser: Any) -> None:
    alice, bob = await sync_to_async(make_browser)(), await sync_to_async(make_browser)()
    await asend(alice.session_key, "for.alice", "a")
    await asend(bob.session_key, "for.bob", "b")
    assert [m["type"] for m in (await alice.poll(None)).json()["messages"]] == ["for.alice"]
    assert [m["type"] for m in (await bob.poll(None)).json()["messages"]] == ["for.bob"]


async def test_a_cursor_cannot_reach_into_another_session(make_browser: Any) -> None:
    alice, bob = await sync_to_async(make_browser)(), await sync_to_async(make_browser)()
    for n in range(3):
        await asend(alice.session_key, "secret", n)
    # Bob guesses cursors: he only ever gets his own (empty) queue.
    for cursor in (0, 1, 2):
        response = await bob.request({"cursor": cursor}, timeout=5)
        assert response.status in (200, 204)
        if response.status == 200:
            assert response.json()["messages"] == []
    assert len((await alice.poll(None)).json()["messages"]) == 3


@pytest.mark.parametrize("kind", ["forged", "expired", "other-site"])
async def test_dead_session_cookies_see_nothing_and_create_nothing(
    browser: Browser, kind: str
) -> None:
    await asend(browser.session_key, "private", "x")
    records = await LongpollSession.objects.acount()
    if kind == "expired":
        from django.contrib.sessions.models import Session

        await Session.objects.filter(session_key=browser.session_key).aupdate(
            expire_date=timezone.now() - timedelta(seconds=1)
        )
        key = browser.session_key
    elif kind == "forged":
        key = "f" * 32
    else:
        key = "sessionkeyfromanotherdjangosite1"
    response = await Browser(key, csrf=browser.csrf).poll(None)
    assert response.status == 403
    assert response.json()["error"] == "no_session"
    assert await LongpollSession.objects.acount() == records  # nothing new
