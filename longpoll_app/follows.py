"""The sessions one hub follows, and the futures its held polls wait on.

A ``Follow`` is what one process knows about one session that polls there:
the newest message id it knows of, what it acknowledged, and the polls held
for it. ``Follows`` is the registry, by session key and by record pk, and the
one place where orders (wake, end, end_key, release) reach held polls,
whether they came from this process or another.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Iterator
from typing import Any

from .sessions import SessionRecord, wake_group


class Follow:
    """What the hub knows about one session that polls in this process.

    Slots: one per session, kept for as long as it polls. A plain class: a
    dataclass costs every process a millisecond or more to make at import.
    """

    __slots__ = (
        "acked",
        "checked_at",
        "drained",
        "ended",
        "group",
        "held",
        "last_id",
        "pk",
        "session_key",
        "subscribed_at",
        "used_at",
        "waiters",
    )  # fmt: skip

    def __init__(
        self,
        session_key: str,
        group: str,
        pk: int | None = None,
        *,
        checked_at: float = -math.inf,
        subscribed_at: float = math.inf,
    ) -> None:
        self.session_key = session_key
        self.group = group
        self.pk = pk
        self.last_id = 0  # newest message id known to exist
        self.acked = 0  # newest id acknowledged by a poll in this process
        self.drained = -1  # newest id when a fresh page last found nothing pending
        self.checked_at = checked_at  # loop time when the store was last read
        self.subscribed_at = subscribed_at  # loop time when wake-ups began to arrive
        self.held = 0  # polls for this session in this process right now
        self.used_at = 0.0
        self.ended = False
        self.waiters: set[asyncio.Future[bool]] = set()

    def drain(self, last_id: int) -> None:
        """A fresh page found nothing pending up to ``last_id``."""
        self.drained = max(self.drained, last_id)

    def knows_nothing_pending(self) -> bool:
        return self.last_id <= self.drained


class Follows:
    """The follows of one hub, by session key and by record pk."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.by_key: dict[str, Follow] = {}
        self.by_pk: dict[int, Follow] = {}
        self.draining = False  # the process is stopping: no poll waits any more

    def __len__(self) -> int:
        return len(self.by_key)

    def __iter__(self) -> Iterator[Follow]:
        return iter(list(self.by_key.values()))

    def __contains__(self, session_key: object) -> bool:
        return session_key in self.by_key

    def __getitem__(self, session_key: str) -> Follow:
        return self.by_key[session_key]

    def follow(self, session_key: str, covered: bool) -> Follow:
        """The session's follow, made on first use; ``covered``: wake-ups for
        every session arrive already (no subscription needed)."""
        follow = self.by_key.get(session_key)
        if follow is None:
            follow = Follow(session_key=session_key, group=wake_group(session_key))
            self.by_key[session_key] = follow
            if covered:
                follow.subscribed_at = -math.inf
        follow.used_at = self.loop.time()
        return follow

    # A pair, not a context manager: a held poll would keep its generator alive.
    def hold_starts(self, follow: Follow) -> None:
        follow.held += 1

    def hold_ends(self, follow: Follow) -> None:
        follow.held -= 1
        follow.used_at = self.loop.time()

    def attach(self, follow: Follow, record: SessionRecord, read_at: float) -> None:
        """Take what the store said about the session at ``read_at``."""
        if follow.pk != record.pk:
            if follow.pk is not None:
                self.by_pk.pop(follow.pk, None)
            follow.pk = record.pk
            self.by_pk[record.pk] = follow
            # A new record: its ids start afresh, and so does what was acknowledged.
            follow.last_id = record.last_id
            follow.acked = follow.drained = record.acked_id
        else:
            follow.last_id = max(follow.last_id, record.last_id)
        follow.acked = max(follow.acked, record.acked_id)
        follow.checked_at = read_at

    def saw(self, follow: Follow, last_id: int, read_at: float) -> None:
        """A read of the store at ``read_at`` found ``last_id`` the newest id."""
        follow.last_id = max(follow.last_id, last_id)
        follow.checked_at = read_at

    def wait(self, follow: Follow, timeout: float) -> asyncio.Future[bool]:
        """A future that is True once the session is woken, or False after
        ``timeout`` seconds. A future rather than a coroutine: thousands are
        held at once, and a coroutine's frame would be one more object each."""
        waiter: asyncio.Future[bool] = self.loop.create_future()
        if self.draining:
            waiter.set_result(False)  # answer now, as if the hold ran out
            return waiter
        timer = self.loop.call_later(timeout, _resolve, waiter, False)
        follow.waiters.add(waiter)
        waiter.add_done_callback(functools.partial(_forget_waiter, follow, timer))
        return waiter

    # -- orders ---------------------------------------------------------------

    def dispatch(self, order: dict[str, Any]) -> None:
        """Carry out an order, from this process or through the channel layer."""
        kind = order.get("type")
        if kind == WAKE:
            self.wake(int(order["pk"]), int(order["last_id"]))
        elif kind == END:
            self.end(int(order["pk"]))
        elif kind == END_KEY:
            self.end_key(str(order["group"]), int(order["pk"]))
        elif kind == RELEASE:
            self.release(int(order["pk"]))

    def wake(self, session_pk: int, last_id: int) -> None:
        """A message with id ``last_id`` was queued for the session."""
        follow = self.by_pk.get(session_pk)
        if follow is None or last_id <= follow.last_id:
            return
        follow.last_id = last_id
        wake_all(follow)

    def end(self, session_pk: int) -> None:
        """The session ended: answer its held polls and forget it."""
        follow = self.by_pk.get(session_pk)
        if follow is not None:
            self.forget(follow.session_key)

    def end_key(self, group: str, session_pk: int) -> None:
        """The session's key changed: answer the polls held with the old key
        (the one whose wake-up group is ``group``) as ended, and forget that key."""
        follow = self.by_pk.get(session_pk)
        if follow is None or follow.group != group:
            follow = next((f for f in self.by_key.values() if f.group == group), None)
        if follow is not None:
            self.forget(follow.session_key)

    def release(self, session_pk: int) -> None:
        """Answer the session's held polls now, empty, as if the hold ran out."""
        follow = self.by_pk.get(session_pk)
        if follow is not None:
            for waiter in follow.waiters:
                _resolve(waiter, False)

    def drain(self) -> None:
        """The process is stopping: answer every held poll now, empty, and let
        no poll wait from now on (their browsers poll again, elsewhere)."""
        self.draining = True
        for follow in self.by_key.values():
            for waiter in follow.waiters:
                _resolve(waiter, False)

    def forget(self, session_key: str) -> None:
        """The key names no live session (it ended, or was rotated): answer the
        polls held with it as ended, and forget it. A follow of another key with
        the same record (the rotated key's successor) is left alone."""
        follow = self.by_key.get(session_key)
        if follow is not None:
            self.remove(follow)
            follow.ended = True
            wake_all(follow)

    def remove(self, follow: Follow) -> None:
        self.by_key.pop(follow.session_key, None)
        if follow.pk is not None and self.by_pk.get(follow.pk) is follow:
            del self.by_pk[follow.pk]

    def wake_all(self) -> None:
        """Answer every held poll now: their next polls read the store."""
        for follow in self.by_key.values():
            wake_all(follow)

    def held_polls(self) -> int:
        return sum(follow.held for follow in self.by_key.values())

    def idle(self, cutoff: float) -> list[Follow]:
        """The follows with no poll held and none since loop time ``cutoff``."""
        return [f for f in self.by_key.values() if f.held == 0 and f.used_at < cutoff]


# The orders, as the channel layer carries them (``type`` is the handler name).
WAKE = "longpoll.wake"
END = "longpoll.end"
END_KEY = "longpoll.end_key"
RELEASE = "longpoll.release"


def wake_all(follow: Follow) -> None:
    for waiter in follow.waiters:
        _resolve(waiter)


def _forget_waiter(
    follow: Follow, timer: asyncio.TimerHandle, waiter: asyncio.Future[bool]
) -> None:
    timer.cancel()
    follow.waiters.discard(waiter)


def _resolve(waiter: asyncio.Future[bool], woken: bool = True) -> None:
    if not waiter.done():
        waiter.set_result(woken)
