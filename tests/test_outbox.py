"""Wake-ups sent from the send loop without the sender waiting (longpoll_app.outbox)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from longpoll_app import outbox, process

WAKE = "longpoll.wake"


class HeldLayer:
    """A layer whose group_send records each call and, while ``held`` is clear, waits."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.held = threading.Event()
        self.held.set()
        self.fail_with: BaseException | None = None

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        while not self.held.is_set():
            await asyncio.sleep(0.005)
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((group, message["last_id"]))


@pytest.fixture
def layer(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldLayer]:
    fake = HeldLayer()
    monkeypatch.setattr(outbox, "shared_layer", lambda: fake)
    monkeypatch.setattr(outbox, "_failing", False)
    yield fake
    fake.held.set()
    assert outbox.settle()


def wake(last_id: int) -> dict[str, Any]:
    return {"type": WAKE, "pk": 1, "last_id": last_id}


def test_the_sender_does_not_wait_for_the_layer(layer: HeldLayer) -> None:
    layer.held.clear()
    started = time.monotonic()
    outbox.put("longpoll.a", wake(1))
    assert time.monotonic() - started < 0.5  # the layer answers only once released
    assert not outbox.settle(timeout=0.05)  # still on its way
    layer.held.set()
    assert outbox.settle()
    assert layer.sent == [("longpoll.a", 1)]


def test_wakes_that_pile_up_merge_per_group_keeping_the_highest_id(layer: HeldLayer) -> None:
    layer.held.clear()
    outbox.put("longpoll.a", wake(1))
    time.sleep(0.05)  # that one is on its way: the next pile up behind it
    for last_id in (3, 2, 5, 4):
        outbox.put("longpoll.a", wake(last_id))
    outbox.put("longpoll.b", wake(7))
    layer.held.set()
    assert outbox.settle()
    assert layer.sent[0] == ("longpoll.a", 1)
    assert sorted(layer.sent[1:]) == [("longpoll.a", 5), ("longpoll.b", 7)]


def test_many_groups_go_out_side_by_side(layer: HeldLayer) -> None:
    groups = [f"longpoll.g{n}" for n in range(3 * outbox.SIDE_BY_SIDE + 1)]
    layer.held.clear()
    for group in groups:
        outbox.put(group, wake(1))
    layer.held.set()
    assert outbox.settle()
    assert sorted(group for group, _ in layer.sent) == sorted(groups)


def test_a_failing_layer_is_logged_once_until_it_works(
    layer: HeldLayer, caplog: pytest.LogCaptureFixture
) -> None:
    layer.fail_with = ConnectionRefusedError("nothing listens")
    with caplog.at_level(logging.WARNING, logger="longpoll_app"):
        for last_id in range(1, 4):
            outbox.put("longpoll.a", wake(last_id))
            assert outbox.settle()
        assert caplog.text.count("could not wake") == 1
        layer.fail_with = None
        outbox.put("longpoll.a", wake(4))
        assert outbox.settle()
        layer.fail_with = ConnectionRefusedError("down again")
        outbox.put("longpoll.a", wake(5))
        assert outbox.settle()
    assert caplog.text.count("could not wake") == 2
    assert layer.sent == [("longpoll.a", 4)]


def test_a_layer_that_stops_answering_holds_back_no_later_wake(
    layer: HeldLayer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(process, "LAYER_SEND_TIMEOUT", 0.2)
    layer.held.clear()
    with caplog.at_level(logging.WARNING, logger="longpoll_app"):
        outbox.put("longpoll.a", wake(1))
        assert outbox.settle(timeout=5.0)  # the stuck send gave up after its timeout
    assert "did not answer within 0.2 s" in caplog.text
    layer.held.set()
    outbox.put("longpoll.a", wake(2))
    assert outbox.settle()
    assert layer.sent == [("longpoll.a", 2)]


def test_a_layer_its_settings_cannot_make_fails_the_wake_not_the_send(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise ValueError("bad hosts")

    monkeypatch.setattr(outbox, "shared_layer", broken)
    monkeypatch.setattr(outbox, "_failing", False)
    with caplog.at_level(logging.WARNING, logger="longpoll_app"):
        outbox.put("longpoll.a", wake(1))
        assert outbox.settle()
    assert "bad hosts" in caplog.text


def test_an_unshared_layer_fails_the_wake(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(outbox, "shared_layer", lambda: None)
    monkeypatch.setattr(outbox, "_failing", False)
    with caplog.at_level(logging.WARNING, logger="longpoll_app"):
        outbox.put("longpoll.a", wake(1))
        assert outbox.settle()
    assert "not shared" in caplog.text


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )


SLOW_LAYER = textwrap.dedent("""
    import asyncio, django
    django.setup()
    from longpoll_app import outbox

    class SlowLayer:
        async def group_send(self, group, message):
            await asyncio.sleep(0.3)
            print("sent", group, message["last_id"], flush=True)

    outbox.shared_layer = lambda: SlowLayer()
""")


def test_a_process_that_exits_right_after_sending_still_wakes() -> None:
    done = run_python(SLOW_LAYER + 'outbox.put("longpoll.a", {"last_id": 3})\n')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sent longpoll.a 3"


FORKING = textwrap.dedent("""
    import os
    outbox.put("longpoll.parent", {"last_id": 1})
    pid = os.fork()
    if pid == 0:
        outbox.put("longpoll.child", {"last_id": 2})
        outbox.settle()
        os._exit(0)
    os.waitpid(pid, 0)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_sends_its_own_wakes_not_its_parents() -> None:
    done = run_python(SLOW_LAYER + FORKING)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["sent longpoll.child 2", "sent longpoll.parent 1"]
