"""Paced garbage collection: cyclic garbage still goes, 0 opts out, forks get theirs back."""

from __future__ import annotations

import gc
import os
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
