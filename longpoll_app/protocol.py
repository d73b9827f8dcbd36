"""The wire protocol: request bodies in, JSON answers and errors out.

Every refusal is a ``ProtocolError`` that renders as
``{"error": "<code>", "detail": "<sentence>"}``; docs/protocol.md lists them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeGuard

MAX_CURSOR = 2**63 - 1  # ids are 64-bit signed integers in the database
MAX_TYPE_LENGTH = 100  # characters, as Message.type stores them
MAX_DATA_DEPTH = 64  # levels of arrays and objects in a message's data, at most
# Event names of longpoll.js's own, so no message may carry them as its type.
RESERVED_TYPES = frozenset({"status", "gap", "error", "*"})
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
# Characters no string may hold: NUL, which PostgreSQL's jsonb and text refuse,
# and lone surrogates, which no UTF-8 encoder writes (json.loads makes them of
# "\ud800" escapes).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

JSON_HEADERS = [
    (b"content-type", b"application/json"),
    # A poll's answer is for one browser, once: no cache may keep or replay it.
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


Answer = tuple[int, Any, dict[str, str]]  # status, JSON body (None: no body), headers


class ProtocolError(Exception):
    """A request the app refuses, with the status and JSON body that say why."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}

    def answer(self) -> Answer:
        return self.status, self.body(), self.headers


def too_many(code: str, detail: str, retry_after: float) -> ProtocolError:
    # Whole seconds (RFC 9110), rounded up: never a time before the wait is over.
    return ProtocolError(429, code, detail, {"Retry-After": str(max(1, math.ceil(retry_after)))})


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it.

    Only strict JSON that can be stored and sent back is taken: no NaN or
    Infinity, no NUL or lone surrogate in any string or key, nesting at most
    ``MAX_DATA_DEPTH`` levels below the body's own object.
    """
    try:
        # UTF-8, as RFC 8259 and docs/protocol.md ask (a leading BOM is ignored);
        # decoding here also spares json.loads its guess of the encoding.
        payload = json.loads(body.decode().removeprefix("\ufeff"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ProtocolError(400, "invalid_json", "The body is not UTF-8 text.") from None
    except RecursionError:
        raise ProtocolError(400, "invalid_json", "The body is nested too deeply.") from None
    except ValueError as exc:
        raise ProtocolError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise ProtocolError(
            400, "invalid_body", f"The body must be a JSON object, not {_json_kind(payload)}."
        )
    try:
        check_data(payload, MAX_DATA_DEPTH + 1, "The body")
    except ValueError as exc:
        raise ProtocolError(400, "invalid_data", str(exc)) from None
    return payload


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_data(value: Any, depth: int = MAX_DATA_DEPTH, where: str = "data") -> None:
    """Refuse what could not be stored and sent back as strict JSON.

    ``TypeError`` for a value ``json.dumps`` cannot write; ``ValueError`` for
    NaN or Infinity, a NUL or lone surrogate in a string or key, or nesting
    deeper than ``depth``. Every entry point of data calls this before
    anything is stored, so a stored message always encodes.
    """
    try:
        _check_value(value, depth)
    except _Unstorable as exc:
        path = "".join(f"[{_short(step)}]" for step in reversed(exc.path))
        raise ValueError(f"{where}{path} {exc.reason}.") from None
    try:
        json.dumps(value, allow_nan=False)  # what the walk does not judge: custom types, huge ints
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where} is not JSON-serializable: {exc}") from None


class _Unstorable(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[object] = []  # innermost first; filled only on the way out


def _check_value(value: Any, depth: int) -> None:
    if isinstance(value, str):
        if UNSTORABLE.search(value):
            raise _Unstorable("holds a NUL or a lone surrogate, which JSON text cannot carry")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Unstorable(f"is {value}, which is not a JSON number")
    elif isinstance(value, dict | list | tuple):
        if depth <= 0:
            raise _Unstorable(f"is nested more than {MAX_DATA_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for step, item in items:
            try:
                if isinstance(step, str) and UNSTORABLE.search(step):
                    raise _Unstorable("has a key with a NUL or a lone surrogate")
                _check_value(item, depth - 1)
            except _Unstorable as exc:
                exc.path.append(step)
                raise


def parse_cursor(payload: dict[str, Any]) -> int | None:
    """The poll's cursor: null, or the id of the last message the page received."""
    unknown = set(payload) - {"cursor"}
    if unknown:
        raise ProtocolError(400, "invalid_body", f"Unknown field(s): {', '.join(sorted(unknown))}.")
    cursor = payload.get("cursor")
    if cursor is None:
        return None
    if isinstance(cursor, bool) or not isinstance(cursor, int):
        raise ProtocolError(
            400, "invalid_cursor", f"cursor must be an integer or null, not {_json_kind(cursor)}."
        )
    if not 0 <= cursor <= MAX_CURSOR:
        raise ProtocolError(
            400, "invalid_cursor", f"cursor must be between 0 and {MAX_CURSOR}, not {cursor}."
        )
    return cursor


def parse_client_message(payload: dict[str, Any]) -> tuple[str, str, Any]:
    """``(id, type, data)`` of a message the page sends."""
    unknown = set(payload) - {"id", "type", "data"}
    if unknown:
        raise ProtocolError(400, "invalid_body", f"Unknown field(s): {', '.join(sorted(unknown))}.")
    client_id = payload.get("id")
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise ProtocolError(
            400,
            "invalid_id",
            f"id must be 1-64 characters of A-Z a-z 0-9 _ . : -, not {_short(client_id)}.",
        )
    message_type = payload.get("type")
    if not _is_type(message_type):
        raise ProtocolError(
            400,
            "invalid_type",
            f"type must be a string of 1-{MAX_TYPE_LENGTH} characters, not {_short(message_type)}.",
        )
    return client_id, message_type, payload.get("data")


def _is_type(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_TYPE_LENGTH


def validate_type(message_type: object) -> str:
    """A server-side message type, checked as strictly as a client's."""
    if not _is_type(message_type):
        raise ValueError(
            f"Message type must be a string of 1-{MAX_TYPE_LENGTH} characters, "
            f"not {message_type!r}."
        )
    if UNSTORABLE.search(message_type):
        raise ValueError("Message type holds a NUL or a lone surrogate, which JSON cannot carry.")
    if message_type in RESERVED_TYPES:
        raise ValueError(
            f"Message type {message_type!r} is reserved for longpoll.js's own events "
            f"({', '.join(sorted(RESERVED_TYPES))})."
        )
    return message_type


def dumps(payload: Any) -> bytes:
    """Strict JSON as UTF-8; ``ValueError`` or ``TypeError`` if it cannot be written.

    A lone surrogate (only in a row stored before ``check_data`` refused them)
    is written as its ``\\u`` escape rather than failing the answer.
    """
    try:
        return json.dumps(
            payload, separators=_COMPACT, ensure_ascii=False, allow_nan=False
        ).encode()
    except UnicodeEncodeError:
        return json.dumps(payload, separators=_COMPACT, allow_nan=False).encode()


_COMPACT = (",", ":")


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, int) and not isinstance(value, bool):
        return "an integer"
    return kinds.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
