"""``{% longpoll_script %}``: the ``<script>`` element that loads longpoll.js.

Like django-htmx's and django-browser-reload's tags, it renders only a ``<script
src=... defer>``; the configuration travels in ``data-*`` attributes, so pages need
no inline JavaScript and a strict Content-Security-Policy keeps working.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.middleware.csrf import get_token
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from longpoll_app.conf import conf

register = template.Library()


@register.simple_tag(takes_context=True)
def longpoll_script(context: template.Context) -> SafeString:
    """Render the script element, after making sure the request can poll.

    Only a request with a saved server-side session can poll, so a session without a
    key is saved here; the CSRF token goes in an attribute rather than being read from
    the cookie, so the script works with ``CSRF_COOKIE_HTTPONLY = True``.
    """
    request = context.get("request")
    if not isinstance(request, HttpRequest):
        raise ImproperlyConfigured(
            "{% longpoll_script %} needs the request in the template context: add "
            "'django.template.context_processors.request' to the context processors "
            "and render with render(request, ...)."
        )
    session = getattr(request, "session", None)
    if session is None:
        raise ImproperlyConfigured(
            "{% longpoll_script %} needs a session: add "
            "'django.contrib.sessions.middleware.SessionMiddleware' to MIDDLEWARE."
        )
    # Reading loads the session, which matters: a cookie that names an expired or
    # deleted session still shows its key until a load finds nothing and forgets it.
    "" in session  # noqa: B015
    if session.session_key is None:
        # Gives the session its key now, and SessionMiddleware sends the cookie with
        # this response, so the page's first poll already has a session.
        session.save()

    attrs: dict[str, str] = {
        "src": static("longpoll_app/longpoll.js"),
        "data-poll-url": reverse("longpoll:poll"),
        "data-send-url": reverse("longpoll:send"),
        "data-csrf-token": get_token(request),
        "data-timeout": f"{conf.LONGPOLL_TIMEOUT:g}",  # seconds a poll is held
    }
    nonce = _csp_nonce(context, request)
    if nonce:
        attrs["nonce"] = nonce
    return format_html(
        "<script{} defer></script>",
        format_html_join("", ' {}="{}"', attrs.items()),
    )


def _csp_nonce(context: template.Context, request: HttpRequest) -> str:
    """The page's CSP nonce: Django's ``csp_nonce`` context variable, or django-csp's
    lazy ``request.csp_nonce``; empty when the page has none."""
    nonce: Any = context.get("csp_nonce") or getattr(request, "csp_nonce", None)
    return str(nonce) if nonce else ""
