"""System checks: setups that cannot work are refused at start-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import DEFAULTS

SESSION_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
COOKIE_ONLY_ENGINES = {"django.contrib.sessions.backends.signed_cookies"}


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _non_negative_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "LONGPOLL_TIMEOUT": (_positive_number, "a positive number of seconds"),
    "LONGPOLL_EMPTY_STATUS": (lambda v: v in (204, 304), "204 or 304"),
    "LONGPOLL_BATCH_SIZE": (_positive_int, "a positive integer"),
    "LONGPOLL_RETENTION": (_positive_number, "a positive number of seconds"),
    "LONGPOLL_MAX_QUEUE": (_positive_int, "a positive integer"),
    "LONGPOLL_MAX_MESSAGE_BYTES": (_positive_int, "a positive integer (bytes)"),
    "LONGPOLL_MAX_POLLS_PER_SESSION": (_positive_int, "a positive integer"),
    "LONGPOLL_SEND_RATE": (_positive_number, "a positive number of messages per second"),
    "LONGPOLL_SEND_BURST": (_positive_int, "a positive integer"),
    "LONGPOLL_DEDUP_WINDOW": (_positive_number, "a positive number of seconds"),
    "LONGPOLL_SESSION_RECHECK": (_positive_number, "a positive number of seconds"),
    "LONGPOLL_WATCH_INTERVAL": (_positive_number, "a positive number of seconds"),
    "LONGPOLL_CHANNEL_LAYER": (lambda v: isinstance(v, str) and bool(v), "a CHANNEL_LAYERS alias"),
    "LONGPOLL_STATUS_INTERVAL": (_positive_number, "a positive number of seconds"),
    "LONGPOLL_CLEANUP_INTERVAL": (
        _non_negative_number,
        "a positive number of seconds, or 0 for no automatic clean-up",
    ),
    "LONGPOLL_CLEANUP_BATCH": (_positive_int, "a positive integer"),
    "LONGPOLL_GC_INTERVAL": (
        _non_negative_number,
        "a positive number of seconds, or 0 to leave Python's collector alone",
    ),
}


@register(Tags.compatibility)
def check_sessions(**kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if settings.SESSION_ENGINE in COOKIE_ONLY_ENGINES:
        errors.append(
            Error(
                f"SESSION_ENGINE {settings.SESSION_ENGINE!r} keeps sessions in the cookie, so "
                "there is no server-side session key to queue messages for.",
                hint="Use a server-side engine, e.g. django.contrib.sessions.backends.db "
                "or cached_db.",
                id="longpoll_app.E001",
            )
        )
    if SESSION_MIDDLEWARE not in settings.MIDDLEWARE:
        errors.append(
            Error(
                f"{SESSION_MIDDLEWARE} is not in MIDDLEWARE, so pages never give the browser "
                "the session cookie that polls are checked against.",
                id="longpoll_app.E002",
            )
        )
    return errors


@register(Tags.compatibility)
def check_settings(**kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for name, (is_valid, expected) in SETTING_RULES.items():
        value = getattr(settings, name, DEFAULTS[name])
        if not is_valid(value):
            errors.append(
                Error(f"{name} must be {expected}, not {value!r}.", id="longpoll_app.E003")
            )
    alias = getattr(settings, "LONGPOLL_CHANNEL_LAYER", DEFAULTS["LONGPOLL_CHANNEL_LAYER"])
    layers = getattr(settings, "CHANNEL_LAYERS", {})
    if hasattr(settings, "LONGPOLL_CHANNEL_LAYER") and alias not in layers:
        errors.append(
            Error(
                f"LONGPOLL_CHANNEL_LAYER {alias!r} is not a key of CHANNEL_LAYERS "
                f"({', '.join(map(repr, layers)) or 'empty'}).",
                id="longpoll_app.E004",
            )
        )
    return errors


REDIS_BLOCKING_READ = 5.0  # seconds channels-redis blocks in one receive (brpop_timeout)


@register(Tags.compatibility)
def check_redis_socket_timeout(**kwargs: Any) -> list[CheckMessage]:
    """redis-py 8 reads time out after 5 s by default, as long as channels-redis's
    blocking receive: every receive then fails with "Timeout reading from ..."
    (channels_redis issue 422), and wake-ups stop arriving."""
    try:
        import redis
    except ImportError:
        return []
    if int(redis.__version__.split(".")[0]) < 8:
        return []
    warnings: list[CheckMessage] = []
    for alias, layer in getattr(settings, "CHANNEL_LAYERS", {}).items():
        if "channels_redis" not in str(layer.get("BACKEND", "")):
            continue
        for host in layer.get("CONFIG", {}).get("hosts", []) or [None]:
            timeout = host.get("socket_timeout", 5.0) if isinstance(host, dict) else 5.0
            if timeout is not None and timeout <= REDIS_BLOCKING_READ:
                warnings.append(
                    Warning(
                        f"CHANNEL_LAYERS[{alias!r}] uses redis-py {redis.__version__}, whose "
                        f"socket_timeout ({timeout} s) ends channels-redis's "
                        f"{REDIS_BLOCKING_READ:g} s blocking receive: wake-ups will not arrive.",
                        hint='Give each host as {"address": URL, "socket_timeout": 15}.',
                        id="longpoll_app.W001",
                    )
                )
    return warnings
