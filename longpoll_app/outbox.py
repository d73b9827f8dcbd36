"""Wake-ups on their way to the hubs of other processes through the shared
channel layer, sent without the sender waiting.

Why: a ``group_send`` is several Redis round trips, and waiting for it was
half of what a ``send_to_session`` cost its caller. Nothing depends on the
caller waiting: the message is already committed to the store, and a wake-up
that never arrives only delays the message until the session's next poll
(logged, as a failing send always was). So a sender hands the wake-up to the
send loop and returns. While a batch is on its way, the wake-ups for one
session merge into one carrying the highest id (a hub ignores an id it knows),
and the sessions of a batch are sent side by side.

At exit the send loop lets what is in flight finish (``process``), so a
management command that sends and exits still wakes its browsers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from channels.layers import BaseChannelLayer

from . import process
from .layers import shared_layer

log = logging.getLogger("longpoll_app")

SIDE_BY_SIDE = 32  # group_sends in flight at once: each holds a pooled Redis connection

# True from a failed wake-up through the transport to the next one that works:
# an outage is logged once, not once per message sent during it.
_failing = False


def note_failure(group: str, exc: BaseException, via: str = "the channel layer") -> None:
    # The message is safe in the store; the next poll of the session reads it.
    global _failing
    level = logging.DEBUG if _failing else logging.WARNING
    _failing = True
    log.log(
        level,
        "longpoll: could not wake %s through %s: %s (logged once until it works again)",
        group,
        via,
        exc,
    )


def note_success() -> None:
    global _failing
    _failing = False


class Outbox:
    """The WAKE orders not yet sent, one per group (session)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, dict[str, Any]] = {}
        self.flushing = False  # a flush task is scheduled or running on the send loop

    def put(self, group: str, order: dict[str, Any]) -> None:
        """Send a WAKE order to ``group`` through the shared layer soon; return at once."""
        with self.lock:
            known = self.pending.get(group)
            if known is None or known["last_id"] < order["last_id"]:
                self.pending[group] = order
            if self.flushing:
                return  # the running flush takes it in its next batch
            self.flushing = True
        try:
            process.post_to_send_loop(self.flush())
        except BaseException:
            with self.lock:
                self.flushing = False
            raise

    async def flush(self) -> None:
        """Send what is pending, batch after batch, until nothing is."""
        try:
            while True:
                with self.lock:
                    batch, self.pending = self.pending, {}
                    if not batch:
                        self.flushing = False
                        return
                await self.send(list(batch.items()))
        except BaseException:  # cancelled as the loop stops: the next put starts anew
            with self.lock:
                self.flushing = False
            raise

    async def send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            layer = shared_layer()  # made here on a fresh process's first send
        except Exception as exc:  # a layer its settings cannot make
            layer, failure = None, exc
        else:
            failure = RuntimeError("the channel layer is not shared")
        if layer is None:
            for group, _ in batch:
                note_failure(group, failure)
            return
        await self.send_through(layer, batch)

    async def send_through(
        self, layer: BaseChannelLayer, batch: list[tuple[str, dict[str, Any]]]
    ) -> None:
        for start in range(0, len(batch), SIDE_BY_SIDE):
            chunk = batch[start : start + SIDE_BY_SIDE]
            results = await asyncio.gather(
                *(self.send_one(layer, group, order) for group, order in chunk),
                return_exceptions=True,
            )
            for (group, _), result in zip(chunk, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    note_failure(group, result)
                else:
                    note_success()

    async def send_one(self, layer: BaseChannelLayer, group: str, order: dict[str, Any]) -> None:
        # Bounded, as a waiting caller's send is: a Redis that stopped answering
        # must not hold back the wake-ups queued behind this one.
        try:
            await asyncio.wait_for(layer.group_send(group, order), process.LAYER_SEND_TIMEOUT)
        except TimeoutError:
            raise TimeoutError(
                f"the channel layer did not answer within {process.LAYER_SEND_TIMEOUT} s"
            ) from None

    def after_fork_in_child(self) -> None:
        # The parent's wake-ups are its own to send, and its send loop (and any
        # flush scheduled on it) does not exist here.
        self.lock = threading.Lock()
        self.pending = {}
        self.flushing = False


_outbox = Outbox()  # the process's one


SETTLE_STEP = 0.005  # seconds between looks at whether the outbox is empty


def settle(timeout: float = 5.0) -> bool:  # seconds
    """Wait until every wake-up put so far has been sent (or failed); False
    if some were still on their way after ``timeout``. For tests, and for a
    caller that must know its wake-ups left before it goes on."""
    deadline = time.monotonic() + timeout
    while True:
        with _outbox.lock:
            if not _outbox.flushing:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(SETTLE_STEP)


def put(group: str, order: dict[str, Any]) -> None:
    """Send a WAKE order to ``group`` through the shared layer soon; return at once."""
    _outbox.put(group, order)


if hasattr(os, "register_at_fork"):  # Windows has no fork
    os.register_at_fork(after_in_child=_outbox.after_fork_in_child)
