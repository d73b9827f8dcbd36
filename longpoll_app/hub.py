"""The per-process hub: one place where held polls wait and wake-ups arrive.

Every server process (more exactly, every event loop) has one ``Hub``. It keeps,
for each session it has seen poll, a ``Follow``: the futures of the polls held
for it, and the newest message id it knows of. Polls wait on those futures; they
are resolved when a wake-up for the session arrives, so holding costs nothing
but the future and one timer.

Wake-ups travel in one of two ways:

* With a shared channel layer (Redis), the hub owns a single channel, joins a
  group per followed session once and keeps it across polls, and runs a single
  receive loop. A poll therefore never touches the channel layer itself.
* With a process-local layer (``InMemoryChannelLayer`` or none), sends from
  this process wake the hub directly, and sends from other processes (a
  management command) are noticed by one indexed query per
  ``LONGPOLL_WATCH_INTERVAL`` for the whole process, and only while it follows
  sessions.

A follow's ``last_id`` is trusted only while the way it learns of new messages
was working before it was read from the database; otherwise a poll reads the
store. That keeps idle re-polls off the database without ever hiding a message.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.db import close_old_connections

from . import collector, store
from .conf import conf

log = logging.getLogger("longpoll_app")

SWEEP_INTERVAL = 30.0  # seconds between looks for sessions no longer polling here
IDLE_GRACE = 30.0  # seconds a session may go without polling before the hub forgets it
RESUBSCRIBE_AFTER = 3600.0  # seconds; well inside channels-redis's default group_expiry
ACK_DELAY = 0.05  # seconds acknowledgements gather before one delete removes them all
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)  # seconds between attempts to reach the layer again
LAYER_CONCURRENCY = 16  # group_add/discard calls in flight at once, per hub
CHECK_BATCH = 1000  # session checks in one trip to the database at most
CLOSE_TIMEOUT = 2.0  # seconds aclose() waits for the hub's tasks to stop
PROBE_GROUP = "longpoll.probe"  # a group nobody joins: leaving it is a harmless round trip


@functools.cache  # making the wrapper costs more than many a call through it
def run_in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run in a worker thread of its own with a healthy DB connection.

    ``thread_sensitive=False`` lets database calls of concurrent polls run in
    parallel instead of queueing on the one thread Django's views share.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)


@dataclass(eq=False, slots=True)  # slots: one per session, kept for as long as it polls
class Follow:
    """What the hub knows about one session that polls in this process."""

    session_key: str
    group: str
    pk: int | None = None
    last_id: int = 0  # newest message id known to exist
    acked: int = 0  # newest id acknowledged by a poll in this process
    drained: int = -1  # newest id when a fresh page last found nothing pending
    checked_at: float = -math.inf  # loop time when the store was last read
    subscribed_at: float = math.inf  # loop time when wake-ups began to arrive
    held: int = 0  # polls for this session in this process right now
    used_at: float = 0.0
    ended: bool = False
    waiters: set[asyncio.Future[bool]] = field(default_factory=set)


class Hub:
    """Held polls of one event loop, and the wake-ups that end them."""

    _hubs: dict[asyncio.AbstractEventLoop, Hub] = {}
    _hubs_lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop, layer: BaseChannelLayer | None) -> None:
        self.loop = loop
        self.layer = layer
        self.follows: dict[str, Follow] = {}  # by session key
        self.by_pk: dict[int, Follow] = {}
        self.trust_since = math.inf  # wake-ups before this moment may have been missed
        self.channel_name: str | None = None
        self.pending_acks: dict[int, int] = {}
        self._ack_flush: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = asyncio.Event()
        self._outage = False
        self._layer_calls = asyncio.Semaphore(LAYER_CONCURRENCY)
        # Session checks waiting for the next trip to the database, by session key.
        self._checks: dict[str, tuple[str | None, str, list[asyncio.Future[Any]]]] = {}
        self._checking = False

    # -- lifecycle ----------------------------------------------------------

    @classmethod
    def current(cls) -> Hub:
        """The hub of the running event loop, started on first use."""
        loop = asyncio.get_running_loop()
        hub = cls._hubs.get(loop)
        if hub is None:
            collector.pace(conf.LONGPOLL_GC_INTERVAL)  # this process holds polls from now on
            hub = cls(loop, shared_layer())
            with cls._hubs_lock:
                cls._hubs = {lp: h for lp, h in cls._hubs.items() if not lp.is_closed()}
                cls._hubs[loop] = hub
            hub._start()
        return hub

    @classmethod
    def running(cls) -> list[Hub]:
        with cls._hubs_lock:
            return [hub for loop, hub in cls._hubs.items() if not loop.is_closed()]

    def _start(self) -> None:
        from . import retention, stats

        self._spawn(self._receive_loop() if self.layer is not None else self._watch_loop())
        self._spawn(self._sweep_loop())
        self._spawn(stats.report_loop(self))  # held polls, for the admin and the stats
        self._spawn(retention.cleanup_loop())

    def _spawn(self, coro: Any) -> None:
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
        await self.flush_acks()
        for follow in list(self.follows.values()):
            self._wake_all(follow)
        with self._hubs_lock:
            if self._hubs.get(self.loop) is self:
                del self._hubs[self.loop]

    async def ready(self) -> None:
        """Wait until wake-ups can arrive (the hub has its channel or watermark)."""
        await self._ready.wait()

    def is_ready(self) -> bool:
        return self._ready.is_set()

    # -- follows --------------------------------------------------------------

    def follow(self, session_key: str) -> Follow:
        follow = self.follows.get(session_key)
        if follow is None:
            follow = Follow(session_key=session_key, group=store.wake_group(session_key))
            self.follows[session_key] = follow
            if self.layer is None:
                follow.subscribed_at = -math.inf  # the watcher covers every session
        follow.used_at = self.loop.time()
        return follow

    def attach(self, follow: Follow, record: store.SessionRecord, read_at: float) -> None:
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

    def is_trusted(self, follow: Follow) -> bool:
        """True while ``follow.last_id`` is sure to include every queued message."""
        if follow.pk is None:
            return False
        since = max(self.trust_since, follow.subscribed_at)
        now = self.loop.time()
        return (
            since <= follow.checked_at and now - follow.checked_at < conf.LONGPOLL_SESSION_RECHECK
        )

    def must_subscribe(self, follow: Follow) -> bool:
        """True if ``subscribe`` has something to do (an idle re-poll skips it)."""
        if self.layer is None or self.channel_name is None:
            return False
        joined = math.isfinite(follow.subscribed_at)
        return not joined or self.loop.time() - follow.subscribed_at >= RESUBSCRIBE_AFTER

    async def subscribe(self, follow: Follow) -> None:
        """Make sure wake-ups for this session reach this hub."""
        if not self.must_subscribe(follow):
            return
        assert self.layer is not None and self.channel_name is not None  # must_subscribe said so
        started = self.loop.time()
        try:
            # Bounded: a thousand browsers arriving at once must not open a thousand
            # connections (redis-py 8 pools refuse past 100: "Too many connections").
            async with self._layer_calls:
                await self.layer.group_add(follow.group, self.channel_name)
        except Exception as exc:
            # Untrusted until a later poll joins: its polls read the store meanwhile.
            # A real outage also breaks the receive loop, which reports it once.
            log.debug("longpoll: could not join %s: %s", follow.group, exc)
            return
        follow.subscribed_at = started

    def wait(self, follow: Follow, timeout: float) -> asyncio.Future[bool]:
        """A future that is True once the session is woken, or False after
        ``timeout`` seconds. A future rather than a coroutine: thousands are
        held at once, and a coroutine's frame would be one more object each."""
        waiter: asyncio.Future[bool] = self.loop.create_future()
        timer = self.loop.call_later(timeout, _resolve, waiter, False)
        follow.waiters.add(waiter)
        waiter.add_done_callback(functools.partial(_forget_waiter, follow, timer))
        return waiter

    def wake(self, session_pk: int, last_id: int) -> None:
        """A message with id ``last_id`` was queued for the session."""
        follow = self.by_pk.get(session_pk)
        if follow is None or last_id <= follow.last_id:
            return
        follow.last_id = last_id
        self._wake_all(follow)

    def end(self, session_pk: int) -> None:
        """The session ended: answer its held polls and forget it."""
        follow = self.by_pk.pop(session_pk, None)
        if follow is None:
            return
        follow.ended = True
        self.follows.pop(follow.session_key, None)
        self._wake_all(follow)

    def end_key(self, group: str, session_pk: int) -> None:
        """The session's key changed: answer the polls held with the old key
        (the one whose wake-up group is ``group``) as ended, and forget that
        key; a follow of the new key, which has the same pk, is left alone."""
        follow = self.by_pk.get(session_pk)
        if follow is None or follow.group != group:
            follow = next((f for f in self.follows.values() if f.group == group), None)
        if follow is None:
            return
        if self.by_pk.get(session_pk) is follow:
            del self.by_pk[session_pk]
        follow.ended = True
        self.follows.pop(follow.session_key, None)
        self._wake_all(follow)

    def release(self, session_pk: int) -> None:
        """Answer the session's held polls now, empty, as if the hold ran out."""
        follow = self.by_pk.get(session_pk)
        if follow is not None:
            for waiter in follow.waiters:
                _resolve(waiter, False)

    @staticmethod
    def _wake_all(follow: Follow) -> None:
        for waiter in follow.waiters:
            _resolve(waiter)

    def held_polls(self) -> int:
        return sum(follow.held for follow in self.follows.values())

    # -- session checks -----------------------------------------------------

    async def check_session(
        self, session_key: str, ip_address: str | None, user_agent: str
    ) -> store.SessionRecord | None:
        """``store.verify_session``, for the polls that arrive together in one go.

        While one trip to the database is under way, the checks that arrive
        wait and go in the next, together: a thousand browsers (re)connecting
        cost a few queries, not a few thousand.
        """
        waiter: asyncio.Future[store.SessionRecord | None] = self.loop.create_future()
        entry = self._checks.setdefault(session_key, (ip_address, user_agent, []))
        entry[2].append(waiter)
        if not self._checking:
            self._checking = True
            self._spawn(self._run_checks())
        return await waiter

    async def _run_checks(self) -> None:
        batch: dict[str, tuple[str | None, str, list[asyncio.Future[Any]]]] = {}
        try:
            while self._checks:
                keys = list(itertools.islice(self._checks, CHECK_BATCH))
                batch = {key: self._checks.pop(key) for key in keys}
                polls = [(key, ip, agent) for key, (ip, agent, _) in batch.items()]
                try:
                    records = await run_in_thread(store.verify_sessions)(polls)
                except Exception as exc:
                    for _, _, waiters in batch.values():
                        for waiter in waiters:
                            if not waiter.done():
                                waiter.set_exception(exc)
                    continue
                for key, (_, _, waiters) in batch.items():
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(records.get(key))
        except asyncio.CancelledError:  # the hub is closing: so are the polls waiting
            for _, _, waiters in [*batch.values(), *self._checks.values()]:
                for waiter in waiters:
                    waiter.cancel()
            self._checks.clear()
            raise
        finally:
            self._checking = False

    # -- acknowledgements ---------------------------------------------------

    def ack(self, follow: Follow, cursor: int) -> None:
        """Queue the deletion of everything up to ``cursor`` for one batch."""
        if follow.pk is None or cursor <= follow.acked or cursor > follow.last_id:
            return
        follow.acked = cursor
        follow.drained = max(follow.drained, cursor)
        self.pending_acks[follow.pk] = max(cursor, self.pending_acks.get(follow.pk, 0))
        if self._ack_flush is None:
            self._ack_flush = self.loop.call_later(ACK_DELAY, self._spawn_flush)

    def _spawn_flush(self) -> None:
        self._ack_flush = None
        self._spawn(self.flush_acks())

    async def flush_acks(self) -> None:
        acks, self.pending_acks = self.pending_acks, {}
        if not acks:
            return
        try:
            await run_in_thread(store.acknowledge)(acks)
        except Exception:
            # Kept for the next batch; meanwhile the rows are only read past.
            log.warning(
                "longpoll: could not delete acknowledged messages; will retry", exc_info=True
            )
            for pk, cursor in acks.items():
                self.pending_acks[pk] = max(cursor, self.pending_acks.get(pk, 0))
            if self._ack_flush is None:
                self._ack_flush = self.loop.call_later(1.0, self._spawn_flush)

    # -- how wake-ups arrive -------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self.layer is not None
        attempt = 0
        while True:
            try:
                if self.channel_name is None:
                    channel = await self.layer.new_channel("longpoll.hub")
                    # new_channel() only makes up a name; this asks the server,
                    # so recovery is declared only once the layer really answers.
                    await self.layer.group_discard(PROBE_GROUP, channel)
                    self.channel_name = channel
                    self._recovered()
                message = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._report_outage(exc)
                self.channel_name = None
                self._ready.set()  # polls go on, reading the store, rather than wait for the layer
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1
                continue
            attempt = 0
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "longpoll.wake":
            self.wake(int(message["pk"]), int(message["last_id"]))
        elif kind == "longpoll.end":
            self.end(int(message["pk"]))
        elif kind == "longpoll.end_key":
            self.end_key(str(message["group"]), int(message["pk"]))
        elif kind == "longpoll.release":
            self.release(int(message["pk"]))

    def _report_outage(self, exc: BaseException) -> None:
        """Stop trusting what the hub knows, and say so once per outage."""
        self.trust_since = math.inf
        for follow in self.follows.values():
            follow.subscribed_at = math.inf
            # Held polls answer now, and their next poll reads the store.
            self._wake_all(follow)
        if not self._outage:
            self._outage = True
            log.error(
                "longpoll: channel layer unreachable (%s); polls read the store until it returns",
                exc,
            )

    def _recovered(self) -> None:
        self.trust_since = self.loop.time()
        for follow in self.follows.values():
            follow.subscribed_at = math.inf  # join the groups again: a restarted Redis forgot them
            self._wake_all(follow)
        self._ready.set()
        if self._outage:
            self._outage = False
            log.warning("longpoll: channel layer reachable again")

    async def _watch_loop(self) -> None:
        """Notice messages queued by other processes when no layer carries them."""
        watermark: int | None = None
        while True:
            try:
                if not self.follows:
                    watermark = None
                    self.trust_since = math.inf
                elif watermark is None:
                    started = self.loop.time()
                    watermark = await run_in_thread(store.newest_message_pk)()
                    self.trust_since = started
                else:
                    for message_pk, session_pk, seq in await run_in_thread(store.messages_since)(
                        watermark
                    ):
                        watermark = message_pk
                        self.wake(session_pk, seq)
                self._watch_recovered()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The watermark stays: the next check that works finds every message
                # queued meanwhile, so what the hub knows stays trustworthy (a busy
                # SQLite answering "database is locked" only delays the wake-ups).
                self._watch_failed(exc)
            self._ready.set()
            await asyncio.sleep(conf.LONGPOLL_WATCH_INTERVAL)

    def _watch_failed(self, exc: BaseException) -> None:
        if not self._outage:
            self._outage = True
            log.error("longpoll: cannot check the store for new messages (%s); will retry", exc)

    def _watch_recovered(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("longpoll: checking the store for new messages again")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            await self.sweep()

    async def sweep(self, idle: float | None = None) -> None:
        """Forget sessions that stopped polling here, and leave their groups."""
        if idle is None:
            idle = 2 * conf.LONGPOLL_TIMEOUT + IDLE_GRACE
        cutoff = self.loop.time() - idle
        for follow in list(self._idle(cutoff)):
            self.follows.pop(follow.session_key, None)
            if follow.pk is not None:
                self.by_pk.pop(follow.pk, None)
            if self.layer is not None and self.channel_name is not None:
                try:
                    async with self._layer_calls:
                        await self.layer.group_discard(follow.group, self.channel_name)
                except Exception as exc:
                    self._report_outage(exc)

    def _idle(self, cutoff: float) -> Iterator[Follow]:
        for follow in self.follows.values():
            if follow.held == 0 and follow.used_at < cutoff:
                yield follow


def _forget_waiter(
    follow: Follow, timer: asyncio.TimerHandle, waiter: asyncio.Future[bool]
) -> None:
    timer.cancel()
    follow.waiters.discard(waiter)


def _resolve(waiter: asyncio.Future[bool], woken: bool = True) -> None:
    if not waiter.done():
        waiter.set_result(woken)


def shared_layer() -> BaseChannelLayer | None:
    """The channel layer that carries wake-ups between processes, if any.

    ``InMemoryChannelLayer`` reaches no other process and does O(channels +
    groups) work per call, so the hub wakes local polls directly instead.
    """
    layer = get_channel_layer(conf.LONGPOLL_CHANNEL_LAYER)
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return None
    return layer
