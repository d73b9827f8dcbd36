"""Sending messages to browsers: the functions views and commands call."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, Protocol

from asgiref.sync import async_to_sync, sync_to_async
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
    transaction.on_commit(lambda: wake(queued))
    return queued.seq


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
        transaction.on_commit(lambda queued=queued: wake(queued))  # type: ignore[misc]
        sent += 1
    return sent


async def asend_to_session(session: SessionLike, type: str, data: Any = None) -> int:
    """``send_to_session`` for async code."""
    return await sync_to_async(send_to_session)(session, type, data)


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


def _group_send(group: str, message: dict[str, Any]) -> bool:
    """Send through the shared layer; True if it took the message."""
    global _layer_failing
    layer = shared_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception as exc:
        # The message is safe in the store; the next poll of the session reads it.
        level = logging.DEBUG if _layer_failing else logging.WARNING
        _layer_failing = True
        log.log(
            level,
            "longpoll: could not wake %s through the channel layer: %s "
            "(logged once until the layer answers again)",
            group,
            exc,
        )
        return False
    _layer_failing = False
    return True


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
