"""Django's sessions, and the app's record of each session that polls or is
sent to (``LongpollSession``): whether a key names a live session, its user
and expiry, and the ids a poll needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import import_module
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.auth import SESSION_KEY as AUTH_USER_ID_KEY
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.base import SessionBase
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.core.signals import setting_changed
from django.db import connection
from django.utils import timezone

from . import sql
from .models import LongpollSession, session_fingerprint
from .protocol import UNSTORABLE

LAST_POLL_PRECISION = 300.0  # seconds: last_poll is rewritten at most this often


def wake_group(session_key: str) -> str:
    """The channel-layer group that carries a session's wake-ups.

    A hash, because group names allow few characters and because the key is a
    credential that must not travel through Redis.
    """
    return "longpoll." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def session_store(session_key: str | None = None) -> SessionBase:
    engine = import_module(settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(session_key)
    return store


def load_live_session(session_key: str) -> SessionBase | None:
    """The session with this key, or None when it does not exist or has expired."""
    session = session_store(session_key)
    # keys() loads the session once and keeps it (load() itself keeps nothing,
    # so a later get() would read the database again). Every server-side
    # backend forgets the key when it finds no live session.
    session.keys()
    return session if session.session_key is not None else None


class SessionRecord(NamedTuple):
    """What a poll needs to know about its session, read in one go."""

    pk: int
    last_id: int
    acked_id: int


def verify_sessions(polls: list[tuple[str, str | None, str]]) -> dict[str, SessionRecord]:
    """Check which of the polls' ``(key, ip_address, user_agent)`` name live
    sessions, and record that they poll: the records of those keys. A forged,
    expired or ended key gets none, and nothing is written for it.

    A handful of queries for the lot, however many: the hub checks the sessions
    of the polls that arrive together in one go. It writes only what changed
    (and ``last_poll`` when it is older than ``LAST_POLL_PRECISION``): every
    poll checks its session, and a write per check would make an idle server a
    busy database writer. What the client sent is stored only in a form every
    database takes: an address that is not an IP address is stored as none.
    """
    now = timezone.now()
    clients = {
        key: (_ip_address(ip_address), _storable_text(user_agent)[:255])
        for key, ip_address, user_agent in polls
    }
    facts, rows = _live_sessions(list(clients))
    wanted = {
        key: {
            "user_id": user_pk,
            "expires_at": expires_at,
            "ip_address": clients[key][0],
            "user_agent": clients[key][1],
        }
        for key, (user_pk, expires_at) in facts.items()
    }
    missing = [key for key in wanted if key not in rows]
    if missing:
        LongpollSession.objects.bulk_create(
            [
                LongpollSession(
                    session_key=key,
                    fingerprint=session_fingerprint(key),
                    last_poll=now,
                    **wanted[key],
                )
                for key in missing
            ],
            ignore_conflicts=True,  # a concurrent poll or send may have created it first
        )
        created = _session_rows(missing)
        rows.update(created)
    else:
        created = {}
    for key, row in rows.items():
        if key not in created and _outdated(row, wanted[key], now):
            LongpollSession.objects.filter(pk=row["pk"]).update(last_poll=now, **wanted[key])
    return {
        key: SessionRecord(pk=row["pk"], last_id=row["last_id"], acked_id=row["acked_id"])
        for key, row in rows.items()
    }


def _ip_address(value: str | None) -> str | None:
    """``value`` as ``GenericIPAddressField`` stores it, or None when it is not
    an IP address (a server may take any text from X-Forwarded-For)."""
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if getattr(address, "scope_id", None):  # fe80::1%eth0: no database column takes it
        return None
    return str(address)


def _storable_text(value: str) -> str:
    return UNSTORABLE.sub("\ufffd", value)


def _live_sessions(
    keys: Sequence[str], with_records: bool = True
) -> tuple[dict[str, tuple[Any, datetime | None]], dict[str, dict[str, Any]]]:
    """``{key: (user pk, expiry)}`` of the keys that name live sessions, and
    (``with_records``) the records of those that have one.

    With a database session backend, one query for both, and the expiry test
    is ``DatabaseSessionStore.load()``'s: every poll makes this check, and the
    ORM's query building cost several times the query. Other backends (cache,
    file) load each session through the backend.
    """
    engine = import_module(settings.SESSION_ENGINE)
    if not issubclass(engine.SessionStore, DatabaseSessionStore):
        found: dict[str, tuple[Any, datetime | None]] = {}
        for key in keys:
            session = load_live_session(key)
            if session is not None:
                found[key] = (_user_pk(session.get(AUTH_USER_ID_KEY)), session.get_expiry_date())
        return found, _session_rows(list(found)) if with_records else {}
    store_class: type[DatabaseSessionStore] = engine.SessionStore
    decoder = store_class()
    statement = sql.session_check(connection.vendor, store_class.get_model_class())
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    facts: dict[str, tuple[Any, datetime | None]] = {}
    rows: dict[str, dict[str, Any]] = {}
    with connection.cursor() as db:
        for chunk in sql.chunks(keys):
            db.execute(statement.replace("(?)", sql.in_list(len(chunk))), [*chunk, now])
            for key, data, expire_date, pk, *record in db.fetchall():
                user_pk = _decoded_user_pk(decoder, data)
                facts[key] = (user_pk, aware(expire_date))
                if pk is not None and with_records:
                    rows[key] = _record_row(key, pk, *record)
    return facts, rows


def live_session_facts(keys: Sequence[str]) -> dict[str, tuple[Any, datetime | None]]:
    """``{key: (user pk, expiry)}`` for the keys that name live sessions."""
    return _live_sessions(keys, with_records=False)[0]


def live_expiries(keys: Sequence[str]) -> dict[str, datetime | None]:
    """The expiry of each of these keys that names a live session."""
    return {key: expiry for key, (_, expiry) in live_session_facts(keys).items()}


def _record_row(
    key: str,
    pk: int,
    last_id: int,
    acked_id: int,
    last_poll: Any,
    expires_at: Any,
    user_id: Any,
    ip_address: Any,
    user_agent: str,
) -> dict[str, Any]:
    """A record's columns as ``_session_rows`` gives them (plain SQL hands
    SQLite's datetimes over as text, PostgreSQL's addresses as objects)."""
    return {
        "pk": pk,
        "session_key": key,
        "last_id": last_id,
        "acked_id": acked_id,
        "last_poll": None if last_poll is None else aware(last_poll),
        "expires_at": None if expires_at is None else aware(expires_at),
        "user_id": user_id,
        "ip_address": None if ip_address is None else str(ip_address),
        "user_agent": user_agent,
    }


def _session_rows(keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    fields = ("pk", "session_key", "last_id", "acked_id", "last_poll", "expires_at")
    for chunk in sql.chunks(keys):
        for row in LongpollSession.objects.filter(session_key__in=chunk).values(
            *fields, "user_id", "ip_address", "user_agent"
        ):
            rows[row["session_key"]] = row
    return rows


def _outdated(row: dict[str, Any], fields: dict[str, Any], now: datetime) -> bool:
    def drift(then: datetime | None, value: datetime | None) -> float:
        if then is None or value is None:
            return 0.0 if then is value else math.inf
        return abs((value - then).total_seconds())

    # Without a custom expiry, get_expiry_date() is "now + SESSION_COOKIE_AGE":
    # it moves on every check, so only a move beyond the precision counts.
    return (
        drift(row["last_poll"], now) >= LAST_POLL_PRECISION
        or drift(row["expires_at"], fields["expires_at"]) >= LAST_POLL_PRECISION
        or any(row[name] != fields[name] for name in ("user_id", "ip_address", "user_agent"))
    )


def record_user(session_key: str, user_pk: Any, expires_at: datetime) -> None:
    """Note who a session belongs to (at login, before the session is saved)."""
    fields = {"user_id": user_pk, "expires_at": expires_at}
    LongpollSession.objects.update_or_create(
        session_key=session_key,
        defaults=fields,
        create_defaults={**fields, "fingerprint": session_fingerprint(session_key)},
    )


DECODED_KEPT = 20_000  # session data strings whose user is remembered (~150 bytes each)
_decoded: dict[tuple[type[SessionBase], bytes], Any] = {}


def _decoded_user_pk(decoder: SessionBase, data: str) -> Any:
    """The user pk in a session's data, as ``decoder.decode(data)`` gives it.

    Remembered by the data string's BLAKE2 digest (128 bits, not the string:
    it may be long): every poll checks its session, and verifying the
    signature and parsing the JSON was the largest part of a check. The answer
    is the same as decoding would give: Django's ``decode`` is a function of
    the string, the class and the settings (the memory is cleared when a
    setting changes), and only Django's own ``decode`` is remembered. A string
    that does not decode, or holds an empty session, is decoded each time
    (Django logs a corrupted one each time).
    """
    if type(decoder).decode is not SessionBase.decode:
        return _user_pk(decoder.decode(data).get(AUTH_USER_ID_KEY))
    digest = hashlib.blake2b(data.encode(), digest_size=16).digest()
    cache_key = (type(decoder), digest)
    try:
        return _decoded[cache_key]
    except KeyError:
        pass
    session = decoder.decode(data)
    user_pk = _user_pk(session.get(AUTH_USER_ID_KEY))
    if session:
        if len(_decoded) >= DECODED_KEPT:
            with contextlib.suppress(KeyError, StopIteration, RuntimeError):
                del _decoded[next(iter(_decoded))]  # the oldest: it may have changed since
        _decoded[cache_key] = user_pk
    return user_pk


def _forget_decoded(**kwargs: Any) -> None:
    _decoded.clear()


setting_changed.connect(_forget_decoded, dispatch_uid="longpoll_sessions_decoded")


def _user_pk(raw: Any) -> Any:
    if raw is None:
        return None
    return get_user_model()._meta.pk.to_python(raw)


def ensure_session_row(session_key: str) -> LongpollSession:
    """The session's record, created when a live session has none yet.

    Raises ``LookupError`` for a key that names no live session, so that
    messages are never queued where no browser can collect them.
    """
    row = LongpollSession.objects.filter(session_key=session_key).first()
    if row is not None:
        return row
    session = load_live_session(session_key)
    if session is None:
        raise LookupError(f"No live session has the key {session_fingerprint(session_key)!r}.")
    LongpollSession.objects.bulk_create(
        [
            LongpollSession(
                session_key=session_key,
                fingerprint=session_fingerprint(session_key),
                user_id=_user_pk(session.get(AUTH_USER_ID_KEY)),
                expires_at=session.get_expiry_date(),
            )
        ],
        ignore_conflicts=True,  # a concurrent sender may have created it first
    )
    return LongpollSession.objects.get(session_key=session_key)


def session_pks(session_keys: list[str]) -> dict[str, int]:
    """The record pk of each key that has one."""
    return dict(
        LongpollSession.objects.filter(session_key__in=session_keys).values_list(
            "session_key", "pk"
        )
    )


def live_session_keys_of(user_pk: Any) -> list[str]:
    """Keys of the sessions of a user that have not expired."""
    rows = LongpollSession.objects.filter(user_id=user_pk).exclude(expires_at__lt=timezone.now())
    return list(rows.values_list("session_key", flat=True))


def aware(value: datetime | str) -> datetime:
    """A datetime as the ORM would give it (SQLite hands plain SQL naive UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
