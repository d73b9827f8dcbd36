"""Django's own host and CSRF checks, run for requests that reach a consumer.

Channels runs no Django middleware for consumers, so the consumers build an
``ASGIRequest`` from the scope and put it through ``CsrfViewMiddleware`` here:
the same code that protects Django's views, settings and all
(``CSRF_TRUSTED_ORIGINS``, ``CSRF_COOKIE_NAME``, ``CSRF_HEADER_NAME``,
``CSRF_USE_SESSIONS``), only with a JSON refusal instead of the HTML page.

Those checks cost about 75 us a request, as much as the server's whole work
for an idle poll, and a page re-polls with the same headers every hold. Where
their verdict cannot depend on anything but the request's method, scheme,
server, path and headers (and the settings), a request that matches one that
passed, header for header, passes without running them again
(``vetted_session``): that is when its Content-Type is exactly
``application/json`` (Django reads no form from such a body, whatever it
holds) and the CSRF token is not kept in the session. A verdict is remembered
only once the request's session was found live, one per session, and a
remembered request also gives the session key its cookies carry. It decides
nothing else: every poll and send still checks its session (docs/security.md).
"""

from __future__ import annotations

import hashlib
import io
import logging
import marshal
from typing import Any

from django.conf import settings
from django.core.exceptions import BadRequest, DisallowedHost, SuspiciousOperation
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware

from .protocol import ProtocolError

csrf_log = logging.getLogger("django.security.csrf")


class _JsonCsrfMiddleware(CsrfViewMiddleware):
    """``CsrfViewMiddleware`` whose refusal is a ``ProtocolError``."""

    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        csrf_log.warning("Forbidden (%s): %s", reason, request.path)
        raise ProtocolError(403, "csrf_failed", f"CSRF verification failed: {reason}")


def _unused_response(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never run
    raise AssertionError("the CSRF check never calls the view")


def _protected_view(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never run
    raise AssertionError("the CSRF check never calls the view")


_csrf = _JsonCsrfMiddleware(_unused_response)


VETTED_MAX = 200_000  # remembered verdicts, one per live session at most; the oldest go first
# The one Content-Type a remembered request may carry (longpoll.js's): Django
# reads the CSRF token from the body of a form post, so a verdict can be
# remembered only where no reading of the header, however lenient, finds a form.
REMEMBERED_CONTENT_TYPE = b"application/json"
MARSHAL_VERSION = 2  # the newest without back-references, so equal requests give equal bytes
# Digests of requests that passed the host and CSRF checks and came from a
# session then found live, oldest first, with that session's key; and each
# key's one digest, so that a session holds one entry however its headers vary.
_vetted: dict[bytes, str] = {}
_digest_of: dict[str, bytes] = {}


@receiver(setting_changed, dispatch_uid="longpoll_csrf_settings")
def _reload_csrf_settings(setting: str, **kwargs: Any) -> None:
    # The middleware caches CSRF_TRUSTED_ORIGINS; follow override_settings.
    global _csrf
    if setting.startswith("CSRF_"):
        _csrf = _JsonCsrfMiddleware(_unused_response)
    forget_all()  # ALLOWED_HOSTS, SECURE_PROXY_SSL_HEADER, ... may change a verdict


def request_digest(scope: dict[str, Any]) -> bytes | None:
    """What the host and CSRF verdicts depend on, hashed; None when the verdict
    may depend on more (a body that is not plain JSON, or the token kept in
    the session)."""
    if settings.CSRF_USE_SESSIONS:
        return None
    headers = []
    content_types = 0
    for header in scope["headers"]:
        name = header[0]
        if name == b"content-length":
            continue  # the cursor in the body changes it; the verdict does not read it
        if name == b"content-type":
            content_types += 1
            if header[1] != REMEMBERED_CONTENT_TYPE or content_types > 1:
                return None  # Django might parse the body as a form, token and all
        headers.append(header)
    scheme, server = scope.get("scheme", "http"), scope.get("server")
    what = (scope["method"], scheme, server, scope["path"], headers)
    try:
        # marshal: one C call that writes every part with its type and length, so
        # no two different requests give the same bytes (about 2 us less than
        # hashing the parts one by one).
        return hashlib.blake2b(marshal.dumps(what, MARSHAL_VERSION), digest_size=16).digest()
    except ValueError:  # a server's scope with types marshal does not know: check every time
        return None


def vetted_session(digest: bytes | None) -> str | None:
    """The session key of a request that passed with this digest, or None if
    none did: then the request must be checked."""
    return None if digest is None else _vetted.get(digest)


def remember_vetted(digest: bytes | None, session_key: str) -> None:
    """Remember that a request with this digest passed, once its session was
    found live (never before: a forged key must leave nothing behind)."""
    if digest is None:
        return
    old = _digest_of.get(session_key)
    if old == digest:
        return
    if old is not None:
        del _vetted[old]
    elif len(_vetted) >= VETTED_MAX:
        oldest = next(iter(_vetted))
        del _digest_of[_vetted.pop(oldest)]
    _vetted[digest] = session_key
    _digest_of[session_key] = digest


def forget_vetted(session_key: str) -> None:
    """The session is not live (any more): keep nothing about it."""
    digest = _digest_of.pop(session_key, None)
    if digest is not None:
        del _vetted[digest]


def forget_all() -> None:
    _vetted.clear()
    _digest_of.clear()


def build_request(scope: dict[str, Any], body: bytes) -> ASGIRequest:
    return ASGIRequest(scope, io.BytesIO(body))


def session_cookie(request: HttpRequest) -> str | None:
    """The session key from the request's cookies, read by Django itself (how
    repeated Cookie headers are joined is Django's to decide)."""
    return request.COOKIES.get(settings.SESSION_COOKIE_NAME) or None


def check_host(request: HttpRequest) -> None:
    """Refuse a Host header outside ``ALLOWED_HOSTS``, as Django does (400)."""
    try:
        request.get_host()
    except DisallowedHost as exc:
        raise ProtocolError(400, "disallowed_host", str(exc)) from None


def check_csrf(request: HttpRequest) -> None:
    """Run ``CsrfViewMiddleware`` on the request; raises ``ProtocolError``:
    403 where Django refuses, 400 where reading the request fails as Django's
    handler answers it (too many fields, a multipart body without a boundary).

    With ``CSRF_USE_SESSIONS`` the token lives in the session, so the caller
    must set ``request.session`` and call this from a worker thread.
    """
    try:
        _csrf.process_request(request)
        _csrf.process_view(request, _protected_view, (), {})
    except (SuspiciousOperation, MultiPartParserError, BadRequest) as exc:
        # Django's handler answers these 400 (response_for_exception), and logs
        # a SuspiciousOperation to django.security.<its class name>.
        if isinstance(exc, SuspiciousOperation):
            logging.getLogger(f"django.security.{type(exc).__name__}").error(str(exc))
        raise ProtocolError(400, "bad_request", f"The request cannot be read: {exc}") from None


def csrf_needs_session() -> bool:
    return bool(settings.CSRF_USE_SESSIONS)
