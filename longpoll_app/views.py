"""Django views of the app."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from . import stats as stats_module


@csrf_exempt  # it changes nothing and answers every method alike
def not_routed(request: HttpRequest) -> JsonResponse:
    """Answer a long-poll request that Django, not the consumer, received."""
    response = JsonResponse(
        {
            "error": "not_routed",
            "detail": "This request reached Django's URLconf, not the long-poll consumer: serve "
            "the project over ASGI with application = longpoll_router(get_asgi_application()).",
        },
        status=501,
    )
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def stats(request: HttpRequest) -> JsonResponse:
    """The numbers of ``manage.py longpoll_stats``, as JSON, for staff only."""
    user = getattr(request, "user", None)
    if user is None or not (user.is_active and user.is_staff):
        response = JsonResponse(
            {"error": "forbidden", "detail": "Log in as a staff member to see the stats."},
            status=403,
        )
    else:
        response = JsonResponse(stats_module.collect())
    response["Cache-Control"] = "no-store"
    return response
