"""The store watcher's doorbell: a send from another process on the machine
makes the watcher look at the store at once (longpoll_app.transports.doorbell)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from longpoll_app import queue
from longpoll_app.transports import doorbell
from longpoll_app.transports.doorbell import Doorbell
from longpoll_app.transports.watcher import StoreWatcher

from .conftest import new_session_key
from .test_transports import attached, registry, running, until

pytestmark = pytest.mark.skipif(not doorbell.available(), reason="needs Unix datagram sockets")

LONG_INTERVAL = 30.0  # seconds: only a ring explains a look at the store before it

# Another process of this machine and database: it sends, or only rings.
OTHER_PROCESS = textwrap.dedent("""
    import sys, django
    django.setup()
    from django.conf import settings
    from django.db import connections
    connections["default"].settings_dict["NAME"] = sys.argv[1]  # the test's database
    settings.LONGPOLL_TRANSPORT = "watcher"
    from longpoll_app import api
    from longpoll_app.transports import doorbell
    if sys.argv[2] == "ring":
        doorbell.ring()
    else:
        print(api.send_to_session(sys.argv[2], "from-another-process", 1))
""")


def in_another_process(what: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, str(connection.settings_dict["NAME"]), what],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_a_send_from_another_process_wakes_the_watcher_at_once(
    transactional_db: None, settings: Any
) -> None:
    settings.LONGPOLL_WATCH_INTERVAL = LONG_INTERVAL
    key = await sync_to_async(new_session_key)()
    queued = await sync_to_async(queue.append)(key, "before", 0)
    follows = registry()
    watcher = StoreWatcher(follows)
    follow = attached(follows, key, queued.session_pk, covered=True, last_id=queued.seq)
    async with running(watcher):
        await until(lambda: watcher.is_trusted(follow) or watcher.since < float("inf"))
        woken = follows.wait(follow, LONG_INTERVAL)
        sent_id = await sync_to_async(in_another_process)(key)
        # Well inside the interval, which it would otherwise have waited for.
        assert await asyncio.wait_for(woken, 5.0) is True
        assert follow.last_id == int(sent_id) == queued.seq + 1


async def test_a_ring_ends_the_wait_and_the_next_wait_waits_anew(transactional_db: None) -> None:
    bell = Doorbell()
    assert await bell.open()
    try:
        assert bell.path is not None and bell.path.parent == doorbell.directory()
        waiting = asyncio.ensure_future(bell.wait(LONG_INTERVAL))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await sync_to_async(in_another_process)("ring")
        await asyncio.wait_for(waiting, 5.0)
        started = time.monotonic()
        await bell.wait(0.1)  # rung before: cleared, so this waits its timeout
        assert time.monotonic() - started >= 0.09
    finally:
        bell.close()
    assert not bell.path


async def test_a_process_does_not_ring_its_own_doorbell(transactional_db: None) -> None:
    bell = Doorbell()
    assert await bell.open()
    try:
        doorbell.ring()  # its hubs were told directly
        started = time.monotonic()
        await bell.wait(0.2)
        assert time.monotonic() - started >= 0.19
    finally:
        bell.close()


async def test_the_doorbell_of_a_process_that_is_gone_is_removed(transactional_db: None) -> None:
    folder = doorbell.directory()
    folder.mkdir(mode=0o700, exist_ok=True)
    stale = folder / "999999999.1.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # the file stays, as after a crash: nothing listens on it
    assert stale.exists()
    await sync_to_async(in_another_process)("ring")
    assert not stale.exists()


async def test_doorbells_are_per_database_and_the_users_alone(transactional_db: None) -> None:
    ours = doorbell.directory()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(connection.settings_dict, "NAME", "/elsewhere/other.sqlite3")
        assert doorbell.directory() != ours
    bell = Doorbell()
    assert await bell.open()
    try:
        assert stat.S_IMODE(ours.stat().st_mode) == 0o700
    finally:
        bell.close()


def test_ringing_with_no_doorbell_anywhere_does_nothing(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(doorbell, "directory", lambda: tmp_path / "none-yet")
    doorbell.ring()  # no directory: no watcher opened one


async def test_where_no_doorbell_can_be_bound_the_interval_still_counts(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(doorbell, "directory", lambda: blocker)  # not a directory
    bell = Doorbell()
    assert not await bell.open()
    started = time.monotonic()
    await bell.wait(0.05)
    assert time.monotonic() - started >= 0.04
    bell.close()
