"""The tables: the session fingerprint that stands in for a key, string forms,
ordering, and the constraints the rest of the app relies on."""

from __future__ import annotations

import hashlib
import string
from typing import Any

import pytest
from django.db import IntegrityError, transaction

from longpoll_app.models import (
    ClientMessage,
    HeldSession,
    HubReport,
    LongpollSession,
    Message,
    StatsCounter,
    session_fingerprint,
)

FINGERPRINT_LENGTH = 16  # hex characters: what the fingerprint column holds
HEX_DIGITS = set(string.hexdigits.lower())

# Keys of every kind a fingerprint may be asked for: Django's own (32 of
# [a-z0-9]), the column's longest, one that looks like a fingerprint itself,
# unicode and the empty string (a cookie may hold anything).
KEYS = [
    "abcdefghijklmnopqrstuvwxyz012345",
    "k" * 40,
    "0123456789abcdef",
    "s\u00e9ssion-\u2603-\U0001f600",
    "",
]


@pytest.mark.parametrize("key", KEYS, ids=["django", "longest", "hex16", "unicode", "empty"])
def test_a_fingerprint_is_short_stable_and_not_the_key(key: str) -> None:
    fingerprint = session_fingerprint(key)
    assert fingerprint == session_fingerprint(key)  # stable: admin links and logs match up
    assert len(fingerprint) == FINGERPRINT_LENGTH and set(fingerprint) <= HEX_DIGITS
    assert fingerprint != key
    if key:
        assert key not in fingerprint and fingerprint not in key
    # The documented derivation: a prefix of SHA-256, which nobody can reverse.
    assert fingerprint == hashlib.sha256(key.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def test_fingerprints_tell_keys_apart() -> None:
    # Keys that differ in one character (as sequential or forged keys would)
    # still get fingerprints of their own: the admin tells the sessions apart.
    keys = [f"session-{n:04d}" for n in range(2000)]
    assert len({session_fingerprint(key) for key in keys}) == len(keys)


def test_the_fingerprint_column_fits_the_fingerprint() -> None:
    field = LongpollSession._meta.get_field("fingerprint")
    assert field.max_length == FINGERPRINT_LENGTH
    assert field.editable is False  # the admin never offers it as input


def test_saving_a_record_fingerprints_its_key(transactional_db: None) -> None:
    row = LongpollSession.objects.create(session_key="a" * 32)
    assert row.fingerprint == session_fingerprint("a" * 32)
    assert str(row) == f"session {row.fingerprint}"
    assert "a" * 32 not in str(row)  # the string form is what the admin and logs show
    row.session_key = "b" * 32
    row.fingerprint = "forged"  # whatever was set, save() derives it again
    row.save()
    stored = LongpollSession.objects.get(pk=row.pk)
    assert stored.fingerprint == session_fingerprint("b" * 32)


def test_a_session_key_has_one_record(transactional_db: None) -> None:
    LongpollSession.objects.create(session_key="a" * 32)
    with pytest.raises(IntegrityError), transaction.atomic():
        LongpollSession.objects.create(session_key="a" * 32)


def test_message_ids_are_unique_per_session_and_ordered(transactional_db: None) -> None:
    a = LongpollSession.objects.create(session_key="a" * 32)
    b = LongpollSession.objects.create(session_key="b" * 32)
    now = LongpollSession.objects.get(pk=a.pk).first_seen
    # Inserted out of order, across sessions.
    for session, seq in ((b, 1), (a, 2), (b, 3), (a, 1)):
        Message.objects.create(session=session, seq=seq, type="t", data=None, created_at=now)
    assert [(m.session_id, m.seq) for m in Message.objects.all()] == [
        (a.pk, 1),
        (a.pk, 2),
        (b.pk, 1),
        (b.pk, 3),
    ]
    assert str(Message.objects.get(session=b, seq=3)) == "t #3"
    # The same id in another session is fine; twice in one session is not.
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(session=a, seq=2, type="again", data=None, created_at=now)


def test_a_client_message_id_is_recorded_once_per_session(transactional_db: None) -> None:
    a = LongpollSession.objects.create(session_key="a" * 32)
    b = LongpollSession.objects.create(session_key="b" * 32)
    now = a.first_seen
    ClientMessage.objects.create(session=a, client_id="m1", received_at=now)
    ClientMessage.objects.create(session=b, client_id="m1", received_at=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        ClientMessage.objects.create(session=a, client_id="m1", received_at=now)


def test_removing_a_record_removes_its_queue_and_client_ids(transactional_db: None) -> None:
    row = LongpollSession.objects.create(session_key="a" * 32)
    Message.objects.create(session=row, seq=1, type="t", data={"x": 1}, created_at=row.first_seen)
    ClientMessage.objects.create(session=row, client_id="m1", received_at=row.first_seen)
    row.delete()
    assert not Message.objects.exists() and not ClientMessage.objects.exists()


def test_removing_a_user_removes_the_records_of_their_sessions(
    transactional_db: None, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user("ann", password="pw-ann-123456")
    LongpollSession.objects.create(session_key="a" * 32, user=user)
    LongpollSession.objects.create(session_key="b" * 32)  # anonymous: stays
    user.delete()
    assert list(LongpollSession.objects.values_list("session_key", flat=True)) == ["b" * 32]


def test_a_counter_is_named_by_its_key(transactional_db: None) -> None:
    counter = StatsCounter.objects.create(name="sent", value=3)
    assert str(counter) == "sent = 3"
    assert StatsCounter._meta.pk is not None and StatsCounter._meta.pk.name == "name"
    StatsCounter(name="sent", value=5).save()  # the same name is the same row
    assert list(StatsCounter.objects.values_list("name", "value")) == [("sent", 5)]


def test_hub_reports_and_their_held_sessions(transactional_db: None) -> None:
    now = LongpollSession.objects.create(session_key="a" * 32).first_seen
    first = HubReport(name="h:1:1", process="h:1", started_at=now, updated_at=now)
    second = HubReport(name="h:1:2", process="h:1", started_at=now, updated_at=now)
    assert first.latency == {} and first.latency is not second.latency  # a fresh dict each
    first.save()
    assert str(first) == "h:1:1"
    with pytest.raises(IntegrityError), transaction.atomic():
        HubReport.objects.create(name="h:1:1", process="h:1", started_at=now, updated_at=now)
    # No foreign key to the session: a session that ended may still be listed.
    HeldSession.objects.create(hub=first, session_pk=987654321)
    with pytest.raises(IntegrityError), transaction.atomic():
        HeldSession.objects.create(hub=first, session_pk=987654321)
    first.delete()  # a stopped process's report goes with its held sessions
    assert not HeldSession.objects.exists()
