"""Wake-ups without a shared channel layer: look at the queue for new rows.

With a process-local layer (``InMemoryChannelLayer`` or none), sends from this
process wake its hub directly, and sends from other processes (a management
command) are noticed by one indexed query per ``LONGPOLL_WATCH_INTERVAL`` for
the whole process, and only while it follows sessions; at once when the sender
is on the same machine and rings the watcher's doorbell (``doorbell``).
"""

from __future__ import annotations

import asyncio
import math

from .. import queue
from ..conf import conf
from ..threads import run_in_thread
from .base import Transport
from .doorbell import Doorbell


class StoreWatcher(Transport):
    name = "watcher"
    covers_all = True
    lost_message = "cannot check the store for new messages (%s); will retry"
    back_message = "checking the store for new messages again"

    async def run(self) -> None:
        doorbell = Doorbell()
        await doorbell.open()
        try:
            await self.watch(doorbell)
        finally:
            doorbell.close()

    async def watch(self, doorbell: Doorbell) -> None:
        watermark: int | None = None
        while True:
            try:
                if not self.follows:
                    watermark = None
                    self.since = math.inf
                elif watermark is None:
                    started = self.loop.time()
                    watermark = await run_in_thread(queue.newest_message_pk)()
                    self.since = started
                else:
                    for message_pk, session_pk, seq in await run_in_thread(queue.messages_since)(
                        watermark
                    ):
                        watermark = message_pk
                        self.follows.wake(session_pk, seq)
                self.recovered()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The watermark stays: the next check that works finds every message
                # queued meanwhile, so what the hub knows stays trustworthy (a busy
                # SQLite answering "database is locked" only delays the wake-ups).
                self.failed(exc)
            self._ready.set()
            await doorbell.wait(conf.LONGPOLL_WATCH_INTERVAL)
