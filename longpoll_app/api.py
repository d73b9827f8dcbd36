"""Sending messages to browsers: the functions views and commands call."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends.base import SessionBase
from django.db import transaction
from django.http import HttpRequest

from . import outbox, process, queue, sessions, transports
from .follows import END, END_KEY, RELEASE, WAKE
from .layers import has_shared_layer, shared_layer
from .protocol import check_data, validate_type
from .transports import doorbell, orders

SessionLike = str | SessionBase | HttpRequest


class Recorder(Protocol):
    """What ``longpoll_app.testing.capture_messages`` installs in ``recorders``."""

    deliver: bool

    def to_session(self, session_key: str, type: str, data: Any) -> int: ...

    def to_user(self, user_pk: Any, type: str, data: Any) -> int: ...


# Active captures, innermost last. While there is one, sends are recorded and,
# unless it says deliver, neither stored nor woken.
recorders: list[Recorder] = []

T = TypeVar("T")


def _recorded(record: Callable[[Recorder], T]) -> T | None:
    """Let every active capture record a send: what the innermost returned if
    it keeps the send from being delivered, else None (deliver it)."""
    result = None
    for recorder in list(recorders):
        result = record(recorder)
    if recorders and not recorders[-1].deliver:
        return result
    return None


def send_to_session(session: SessionLike, type: str, data: Any = None) -> int:
    """Queue a message for one browser session and wake its held poll.

    ``session`` is a session key, a ``SessionBase`` or a request (whose session
    is saved first if it has no key yet). ``data`` must be JSON-serializable.
    Returns the message's id within the session. Inside ``transaction.atomic()``
    the message becomes visible, and the poll wakes, only when the transaction
    commits. Raises ``LookupError`` for a key that names no live session.
    """
    validate_type(type)
    _check_serializable(type, data)
    key = session_key_of(session)
    fake_id = _recorded(lambda recorder: recorder.to_session(key, type, data))
    if fake_id is not None:
        return fake_id
    queued = queue.append(key, type, data)
    wake_on_commit(queued)
    return queued.seq


def send_many_to_session(session: SessionLike, messages: Iterable[tuple[str, Any]]) -> list[int]:
    """``send_to_session`` for many messages at once: their ids, in order.

    ``messages`` holds ``(type, data)`` pairs. All are checked before any is
    queued (a bad one raises as ``send_to_session`` would, naming its index);
    then they are queued in one transaction and the poll is woken once.
    """
    items = _checked_messages(messages)
    key = session_key_of(session)
    fake_ids = _recorded(lambda recorder: [recorder.to_session(key, *item) for item in items])
    if fake_ids is not None:
        return fake_ids
    if not items:
        return []
    queued = queue.append_many(key, items)
    wake_on_commit(queued)
    return list(range(queued.seq - len(items) + 1, queued.seq + 1))


def _checked_messages(messages: Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    items = list(messages)
    for index, item in enumerate(items):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TypeError(f"messages[{index}] must be a (type, data) pair, not {item!r}.")
        try:
            validate_type(item[0])
            _check_serializable(item[0], item[1])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"messages[{index}]: {exc}") from None
    return [(type_, data) for type_, data in items]


def send_to_user(user: Any, type: str, data: Any = None) -> int:
    """Queue a message for every live session of ``user`` (a user or its pk).

    Returns how many sessions it was queued for.
    """
    validate_type(type)
    _check_serializable(type, data)
    user_pk = getattr(user, "pk", user)
    count = _recorded(lambda recorder: recorder.to_user(user_pk, type, data))
    if count is not None:
        return count
    keys = sessions.live_session_keys_of(user_pk)
    sent = 0
    for key in keys:
        try:
            queued = queue.append(key, type, data)
        except LookupError:  # the session ended since the list was read
            continue
        wake_on_commit(queued)
        sent += 1
    return sent


async def asend_to_session(session: SessionLike, type: str, data: Any = None) -> int:
    """``send_to_session`` for async code."""
    return await sync_to_async(send_to_session)(session, type, data)


async def asend_many_to_session(
    session: SessionLike, messages: Iterable[tuple[str, Any]]
) -> list[int]:
    """``send_many_to_session`` for async code."""
    return await sync_to_async(send_many_to_session)(session, messages)


async def asend_to_user(user: Any, type: str, data: Any = None) -> int:
    """``send_to_user`` for async code."""
    return await sync_to_async(send_to_user)(user, type, data)


def end_session(session_key: str) -> None:
    """Forget a session's queue and answer its held polls (it logged out or ended)."""
    pk = queue.end_session(session_key)
    if pk is None:
        return
    _tell_hubs(sessions.wake_group(session_key), {"type": END, "pk": pk})


def release_polls(session_pk: int, session_key: str) -> None:
    """Answer the session's held polls now, empty, as if their hold had run
    out; its queue stays, and the browser polls again at once (the admin's action)."""
    _tell_hubs(sessions.wake_group(session_key), {"type": RELEASE, "pk": session_pk})


def rekey_session(old_key: str, new_key: str) -> int | None:
    """The session's key changed (``cycle_key``, as at login): move its record
    and queue to the new key, and answer the polls held with the old key
    (with 403: the old key no longer names a session), so that the page polls
    again with its new cookie. The record's pk, or None if it had none."""
    pk = queue.rekey(old_key, new_key)
    if pk is not None:
        group = sessions.wake_group(old_key)

        def end_old_polls() -> None:
            _tell_hubs(group, {"type": END_KEY, "group": group, "pk": pk})

        transaction.on_commit(end_old_polls)
    return pk


def session_key_of(session: SessionLike) -> str:
    """The key of a session given as a key, a ``SessionBase`` or a request."""
    if isinstance(session, HttpRequest):
        session = session.session
    if isinstance(session, SessionBase):
        if session.session_key is None:
            session.save()
            session.modified = True  # so SessionMiddleware sends the new cookie
        key = session.session_key
        assert key is not None
        return key
    if isinstance(session, str) and session:
        return session
    raise TypeError(f"session must be a session key, a SessionBase or a request, not {session!r}.")


class _Wakes:
    """The wake-ups one transaction owes, sent when it commits: one per
    session, carrying the highest id queued for it.

    A burst of sends in one ``transaction.atomic()`` would otherwise wake each
    session once per message, and each wake is a channel-layer round trip.
    """

    def __init__(self, savepoints: set[str | None]) -> None:
        self.savepoints = savepoints  # those open when registered: they share its fate
        self.latest: dict[int, queue.Queued] = {}

    def add(self, queued: queue.Queued) -> None:
        known = self.latest.get(queued.session_pk)
        if known is None or known.seq < queued.seq:
            self.latest[queued.session_pk] = queued

    def __call__(self) -> None:
        for queued in self.latest.values():
            wake(queued)


def wake_on_commit(queued: queue.Queued) -> None:
    """Wake the session's polls now, or when the transaction around commits.

    Within a transaction, consecutive sends join the last registered ``_Wakes``
    when it is still pending and was registered under the same savepoints: then
    a rollback to a savepoint discards both or neither, so the wake never
    carries an id that was rolled back. Otherwise a new one is registered.
    """
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        wake(queued)
        return
    savepoints = set(connection.savepoint_ids)
    pending = connection.run_on_commit
    last = pending[-1][1] if pending else None
    if isinstance(last, _Wakes) and last.savepoints == savepoints:
        last.add(queued)
        return
    wakes = _Wakes(savepoints)
    wakes.add(queued)
    transaction.on_commit(wakes)


def wake(queued: queue.Queued) -> None:
    """Wake the polls held for a session, in this process and in every other."""
    # Idempotent (a hub ignores an id it knows), so this process's hubs are told
    # at once, and again through the transport, which reaches every other process.
    order = {"type": WAKE, "pk": queued.session_pk, "last_id": queued.seq}
    _tell_local_hubs(order)
    _tell_other_processes(queued.group, order, wait=False)


RUNTIME = f"{__package__}.runtime"


def _tell_local_hubs(order: dict[str, Any]) -> None:
    # Hubs are made by ``runtime`` only: where it was never imported there is
    # none, and a process that only sends (a command, a worker) need not import
    # the poll-serving side to find that out.
    if RUNTIME not in sys.modules:
        return
    from .runtime import running_hubs

    for hub in running_hubs():
        with contextlib.suppress(RuntimeError):  # that loop closed since it was listed
            hub.loop.call_soon_threadsafe(hub.dispatch, order)


def _tell_other_processes(group: str, order: dict[str, Any], wait: bool = True) -> bool:
    """Send an order the way the hubs listen (``LONGPOLL_TRANSPORT``), which
    reaches this process's hubs too; True if it was taken. The store watcher
    needs nothing sent, as it finds the message in the store; its doorbell
    makes it look at once.

    A WAKE need not be waited for (``wait=False``): through the layer it goes
    out from the send loop (``outbox``), and True says only that it will.
    """
    kind = transports.chosen(has_shared_layer())
    if kind == transports.POSTGRES:
        return _notify(order)
    if kind == transports.LAYER:
        if not wait:
            outbox.put(group, order)
            return True
        return _group_send(group, order)
    doorbell.ring()  # the watchers on this machine look at the store at once
    return False


def _group_send(group: str, message: dict[str, Any]) -> bool:
    """Send through the shared layer and wait; True if it took the message."""
    layer = shared_layer()
    if layer is None:
        return False
    try:
        process.run_in_send_loop(layer.group_send(group, message))
    except Exception as exc:
        outbox.note_failure(group, exc)
        return False
    outbox.note_success()
    return True


NOTIFY_SQL = "SELECT pg_notify(%s, %s)"


def _notify(order: dict[str, Any]) -> bool:
    """NOTIFY every hub listening on the database; True if it took the order.

    Inside a transaction, at its commit: as a NOTIFY would, it tells of nothing
    that was rolled back. Run on its own (after the commit), so that a failing
    NOTIFY cannot abort the caller's transaction: the message is stored anyway.
    """
    if transaction.get_connection().in_atomic_block:

        def at_commit() -> None:
            if not _notify_now(order):
                _tell_local_hubs(order)  # as _tell_hubs would have, had it not waited

        transaction.on_commit(at_commit)
        return True
    return _notify_now(order)


def _notify_now(order: dict[str, Any]) -> bool:
    try:
        with transaction.get_connection().cursor() as cursor:
            cursor.execute(NOTIFY_SQL, [orders.CHANNEL, orders.encode(order)])
    except Exception as exc:
        outbox.note_failure(orders.CHANNEL, exc, via="PostgreSQL NOTIFY")
        return False
    outbox.note_success()
    return True


def _tell_hubs(group: str, order: dict[str, Any]) -> None:
    """Deliver an order (end, release) to every hub exactly once.

    Through the transport when it carries orders: it reaches this process's
    hub too, and calling that hub directly as well would let the late copy hit
    the poll the browser made in answer to the first. Directly when the
    transport is the store watcher, or it is down.
    """
    if not _tell_other_processes(group, order):
        _tell_local_hubs(order)


def _check_serializable(message_type: str, data: Any) -> None:
    check_data(data, where=f"Data for message type {message_type!r}")
