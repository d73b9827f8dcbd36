"""The durable queue: every database read and write of the app, all synchronous.

The async side (``hub``, ``consumers``) calls these through a worker thread and
only when it must: a poll that the hub knows has nothing new touches none of them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import import_module
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import SESSION_KEY as AUTH_USER_ID_KEY
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Field, Model, QuerySet
from django.utils import timezone

from . import stats
from .conf import conf
from .models import ClientMessage, LongpollSession, Message, session_fingerprint

__all__ = ["session_fingerprint"]  # re-exported for callers of the store


def wake_group(session_key: str) -> str:
    """The channel-layer group that carries a session's wake-ups.

    A hash, because group names allow few characters and because the key is a
    credential that must not travel through Redis.
    """
    return "longpoll." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def session_store(session_key: str | None = None) -> SessionBase:
    engine = import_module(settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(session_key)
    return store


def load_live_session(session_key: str) -> SessionBase | None:
    """The session with this key, or None when it does not exist or has expired."""
    session = session_store(session_key)
    # keys() loads the session once and keeps it (load() itself keeps nothing,
    # so a later get() would read the database again). Every server-side
    # backend forgets the key when it finds no live session.
    session.keys()
    return session if session.session_key is not None else None


@dataclass(frozen=True)
class SessionRecord:
    """What a poll needs to know about its session, read in one go."""

    pk: int
    last_id: int
    acked_id: int


@dataclass(frozen=True)
class Batch:
    """The answer to a poll: messages after the cursor, the new cursor, and
    whether messages between the old cursor and these were lost."""

    messages: list[dict[str, Any]]
    cursor: int
    gap: bool
    last_id: int


@dataclass(frozen=True)
class Queued:
    """Where a message was queued: enough to wake the polls waiting for it."""

    session_pk: int
    group: str
    seq: int


LAST_POLL_PRECISION = 300.0  # seconds: last_poll is rewritten at most this often
CHUNK = 500  # keys in one IN (...) list


def verify_session(
    session_key: str, ip_address: str | None = None, user_agent: str = ""
) -> SessionRecord | None:
    """Check that the key names a live session and record that it polls.

    Returns None for a forged, expired or ended session, and then writes nothing.
    """
    return verify_sessions([(session_key, ip_address, user_agent)]).get(session_key)


def verify_sessions(polls: list[tuple[str, str | None, str]]) -> dict[str, SessionRecord]:
    """``verify_session`` for many ``(key, ip_address, user_agent)`` at once:
    the records of the keys that name live sessions.

    A handful of queries for the lot, however many: the hub checks the sessions
    of the polls that arrive together in one go. It writes only what changed
    (and ``last_poll`` when it is older than ``LAST_POLL_PRECISION``): every
    polling session is re-checked once per ``LONGPOLL_SESSION_RECHECK``, and a
    write per check would make an idle server a busy database writer.
    """
    now = timezone.now()
    clients = {key: (ip_address, user_agent[:255]) for key, ip_address, user_agent in polls}
    facts = live_session_facts(list(clients))
    wanted = {
        key: {
            "user_id": user_pk,
            "expires_at": expires_at,
            "ip_address": clients[key][0],
            "user_agent": clients[key][1],
        }
        for key, (user_pk, expires_at) in facts.items()
    }
    rows = _session_rows(list(wanted))
    missing = [key for key in wanted if key not in rows]
    if missing:
        LongpollSession.objects.bulk_create(
            [
                LongpollSession(
                    session_key=key,
                    fingerprint=session_fingerprint(key),
                    last_poll=now,
                    **wanted[key],
                )
                for key in missing
            ],
            ignore_conflicts=True,  # a concurrent poll or send may have created it first
        )
        created = _session_rows(missing)
        rows.update(created)
    else:
        created = {}
    for key, row in rows.items():
        if key not in created and _outdated(row, wanted[key], now):
            LongpollSession.objects.filter(pk=row["pk"]).update(last_poll=now, **wanted[key])
    return {
        key: SessionRecord(pk=row["pk"], last_id=row["last_id"], acked_id=row["acked_id"])
        for key, row in rows.items()
    }


def _session_rows(keys: list[str]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    fields = ("pk", "session_key", "last_id", "acked_id", "last_poll", "expires_at")
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        for row in LongpollSession.objects.filter(session_key__in=chunk).values(
            *fields, "user_id", "ip_address", "user_agent"
        ):
            rows[row["session_key"]] = row
    return rows


def live_session_facts(keys: list[str]) -> dict[str, tuple[Any, datetime | None]]:
    """``{key: (user pk, expiry)}`` for the keys that name live sessions.

    With a database session backend, one query for all of them, and the expiry
    is the session's own; otherwise each session is loaded through its backend.
    """
    engine = import_module(settings.SESSION_ENGINE)
    if issubclass(engine.SessionStore, DatabaseSessionStore):
        return _live_db_session_facts(engine.SessionStore, keys)
    facts: dict[str, tuple[Any, datetime | None]] = {}
    for key in keys:
        session = load_live_session(key)
        if session is not None:
            facts[key] = (_user_pk(session.get(AUTH_USER_ID_KEY)), session.get_expiry_date())
    return facts


def _live_db_session_facts(
    store_class: type[DatabaseSessionStore], keys: list[str]
) -> dict[str, tuple[Any, datetime | None]]:
    # The same rows and expiry test as DatabaseSessionStore.load(), for many keys.
    model = store_class.get_model_class()
    decoder = store_class()
    facts: dict[str, tuple[Any, datetime | None]] = {}
    for start in range(0, len(keys), CHUNK):
        rows = model.objects.filter(
            session_key__in=keys[start : start + CHUNK], expire_date__gt=timezone.now()
        ).values_list("session_key", "session_data", "expire_date")
        for key, data, expire_date in rows:
            facts[key] = (_user_pk(decoder.decode(data).get(AUTH_USER_ID_KEY)), expire_date)
    return facts


def _outdated(row: dict[str, Any], fields: dict[str, Any], now: datetime) -> bool:
    def drift(then: datetime | None, value: datetime | None) -> float:
        if then is None or value is None:
            return 0.0 if then is value else math.inf
        return abs((value - then).total_seconds())

    # Without a custom expiry, get_expiry_date() is "now + SESSION_COOKIE_AGE":
    # it moves on every check, so only a move beyond the precision counts.
    return (
        drift(row["last_poll"], now) >= LAST_POLL_PRECISION
        or drift(row["expires_at"], fields["expires_at"]) >= LAST_POLL_PRECISION
        or any(row[name] != fields[name] for name in ("user_id", "ip_address", "user_agent"))
    )


def record_user(session_key: str, user_pk: Any, expires_at: datetime) -> None:
    """Note who a session belongs to (at login, before the session is saved)."""
    fields = {"user_id": user_pk, "expires_at": expires_at}
    LongpollSession.objects.update_or_create(
        session_key=session_key,
        defaults=fields,
        create_defaults={**fields, "fingerprint": session_fingerprint(session_key)},
    )


def _user_pk(raw: Any) -> Any:
    if raw is None:
        return None
    from django.contrib.auth import get_user_model

    return get_user_model()._meta.pk.to_python(raw)


def ensure_session_row(session_key: str) -> LongpollSession:
    """The session's record, created when a live session has none yet.

    Raises ``LookupError`` for a key that names no live session, so that
    messages are never queued where no browser can collect them.
    """
    row = LongpollSession.objects.filter(session_key=session_key).first()
    if row is not None:
        return row
    session = load_live_session(session_key)
    if session is None:
        raise LookupError(f"No live session has the key {session_fingerprint(session_key)!r}.")
    LongpollSession.objects.bulk_create(
        [
            LongpollSession(
                session_key=session_key,
                fingerprint=session_fingerprint(session_key),
                user_id=_user_pk(session.get(AUTH_USER_ID_KEY)),
                expires_at=session.get_expiry_date(),
            )
        ],
        ignore_conflicts=True,  # a concurrent sender may have created it first
    )
    return LongpollSession.objects.get(session_key=session_key)


def append(session_key: str, type: str, data: Any) -> Queued:
    """Queue one message for a session and return where (its id is ``seq``)."""
    return append_many(session_key, [(type, data)])


def append_many(session_key: str, messages: Sequence[tuple[str, Any]]) -> Queued:
    """Queue messages for a session, in order, in one transaction.

    They get consecutive ids ending at the returned ``seq``. Reserving the ids
    is the first write and takes the session row's write lock until the
    transaction ends, so two senders to one session commit in id order: a poll
    can never see id 11 and later find that id 10 appeared behind its cursor.
    Beyond ``LONGPOLL_MAX_QUEUE`` unacknowledged messages the oldest are
    dropped (counted in ``dropped``); new ones already past the cap are never
    written.
    """
    count = len(messages)
    if count == 0:
        raise ValueError("append_many needs at least one message.")
    with transaction.atomic():
        pk, last, acked = _reserve_ids(session_key, count)
        first = last - count + 1
        # Messages already past the cap when they arrive are never written.
        keep_from = max(first, last - conf.LONGPOLL_MAX_QUEUE + 1)
        _insert_messages(pk, keep_from, messages[keep_from - first :])
        _drop_over_cap(pk, first, last, acked, never_written=keep_from - first)
    return Queued(session_pk=pk, group=wake_group(session_key), seq=last)


PG_ARRAYS_FROM = 10  # messages; below this a plain VALUES list was measured faster


def _insert_messages(session_pk: int, first: int, messages: Sequence[tuple[str, Any]]) -> None:
    """Insert messages with ids from ``first`` on, in as few statements as the
    backend allows.

    Not ``bulk_create``: building a model instance and preparing each field of
    each row was ~90% of the time of a 1,000-message send.
    """
    if not messages:
        return
    connection = transaction.get_connection()
    meta = Message._meta
    fields = _fields(Message, "session", "seq", "type", "data", "created_at")
    created_at = fields[4].get_db_prep_save(timezone.now(), connection)
    qn = connection.ops.quote_name
    head = f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
    data_field = fields[3]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and len(messages) >= PG_ARRAYS_FROM:
            # Three arrays, not 5,000 placeholders: psycopg composes a query's
            # placeholders in Python, which cost more than the insert itself.
            encoder = data_field.encoder  # type: ignore[attr-defined]
            cursor.execute(
                head + "SELECT %s, s, t, d::jsonb, %s FROM unnest(%s::bigint[], "
                "%s::text[], %s::text[]) AS u(s, t, d)",
                [
                    session_pk,
                    created_at,
                    list(range(first, first + len(messages))),
                    [type_ for type_, _ in messages],
                    [json.dumps(data, cls=encoder) for _, data in messages],
                ],
            )
            return
        row_sql = f"({', '.join(['%s'] * len(fields))})"
        batch = max(1, connection.ops.bulk_batch_size(fields, messages))
        for start in range(0, len(messages), batch):
            chunk = messages[start : start + batch]
            params: list[Any] = []
            for seq, (type_, data) in enumerate(chunk, start=first + start):
                prepared = data_field.get_db_prep_save(data, connection)
                params += (session_pk, seq, type_, prepared, created_at)
            cursor.execute(head + "VALUES " + ", ".join([row_sql] * len(chunk)), params)


def _drop_over_cap(pk: int, first: int, last: int, acked: int, never_written: int) -> None:
    cutoff = last - conf.LONGPOLL_MAX_QUEUE  # ids at or below this are over the cap
    dropped = never_written
    # Older rows can only be over the cap if some unacknowledged one is at or
    # below the cutoff: below the cap (the usual case) this costs no query.
    if min(cutoff, first - 1) > acked:
        over_cap = Message.objects.filter(session_id=pk, seq__gt=acked, seq__lte=cutoff)
        deleted, _ = over_cap.delete()
        dropped += deleted
    if dropped:
        LongpollSession.objects.filter(pk=pk).update(dropped=F("dropped") + dropped)


def _reserve_ids(session_key: str, count: int) -> tuple[int, int, int]:
    """Bump the session's ``last_id`` by ``count`` (its row lock is taken
    here); the record's pk, new ``last_id`` and ``acked_id``.

    Raises ``LookupError`` for a key that names no live session.
    """
    reserved = _bump_returning(session_key, count)
    if reserved is not None:
        return reserved
    row = ensure_session_row(session_key)
    updated = LongpollSession.objects.filter(pk=row.pk).update(last_id=F("last_id") + count)
    if not updated:  # the session ended between the two statements
        raise LookupError(f"No live session has the key {session_fingerprint(session_key)!r}.")
    last, acked = LongpollSession.objects.values_list("last_id", "acked_id").get(pk=row.pk)
    return row.pk, last, acked


def _bump_returning(session_key: str, count: int) -> tuple[int, int, int] | None:
    """One ``UPDATE ... RETURNING`` instead of a read, an update and a read
    again: the ORM's query building is most of a send's cost. None when the
    session has no record yet, or the database cannot do it."""
    connection = transaction.get_connection()
    if not _update_returning_works(connection):
        return None
    meta = LongpollSession._meta
    qn = connection.ops.quote_name
    columns = _fields(LongpollSession, "id", "last_id", "acked_id", "session_key")
    pk_col, last_col, acked_col, key_col = (qn(field.column) for field in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} SET {last_col} = {last_col} + %s "
            f"WHERE {key_col} = %s RETURNING {pk_col}, {last_col}, {acked_col}",
            [count, session_key],
        )
        row = cursor.fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def _fields(model: type[Model], *names: str) -> list[Field[Any, Any]]:
    """The model's fields of these names, all plain columns."""
    fields = [model._meta.get_field(name) for name in names]
    assert all(isinstance(field, Field) for field in fields)
    return cast("list[Field[Any, Any]]", fields)


def _update_returning_works(connection: Any) -> bool:
    # PostgreSQL always; SQLite from 3.35. MariaDB has INSERT ... RETURNING only.
    if connection.vendor == "postgresql":
        return True
    if connection.vendor == "sqlite":
        return bool(connection.Database.sqlite_version_info >= (3, 35))
    return False


def read(
    session_pk: int, cursor: int | None, limit: int, ids: tuple[int, int] | None = None
) -> Batch | None:
    """The messages a poll with this cursor should get, or None if the
    session's record is gone.

    A ``cursor`` of None is a fresh page: it gets everything not yet
    acknowledged. A cursor above ``last_id`` comes from an earlier record of
    the session (ids restarted): it gets everything pending, flagged as a gap.
    ``ids`` is the record's ``(last_id, acked_id)`` when the caller just read it.
    """
    # Plain SQL: a woken poll runs this for every message it delivers, and
    # building these two queries with the ORM costs several times running them.
    if ids is None:
        with connection.cursor() as db:
            db.execute(_read_sql(connection.vendor).ids, [session_pk])
            ids = db.fetchone()
        if ids is None:
            return None
    last_id, acked_id = ids
    restarted = cursor is not None and cursor > last_id
    after = acked_id if cursor is None or restarted else cursor
    rows = []
    if not nothing_after(cursor, ids):  # else no query: read() may then run in async code
        kept = connection.ops.adapt_datetimefield_value(_oldest_kept())
        with connection.cursor() as db:
            db.execute(_read_sql(connection.vendor).messages, [session_pk, after, kept, limit])
            rows = db.fetchall()
    messages = [
        {"id": seq, "type": type_, "data": None if data is None else json.loads(data)}
        for seq, type_, data, _ in rows
    ]
    stats.record_latencies((_aware(row[3]) for row in rows), timezone.now())
    if rows:
        new_cursor = rows[-1][0]
        missed = rows[0][0] > after + 1
    else:
        new_cursor = last_id
        missed = last_id > after
    gap = restarted or (cursor is not None and missed)
    return Batch(messages=messages, cursor=new_cursor, gap=gap, last_id=last_id)


@dataclass(frozen=True)
class _ReadSql:
    ids: str
    messages: str


@functools.cache
def _read_sql(vendor: str) -> _ReadSql:
    quote = connection.ops.quote_name

    s = {name: quote(_column(LongpollSession, name)) for name in _SESSION_COLUMNS}
    m = {name: quote(_column(Message, name)) for name in _MESSAGE_COLUMNS}
    sessions, messages = quote(LongpollSession._meta.db_table), quote(Message._meta.db_table)
    return _ReadSql(
        ids=f"SELECT {s['last_id']}, {s['acked_id']} FROM {sessions} WHERE {s['id']} = %s",
        messages=f"SELECT {m['seq']}, {m['type']}, {m['data']}, {m['created_at']} FROM {messages}"
        f" WHERE {m['session']} = %s AND {m['seq']} > %s AND {m['created_at']} >= %s"
        f" ORDER BY {m['seq']} LIMIT %s",
    )


def _aware(value: datetime | str) -> datetime:
    """A datetime as the ORM would give it (SQLite hands plain SQL naive UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def nothing_after(cursor: int | None, ids: tuple[int, int]) -> bool:
    """True when a poll with this cursor has nothing to read, by the record's
    ``(last_id, acked_id)`` alone; ``read`` then makes no query."""
    last_id, acked_id = ids
    after = acked_id if cursor is None or cursor > last_id else cursor
    return after >= last_id


def _oldest_kept() -> datetime:
    return timezone.now() - timedelta(seconds=conf.LONGPOLL_RETENTION)


def acknowledge(cursors: dict[int, int]) -> None:
    """Delete what each session acknowledged, in one transaction for the lot.

    Polls hand their cursors to the hub, which calls this in batches, so a busy
    server does not pay a delete per poll. ``delivered`` counts the rows this
    deletes: ids that were dropped or expired, and rows a concurrent
    acknowledgement already deleted, are not counted. Rows that expired before
    they were read stay for retention, which counts them as expired.
    """
    kept = connection.ops.adapt_datetimefield_value(_oldest_kept())
    sql = _ack_sql(connection.vendor)
    pks = sorted(cursors)  # one lock order for every process
    # Plain SQL, as in read(): the ORM's query building was most of the cost.
    with transaction.atomic(), connection.cursor() as db:
        for start in range(0, len(pks), CHUNK):
            chunk = pks[start : start + CHUNK]
            db.execute(sql.lock.replace("(?)", f"({', '.join(['%s'] * len(chunk))})"), chunk)
            for session_pk, acked_id, last_id in db.fetchall():
                cursor = cursors[session_pk]
                if not acked_id < cursor <= last_id:
                    continue  # already acknowledged, or a cursor from an earlier record
                db.execute(sql.delete, [session_pk, acked_id, cursor, kept])
                db.execute(sql.update, [cursor, max(db.rowcount, 0), session_pk])


@dataclass(frozen=True)
class _AckSql:
    lock: str
    delete: str
    update: str


@functools.cache
def _ack_sql(vendor: str) -> _AckSql:
    quote = connection.ops.quote_name
    s = {name: quote(_column(LongpollSession, name)) for name in _SESSION_COLUMNS}
    m = {name: quote(_column(Message, name)) for name in _MESSAGE_COLUMNS}
    sessions, messages = quote(LongpollSession._meta.db_table), quote(Message._meta.db_table)
    for_update = " FOR UPDATE" if connection.features.has_select_for_update else ""
    return _AckSql(
        lock=f"SELECT {s['id']}, {s['acked_id']}, {s['last_id']} FROM {sessions}"
        f" WHERE {s['id']} IN (?) ORDER BY {s['id']}{for_update}",
        delete=f"DELETE FROM {messages} WHERE {m['session']} = %s AND {m['seq']} > %s"
        f" AND {m['seq']} <= %s AND {m['created_at']} >= %s",
        update=f"UPDATE {sessions} SET {s['acked_id']} = %s,"
        f" {s['delivered']} = {s['delivered']} + %s WHERE {s['id']} = %s",
    )


def _column(model: Any, name: str) -> str:
    return str(model._meta.get_field(name).column)


_SESSION_COLUMNS = ("id", "last_id", "acked_id", "delivered")
_MESSAGE_COLUMNS = ("session", "seq", "type", "data", "created_at")


def messages_since(message_pk: int) -> list[tuple[int, int, int]]:
    """(message pk, session pk, id) of messages queued after ``message_pk``.

    Only for a process-local channel layer, where another process's send cannot
    reach this process's hub: the hub checks this at a fixed rate while polls
    are held. On SQLite, writes are serialized, so pks appear in commit order.
    """
    # Plain SQL: this runs 20 times a second, and building the query with the
    # ORM costs ten times as much as running it.
    with connection.cursor() as cursor:
        cursor.execute(_messages_since_sql(connection.vendor), [message_pk])
        return [(int(pk), int(session), int(seq)) for pk, session, seq in cursor.fetchall()]


@functools.cache
def _messages_since_sql(vendor: str) -> str:
    quote = connection.ops.quote_name
    fields = (Message._meta.pk, Message._meta.get_field("session"), Message._meta.get_field("seq"))
    columns = [quote(str(getattr(field, "column", None))) for field in fields]
    return (
        f"SELECT {', '.join(columns)} FROM {quote(Message._meta.db_table)}"
        f" WHERE {columns[0]} > %s ORDER BY {columns[0]} LIMIT 10000"
    )


def newest_message_pk() -> int:
    return Message.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def record_client_message(session_pk: int, client_id: str) -> bool:
    """Remember a client message id; False when it was seen within the window."""
    now = timezone.now()
    window_start = now - timedelta(seconds=conf.LONGPOLL_DEDUP_WINDOW)
    ClientMessage.objects.filter(
        session_id=session_pk, client_id=client_id, received_at__lt=window_start
    ).delete()
    try:
        with transaction.atomic():
            ClientMessage.objects.create(
                session_id=session_pk, client_id=client_id, received_at=now
            )
    except IntegrityError:
        return False
    return True


def client_message_seen(session_pk: int, client_id: str) -> bool:
    """True if the id was recorded within the window (its message was handled)."""
    window_start = timezone.now() - timedelta(seconds=conf.LONGPOLL_DEDUP_WINDOW)
    return ClientMessage.objects.filter(
        session_id=session_pk, client_id=client_id, received_at__gte=window_start
    ).exists()


def end_session(session_key: str) -> int | None:
    """Delete a session's record and queue; the pk it had, if any."""
    row = (
        LongpollSession.objects.filter(session_key=session_key).values_list("pk", flat=True).first()
    )
    if row is not None:
        remove_sessions([row])
    return row


def remove_sessions(pks: list[int]) -> int:
    """Delete session records and their queues, keeping their totals for the
    stats; how many records were removed."""
    if not pks:
        return 0
    with transaction.atomic():
        rows = list(
            LongpollSession.objects.select_for_update()
            .filter(pk__in=pks)
            .values_list("pk", "last_id", "delivered", "dropped")
        )
        if not rows:
            return 0
        found = [row[0] for row in rows]
        purge_pending(found)
        LongpollSession.objects.filter(pk__in=found).delete()
        stats.add_counts(
            **{
                stats.SENT: sum(row[1] for row in rows),
                stats.DELIVERED: sum(row[2] for row in rows),
                stats.DROPPED: sum(row[3] for row in rows),
            }
        )
    return len(found)


def purge_pending(pks: list[int]) -> int:
    """Delete the queued messages of these sessions; how many were deleted.

    Counted as discarded, or as expired for those past ``LONGPOLL_RETENTION``.
    """
    return _discard(Message.objects.filter(session_id__in=pks))


def discard_messages(message_pks: list[int]) -> int:
    """Delete these queued messages (the admin's delete), counted as ``purge_pending`` does."""
    return _discard(Message.objects.filter(pk__in=message_pks))


def _discard(messages: QuerySet[Message]) -> int:
    with transaction.atomic():
        expired, _ = messages.filter(created_at__lt=_oldest_kept()).delete()
        discarded, _ = messages.delete()
        stats.add_counts(**{stats.EXPIRED: expired, stats.DISCARDED: discarded})
    return expired + discarded


def rekey(old_key: str, new_key: str) -> int | None:
    """Move a session's record, and with it its queue, to the session's new
    key (``cycle_key``, as at login); the record's pk, or None if it had none.

    The record keeps its pk and ids, so the page's cursor stays valid. Should
    the new key have a record already, its messages are moved behind ours.
    """
    if old_key == new_key:
        return None
    with transaction.atomic():
        row = LongpollSession.objects.select_for_update().filter(session_key=old_key).first()
        if row is None:
            return None
        last_id = row.last_id
        other = LongpollSession.objects.select_for_update().filter(session_key=new_key).first()
        if other is not None:
            moved = list(
                Message.objects.filter(session=other).order_by("seq").values_list("pk", flat=True)
            )
            for pk in moved:
                last_id += 1
                Message.objects.filter(pk=pk).update(session=row, seq=last_id)
            # The moved messages are counted again under this record's last_id.
            stats.add_counts(
                **{
                    stats.SENT: other.last_id - len(moved),
                    stats.DELIVERED: other.delivered,
                    stats.DROPPED: other.dropped,
                }
            )
            other.delete()
        LongpollSession.objects.filter(pk=row.pk).update(
            session_key=new_key, fingerprint=session_fingerprint(new_key), last_id=last_id
        )
    return row.pk


def session_pks(session_keys: list[str]) -> dict[str, int]:
    """The record pk of each key that has one."""
    return dict(
        LongpollSession.objects.filter(session_key__in=session_keys).values_list(
            "session_key", "pk"
        )
    )


def live_session_keys_of(user_pk: Any) -> list[str]:
    """Keys of the sessions of a user that have not expired."""
    rows = LongpollSession.objects.filter(user_id=user_pk).exclude(expires_at__lt=timezone.now())
    return list(rows.values_list("session_key", flat=True))
