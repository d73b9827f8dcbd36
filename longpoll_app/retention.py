"""Retention: removing what is no longer needed, in small index-backed batches.

Every step selects at most ``batch`` rows through an index (``created_at``,
``received_at``, ``expires_at``, or primary-key ranges), deletes exactly those
rows, and returns; no statement ever covers a whole table. Two callers:

* ``manage.py longpoll_purge`` (for cron) repeats each step until nothing is
  left;
* every server process runs one step of each kind every
  ``LONGPOLL_CLEANUP_INTERVAL`` seconds (``cleanup_loop``), and again soon
  after while a step still finds a full batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Model
from django.utils import timezone

from . import counters, queue, sessions
from .conf import conf
from .models import ClientMessage, HubReport, LongpollSession, Message
from .threads import run_in_thread

log = logging.getLogger("longpoll_app")

REPORT_KEEP = 3600.0  # seconds the report of a stopped process is kept
SOON = 5.0  # seconds before the next automatic step while there is a backlog


@dataclass
class Purged:
    """What one pass removed, by kind."""

    expired: int = 0  # messages older than LONGPOLL_RETENTION, never acknowledged
    acknowledged: int = 0  # acknowledged messages left behind
    client_ids: int = 0  # client message ids older than LONGPOLL_DEDUP_WINDOW
    sessions: int = 0  # records of sessions that ended or expired
    reports: int = 0  # reports of server processes that stopped
    backlog: bool = False  # some step found a full batch: more may be left


@dataclass
class Walk:
    """Where an automatic clean-up's walks over the session records are."""

    acknowledged_after: int = 0
    sessions_after: int = 0


def _older_first(model: type[Model], field: str, cutoff: datetime, batch: int) -> list[int]:
    """The pks of up to ``batch`` rows whose ``field`` is before ``cutoff``,
    oldest first: one step through the index on ``field``."""
    rows = model._default_manager.filter(**{f"{field}__lt": cutoff}).order_by(field)
    return list(rows.values_list("pk", flat=True)[:batch])


def purge_expired_messages(batch: int) -> tuple[int, bool]:
    """Delete up to ``batch`` messages past ``LONGPOLL_RETENTION`` (index on ``created_at``)."""
    cutoff = queue.oldest_kept()
    pks = _older_first(Message, "created_at", cutoff, batch)
    if not pks:
        return 0, False
    with transaction.atomic():
        removed, _ = Message.objects.filter(pk__in=pks, created_at__lt=cutoff).delete()
        counters.add_counts(**{counters.EXPIRED: removed})
    return removed, len(pks) == batch


def purge_acknowledged(after_pk: int, batch: int) -> tuple[int, int | None]:
    """Delete acknowledged messages still stored, for the next ``batch``
    sessions after ``after_pk`` (through the ``(session, seq)`` index).

    Returns the count and where to go on (None: the walk reached the end).
    """
    session_pks = list(
        LongpollSession.objects.filter(pk__gt=after_pk)
        .order_by("pk")
        .values_list("pk", flat=True)[:batch]
    )
    if not session_pks:
        return 0, None
    pks = list(
        Message.objects.filter(session_id__in=session_pks, seq__lte=F("session__acked_id"))
        .order_by()
        .values_list("pk", flat=True)[:batch]
    )
    removed = 0
    if pks:
        with transaction.atomic():
            removed, _ = Message.objects.filter(
                pk__in=pks, seq__lte=F("session__acked_id")
            ).delete()
            counters.add_counts(**{counters.DELIVERED: removed})
    if len(pks) == batch:
        return removed, after_pk  # these sessions may have more: same range again
    return removed, session_pks[-1] if len(session_pks) == batch else None


def purge_client_ids(batch: int) -> tuple[int, bool]:
    """Forget up to ``batch`` client message ids past ``LONGPOLL_DEDUP_WINDOW``."""
    cutoff = timezone.now() - timedelta(seconds=conf.LONGPOLL_DEDUP_WINDOW)
    pks = _older_first(ClientMessage, "received_at", cutoff, batch)
    if not pks:
        return 0, False
    removed, _ = ClientMessage.objects.filter(pk__in=pks, received_at__lt=cutoff).delete()
    return removed, len(pks) == batch


def _remove_dead(rows: list[tuple[int, str]], refresh: bool = False) -> int:
    """Remove the records among ``rows`` (pk, key) whose session is not live;
    with ``refresh``, note the real expiry of the others (whose stored expiry
    passed: the session was extended since)."""
    live = sessions.live_expiries([key for _, key in rows])
    if refresh:
        for pk, key in rows:
            if key in live:
                LongpollSession.objects.filter(pk=pk, session_key=key).update(expires_at=live[key])
    return queue.remove_sessions([pk for pk, key in rows if key not in live])


def purge_expired_sessions(batch: int) -> tuple[int, bool]:
    """Remove up to ``batch`` records whose session expired (index on ``expires_at``).

    A record whose session was extended since gets its new expiry instead.
    """
    rows = list(
        LongpollSession.objects.filter(expires_at__lt=timezone.now())
        .order_by("expires_at")
        .values_list("pk", "session_key")[:batch]
    )
    if not rows:
        return 0, False
    return _remove_dead(rows, refresh=True), len(rows) == batch


def purge_dead_sessions(after_pk: int, batch: int) -> tuple[int, int | None]:
    """Remove the records, among the next ``batch`` after ``after_pk``, whose
    session no longer exists (deleted without a signal: a cache engine, a raw
    delete). Returns the count and where to go on (None: the end)."""
    rows = list(
        LongpollSession.objects.filter(pk__gt=after_pk)
        .order_by("pk")
        .values_list("pk", "session_key")[:batch]
    )
    if not rows:
        return 0, None
    return _remove_dead(rows), rows[-1][0] if len(rows) == batch else None


def purge_reports(batch: int) -> int:
    """Delete the reports of server processes that stopped long ago."""
    keep = max(REPORT_KEEP, 10 * conf.LONGPOLL_STATUS_INTERVAL)
    pks = _older_first(HubReport, "updated_at", timezone.now() - timedelta(seconds=keep), batch)
    if not pks:
        return 0
    removed, by_model = HubReport.objects.filter(pk__in=pks).delete()
    return by_model.get(HubReport._meta.label, removed)


def step(walk: Walk, batch: int) -> Purged:
    """One bounded batch of each kind; ``walk`` remembers where the walks are
    and starts them again from the first record when they reach the end."""
    done = Purged()
    done.expired, more_expired = purge_expired_messages(batch)
    done.acknowledged, ack_next = purge_acknowledged(walk.acknowledged_after, batch)
    walk.acknowledged_after = ack_next or 0
    done.client_ids, more_ids = purge_client_ids(batch)
    expired_sessions, more_sessions = purge_expired_sessions(batch)
    dead_sessions, sessions_next = purge_dead_sessions(walk.sessions_after, batch)
    walk.sessions_after = sessions_next or 0
    done.sessions = expired_sessions + dead_sessions
    done.reports = purge_reports(batch)
    done.backlog = more_expired or more_ids or more_sessions
    return done


def purge_all(batch: int) -> Purged:
    """Everything, batch after batch, until each kind is done: ``longpoll_purge``."""
    total = Purged()
    more = True
    while more:
        removed, more = purge_expired_messages(batch)
        total.expired += removed
    after: int | None = 0
    while after is not None:
        removed, after = purge_acknowledged(after, batch)
        total.acknowledged += removed
    more = True
    while more:
        removed, more = purge_client_ids(batch)
        total.client_ids += removed
    more = True
    while more:
        removed, more = purge_expired_sessions(batch)
        total.sessions += removed
    after = 0
    while after is not None:
        removed, after = purge_dead_sessions(after, batch)
        total.sessions += removed
    while removed := purge_reports(batch):
        total.reports += removed
    return total


async def cleanup_loop() -> None:
    """A server process's automatic clean-up: one step every interval, sooner
    while there is a backlog. Does nothing when the interval is 0."""
    walk = Walk()
    interval = conf.LONGPOLL_CLEANUP_INTERVAL
    if interval <= 0:
        return
    # Processes started together spread their clean-ups over the interval.
    await asyncio.sleep(interval * random.uniform(0.5, 1.0))
    while True:
        delay = interval
        try:
            done = await run_in_thread(step)(walk, conf.LONGPOLL_CLEANUP_BATCH)
            if done.backlog:
                delay = min(interval, SOON)
            log.debug("longpoll: automatic clean-up: %s", done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("longpoll: automatic clean-up failed: %s", exc)
        await asyncio.sleep(delay)
        interval = conf.LONGPOLL_CLEANUP_INTERVAL or interval
