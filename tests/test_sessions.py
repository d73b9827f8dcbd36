"""Django's sessions and the app's records of them: which keys name live
sessions, what a poll's check writes, and the ids it reads."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY as AUTH_USER_ID_KEY
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore

from longpoll_app import sessions
from longpoll_app.models import LongpollSession, session_fingerprint

from .conftest import new_session_key


def test_verify_session_refuses_dead_sessions_without_writing(transactional_db: None) -> None:
    assert sessions.verify_sessions([("0" * 32, None, "")]) == {}
    assert not LongpollSession.objects.exists()
    key = new_session_key()
    record = sessions.verify_sessions([(key, "10.0.0.1", "UA/1")])[key]
    assert record is not None
    row = LongpollSession.objects.get()
    assert (row.ip_address, row.user_agent, row.fingerprint) == (
        "10.0.0.1",
        "UA/1",
        session_fingerprint(key),
    )


@pytest.mark.parametrize(
    "engine", ["django.contrib.sessions.backends.db", "django.contrib.sessions.backends.cache"]
)
def test_verify_sessions_checks_many_at_once_through_any_backend(
    transactional_db: None, settings: Any, engine: str
) -> None:
    settings.SESSION_ENGINE = engine
    user = get_user_model().objects.create_user("ada")
    live = [new_session_key(), new_session_key(_auth_user_id=str(user.pk))]
    expired = sessions.session_store()
    expired.set_expiry(-1)
    expired.save()
    keys = [*live, "0" * 32, str(expired.session_key)]
    records = sessions.verify_sessions([(key, "10.0.0.2", "UA/2") for key in keys])
    assert sorted(records) == sorted(live)
    rows = dict(LongpollSession.objects.values_list("session_key", "user_id"))
    assert rows == {live[0]: None, live[1]: user.pk}
    again = sessions.verify_sessions([(key, "10.0.0.2", "UA/2") for key in keys])
    assert again == records  # the same records, none made twice


def test_live_expiries_are_the_live_sessions_own(transactional_db: None, settings: Any) -> None:
    live = sessions.session_store()
    live.set_expiry(600)
    live.save()
    dead = sessions.session_store()
    dead.set_expiry(-1)
    dead.save()
    keys = [str(live.session_key), str(dead.session_key), "0" * 32]
    expiries = sessions.live_expiries(keys)
    assert list(expiries) == [live.session_key]
    stored = expiries[str(live.session_key)]
    assert stored is not None and abs((stored - live.get_expiry_date()).total_seconds()) < 5


def test_a_poll_address_that_no_column_takes_is_stored_as_none(transactional_db: None) -> None:
    keys = [new_session_key() for _ in range(4)]
    clients = ["not an address", "fe80::1%eth0", "2001:db8::1", ""]
    sessions.verify_sessions([(k, ip, "UA\ud800") for k, ip in zip(keys, clients, strict=True)])
    stored = dict(LongpollSession.objects.values_list("session_key", "ip_address"))
    assert [stored[k] for k in keys] == [None, None, "2001:db8::1", None]
    agents = set(LongpollSession.objects.values_list("user_agent", flat=True))
    assert agents == {"UA\ufffd"}  # a lone surrogate no database takes is replaced


class OwnDecode(DatabaseSessionStore):
    """A project's store with a decode of its own: nothing about it is remembered."""

    calls = 0

    def decode(self, session_data: str) -> dict[str, Any]:
        OwnDecode.calls += 1
        return super().decode(session_data)


def session_data_shapes() -> list[str]:
    """Signed data of several users and none, an empty session, and forgeries."""
    store = DatabaseSessionStore()
    good = [
        store.encode({AUTH_USER_ID_KEY: "1", "_auth_user_hash": "h"}),
        store.encode({AUTH_USER_ID_KEY: "2"}),
        store.encode({"cart": [1, 2]}),
        store.encode({}),
    ]
    forged = [good[0][:-2] + "xx", "not signed at all", "", good[1].replace("2", "3", 1)]
    return good + forged


@pytest.fixture
def fresh_memory() -> Any:
    sessions._decoded.clear()
    yield
    sessions._decoded.clear()


def test_a_remembered_user_is_the_one_decoding_gives(
    transactional_db: None, fresh_memory: None
) -> None:
    store = DatabaseSessionStore()
    for data in session_data_shapes():
        expected = sessions._user_pk(store.decode(data).get(AUTH_USER_ID_KEY))
        for _ in range(2):  # the first decodes, the second may remember
            assert sessions._decoded_user_pk(store, data) == expected, data


def test_a_corrupted_session_is_reported_at_every_check(
    transactional_db: None, fresh_memory: None, caplog: pytest.LogCaptureFixture
) -> None:
    store = DatabaseSessionStore()
    forged = store.encode({AUTH_USER_ID_KEY: "1"})[:-2] + "xx"
    with caplog.at_level(logging.WARNING, logger="django.security.SuspiciousSession"):
        for _ in range(3):
            assert sessions._decoded_user_pk(store, forged) is None
    assert caplog.text.count("Session data corrupted") == 3


def test_a_new_secret_key_forgets_what_the_old_one_verified(
    transactional_db: None, fresh_memory: None, settings: Any
) -> None:
    store = DatabaseSessionStore()
    data = store.encode({AUTH_USER_ID_KEY: "1"})
    assert sessions._decoded_user_pk(store, data) == 1
    settings.SECRET_KEY = "another secret key, so the old signature fails"
    assert sessions._decoded_user_pk(store, data) is None


def test_a_store_with_its_own_decode_is_decoded_every_time(
    transactional_db: None, fresh_memory: None
) -> None:
    store = OwnDecode()
    data = store.encode({AUTH_USER_ID_KEY: "1"})
    OwnDecode.calls = 0
    for _ in range(3):
        assert sessions._decoded_user_pk(store, data) == 1
    assert OwnDecode.calls == 3 and not sessions._decoded


def test_the_memory_is_bounded(
    transactional_db: None, fresh_memory: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions, "DECODED_KEPT", 3)
    store = DatabaseSessionStore()
    for n in range(10):
        assert sessions._decoded_user_pk(store, store.encode({AUTH_USER_ID_KEY: str(n)})) == n
        assert len(sessions._decoded) <= 3
