"""The poll and send endpoints, driven through the project's ASGI application."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from asgiref.sync import sync_to_async

import longpoll_app
from longpoll_app import process
from longpoll_app.api import send_to_session
from longpoll_app.models import ClientMessage, LongpollSession, Message
from longpoll_app.runtime import current_hub, drain_hubs

from .conftest import Browser

asend = sync_to_async(send_to_session)


# -- polling -------------------------------------------------------------------


async def test_pending_messages_answer_at_once_in_one_batch(browser: Browser, layer: str) -> None:
    for n in range(3):
        await asend(browser.session_key, "tick", {"n": n})
    response = await browser.poll(None)
    assert response.status == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "messages": [{"id": n + 1, "type": "tick", "data": {"n": n}} for n in range(3)],
        "cursor": 3,
        "gap": False,
    }


async def test_held_poll_answers_when_a_message_is_sent(browser: Browser, layer: str) -> None:
    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.3)
    await asend(browser.session_key, "hello", [1, 2])
    response = await held.response(timeout=1.0)
    assert response.status == 200
    assert response.json()["messages"] == [{"id": 1, "type": "hello", "data": [1, 2]}]


async def test_idle_poll_answers_empty_after_the_hold(browser: Browser, settings: Any) -> None:
    settings.LONGPOLL_TIMEOUT = 0.3
    response = await browser.poll(None)
    assert response.status == 204
    assert response.body == b""
    assert response.headers["cache-control"] == "no-store"
    assert "content-length" not in response.headers  # RFC 9110, 8.6: never on a 204


async def test_a_drain_answers_held_and_new_polls_at_once_and_closes(
    browser: Browser, registered: Any, monkeypatch: Any
) -> None:
    """SIGTERM's drain (process.drain_on_sigterm calls these two): the browser
    polls again at once, on a new connection, which goes to another server."""
    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.3)
    monkeypatch.setattr(process, "_draining", True)
    drain_hubs()
    response = await held.response(timeout=1.0)
    assert (response.status, response.headers["connection"]) == (204, "close")
    again = await browser.poll(None, timeout=1.0)  # arrives during the drain: not held
    assert (again.status, again.headers["connection"]) == (204, "close")
    await asend(browser.session_key, "late", 1)  # pending messages still go out, and close
    batch = await browser.poll(None, timeout=1.0)
    assert batch.json()["messages"] == [{"id": 1, "type": "late", "data": 1}]
    assert batch.headers["connection"] == "close"
    longpoll_app.handler("note")(lambda session_key, user, data: None)
    sent = await browser.send("c-1", "note", "x")
    assert (sent.status, sent.headers["connection"]) == (200, "close")


async def test_empty_status_can_be_304_for_old_clients(browser: Browser, settings: Any) -> None:
    settings.LONGPOLL_TIMEOUT = 0.2
    settings.LONGPOLL_EMPTY_STATUS = 304
    response = await browser.poll(None)
    assert response.status == 304
    assert "content-length" not in response.headers  # it would describe a 200's body


async def test_cursor_acknowledges_and_next_poll_gets_only_newer(
    browser: Browser, layer: str
) -> None:
    await asend(browser.session_key, "a", 1)
    await asend(browser.session_key, "b", 2)
    first = (await browser.poll(None)).json()
    await asend(browser.session_key, "c", 3)
    second = (await browser.poll(first["cursor"])).json()
    assert [m["id"] for m in second["messages"]] == [3]
    await current_hub().acks.flush()
    remaining = [m.seq async for m in Message.objects.all()]
    assert remaining == [3]  # 1 and 2 were acknowledged by the second poll's cursor


async def test_lost_response_is_delivered_again(browser: Browser) -> None:
    await asend(browser.session_key, "a", 1)
    first = await browser.poll(None)
    # The page never saw that answer, so it polls again with its old cursor.
    again = await browser.poll(None)
    assert again.json()["messages"] == first.json()["messages"]


async def test_batch_limit_splits_a_burst(browser: Browser, settings: Any) -> None:
    settings.LONGPOLL_BATCH_SIZE = 4
    for n in range(10):
        await asend(browser.session_key, "n", n)
    cursor, seen = None, []  # type: tuple[int | None, list[Any]]
    while len(seen) < 10:
        body = (await browser.poll(cursor)).json()
        seen += [m["data"] for m in body["messages"]]
        cursor = body["cursor"]
        assert len(body["messages"]) <= 4
    assert seen == list(range(10))


async def test_gap_reported_when_queue_cap_dropped_messages(
    browser: Browser, settings: Any
) -> None:
    settings.LONGPOLL_MAX_QUEUE = 3
    await asend(browser.session_key, "m", 0)
    first = (await browser.poll(None)).json()
    for n in range(1, 6):
        await asend(browser.session_key, "m", n)
    body = (await browser.poll(first["cursor"])).json()
    assert body["gap"] is True
    assert [m["data"] for m in body["messages"]] == [3, 4, 5]


async def test_gap_reported_when_messages_expired(browser: Browser, settings: Any) -> None:
    await asend(browser.session_key, "old", 1)
    settings.LONGPOLL_RETENTION = 0.001
    await asyncio.sleep(0.01)
    body = (await browser.poll(0)).json()
    assert body == {"messages": [], "cursor": 1, "gap": True}


async def test_cursor_from_an_earlier_record_restarts_with_a_gap(browser: Browser) -> None:
    await asend(browser.session_key, "x", 1)
    body = (await browser.poll(500)).json()
    assert body["gap"] is True
    assert [m["id"] for m in body["messages"]] == [1]


async def test_disconnect_while_held_leaves_nothing_behind(browser: Browser, layer: str) -> None:
    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.2)
    hub = current_hub()
    follow = hub.follows[browser.session_key]
    assert follow.held == 1 and len(follow.waiters) == 1
    await held.disconnect()
    assert follow.held == 0 and not follow.waiters
    # A message sent after the browser left waits in the store for the next poll.
    await asend(browser.session_key, "later", None)
    assert (await browser.poll(None)).json()["messages"][0]["type"] == "later"
    gc.collect()
    leftover = [t for t in asyncio.all_tasks() if "LongpollConsumer" in repr(t.get_coro())]
    assert leftover == []


async def test_many_aborted_polls_do_not_accumulate(browser: Browser) -> None:
    hub_polls = []
    for _ in range(50):
        held = browser.start({"cursor": None})
        assert not await held.answered_within(0.01)
        hub_polls.append(current_hub().held_polls())
        await held.disconnect()
    assert max(hub_polls) == 1
    assert current_hub().held_polls() == 0


def _count_store_calls(monkeypatch: Any) -> tuple[list[Any], list[list[str]]]:
    """The store's message reads, and the keys of each session check, from now on."""
    from longpoll_app import queue, sessions

    reads: list[Any] = []
    checks: list[list[str]] = []
    verify_sessions = sessions.verify_sessions

    def read(*args: Any) -> Any:
        reads.append(args)
        raise AssertionError("an idle re-poll must not read messages")

    def verify(polls: list[tuple[str, str | None, str]]) -> Any:
        checks.append([key for key, _, _ in polls])
        return verify_sessions(polls)

    monkeypatch.setattr(queue, "read", read)
    monkeypatch.setattr(sessions, "verify_sessions", verify)
    return reads, checks


async def test_idle_repoll_reads_nothing_from_the_store(
    browser: Browser, settings: Any, monkeypatch: Any
) -> None:
    settings.LONGPOLL_TIMEOUT = 0.2
    await asend(browser.session_key, "a", 1)
    cursor = (await browser.poll(None)).json()["cursor"]
    await asyncio.sleep(0.1)  # let the watcher establish its watermark
    assert (await browser.poll(cursor)).status == 204  # reads the store once more

    reads, checks = _count_store_calls(monkeypatch)
    assert (await browser.poll(cursor)).status == 204
    assert reads == []  # no message query...
    assert checks == [[browser.session_key]]  # ...only the session check every poll makes


async def test_fresh_page_idle_repoll_reads_nothing_from_the_store(
    browser: Browser, settings: Any, monkeypatch: Any
) -> None:
    """A page that has never had a message polls with a null cursor every hold."""
    settings.LONGPOLL_TIMEOUT = 0.2
    assert (await browser.poll(None)).status == 204
    await asyncio.sleep(0.1)  # let the watcher establish its watermark
    assert (await browser.poll(None)).status == 204  # read again: the first read predates it

    reads, checks = _count_store_calls(monkeypatch)
    assert (await browser.poll(None)).status == 204
    assert reads == []
    assert checks == [[browser.session_key]]
    # ...and a message still reaches such a page at once.
    monkeypatch.undo()
    settings.LONGPOLL_TIMEOUT = 2.0
    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.1)
    await asend(browser.session_key, "first", 1)
    assert (await held.response(1.0)).json()["messages"] == [{"id": 1, "type": "first", "data": 1}]


async def test_too_many_polls_for_one_session(browser: Browser, settings: Any) -> None:
    settings.LONGPOLL_MAX_POLLS_PER_SESSION = 2
    held = [browser.start({"cursor": None}) for _ in range(2)]
    for h in held:
        assert not await h.answered_within(0.1)
    refused = await browser.poll(None)
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "too_many_polls"
    for h in held:
        await h.disconnect()


async def test_session_ended_while_held_answers_403(browser: Browser) -> None:
    from longpoll_app.api import end_session

    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.1)
    await sync_to_async(end_session)(browser.session_key)
    response = await held.response(1.0)
    assert response.status == 403
    assert response.json()["error"] == "no_session"


# -- refusals: each documented status -------------------------------------------


async def test_forged_session_is_refused_and_creates_nothing(browser: Browser) -> None:
    forged = Browser("x" * 32, csrf=browser.csrf)
    response = await forged.poll(None)
    assert response.status == 403
    assert response.json()["error"] == "no_session"
    assert await LongpollSession.objects.acount() == 0


async def test_no_session_cookie_is_refused(browser: Browser) -> None:
    response = await browser.request({"cursor": None}, cookies={"csrftoken": browser.csrf})
    assert response.status == 403
    assert response.json()["error"] == "no_session"


@pytest.mark.parametrize(
    ("headers", "cookies", "reason"),
    [
        ({"x-csrftoken": None}, None, "CSRF token missing"),
        ({"x-csrftoken": "w" * 32}, None, "HTTP header incorrect"),
        ({"origin": "http://evil.example"}, None, "Origin checking failed"),
        ({}, {"sessionid": "will-be-set"}, "CSRF cookie not set"),
    ],
)
@pytest.mark.parametrize("path", ["/longpoll/poll/", "/longpoll/send/"])
async def test_csrf_is_enforced_by_django(
    browser: Browser, path: str, headers: dict[str, Any], cookies: Any, reason: str
) -> None:
    if cookies is not None:
        cookies = {"sessionid": browser.session_key}
    response = await browser.request({"cursor": None}, path=path, headers=headers, cookies=cookies)
    assert response.status == 403
    assert response.json()["error"] == "csrf_failed"
    assert reason in response.json()["detail"]


async def test_csrf_trusted_origins_are_honoured(browser: Browser, settings: Any) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com"]
    settings.LONGPOLL_TIMEOUT = 0.1
    response = await browser.request(
        {"cursor": None}, headers={"origin": "https://app.example.com"}
    )
    assert response.status == 204


async def test_csrf_token_in_the_session(browser: Browser, settings: Any) -> None:
    from django.middleware.csrf import CSRF_SESSION_KEY

    settings.CSRF_USE_SESSIONS = True
    settings.LONGPOLL_TIMEOUT = 0.1
    from longpoll_app.sessions import session_store

    def store_token() -> None:
        session = session_store(browser.session_key)
        session[CSRF_SESSION_KEY] = browser.csrf
        session.save()

    await sync_to_async(store_token)()
    ok = await browser.request({"cursor": None}, cookies={"sessionid": browser.session_key})
    assert ok.status == 204
    bad = await browser.request(
        {"cursor": None},
        cookies={"sessionid": browser.session_key},
        headers={"x-csrftoken": "z" * 32},
    )
    assert bad.status == 403


async def test_host_outside_allowed_hosts(browser: Browser) -> None:
    response = await browser.request({"cursor": None}, headers={"host": "evil.example"})
    assert response.status == 400
    assert response.json()["error"] == "disallowed_host"
    assert "evil.example" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'{"cursor": "7"}', "invalid_cursor"),
        (b'{"cursor": 1.5}', "invalid_cursor"),
        (b'{"cursor": true}', "invalid_cursor"),
        (b'{"cursor": -1}', "invalid_cursor"),
        (b'{"cursor": 99999999999999999999}', "invalid_cursor"),
        (b'{"cursor": 1, "extra": 2}', "invalid_body"),
    ],
)
async def test_malformed_poll_bodies_are_400(browser: Browser, body: bytes, code: str) -> None:
    response = await browser.request(body)
    assert response.status == 400
    assert response.json()["error"] == code
    assert response.json()["detail"]


@pytest.mark.parametrize("path", ["/longpoll/poll/", "/longpoll/send/"])
async def test_wrong_method_is_405(browser: Browser, path: str) -> None:
    response = await browser.request(b"", path=path, method="GET")
    assert response.status == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"] == "method_not_allowed"


async def test_body_over_the_limit_is_413(browser: Browser, settings: Any) -> None:
    settings.LONGPOLL_MAX_MESSAGE_BYTES = 100
    big = {"id": "a", "type": "t", "data": "x" * 200}
    response = await browser.request(big, path="/longpoll/send/")
    assert response.status == 413
    assert response.json()["error"] == "body_too_large"


async def test_database_outage_is_503_with_retry_after(browser: Browser, monkeypatch: Any) -> None:
    from django.db import OperationalError

    from longpoll_app import sessions

    def down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(sessions, "verify_sessions", down)
    response = await browser.poll(None)
    assert response.status == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "unavailable"


# -- client-to-server messages ---------------------------------------------------


async def test_send_reaches_a_sync_handler_that_replies(
    browser: Browser, registered: Any, layer: str
) -> None:
    received = []

    @longpoll_app.handler("chat.message")
    def on_chat(session_key: str, user: Any, data: Any) -> None:
        received.append((session_key, user.is_anonymous, data))
        send_to_session(session_key, "chat.echo", data)

    response = await browser.send("m-1", "chat.message", {"text": "<script>alert(1)</script>"})
    assert response.status == 200
    assert response.json() == {"ok": True}
    assert received == [(browser.session_key, True, {"text": "<script>alert(1)</script>"})]
    echoed = (await browser.poll(None)).json()["messages"]
    assert echoed == [{"id": 1, "type": "chat.echo", "data": {"text": "<script>alert(1)</script>"}}]


async def test_async_handler_and_signal_see_the_logged_in_user(
    make_browser: Any, registered: Any, django_user_model: Any
) -> None:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    user = await django_user_model.objects.acreate(username="ada")
    browser = await sync_to_async(make_browser)(
        **{
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
    )
    seen: list[Any] = []

    @longpoll_app.handler("ping")
    async def on_ping(session_key: str, user: Any, data: Any) -> None:
        seen.append(("handler", user.username, data))

    def on_signal(sender: Any, **kwargs: Any) -> None:
        seen.append(("signal", kwargs["user"].username, kwargs["type"]))

    longpoll_app.message_received.connect(on_signal)
    try:
        assert (await browser.send("p1", "ping", 5)).status == 200
    finally:
        longpoll_app.message_received.disconnect(on_signal)
    assert seen == [("handler", "ada", 5), ("signal", "ada", "ping")]


async def test_retried_client_id_is_handled_once(browser: Browser, registered: Any) -> None:
    calls = []

    @longpoll_app.handler("once")
    def on_once(session_key: str, user: Any, data: Any) -> None:
        calls.append(data)

    first = await browser.send("retry-me", "once", 1)
    second = await browser.send("retry-me", "once", 1)
    assert first.json() == {"ok": True}
    assert second.json() == {"ok": True, "duplicate": True}
    assert calls == [1]
    assert await ClientMessage.objects.acount() == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_failed_handler_can_be_retried(browser: Browser, registered: Any, kind: str) -> None:
    attempts = []

    def on_flaky(session_key: str, user: Any, data: Any) -> None:
        attempts.append(data)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    async def on_flaky_async(session_key: str, user: Any, data: Any) -> None:
        on_flaky(session_key, user, data)

    longpoll_app.handler("flaky")(on_flaky if kind == "sync" else on_flaky_async)
    failed = await browser.send("f1", "flaky", None)
    assert failed.status == 500
    assert failed.json()["error"] == "handler_failed"
    assert (await browser.send("f1", "flaky", None)).json() == {"ok": True}
    assert (await browser.send("f1", "flaky", None)).json() == {"ok": True, "duplicate": True}
    assert len(attempts) == 2


async def test_async_handler_is_run_again_when_its_id_could_not_be_recorded(
    browser: Browser, registered: Any, monkeypatch: Any
) -> None:
    from django.db import OperationalError

    from longpoll_app import queue

    record = queue.record_client_message
    calls: list[Any] = []

    def database_gone_once(*args: Any) -> bool:
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return record(*args)

    monkeypatch.setattr(queue, "record_client_message", database_gone_once)

    @longpoll_app.handler("async.work")
    async def on_work(session_key: str, user: Any, data: Any) -> None:
        calls.append(data)

    failed = await browser.send("w1", "async.work", 1)
    assert (failed.status, failed.json()["error"]) == (503, "unavailable")
    assert (await browser.send("w1", "async.work", 1)).json() == {"ok": True}
    assert calls == [1, 1]  # run again rather than taken for a duplicate: never lost
    assert (await browser.send("w1", "async.work", 1)).json() == {"ok": True, "duplicate": True}


async def test_a_retry_while_an_async_handler_runs_waits_and_is_a_duplicate(
    browser: Browser, registered: Any
) -> None:
    release = asyncio.Event()
    calls = []

    @longpoll_app.handler("slow")
    async def on_slow(session_key: str, user: Any, data: Any) -> None:
        calls.append(data)
        await release.wait()

    first = asyncio.ensure_future(browser.send("s1", "slow", 1))
    while not calls:
        await asyncio.sleep(0.01)
    retry = asyncio.ensure_future(browser.send("s1", "slow", 1))
    await asyncio.sleep(0.2)
    assert not retry.done()  # it waits for the first instead of running the handler
    release.set()
    assert (await first).json() == {"ok": True}
    assert (await retry).json() == {"ok": True, "duplicate": True}
    assert calls == [1]


async def test_failed_sync_handler_leaves_neither_its_writes_nor_the_id(
    browser: Browser, registered: Any
) -> None:
    from django.db import OperationalError

    attempts = []

    @longpoll_app.handler("lost.connection")
    def on_message(session_key: str, user: Any, data: Any) -> None:
        attempts.append(data)
        send_to_session(session_key, "echo", len(attempts))  # a write the failure must undo
        if len(attempts) == 1:
            raise OperationalError("server closed the connection unexpectedly")

    failed = await browser.send("d1", "lost.connection", "x")
    assert (failed.status, failed.json()["error"]) == (500, "handler_failed")
    assert await ClientMessage.objects.acount() == 0
    assert await Message.objects.acount() == 0
    assert (await browser.send("d1", "lost.connection", "x")).json() == {"ok": True}
    assert attempts == ["x", "x"]
    reply = await browser.poll()
    assert [m["data"] for m in reply.json()["messages"]] == [2]


async def test_a_failing_receiver_does_not_run_a_committed_sync_handler_again(
    browser: Browser, registered: Any, caplog: pytest.LogCaptureFixture
) -> None:
    runs = []

    @longpoll_app.handler("committed")
    def on_message(session_key: str, user: Any, data: Any) -> None:
        runs.append(data)

    def broken_receiver(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    longpoll_app.message_received.connect(broken_receiver)
    try:
        assert (await browser.send("c1", "committed", 1)).json() == {"ok": True}
        retried = await browser.send("c1", "committed", 1)
    finally:
        longpoll_app.message_received.disconnect(broken_receiver)
    assert retried.json() == {"ok": True, "duplicate": True}
    assert runs == [1]  # once: its transaction had committed
    assert "receiver failed" in caplog.text and "receiver bug" in caplog.text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"id": "", "type": "t"}, "invalid_id"),
        ({"id": "has space", "type": "t"}, "invalid_id"),
        ({"id": 5, "type": "t"}, "invalid_id"),
        ({"id": "a", "type": ""}, "invalid_type"),
        ({"id": "a", "type": ["x"]}, "invalid_type"),
        ({"id": "a", "type": "t" * 101}, "invalid_type"),
        ({"id": "a", "type": "t", "more": 1}, "invalid_body"),
        ({"id": "a", "type": "nobody.listens"}, "unknown_type"),
    ],
)
async def test_malformed_client_messages_are_400(
    browser: Browser, body: dict[str, Any], code: str
) -> None:
    response = await browser.request(body, path="/longpoll/send/")
    assert response.status == 400
    assert response.json()["error"] == code


async def test_send_rate_limit_is_429_with_retry_after(
    browser: Browser, registered: Any, settings: Any
) -> None:
    settings.LONGPOLL_SEND_BURST = 3
    settings.LONGPOLL_SEND_RATE = 0.5

    @longpoll_app.handler("spam")
    def on_spam(session_key: str, user: Any, data: Any) -> None:
        pass

    statuses = [(await browser.send(f"s{n}", "spam")).status for n in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = await browser.send("s5", "spam")
    assert refused.json()["error"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1


async def test_send_without_session_is_403(browser: Browser, registered: Any) -> None:
    @longpoll_app.handler("t")
    def on_t(session_key: str, user: Any, data: Any) -> None:
        raise AssertionError("must not run")

    response = await Browser("y" * 32, csrf=browser.csrf).send("a", "t")
    assert response.status == 403
    assert response.json()["error"] == "no_session"


async def test_a_message_woken_during_the_session_check_is_answered_at_once(
    browser: Browser, monkeypatch: Any
) -> None:
    """The check reads the record's ids; a message queued (and its wake-up
    handled) before the check's answer is back makes those ids stale. The poll
    must read the store, not wait out its hold."""
    from longpoll_app import sessions

    assert (await browser.poll(None)).status == 204  # followed, nothing pending
    verify = sessions.verify_sessions

    def check_then_send(polls: list[tuple[str, str | None, str]]) -> Any:
        records = verify(polls)  # the ids as they were
        send_to_session(browser.session_key, "late", 1)  # wakes the hub before the answer
        return records

    monkeypatch.setattr(sessions, "verify_sessions", check_then_send)
    held = browser.start({"cursor": 0})
    assert await held.answered_within(1.0)  # not after the 2 s hold
    reply = await held.response()
    assert reply.json()["messages"] == [{"id": 1, "type": "late", "data": 1}]
