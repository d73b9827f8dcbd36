"""Wake-ups through PostgreSQL alone: ``LISTEN`` / ``NOTIFY``.

Messages already live in PostgreSQL, so a project that runs several server
processes on it needs no Redis to wake them: every send ``NOTIFY``s one channel
(``api``), and every hub ``LISTEN``s on it with one dedicated connection and
carries out the orders it hears. A notification carries only the order (a few
dozen bytes of JSON), never a message, so NOTIFY's 8000-byte limit never
matters: the poll that wakes reads the message from the table, as always.

A notification reaches every listener of the same database (PostgreSQL keeps
them per database), so every hub hears every wake-up and none subscribes per
session (``covers_all``). When the listening connection drops, wake-ups may be
missed: the hub trusts nothing (its polls read the store) until ``LISTEN``
works again, and then wakes every held poll to read what came meanwhile.

channels-postgres (a channel layer on PostgreSQL) was not used under the layer
transport: it inserts a row per ``group_add`` (one per followed session, never
expiring by default) and a row per message and per channel on ``group_send``,
NOTIFYs every listener of every process with the whole message, and its
listener task never reconnects, so an outage would go unnoticed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, connections

from ..follows import Follows
from .base import Transport
from .orders import CHANNEL, decode

if TYPE_CHECKING:  # psycopg is the [postgres] extra: imported only where it is used
    import psycopg

log = logging.getLogger("longpoll_app")

RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)  # seconds between attempts to LISTEN again
CONNECT_TIMEOUT = 5  # seconds (libpq takes whole seconds) a connection attempt may take
# TCP keepalives, so that a connection whose server vanished without a word
# (a cut network, not a restart) is noticed within about 20 s, not hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5}
KEEPALIVES_COUNT = 2  # unanswered probes before the connection counts as dead


def connection_params(alias: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """psycopg's connection parameters for Django's database ``alias``, as
    Django itself connects (the test database's name under a test run)."""
    params: dict[str, Any] = dict(connections[alias].get_connection_params())
    # Django's cursor class is a synchronous one, and its adapters are its own.
    for django_only in ("cursor_factory", "context"):
        params.pop(django_only, None)
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    for name, value in {**KEEPALIVES, "keepalives_count": KEEPALIVES_COUNT}.items():
        params.setdefault(name, value)
    return params


class NotifyTransport(Transport):
    name = "postgres"
    covers_all = True
    lost_message = "PostgreSQL LISTEN connection lost (%s); polls read the store until it returns"
    back_message = "PostgreSQL LISTEN connection back"

    def __init__(self, follows: Follows, alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(follows)
        self.alias = alias
        self.connection: psycopg.AsyncConnection[Any] | None = None
        self._announced = False

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._listen()
                attempt = 0  # it worked: a later drop retries at once
                await self._receive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed(exc)
                self._ready.set()  # polls go on, reading the store, rather than wait
            finally:
                await self._close()
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1

    async def _listen(self) -> None:
        import psycopg  # installed: transports.can_listen() said so

        self.connection = await psycopg.AsyncConnection.connect(
            **connection_params(self.alias), autocommit=True
        )
        await self.connection.execute(f"LISTEN {CHANNEL}")
        # From here on every commit's NOTIFY arrives: a read of the store that
        # starts now sees everything committed before.
        self.recovered()
        if not self._announced:
            self._announced = True
            log.info("longpoll: wake-ups through PostgreSQL LISTEN/NOTIFY (%s)", CHANNEL)

    async def _receive(self) -> None:
        assert self.connection is not None  # _listen made it
        async for notify in self.connection.notifies():
            order = decode(notify.payload)
            if order is None:
                log.debug("longpoll: ignored a notification on %s: %.80r", CHANNEL, notify.payload)
                continue
            try:
                self.follows.dispatch(order)
            except (KeyError, TypeError, ValueError) as exc:
                log.debug("longpoll: ignored a malformed order %.80r: %s", notify.payload, exc)
        raise ConnectionError("the notifications ended")  # only a closed connection ends them

    async def _close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                await connection.close()
            except Exception as exc:  # already broken: nothing to hand back
                log.debug("longpoll: closing the LISTEN connection: %s", exc)

    def failed(self, exc: BaseException) -> None:
        """Stop trusting what the hub knows: held polls read the store now,
        and so do later ones until LISTEN works again."""
        self.distrust()
        super().failed(exc)

    def recovered(self) -> None:
        self.trust_from(self.loop.time())
        super().recovered()
