"""Sending messages to browsers: the functions views and commands call."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends.base import SessionBase
from django.db import transaction
from django.http import HttpRequest

from . import store
from .hub import Hub, shared_layer
from .protocol import validate_type

log = logging.getLogger("longpoll_app")

SessionLike = str | SessionBase | HttpRequest


class Recorder(Protocol):
    """What ``longpoll_app.testing.capture_messages`` installs in ``recorders``."""

    deliver: bool

    def to_session(self, session_key: str, type: str, data: Any) -> int: ...

    def to_user(self, user_pk: Any, type: str, data: Any) -> int: ...


# Active captures, innermost last. While there is one, sends are recorded and,
# unless it says deliver, neither stored nor woken.
recorders: list[Recorder] = []


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
    if recorders:
        fake_id = 0
        for recorder in list(recorders):
            fake_id = recorder.to_session(key, type, data)
        if not recorders[-1].deliver:
            return fake_id
    queued = store.append(key, type, data)
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
    if recorders:
        fake_ids: list[int] = []
        for recorder in list(recorders):
            fake_ids = [recorder.to_session(key, type_, data) for type_, data in items]
        if not recorders[-1].deliver:
            return fake_ids
    if not items:
        return []
    queued = store.append_many(key, items)
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
    if recorders:
        count = 0
        for recorder in list(recorders):
            count = recorder.to_user(user_pk, type, data)
        if not recorders[-1].deliver:
            return count
    keys = store.live_session_keys_of(user_pk)
    sent = 0
    for key in keys:
        try:
            queued = store.append(key, type, data)
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
    pk = store.end_session(session_key)
    if pk is None:
        return
    _tell_hubs(store.wake_group(session_key), {"type": "longpoll.end", "pk": pk}, "end", pk)


def release_session(session_key: str) -> bool:
    """Answer the session's held polls now, empty, as if their hold had run
    out; its queue stays. The browser polls again at once. False if the key
    has no record."""
    pk = store.session_pks([session_key]).get(session_key)
    if pk is None:
        return False
    release_polls(pk, session_key)
    return True


def release_polls(session_pk: int, session_key: str) -> None:
    """``release_session`` for a record already read (the admin's action)."""
    message = {"type": "longpoll.release", "pk": session_pk}
    _tell_hubs(store.wake_group(session_key), message, "release", session_pk)


def rekey_session(old_key: str, new_key: str) -> int | None:
    """The session's key changed (``cycle_key``, as at login): move its record
    and queue to the new key, and answer the polls held with the old key
    (with 403: the old key no longer names a session), so that the page polls
    again with its new cookie. The record's pk, or None if it had none."""
    pk = store.rekey(old_key, new_key)
    if pk is not None:
        group = store.wake_group(old_key)

        def end_old_polls() -> None:
            message = {"type": "longpoll.end_key", "group": group, "pk": pk}
            _tell_hubs(group, message, "end_key", group, pk)

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
        self.latest: dict[int, store.Queued] = {}

    def add(self, queued: store.Queued) -> None:
        known = self.latest.get(queued.session_pk)
        if known is None or known.seq < queued.seq:
            self.latest[queued.session_pk] = queued

    def __call__(self) -> None:
        for queued in self.latest.values():
            wake(queued)


def wake_on_commit(queued: store.Queued) -> None:
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


def wake(queued: store.Queued) -> None:
    """Wake the polls held for a session, in this process and in every other."""
    for hub in Hub.running():
        _call_in_loop(hub, hub.wake, queued.session_pk, queued.seq)
    _group_send(
        queued.group, {"type": "longpoll.wake", "pk": queued.session_pk, "last_id": queued.seq}
    )


def _call_in_loop(hub: Hub, fn: Any, *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # that loop closed since it was listed
        hub.loop.call_soon_threadsafe(fn, *args)


# True from a failed group_send to the next one that works: an outage is
# logged once, not once per message sent during it.
_layer_failing = False

LAYER_SEND_TIMEOUT = 5.0  # seconds a sync caller waits for the layer to take a message
EXIT_DRAIN_TIMEOUT = 2.0  # seconds process exit waits for sends still in flight


class _SendLoop:
    """One event loop, in a daemon thread, for every sync-side layer send of the process.

    Why: channels-redis keeps its connections per event loop, and
    ``async_to_sync`` called from a plain thread runs each call in a new loop,
    so every send opened (and closed) a Redis connection, ~2 ms of a ~5 ms
    ``send_to_session``. On one long-lived loop the connections stay open.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child cannot use its parent's thread or sockets
        self.loop = asyncio.new_event_loop()
        # Daemon: it must not keep the process alive. Nothing is lost at exit:
        # every caller waits for its send, and _drain_at_exit for any in flight.
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="longpoll-layer-sends", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop; raise what it raises (or TimeoutError)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # only code on this very loop could call; waiting would deadlock
            coro.close()
            raise RuntimeError("a layer send cannot wait on its own loop")
        # Blocking is safe from any other thread, even one that runs a loop of
        # its own (sync code called from async code): the send does not need that loop.
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            future.result(LAYER_SEND_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"the channel layer did not answer within {LAYER_SEND_TIMEOUT} s"
            ) from None

    def drain(self) -> None:
        """Let sends in flight finish (bounded), then stop and close the loop,
        which also closes channels-redis's connections of this loop."""

        async def pending() -> None:
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            if tasks:
                await asyncio.wait(tasks, timeout=EXIT_DRAIN_TIMEOUT)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(pending(), self.loop).result(EXIT_DRAIN_TIMEOUT + 1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(EXIT_DRAIN_TIMEOUT)
        if not self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.loop.close()


_send_loop: _SendLoop | None = None
_send_loop_lock = threading.Lock()


def _loop_for_sends() -> _SendLoop:
    """The process's send loop, started on first use and again after a fork."""
    global _send_loop
    current = _send_loop
    if current is not None and current.pid == os.getpid():
        return current
    with _send_loop_lock:
        if _send_loop is None or _send_loop.pid != os.getpid():
            _send_loop = _SendLoop()
        return _send_loop


def _after_fork_in_child() -> None:
    # The lock may have been held by another thread at the fork: that thread
    # does not exist in the child, so the lock would stay taken forever.
    global _send_loop_lock
    _send_loop_lock = threading.Lock()


@atexit.register
def _drain_at_exit() -> None:
    current = _send_loop
    if current is not None and current.pid == os.getpid():
        current.drain()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _group_send(group: str, message: dict[str, Any]) -> bool:
    """Send through the shared layer; True if it took the message."""
    global _layer_failing
    layer = shared_layer()
    if layer is None:
        return False
    try:
        _loop_for_sends().run(layer.group_send(group, message))
    except Exception as exc:
        _note_layer_failure(group, exc)
        return False
    _layer_failing = False
    return True


def _note_layer_failure(group: str, exc: BaseException) -> None:
    # The message is safe in the store; the next poll of the session reads it.
    global _layer_failing
    level = logging.DEBUG if _layer_failing else logging.WARNING
    _layer_failing = True
    log.log(
        level,
        "longpoll: could not wake %s through the channel layer: %s "
        "(logged once until the layer answers again)",
        group,
        exc,
    )


def _tell_hubs(group: str, message: dict[str, Any], method: str, *args: Any) -> None:
    """Deliver an order (end, release) to every hub exactly once.

    Through the shared layer when there is one: it reaches this process's hub
    too, and calling that hub directly as well would let the late copy from the
    layer hit the poll the browser made in answer to the first. Directly when
    there is no shared layer, or it is down.
    """
    if _group_send(group, message):
        return
    for hub in Hub.running():
        _call_in_loop(hub, getattr(hub, method), *args)


def _check_serializable(message_type: str, data: Any) -> None:
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"Data for message type {message_type!r} is not JSON-serializable: {exc}"
        ) from None
