"""Database work from async code: run_in_thread's worker thread, and the
request-start clean-up it does for the thread's connection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection, connections

from longpoll_app.models import LongpollSession
from longpoll_app.threads import run_in_thread


@pytest.fixture
async def one_worker() -> AsyncIterator[ThreadPoolExecutor]:
    """The loop's default executor (run_in_thread's, as thread_sensitive=False
    uses it) with one thread, so that successive calls share a thread and its
    connection, as they may in a server."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="one-worker")
    asyncio.get_running_loop().set_default_executor(executor)
    yield executor
    # Close the thread's connections before the thread goes (and before the
    # test database is flushed).
    executor.submit(connections.close_all).result()
    executor.shutdown(wait=True)


def thread_id() -> int:
    return threading.get_ident()


def add(a: int, b: int, *, times: int = 1) -> int:
    return (a + b) * times


class Refused(Exception):
    pass


def refuse(reason: str) -> None:
    raise Refused(reason)


async def test_it_runs_in_another_thread() -> None:
    assert await run_in_thread(thread_id)() != threading.get_ident()


async def test_it_returns_what_the_function_returns() -> None:
    assert await run_in_thread(add)(2, 3, times=4) == 20


async def test_it_raises_what_the_function_raises() -> None:
    with pytest.raises(Refused, match="no thanks"):
        await run_in_thread(refuse)("no thanks")


def test_the_wrapper_is_made_once_per_function() -> None:
    assert run_in_thread(add) is run_in_thread(add)
    assert run_in_thread(add) is not run_in_thread(refuse)


async def test_calls_run_in_parallel() -> None:
    """thread_sensitive=False: two calls need not wait for each other."""
    both = threading.Barrier(2, timeout=5.0)  # each call waits until the other has begun

    def meet() -> bool:
        both.wait()
        return True

    assert await asyncio.gather(run_in_thread(meet)(), run_in_thread(meet)()) == [True, True]


def count_and_log() -> tuple[int, int]:
    """The thread, and the queries DEBUG logged, after one query."""
    LongpollSession.objects.count()
    return threading.get_ident(), len(connection.queries)


def logged_now() -> tuple[int, list[dict[str, Any]]]:
    return threading.get_ident(), list(connection.queries)


async def test_debug_s_query_log_is_cleared_before_each_call(
    transactional_db: None, settings: Any, one_worker: ThreadPoolExecutor
) -> None:
    settings.DEBUG = True
    worker, logged = await run_in_thread(count_and_log)()
    assert logged >= 1
    # Outside run_in_thread the thread's log keeps growing, as it does in a
    # thread that serves no request of Django's...
    loop = asyncio.get_running_loop()
    same, kept = await loop.run_in_executor(one_worker, logged_now)
    assert same == worker and len(kept) >= 1
    # ...but each call through it starts with an empty one.
    same, at_start = await run_in_thread(logged_now)()
    assert same == worker and at_start == []


KEEP_FOR = 600.0  # seconds: the CONN_MAX_AGE of tests/settings.py's SQLite


def keep_open() -> tuple[int, Any]:
    """Connect, and keep the connection as CONN_MAX_AGE = KEEP_FOR would (set
    here, so that the tests hold whatever the settings' database says)."""
    LongpollSession.objects.exists()
    handler = connections["default"]
    handler.close_at = time.monotonic() + KEEP_FOR
    return threading.get_ident(), handler


def open_at_start() -> tuple[int, bool]:
    """The thread, and whether its connection was still open when ``fn`` began."""
    was_open = connections["default"].connection is not None
    LongpollSession.objects.exists()  # and the call still gets a working one
    return threading.get_ident(), was_open


async def test_a_healthy_connection_is_kept_across_calls(
    transactional_db: None, one_worker: ThreadPoolExecutor
) -> None:
    worker, _ = await run_in_thread(keep_open)()
    assert await run_in_thread(open_at_start)() == (worker, True)  # no reconnect per call


async def test_a_connection_that_broke_is_replaced_before_the_next_call(
    transactional_db: None, one_worker: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, handler = await run_in_thread(keep_open)()
    # Between two calls the connection breaks (the server restarted): a query
    # failed on it, and it no longer answers.
    monkeypatch.setattr(handler, "is_usable", lambda: False)
    handler.errors_occurred = True
    assert await run_in_thread(open_at_start)() == (worker, False)  # closed, then connected


async def test_a_connection_past_conn_max_age_is_replaced(
    transactional_db: None, one_worker: ThreadPoolExecutor
) -> None:
    worker, handler = await run_in_thread(keep_open)()
    handler.close_at = time.monotonic() - 1.0  # its age ran out while the thread was idle
    assert await run_in_thread(open_at_start)() == (worker, False)


async def test_a_connection_that_breaks_during_a_call_is_closed_after_it(
    transactional_db: None, one_worker: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def break_it() -> Any:
        _, handler = keep_open()
        monkeypatch.setattr(handler, "is_usable", lambda: False)
        handler.errors_occurred = True
        return handler

    handler = await run_in_thread(break_it)()
    assert handler.connection is None  # not left for the thread's next caller
