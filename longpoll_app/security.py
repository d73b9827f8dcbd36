"""Django's own host and CSRF checks, run for requests that reach a consumer.

Channels runs no Django middleware for consumers, so the consumers build an
``ASGIRequest`` from the scope and put it through ``CsrfViewMiddleware`` here:
the same code that protects Django's views, settings and all
(``CSRF_TRUSTED_ORIGINS``, ``CSRF_COOKIE_NAME``, ``CSRF_HEADER_NAME``,
``CSRF_USE_SESSIONS``), only with a JSON refusal instead of the HTML page.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from .protocol import ProtocolError

csrf_log = logging.getLogger("django.security.csrf")


class _JsonCsrfMiddleware(CsrfViewMiddleware):
    """``CsrfViewMiddleware`` whose refusal is a ``ProtocolError``."""

    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        csrf_log.warning("Forbidden (%s): %s", reason, request.path)
        raise ProtocolError(403, "csrf_failed", f"CSRF verification failed: {reason}")


def _unused_response(request: HttpRequest) -> HttpResponse:  # pragma: no cover
    raise AssertionError("the CSRF check never calls the view")


def _protected_view(request: HttpRequest) -> HttpResponse:  # pragma: no cover
    raise AssertionError("the CSRF check never calls the view")


_csrf = _JsonCsrfMiddleware(_unused_response)


@receiver(setting_changed, dispatch_uid="longpoll_csrf_settings")
def _reload_csrf_settings(setting: str, **kwargs: Any) -> None:
    # The middleware caches CSRF_TRUSTED_ORIGINS; follow override_settings.
    global _csrf
    if setting.startswith("CSRF_"):
        _csrf = _JsonCsrfMiddleware(_unused_response)


def build_request(scope: dict[str, Any], body: bytes) -> ASGIRequest:
    return ASGIRequest(scope, io.BytesIO(body))


def check_host(request: HttpRequest) -> None:
    """Refuse a Host header outside ``ALLOWED_HOSTS``, as Django does (400)."""
    try:
        request.get_host()
    except DisallowedHost as exc:
        raise ProtocolError(400, "disallowed_host", str(exc)) from None


def check_csrf(request: HttpRequest) -> None:
    """Run ``CsrfViewMiddleware`` on the request; raises ``ProtocolError`` (403).

    With ``CSRF_USE_SESSIONS`` the token lives in the session, so the caller
    must set ``request.session`` and call this from a worker thread.
    """
    _csrf.process_request(request)
    _csrf.process_view(request, _protected_view, (), {})


def csrf_needs_session() -> bool:
    return bool(settings.CSRF_USE_SESSIONS)
