"""What the app changes in the host process, all in one place.

A library should change as little of its host process as it can, and say
what it does change. This app changes three things, all named on the docs'
deployment page ("What the app changes in the process"):

* **Paced garbage collection** (``pace``), in a process that holds polls,
  unless ``LONGPOLL_GC_INTERVAL = 0``.
* **A send loop** (``run_in_send_loop``, ``post_to_send_loop``): one event
  loop in a daemon thread for the channel-layer sends of sync code, started on
  the first such send.
* **A SIGTERM handler** (``drain_on_sigterm``) in front of the server's own, in
  a process that holds polls, unless ``LONGPOLL_DRAIN_TIMEOUT = 0``: it answers
  the held polls before the server stops.

They hold up across ``os.fork()`` (a child gets Python's collector back, a
send loop of its own, and the server's SIGTERM handling) and none keeps the
process alive at exit.

Paced collection
----------------
Paced garbage collection for a server process that holds polls.

Every held poll keeps a few dozen objects that CPython's cyclic collector
tracks (its tasks, coroutines, future, timer and request) alive for the whole
hold. CPython starts a young collection only when allocations outnumber
deallocations by 700; with polls ending as fast as new ones start, that count
hardly moves, so the youngest generation grows to hundreds of thousands of
objects and is then scanned in one go: pauses of 60-230 ms at 5,000 held polls
(measured, see docs/benchmarks.md), during which no answer is sent. Almost
none of it is garbage: the polls free their objects by reference counting.

Pacing keeps every pause short: what exists when the first poll is held is
frozen (Django, the URL conf, the app: never garbage), automatic collection is
turned off, and a daemon thread collects the youngest generation every
``LONGPOLL_GC_INTERVAL`` seconds (a few thousand objects: well under a
millisecond) and everything every ``FULL_EVERY`` seconds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

log = logging.getLogger("longpoll_app")

# -- paced garbage collection ----------------------------------------------------

FULL_EVERY = 60.0  # seconds between full collections while pacing

_lock = threading.Lock()
_paced_in: int | None = None  # the process id whose collector is paced


def pace(interval: float) -> None:
    """Pace this process's collector (once per process; ``interval`` 0: leave it)."""
    global _paced_in
    if interval <= 0:
        return
    with _lock:
        # A process forked from a paced one inherits a disabled collector but
        # not the thread: the pid tells them apart.
        if _paced_in == os.getpid():
            return
        _paced_in = os.getpid()
    gc.freeze()
    gc.disable()
    thread = threading.Thread(target=_collect_forever, args=(interval,), daemon=True)
    thread.name = "longpoll-gc"
    thread.start()


def _collector_after_fork_in_child() -> None:
    # The child has no pacing thread: give it Python's own collector back until
    # it holds a poll itself.
    if _paced_in is not None:
        gc.enable()


def _collect_forever(interval: float) -> None:
    next_full = time.monotonic() + FULL_EVERY
    while True:
        time.sleep(interval)
        if time.monotonic() >= next_full:
            gc.collect()
            next_full = time.monotonic() + FULL_EVERY
        else:
            gc.collect(0)


# -- the send loop --------------------------------------------------------------

LAYER_SEND_TIMEOUT = 5.0  # seconds a sync caller waits for the layer to take a message
EXIT_DRAIN_TIMEOUT = 2.0  # seconds process exit waits for sends still in flight


class _SendLoop:
    """One event loop, in a daemon thread, for every sync-side layer send of the process.

    Why: channels-redis keeps its connections per event loop, and
    ``async_to_sync`` called from a plain thread runs each call in a new loop,
    so every send opened (and closed) a Redis connection, ~2 ms of a ~5 ms
    ``send_to_session``. On one long-lived loop the connections stay open.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child cannot use its parent's thread or sockets
        self.loop = asyncio.new_event_loop()
        # Daemon: it must not keep the process alive. Nothing is lost at exit:
        # every caller waits for its send, and _drain_at_exit for any in flight.
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="longpoll-layer-sends", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop; raise what it raises (or TimeoutError)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # only code on this very loop could call; waiting would deadlock
            coro.close()
            raise RuntimeError("a layer send cannot wait on its own loop")
        # Blocking is safe from any other thread, even one that runs a loop of
        # its own (sync code called from async code): the send does not need that loop.
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            future.result(LAYER_SEND_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"the channel layer did not answer within {LAYER_SEND_TIMEOUT} s"
            ) from None

    def drain(self) -> None:
        """Let sends in flight finish (bounded), then stop and close the loop,
        which also closes channels-redis's connections of this loop."""

        async def pending() -> None:
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            if tasks:
                await asyncio.wait(tasks, timeout=EXIT_DRAIN_TIMEOUT)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(pending(), self.loop).result(EXIT_DRAIN_TIMEOUT + 1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(EXIT_DRAIN_TIMEOUT)
        if not self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.loop.close()


_send_loop: _SendLoop | None = None
_send_loop_lock = threading.Lock()


def run_in_send_loop(coro: Coroutine[Any, Any, Any]) -> None:
    """Run ``coro`` on the process's send loop; raise what it raises (or TimeoutError)."""
    _loop_for_sends().run(coro)


def post_to_send_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Start ``coro`` on the process's send loop and return at once; it must
    handle its own errors. Process exit waits for it (bounded), as for a send."""
    asyncio.run_coroutine_threadsafe(coro, _loop_for_sends().loop)


def _loop_for_sends() -> _SendLoop:
    """The process's send loop, started on first use and again after a fork."""
    global _send_loop
    current = _send_loop
    if current is not None and current.pid == os.getpid():
        return current
    with _send_loop_lock:
        if _send_loop is None or _send_loop.pid != os.getpid():
            _send_loop = _SendLoop()
        return _send_loop


def _send_loop_after_fork_in_child() -> None:
    # The lock may have been held by another thread at the fork: that thread
    # does not exist in the child, so the lock would stay taken forever.
    global _send_loop_lock
    _send_loop_lock = threading.Lock()


@atexit.register
def _drain_at_exit() -> None:
    current = _send_loop
    if current is not None and current.pid == os.getpid():
        current.drain()


# -- draining on SIGTERM ----------------------------------------------------------
#
# Neither server answers a held poll when told to stop: uvicorn waits for each
# one's hold to end, daphne drops them. And neither tells the app in time:
# uvicorn sends lifespan.shutdown only once every connection has closed, daphne
# sends no lifespan at all. So the app takes SIGTERM itself, answers what it
# holds, and then hands the signal on to the handler that was there before.

DRAIN_STEP = 0.05  # seconds between looks at how many polls are still held
DRAIN_FLUSH = 0.1  # seconds for the last answers to leave before the server stops

Handler = Callable[[int, FrameType | None], Any] | int | None  # what signal.getsignal gives


class _Drain:
    """The SIGTERM handler: drain on ``loop``, then call ``previous``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        start: Callable[[], None],
        held: Callable[[], int],
        timeout: float,
        previous: Handler,
    ) -> None:
        self.pid = os.getpid()
        self.loop = loop
        self.start = start
        self.held = held
        self.timeout = timeout
        self.previous = previous
        self.task: asyncio.Task[None] | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler: only hand work to the loop (no logging, no locks here).
        global _draining
        if _draining or self.pid != os.getpid() or self.loop.is_closed():
            self.hand_on(signum)  # a second SIGTERM, or nothing left to drain: stop now
            return
        _draining = True
        self.loop.call_soon_threadsafe(self._begin, signum)

    def _begin(self, signum: int) -> None:
        held = self.held()
        log.info("longpoll: SIGTERM: answering %d held polls, then stopping", held)
        self.start()
        self.task = self.loop.create_task(self._hand_on_when_drained(signum))

    async def _hand_on_when_drained(self, signum: int) -> None:
        deadline = self.loop.time() + self.timeout
        while self.held() and self.loop.time() < deadline:
            await asyncio.sleep(DRAIN_STEP)
        await asyncio.sleep(DRAIN_FLUSH)
        self.hand_on(signum)

    def hand_on(self, signum: int) -> None:
        """What SIGTERM would have done without the app."""
        previous = self.previous
        if callable(previous):
            previous(signum, None)
        else:  # SIG_DFL (a handler that ignored it is never replaced): end the process
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


_drain: _Drain | None = None
_draining = False


def draining() -> bool:
    """True once SIGTERM came: every answer closes its connection."""
    return _draining


def drain_on_sigterm(
    loop: asyncio.AbstractEventLoop,
    start: Callable[[], None],
    held: Callable[[], int],
    timeout: float,
) -> None:
    """On SIGTERM, call ``start`` on ``loop`` (it answers the held polls), wait
    until ``held()`` is 0 (at most ``timeout`` seconds), then hand the signal to
    the handler that was there before: the server's, which stops it.

    Only from the main thread (where Python runs signal handlers, and both
    servers run their loop); ``timeout`` 0, or SIGTERM ignored: left alone."""
    global _drain
    if timeout <= 0 or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    installed = _drain if _drain is not None and current == _drain.handle else None
    if installed and installed.pid == os.getpid() and not installed.loop.is_closed():
        return  # installed, in this process, on a loop that still runs
    previous = installed.previous if installed else current
    if previous in (signal.SIG_IGN, None):
        return  # the process was told to ignore SIGTERM (or a C handler has it)
    _drain = _Drain(loop, start, held, timeout, previous)
    signal.signal(signal.SIGTERM, _drain.handle)


def _drain_after_fork_in_child() -> None:
    # The child has its own connections and none of the parent's polls; its
    # handler (inherited) hands SIGTERM straight on (``_Drain.pid``).
    global _draining
    _draining = False


def _after_fork_in_child() -> None:
    _collector_after_fork_in_child()
    _send_loop_after_fork_in_child()
    _drain_after_fork_in_child()


if hasattr(os, "register_at_fork"):  # Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
