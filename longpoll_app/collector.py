"""Paced garbage collection for a server process that holds polls.

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

import gc
import os
import threading
import time

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


def is_paced() -> bool:
    return _paced_in == os.getpid()


def _after_fork_in_child() -> None:
    # The child has no pacing thread: give it Python's own collector back until
    # it holds a poll itself.
    if _paced_in is not None:
        gc.enable()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _collect_forever(interval: float) -> None:
    next_full = time.monotonic() + FULL_EVERY
    while True:
        time.sleep(interval)
        if time.monotonic() >= next_full:
            gc.collect()
            next_full = time.monotonic() + FULL_EVERY
        else:
            gc.collect(0)
