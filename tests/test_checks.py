"""System checks refuse setups that cannot work."""

from __future__ import annotations

from typing import Any

import pytest

from longpoll_app.checks import check_redis_socket_timeout, check_sessions, check_settings


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_default_setup_passes() -> None:
    assert check_sessions() == []
    assert check_settings() == []


def test_signed_cookie_sessions_are_refused(settings: Any) -> None:
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    assert ids(check_sessions()) == ["longpoll_app.E001"]


def test_missing_session_middleware_is_refused(settings: Any) -> None:
    settings.MIDDLEWARE = [
        m
        for m in settings.MIDDLEWARE
        if m != "django.contrib.sessions.middleware.SessionMiddleware"
    ]
    assert ids(check_sessions()) == ["longpoll_app.E002"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LONGPOLL_TIMEOUT", "10"),
        ("LONGPOLL_TIMEOUT", 0),
        ("LONGPOLL_EMPTY_STATUS", 200),
        ("LONGPOLL_BATCH_SIZE", 1.5),
        ("LONGPOLL_MAX_QUEUE", True),
        ("LONGPOLL_MAX_MESSAGE_BYTES", -1),
        ("LONGPOLL_SEND_RATE", None),
    ],
)
def test_bad_setting_types_are_refused(settings: Any, name: str, value: Any) -> None:
    setattr(settings, name, value)
    errors = check_settings()
    assert ids(errors) == ["longpoll_app.E003"]
    assert name in errors[0].msg and repr(value) in errors[0].msg


def test_unknown_channel_layer_alias(settings: Any) -> None:
    settings.LONGPOLL_CHANNEL_LAYER = "pushes"
    assert ids(check_settings()) == ["longpoll_app.E004"]


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ({"address": "redis://127.0.0.1:6379/0"}, True),
        ({"address": "redis://127.0.0.1:6379/0", "socket_timeout": 15}, False),
        ({"address": "redis://127.0.0.1:6379/0", "socket_timeout": None}, False),
    ],
)
def test_redis_socket_timeout_shorter_than_blocking_receive(
    settings: Any, host: Any, warned: bool
) -> None:
    import redis

    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [host]}}
    }
    expected = ["longpoll_app.W001"] if warned and int(redis.__version__.split(".")[0]) >= 8 else []
    assert ids(check_redis_socket_timeout()) == expected
