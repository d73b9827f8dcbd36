"""Views of the demo project: the home page, and an ordinary Django view that pushes."""

from __future__ import annotations

from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from longpoll_app.api import send_to_session

from . import demo  # noqa: F401  (registers the demo's message handlers)

COUNTER_KEY = "demo_counter"


def home(request: HttpRequest) -> HttpResponse:
    """The demo page. ``{% longpoll_script %}`` in it saves the session and sets the
    CSRF cookie, so the page can poll at once."""
    return render(request, "home.html", {"counter": request.session.get(COUNTER_KEY, 0)})


@require_POST
def counter(request: HttpRequest) -> HttpResponse:
    """Count one up and push the new value to every tab of this session.

    A plain view: the push is one call, whatever the view does otherwise.
    """
    value = int(request.session.get(COUNTER_KEY, 0)) + 1
    request.session[COUNTER_KEY] = value
    send_to_session(request, "demo.counter", {"value": value})
    if request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse({"value": value})
    return redirect("home")  # the form also works without JavaScript


@require_POST
def end_session(request: HttpRequest) -> HttpResponse:
    """End the session, as logging out does: every tab's poll is refused and stops.

    Reloading the page starts a new session.
    """
    logout(request)
    if request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse({"ended": True})
    return redirect("home")
