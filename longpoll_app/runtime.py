"""The hub of each event loop, and the background work that runs with it.

The first poll on an event loop starts its hub, and with it the process's
background loops, declared here in one place: the hub's own (its wake-up
transport and its sweep), its reports (``reports``) and the automatic
clean-up (``retention``). Holding polls also paces the garbage collector and
takes SIGTERM to drain first (``process``): changes the app makes to its host
process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from . import process, reports, retention
from .conf import conf
from .hub import Hub
from .layers import shared_layer

_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}
_hubs_lock = threading.Lock()


def background_loops(hub: Hub) -> list[Coroutine[Any, Any, None]]:
    """What runs beside a hub, besides its transport and sweep."""
    return [reports.report_loop(hub), retention.cleanup_loop()]


def current_hub() -> Hub:
    """The hub of the running event loop, started on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        process.pace(conf.LONGPOLL_GC_INTERVAL)  # this process holds polls from now on
        process.drain_on_sigterm(loop, drain_hubs, held_polls, conf.LONGPOLL_DRAIN_TIMEOUT)
        hub = Hub(loop, shared_layer())
        with _hubs_lock:
            for old in [lp for lp in _hubs if lp.is_closed()]:
                del _hubs[old]
            _hubs[loop] = hub
        hub.start(*background_loops(hub))
    return hub


def running_hubs() -> list[Hub]:
    """The hubs of this process whose loops still run (any thread may ask)."""
    with _hubs_lock:
        return [hub for loop, hub in _hubs.items() if not loop.is_closed()]


def drain_hubs() -> None:
    """Answer every poll held in this process, and let none wait from now on."""
    for hub in running_hubs():
        hub.loop.call_soon_threadsafe(hub.follows.drain)


def held_polls() -> int:
    """Polls held in this process right now (any thread may ask)."""
    return sum(hub.held_polls() for hub in running_hubs())


async def close_hub(hub: Hub) -> None:
    """Stop a hub and forget it; for tests and orderly shutdown."""
    await hub.aclose()
    with _hubs_lock:
        if _hubs.get(hub.loop) is hub:
            del _hubs[hub.loop]
