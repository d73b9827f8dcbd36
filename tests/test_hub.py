"""The per-process hub: orders, session checks in one trip, and the sweep
(its transports are in test_transports.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async

from longpoll_app.hub import Hub
from longpoll_app.runtime import current_hub
from longpoll_app.sessions import SessionRecord


async def followed(hub: Hub, key: str = "k" * 32, pk: int = 7) -> Any:
    follow = hub.follow(key)
    await hub.subscribe(follow)
    hub.attach(follow, SessionRecord(pk=pk, last_id=0, acked_id=0), hub.loop.time())
    return follow


async def test_end_from_another_process_answers_held_polls(layer: str) -> None:
    hub = current_hub()
    await hub.ready()
    follow = await followed(hub)
    waiting = asyncio.ensure_future(hub.wait(follow, 5.0))
    await asyncio.sleep(0)
    hub.dispatch({"type": "longpoll.end", "pk": 7})
    assert await asyncio.wait_for(waiting, 1.0) is True
    assert follow.ended and follow.session_key not in hub.follows


async def test_stale_or_old_wakeups_change_nothing() -> None:
    hub = current_hub()
    follow = await followed(hub)
    hub.follows.wake(7, 5)
    hub.follows.wake(7, 4)  # an older id arriving late
    hub.follows.wake(999, 9)  # a session this process does not follow
    assert follow.last_id == 5


async def test_sweep_forgets_sessions_that_stopped_polling(layer: str) -> None:
    hub = current_hub()
    await hub.ready()
    follow = await followed(hub)
    assert hub.follows
    await hub.sweep(idle=0.0)
    assert len(hub.follows) == 0 and hub.follows.by_pk == {}
    assert follow.pk is not None


async def test_session_checks_that_arrive_together_share_one_trip(
    make_browser: Any, settings: Any, monkeypatch: Any
) -> None:
    from longpoll_app import sessions

    settings.LONGPOLL_TIMEOUT = 0.1
    browsers = [await sync_to_async(make_browser)() for _ in range(20)]
    trips: list[int] = []
    verify_sessions = sessions.verify_sessions

    def counted(polls: list[Any]) -> Any:
        trips.append(len(polls))
        return verify_sessions(polls)

    monkeypatch.setattr(sessions, "verify_sessions", counted)
    replies = await asyncio.gather(*(b.poll(None) for b in browsers))
    assert [r.status for r in replies] == [204] * 20
    assert sum(trips) == 20 and len(trips) < 20  # the checks that waited went together
