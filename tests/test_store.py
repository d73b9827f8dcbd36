"""The durable queue underneath the endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from longpoll_app import store
from longpoll_app.models import ClientMessage, LongpollSession, Message

from .conftest import new_session_key


def test_append_then_read_in_order(transactional_db: None) -> None:
    key = new_session_key()
    queued = [store.append(key, "t", n) for n in range(3)]
    assert [q.seq for q in queued] == [1, 2, 3]
    assert queued[0].group == store.wake_group(key)
    assert key not in queued[0].group  # the key never travels through the layer
    batch = store.read(queued[0].session_pk, None, limit=10)
    assert batch is not None
    assert [m["data"] for m in batch.messages] == [0, 1, 2]
    assert (batch.cursor, batch.gap, batch.last_id) == (3, False, 3)


def test_acknowledge_deletes_in_one_batch_and_counts_delivered(transactional_db: None) -> None:
    a, b = new_session_key(), new_session_key()
    for _ in range(3):
        qa = store.append(a, "t", None)
        qb = store.append(b, "t", None)
    store.acknowledge({qa.session_pk: 2, qb.session_pk: 3})
    assert sorted(Message.objects.values_list("session_id", "seq")) == [(qa.session_pk, 3)]
    delivered = dict(LongpollSession.objects.values_list("pk", "delivered"))
    assert delivered == {qa.session_pk: 2, qb.session_pk: 3}
    # A cursor beyond the newest id acknowledges nothing.
    store.acknowledge({qa.session_pk: 99})
    assert Message.objects.filter(session_id=qa.session_pk).count() == 1


def test_fresh_page_starts_after_the_acknowledged_id(transactional_db: None) -> None:
    key = new_session_key()
    q = [store.append(key, "t", n) for n in range(3)][-1]
    store.acknowledge({q.session_pk: 2})
    batch = store.read(q.session_pk, None, 10)
    assert batch is not None
    assert [m["id"] for m in batch.messages] == [3]
    assert batch.gap is False


def test_queue_cap_keeps_the_newest(transactional_db: None, settings: Any) -> None:
    settings.LONGPOLL_MAX_QUEUE = 5
    key = new_session_key()
    for n in range(12):
        store.append(key, "t", n)
    assert list(Message.objects.values_list("data", flat=True)) == list(range(7, 12))


def test_messages_since_lists_new_messages_for_the_watcher(transactional_db: None) -> None:
    key = new_session_key()
    start = store.newest_message_pk()
    q1 = store.append(key, "t", None)
    q2 = store.append(key, "t", None)
    rows = store.messages_since(start)
    assert [(session, seq) for _, session, seq in rows] == [(q1.session_pk, 1), (q2.session_pk, 2)]
    assert store.messages_since(rows[-1][0]) == []


def test_client_message_ids_are_remembered_within_the_window(
    transactional_db: None, settings: Any
) -> None:
    row = store.ensure_session_row(new_session_key())
    assert store.client_message_seen(row.pk, "m1") is False
    assert store.record_client_message(row.pk, "m1") is True
    assert store.record_client_message(row.pk, "m1") is False
    assert store.client_message_seen(row.pk, "m1") is True
    assert store.client_message_seen(row.pk, "m2") is False
    settings.LONGPOLL_DEDUP_WINDOW = 0.000001
    assert store.client_message_seen(row.pk, "m1") is False  # outside the window now
    assert store.record_client_message(row.pk, "m1") is True  # the old record expired
    assert ClientMessage.objects.count() == 1


def test_verify_session_refuses_dead_sessions_without_writing(transactional_db: None) -> None:
    assert store.verify_session("0" * 32) is None
    assert not LongpollSession.objects.exists()
    key = new_session_key()
    record = store.verify_session(key, "10.0.0.1", "UA/1")
    assert record is not None
    row = LongpollSession.objects.get()
    assert (row.ip_address, row.user_agent, row.fingerprint) == (
        "10.0.0.1",
        "UA/1",
        store.session_fingerprint(key),
    )


@pytest.mark.parametrize(
    "engine", ["django.contrib.sessions.backends.db", "django.contrib.sessions.backends.cache"]
)
def test_verify_sessions_checks_many_at_once_through_any_backend(
    transactional_db: None, settings: Any, engine: str
) -> None:
    from django.contrib.auth import get_user_model

    settings.SESSION_ENGINE = engine
    user = get_user_model().objects.create_user("ada")
    live = [new_session_key(), new_session_key(_auth_user_id=str(user.pk))]
    expired = store.session_store()
    expired.set_expiry(-1)
    expired.save()
    keys = [*live, "0" * 32, str(expired.session_key)]
    records = store.verify_sessions([(key, "10.0.0.2", "UA/2") for key in keys])
    assert sorted(records) == sorted(live)
    rows = dict(LongpollSession.objects.values_list("session_key", "user_id"))
    assert rows == {live[0]: None, live[1]: user.pk}
    again = store.verify_sessions([(key, "10.0.0.2", "UA/2") for key in keys])
    assert again == records  # the same records, none made twice


def test_nothing_after_spares_the_query_only_when_nothing_can_be_pending() -> None:
    assert store.nothing_after(None, (5, 5)) and store.nothing_after(7, (7, 2))
    assert not store.nothing_after(None, (5, 4)) and not store.nothing_after(3, (5, 5))
    assert store.nothing_after(9, (5, 5))  # an earlier record's cursor, nothing unacknowledged


def test_append_many_gives_consecutive_ids_in_order(transactional_db: None) -> None:
    key = new_session_key()
    store.append(key, "first", None)
    queued = store.append_many(key, [("t", n) for n in range(12)])
    assert queued.seq == 13
    rows = list(Message.objects.order_by("seq").values_list("seq", "type", "data"))
    assert rows == [(1, "first", None), *[(n + 2, "t", n) for n in range(12)]]
    assert LongpollSession.objects.get().last_id == 13


def test_append_without_update_returning_behaves_the_same(
    transactional_db: None, monkeypatch: Any
) -> None:
    # The ORM path, for backends without UPDATE ... RETURNING.
    monkeypatch.setattr(store, "_update_returning_works", lambda connection: False)
    key = new_session_key()
    assert [store.append(key, "t", n).seq for n in range(3)] == [1, 2, 3]
    assert store.append_many(key, [("t", 3), ("t", 4)]).seq == 5
    assert list(Message.objects.values_list("data", flat=True)) == [0, 1, 2, 3, 4]
    with pytest.raises(LookupError):
        store.append("no-such-session-key-000000000000", "t", None)


def test_append_many_over_the_cap_keeps_the_newest_and_counts_the_rest(
    transactional_db: None, settings: Any
) -> None:
    settings.LONGPOLL_MAX_QUEUE = 5
    key = new_session_key()
    for n in range(7):
        store.append(key, "t", n)  # ids 1-7; 1 and 2 dropped
    store.append_many(key, [("t", n) for n in range(7, 15)])  # ids 8-15, more than the cap
    assert list(Message.objects.values_list("seq", flat=True)) == [11, 12, 13, 14, 15]
    row = LongpollSession.objects.get()
    assert (row.last_id, row.dropped) == (15, 10)


def test_acknowledged_messages_do_not_count_against_the_cap(
    transactional_db: None, settings: Any
) -> None:
    settings.LONGPOLL_MAX_QUEUE = 5
    key = new_session_key()
    pk = [store.append(key, "t", n) for n in range(5)][-1].session_pk
    store.acknowledge({pk: 3})
    store.append_many(key, [("t", 5), ("t", 6)])  # ids 6-7: 4 unacknowledged, under the cap
    assert list(Message.objects.values_list("seq", flat=True)) == [4, 5, 6, 7]
    store.append_many(key, [("t", n) for n in range(7, 10)])  # ids 8-10: 4 and 5 go
    assert list(Message.objects.values_list("seq", flat=True)) == [6, 7, 8, 9, 10]
    assert LongpollSession.objects.get().dropped == 2
