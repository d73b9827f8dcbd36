"""The durable queue underneath the endpoints."""

from __future__ import annotations

from typing import Any

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
    assert store.record_client_message(row.pk, "m1") is True
    assert store.record_client_message(row.pk, "m1") is False
    settings.LONGPOLL_DEDUP_WINDOW = 0.000001
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
