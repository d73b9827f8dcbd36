"""Django's own host and CSRF checks, run for requests that reach a consumer.

Channels runs no Django middleware for consumers, so the consumers build an
``ASGIRequest`` from the scope and put it through ``CsrfViewMiddleware`` here:
the same code that protects Django's views, settings and all
(``CSRF_TRUSTED_ORIGINS``, ``CSRF_COOKIE_NAME``, ``CSRF_HEADER_NAME``,
``CSRF_USE_SESSIONS``), only with a JSON refusal instead of the HTML page.

Those checks cost about 75 us a request, as much as the server's whole work
for an idle poll, and a page re-polls with the same headers every hold. Their
verdict depends on nothing but the request's method, scheme, server, path and
headers (and the settings), so a request that matches one that passed, header
for header, passes without running them again (``vetted_session``). The body counts
too, but only for form posts, which are never remembered; nor are requests
when the CSRF token lives in the session, or without a session. A remembered
request also gives the session key its cookies carry, without parsing them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import marshal
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.http.cookie import parse_cookie
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


VETTED_MAX = 200_000  # remembered verdicts; the oldest go first (about 100 bytes each)
FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")
MARSHAL_VERSION = 2  # the newest without back-references, so equal requests give equal bytes
# Digests of requests that passed the host and CSRF checks, oldest first, with
# the session key their cookies carry (the digest covers the cookies too).
_vetted: dict[bytes, str] = {}


@receiver(setting_changed, dispatch_uid="longpoll_csrf_settings")
def _reload_csrf_settings(setting: str, **kwargs: Any) -> None:
    # The middleware caches CSRF_TRUSTED_ORIGINS; follow override_settings.
    global _csrf
    if setting.startswith("CSRF_"):
        _csrf = _JsonCsrfMiddleware(_unused_response)
    _vetted.clear()  # ALLOWED_HOSTS, SECURE_PROXY_SSL_HEADER, ... may change a verdict


def request_digest(scope: dict[str, Any]) -> bytes | None:
    """What the host and CSRF verdicts depend on, hashed; None when it can't be
    remembered (a form body, or the token kept in the session)."""
    if settings.CSRF_USE_SESSIONS:
        return None
    headers = []
    for header in scope["headers"]:
        name = header[0]
        if name == b"content-length":
            continue  # the cursor in the body changes it; the verdict does not read it
        if name == b"content-type" and header[1].lower().startswith(FORM_TYPES):
            return None  # the token may come from the body
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
    if digest is None:
        return
    if len(_vetted) >= VETTED_MAX:
        del _vetted[next(iter(_vetted))]
    _vetted[digest] = session_key


def build_request(scope: dict[str, Any], body: bytes) -> ASGIRequest:
    return ASGIRequest(scope, io.BytesIO(body))


def session_cookie(scope: dict[str, Any]) -> str | None:
    """The session key from the request's cookies, as ``request.COOKIES`` reads it."""
    cookies = "; ".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"cookie")
    return parse_cookie(cookies).get(settings.SESSION_COOKIE_NAME) or None


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
