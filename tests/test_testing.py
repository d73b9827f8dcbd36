"""longpoll_app.testing: capture what code sends, without a channel layer or server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path

from longpoll_app import asend_to_session, send_to_session, send_to_user
from longpoll_app.models import LongpollSession, Message, session_fingerprint
from longpoll_app.testing import (
    CapturedMessages,
    capture_messages,
    longpoll_messages,  # noqa: F401  (the fixture, as docs/testing.md says to import it)
)

from .servers import ROOT


def add_to_cart(request: HttpRequest) -> HttpResponse:
    send_to_session(request, "cart.updated", {"items": 3})
    return HttpResponse(status=204)


def notify_me(request: HttpRequest) -> HttpResponse:
    count = send_to_user(request.user, "notice", {"text": "done"})
    return HttpResponse(str(count))


urlpatterns = [path("cart/add/", add_to_cart), path("notify/", notify_me)]
pytestmark = pytest.mark.urls(__name__)


def test_a_view_push_is_captured_and_not_sent(transactional_db: None, client: Client) -> None:
    with capture_messages() as sent:
        assert client.post("/cart/add/").status_code == 204
        client.post("/cart/add/")
    assert sent.types == ["cart.updated", "cart.updated"]
    assert sent[0].data == {"items": 3}
    assert len(sent.for_session(client)) == 2
    assert sent.for_session(client.session) == sent.for_session(client.session.session_key)
    assert sent.for_session("another-key") == []
    assert not Message.objects.exists()  # nothing stored
    assert not LongpollSession.objects.exists()


def test_send_to_user_is_captured(
    transactional_db: None, client: Client, django_user_model: Any
) -> None:
    ada = django_user_model.objects.create_user("ada", password="pw-ada-123456")
    client.login(username="ada", password="pw-ada-123456")
    with capture_messages() as sent:
        response = client.post("/notify/")
    assert response.content == b"1"  # ada's one live session, as the real call says
    assert [m.data for m in sent.for_user(ada)] == [{"text": "done"}]
    assert sent.for_user(ada.pk) == sent.of_type("notice")
    assert not Message.objects.exists()


def test_needs_no_database_channel_layer_or_server(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {}
    with capture_messages() as sent:
        assert send_to_session("k" * 32, "a", 1) == 1
        assert send_to_session("k" * 32, "b", 2) == 2  # ids count per session
        assert send_to_session("j" * 32, "a", 3) == 1
    assert [(m.type, m.data) for m in sent.for_session("k" * 32)] == [("a", 1), ("b", 2)]


def test_calls_are_checked_as_the_real_ones_are() -> None:
    with capture_messages() as sent:
        with pytest.raises(ValueError, match="Message type"):
            send_to_session("k" * 32, "", None)
        with pytest.raises(TypeError, match="not JSON-serializable"):
            send_to_session("k" * 32, "t", {1, 2})
    assert sent == []


def test_deliver_also_sends_for_real(transactional_db: None, client: Client) -> None:
    with capture_messages(deliver=True) as sent:
        client.post("/cart/add/")
    assert sent.types == ["cart.updated"]
    assert Message.objects.get().data == {"items": 3}


def test_captures_nest_and_end(transactional_db: None) -> None:
    with capture_messages() as outer:
        send_to_session("k" * 32, "one")
        with capture_messages() as inner:
            send_to_session("k" * 32, "two")
    assert (outer.types, inner.types) == (["one", "two"], ["two"])
    with pytest.raises(LookupError):  # no capture any more: the real call
        send_to_session("k" * 32, "three")


async def test_async_twins_are_captured() -> None:
    with capture_messages() as sent:
        assert await asend_to_session("k" * 32, "async", [1]) == 1
    assert sent[0].type == "async" and sent[0].data == [1]


def test_the_fixture(longpoll_messages: CapturedMessages) -> None:  # noqa: F811
    send_to_session("k" * 32, "fixture", None)
    assert longpoll_messages.types == ["fixture"]


def test_reports_show_no_session_key() -> None:
    with capture_messages() as sent:
        send_to_session("k" * 32, "t", 1)
    assert "k" * 32 not in repr(sent)
    assert session_fingerprint("k" * 32) in repr(sent)


def test_loads_as_a_pytest_plugin_before_django(tmp_path: Path) -> None:
    """``pytest_plugins = ["longpoll_app.testing"]`` in a project's conftest."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["longpoll_app.testing"]\n')
    (tmp_path / "test_plugin.py").write_text(
        textwrap.dedent(
            """
            from longpoll_app import send_to_session

            def test_fixture_from_the_plugin(longpoll_messages):
                send_to_session("k" * 32, "via.plugin", 1)
                assert longpoll_messages.types == ["via.plugin"]
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "project.settings"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout
