"""longpoll_app.views: who may read the stats view and what it answers, and the
fallback view for requests that reached Django instead of the consumers.

test_stats covers the stats view end to end (an anonymous and a non-staff login
are refused, a staff login reads real counts, POST is 405) and test_routing the
fallback's answer to a POST on ``poll/``; these cover the rest of the rules.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest
from django.test import Client, RequestFactory
from django.urls import reverse

from longpoll_app import stats, views

STATS = {"held_polls": 3, "processes": [], "messages": {"sent": 7}}  # what collect() returns


@pytest.fixture
def collected(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """stats.collect replaced by a stand-in that records each call."""
    calls: list[None] = []

    def collect() -> dict[str, Any]:
        calls.append(None)
        return STATS

    monkeypatch.setattr(stats, "collect", collect)
    return calls


def stats_request(user: Any = None, method: str = "get") -> HttpRequest:
    request = getattr(RequestFactory(), method)("/longpoll/stats/")
    if user is not None:
        request.user = user
    return request


def user(**flags: bool) -> Any:
    # Unsaved: the view only reads the flags, so these tests need no database.
    return get_user_model()(username="u", **flags)


# -- the stats view ------------------------------------------------------------------------


def test_staff_get_what_collect_returns_uncached(collected: list[None]) -> None:
    response = views.stats(stats_request(user(is_staff=True)))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    assert json.loads(response.content) == STATS
    assert len(collected) == 1


@pytest.mark.parametrize(
    "who",
    [
        pytest.param(AnonymousUser(), id="anonymous"),
        pytest.param(user(is_staff=True, is_active=False), id="inactive-staff"),
        pytest.param(user(is_superuser=True), id="superuser-not-staff"),
        pytest.param(None, id="no-auth-middleware"),  # no request.user at all
    ],
)
def test_everyone_else_is_refused_without_collecting(collected: list[None], who: Any) -> None:
    response = views.stats(stats_request(who))
    assert response.status_code == 403
    assert response["Cache-Control"] == "no-store"  # a refusal is not cached either
    assert json.loads(response.content) == {
        "error": "forbidden",
        "detail": "Log in as a staff member to see the stats.",
    }
    assert collected == []  # the numbers are not even read


@pytest.mark.parametrize("method", ["head", "put", "delete", "patch", "options"])
def test_stats_is_get_only(collected: list[None], method: str) -> None:
    response = views.stats(stats_request(user(is_staff=True), method))
    assert response.status_code == 405
    assert response["Allow"] == "GET"
    assert collected == []


def test_a_staff_login_reads_the_documented_shape(
    transactional_db: None, client: Client, django_user_model: Any
) -> None:
    """Through the URLconf and the middleware, the keys docs/stats.md lists."""
    staff = django_user_model.objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    client.force_login(staff)
    data = client.get(reverse("longpoll:stats")).json()
    assert set(data) == {
        "generated_at",
        "report_interval",
        "held_polls",
        "processes",
        "sessions",
        "messages",
        "latency_ms",
    }
    assert set(data["messages"]) == {
        "sent",
        "delivered",
        "expired",
        "dropped",
        "discarded",
        "pending",
    }
    assert set(data["latency_ms"]) == {"count", "p50", "p90", "p99", "max"}


def test_an_inactive_staff_login_is_refused(
    transactional_db: None, client: Client, django_user_model: Any
) -> None:
    staff = django_user_model.objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    client.force_login(staff)
    staff.is_active = False
    staff.save()
    assert client.get(reverse("longpoll:stats")).status_code == 403


# -- the fallback view ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["poll", "send"])
@pytest.mark.parametrize("method", ["get", "post", "put", "delete"])
def test_not_routed_answers_every_method_on_both_endpoints(name: str, method: str) -> None:
    # Without CSRF checks (csrf_exempt): a real CSRF failure would hide the advice.
    client = Client(enforce_csrf_checks=True)
    response = getattr(client, method)(reverse(f"longpoll:{name}"))
    assert response.status_code == 501
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == "not_routed"
    assert "longpoll_router(get_asgi_application())" in body["detail"]
