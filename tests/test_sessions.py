"""Django's sessions and the app's records of them: which keys name live
sessions, what a poll's check writes, and the ids it reads."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model

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
