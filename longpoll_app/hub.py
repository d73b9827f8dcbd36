"""The per-process hub: one place where held polls wait and wake-ups arrive.

Every server process (more exactly, every event loop) has one ``Hub``. It
keeps, for each session it has seen poll, a ``Follow`` (``follows``): the
futures of the polls held for it, and the newest message id it knows of.
Polls wait on those futures; they are resolved when a wake-up for the session
arrives, so holding costs nothing but the future and one timer.

Wake-ups from other processes arrive through one ``Transport``
(``transports``): the shared channel layer, PostgreSQL's LISTEN/NOTIFY, or a
watcher of the queue. Session checks and acknowledgements of the polls that
arrive together go to the database in one trip each (``coalesce``).

A follow's ``last_id`` is trusted only while the transport was working before
it was read from the database; otherwise a poll reads the store. That keeps
idle re-polls off the database without ever hiding a message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from channels.layers import BaseChannelLayer

from . import queue, sessions
from .coalesce import Coalescer, Pace
from .conf import conf
from .follows import Follow, Follows
from .sessions import SessionRecord
from .transports import LAYER, POSTGRES, chosen
from .transports.base import Transport
from .transports.layer import LayerTransport
from .transports.notify import NotifyTransport
from .transports.watcher import StoreWatcher

log = logging.getLogger("longpoll_app")

SWEEP_INTERVAL = 30.0  # seconds between looks for sessions no longer polling here
IDLE_GRACE = 30.0  # seconds a session may go without polling before the hub forgets it
CLOSE_TIMEOUT = 2.0  # seconds aclose() waits for the hub's tasks to stop

# Session checks: at once while quiet; once busy, at most 20 trips a second (a
# thread hop each costs more than the query), the checks that arrive meanwhile
# going together in the next.
CHECKS = Pace(rate=20.0, burst=5, batch=1000)
# Acknowledgements gather for 50 ms before one delete removes them all; after
# an outage they are kept and tried again a second later.
ACKS = Pace(delay=0.05, retry=1.0)

Client = tuple[str | None, str]  # (address, user agent) of a poll, as request.META has them
AckKey = tuple[int, str]  # (record pk, session key)


class Hub:
    """Held polls of one event loop, and the wake-ups that end them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, layer: BaseChannelLayer | None) -> None:
        self.loop = loop
        self.follows = Follows(loop)
        self.transport: Transport = make_transport(self.follows, layer)
        self.checks: Coalescer[str, Client, SessionRecord] = Coalescer(
            loop, _check_sessions, _first, CHECKS, "check sessions"
        )
        self.acks: Coalescer[AckKey, int, None] = Coalescer(
            loop, _acknowledge, max, ACKS, "delete acknowledged messages"
        )
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------

    def start(self, *loops: Coroutine[Any, Any, None]) -> None:
        """Run the transport, the sweep and ``loops`` (the process's background
        work, see ``runtime``) for as long as the hub runs."""
        for coro in (self.transport.run(), self._sweep_loop(), *loops):
            task = self.loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the hub's tasks; for tests and orderly shutdown."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            # Bounded: a channel-layer receive may take a moment to notice.
            await asyncio.wait(list(self._tasks), timeout=CLOSE_TIMEOUT)
        self.checks.cancel()
        await self.acks.flush()
        self.follows.wake_all()

    async def ready(self) -> None:
        """Wait until wake-ups can arrive (or the transport tried and failed)."""
        await self.transport.ready()

    def is_ready(self) -> bool:
        return self.transport.is_ready()

    # -- what a poll asks -----------------------------------------------------

    def follow(self, session_key: str) -> Follow:
        return self.follows.follow(session_key, covered=self.transport.covers_all)

    def attach(self, follow: Follow, record: SessionRecord, read_at: float) -> None:
        self.follows.attach(follow, record, read_at)

    def is_trusted(self, follow: Follow) -> bool:
        return self.transport.is_trusted(follow)

    def must_subscribe(self, follow: Follow) -> bool:
        return self.transport.must_subscribe(follow)

    async def subscribe(self, follow: Follow) -> None:
        await self.transport.subscribe(follow)

    def wait(self, follow: Follow, timeout: float) -> asyncio.Future[bool]:
        return self.follows.wait(follow, timeout)

    def forget(self, session_key: str) -> None:
        self.follows.forget(session_key)

    def dispatch(self, order: dict[str, Any]) -> None:
        """An order from this process (``api``); the transport brings the others'."""
        self.follows.dispatch(order)

    async def check_session(
        self, session_key: str, ip_address: str | None, user_agent: str
    ) -> SessionRecord | None:
        """``sessions.verify_sessions`` for one poll, in one trip with the
        polls that arrive together."""
        return await self.checks.add(session_key, (ip_address, user_agent))

    def ack(self, follow: Follow, cursor: int) -> None:
        """Queue the deletion of everything up to ``cursor`` for one batch."""
        if follow.pk is None or cursor <= follow.acked or cursor > follow.last_id:
            return
        follow.acked = cursor
        follow.drain(cursor)
        done = self.acks.add((follow.pk, follow.session_key), cursor)
        done.add_done_callback(_log_ack_failure)

    # -- what the hub reports -------------------------------------------------

    def held_polls(self) -> int:
        return self.follows.held_polls()

    def layer_state(self) -> dict[str, int]:
        return self.transport.state()

    # -- clean-up ---------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            await self.sweep()

    async def sweep(self, idle: float | None = None) -> None:
        """Forget sessions that stopped polling here, and leave their groups."""
        if idle is None:
            idle = 2 * conf.LONGPOLL_TIMEOUT + IDLE_GRACE
        for follow in self.follows.idle(self.loop.time() - idle):
            self.follows.remove(follow)
            await self.transport.unsubscribe(follow)


def _check_sessions(polls: dict[str, Client]) -> dict[str, SessionRecord]:
    return sessions.verify_sessions([(key, *client) for key, client in polls.items()])


def _acknowledge(cursors: dict[AckKey, int]) -> dict[AckKey, None]:
    queue.acknowledge(cursors)
    return {}


def _first(known: Client, new: Client) -> Client:
    return known


def _log_ack_failure(done: asyncio.Future[None]) -> None:
    # Its rows stay until a later acknowledgement or retention takes them.
    if not done.cancelled() and (exc := done.exception()) is not None:
        log.error("longpoll: could not acknowledge: %s", exc, exc_info=exc)


def make_transport(follows: Follows, layer: BaseChannelLayer | None) -> Transport:
    """The transport of a new hub; ``layer``: the shared channel layer, if any."""
    kind = chosen(layer is not None)
    if conf.LONGPOLL_TRANSPORT in (LAYER, POSTGRES) and kind != conf.LONGPOLL_TRANSPORT:
        log.error(
            "longpoll: LONGPOLL_TRANSPORT %r cannot work here (see the system checks); "
            "wake-ups from other processes arrive through the store watcher",
            conf.LONGPOLL_TRANSPORT,
        )
    if kind == LAYER:
        assert layer is not None  # chosen() said so
        return LayerTransport(follows, layer)
    if kind == POSTGRES:
        return NotifyTransport(follows)
    return StoreWatcher(follows)
