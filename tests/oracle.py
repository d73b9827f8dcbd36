"""An ordinary Django view, the oracle for the security tests.

Wherever Django decides (CSRF, cookies, hosts, sessions), a test sends the
same request to this view, through Django's own middleware, and expects the
app's endpoints to reach the same verdict. ``urlpatterns`` is the demo's
URLconf plus this view; ``tests.servers_security_settings`` serves it from real
servers.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_POST

from project.urls import urlpatterns as project_urlpatterns

ORACLE_PATH = "/oracle/"


@require_POST
def oracle(request: HttpRequest) -> JsonResponse:
    """200 with the session Django found for the request (its key if live, else
    null), once CsrfViewMiddleware and ALLOWED_HOSTS have let it through."""
    session = request.session
    session.keys()  # loads it: a key that names no live session is dropped
    return JsonResponse({"session": session.session_key})


urlpatterns = [*project_urlpatterns, path(ORACLE_PATH.strip("/") + "/", oracle)]
