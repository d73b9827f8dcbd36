"""The durable queue underneath the endpoints: messages in, batches out, acknowledgements."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from longpoll_app import queue, sessions, sql
from longpoll_app.models import ClientMessage, LongpollSession, Message

from .conftest import new_session_key


def test_append_then_read_in_order(transactional_db: None) -> None:
    key = new_session_key()
    queued = [queue.append(key, "t", n) for n in range(3)]
    assert [q.seq for q in queued] == [1, 2, 3]
    assert queued[0].group == sessions.wake_group(key)
    assert key not in queued[0].group  # the key never travels through the layer
    batch = queue.read(queued[0].session_pk, key, None, limit=10)
    assert batch is not None
    assert [m["data"] for m in batch.messages] == [0, 1, 2]
    assert (batch.cursor, batch.gap, batch.last_id) == (3, False, 3)


def test_acknowledge_deletes_in_one_batch_and_counts_delivered(transactional_db: None) -> None:
    a, b = new_session_key(), new_session_key()
    for _ in range(3):
        qa = queue.append(a, "t", None)
        qb = queue.append(b, "t", None)
    queue.acknowledge({(qa.session_pk, a): 2, (qb.session_pk, b): 3})
    assert sorted(Message.objects.values_list("session_id", "seq")) == [(qa.session_pk, 3)]
    delivered = dict(LongpollSession.objects.values_list("pk", "delivered"))
    assert delivered == {qa.session_pk: 2, qb.session_pk: 3}
    # A cursor beyond the newest id acknowledges nothing.
    queue.acknowledge({(qa.session_pk, a): 99})
    assert Message.objects.filter(session_id=qa.session_pk).count() == 1


def test_fresh_page_starts_after_the_acknowledged_id(transactional_db: None) -> None:
    key = new_session_key()
    q = [queue.append(key, "t", n) for n in range(3)][-1]
    queue.acknowledge({(q.session_pk, key): 2})
    batch = queue.read(q.session_pk, key, None, 10)
    assert batch is not None
    assert [m["id"] for m in batch.messages] == [3]
    assert batch.gap is False


def test_queue_cap_keeps_the_newest(transactional_db: None, settings: Any) -> None:
    settings.LONGPOLL_MAX_QUEUE = 5
    key = new_session_key()
    for n in range(12):
        queue.append(key, "t", n)
    assert list(Message.objects.values_list("data", flat=True)) == list(range(7, 12))


def test_messages_since_lists_new_messages_for_the_watcher(transactional_db: None) -> None:
    key = new_session_key()
    start = queue.newest_message_pk()
    q1 = queue.append(key, "t", None)
    q2 = queue.append(key, "t", None)
    rows = queue.messages_since(start)
    assert [(session, seq) for _, session, seq in rows] == [(q1.session_pk, 1), (q2.session_pk, 2)]
    assert queue.messages_since(rows[-1][0]) == []


def test_client_message_ids_are_remembered_within_the_window(
    transactional_db: None, settings: Any
) -> None:
    row = sessions.ensure_session_row(new_session_key())
    assert queue.client_message_seen(row.pk, "m1") is False
    assert queue.record_client_message(row.pk, "m1") is True
    assert queue.record_client_message(row.pk, "m1") is False
    assert queue.client_message_seen(row.pk, "m1") is True
    assert queue.client_message_seen(row.pk, "m2") is False
    settings.LONGPOLL_DEDUP_WINDOW = 0.000001
    assert queue.client_message_seen(row.pk, "m1") is False  # outside the window now
    assert queue.record_client_message(row.pk, "m1") is True  # the old record expired
    assert ClientMessage.objects.count() == 1


def test_nothing_after_spares_the_query_only_when_nothing_can_be_pending() -> None:
    assert queue.nothing_after(None, (5, 5)) and queue.nothing_after(7, (7, 2))
    assert not queue.nothing_after(None, (5, 4)) and not queue.nothing_after(3, (5, 5))
    assert queue.nothing_after(9, (5, 5))  # an earlier record's cursor, nothing unacknowledged


def test_append_many_gives_consecutive_ids_in_order(transactional_db: None) -> None:
    key = new_session_key()
    queue.append(key, "first", None)
    queued = queue.append_many(key, [("t", n) for n in range(12)])
    assert queued.seq == 13
    rows = list(Message.objects.order_by("seq").values_list("seq", "type", "data"))
    assert rows == [(1, "first", None), *[(n + 2, "t", n) for n in range(12)]]
    assert LongpollSession.objects.get().last_id == 13


def test_append_without_update_returning_behaves_the_same(
    transactional_db: None, monkeypatch: Any
) -> None:
    # The ORM path, for backends without UPDATE ... RETURNING.
    monkeypatch.setattr(sql, "update_returning_works", lambda vendor: False)
    key = new_session_key()
    assert [queue.append(key, "t", n).seq for n in range(3)] == [1, 2, 3]
    assert queue.append_many(key, [("t", 3), ("t", 4)]).seq == 5
    assert list(Message.objects.values_list("data", flat=True)) == [0, 1, 2, 3, 4]
    with pytest.raises(LookupError):
        queue.append("no-such-session-key-000000000000", "t", None)


def test_append_many_over_the_cap_keeps_the_newest_and_counts_the_rest(
    transactional_db: None, settings: Any
) -> None:
    settings.LONGPOLL_MAX_QUEUE = 5
    key = new_session_key()
    for n in range(7):
        queue.append(key, "t", n)  # ids 1-7; 1 and 2 dropped
    queue.append_many(key, [("t", n) for n in range(7, 15)])  # ids 8-15, more than the cap
    assert list(Message.objects.values_list("seq", flat=True)) == [11, 12, 13, 14, 15]
    row = LongpollSession.objects.get()
    assert (row.last_id, row.dropped) == (15, 10)


def test_acknowledged_messages_do_not_count_against_the_cap(
    transactional_db: None, settings: Any
) -> None:
    settings.LONGPOLL_MAX_QUEUE = 5
    key = new_session_key()
    pk = [queue.append(key, "t", n) for n in range(5)][-1].session_pk
    queue.acknowledge({(pk, key): 3})
    queue.append_many(key, [("t", 5), ("t", 6)])  # ids 6-7: 4 unacknowledged, under the cap
    assert list(Message.objects.values_list("seq", flat=True)) == [4, 5, 6, 7]
    queue.append_many(key, [("t", n) for n in range(7, 10)])  # ids 8-10: 4 and 5 go
    assert list(Message.objects.values_list("seq", flat=True)) == [6, 7, 8, 9, 10]
    assert LongpollSession.objects.get().dropped == 2


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the one-statement send is PostgreSQL's"
)
@pytest.mark.parametrize("count", [1, 3])
def test_a_send_outside_a_transaction_is_one_statement_on_postgresql(
    transactional_db: None, count: int
) -> None:
    key = new_session_key()
    queue.append(key, "first", 0)  # makes the session's record
    messages = [("m", {"n": n}) for n in range(count)]
    with CaptureQueriesContext(connection) as queries:
        queued = queue.append_many(key, messages)
    assert len(queries) == 1 and "WITH r AS (UPDATE" in queries[0]["sql"]
    assert queued.seq == 1 + count
    batch = queue.read(queued.session_pk, key, 1, 100)
    assert batch is not None
    assert [(m["id"], m["data"]) for m in batch.messages] == [
        (2 + n, {"n": n}) for n in range(count)
    ]


def test_inside_a_transaction_a_send_keeps_to_its_savepoint(transactional_db: None) -> None:
    key = new_session_key()
    queue.append(key, "first", 0)
    with transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            queue.append(key, "m", 1)
        assert any(query["sql"].startswith("SAVEPOINT") for query in queries)
        assert not any("WITH r AS (UPDATE" in query["sql"] for query in queries)
