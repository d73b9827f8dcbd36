"""Helpers for testing code that sends long-poll messages.

``capture_messages()`` records every ``send_to_session`` / ``send_to_user``
call (and their async twins) made while it is active, in any thread, like
Django's ``mail.outbox``. By default nothing is stored or woken, so no channel
layer, server or held poll is needed::

    from longpoll_app.testing import capture_messages

    def test_adding_to_the_cart_pushes_the_count(client):
        with capture_messages() as sent:
            client.post("/cart/add/", {"item": 3})
        assert sent.types == ["cart.updated"]
        assert sent.for_session(client)[0].data == {"items": 3}

With pytest, the ``longpoll_messages`` fixture does the same for a whole
test: import it into your ``conftest.py`` (``from longpoll_app.testing import
longpoll_messages``) or name this module in ``pytest_plugins``.

The calls are checked as the real ones are: a bad type or data that is not
JSON raises; a request without a session key gets one. ``send_to_session``
returns ids counting from 1 per session; ``send_to_user`` returns how many
live sessions the user has (it reads the database, as the real one does). Pass
``deliver=True`` to record and also send for real.

This module imports nothing that needs Django set up, so it can be loaded as
a pytest plugin before the settings are.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CapturedMessages", "SentMessage", "capture_messages", "longpoll_messages"]


@dataclass(frozen=True)
class SentMessage:
    """One call: to a session (``session_key``) or to a user (``user_pk``)."""

    type: str
    data: Any
    session_key: str | None = None
    user_pk: Any = None

    def __repr__(self) -> str:
        # The key is a credential: test reports show its fingerprint only.
        if self.session_key is not None:
            from .models import session_fingerprint

            to = f"session={session_fingerprint(self.session_key)}"
        else:
            to = f"user_pk={self.user_pk!r}"
        return f"SentMessage(type={self.type!r}, data={self.data!r}, {to})"


def _key_of(session: Any) -> str | None:
    """The key of a session given as a key, a ``SessionBase``, or anything
    with a ``session`` (a request, Django's test ``Client``)."""
    if isinstance(session, str):
        return session
    session = getattr(session, "session", session)
    return getattr(session, "session_key", None)


class CapturedMessages(list[SentMessage]):
    """The messages sent while a capture was active, in the order they were sent."""

    @property
    def types(self) -> list[str]:
        return [message.type for message in self]

    def of_type(self, type: str) -> list[SentMessage]:
        return [message for message in self if message.type == type]

    def for_session(self, session: Any) -> list[SentMessage]:
        """Messages sent to one session: a key, a ``SessionBase``, a request
        or a test ``Client`` (calls of ``send_to_user`` are not resolved)."""
        key = _key_of(session)
        return [message for message in self if key and message.session_key == key]

    def for_user(self, user: Any) -> list[SentMessage]:
        """Messages sent with ``send_to_user`` to this user (or user pk)."""
        pk = getattr(user, "pk", user)
        return [
            message for message in self if message.user_pk is not None and message.user_pk == pk
        ]


@dataclass
class _Recorder:
    """What ``capture_messages`` puts in ``longpoll_app.api.recorders``."""

    deliver: bool
    sent: CapturedMessages = field(default_factory=CapturedMessages)
    ids: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_session(self, session_key: str, type: str, data: Any) -> int:
        with self.lock:
            self.sent.append(SentMessage(type=type, data=data, session_key=session_key))
            self.ids[session_key] = self.ids.get(session_key, 0) + 1
            return self.ids[session_key]

    def to_user(self, user_pk: Any, type: str, data: Any) -> int:
        from . import sessions

        with self.lock:
            self.sent.append(SentMessage(type=type, data=data, user_pk=user_pk))
        return 0 if self.deliver else len(sessions.live_session_keys_of(user_pk))


@contextmanager
def capture_messages(deliver: bool = False) -> Iterator[CapturedMessages]:
    """Record what is sent inside the block; send nothing unless ``deliver``.

    Captures nest: each records everything; the innermost decides whether
    messages are also sent for real.
    """
    from . import api

    recorder = _Recorder(deliver=deliver)
    api.recorders.append(recorder)
    try:
        yield recorder.sent
    finally:
        api.recorders.remove(recorder)


try:
    import pytest
except ImportError:  # pragma: no cover - the context manager works without pytest
    pass
else:

    @pytest.fixture
    def longpoll_messages() -> Iterator[CapturedMessages]:
        """Everything the test sends, captured and not delivered (see ``capture_messages``)."""
        with capture_messages() as sent:
            yield sent
