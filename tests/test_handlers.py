"""longpoll_app.handlers on its own: registering handlers by type, what
``is_handled`` and ``sync_handler`` tell the send consumer, and ``dispatch``
with the ``message_received`` signal (docs/api.md, "Handling messages").

test_consumers drives the same registry through ``POST send/`` (transactions,
retries, failures); these need no request, session or database.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

import longpoll_app
from longpoll_app.handlers import dispatch, handler, is_handled, sync_handler
from longpoll_app.signals import message_received

Registry = dict[str, Any]
USER = object()  # dispatch hands the user on as it is: any object will do


@pytest.fixture
def signal() -> Iterator[list[dict[str, Any]]]:
    """What a ``message_received`` receiver connected for the test receives."""
    received: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        received.append(kwargs)

    message_received.connect(receiver)
    try:
        yield received
    finally:
        message_received.disconnect(receiver)


@pytest.fixture(autouse=True)
def _no_receivers() -> None:
    # Every test here starts as a project does: no receiver connected.
    assert not message_received.has_listeners()


# -- registering -------------------------------------------------------------------------


def test_the_decorator_registers_and_returns_the_function(registered: Registry) -> None:
    def on_note(session_key: str, user: Any, data: Any) -> None:
        pass

    assert handler("note")(on_note) is on_note
    assert registered == {"note": on_note}
    assert longpoll_app.handler is handler  # the name docs/api.md imports


def test_registering_the_same_function_again_is_allowed(registered: Registry) -> None:
    def on_note(session_key: str, user: Any, data: Any) -> None:
        pass

    handler("note")(on_note)
    handler("note")(on_note)
    assert registered == {"note": on_note}


def test_one_function_may_handle_several_types(registered: Registry) -> None:
    def on_any(session_key: str, user: Any, data: Any) -> None:
        pass

    handler("a")(on_any)
    handler("b")(on_any)
    assert registered == {"a": on_any, "b": on_any}


def test_a_second_function_for_a_type_is_refused(registered: Registry) -> None:
    @handler("note")
    def first(session_key: str, user: Any, data: Any) -> None:
        pass

    async def second(session_key: str, user: Any, data: Any) -> None:
        pass

    with pytest.raises(ImproperlyConfigured) as caught:
        handler("note")(second)
    message = str(caught.value)
    assert message.startswith("Message type 'note' already has the handler ")
    assert f"{__name__}.{first.__qualname__}" in message
    assert f"cannot register {__name__}.{second.__qualname__} too" in message
    assert registered == {"note": first}  # the first one stays


def test_a_reloaded_module_registers_its_new_function(
    registered: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-running a module (importlib.reload, a test runner importing it again)
    makes a new function of the same name: it replaces the old one."""
    source = (
        "import longpoll_app\n\n"
        '@longpoll_app.handler("reloaded")\n'
        "def on_reloaded(session_key, user, data):\n"
        "    return {version!r}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc on reload
    module_file = tmp_path / "longpoll_reload_probe.py"
    module_file.write_text(source.format(version="first"))
    try:
        module = importlib.import_module("longpoll_reload_probe")
        assert registered["reloaded"]("k", None, None) == "first"
        module_file.write_text(source.format(version="second, longer"))
        importlib.reload(module)
        assert registered["reloaded"]("k", None, None) == "second, longer"
    finally:
        sys.modules.pop("longpoll_reload_probe", None)


def test_two_different_functions_of_one_name_are_refused(registered: Registry) -> None:
    def forward_to(target: str) -> Any:
        def forward(session_key: str, user: Any, data: Any) -> str:
            return target

        return forward

    handler("note")(forward_to("chat"))
    with pytest.raises(ImproperlyConfigured):
        handler("note")(forward_to("log"))


def test_handlers_can_be_registered_before_django_is_set_up(tmp_path: Path) -> None:
    """docs/api.md: ``longpoll_app.handler`` imports no models, so it can decorate
    functions at the top of any module, before the apps are loaded."""
    script = (
        "import sys, longpoll_app\n"
        "from longpoll_app import handlers\n"
        "@longpoll_app.handler('early')\n"
        "def early(session_key, user, data): pass\n"
        "assert handlers.is_handled('early')\n"
        "assert handlers.sync_handler('early') is early\n"
        "assert 'longpoll_app.models' not in sys.modules\n"
        "assert 'django.contrib.sessions.models' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# -- is_handled and sync_handler -----------------------------------------------------------


def test_a_type_is_handled_once_it_has_a_handler(registered: Registry) -> None:
    assert not is_handled("note")

    @handler("note")
    def on_note(session_key: str, user: Any, data: Any) -> None:
        pass

    assert is_handled("note")
    assert not is_handled("other")
    assert not is_handled("Note")  # types are matched exactly


def test_a_receiver_handles_every_type(registered: Registry, signal: list[Any]) -> None:
    assert is_handled("note") and is_handled("anything at all")


def test_a_receiver_for_one_sender_handles_nothing(registered: Registry) -> None:
    # dispatch sends with sender=None: a receiver waiting for another sender never hears it.
    def receiver(**kwargs: Any) -> None:
        pass

    message_received.connect(receiver, sender=object)
    try:
        assert not is_handled("note")
    finally:
        message_received.disconnect(receiver, sender=object)


def test_sync_handler_is_the_function_only_when_it_is_sync(registered: Registry) -> None:
    @handler("sync")
    def on_sync(session_key: str, user: Any, data: Any) -> None:
        pass

    @handler("async")
    async def on_async(session_key: str, user: Any, data: Any) -> None:
        pass

    assert sync_handler("sync") is on_sync
    assert sync_handler("async") is None
    assert sync_handler("unregistered") is None


# -- dispatch ------------------------------------------------------------------------------


async def test_dispatch_runs_a_sync_handler_off_the_event_loop(registered: Registry) -> None:
    seen: list[tuple[Any, ...]] = []

    @handler("note")
    def on_note(session_key: str, user: Any, data: Any) -> None:
        # In a worker thread, so it may block (the ORM): no event loop runs here.
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        seen.append((session_key, user, data, threading.get_ident()))

    await dispatch("note", "key-1", USER, {"n": 1})
    assert len(seen) == 1
    assert seen[0][:3] == ("key-1", USER, {"n": 1})
    assert seen[0][3] != threading.get_ident()


async def test_dispatch_awaits_an_async_handler_on_the_loop(registered: Registry) -> None:
    seen: list[tuple[Any, ...]] = []

    @handler("note")
    async def on_note(session_key: str, user: Any, data: Any) -> None:
        await asyncio.sleep(0)
        seen.append((session_key, user, data, asyncio.get_running_loop()))

    await dispatch("note", "key-1", USER, [1, 2])
    assert seen == [("key-1", USER, [1, 2], asyncio.get_running_loop())]


async def test_the_signal_follows_the_handler_with_every_argument(registered: Registry) -> None:
    order: list[str] = []

    @handler("note")
    def on_note(session_key: str, user: Any, data: Any) -> None:
        order.append("handler")

    def receiver(**kwargs: Any) -> None:
        order.append("signal")
        assert kwargs == {
            "signal": message_received,
            "sender": None,
            "session_key": "key-1",
            "user": USER,
            "type": "note",
            "data": {"n": 1},
        }

    message_received.connect(receiver)
    try:
        await dispatch("note", "key-1", USER, {"n": 1})
    finally:
        message_received.disconnect(receiver)
    assert order == ["handler", "signal"]


async def test_handled_skips_the_handler_but_not_the_signal(
    registered: Registry, signal: list[dict[str, Any]]
) -> None:
    """The send consumer runs a sync handler itself, in the transaction that records
    the id, then dispatches with ``handled=True`` for the receivers only."""
    runs: list[Any] = []
    handler("note")(lambda session_key, user, data: runs.append(data))
    await dispatch("note", "key-1", USER, 1, handled=True)
    assert runs == []
    assert [kwargs["data"] for kwargs in signal] == [1]


async def test_a_type_without_a_handler_reaches_the_receivers(
    registered: Registry, signal: list[dict[str, Any]]
) -> None:
    await dispatch("unregistered", "key-1", USER, None)
    assert [(kwargs["type"], kwargs["data"]) for kwargs in signal] == [("unregistered", None)]


async def test_an_async_receiver_is_awaited(registered: Registry) -> None:
    heard: list[str] = []

    async def receiver(**kwargs: Any) -> None:
        await asyncio.sleep(0)
        heard.append(kwargs["type"])

    message_received.connect(receiver)
    try:
        await dispatch("note", "key-1", USER, None)
    finally:
        message_received.disconnect(receiver)
    assert heard == ["note"]


async def test_without_handler_or_receiver_dispatch_runs_nothing(registered: Registry) -> None:
    runs: list[Any] = []
    handler("other")(lambda session_key, user, data: runs.append(data))
    await dispatch("unregistered", "key-1", USER, None)  # no error: nothing listens
    assert runs == []


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_failing_handler_raises_and_no_receiver_hears_of_it(
    registered: Registry, signal: list[dict[str, Any]], kind: str
) -> None:
    """The consumer answers ``500 handler_failed`` from this exception."""

    def failing(session_key: str, user: Any, data: Any) -> None:
        raise LookupError("handler bug")

    async def failing_async(session_key: str, user: Any, data: Any) -> None:
        raise LookupError("handler bug")

    handler("note")(failing if kind == "sync" else failing_async)
    with pytest.raises(LookupError, match="handler bug"):
        await dispatch("note", "key-1", USER, None)
    assert signal == []


async def test_a_failing_receiver_raises_from_dispatch(registered: Registry) -> None:
    def receiver(**kwargs: Any) -> None:
        raise LookupError("receiver bug")

    message_received.connect(receiver)
    try:
        with pytest.raises(LookupError, match="receiver bug"):
            await dispatch("note", "key-1", USER, None)
    finally:
        message_received.disconnect(receiver)
