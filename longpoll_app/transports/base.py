"""What a hub needs of a wake-up transport, and the outage bookkeeping all share."""

from __future__ import annotations

import abc
import asyncio
import logging
import math

from ..follows import Follow, Follows

log = logging.getLogger("longpoll_app")


class Transport(abc.ABC):
    """Carries wake-ups (and orders) from other processes to one hub's follows.

    ``since`` is the loop time from which every wake-up is sure to arrive
    (infinity while that is not so): what a follow read from the database
    after it, and after its own subscription, is trustworthy.
    """

    #: What the logs call this transport.
    name = "none"
    #: True if wake-ups for every session arrive without a subscription.
    covers_all = False
    #: What the logs call an outage of this transport, and its end.
    lost_message = "wake-ups cannot arrive (%s)"
    back_message = "wake-ups arrive again"

    def __init__(self, follows: Follows) -> None:
        self.follows = follows
        self.loop = follows.loop
        self.since = math.inf
        self.outage = False
        self.outages = 0  # outages begun since the hub started, for the metrics
        self._ready = asyncio.Event()

    @abc.abstractmethod
    async def run(self) -> None:
        """Receive wake-ups until cancelled; survive outages."""

    def must_subscribe(self, follow: Follow) -> bool:
        """True if ``subscribe`` has something to do (an idle re-poll skips it)."""
        return False

    async def subscribe(self, follow: Follow) -> None:  # noqa: B027 (optional step)
        """Make sure wake-ups for this session reach this hub."""

    async def unsubscribe(self, follow: Follow) -> None:  # noqa: B027 (optional step)
        """This hub no longer follows the session."""

    async def ready(self) -> None:
        """Wait until the transport has tried to start once (working or not)."""
        await self._ready.wait()

    def is_ready(self) -> bool:
        return self._ready.is_set()

    def is_trusted(self, follow: Follow) -> bool:
        """True while ``follow.last_id`` is sure to include every queued message:
        wake-ups were arriving since before it was read from the database."""
        if follow.pk is None:
            return False
        return max(self.since, follow.subscribed_at) <= follow.checked_at

    def state(self) -> dict[str, int]:
        """For the hub's report: whether wake-ups cannot arrive now, and how
        often that began."""
        return {"outage": int(self.outage), "outages": self.outages}

    def distrust(self) -> None:
        """Wake-ups may have been missed: trust nothing the hub knows, and answer
        the held polls now, so that they read the store."""
        self.since = math.inf
        self.follows.wake_all()

    def trust_from(self, since: float) -> None:
        """Wake-ups arrive again from loop time ``since``: the held polls read the
        store once more, for what was queued while none could arrive."""
        self.since = since
        self.follows.wake_all()
        self._ready.set()

    def failed(self, exc: BaseException) -> None:
        """Say once per outage that wake-ups cannot arrive."""
        if not self.outage:
            self.outage = True
            self.outages += 1
            log.error("longpoll: " + self.lost_message, exc)

    def recovered(self) -> None:
        if self.outage:
            self.outage = False
            log.warning("longpoll: " + self.back_message)
