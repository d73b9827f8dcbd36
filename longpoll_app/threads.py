"""Database work from async code: a worker thread with a healthy connection."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections, reset_queries


def like_a_request_start() -> None:
    """What Django's ``request_started`` does for the thread's connections, for
    database work that no request of Django's surrounds: forget the queries
    ``DEBUG`` logged (each query's text, a forged 1 MB session key included,
    would stay in the log of a thread that serves no Django request), and close
    a connection that broke or outlived ``CONN_MAX_AGE``."""
    reset_queries()
    close_old_connections()


@functools.cache  # making the wrapper costs more than many a call through it
def run_in_thread(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run in a worker thread of its own with a healthy DB connection.

    ``thread_sensitive=False`` lets database calls of concurrent polls run in
    parallel instead of queueing on the one thread Django's views share.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        like_a_request_start()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)
