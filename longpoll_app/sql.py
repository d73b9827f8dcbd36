"""The app's hand-written SQL, one builder per statement, quoted per vendor.

Plain SQL only where a path runs per poll or per message: building these
queries with the ORM cost several times running them. Each builder is cached
per vendor; ``Table`` quotes a model's table and column names once for all.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, TypeVar, cast

from django.db import InterfaceError, OperationalError, connection
from django.db.models import Field, Model

from .models import LongpollSession, Message, StatsCounter

CHUNK = 500  # keys in one IN (...) list, rows in one bulk statement

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``: one statement each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def in_list(count: int) -> str:
    """``(%s, %s, ...)`` with ``count`` placeholders."""
    return f"({', '.join(['%s'] * count)})"


def is_outage(exc: BaseException) -> bool:
    """True for an error that says the database cannot be reached (every
    request fails alike), not that one request's data was refused."""
    return isinstance(exc, OperationalError | InterfaceError)


class Table:
    """A model's table and columns, quoted for the connection's vendor."""

    def __init__(self, model: type[Model]) -> None:
        self.model = model
        self.name = connection.ops.quote_name(model._meta.db_table)

    def __getitem__(self, field_name: str) -> str:
        return connection.ops.quote_name(column(self.model, field_name))


def column(model: type[Model], name: str) -> str:
    field = model._meta.get_field(name)
    assert isinstance(field, Field)  # a column of the model's own table
    return str(field.column)


def fields(model: type[Model], *names: str) -> list[Field[Any, Any]]:
    """The model's fields of these names, all plain columns."""
    found = [model._meta.get_field(name) for name in names]
    assert all(isinstance(field, Field) for field in found)
    return cast("list[Field[Any, Any]]", found)


def update_returning_works(vendor: str) -> bool:
    # PostgreSQL always; SQLite from 3.35. MariaDB has INSERT ... RETURNING only.
    if vendor == "postgresql":
        return True
    if vendor == "sqlite":
        import sqlite3  # here: a project on another database need not load it

        return sqlite3.sqlite_version_info >= (3, 35)  # the library Django's backend uses
    return False


RECORD_COLUMNS = (
    "id",
    "last_id",
    "acked_id",
    "last_poll",
    "expires_at",
    "user",
    "ip_address",
    "user_agent",
)


@functools.cache
def session_check(vendor: str, session_model: type[Model]) -> str:
    """Live Django sessions among ``IN (?)`` keys, with their records if any:
    the same rows and expiry test as ``DatabaseSessionStore.load()``, for many
    keys. Replace ``(?)`` with ``in_list(n)``; the last parameter is now."""
    s, r = Table(session_model), Table(LongpollSession)
    record = ", ".join(f"r.{r[name]}" for name in RECORD_COLUMNS)
    return (
        f"SELECT s.{s['session_key']}, s.{s['session_data']}, s.{s['expire_date']}, {record}"
        f" FROM {s.name} s LEFT JOIN {r.name} r ON r.{r['session_key']} = s.{s['session_key']}"
        f" WHERE s.{s['session_key']} IN (?) AND s.{s['expire_date']} > %s"
    )


@functools.cache
def reserve_ids(vendor: str) -> str:
    """Bump a session's ``last_id`` by a count, returning pk, last_id, acked_id."""
    s = Table(LongpollSession)
    return (
        f"UPDATE {s.name} SET {s['last_id']} = {s['last_id']} + %s"
        f" WHERE {s['session_key']} = %s RETURNING {s['id']}, {s['last_id']}, {s['acked_id']}"
    )


MESSAGE_INSERTED = ("session", "seq", "type", "data", "created_at")  # columns a send writes


@functools.cache
def reserve_and_insert(many: bool) -> str:
    """PostgreSQL: ``reserve_ids`` and the insert of the messages in one
    statement, one round trip where a transaction takes four (BEGIN, UPDATE,
    INSERT, COMMIT). Returns pk, last_id, acked_id, or no row (and inserts
    nothing) if the session has no record yet.

    One message: parameters count, key, type, data, created_at. ``many``:
    count, key, count, created_at, then the types and the JSON texts as arrays.
    """
    s, m = Table(LongpollSession), Table(Message)
    columns = ", ".join(m[name] for name in MESSAGE_INSERTED)
    pk, last_id = f"r.{s['id']}", f"r.{s['last_id']}"
    if many:
        rows = (
            f"SELECT {pk}, {last_id} - %s + u.n, u.t, u.d::jsonb, %s FROM r,"
            " unnest(%s::text[], %s::text[]) WITH ORDINALITY AS u(t, d, n)"
        )
    else:
        rows = f"SELECT {pk}, {last_id}, %s, %s, %s FROM r"
    return (
        f"WITH r AS ({reserve_ids('postgresql')}), "
        f"i AS (INSERT INTO {m.name} ({columns}) {rows}) "
        f"SELECT {pk}, {last_id}, r.{s['acked_id']} FROM r"
    )


class ReadSql(NamedTuple):
    ids: str
    messages: str


@functools.cache
def read(vendor: str) -> ReadSql:
    s, m = Table(LongpollSession), Table(Message)
    return ReadSql(
        ids=f"SELECT {s['last_id']}, {s['acked_id']} FROM {s.name}"
        f" WHERE {s['id']} = %s AND {s['session_key']} = %s",
        messages=f"SELECT {m['seq']}, {m['type']}, {m['data']}, {m['created_at']} FROM {m.name}"
        f" WHERE {m['session']} = %s AND {m['seq']} > %s AND {m['created_at']} >= %s"
        f" ORDER BY {m['seq']} LIMIT %s",
    )


class AckSql(NamedTuple):
    lock: str
    delete: str
    update: str


@functools.cache
def acknowledge(vendor: str) -> AckSql:
    s, m = Table(LongpollSession), Table(Message)
    for_update = " FOR UPDATE" if connection.features.has_select_for_update else ""
    return AckSql(
        lock=f"SELECT {s['id']}, {s['session_key']}, {s['acked_id']}, {s['last_id']}"
        f" FROM {s.name} WHERE {s['id']} IN (?) ORDER BY {s['id']}{for_update}",
        delete=f"DELETE FROM {m.name} WHERE {m['session']} = %s AND {m['seq']} > %s"
        f" AND {m['seq']} <= %s AND {m['created_at']} >= %s",
        update=f"UPDATE {s.name} SET {s['acked_id']} = %s,"
        f" {s['delivered']} = {s['delivered']} + %s WHERE {s['id']} = %s",
    )


WATCH_LIMIT = 10_000  # messages one look at the queue returns at most


@functools.cache
def messages_since(vendor: str) -> str:
    m = Table(Message)
    return (
        f"SELECT {m['id']}, {m['session']}, {m['seq']} FROM {m.name}"
        f" WHERE {m['id']} > %s ORDER BY {m['id']} LIMIT {WATCH_LIMIT}"
    )


LIVE_TOTALS = ("last_id", "delivered", "dropped")  # LongpollSession's columns summed


@functools.cache
def message_counts(vendor: str, counted: int) -> str:
    """The live totals, ``counted`` StatsCounter values (one name parameter
    each) and the messages created since a time: one statement, one snapshot."""
    s, c, m = Table(LongpollSession), Table(StatsCounter), Table(Message)
    live = [f"(SELECT COALESCE(SUM({s[name]}), 0) FROM {s.name})" for name in LIVE_TOTALS]
    value = f"(SELECT COALESCE(MAX({c['value']}), 0) FROM {c.name} WHERE {c['name']} = %s)"
    pending = f"(SELECT COUNT(*) FROM {m.name} WHERE {m['created_at']} >= %s)"
    return "SELECT " + ", ".join([*live, *[value] * counted, pending])
