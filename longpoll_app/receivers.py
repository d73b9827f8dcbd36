"""Keeping the queues in step with Django's sessions and logins.

* **Key rotation** (``cycle_key``: ``login()``, ``update_session_auth_hash()``)
  keeps the session's data under a new key, so the session's record and
  pending messages follow it to the new key (``api.rekey_session``), and polls
  held with the old key answer 403 so the page polls again with the new cookie.
  Django sends no signal for it, and its database engines delete the old
  ``Session`` row in the middle of it, which looks just like a deletion. So
  ``connect()`` wraps ``SessionBase.cycle_key`` and ``acycle_key``: the
  wrapper marks the old key in a context variable while the original runs
  (the ``post_delete`` receiver then leaves the queue alone), and moves the
  record once the new key exists. This works for every engine that uses the
  base class's ``cycle_key`` (all of Django's server-side ones).
* **Logging out** (``user_logged_out``) and **deleting a session** (a
  ``Session`` row's ``post_delete``, for the db and cached_db engines) end the
  session's polls and purge its queue. The cache and file engines send no
  signal when a session is deleted; their records go at the next logout
  signal, login or clean-up (``longpoll_app.retention``).
* **Logging in** records the session's user, so ``send_to_user`` reaches it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.contrib.sessions.backends.base import SessionBase
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.http import HttpRequest

from . import api, sessions

# The key whose session is being given a new key right now, in this context.
_cycling: ContextVar[str | None] = ContextVar("longpoll_cycling_key", default=None)


@receiver(user_logged_out, dispatch_uid="longpoll_logged_out")
def purge_on_logout(sender: Any, request: HttpRequest | None, **kwargs: Any) -> None:
    """A logged-out session's pending messages were meant for that user: drop them."""
    key = request.session.session_key if request is not None else None
    if key:
        api.end_session(key)


@receiver(user_logged_in, dispatch_uid="longpoll_logged_in")
def record_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Note the user of the (new) session key, so ``send_to_user`` reaches it.

    If the browser's previous session was thrown away rather than given a new
    key (``login()`` flushes a session that belonged to another user), by an
    engine that sends no deletion signal, its record is purged here.
    """
    session = getattr(request, "session", None)
    if request is None or session is None:
        return
    old_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if (
        old_key
        and old_key != session.session_key
        and sessions.session_pks([old_key])
        and sessions.load_live_session(old_key) is None
    ):
        api.end_session(old_key)
    if session.session_key:
        sessions.record_user(session.session_key, user.pk, session.get_expiry_date())


def purge_deleted_session(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A database session was deleted: end its polls and drop its queue,
    unless it is the old row of a key rotation (the queue moves instead)."""
    if instance.session_key == _cycling.get():
        return
    api.end_session(instance.session_key)


def _move_to_new_key(old_key: str | None, session: SessionBase) -> None:
    new_key = session.session_key
    if old_key and new_key and new_key != old_key:
        api.rekey_session(old_key, new_key)


def _wrap_cycle_key(original: Callable[[SessionBase], None]) -> Callable[[SessionBase], None]:
    @functools.wraps(original)
    def cycle_key(self: SessionBase) -> None:
        old_key = self.session_key
        token = _cycling.set(old_key)
        try:
            original(self)
        finally:
            _cycling.reset(token)
        _move_to_new_key(old_key, self)

    cycle_key._longpoll_wrapped = True  # type: ignore[attr-defined]
    return cycle_key


def _wrap_acycle_key(
    original: Callable[[SessionBase], Awaitable[None]],
) -> Callable[[SessionBase], Awaitable[None]]:
    @functools.wraps(original)
    async def acycle_key(self: SessionBase) -> None:
        old_key = self.session_key
        token = _cycling.set(old_key)  # copied into the threads that delete the old row
        try:
            await original(self)
        finally:
            _cycling.reset(token)
        await sync_to_async(_move_to_new_key)(old_key, self)

    acycle_key._longpoll_wrapped = True  # type: ignore[attr-defined]
    return acycle_key


def connect() -> None:
    """Connect what needs the apps ready (the Session model, when installed),
    and wrap ``cycle_key`` (once)."""
    from django.apps import apps

    if not getattr(SessionBase.cycle_key, "_longpoll_wrapped", False):
        SessionBase.cycle_key = _wrap_cycle_key(SessionBase.cycle_key)  # type: ignore[method-assign,assignment]
    if not getattr(SessionBase.acycle_key, "_longpoll_wrapped", False):
        SessionBase.acycle_key = _wrap_acycle_key(SessionBase.acycle_key)  # type: ignore[method-assign,assignment]

    if apps.is_installed("django.contrib.sessions"):
        from django.contrib.sessions.models import Session

        post_delete.connect(
            purge_deleted_session, sender=Session, dispatch_uid="longpoll_session_deleted"
        )
