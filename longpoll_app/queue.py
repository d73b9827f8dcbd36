"""The durable queue: messages in, batches out, acknowledgements, and the
removal of a session's record with its queue. All synchronous: the async side
calls these through a worker thread, and only when it must.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import IntegrityError, connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from . import counters, sql
from .conf import conf
from .models import ClientMessage, LongpollSession, Message, session_fingerprint
from .sessions import aware, ensure_session_row, wake_group


class Batch(NamedTuple):
    """The answer to a poll: messages after the cursor, the new cursor, and
    whether messages between the old cursor and these were lost."""

    messages: list[dict[str, Any]]
    cursor: int
    gap: bool
    last_id: int


class Queued(NamedTuple):
    """Where a message was queued: enough to wake the polls waiting for it."""

    session_pk: int
    group: str
    seq: int


def oldest_kept(now: datetime | None = None) -> datetime:
    """Messages created before this moment are past ``LONGPOLL_RETENTION``:
    no poll reads them, and retention removes them as expired."""
    return (now or timezone.now()) - timedelta(seconds=conf.LONGPOLL_RETENTION)


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
    reserved = _append_in_one_statement(session_key, messages)
    if reserved is not None:
        pk, last, acked = reserved
        if _over_cap(last - count + 1, last, acked):
            with transaction.atomic():
                _drop_over_cap(pk, last - count + 1, last, acked, never_written=0)
        return Queued(session_pk=pk, group=wake_group(session_key), seq=last)
    with transaction.atomic():
        pk, last, acked = _reserve_ids(session_key, count)
        first = last - count + 1
        # Messages already past the cap when they arrive are never written.
        keep_from = max(first, last - conf.LONGPOLL_MAX_QUEUE + 1)
        _insert_messages(pk, keep_from, messages[keep_from - first :])
        _drop_over_cap(pk, first, last, acked, never_written=keep_from - first)
    return Queued(session_pk=pk, group=wake_group(session_key), seq=last)


def _append_in_one_statement(
    session_key: str, messages: Sequence[tuple[str, Any]]
) -> tuple[int, int, int] | None:
    """On PostgreSQL, outside a transaction, and when no new message is past
    the cap: reserve the ids and insert the messages in one statement, which
    is its own transaction (so the row lock still orders concurrent senders).
    The record's pk, new ``last_id`` and ``acked_id``; None where this does
    not apply or the session has no record yet (nothing was written).

    Inside the caller's transaction the usual path runs, in a savepoint, as
    before: a failing statement must not abort the caller's transaction.
    """
    db = transaction.get_connection()
    count = len(messages)
    if db.vendor != "postgresql" or db.in_atomic_block or count > conf.LONGPOLL_MAX_QUEUE:
        return None
    created_at = sql.fields(Message, "created_at")[0].get_db_prep_save(timezone.now(), db)
    data_field = sql.fields(Message, "data")[0]
    if count == 1:
        ((type_, data),) = messages
        params = [1, session_key, type_, data_field.get_db_prep_save(data, db), created_at]
    else:
        encoder = data_field.encoder  # type: ignore[attr-defined]
        types = [type_ for type_, _ in messages]
        texts = [json.dumps(data, cls=encoder) for _, data in messages]
        params = [count, session_key, count, created_at, types, texts]
    with db.cursor() as cursor:
        cursor.execute(sql.reserve_and_insert(many=count > 1), params)
        row = cursor.fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


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
    fields = sql.fields(Message, *sql.MESSAGE_INSERTED)
    created_at = fields[4].get_db_prep_save(timezone.now(), connection)
    m = sql.Table(Message)
    head = f"INSERT INTO {m.name} ({', '.join(m[name] for name in sql.MESSAGE_INSERTED)}) "
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
    if _over_cap(first, last, acked):
        over_cap = Message.objects.filter(session_id=pk, seq__gt=acked, seq__lte=cutoff)
        deleted, _ = over_cap.delete()
        dropped += deleted
    if dropped:
        LongpollSession.objects.filter(pk=pk).update(dropped=F("dropped") + dropped)


def _over_cap(first: int, last: int, acked: int) -> bool:
    """Whether older rows may be over the cap after messages ``first``..``last``:
    only if some unacknowledged one is at or below the cutoff. Below the cap
    (the usual case) this costs no query."""
    return min(last - conf.LONGPOLL_MAX_QUEUE, first - 1) > acked


def _reserve_ids(session_key: str, count: int) -> tuple[int, int, int]:
    """Bump the session's ``last_id`` by ``count`` (its row lock is taken
    here); the record's pk, new ``last_id`` and ``acked_id``.

    Raises ``LookupError`` for a key that names no live session.
    """
    connection = transaction.get_connection()
    if sql.update_returning_works(connection.vendor):
        # One statement instead of a read, an update and a read again: the
        # ORM's query building was most of a send's cost.
        with connection.cursor() as cursor:
            cursor.execute(sql.reserve_ids(connection.vendor), [count, session_key])
            reserved = cursor.fetchone()
        if reserved is not None:
            return int(reserved[0]), int(reserved[1]), int(reserved[2])
    row = ensure_session_row(session_key)
    updated = LongpollSession.objects.filter(pk=row.pk).update(last_id=F("last_id") + count)
    if not updated:  # the session ended between the two statements
        raise LookupError(f"No live session has the key {session_fingerprint(session_key)!r}.")
    last, acked = LongpollSession.objects.values_list("last_id", "acked_id").get(pk=row.pk)
    return row.pk, last, acked


def read(
    session_pk: int,
    session_key: str,
    cursor: int | None,
    limit: int,
    ids: tuple[int, int] | None = None,
) -> Batch | None:
    """The messages a poll with this cursor should get, or None if the
    session's record is gone or has another key now (rotated at login).

    A ``cursor`` of None is a fresh page: it gets everything not yet
    acknowledged. A cursor above ``last_id`` comes from an earlier record of
    the session (ids restarted): it gets everything pending, flagged as a gap.
    ``ids`` is the record's ``(last_id, acked_id)`` when the caller just read it
    by this key.
    """
    # Plain SQL: a woken poll runs this for every message it delivers, and
    # building these two queries with the ORM costs several times running them.
    if ids is None:
        with connection.cursor() as db:
            db.execute(sql.read(connection.vendor).ids, [session_pk, session_key])
            ids = db.fetchone()
        if ids is None:
            return None
    empty = empty_batch(cursor, ids)
    if empty is not None:
        return empty
    last_id, acked_id = ids
    restarted = cursor is not None and cursor > last_id
    after = acked_id if cursor is None or restarted else cursor
    kept = connection.ops.adapt_datetimefield_value(oldest_kept())
    with connection.cursor() as db:
        db.execute(sql.read(connection.vendor).messages, [session_pk, after, kept, limit])
        rows = db.fetchall()
    messages = [
        {"id": seq, "type": type_, "data": None if data is None else json.loads(data)}
        for seq, type_, data, _ in rows
    ]
    counters.record_latencies((aware(row[3]) for row in rows), timezone.now())
    if rows:
        new_cursor = rows[-1][0]
        missed = rows[0][0] > after + 1
    else:
        new_cursor = last_id
        missed = last_id > after
    gap = restarted or (cursor is not None and missed)
    return Batch(messages=messages, cursor=new_cursor, gap=gap, last_id=last_id)


def empty_batch(cursor: int | None, ids: tuple[int, int]) -> Batch | None:
    """What ``read`` answers, with no query, when the record's ``(last_id,
    acked_id)`` alone show that a poll with this cursor has nothing to read;
    None when it may have something."""
    if not nothing_after(cursor, ids):
        return None
    last_id, _ = ids
    restarted = cursor is not None and cursor > last_id
    return Batch(messages=[], cursor=last_id, gap=restarted, last_id=last_id)


def nothing_after(cursor: int | None, ids: tuple[int, int]) -> bool:
    """True when a poll with this cursor has nothing to read, by the record's
    ``(last_id, acked_id)`` alone; ``read`` then makes no query."""
    last_id, acked_id = ids
    after = acked_id if cursor is None or cursor > last_id else cursor
    return after >= last_id


def acknowledge(cursors: dict[tuple[int, str], int]) -> None:
    """Delete what each session acknowledged, in one transaction for the lot.

    ``cursors`` is keyed by (record pk, session key): a cursor counts only
    while the record still has that key, so a key rotated at login, or ended,
    acknowledges nothing, whichever process it reaches.

    Polls hand their cursors to the hub, which calls this in batches, so a busy
    server does not pay a delete per poll. ``delivered`` counts the rows this
    deletes: ids that were dropped or expired, and rows a concurrent
    acknowledgement already deleted, are not counted. Rows that expired before
    they were read stay for retention, which counts them as expired.
    """
    kept = connection.ops.adapt_datetimefield_value(oldest_kept())
    statements = sql.acknowledge(connection.vendor)
    by_pk: dict[int, list[tuple[str, int]]] = {}
    for (pk, key), acked in cursors.items():
        by_pk.setdefault(pk, []).append((key, acked))
    pks = sorted(by_pk)  # one lock order for every process
    # Plain SQL, as in read(): the ORM's query building was most of the cost.
    with transaction.atomic(), connection.cursor() as db:
        for chunk in sql.chunks(pks):
            db.execute(statements.lock.replace("(?)", sql.in_list(len(chunk))), chunk)
            for session_pk, key, acked_id, last_id in db.fetchall():
                cursor = max((c for k, c in by_pk[session_pk] if k == key), default=None)
                if cursor is None or not acked_id < cursor <= last_id:
                    continue  # another key's, already acknowledged, or from an earlier record
                db.execute(statements.delete, [session_pk, acked_id, cursor, kept])
                db.execute(statements.update, [cursor, max(db.rowcount, 0), session_pk])


def messages_since(message_pk: int) -> list[tuple[int, int, int]]:
    """(message pk, session pk, id) of messages queued after ``message_pk``.

    Only for a process-local channel layer, where another process's send cannot
    reach this process's hub: the hub checks this at a fixed rate while polls
    are held. On SQLite, writes are serialized, so pks appear in commit order.
    """
    # Plain SQL: this runs 20 times a second, and building the query with the
    # ORM costs ten times as much as running it.
    with connection.cursor() as cursor:
        cursor.execute(sql.messages_since(connection.vendor), [message_pk])
        return [(int(pk), int(session), int(seq)) for pk, session, seq in cursor.fetchall()]


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
        counters.add_counts(
            **{
                counters.SENT: sum(row[1] for row in rows),
                counters.DELIVERED: sum(row[2] for row in rows),
                counters.DROPPED: sum(row[3] for row in rows),
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
        expired, _ = messages.filter(created_at__lt=oldest_kept()).delete()
        discarded, _ = messages.delete()
        counters.add_counts(**{counters.EXPIRED: expired, counters.DISCARDED: discarded})
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
            counters.add_counts(
                **{
                    counters.SENT: other.last_id - len(moved),
                    counters.DELIVERED: other.delivered,
                    counters.DROPPED: other.dropped,
                }
            )
            other.delete()
        LongpollSession.objects.filter(pk=row.pk).update(
            session_key=new_key, fingerprint=session_fingerprint(new_key), last_id=last_id
        )
    return row.pk
