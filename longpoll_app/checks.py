"""System checks: setups that cannot work are refused at start-up."""

from __future__ import annotations

import importlib.util
from typing import Any

from channels.layers import InMemoryChannelLayer
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DEFAULT_DB_ALIAS, connections
from django.utils.module_loading import import_string

from .conf import SETTINGS, Settings

SESSION_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"
COOKIE_ONLY_ENGINES = {"django.contrib.sessions.backends.signed_cookies"}

# Ids no check reports any more, kept so that none is given out again with another
# meaning: E003 was every setting's rule before each setting had its own (conf.py);
# W001 warned of a Redis socket timeout that the app now fits itself (layers.py).
RETIRED_CHECK_IDS = frozenset({"longpoll_app.E003", "longpoll_app.W001"})


# Settings an earlier version read, with what replaced them.
REMOVED_SETTINGS = {
    "LONGPOLL_SESSION_RECHECK": "every poll checks its session, as Django checks a view's; "
    "a window that trusted an earlier check let an ended or rotated key poll on.",
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
    for setting in SETTINGS:
        value = getattr(settings, setting.name, setting.default)
        if not setting.is_valid(value):
            errors.append(
                Error(
                    f"{setting.name} must be {setting.accepted}, not {value!r}.",
                    id=setting.check_id,
                )
            )
    for name, why in REMOVED_SETTINGS.items():
        if hasattr(settings, name):
            errors.append(Warning(f"{name} is no longer used: {why}", id="longpoll_app.W002"))
    layer = Settings.LONGPOLL_CHANNEL_LAYER
    alias = getattr(settings, layer.name, layer.default)
    layers = getattr(settings, "CHANNEL_LAYERS", {})
    # A value its own rule refuses is reported once, by that rule (and a list or other
    # unhashable value could not even be looked up in CHANNEL_LAYERS).
    if hasattr(settings, layer.name) and layer.is_valid(alias) and alias not in layers:
        errors.append(
            Error(
                f"LONGPOLL_CHANNEL_LAYER {alias!r} is not a key of CHANNEL_LAYERS "
                f"({', '.join(map(repr, layers)) or 'empty'}).",
                id="longpoll_app.E004",
            )
        )
    return errors


@register(Tags.compatibility)
def check_transport(**kwargs: Any) -> list[CheckMessage]:
    """A transport chosen by name must be able to work: refused here, not at
    the first poll (which would fall back to the store watcher)."""
    setting = Settings.LONGPOLL_TRANSPORT
    wanted = getattr(settings, setting.name, setting.default)
    if wanted == "layer" and not _shared_layer_configured():
        alias = getattr(settings, "LONGPOLL_CHANNEL_LAYER", "default")
        why = f"CHANNEL_LAYERS[{alias!r}] is no layer shared between processes"
    elif wanted == "postgres" and connections[DEFAULT_DB_ALIAS].vendor != "postgresql":
        why = f"the default database is {connections[DEFAULT_DB_ALIAS].vendor}, not PostgreSQL"
    elif wanted == "postgres" and importlib.util.find_spec("psycopg") is None:
        why = "psycopg 3 (the [postgres] extra) is not installed; Django may run on psycopg2"
    else:
        return []
    return [
        Error(
            f"LONGPOLL_TRANSPORT {wanted!r} cannot work: {why}.",
            hint="Use 'auto', which picks what the setup has, or 'watcher'.",
            id="longpoll_app.E005",
        )
    ]


def _shared_layer_configured() -> bool:
    """Whether the alias names a layer other processes share (as ``layers.shared_layer``
    decides, from the settings alone: a check makes no layer)."""
    alias = getattr(settings, "LONGPOLL_CHANNEL_LAYER", "default")
    config = getattr(settings, "CHANNEL_LAYERS", {}).get(alias) if isinstance(alias, str) else None
    backend = config.get("BACKEND") if isinstance(config, dict) else None
    if not isinstance(backend, str):
        return False
    try:
        layer_class = import_string(backend)
    except ImportError:
        return False  # channels itself fails on it at the first use
    return not (isinstance(layer_class, type) and issubclass(layer_class, InMemoryChannelLayer))
