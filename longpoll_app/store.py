"""The durable queue: every database read and write of the app, all synchronous.

The async side (``hub``, ``consumers``) calls these through a worker thread and
only when it must: a poll that the hub knows has nothing new touches none of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY as AUTH_USER_ID_KEY
from django.contrib.sessions.backends.base import SessionBase
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
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
    session.load()
    # Every server-side backend forgets the key when it finds no live session.
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


def verify_session(
    session_key: str, ip_address: str | None = None, user_agent: str = ""
) -> SessionRecord | None:
    """Check that the key names a live session and record that it polls.

    Returns None for a forged, expired or ended session, and then writes nothing.
    """
    session = load_live_session(session_key)
    if session is None:
        return None
    user_id = session.get(AUTH_USER_ID_KEY)
    # Written when the hub re-checks the session, not on every poll.
    fields = {
        "user_id": _user_pk(user_id),
        "expires_at": session.get_expiry_date(),
        "ip_address": ip_address,
        "user_agent": user_agent[:255],
        "last_poll": timezone.now(),
    }
    row, _ = LongpollSession.objects.update_or_create(
        session_key=session_key,
        defaults=fields,
        create_defaults={**fields, "fingerprint": session_fingerprint(session_key)},
    )
    return SessionRecord(pk=row.pk, last_id=row.last_id, acked_id=row.acked_id)


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
    """Queue one message for a session and return its id.

    Bumping ``last_id`` first takes the session row's write lock until the
    transaction ends, so two senders to one session commit in id order: a poll
    can never see id 11 and later find that id 10 appeared behind its cursor.
    """
    with transaction.atomic():
        row = ensure_session_row(session_key)
        LongpollSession.objects.filter(pk=row.pk).update(last_id=F("last_id") + 1)
        seq = LongpollSession.objects.values_list("last_id", flat=True).get(pk=row.pk)
        Message.objects.create(
            session_id=row.pk, seq=seq, type=type, data=data, created_at=timezone.now()
        )
        cap = conf.LONGPOLL_MAX_QUEUE
        if seq > cap:
            dropped, _ = Message.objects.filter(session_id=row.pk, seq__lte=seq - cap).delete()
            if dropped:
                LongpollSession.objects.filter(pk=row.pk).update(dropped=F("dropped") + dropped)
    return Queued(session_pk=row.pk, group=wake_group(session_key), seq=seq)


def read(session_pk: int, cursor: int | None, limit: int) -> Batch | None:
    """The messages a poll with this cursor should get, or None if the
    session's record is gone.

    A ``cursor`` of None is a fresh page: it gets everything not yet
    acknowledged. A cursor above ``last_id`` comes from an earlier record of
    the session (ids restarted): it gets everything pending, flagged as a gap.
    """
    ids = LongpollSession.objects.filter(pk=session_pk).values_list("last_id", "acked_id").first()
    if ids is None:
        return None
    last_id, acked_id = ids
    restarted = cursor is not None and cursor > last_id
    after = acked_id if cursor is None or restarted else cursor
    rows = list(
        Message.objects.filter(session_id=session_pk, seq__gt=after, created_at__gte=_oldest_kept())
        .order_by("seq")
        .values_list("seq", "type", "data", "created_at")[:limit]
    )
    messages = [{"id": seq, "type": type_, "data": data} for seq, type_, data, _ in rows]
    stats.record_latencies((row[3] for row in rows), timezone.now())
    if rows:
        new_cursor = rows[-1][0]
        missed = rows[0][0] > after + 1
    else:
        new_cursor = last_id
        missed = last_id > after
    gap = restarted or (cursor is not None and missed)
    return Batch(messages=messages, cursor=new_cursor, gap=gap, last_id=last_id)


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
    kept_since = _oldest_kept()
    with transaction.atomic():
        for session_pk, cursor in sorted(cursors.items()):  # one lock order for every process
            delivered, _ = Message.objects.filter(
                session_id=session_pk,
                seq__lte=cursor,
                seq__gt=F("session__acked_id"),
                session__last_id__gte=cursor,
                created_at__gte=kept_since,
            ).delete()
            LongpollSession.objects.filter(
                pk=session_pk, acked_id__lt=cursor, last_id__gte=cursor
            ).update(delivered=F("delivered") + delivered, acked_id=cursor)


def messages_since(message_pk: int) -> list[tuple[int, int, int]]:
    """(message pk, session pk, id) of messages queued after ``message_pk``.

    Only for a process-local channel layer, where another process's send cannot
    reach this process's hub: the hub checks this at a fixed rate while polls
    are held. On SQLite, writes are serialized, so pks appear in commit order.
    """
    return list(
        Message.objects.filter(pk__gt=message_pk)
        .order_by("pk")
        .values_list("pk", "session_id", "seq")[:10_000]
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


def forget_client_message(session_pk: int, client_id: str) -> None:
    """Undo ``record_client_message`` after a handler failed, so a retry runs it."""
    ClientMessage.objects.filter(session_id=session_pk, client_id=client_id).delete()


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
