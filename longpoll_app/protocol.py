"""The wire protocol: request bodies in, JSON answers and errors out.

Every refusal is a ``ProtocolError`` that renders as
``{"error": "<code>", "detail": "<sentence>"}``; docs/protocol.md lists them.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_CURSOR = 2**63 - 1  # ids are 64-bit signed integers in the database
MAX_TYPE_LENGTH = 100  # characters, as Message.type stores them
# Event names of longpoll.js's own, so no message may carry them as its type.
RESERVED_TYPES = frozenset({"status", "gap", "error", "*"})
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")

JSON_HEADERS = [
    (b"content-type", b"application/json"),
    # A poll's answer is for one browser, once: no cache may keep or replay it.
    (b"cache-control", b"no-store"),
]


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


def too_many(code: str, detail: str, retry_after: float) -> ProtocolError:
    return ProtocolError(429, code, detail, {"Retry-After": str(max(1, round(retry_after)))})


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        # UTF-8, as RFC 8259 and docs/protocol.md ask (a leading BOM is ignored);
        # decoding here also spares json.loads its guess of the encoding.
        payload = json.loads(body.decode().removeprefix("\ufeff"))
    except UnicodeDecodeError:
        raise ProtocolError(400, "invalid_json", "The body is not UTF-8 text.") from None
    except ValueError as exc:
        raise ProtocolError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise ProtocolError(
            400, "invalid_body", f"The body must be a JSON object, not {_json_kind(payload)}."
        )
    return payload


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
    if not isinstance(message_type, str) or not 0 < len(message_type) <= MAX_TYPE_LENGTH:
        raise ProtocolError(
            400,
            "invalid_type",
            f"type must be a string of 1-{MAX_TYPE_LENGTH} characters, not {_short(message_type)}.",
        )
    return client_id, message_type, payload.get("data")


def validate_type(message_type: object) -> str:
    """A server-side message type, checked as strictly as a client's."""
    if not isinstance(message_type, str) or not 0 < len(message_type) <= MAX_TYPE_LENGTH:
        raise ValueError(
            f"Message type must be a string of 1-{MAX_TYPE_LENGTH} characters, "
            f"not {message_type!r}."
        )
    if message_type in RESERVED_TYPES:
        raise ValueError(
            f"Message type {message_type!r} is reserved for longpoll.js's own events "
            f"({', '.join(sorted(RESERVED_TYPES))})."
        )
    return message_type


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


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
