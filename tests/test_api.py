"""send_to_session, send_to_user and their async twins."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import transaction
from django.test import RequestFactory

from longpoll_app import api, asend_to_session, asend_to_user, send_to_session, send_to_user
from longpoll_app.models import LongpollSession, Message
from longpoll_app.store import session_store

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
    from longpoll_app.store import verify_session

    verify_session(bob_key)  # bob's second session has polled
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
