"""What each hub reports: its held polls and sessions, every
``LONGPOLL_STATUS_INTERVAL`` seconds.

Held polls are known only inside each process (the hub's follows). Every hub
writes one row in ``HubReport`` and the changes to its ``HeldSession`` rows; the
row also carries the process's latency histogram and its wake-up transport's
state (``"layer": {"outage": 0 or 1, "outages": n}`` beside the histogram in
the ``latency`` JSON). ``stats`` reads them; a report older than three
intervals belongs to a process that stopped and is ignored there.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import socket
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import counters
from .conf import conf
from .hub import Hub
from .models import HeldSession, HubReport
from .sql import CHUNK
from .threads import run_in_thread

log = logging.getLogger("longpoll_app")

_hub_numbers = itertools.count(1)


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Reporter:
    """Writes one hub's report: its row, and the changes to its held sessions."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.process = process_name()
        self.name = f"{self.process}:{next(_hub_numbers)}"
        self.started_at = timezone.now()
        self.written: set[int] | None = None  # held session pks in the table; None: unknown
        self.last_report = hub.loop.time()

    def held_sessions(self) -> set[int]:
        """Sessions with a poll held now, or at some time since the last report
        (a browser re-polls at once, so one may be between two polls just now)."""
        since = self.last_report
        return {
            follow.pk
            for follow in self.hub.follows
            if follow.pk is not None and (follow.held > 0 or follow.used_at >= since)
        }

    async def report(self) -> None:
        held = self.held_sessions()
        self.last_report = self.hub.loop.time()
        previous, self.written = self.written, None  # unknown until the write succeeds
        await run_in_thread(write_report)(
            self.name,
            self.process,
            self.started_at,
            self.hub.held_polls(),
            len(self.hub.follows),
            counters.latency.snapshot(),
            held,
            previous,
            layer=self.hub.layer_state(),
        )
        self.written = held


def write_report(
    name: str,
    process: str,
    started_at: datetime,
    held_polls: int,
    sessions: int,
    histogram: dict[str, Any],
    held: set[int],
    previous: set[int] | None,
    layer: dict[str, int] | None = None,
) -> None:
    """Store a hub's report; write only the held sessions that changed."""
    if layer is not None:
        histogram = {**histogram, "layer": layer}  # no column of its own: no migration
    with transaction.atomic():
        row, created = HubReport.objects.update_or_create(
            name=name,
            defaults={
                "updated_at": timezone.now(),
                "held_polls": held_polls,
                "sessions": sessions,
                "latency": histogram,
            },
            create_defaults={
                "process": process,
                "started_at": started_at,
                "updated_at": timezone.now(),
                "held_polls": held_polls,
                "sessions": sessions,
                "latency": histogram,
            },
        )
        if created or previous is None:
            HeldSession.objects.filter(hub=row).delete()
            previous = set()
        gone = sorted(previous - held)
        for start in range(0, len(gone), CHUNK):
            HeldSession.objects.filter(hub=row, session_pk__in=gone[start : start + CHUNK]).delete()
        HeldSession.objects.bulk_create(
            [HeldSession(hub=row, session_pk=pk) for pk in sorted(held - previous)],
            batch_size=CHUNK,
            ignore_conflicts=True,
        )


async def report_loop(hub: Hub) -> None:
    """Report the hub every ``LONGPOLL_STATUS_INTERVAL`` seconds, for as long as it runs."""
    reporter = Reporter(hub)
    # The first report comes after a random part of an interval, so that
    # processes started together do not all write at once.
    await asyncio.sleep(conf.LONGPOLL_STATUS_INTERVAL * random.uniform(0.5, 1.0))
    failing = False
    while True:
        try:
            await reporter.report()
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is down: try again next time
            if not failing:
                log.warning("longpoll: could not write this process's report: %s", exc)
            failing = True
        await asyncio.sleep(conf.LONGPOLL_STATUS_INTERVAL)
