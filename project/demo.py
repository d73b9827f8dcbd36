"""The demo's handlers of browser-to-server messages (``longpoll.send`` in demo.js).

A handler gets the sender's session key, its user (anonymous when not logged in) and
the message's data, and answers, if at all, by pushing with ``send_to_session`` or
``send_to_user``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.sessions.models import Session
from django.utils import timezone

import longpoll_app
from longpoll_app.api import send_to_session, send_to_user

log = logging.getLogger(__name__)

CHAT_MAX_NAME = 40  # characters of a chat name kept
CHAT_MAX_TEXT = 500  # characters of a chat line kept
CHAT_MAX_SESSIONS = 200  # sessions a chat line goes to: the most recently active ones


def recent_session_keys(limit: int = CHAT_MAX_SESSIONS) -> list[str]:
    """Keys of the live sessions saved most recently (database sessions only).

    A session's expiry date moves forward each time it is saved, so the latest
    expiry dates belong to the sessions that were active last.
    """
    live = Session.objects.filter(expire_date__gt=timezone.now()).order_by("-expire_date")
    return list(live.values_list("session_key", flat=True)[:limit])


def push_to_sessions(keys: list[str], type: str, data: Any) -> int:
    """Push to each session; returns how many took it. A session may end meanwhile."""
    sent = 0
    for key in keys:
        try:
            send_to_session(key, type, data)
        except LookupError:
            continue  # ended since we listed it
        sent += 1
    return sent


@longpoll_app.handler("chat.message")
def chat_message(session_key: str, user: Any, data: Any) -> None:
    """A chat line: pushed to every recently active session, the sender's included."""
    if not isinstance(data, dict):
        return
    text = str(data.get("text", "")).strip()[:CHAT_MAX_TEXT]
    if not text:
        return
    if getattr(user, "is_authenticated", False):
        name = user.get_username()
    else:
        name = str(data.get("name", "")).strip()[:CHAT_MAX_NAME] or "guest"
    line = {"name": name, "text": text, "at": timezone.now().isoformat(timespec="seconds")}
    push_to_sessions(recent_session_keys(), "chat.message", line)
    if getattr(user, "is_authenticated", False):
        # The sender's other browsers (another device, logged in as the same user)
        # hear that their line went out.
        send_to_user(user, "chat.sent", {"text": text})


@longpoll_app.handler("demo.echo")
def echo(session_key: str, user: Any, data: Any) -> None:
    """Sends the data straight back to the sender's session."""
    send_to_session(session_key, "demo.echo", data)
