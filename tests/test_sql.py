"""The app's hand-written SQL: chunking, quoting, and each statement run with
real parameters on the test database."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.sessions.models import Session
from django.db import (
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    connection,
    transaction,
)
from django.db.models import F
from django.utils import timezone

from longpoll_app import queue, sessions, sql
from longpoll_app.models import LongpollSession, Message, StatsCounter

from .conftest import new_session_key

# -- chunks and in_list -----------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "size", "sizes"),
    [
        (0, 3, []),
        (1, 3, [1]),
        (3, 3, [3]),  # an exact multiple leaves no empty chunk behind
        (7, 3, [3, 3, 1]),
        (5, 1, [1] * 5),
        (sql.CHUNK * 2 + 1, sql.CHUNK, [sql.CHUNK, sql.CHUNK, 1]),
    ],
)
def test_chunks_cut_in_order_and_never_empty(count: int, size: int, sizes: list[int]) -> None:
    items = list(range(count))
    cut = list(sql.chunks(items, size))
    assert [len(chunk) for chunk in cut] == sizes
    assert [item for chunk in cut for item in chunk] == items


def test_chunks_default_to_one_statement_s_worth() -> None:
    assert [len(chunk) for chunk in sql.chunks(list(range(sql.CHUNK + 1)))] == [sql.CHUNK, 1]
    assert list(sql.chunks(())) == []
    assert list(sql.chunks("abcde", 2)) == ["ab", "cd", "e"]  # slices of the sequence given


@pytest.mark.parametrize("count", [1, 2, 5, sql.CHUNK])
def test_in_list_has_one_placeholder_per_item(count: int) -> None:
    made = sql.in_list(count)
    assert made.startswith("(") and made.endswith(")")
    assert made[1:-1].split(", ") == ["%s"] * count


# -- quoting ----------------------------------------------------------------------


def test_table_and_column_names_go_through_the_connection_s_quote_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A vendor that quotes [like this]: the names must come from quote_name, not
    # from a quote character written into the statement. (Table only: the cached
    # builders must not keep a statement made with this fake.)
    monkeypatch.setattr(connection.ops, "quote_name", lambda name: f"[{name}]")
    messages = sql.Table(Message)
    assert messages.name == f"[{Message._meta.db_table}]"
    assert messages["seq"] == "[seq]"
    assert messages["session"] == "[session_id]"  # a foreign key's column, not its name
    assert sql.Table(LongpollSession)["user"] == "[user_id]"


def test_real_quoting_matches_the_vendor() -> None:
    table = sql.Table(LongpollSession)
    assert table.name == connection.ops.quote_name(LongpollSession._meta.db_table)
    assert table["last_id"] == connection.ops.quote_name("last_id")
    assert table.name != LongpollSession._meta.db_table  # every vendor here quotes


def test_only_plain_columns_have_names() -> None:
    with pytest.raises(AssertionError):
        sql.Table(LongpollSession)["messages"]  # a reverse relation: no column here
    with pytest.raises(AssertionError):
        sql.fields(LongpollSession, "last_id", "client_messages")
    assert [f.name for f in sql.fields(Message, "seq", "type")] == ["seq", "type"]
    assert sql.column(Message, "session") == "session_id"


# -- statements on the test database ------------------------------------------------


def vendor() -> str:
    return connection.vendor


def db_now(delta: timedelta = timedelta()) -> Any:
    """A time as the statements take it (SQLite compares text)."""
    return connection.ops.adapt_datetimefield_value(timezone.now() + delta)


def run(statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


def rowcount(statement: str, params: list[Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return int(cursor.rowcount)


def make_old(session_pk: int, seq: int) -> None:
    """Date a message two days back: past the one-day ``kept`` the tests pass."""
    Message.objects.filter(session_id=session_pk, seq=seq).update(
        created_at=timezone.now() - timedelta(days=2)
    )


def test_session_check_finds_live_sessions_with_their_records(transactional_db: None) -> None:
    with_record = new_session_key(a=1)
    without_record, expired = new_session_key(), new_session_key()
    row = sessions.ensure_session_row(with_record)
    LongpollSession.objects.filter(pk=row.pk).update(
        last_id=5, acked_id=2, ip_address="10.0.0.1", user_agent="UA"
    )
    sessions.ensure_session_row(expired)  # a record does not make a session live
    Session.objects.filter(session_key=expired).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    keys = [with_record, without_record, expired, "no-such-key-" + "x" * 20]
    statement = sql.session_check(vendor(), Session).replace("(?)", sql.in_list(len(keys)))
    found = {r[0]: r for r in run(statement, [*keys, db_now()])}
    assert set(found) == {with_record, without_record}
    _, data, expire_date, *record = found[with_record]
    assert sessions.session_store().decode(data) == {"a": 1}
    assert expire_date is not None
    assert len(record) == len(sql.RECORD_COLUMNS)
    values = dict(zip(sql.RECORD_COLUMNS, record, strict=True))
    assert (values["id"], values["last_id"], values["acked_id"]) == (row.pk, 5, 2)
    assert (str(values["ip_address"]), values["user_agent"], values["user"]) == (
        "10.0.0.1",
        "UA",
        None,
    )
    assert found[without_record][3:] == (None,) * len(sql.RECORD_COLUMNS)  # LEFT JOIN
    # The expiry test is the session backend's: later than now.
    later = sql.session_check(vendor(), Session).replace("(?)", sql.in_list(1))
    assert run(later, [with_record, db_now(timedelta(days=365))]) == []


@pytest.mark.skipif(
    not sql.update_returning_works(connection.vendor), reason="no UPDATE ... RETURNING here"
)
def test_reserve_ids_bumps_last_id_and_returns_the_record(transactional_db: None) -> None:
    key = new_session_key()
    row = sessions.ensure_session_row(key)
    LongpollSession.objects.filter(pk=row.pk).update(last_id=4, acked_id=3)
    with transaction.atomic():
        assert run(sql.reserve_ids(vendor()), [3, key]) == [(row.pk, 7, 3)]
    assert LongpollSession.objects.get(pk=row.pk).last_id == 7
    assert run(sql.reserve_ids(vendor()), [1, "no-such-key"]) == []  # nothing to reserve in


def test_read_ids_need_the_pk_and_the_key_together(transactional_db: None) -> None:
    key, other = new_session_key(), new_session_key()
    q = queue.append(key, "t", None)
    other_pk = sessions.ensure_session_row(other).pk
    ids = sql.read(vendor()).ids
    assert run(ids, [q.session_pk, key]) == [(1, 0)]
    assert run(ids, [q.session_pk, other]) == []  # the record has another key now
    assert run(ids, [other_pk, key]) == []


def test_read_messages_after_a_cursor_in_order_up_to_a_limit(transactional_db: None) -> None:
    key, other = new_session_key(), new_session_key()
    queued = [queue.append(key, "t", {"n": n}) for n in range(6)]
    queue.append(other, "t", "not this session's")
    pk = queued[0].session_pk
    make_old(pk, 5)  # past retention: never read
    statement = sql.read(vendor()).messages
    kept = db_now(-timedelta(days=1))
    rows = run(statement, [pk, 1, kept, 10])
    assert [(seq, type_, json.loads(data)) for seq, type_, data, _ in rows] == [
        (2, "t", {"n": 1}),
        (3, "t", {"n": 2}),
        (4, "t", {"n": 3}),
        (6, "t", {"n": 5}),
    ]
    assert all(created_at is not None for *_, created_at in rows)
    assert [r[0] for r in run(statement, [pk, 1, kept, 2])] == [2, 3]  # the limit
    assert run(statement, [pk, 6, kept, 10]) == []


def test_acknowledge_statements_lock_delete_and_count(transactional_db: None) -> None:
    a, b = new_session_key(), new_session_key()
    qa = [queue.append(a, "t", n) for n in range(4)][-1]
    qb = queue.append(b, "t", None)
    make_old(qa.session_pk, 2)  # expired: retention's
    statements = sql.acknowledge(vendor())
    pks = sorted([qb.session_pk, qa.session_pk], reverse=True)
    kept = db_now(-timedelta(days=1))
    with transaction.atomic():
        locked = run(statements.lock.replace("(?)", sql.in_list(2)), pks)
        assert locked == sorted(
            [(qa.session_pk, a, 0, 4), (qb.session_pk, b, 0, 1)]
        )  # by pk: one lock order for every process
        deleted = rowcount(statements.delete, [qa.session_pk, 0, 3, kept])
        assert deleted == 2  # ids 1 and 3; id 2 expired, id 4 above the cursor
        assert rowcount(statements.update, [3, deleted, qa.session_pk]) == 1
    assert list(Message.objects.order_by("session_id", "seq").values_list("session_id", "seq")) == [
        (qa.session_pk, 2),
        (qa.session_pk, 4),
        (qb.session_pk, 1),
    ]
    row = LongpollSession.objects.get(pk=qa.session_pk)
    assert (row.acked_id, row.delivered) == (3, 2)
    assert LongpollSession.objects.get(pk=qb.session_pk).delivered == 0
    # The bounds are (acked, cursor]: acknowledging 3 again deletes nothing.
    assert rowcount(statements.delete, [qa.session_pk, 3, 3, kept]) == 0


def test_messages_since_lists_in_pk_order_up_to_the_watch_limit(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = new_session_key(), new_session_key()
    start = queue.newest_message_pk()
    for key in (a, b, a, b, a):
        queue.append(key, "t", None)
    everything = run(sql.messages_since(vendor()), [start])
    assert [pk for pk, _, _ in everything] == sorted(pk for pk, _, _ in everything)
    assert len(everything) == 5
    pk_a, pk_b = (sessions.ensure_session_row(k).pk for k in (a, b))
    assert [(s, seq) for _, s, seq in everything] == [
        (pk_a, 1),
        (pk_b, 1),
        (pk_a, 2),
        (pk_b, 2),
        (pk_a, 3),
    ]
    assert run(sql.messages_since(vendor()), [everything[2][0]]) == everything[3:]
    assert sql.messages_since(vendor()).endswith(f"LIMIT {sql.WATCH_LIMIT}")
    # The limit keeps the oldest: a later look starts after the last one seen.
    # (Built uncached with a small limit, so the cache keeps the real one.)
    monkeypatch.setattr(sql, "WATCH_LIMIT", 3)
    limited = sql.messages_since.__wrapped__(vendor())
    assert run(limited, [start]) == everything[:3]
    assert run(limited, [everything[2][0]]) == everything[3:]


def test_message_counts_add_live_totals_counters_and_pending(transactional_db: None) -> None:
    names = ("sent", "expired", "never-written")
    statement = sql.message_counts(vendor(), len(names))
    cutoff = db_now(-timedelta(days=1))
    # Nothing yet: zeros, not NULLs.
    assert run(statement, [*names, cutoff]) == [(0, 0, 0, 0, 0, 0, 0)]
    a, b = new_session_key(), new_session_key()
    queued = [queue.append(key, "t", None) for key in (a, a, a, b)]
    LongpollSession.objects.filter(session_key=a).update(delivered=2, dropped=1)
    LongpollSession.objects.filter(session_key=b).update(delivered=F("delivered") + 1)
    StatsCounter.objects.create(name="sent", value=10)
    StatsCounter.objects.create(name="expired", value=4)
    StatsCounter.objects.create(name="discarded", value=99)  # not asked for
    make_old(queued[0].session_pk, 1)
    # last_id 3 + 1, delivered 2 + 1, dropped 1; sent, expired, (none); 3 pending.
    assert run(statement, [*names, cutoff]) == [(4, 3, 1, 10, 4, 0, 3)]


# -- per vendor ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "works"), [((3, 34, 1), False), ((3, 35, 0), True), ((3, 45, 2), True)]
)
def test_update_returning_on_sqlite_follows_the_library(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, int, int], works: bool
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", version)
    assert sql.update_returning_works("sqlite") is works


@pytest.mark.parametrize(
    ("name", "works"), [("postgresql", True), ("mysql", False), ("oracle", False), ("", False)]
)
def test_update_returning_by_vendor(name: str, works: bool) -> None:
    # MariaDB has INSERT ... RETURNING only; others are not known to have it.
    assert sql.update_returning_works(name) is works


def test_statements_are_built_once_per_vendor() -> None:
    assert sql.read(vendor()) is sql.read(vendor())
    assert sql.session_check(vendor(), Session) is sql.session_check(vendor(), Session)
    assert sql.message_counts(vendor(), 2) != sql.message_counts(vendor(), 3)


# -- outages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (OperationalError("server closed the connection unexpectedly"), True),
        (OperationalError("database is locked"), True),
        (InterfaceError("connection already closed"), True),
        (IntegrityError("UNIQUE constraint failed"), False),
        (DataError("value too long"), False),
        (ProgrammingError("syntax error"), False),
        (NotSupportedError("no"), False),
        (InternalError("in failed sql transaction"), False),
        (DatabaseError("generic"), False),
        (Error("base"), False),
        (ConnectionError("not a database error"), False),
        (ValueError("unstorable"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_is_outage_tells_unreachable_from_refused(error: BaseException, outage: bool) -> None:
    assert sql.is_outage(error) is outage


def test_a_subclass_of_an_outage_error_is_an_outage() -> None:
    class PoolTimeout(OperationalError):
        pass

    assert sql.is_outage(PoolTimeout("couldn't get a connection after 3.00 sec"))


def test_a_refused_row_from_the_database_is_not_an_outage(transactional_db: None) -> None:
    StatsCounter.objects.create(name="sent", value=1)
    c = sql.Table(StatsCounter)
    with pytest.raises(IntegrityError) as refused, transaction.atomic():
        run(f"INSERT INTO {c.name} ({c['name']}, {c['value']}) VALUES (%s, %s)", ["sent", 2])
    assert not sql.is_outage(refused.value)


def test_time_parameters_compare_as_the_columns_store_them(transactional_db: None) -> None:
    """Why the tests adapt times: a statement's datetime parameter must compare
    with the stored column (SQLite stores text)."""
    key = new_session_key()
    q = queue.append(key, "t", None)
    created: datetime = Message.objects.get().created_at
    statement = sql.read(vendor()).messages
    at = connection.ops.adapt_datetimefield_value(created)
    assert [r[0] for r in run(statement, [q.session_pk, 0, at, 10])] == [1]  # at: kept
    after = connection.ops.adapt_datetimefield_value(created + timedelta(microseconds=1))
    assert run(statement, [q.session_pk, 0, after, 10]) == []
