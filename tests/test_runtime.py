"""The hub of each event loop, started on first use with the process's
background loops, and forgotten when closed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from longpoll_app import process, reports, retention, runtime
from longpoll_app.hub import Hub


@pytest.fixture(autouse=True)
def paced(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The intervals process.pace was asked for; the process's collector stays as it is."""
    calls: list[float] = []
    monkeypatch.setattr(process, "pace", calls.append)
    return calls


def in_another_loop(work: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work`` in an event loop of its own, in a thread of its own, as a
    second server thread would; the loop is closed afterwards."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            result.append(asyncio.run(work()))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(timeout=10.0)
    assert not thread.is_alive()
    if failure:
        raise failure[0]
    return result[0]


async def test_one_hub_per_loop_the_same_on_every_call() -> None:
    hub = runtime.current_hub()
    assert runtime.current_hub() is hub
    assert hub.loop is asyncio.get_running_loop()

    async def other_hub() -> tuple[Hub, asyncio.AbstractEventLoop]:
        there = runtime.current_hub()
        assert runtime.current_hub() is there
        await runtime.close_hub(there)
        return there, asyncio.get_running_loop()

    there, loop = in_another_loop(other_hub)
    assert there is not hub and there.loop is loop
    assert runtime.current_hub() is hub  # the other loop's hub left this one alone


def test_there_is_no_hub_without_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        runtime.current_hub()


async def test_starting_a_hub_paces_the_collector_once(paced: list[float], settings: Any) -> None:
    settings.LONGPOLL_GC_INTERVAL = 0.25
    runtime.current_hub()
    runtime.current_hub()
    assert paced == [0.25]


async def test_the_background_loops_start_with_the_hub_and_stop_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: dict[str, Any] = {}
    stopped: list[str] = []

    def loop(name: str) -> Callable[..., Coroutine[Any, Any, None]]:
        async def run(*args: Any) -> None:
            started[name] = args
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                stopped.append(name)
                raise

        return run

    monkeypatch.setattr(reports, "report_loop", loop("reports"))
    monkeypatch.setattr(retention, "cleanup_loop", loop("retention"))
    hub = runtime.current_hub()
    await asyncio.sleep(0)  # the tasks take their first step
    assert started == {"reports": (hub,), "retention": ()}  # reports are the hub's
    # With the transport and the sweep: four tasks for as long as the hub runs.
    assert len(hub._tasks) == 4 and not any(task.done() for task in hub._tasks)
    await runtime.close_hub(hub)
    assert sorted(stopped) == ["reports", "retention"]
    assert not hub._tasks  # every task ended, and was dropped


def test_the_background_loops_are_the_reports_and_the_clean_up() -> None:
    hub = Hub(asyncio.new_event_loop(), None)
    try:
        loops: list[Any] = list(runtime.background_loops(hub))  # coroutine objects
        assert [coro.__qualname__ for coro in loops] == ["report_loop", "cleanup_loop"]
        for coro in loops:
            coro.close()  # never run: no warning
    finally:
        hub.loop.close()


async def test_running_hubs_is_answered_from_any_thread() -> None:
    hub = runtime.current_hub()
    assert hub in await asyncio.to_thread(runtime.running_hubs)


async def test_running_hubs_leaves_out_closed_loops_and_a_new_hub_forgets_them() -> None:
    async def hub_left_behind() -> Hub:
        # A loop that ends without closing its hub (a thread that stopped).
        there = runtime.current_hub()
        await there.aclose()  # its tasks, so that closing the loop warns of none
        return there

    left: Hub = in_another_loop(hub_left_behind)
    assert left.loop.is_closed() and runtime._hubs.get(left.loop) is left
    assert left not in runtime.running_hubs()
    here = runtime.current_hub()
    assert left.loop not in runtime._hubs  # pruned when the next hub started
    assert runtime.running_hubs() == [here]


async def test_close_hub_forgets_the_hub() -> None:
    hub = runtime.current_hub()
    await runtime.close_hub(hub)
    assert hub not in runtime.running_hubs()
    assert not hub._tasks
    again = runtime.current_hub()
    assert again is not hub  # the next poll starts a new one
    assert runtime.running_hubs() == [again]


async def test_closing_a_hub_that_was_replaced_keeps_its_successor() -> None:
    hub = runtime.current_hub()
    stray = Hub(asyncio.get_running_loop(), None)  # same loop, never registered
    await runtime.close_hub(stray)
    assert runtime.current_hub() is hub and hub in runtime.running_hubs()


async def test_the_first_hub_drains_on_sigterm_with_the_setting(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(process, "drain_on_sigterm", lambda *args: calls.append(args))
    settings.LONGPOLL_DRAIN_TIMEOUT = 1.5
    hub = runtime.current_hub()
    runtime.current_hub()  # once per hub
    assert calls == [(hub.loop, runtime.drain_hubs, runtime.held_polls, 1.5)]


async def test_drain_hubs_answers_the_polls_of_every_running_hub() -> None:
    here = runtime.current_hub()
    follow = here.follows.follow("k" * 32, covered=True)
    waiter = here.follows.wait(follow, 5.0)
    here.follows.hold_starts(follow)
    assert runtime.held_polls() == 1
    runtime.drain_hubs()  # from the signal's loop callback: each hub on its own loop
    assert await asyncio.wait_for(waiter, 1.0) is False
    assert here.follows.draining
    here.follows.hold_ends(follow)
    assert runtime.held_polls() == 0
