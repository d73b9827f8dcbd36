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


# -- remembered verdicts ----------------------------------------------------------


@pytest.fixture
def csrf_runs(monkeypatch: Any) -> list[str]:
    """Counts the runs of Django's CSRF check (the memo skips it)."""
    from longpoll_app import security

    runs: list[str] = []
    process_view = security._csrf.process_view

    def counted(request: Any, *args: Any) -> Any:
        runs.append(request.META.get("HTTP_X_CSRFTOKEN", ""))
        return process_view(request, *args)

    monkeypatch.setattr(security._csrf, "process_view", counted)
    security._vetted.clear()
    return runs


async def test_a_repeated_request_passes_on_the_remembered_verdict(
    browser: Browser, settings: Any, csrf_runs: list[str]
) -> None:
    settings.LONGPOLL_TIMEOUT = 0.05
    for _ in range(3):
        assert (await browser.poll(None)).status == 204
    assert len(csrf_runs) == 1  # the same headers again: Django's verdict is reused


async def test_any_other_header_is_checked_again_and_refusals_are_never_remembered(
    browser: Browser, settings: Any, csrf_runs: list[str]
) -> None:
    settings.LONGPOLL_TIMEOUT = 0.05
    assert (await browser.poll(None)).status == 204
    for _ in range(2):
        forged = await browser.request({"cursor": None}, headers={"x-csrftoken": "x" * 32})
        assert forged.status == 403 and forged.json()["error"] == "csrf_failed"
    foreign = await browser.request({"cursor": None}, headers={"origin": "http://evil.example"})
    assert foreign.status == 403
    assert len(csrf_runs) == 4


async def test_requests_without_a_session_are_checked_every_time(
    browser: Browser, settings: Any, csrf_runs: list[str]
) -> None:
    cookies = {"csrftoken": browser.csrf}
    for _ in range(2):
        refused = await browser.request({"cursor": None}, cookies=cookies)
        assert refused.status == 403 and refused.json()["error"] == "no_session"
    assert len(csrf_runs) == 2


async def test_a_remembered_verdict_keeps_its_own_session(
    browser: Browser, make_browser: Any, settings: Any, csrf_runs: list[str]
) -> None:
    settings.LONGPOLL_TIMEOUT = 0.05
    other = await sync_to_async(make_browser)()
    for page in (browser, other, browser, other):
        assert (await page.poll(None)).status == 204
    await sync_to_async(send_to_session)(other.session_key, "for.other", None)
    assert (await browser.poll(None)).status == 204  # not the other session's message
    assert [m["type"] for m in (await other.poll(None)).json()["messages"]] == ["for.other"]
    assert len(csrf_runs) == 2  # one check per browser


async def test_form_bodies_and_changed_settings_are_checked_again(
    browser: Browser, settings: Any, csrf_runs: list[str]
) -> None:
    settings.LONGPOLL_TIMEOUT = 0.05
    form = {"content-type": "application/x-www-form-urlencoded"}
    for _ in range(2):  # a form body may carry the token: never remembered
        await browser.request({"cursor": None}, headers=form)
    assert len(csrf_runs) == 2
    assert (await browser.poll(None)).status == 204
    settings.ALLOWED_HOSTS = ["elsewhere.example"]  # any setting change forgets every verdict
    refused = await browser.poll(None)
    assert refused.status == 400 and refused.json()["error"] == "disallowed_host"


def test_request_digest_separates_header_boundaries() -> None:
    from longpoll_app.security import request_digest

    def scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
        return {"method": "POST", "scheme": "http", "path": "/p/", "headers": headers}

    one = request_digest(scope([(b"x-a", b"bc"), (b"x-d", b"e")]))
    other = request_digest(scope([(b"x-a", b"b"), (b"cx-d", b"e")]))
    assert one is not None and other is not None and one != other
    with_length = request_digest(
        scope([(b"x-a", b"bc"), (b"x-d", b"e"), (b"content-length", b"9")])
    )
    assert with_length == one  # the cursor changes the length, not the verdict
