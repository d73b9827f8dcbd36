"""Wake-ups through a shared channel layer (Redis).

The hub owns a single channel, joins a group per followed session once and
keeps it across polls, and runs a single receive loop: a poll never touches
the channel layer itself.
"""

from __future__ import annotations

import asyncio
import logging
import math

from channels.layers import BaseChannelLayer

from ..follows import Follow, Follows
from ..layers import fit_blocking_receive
from .base import Transport

log = logging.getLogger("longpoll_app")

RESUBSCRIBE_AFTER = 3600.0  # seconds; well inside channels-redis's default group_expiry
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)  # seconds between attempts to reach the layer again
LAYER_CONCURRENCY = 16  # group_add/discard calls in flight at once, per hub
PROBE_GROUP = "longpoll.probe"  # a group nobody joins: leaving it is a harmless round trip


class LayerTransport(Transport):
    name = "layer"
    lost_message = "channel layer unreachable (%s); polls read the store until it returns"
    back_message = "channel layer reachable again"

    def __init__(self, follows: Follows, layer: BaseChannelLayer) -> None:
        super().__init__(follows)
        fit_blocking_receive(layer)  # so that no socket timeout ends its receive
        self.layer = layer
        self.channel_name: str | None = None
        # Bounded: a thousand browsers arriving at once must not open a thousand
        # connections (redis-py 8 pools refuse past 100: "Too many connections").
        self._calls = asyncio.Semaphore(LAYER_CONCURRENCY)

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                if self.channel_name is None:
                    channel = await self.layer.new_channel("longpoll.hub")
                    # new_channel() only makes up a name; this asks the server,
                    # so recovery is declared only once the layer really answers.
                    await self.layer.group_discard(PROBE_GROUP, channel)
                    self.channel_name = channel
                    self.recovered()
                message = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(exc)
                self.channel_name = None
                self._ready.set()  # polls go on, reading the store, rather than wait for the layer
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1
                continue
            attempt = 0
            self.follows.dispatch(message)

    def must_subscribe(self, follow: Follow) -> bool:
        if self.channel_name is None:
            return False
        joined = math.isfinite(follow.subscribed_at)
        return not joined or self.loop.time() - follow.subscribed_at >= RESUBSCRIBE_AFTER

    async def subscribe(self, follow: Follow) -> None:
        if not self.must_subscribe(follow):
            return
        assert self.channel_name is not None  # must_subscribe said so
        started = self.loop.time()
        try:
            async with self._calls:
                await self.layer.group_add(follow.group, self.channel_name)
        except Exception as exc:
            # Untrusted until a later poll joins: its polls read the store meanwhile.
            # A real outage also breaks the receive loop, which reports it once.
            log.debug("longpoll: could not join %s: %s", follow.group, exc)
            return
        follow.subscribed_at = started

    async def unsubscribe(self, follow: Follow) -> None:
        if self.channel_name is None:
            return
        try:
            async with self._calls:
                await self.layer.group_discard(follow.group, self.channel_name)
        except Exception as exc:
            self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """Stop trusting what the hub knows: held polls answer now, and their
        next polls read the store."""
        for follow in self.follows:
            follow.subscribed_at = math.inf
        self.distrust()
        super().failed(exc)

    def recovered(self) -> None:
        for follow in self.follows:
            follow.subscribed_at = math.inf  # join the groups again: a restarted Redis forgot them
        self.trust_from(self.loop.time())
        super().recovered()
