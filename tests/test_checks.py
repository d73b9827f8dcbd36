"""System checks refuse setups that cannot work."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from longpoll_app import conf as conf_module
from longpoll_app.checks import RETIRED_CHECK_IDS, check_sessions, check_settings, check_transport
from longpoll_app.conf import SETTINGS, Setting

TOKEN = "A" * 43  # as long as secrets.token_urlsafe(32)'s

# Ids once published keep their meaning: a renumbered setting would make a silenced
# (SILENCED_SYSTEM_CHECKS) or documented id point at another setting.
PUBLISHED_IDS = {
    "LONGPOLL_TIMEOUT": "longpoll_app.E101",
    "LONGPOLL_EMPTY_STATUS": "longpoll_app.E102",
    "LONGPOLL_BATCH_SIZE": "longpoll_app.E103",
    "LONGPOLL_RETENTION": "longpoll_app.E104",
    "LONGPOLL_MAX_QUEUE": "longpoll_app.E105",
    "LONGPOLL_MAX_MESSAGE_BYTES": "longpoll_app.E106",
    "LONGPOLL_MAX_POLLS_PER_SESSION": "longpoll_app.E107",
    "LONGPOLL_SEND_RATE": "longpoll_app.E108",
    "LONGPOLL_SEND_BURST": "longpoll_app.E109",
    "LONGPOLL_DEDUP_WINDOW": "longpoll_app.E110",
    "LONGPOLL_BODY_TIMEOUT": "longpoll_app.E111",
    "LONGPOLL_WATCH_INTERVAL": "longpoll_app.E112",
    "LONGPOLL_CHANNEL_LAYER": "longpoll_app.E113",
    "LONGPOLL_STATUS_INTERVAL": "longpoll_app.E114",
    "LONGPOLL_CLEANUP_INTERVAL": "longpoll_app.E115",
    "LONGPOLL_CLEANUP_BATCH": "longpoll_app.E116",
    "LONGPOLL_GC_INTERVAL": "longpoll_app.E117",
    "LONGPOLL_METRICS_TOKEN": "longpoll_app.E118",
    "LONGPOLL_DRAIN_TIMEOUT": "longpoll_app.E119",
    "LONGPOLL_TRANSPORT": "longpoll_app.E120",
}
OTHER_IDS = {
    "longpoll_app.E001",
    "longpoll_app.E002",
    "longpoll_app.E004",
    "longpoll_app.E005",
    "longpoll_app.W002",
}

NAN, INF = float("nan"), float("inf")
NOT_NUMBERS = ["10", b"10", None, True, False, [1.0], 1j]

# Per rule, values it must refuse and values it must let through. A new rule fails
# test_every_rule_is_attacked until it is listed here.
BAD: dict[Callable[[Any], bool], list[Any]] = {
    conf_module.positive_number: [*NOT_NUMBERS, 0, 0.0, -0.0, -1, -0.5, NAN, INF, -INF],
    conf_module.non_negative_number: [*NOT_NUMBERS, -1, -0.001, NAN, INF, -INF],
    conf_module.positive_int: [*NOT_NUMBERS, 0, -1, 1.0, 1.5, NAN, INF],
    conf_module.empty_status: [200, 204.0, 304.0, "204", True, None, 0, 2040],
    conf_module.channel_layer_alias: ["", None, 5, True, b"default", ["default"]],
    conf_module.bearer_token_or_none: ["", "x", TOKEN[:31], " " + TOKEN, 12345, True],
    conf_module.transport_name: ["", "redis", "Auto", "postgresql", None, True, ["auto"]],
}
GOOD: dict[Callable[[Any], bool], list[Any]] = {
    conf_module.positive_number: [1, 0.001, 30, 2.5, 1e6],
    conf_module.non_negative_number: [0, 0.0, 0.5, 60, 300.0],
    conf_module.positive_int: [1, 7, 10_000],
    conf_module.empty_status: [204, 304],
    conf_module.channel_layer_alias: ["default"],  # the one CHANNEL_LAYERS has (conftest)
    conf_module.bearer_token_or_none: [None, TOKEN, TOKEN[:32]],
    conf_module.transport_name: ["auto", "layer", "postgres", "watcher"],
}


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def cases(values: dict[Callable[[Any], bool], list[Any]]) -> list[Any]:
    return [
        pytest.param(setting, value, id=f"{setting.name}={value!r}")
        for setting in SETTINGS
        for value in values.get(setting.is_valid, [])
    ]


def test_default_setup_passes() -> None:
    assert check_sessions() == []
    assert check_settings() == []
    assert check_transport() == []


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
    assert ids(errors) == [PUBLISHED_IDS[name]]
    assert name in errors[0].msg and repr(value) in errors[0].msg


def test_every_rule_is_attacked() -> None:
    untested = sorted(
        {s.name for s in SETTINGS if not (BAD.get(s.is_valid) and s.is_valid in GOOD)}
    )
    assert untested == [], "add bad and good values for these settings' rules"


@pytest.mark.parametrize(("setting", "value"), cases(BAD))
def test_a_bad_value_gives_exactly_its_settings_id(
    settings: Any, setting: Setting[Any], value: Any
) -> None:
    setattr(settings, setting.name, value)
    errors = check_settings()
    assert ids(errors) == [setting.check_id]
    assert [e.level for e in errors] == [40]  # ERROR: Django refuses to start
    assert errors[0].msg == f"{setting.name} must be {setting.accepted}, not {value!r}."


@pytest.mark.parametrize(("setting", "value"), cases(GOOD))
def test_a_good_value_gives_no_message(settings: Any, setting: Setting[Any], value: Any) -> None:
    setattr(settings, setting.name, value)
    assert check_settings() == []


def test_each_setting_has_its_own_new_id() -> None:
    declared = [s.check_id for s in SETTINGS]
    assert len(set(declared)) == len(declared), "two settings share a check id"
    assert all(re.fullmatch(r"longpoll_app\.E\d{3}", found) for found in declared)
    assert set(declared).isdisjoint(OTHER_IDS | RETIRED_CHECK_IDS)
    # A setting may be added (with the next free id), never renumbered or removed unlisted.
    assert {s.name: s.check_id for s in SETTINGS if s.name in PUBLISHED_IDS} == PUBLISHED_IDS


def test_a_removed_setting_is_named(settings: Any) -> None:
    settings.LONGPOLL_SESSION_RECHECK = 60.0
    warnings = check_settings()
    assert ids(warnings) == ["longpoll_app.W002"]
    assert "every poll checks its session" in warnings[0].msg


def test_unknown_channel_layer_alias(settings: Any) -> None:
    settings.LONGPOLL_CHANNEL_LAYER = "pushes"
    assert ids(check_settings()) == ["longpoll_app.E004"]


REDIS_LAYER = {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": []}}
MEMORY_LAYER = {"BACKEND": "channels.layers.InMemoryChannelLayer"}


@pytest.mark.parametrize(
    ("transport", "layers", "vendor", "refused"),
    [
        ("auto", {}, "sqlite", False),  # auto picks what the setup has
        ("watcher", {}, "sqlite", False),  # works anywhere
        ("layer", {"default": REDIS_LAYER}, "sqlite", False),
        ("layer", {"default": MEMORY_LAYER}, "postgresql", True),  # reaches no other process
        ("layer", {}, "postgresql", True),
        ("layer", {"default": {"BACKEND": "no.such.Layer"}}, "postgresql", True),
        ("postgres", {"default": REDIS_LAYER}, "postgresql", False),
        ("postgres", {"default": REDIS_LAYER}, "sqlite", True),
        ("redis", {}, "sqlite", False),  # E120's to refuse, not this check's
    ],
)
def test_a_transport_that_cannot_work_is_refused_at_start_up(
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
    layers: dict[str, Any],
    vendor: str,
    refused: bool,
) -> None:
    from django.db import connection

    settings.LONGPOLL_TRANSPORT = transport
    settings.CHANNEL_LAYERS = layers
    monkeypatch.setattr(connection, "vendor", vendor)
    errors = check_transport()
    assert ids(errors) == (["longpoll_app.E005"] if refused else [])
    if refused:
        assert errors[0].msg.startswith(f"LONGPOLL_TRANSPORT {transport!r} cannot work: ")
        assert (vendor in errors[0].msg) == (transport == "postgres")


def test_listening_needs_psycopg_3(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from django.db import connection

    settings.LONGPOLL_TRANSPORT = "postgres"
    monkeypatch.setattr(connection, "vendor", "postgresql")
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else found(name, *a)
    )
    [error] = check_transport()
    assert error.id == "longpoll_app.E005" and "psycopg 3" in error.msg


def test_the_transport_check_looks_at_the_configured_alias(settings: Any) -> None:
    settings.LONGPOLL_TRANSPORT = "layer"
    settings.CHANNEL_LAYERS = {"default": MEMORY_LAYER, "pushes": REDIS_LAYER}
    settings.LONGPOLL_CHANNEL_LAYER = "pushes"
    assert check_transport() == []
    settings.LONGPOLL_CHANNEL_LAYER = "default"
    [error] = check_transport()
    assert "CHANNEL_LAYERS['default']" in error.msg


SENTINEL_LAYER = {
    "BACKEND": "channels_redis.core.RedisChannelLayer",
    "CONFIG": {"hosts": [{"sentinels": [("127.0.0.1", 26379)], "master_name": "mymaster"}]},
}


@pytest.mark.parametrize("transport", ["auto", "layer"])
def test_a_sentinel_layer_passes_every_check(settings: Any, transport: str) -> None:
    # As channels-redis documents it, with no socket_timeout: no warning about one
    # as short as the blocking receive (the W001 of earlier versions), since the hub
    # fits its receive to the master's connections (layers.py); and a shared layer.
    settings.CHANNEL_LAYERS = {"default": SENTINEL_LAYER}
    settings.LONGPOLL_TRANSPORT = transport
    assert check_sessions() + check_settings() + check_transport() == []
