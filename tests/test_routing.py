"""The ASGI router and the URLconf's fallback views."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Browser


def test_fallback_view_says_the_router_is_missing(client: Any) -> None:
    response = client.post("/longpoll/poll/", data="{}", content_type="application/json")
    assert response.status_code == 501
    assert response.json()["error"] == "not_routed"
    assert response["Cache-Control"] == "no-store"


async def test_other_paths_reach_django(browser: Browser) -> None:
    response = await browser.request(b"", path="/", method="GET")
    assert response.status == 200
    assert b"<html" in response.body.lower()


@pytest.mark.parametrize("name", ["poll", "send"])
def test_urls_reverse_under_the_mount(name: str) -> None:
    from django.urls import reverse

    assert reverse(f"longpoll:{name}") == f"/longpoll/{name}/"


async def test_the_lifespan_of_a_django_app_is_answered() -> None:
    """uvicorn sends it first; Django's handler would raise on it."""
    from channels.testing import ApplicationCommunicator

    from project.asgi import application

    comm = ApplicationCommunicator(application, {"type": "lifespan", "asgi": {"version": "3.0"}})
    await comm.send_input({"type": "lifespan.startup"})
    assert await comm.receive_output(2) == {"type": "lifespan.startup.complete"}
    await comm.send_input({"type": "lifespan.shutdown"})
    assert await comm.receive_output(2) == {"type": "lifespan.shutdown.complete"}
    await comm.wait(2)
