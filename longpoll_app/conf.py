"""The app's settings, each declared once, read from Django settings on access.

Every ``LONGPOLL_*`` setting is one ``Setting`` on ``Settings``: its default, the
conversion that gives it its type, the rule a value you set must pass (with the text
that says what the rule accepts and the rule's own system check id), and a line on what
it means. ``checks.py`` validates from this table and docs/settings.md lists it
(tests/test_docs.py keeps the two equal).

Reading on access (rather than once at import) keeps ``override_settings`` and
pytest-django's ``settings`` fixture working, as in django-cors-headers. Values
are remembered until Django says a setting changed, or replaces its settings object
(as ``override_settings`` does): an unset setting costs an AttributeError inside
``LazySettings`` (about 3 us) on every read, and a poll reads several.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, Never, NoReturn, TypeVar, overload

from django.conf import settings
from django.core.signals import setting_changed

T = TypeVar("T")


class Setting(Generic[T]):
    """One ``LONGPOLL_*`` setting, and the typed attribute of ``Settings`` that reads it.

    Read on an instance it gives the converted value (``T``); read on the class it gives
    this declaration, which the system checks and the docs test read.

    A plain class, not a dataclass: making a frozen dataclass costs a
    millisecond or more at import, which every process pays in ``django.setup()``.
    """

    __slots__ = ("accepted", "check_id", "convert", "default", "doc", "is_valid", "name")
    default: T
    convert: Callable[[Any], T]
    is_valid: Callable[[Any], bool]
    accepted: str
    check_id: str
    doc: str
    name: str

    def __init__(
        self,
        *,
        default: T,
        convert: Callable[[Any], T],  # a set value, once its rule passed, to the type T
        is_valid: Callable[[Any], bool],  # the rule a value set in Django's settings must pass
        accepted: str,  # what the rule accepts, completing "<name> must be ..."
        check_id: str,  # the system check that reports a value the rule refuses
        doc: str,  # what the setting means, in one line (docs/settings.md starts with it)
    ) -> None:
        given = {"default": default, "convert": convert, "is_valid": is_valid}
        given |= {"accepted": accepted, "check_id": check_id, "doc": doc}
        given["name"] = ""  # the attribute's name, given by the class
        for attribute, value in given.items():
            object.__setattr__(self, attribute, value)

    def __setattr__(self, attribute: str, value: object) -> None:
        raise AttributeError(f"{self.name or 'a setting'}'s declaration is frozen")

    def __set_name__(self, owner: type, name: str) -> None:
        # Frozen, so the name cannot change later; this is the one time it is given.
        object.__setattr__(self, "name", name)

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> Setting[T]: ...

    @overload
    def __get__(self, instance: Settings, owner: type | None = None) -> T: ...

    def __get__(self, instance: Settings | None, owner: type | None = None) -> Setting[T] | T:
        if instance is None:
            return self
        source = _get_attribute(settings, "_wrapped")
        if instance._source is not source:
            # Another settings object: override_settings swaps it in and out, also when it
            # only deletes a setting (pytest-django's ``del settings.X``), which sends no
            # setting_changed.
            instance._forget()
            instance._source = source
        try:
            value: T = instance._values[self.name]
        except KeyError:
            value = self.convert(getattr(settings, self.name, self.default))
            instance._values[self.name] = value
        return value

    def __set__(self, instance: Settings, value: Never) -> NoReturn:
        # As a property without a setter: a value comes from Django's settings only
        # (``Never`` makes mypy refuse the assignment too).
        raise AttributeError(f"{self.name} is read from Django's settings; override those")


# Reads the settings object that ``django.conf.settings`` stands for at the moment
# (``_wrapped``) without LazyObject's __getattribute__, which is written in Python and
# would triple a remembered read's cost (to about 0.5 us); mypy's Django plugin would
# also take ``settings._wrapped`` for the name of a setting.
_get_attribute = object.__getattribute__


def finite_number(value: Any) -> bool:
    # NaN compares false anyway, and infinity overflows timedelta(seconds=...).
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive_number(value: Any) -> bool:
    return finite_number(value) and value > 0


def non_negative_number(value: Any) -> bool:
    return finite_number(value) and value >= 0


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def empty_status(value: Any) -> bool:
    # An int, not 204.0 or a bool: the rule says which status, not what equals one.
    return isinstance(value, int) and not isinstance(value, bool) and value in (204, 304)


TRANSPORTS = ("auto", "layer", "postgres", "watcher")  # LONGPOLL_TRANSPORT's values


def transport_name(value: Any) -> bool:
    return isinstance(value, str) and value in TRANSPORTS


def channel_layer_alias(value: Any) -> bool:
    return isinstance(value, str) and value != ""


METRICS_TOKEN_MIN_LENGTH = 32  # characters: too many to guess, request by request
TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750's bearer credentials


def bearer_token_or_none(value: Any) -> bool:
    return value is None or (
        isinstance(value, str)
        and len(value) >= METRICS_TOKEN_MIN_LENGTH
        and TOKEN68.fullmatch(value) is not None
    )


def optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


SECONDS = "a positive number of seconds"
POSITIVE_INT = "a positive integer"


class Settings:
    """Typed access to the ``LONGPOLL_*`` settings, with their defaults.

    The class attributes are the table of settings (``SETTINGS``), in the order
    docs/settings.md lists them. A new one takes the next free check id: published ids
    are never renumbered or reused.
    """

    LONGPOLL_TIMEOUT = Setting(
        default=10.0,  # seconds
        convert=float,
        is_valid=positive_number,
        accepted=SECONDS,
        check_id="longpoll_app.E101",
        doc="seconds a poll is held before it answers empty",
    )
    LONGPOLL_EMPTY_STATUS = Setting(
        default=204,  # HTTP status
        convert=int,
        is_valid=empty_status,
        accepted="204 or 304",
        check_id="longpoll_app.E102",
        doc="status of a poll's empty answer",
    )
    LONGPOLL_BATCH_SIZE = Setting(
        default=1000,  # messages
        convert=int,
        is_valid=positive_int,
        accepted=POSITIVE_INT,
        check_id="longpoll_app.E103",
        doc="messages in one poll answer at most",
    )
    LONGPOLL_RETENTION = Setting(
        default=3600.0,  # seconds
        convert=float,
        is_valid=positive_number,
        accepted=SECONDS,
        check_id="longpoll_app.E104",
        doc="seconds an unacknowledged message is kept",
    )
    LONGPOLL_MAX_QUEUE = Setting(
        default=1000,  # messages per session
        convert=int,
        is_valid=positive_int,
        accepted=POSITIVE_INT,
        check_id="longpoll_app.E105",
        doc="messages kept per session; the oldest are dropped",
    )
    LONGPOLL_MAX_MESSAGE_BYTES = Setting(
        default=64 * 1024,  # bytes
        convert=int,
        is_valid=positive_int,
        accepted="a positive integer (bytes)",
        check_id="longpoll_app.E106",
        doc="bytes in a request body at most",
    )
    LONGPOLL_MAX_POLLS_PER_SESSION = Setting(
        default=4,  # polls held at once, per session and process
        convert=int,
        is_valid=positive_int,
        accepted=POSITIVE_INT,
        check_id="longpoll_app.E107",
        doc="polls one session may hold at once in one server process",
    )
    LONGPOLL_SEND_RATE = Setting(
        default=10.0,  # messages per second, per session
        convert=float,
        is_valid=positive_number,
        accepted="a positive number of messages per second",
        check_id="longpoll_app.E108",
        doc="messages per second a session may send, sustained",
    )
    LONGPOLL_SEND_BURST = Setting(
        default=30,  # messages per session
        convert=int,
        is_valid=positive_int,
        accepted=POSITIVE_INT,
        check_id="longpoll_app.E109",
        doc="messages a session may send in a burst",
    )
    LONGPOLL_DEDUP_WINDOW = Setting(
        default=600.0,  # seconds
        convert=float,
        is_valid=positive_number,
        accepted=SECONDS,
        check_id="longpoll_app.E110",
        doc="seconds a client message id is remembered",
    )
    LONGPOLL_BODY_TIMEOUT = Setting(
        default=10.0,  # seconds
        convert=float,
        is_valid=positive_number,
        accepted=SECONDS,
        check_id="longpoll_app.E111",
        doc="seconds a request's body may take to arrive",
    )
    LONGPOLL_WATCH_INTERVAL = Setting(
        default=0.05,  # seconds
        convert=float,
        is_valid=positive_number,
        accepted=SECONDS,
        check_id="longpoll_app.E112",
        doc="seconds between checks for other processes' sends, with a process-local layer"
        " only (a send from the same machine makes the check at once)",
    )
    LONGPOLL_CHANNEL_LAYER = Setting(
        default="default",
        convert=str,
        is_valid=channel_layer_alias,
        accepted="a CHANNEL_LAYERS alias",
        check_id="longpoll_app.E113",
        doc="the CHANNEL_LAYERS alias that carries wake-ups between processes",
    )
    LONGPOLL_STATUS_INTERVAL = Setting(
        default=5.0,  # seconds
        convert=float,
        is_valid=positive_number,
        accepted=SECONDS,
        check_id="longpoll_app.E114",
        doc="seconds between a server process's reports of its held polls and latency",
    )
    LONGPOLL_CLEANUP_INTERVAL = Setting(
        default=300.0,  # seconds; 0: no automatic clean-up
        convert=float,
        is_valid=non_negative_number,
        accepted="a positive number of seconds, or 0 for no automatic clean-up",
        check_id="longpoll_app.E115",
        doc="seconds between a server process's automatic clean-up steps; 0 turns them off",
    )
    LONGPOLL_CLEANUP_BATCH = Setting(
        default=500,  # rows of each kind per step
        convert=int,
        is_valid=positive_int,
        accepted=POSITIVE_INT,
        check_id="longpoll_app.E116",
        doc="rows of each kind one automatic clean-up step removes at most",
    )
    LONGPOLL_GC_INTERVAL = Setting(
        default=0.1,  # seconds; 0: Python's own collector
        convert=float,
        is_valid=non_negative_number,
        accepted="a positive number of seconds, or 0 to leave Python's collector alone",
        check_id="longpoll_app.E117",
        doc="seconds between paced young garbage collections in a process that holds polls; "
        "0 leaves Python's collector as it is",
    )
    LONGPOLL_METRICS_TOKEN = Setting(
        default=None,  # None: staff users only
        convert=optional_str,
        is_valid=bearer_token_or_none,
        accepted=f"None (staff only), or a bearer token of at least {METRICS_TOKEN_MIN_LENGTH} "
        "characters from A-Z a-z 0-9 - . _ ~ + / (secrets.token_urlsafe(32) makes one)",
        check_id="longpoll_app.E118",
        doc="the bearer token that lets a scraper read the Prometheus metrics view; "
        "None: staff users only",
    )

    LONGPOLL_DRAIN_TIMEOUT = Setting(
        default=2.0,  # seconds; 0: the server's own SIGTERM behaviour
        convert=float,
        is_valid=non_negative_number,
        accepted="a positive number of seconds, or 0 to leave SIGTERM to the server",
        check_id="longpoll_app.E119",
        doc="on SIGTERM, held polls are answered at once and connections closed; the server "
        "is told to stop when none is held, or after this many seconds; 0 leaves SIGTERM "
        "to the server",
    )
    LONGPOLL_TRANSPORT = Setting(
        default="auto",
        convert=str,
        is_valid=transport_name,
        accepted="one of " + ", ".join(map(repr, TRANSPORTS)),
        check_id="longpoll_app.E120",
        doc="how wake-ups reach other processes: 'layer' (the shared channel layer), "
        "'postgres' (LISTEN/NOTIFY), 'watcher' (a look at the queue every "
        "LONGPOLL_WATCH_INTERVAL); 'auto': the shared layer if there is one, else "
        "PostgreSQL if the database is PostgreSQL (with psycopg 3), else the watcher",
    )

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}  # converted values read so far, by name
        self._source: object = None  # the settings object they were read from
        setting_changed.connect(self._forget, dispatch_uid="longpoll_conf")

    def _forget(self, **kwargs: Any) -> None:
        self._values.clear()


SETTINGS: tuple[Setting[Any], ...] = tuple(
    value for value in vars(Settings).values() if isinstance(value, Setting)
)
DEFAULTS: Mapping[str, Any] = MappingProxyType({s.name: s.default for s in SETTINGS})

conf = Settings()
