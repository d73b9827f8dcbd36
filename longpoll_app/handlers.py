"""Handlers for messages that pages send, registered by message type.

This module imports no models, so ``longpoll_app.handler`` can be used at the
top of any module, before Django's apps are ready.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured

from .signals import message_received

Handler = Callable[[str, Any, Any], Any]

_handlers: dict[str, Handler] = {}


def handler(message_type: str) -> Callable[[Handler], Handler]:
    """Register the decorated function for messages of ``message_type``.

    The function receives ``(session_key, user, data)``; it may be sync (run in
    Django's worker thread, so it can use the ORM, inside one transaction with
    the record of the message's id) or async. It may answer with
    ``send_to_session(session_key, ...)``.
    """

    def register(fn: Handler) -> Handler:
        existing = _handlers.get(message_type)
        if existing is not None and existing is not fn and not _reloaded(existing, fn):
            raise ImproperlyConfigured(
                f"Message type {message_type!r} already has the handler {_qualified(existing)}; "
                f"cannot register {_qualified(fn)} too."
            )
        _handlers[message_type] = fn
        return fn

    return register


def _reloaded(old: Handler, new: Handler) -> bool:
    """True if ``new`` is ``old`` defined again (its module was reloaded): the
    same name at the same place in the same file, from new code. The closures
    of one factory share their code, and two lambdas have two places: both
    are different functions."""
    old_code, new_code = getattr(old, "__code__", None), getattr(new, "__code__", None)
    if old_code is None or new_code is None or old_code is new_code:
        return False
    return _qualified(old) == _qualified(new) and (
        old_code.co_filename,
        old_code.co_firstlineno,
    ) == (new_code.co_filename, new_code.co_firstlineno)


def _qualified(fn: Handler) -> str:
    return f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"


def is_handled(message_type: str) -> bool:
    """True if a handler or a ``message_received`` receiver will see the message."""
    return message_type in _handlers or message_received.has_listeners()


def sync_handler(message_type: str) -> Handler | None:
    """The handler for ``message_type`` if it is a plain function, else None."""
    fn = _handlers.get(message_type)
    return None if fn is None or inspect.iscoroutinefunction(fn) else fn


async def dispatch(
    message_type: str, session_key: str, user: Any, data: Any, *, handled: bool = False
) -> None:
    """Run the handler for the message (unless ``handled`` already), then send
    ``message_received``."""
    fn = _handlers.get(message_type)
    if fn is not None and not handled:
        if inspect.iscoroutinefunction(fn):
            await fn(session_key, user, data)
        else:
            await sync_to_async(fn)(session_key, user, data)
    if message_received.has_listeners():
        await message_received.asend(
            sender=None, session_key=session_key, user=user, type=message_type, data=data
        )
