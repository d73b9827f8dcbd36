"""Orders as PostgreSQL notifications carry them: the channel and the payload.

Apart from ``notify`` so that a sender, which only sends them, imports nothing
of the listening side.
"""

from __future__ import annotations

import json
from typing import Any

# One fixed name: NOTIFY reaches only the listeners of the same database, so
# two databases on one server (two test databases included) never hear each other.
CHANNEL = "longpoll_wake"


def encode(order: dict[str, Any]) -> str:
    """An order as a notification's payload: compact JSON."""
    return json.dumps(order, separators=(",", ":"))


def decode(payload: str) -> dict[str, Any] | None:
    """The order in a payload, or None for one that is not an order of ours
    (anyone who may connect to the database may NOTIFY)."""
    try:
        order = json.loads(payload)
    except ValueError:
        return None
    return order if isinstance(order, dict) else None
