"""The app's settings, read from Django settings on access.

Reading on access (rather than once at import) keeps ``override_settings`` and
pytest-django's ``settings`` fixture working, as in django-cors-headers. Values
are remembered until Django says a setting changed: an unset setting costs an
AttributeError inside ``LazySettings`` (about 3 us) on every read, and a poll
reads several.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

# Defaults, with their units. The README's settings table lists the same values.
DEFAULTS: dict[str, Any] = {
    "LONGPOLL_TIMEOUT": 10.0,  # seconds a poll is held before it answers empty
    "LONGPOLL_EMPTY_STATUS": 204,  # status of that empty answer: 204, or 304 for old clients
    "LONGPOLL_BATCH_SIZE": 1000,  # messages in one poll response at most
    "LONGPOLL_RETENTION": 3600.0,  # seconds an unacknowledged message is kept
    "LONGPOLL_MAX_QUEUE": 1000,  # messages kept per session; the oldest are dropped
    "LONGPOLL_MAX_MESSAGE_BYTES": 64 * 1024,  # bytes in a request body at most
    "LONGPOLL_MAX_POLLS_PER_SESSION": 4,  # polls held at once per session, per process
    "LONGPOLL_SEND_RATE": 10.0,  # client messages per second per session, sustained
    "LONGPOLL_SEND_BURST": 30,  # client messages per session allowed in a burst
    "LONGPOLL_DEDUP_WINDOW": 600.0,  # seconds a client message id is remembered
    "LONGPOLL_SESSION_RECHECK": 60.0,  # seconds a poll trusts its cached session check
    "LONGPOLL_WATCH_INTERVAL": 0.05,  # seconds between store checks without a shared layer
    "LONGPOLL_CHANNEL_LAYER": "default",  # alias in CHANNEL_LAYERS that carries wake-ups
    "LONGPOLL_STATUS_INTERVAL": 5.0,  # seconds between a process's reports of its held polls
    "LONGPOLL_CLEANUP_INTERVAL": 300.0,  # seconds between automatic clean-ups; 0: none
    "LONGPOLL_CLEANUP_BATCH": 500,  # rows one clean-up step removes at most
    "LONGPOLL_GC_INTERVAL": 0.1,  # seconds between paced young collections; 0: Python's own
}


class Settings:
    """Typed access to the ``LONGPOLL_*`` settings, with their defaults."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        setting_changed.connect(self._forget, dispatch_uid="longpoll_conf")

    def _forget(self, **kwargs: Any) -> None:
        self._values.clear()

    def _get(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            value = self._values[name] = getattr(settings, name, DEFAULTS[name])
            return value

    @property
    def LONGPOLL_TIMEOUT(self) -> float:
        return float(self._get("LONGPOLL_TIMEOUT"))

    @property
    def LONGPOLL_EMPTY_STATUS(self) -> int:
        return int(self._get("LONGPOLL_EMPTY_STATUS"))

    @property
    def LONGPOLL_BATCH_SIZE(self) -> int:
        return int(self._get("LONGPOLL_BATCH_SIZE"))

    @property
    def LONGPOLL_RETENTION(self) -> float:
        return float(self._get("LONGPOLL_RETENTION"))

    @property
    def LONGPOLL_MAX_QUEUE(self) -> int:
        return int(self._get("LONGPOLL_MAX_QUEUE"))

    @property
    def LONGPOLL_MAX_MESSAGE_BYTES(self) -> int:
        return int(self._get("LONGPOLL_MAX_MESSAGE_BYTES"))

    @property
    def LONGPOLL_MAX_POLLS_PER_SESSION(self) -> int:
        return int(self._get("LONGPOLL_MAX_POLLS_PER_SESSION"))

    @property
    def LONGPOLL_SEND_RATE(self) -> float:
        return float(self._get("LONGPOLL_SEND_RATE"))

    @property
    def LONGPOLL_SEND_BURST(self) -> int:
        return int(self._get("LONGPOLL_SEND_BURST"))

    @property
    def LONGPOLL_DEDUP_WINDOW(self) -> float:
        return float(self._get("LONGPOLL_DEDUP_WINDOW"))

    @property
    def LONGPOLL_SESSION_RECHECK(self) -> float:
        return float(self._get("LONGPOLL_SESSION_RECHECK"))

    @property
    def LONGPOLL_WATCH_INTERVAL(self) -> float:
        return float(self._get("LONGPOLL_WATCH_INTERVAL"))

    @property
    def LONGPOLL_CHANNEL_LAYER(self) -> str:
        return str(self._get("LONGPOLL_CHANNEL_LAYER"))

    @property
    def LONGPOLL_STATUS_INTERVAL(self) -> float:
        return float(self._get("LONGPOLL_STATUS_INTERVAL"))

    @property
    def LONGPOLL_CLEANUP_INTERVAL(self) -> float:
        return float(self._get("LONGPOLL_CLEANUP_INTERVAL"))

    @property
    def LONGPOLL_CLEANUP_BATCH(self) -> int:
        return int(self._get("LONGPOLL_CLEANUP_BATCH"))

    @property
    def LONGPOLL_GC_INTERVAL(self) -> float:
        return float(self._get("LONGPOLL_GC_INTERVAL"))


conf = Settings()
