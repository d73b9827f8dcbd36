"""A doorbell for the store watcher: a send from another process on the same
machine makes it look at the store at once instead of at its next interval.

Why: with no shared layer (the embedded default: SQLite and an in-process
layer), a management command or a worker reaches a ``runserver`` process
only through the watcher's look at the store, on average half an interval
late. A doorbell is one local datagram: the sender, after its commit, rings
every watcher of the same database on the machine; the ringing costs the
sender a ``sendto`` per process and the watcher nothing while none rings,
so idle CPU stays as it was.

The datagram carries nothing: the watcher still finds the messages in the
store, so a lost ring only means the message waits for the interval, as it
did before there was a doorbell. Each watcher binds a Unix datagram socket
in a directory per database (and per user: the directory is the user's
alone); where Unix datagram sockets do not exist (Windows) there is no
doorbell and nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import socket
import tempfile
from pathlib import Path

from django.db import DEFAULT_DB_ALIAS, connections

RING = b"\x01"  # what a ring carries: nothing the watcher reads
_numbers = itertools.count(1)  # several hubs (loops) of one process each have their own


def available() -> bool:
    return hasattr(socket, "AF_UNIX") and hasattr(os, "getuid")


def directory() -> Path:
    """Where the watchers of this database (for this user) bind their doorbells.

    Short, under the temporary directory: a Unix socket's path is limited to
    about a hundred bytes."""
    settings = connections[DEFAULT_DB_ALIAS].settings_dict
    where = "\0".join(str(settings.get(key) or "") for key in ("ENGINE", "NAME", "HOST", "PORT"))
    digest = hashlib.sha256(f"{os.getuid()}\0{where}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"longpoll-{digest}"


class Doorbell:
    """One watcher's doorbell: ``rung`` is set when a ring arrives."""

    def __init__(self) -> None:
        self.rung = asyncio.Event()
        self.path: Path | None = None
        self._transport: asyncio.BaseTransport | None = None

    async def open(self) -> bool:
        """Bind the doorbell; False where that cannot be (then only the interval counts)."""
        if not available():
            return False
        folder = directory()
        path = folder / f"{os.getpid()}.{next(_numbers)}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # left by an earlier process of the same pid
            sock.bind(str(path))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _Ringing(self.rung), sock=sock
            )
        except (OSError, NotImplementedError):
            sock.close()
            return False
        self.path = path
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None

    async def wait(self, timeout: float) -> None:  # seconds
        """Until a ring or ``timeout``; then the next ring is waited for anew."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.rung.wait(), timeout)
        self.rung.clear()


class _Ringing(asyncio.DatagramProtocol):
    def __init__(self, rung: asyncio.Event) -> None:
        self.rung = rung

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.rung.set()


_sender: tuple[int, socket.socket] | None = None  # the process's unbound socket, by pid


def ring() -> None:
    """Ring the doorbell of every other process's watcher of this database.

    Never raises: a ring that cannot be made only leaves the watchers to their
    interval. A doorbell whose process is gone is removed."""
    if not available():
        return
    try:
        folder = directory()
        names = os.listdir(folder)
    except OSError:
        return  # no watcher has opened one yet
    own = f"{os.getpid()}."  # this process's hubs were told directly
    sender = _sending_socket()
    for name in names:
        if name.startswith(own) or not name.endswith(".sock"):
            continue
        path = folder / name
        try:
            sender.sendto(RING, str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                path.unlink()  # its process is gone
        except OSError:
            pass  # full (rings are pending anyway) or not ours: the interval still counts


def _sending_socket() -> socket.socket:
    global _sender
    if _sender is None or _sender[0] != os.getpid():  # a forked child makes its own
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _sender = (os.getpid(), sock)
    return _sender[1]
