"""conf.py: each setting declared once, read from Django settings on access, typed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.test import override_settings

from longpoll_app import conf as conf_module
from longpoll_app.conf import DEFAULTS, SETTINGS, Setting, Settings, conf

# What each converter gives, whatever int or float a value you set is.
CONVERTED_TYPES: dict[Callable[[Any], Any], type] = {
    float: float,
    int: int,
    str: str,
    conf_module.optional_str: str,
}
# A value each rule accepts, of another type than the default where one is allowed (an
# int for a float setting) and other than the default otherwise.
GOOD_VALUES: dict[Callable[[Any], bool], Any] = {
    conf_module.positive_number: 30,
    conf_module.non_negative_number: 60,
    conf_module.positive_int: 7,
    conf_module.empty_status: 304,
    conf_module.channel_layer_alias: "default",  # the one CHANNEL_LAYERS has (conftest)
    conf_module.bearer_token_or_none: "A" * 43,
    conf_module.transport_name: "watcher",
}


def every_setting() -> list[Any]:
    return [pytest.param(setting, id=setting.name) for setting in SETTINGS]


def test_the_table_is_the_class_attributes_in_order() -> None:
    attributes = [name for name, value in vars(Settings).items() if isinstance(value, Setting)]
    assert [s.name for s in SETTINGS] == attributes
    assert all(getattr(Settings, s.name) is s for s in SETTINGS)
    assert all(s.name.startswith("LONGPOLL_") for s in SETTINGS)
    assert len(SETTINGS) == 20


def test_defaults_are_derived_from_the_table() -> None:
    assert dict(DEFAULTS) == {s.name: s.default for s in SETTINGS}
    assert list(DEFAULTS) == [s.name for s in SETTINGS]
    with pytest.raises(TypeError):
        DEFAULTS["LONGPOLL_TIMEOUT"] = 1.0  # type: ignore[index]  # read-only on purpose


@pytest.mark.parametrize("setting", every_setting())
def test_a_setting_left_out_reads_as_its_default(settings: Any, setting: Setting[Any]) -> None:
    if hasattr(settings, setting.name):  # conftest sets LONGPOLL_TIMEOUT for every test
        delattr(settings, setting.name)
    value = getattr(conf, setting.name)
    assert (type(value), value) == (type(setting.default), setting.default)


@pytest.mark.parametrize("setting", every_setting())
def test_each_default_is_of_its_type_and_passes_its_rule(setting: Setting[Any]) -> None:
    # Declared in the type it is read as: docs/settings.md shows 10.0, not 10, for a float.
    converted = setting.convert(setting.default)
    assert (type(converted), converted) == (type(setting.default), setting.default)
    assert setting.is_valid(setting.default)


@pytest.mark.parametrize("setting", every_setting())
def test_a_value_set_is_read_as_the_settings_type(settings: Any, setting: Setting[Any]) -> None:
    value = GOOD_VALUES[setting.is_valid]
    assert setting.is_valid(value)
    setattr(settings, setting.name, value)
    read = getattr(conf, setting.name)
    assert type(read) is CONVERTED_TYPES[setting.convert]
    assert read == value


def test_an_int_for_a_float_setting_reads_as_a_float(settings: Any) -> None:
    settings.LONGPOLL_RETENTION = 60
    assert repr(conf.LONGPOLL_RETENTION) == "60.0"


def test_override_settings_changes_a_value_at_once() -> None:
    before = conf.LONGPOLL_BATCH_SIZE  # read first, so a remembered value would show
    with override_settings(LONGPOLL_BATCH_SIZE=7):
        assert conf.LONGPOLL_BATCH_SIZE == 7
        with override_settings(LONGPOLL_BATCH_SIZE=3):
            assert conf.LONGPOLL_BATCH_SIZE == 3
        assert conf.LONGPOLL_BATCH_SIZE == 7
    assert conf.LONGPOLL_BATCH_SIZE == before == 1000


def test_the_settings_fixture_changes_a_value_at_once(settings: Any) -> None:
    assert conf.LONGPOLL_TIMEOUT == 2.0  # conftest's
    settings.LONGPOLL_TIMEOUT = 4.5
    assert conf.LONGPOLL_TIMEOUT == 4.5
    del settings.LONGPOLL_TIMEOUT
    assert conf.LONGPOLL_TIMEOUT == 10.0


class CountingSettings:
    """Django's settings, counting the reads of each name."""

    def __init__(self) -> None:
        self.reads: dict[str, int] = {}

    @property
    def _wrapped(self) -> object:  # the settings object, which conf.py checks on each read
        return object.__getattribute__(django_settings, "_wrapped")

    def __getattr__(self, name: str) -> Any:
        self.reads[name] = self.reads.get(name, 0) + 1
        return getattr(django_settings, name)


def test_a_value_is_read_once_until_a_setting_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingSettings()
    monkeypatch.setattr(conf_module, "settings", counting)
    setting_changed.send(sender=None, setting="LONGPOLL_GC_INTERVAL", value=0.1, enter=True)
    assert [conf.LONGPOLL_GC_INTERVAL for _ in range(5)] == [0.1] * 5
    assert conf.LONGPOLL_METRICS_TOKEN is None and conf.LONGPOLL_METRICS_TOKEN is None
    # An unset setting is looked up once too (None is remembered, not taken for "unread").
    assert counting.reads == {"LONGPOLL_GC_INTERVAL": 1, "LONGPOLL_METRICS_TOKEN": 1}
    setting_changed.send(sender=None, setting="LONGPOLL_GC_INTERVAL", value=0.1, enter=False)
    assert conf.LONGPOLL_GC_INTERVAL == 0.1
    assert counting.reads["LONGPOLL_GC_INTERVAL"] == 2


def test_a_change_without_the_signal_is_not_seen_until_the_signal() -> None:
    # The price of remembering: only setting_changed (which override_settings and the
    # settings fixture send) makes the module read again.
    with override_settings(LONGPOLL_SEND_BURST=5):
        assert conf.LONGPOLL_SEND_BURST == 5
        django_settings.LONGPOLL_SEND_BURST = 6  # sends no signal; override's exit undoes it
        assert conf.LONGPOLL_SEND_BURST == 5
        setting_changed.send(sender=None, setting="LONGPOLL_SEND_BURST", value=6, enter=True)
        assert conf.LONGPOLL_SEND_BURST == 6
    assert conf.LONGPOLL_SEND_BURST == 30


def test_an_unknown_setting_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        getattr(conf, "LONGPOLL_TIMEOUTS")  # noqa: B009  (a name mypy would refuse)
    with pytest.raises(AttributeError):
        getattr(Settings, "LONGPOLL_NOPE")  # noqa: B009


def test_a_setting_cannot_be_assigned_on_conf() -> None:
    with pytest.raises(AttributeError, match="LONGPOLL_TIMEOUT is read from Django's settings"):
        setattr(conf, "LONGPOLL_TIMEOUT", 1.0)  # noqa: B010  (mypy refuses the assignment)
    assert conf.LONGPOLL_TIMEOUT == 2.0


def test_the_declarations_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings.LONGPOLL_TIMEOUT.default = 1.0  # type: ignore[misc]  # frozen on purpose


@pytest.mark.parametrize("setting", every_setting())
def test_each_declaration_says_what_it_accepts_and_means(setting: Setting[Any]) -> None:
    for text in (setting.accepted, setting.doc):
        assert text and text == text.strip() and "\n" not in text, setting.name
    assert not setting.doc.endswith("."), "a doc is a table cell's phrase, not a sentence"
