"""The auth lifecycle: a login's new session key keeps the queue; logging out
and deleting a session purge it. Real logins go through Django's admin login
view with the test client, for the db, cached_db and cache session engines."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import alogin, update_session_auth_hash
from django.test import Client, RequestFactory

from longpoll_app import queue, retention, send_to_session, send_to_user, sessions
from longpoll_app.models import LongpollSession, Message, session_fingerprint

from .conftest import Browser, new_session_key

ENGINES = {
    "db": "django.contrib.sessions.backends.db",
    "cached_db": "django.contrib.sessions.backends.cached_db",
    "cache": "django.contrib.sessions.backends.cache",
}
PASSWORD = "pw-long-enough-123"

asend = sync_to_async(send_to_session)


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest, settings: Any) -> str:
    settings.SESSION_ENGINE = ENGINES[request.param]
    return str(request.param)


def make_user(django_user_model: Any, name: str, staff: bool = True) -> Any:
    return django_user_model.objects.create_user(name, password=PASSWORD, is_staff=staff)


def admin_login(client: Client, name: str) -> str:
    """Log in through the admin's login view; the browser's new session key."""
    response = client.post(
        "/admin/login/", {"username": name, "password": PASSWORD, "next": "/admin/"}
    )
    assert response.status_code == 302, response.content[:500]
    return str(client.cookies["sessionid"].value)


def anonymous_key(client: Client) -> str:
    key = client.session.session_key  # the test client saves a session and sets its cookie
    assert key is not None
    return key


def test_login_moves_the_queue_to_the_new_key(
    transactional_db: None, engine: str, client: Client, django_user_model: Any
) -> None:
    ada = make_user(django_user_model, "ada")
    old_key = anonymous_key(client)
    for n in range(3):
        send_to_session(old_key, "before.login", n)
    record = LongpollSession.objects.get(session_key=old_key)
    queue.acknowledge({(record.pk, old_key): 1})

    new_key = admin_login(client, "ada")

    assert new_key != old_key
    moved = LongpollSession.objects.get()
    assert (moved.pk, moved.session_key, moved.user) == (record.pk, new_key, ada)
    assert moved.fingerprint == session_fingerprint(new_key)
    assert (moved.last_id, moved.acked_id) == (3, 1)
    assert list(Message.objects.values_list("seq", "data")) == [(2, 1), (3, 2)]
    assert not LongpollSession.objects.filter(session_key=old_key).exists()
    # The next message continues the ids, and send_to_user finds the new key.
    assert send_to_user(ada, "after.login", None) == 1
    assert Message.objects.order_by("seq").last().seq == 4  # type: ignore[union-attr]


async def test_held_poll_of_the_old_key_is_refused_and_the_new_key_continues(
    transactional_db: None, engine: str, layer: str, client: Client, django_user_model: Any
) -> None:
    await sync_to_async(make_user)(django_user_model, "ada")
    old_key = await sync_to_async(anonymous_key)(client)
    await asend(old_key, "before.login", 1)
    old = Browser(old_key)
    assert (await old.poll(None)).json()["cursor"] == 1
    held = old.start({"cursor": 1})
    assert not await held.answered_within(0.2)

    new_key = await sync_to_async(admin_login)(client, "ada")

    refused = await held.response(2.0)
    assert refused.status == 403 and refused.json()["error"] == "no_session"
    await asend(new_key, "after.login", 2)
    body = (await Browser(new_key, csrf=old.csrf).poll(1)).json()
    assert body == {
        "messages": [{"id": 2, "type": "after.login", "data": 2}],
        "cursor": 2,
        "gap": False,
    }
    # The old cookie names nothing any more.
    assert (await old.poll(1)).status == 403


async def test_async_login_moves_the_queue(
    transactional_db: None, engine: str, django_user_model: Any
) -> None:
    ada = await sync_to_async(make_user)(django_user_model, "ada")
    old_key = await sync_to_async(new_session_key)()
    await asend(old_key, "before.login", 1)
    request = RequestFactory().post("/login/")
    request.session = sessions.session_store(old_key)

    await alogin(request, ada)

    new_key = request.session.session_key
    assert new_key is not None and new_key != old_key
    moved = await LongpollSession.objects.select_related("user").aget()
    assert (moved.session_key, moved.user, moved.last_id) == (new_key, ada, 1)
    assert await Message.objects.acount() == 1


def test_password_change_rotates_the_key_and_keeps_the_queue(
    transactional_db: None, engine: str, client: Client, django_user_model: Any
) -> None:
    make_user(django_user_model, "ada")
    key = admin_login(client, "ada")
    send_to_session(key, "kept", None)
    response = client.post(
        "/admin/password_change/",
        {
            "old_password": PASSWORD,
            "new_password1": "An0ther-pw-456",
            "new_password2": "An0ther-pw-456",
        },
    )
    assert response.status_code == 302
    new_key = client.cookies["sessionid"].value
    assert new_key != key
    assert LongpollSession.objects.get().session_key == new_key
    assert Message.objects.get().type == "kept"


def test_update_session_auth_hash_called_directly(
    transactional_db: None, client: Client, django_user_model: Any
) -> None:
    ada = make_user(django_user_model, "ada")
    key = admin_login(client, "ada")
    send_to_session(key, "kept", None)
    request = RequestFactory().get("/")
    request.session = sessions.session_store(key)
    request.user = ada
    update_session_auth_hash(request, ada)
    assert LongpollSession.objects.get().session_key == request.session.session_key != key


def test_logout_purges_the_queue(
    transactional_db: None, engine: str, client: Client, django_user_model: Any
) -> None:
    make_user(django_user_model, "ada")
    key = admin_login(client, "ada")
    send_to_session(key, "private", "for ada only")
    response = client.post("/admin/logout/")
    assert response.status_code == 200
    assert not LongpollSession.objects.exists()
    assert not Message.objects.exists()


def test_another_user_logging_in_on_the_same_browser_does_not_inherit_the_queue(
    transactional_db: None, engine: str, client: Client, django_user_model: Any
) -> None:
    make_user(django_user_model, "ada")
    make_user(django_user_model, "bob")
    ada_key = admin_login(client, "ada")
    send_to_session(ada_key, "private", "for ada only")
    # Django's login() flushes a session that belongs to another user.
    bob_key = admin_login(client, "bob")
    assert bob_key != ada_key
    assert not Message.objects.exists()
    assert not LongpollSession.objects.filter(session_key=ada_key).exists()
    assert set(LongpollSession.objects.values_list("user__username", flat=True)) <= {"bob"}


@pytest.mark.parametrize("engine", ["db", "cached_db"], indirect=True)
def test_deleting_a_database_session_purges_its_queue(transactional_db: None, engine: str) -> None:
    key = new_session_key()
    send_to_session(key, "m")
    sessions.session_store(key).delete()
    assert not LongpollSession.objects.exists()
    assert not Message.objects.exists()


@pytest.mark.parametrize("engine", ["cache"], indirect=True)
def test_a_cache_session_deleted_without_a_signal_goes_at_clean_up(
    transactional_db: None, engine: str
) -> None:
    key, other = new_session_key(), new_session_key()
    send_to_session(key, "m")
    send_to_session(other, "m")
    sessions.session_store(key).delete()  # the cache engine sends no signal
    assert LongpollSession.objects.count() == 2
    removed, _ = retention.purge_dead_sessions(0, 100)
    assert removed == 1
    assert list(LongpollSession.objects.values_list("session_key", flat=True)) == [other]
    assert Message.objects.count() == 1


def test_send_to_user_reaches_every_live_session_of_the_user(
    transactional_db: None, engine: str, django_user_model: Any
) -> None:
    make_user(django_user_model, "ada")
    make_user(django_user_model, "bob")
    laptop, phone, bobs = Client(), Client(), Client()
    ada_keys = {admin_login(laptop, "ada"), admin_login(phone, "ada")}
    admin_login(bobs, "bob")
    ada = django_user_model.objects.get(username="ada")
    assert send_to_user(ada, "notice", "hi ada") == 2
    reached = set(
        Message.objects.filter(data="hi ada").values_list("session__session_key", flat=True)
    )
    assert reached == ada_keys
    # One of ada's browsers logs out: the other is still reached.
    phone.post("/admin/logout/")
    assert send_to_user(ada, "notice", "again") == 1
