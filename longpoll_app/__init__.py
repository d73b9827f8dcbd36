"""Per-session server push for Django over HTTP long-polling, on Channels.

``send_to_session``, ``send_many_to_session``, ``send_to_user`` and their
async twins live in ``longpoll_app.api`` and are importable from here too;
``handler`` registers functions for messages that pages send.
"""

from typing import Any

from .handlers import handler
from .signals import message_received

__all__ = [
    "asend_many_to_session",
    "asend_to_session",
    "asend_to_user",
    "handler",
    "message_received",
    "send_many_to_session",
    "send_to_session",
    "send_to_user",
]

_API = {
    "send_to_session",
    "send_many_to_session",
    "send_to_user",
    "asend_to_session",
    "asend_many_to_session",
    "asend_to_user",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: api imports models, which need the apps loaded.
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'longpoll_app' has no attribute {name!r}")
