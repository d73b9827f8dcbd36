"""Django views of the app."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt


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
