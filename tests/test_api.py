"""send_to_session, send_to_user and their async twins."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.test import RequestFactory

from longpoll_app import (
    api,
    asend_many_to_session,
    asend_to_session,
    asend_to_user,
    outbox,
    process,
    send_many_to_session,
    send_to_session,
    send_to_user,
    sessions,
)
from longpoll_app.layers import shared_layer
from longpoll_app.models import LongpollSession, Message
from longpoll_app.sessions import session_store
from longpoll_app.testing import capture_messages

from .conftest import Browser, new_session_key


def test_accepts_a_key_a_session_or_a_request(transactional_db: None) -> None:
    key = new_session_key()
    request = RequestFactory().get("/")
    request.session = session_store(key)
    assert send_to_session(key, "a") == 1
    assert send_to_session(session_store(key), "b") == 2
    assert send_to_session(request, "c") == 3
    assert list(Message.objects.values_list("type", flat=True)) == ["a", "b", "c"]


def test_a_request_without_a_saved_session_gets_one(transactional_db: None) -> None:
    request = RequestFactory().get("/")
    request.session = session_store()
    send_to_session(request, "hello")
    assert request.session.session_key is not None
    assert request.session.modified  # so SessionMiddleware sends the cookie
    assert LongpollSession.objects.get().session_key == request.session.session_key


def test_unknown_session_key_is_refused(transactional_db: None) -> None:
    with pytest.raises(LookupError, match="No live session"):
        send_to_session("no-such-session-key-000000000000", "x")
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("type_", "data", "error"),
    [
        ("", None, ValueError),
        (None, None, ValueError),
        ("x" * 101, None, ValueError),
        ("status", None, ValueError),
        ("*", None, ValueError),
        ("ok", {1, 2}, TypeError),
        ("ok", object(), TypeError),
    ],
)
def test_bad_arguments_are_refused(
    transactional_db: None, type_: Any, data: Any, error: type
) -> None:
    key = new_session_key()
    with pytest.raises(error):
        send_to_session(key, type_, data)
    with pytest.raises(TypeError, match="session must be"):
        send_to_session(42, "t")
    assert not Message.objects.exists()


def test_ids_count_up_per_session(transactional_db: None) -> None:
    a, b = new_session_key(), new_session_key()
    assert [send_to_session(a, "m"), send_to_session(b, "m"), send_to_session(a, "m")] == [1, 1, 2]


async def test_wake_happens_only_after_commit(browser: Browser, layer: str) -> None:
    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.1)
    in_transaction = asyncio.Event()
    loop = asyncio.get_running_loop()

    def send_in_transaction() -> None:
        with transaction.atomic():
            send_to_session(browser.session_key, "committed", 1)
            loop.call_soon_threadsafe(in_transaction.set)
            time.sleep(0.4)

    sending = asyncio.ensure_future(sync_to_async(send_in_transaction)())
    await in_transaction.wait()
    assert not await held.answered_within(0.2)  # still inside the transaction
    await sending
    response = await held.response(1.0)
    assert response.json()["messages"] == [{"id": 1, "type": "committed", "data": 1}]


def test_rolled_back_message_is_never_sent(transactional_db: None, monkeypatch: Any) -> None:
    key = new_session_key()
    woken: list[Any] = []
    monkeypatch.setattr(api, "wake", woken.append)
    with pytest.raises(RuntimeError), transaction.atomic():
        send_to_session(key, "doomed")
        raise RuntimeError("roll back")
    assert woken == []
    assert not Message.objects.exists()


async def test_async_twins(browser: Browser) -> None:
    assert await asend_to_session(browser.session_key, "a", 1) == 1
    assert (await browser.poll(None)).json()["messages"][0]["data"] == 1


def _login_session(user: Any) -> str:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    return new_session_key(
        **{
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
    )


def test_send_to_user_reaches_each_live_session(
    transactional_db: None, django_user_model: Any, client: Any
) -> None:
    ada = django_user_model.objects.create_user("ada", password="pw-ada-123")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    # Real logins through Django's test client: the app records each session's user.
    for _ in range(2):
        client.logout()
        assert client.login(username="ada", password="pw-ada-123")
    ada_keys = set(LongpollSession.objects.filter(user=ada).values_list("session_key", flat=True))
    assert len(ada_keys) == 1  # logging out purged the first session's record
    _login_session(bob)
    bob_key = _login_session(bob)
    sessions.verify_sessions([(bob_key, None, "")])  # bob's second session has polled
    assert send_to_user(ada, "note", "hi ada") == 1
    assert send_to_user(bob.pk, "note", "hi bob") == 1
    assert (
        set(Message.objects.filter(data="hi ada").values_list("session__session_key", flat=True))
        == ada_keys
    )


async def test_asend_to_user(browser: Browser, django_user_model: Any) -> None:
    user = await django_user_model.objects.acreate(username="cy")
    assert await asend_to_user(user, "x") == 0  # no session of theirs is known yet


def test_logout_purges_the_queue(
    transactional_db: None, django_user_model: Any, client: Any
) -> None:
    django_user_model.objects.create_user("dee", password="pw-dee-123")
    assert client.login(username="dee", password="pw-dee-123")
    key = client.session.session_key
    send_to_session(key, "secret", "for dee only")
    client.logout()
    assert not Message.objects.exists()
    assert not LongpollSession.objects.filter(session_key=key).exists()


def test_deleted_session_purges_the_queue(transactional_db: None) -> None:
    from django.contrib.sessions.models import Session

    key = new_session_key()
    send_to_session(key, "m")
    Session.objects.filter(session_key=key).delete()
    assert not Message.objects.exists()


@pytest.fixture
def woken(monkeypatch: Any) -> list[tuple[int, int]]:
    """(session pk, id) of every wake, in order, instead of waking."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(api, "wake", lambda queued: calls.append((queued.session_pk, queued.seq)))
    return calls


def _pk(key: str) -> int:
    return LongpollSession.objects.get(session_key=key).pk


def test_send_many_queues_in_order_and_wakes_once(
    transactional_db: None, woken: list[tuple[int, int]]
) -> None:
    key = new_session_key()
    assert send_to_session(key, "first") == 1
    ids = send_many_to_session(key, [("a", 1), ("b", [2]), ["c", None]])
    assert ids == [2, 3, 4]
    assert list(Message.objects.order_by("seq").values_list("seq", "type", "data")) == [
        (1, "first", None),
        (2, "a", 1),
        (3, "b", [2]),
        (4, "c", None),
    ]
    assert woken == [(_pk(key), 1), (_pk(key), 4)]  # one wake for the three


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (("", 1), ValueError, r"messages\[1\]: Message type must be"),
        (("status", 1), ValueError, r"messages\[1\]: Message type 'status' is reserved"),
        (("ok", {1, 2}), TypeError, r"messages\[1\]: Data for message type 'ok'"),
        ("ab", TypeError, r"messages\[1\] must be a \(type, data\) pair, not 'ab'"),
        (("a", 1, 2), TypeError, r"messages\[1\] must be a \(type, data\) pair"),
    ],
)
def test_send_many_checks_every_message_before_queuing_any(
    transactional_db: None, bad: Any, error: type, match: str
) -> None:
    key = new_session_key()
    with pytest.raises(error, match=match):
        send_many_to_session(key, [("fine", 0), bad, ("fine", 2)])
    assert not Message.objects.exists()


def test_send_many_accepts_any_iterable_and_nothing(
    transactional_db: None, woken: list[tuple[int, int]]
) -> None:
    key = new_session_key()
    assert send_many_to_session(key, []) == []
    assert woken == []
    assert send_many_to_session(key, ((f"t{n}", n) for n in range(3))) == [1, 2, 3]
    with pytest.raises(LookupError):
        send_many_to_session("no-such-session-key-000000000000", [("t", 1)])


def test_send_many_respects_the_queue_cap(transactional_db: None, settings: Any) -> None:
    settings.LONGPOLL_MAX_QUEUE = 3
    key = new_session_key()
    assert send_many_to_session(key, [("t", n) for n in range(5)]) == [1, 2, 3, 4, 5]
    assert list(Message.objects.values_list("data", flat=True)) == [2, 3, 4]
    assert LongpollSession.objects.get().dropped == 2


def test_send_many_is_captured_like_single_sends(transactional_db: None) -> None:
    key = new_session_key()
    with capture_messages() as sent:
        assert send_many_to_session(key, [("a", 1), ("b", 2)]) == [1, 2]
        assert send_to_session(key, "c", 3) == 3
    assert [(m.type, m.data, m.session_key) for m in sent] == [
        ("a", 1, key),
        ("b", 2, key),
        ("c", 3, key),
    ]
    assert not Message.objects.exists()
    with capture_messages(deliver=True) as sent:
        assert send_many_to_session(key, [("d", 4)]) == [1]
    assert sent.types == ["d"]
    assert list(Message.objects.values_list("type", flat=True)) == ["d"]


async def test_asend_many_reaches_a_held_poll(browser: Browser, layer: str) -> None:
    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.1)
    assert await asend_many_to_session(browser.session_key, [("a", 1), ("b", 2)]) == [1, 2]
    response = await held.response(1.0)
    assert [m["id"] for m in response.json()["messages"]] == [1, 2]


def test_sends_in_a_transaction_wake_each_session_once_at_commit(
    transactional_db: None, woken: list[tuple[int, int]]
) -> None:
    a, b = new_session_key(), new_session_key()
    with transaction.atomic():
        for n in range(5):
            send_to_session(a, "m", n)
            send_to_session(b, "m", n)
        send_many_to_session(a, [("m", 5), ("m", 6)])
        assert woken == []
    assert sorted(woken) == sorted([(_pk(a), 7), (_pk(b), 5)])


def test_send_to_user_in_a_transaction_wakes_each_session_once(
    transactional_db: None, django_user_model: Any, woken: list[tuple[int, int]]
) -> None:
    user = django_user_model.objects.create_user("eve", password="pw-eve-123")
    keys = [_login_session(user) for _ in range(2)]
    for key in keys:
        sessions.verify_sessions([(key, None, "")])
    with transaction.atomic():
        for _ in range(3):
            assert send_to_user(user, "note") == 2
    assert sorted(woken) == sorted((_pk(key), 3) for key in keys)


def test_a_wake_never_carries_an_id_rolled_back_to_a_savepoint(
    transactional_db: None, woken: list[tuple[int, int]]
) -> None:
    key = new_session_key()
    with transaction.atomic():
        send_to_session(key, "kept")
        with pytest.raises(RuntimeError), transaction.atomic():
            send_to_session(key, "undone")  # id 2, rolled back
            raise RuntimeError("roll back to the savepoint")
    assert woken == [(_pk(key), 1)]
    with transaction.atomic():
        assert send_to_session(key, "outer") == 2
        with transaction.atomic():
            send_to_session(key, "inner")  # id 3, released with its savepoint
    assert max(seq for _, seq in woken[1:]) == 3


def test_outside_a_transaction_every_send_wakes_at_once(
    transactional_db: None, woken: list[tuple[int, int]]
) -> None:
    key = new_session_key()
    for n in range(3):
        send_to_session(key, "m", n)
        assert woken[-1] == (_pk(key), n + 1)
    assert len(woken) == 3


async def test_wakes_reach_the_redis_group_through_one_long_lived_loop(
    transactional_db: None, redis_layer: None
) -> None:
    layer = shared_layer()
    assert layer is not None
    key = await sync_to_async(new_session_key)()
    channel = await layer.new_channel()
    await layer.group_add(sessions.wake_group(key), channel)
    pools: list[int] = []
    create_pool = layer.create_pool

    def counted_create_pool(index: int) -> Any:
        pools.append(index)
        return create_pool(index)

    layer.create_pool = counted_create_pool
    count = 50

    def send_from_a_plain_thread() -> None:
        # Not sync_to_async: from its threads async_to_sync borrows the caller's
        # loop; a plain thread (a management command, a worker) has none.
        try:
            for n in range(count):
                send_to_session(key, "m", n)
        finally:
            connections.close_all()  # this thread's own connection

    await asyncio.get_running_loop().run_in_executor(None, send_from_a_plain_thread)
    # The sender does not wait for the layer: wake-ups that pile up while one is
    # on its way merge into one with the highest id. So they arrive in order,
    # fewer than the sends perhaps, and the last names the last message.
    received = [await asyncio.wait_for(layer.receive(channel), 2.0)]
    while received[-1]["last_id"] < count:
        received.append(await asyncio.wait_for(layer.receive(channel), 2.0))
    last_ids = [message["last_id"] for message in received]
    assert last_ids == sorted(set(last_ids)) and last_ids[-1] == count
    # One loop for every send, so one connection pool (async_to_sync made one per send).
    assert len(pools) <= 1
    assert process._loop_for_sends().thread.is_alive()


async def test_a_sync_send_from_a_thread_running_a_loop_does_not_deadlock(
    transactional_db: None, redis_layer: None
) -> None:
    layer = shared_layer()
    assert layer is not None
    channel = await layer.new_channel()
    await layer.group_add("longpoll.test-group", channel)
    # Sync code called straight from async code: this thread runs a loop.
    assert api._group_send("longpoll.test-group", {"type": "longpoll.wake", "last_id": 7})
    assert (await asyncio.wait_for(layer.receive(channel), 2.0))["last_id"] == 7


def test_an_unreachable_layer_is_logged_once_and_the_message_kept(
    transactional_db: None, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},  # nothing listens there
        }
    }
    key = new_session_key()
    with caplog.at_level(logging.WARNING, logger="longpoll_app"):
        assert [send_to_session(key, "m", n) for n in range(3)] == [1, 2, 3]
        assert outbox.settle()  # the wake-ups fail on the send loop, not in the caller
    assert caplog.text.count("could not wake") == 1
    assert Message.objects.count() == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_a_send_loop_of_its_own(redis_layer: None) -> None:
    parent_loop = process._loop_for_sends()
    assert api._group_send("longpoll.fork-test", {"type": "longpoll.wake", "last_id": 1})
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        status = 1
        try:
            child_loop = process._loop_for_sends()
            fresh = child_loop is not parent_loop and child_loop.thread.is_alive()
            sent = api._group_send("longpoll.fork-test", {"type": "longpoll.wake", "last_id": 2})
            status = 0 if fresh and sent else 2
        finally:
            os._exit(status)
    deadline = time.monotonic() + 10.0
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert process._loop_for_sends() is parent_loop  # the parent's loop is untouched
