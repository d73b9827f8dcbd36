"""Paced garbage collection: cyclic garbage still goes, 0 opts out, forks get theirs back."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from typing import Any

import pytest

from longpoll_app import process
from longpoll_app.runtime import current_hub


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: pacing changes the whole process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


async def test_the_first_hub_paces_the_process() -> None:
    current_hub()
    assert not gc.isenabled()
    assert any(thread.name == "longpoll-gc" for thread in threading.enumerate())


async def test_cyclic_garbage_is_collected_by_the_pacing_thread() -> None:
    current_hub()
    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle: reference counting cannot free it
    gone = weakref.ref(first)
    del first, second
    deadline = time.monotonic() + 5.0
    while gone() is not None and time.monotonic() < deadline:
        time.sleep(0.02)  # automatic collection is off: only the thread can free it
    assert gone() is None


async def test_the_hub_passes_the_setting_on(settings: Any, monkeypatch: Any) -> None:
    calls: list[float] = []
    monkeypatch.setattr(process, "pace", calls.append)
    settings.LONGPOLL_GC_INTERVAL = 0
    current_hub()
    assert calls == [0.0]


def test_interval_zero_leaves_pythons_collector_alone() -> None:
    result = run_python(
        """
        import gc, threading
        from longpoll_app import process
        frozen = gc.get_freeze_count()  # not 0 at start on every Python (3.12: 375)
        process.pace(0)
        paced = any(t.name == "longpoll-gc" for t in threading.enumerate())
        print(gc.isenabled(), paced, gc.get_freeze_count() == frozen)
        """
    )
    assert result.stdout.split() == ["True", "False", "True"], result.stderr


def test_pacing_freezes_what_exists_and_disables_automatic_collection() -> None:
    result = run_python(
        """
        import gc, threading
        from longpoll_app import process
        frozen = gc.get_freeze_count()
        process.pace(0.05)
        process.pace(0.05)  # once per process
        threads = [t for t in threading.enumerate() if t.name == "longpoll-gc"]
        print(gc.isenabled(), bool(threads), gc.get_freeze_count() > frozen, len(threads))
        """
    )
    assert result.stdout.split() == ["False", "True", "True", "1"], result.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_pythons_collector_back() -> None:
    result = run_python(
        """
        import gc, os
        from longpoll_app import process
        process.pace(0.05)
        pid = os.fork()
        if pid == 0:
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), gc.isenabled())
        """
    )
    assert result.stdout.split() == ["0", "False"], result.stderr


# -- draining on SIGTERM (in a fresh interpreter: it replaces a signal handler) ------------

DRAIN_SCRIPT = """
import asyncio, os, signal, sys, threading, time
from longpoll_app import process

events = []
held = [3]


def server_handler(signum, frame):  # what uvicorn's or twisted's handler stands for
    events.append(("server", held[0]))


async def main(timeout, previous, release_after, signals=1):
    loop = asyncio.get_running_loop()
    signal.signal(signal.SIGTERM, previous)

    def start():
        events.append(("start", held[0]))
        if release_after is not None:  # the polls answer, as Follows.drain makes them
            loop.call_later(release_after, held.__setitem__, 0, 0)

    process.drain_on_sigterm(loop, start, lambda: held[0], timeout)
    began = time.monotonic()
    for _ in range(signals):
        os.kill(os.getpid(), signal.SIGTERM)
    print("sent", flush=True)
    while not any(kind == "server" for kind, _ in events) and time.monotonic() - began < 5:
        await asyncio.sleep(0.01)
    print(events, process.draining(), round(time.monotonic() - began, 1), flush=True)
"""


def run_drain(call: str) -> subprocess.CompletedProcess[str]:
    return run_python(DRAIN_SCRIPT + "\n" + call)


def test_sigterm_drains_then_hands_on_to_the_servers_handler() -> None:
    result = run_drain("asyncio.run(main(5.0, server_handler, release_after=0.3))")
    assert result.returncode == 0, result.stderr
    # The server's handler runs only once no poll is held: after the 0.3 s
    # the polls took, not at once and not after the 5 s bound.
    events, draining, elapsed = result.stdout.splitlines()[-1].rsplit(" ", 2)
    assert events == "[('start', 3), ('server', 0)]" and draining == "True", result.stdout
    assert 0.3 <= float(elapsed) < 2.0, result.stdout


def test_the_drain_timeout_bounds_the_wait() -> None:
    result = run_drain("asyncio.run(main(0.5, server_handler, release_after=None))")
    events, _, elapsed = result.stdout.splitlines()[-1].rsplit(" ", 2)
    assert events == "[('start', 3), ('server', 3)]", result.stdout  # still held: stop anyway
    assert 0.5 <= float(elapsed) < 2.0, result.stdout


def test_a_second_sigterm_hands_on_at_once() -> None:
    result = run_drain("asyncio.run(main(5.0, server_handler, release_after=None, signals=2))")
    events, _, elapsed = result.stdout.splitlines()[-1].rsplit(" ", 2)
    assert "('server', 3)" in events and float(elapsed) < 1.0, result.stdout


def test_with_the_default_handler_the_process_ends_by_sigterm_after_draining() -> None:
    result = run_drain("asyncio.run(main(5.0, signal.SIG_DFL, release_after=0.1))")
    assert result.returncode == -signal.SIGTERM, (result.returncode, result.stderr)
    assert result.stdout.splitlines() == ["sent"], result.stdout  # ended before main's print


@pytest.mark.parametrize(
    ("before", "call"),
    [
        ("", "process.drain_on_sigterm(asyncio.new_event_loop(), print, int, 0)"),  # 0: off
        # A process told to ignore SIGTERM keeps ignoring it.
        (
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
            "process.drain_on_sigterm(asyncio.new_event_loop(), print, int, 2.0)",
        ),
        # Python runs signal handlers in the main thread only.
        (
            "",
            "t = threading.Thread(target=process.drain_on_sigterm, "
            "args=(asyncio.new_event_loop(), print, int, 2.0)); t.start(); t.join()",
        ),
    ],
)
def test_left_alone(before: str, call: str) -> None:
    result = run_drain(
        f"{before}\nhandler = signal.getsignal(signal.SIGTERM)\n{call}\n"
        "print(signal.getsignal(signal.SIGTERM) == handler)"
    )
    assert result.stdout.split() == ["True"], result.stderr


def test_installed_once_per_running_loop_and_never_in_front_of_itself() -> None:
    result = run_drain(
        """
signal.signal(signal.SIGTERM, server_handler)
first = asyncio.new_event_loop()
process.drain_on_sigterm(first, print, int, 2.0)
ours = signal.getsignal(signal.SIGTERM)
process.drain_on_sigterm(first, print, int, 2.0)
same = signal.getsignal(signal.SIGTERM) == ours
first.close()  # a later loop (a test's, say) installs again, in front of the server's
process.drain_on_sigterm(asyncio.new_event_loop(), print, int, 2.0)
print(same, process._drain.previous is server_handler)
"""
    )
    assert result.stdout.split() == ["True", "True"], result.stderr
