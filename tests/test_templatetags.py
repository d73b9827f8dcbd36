"""``{% longpoll_script %}``: what it renders, and the session and CSRF cookie it sets up."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.template import Context, RequestContext, Template
from django.test import Client, RequestFactory
from django.urls import reverse

from longpoll_app.conf import conf

TAG = Template("{% load longpoll %}{% longpoll_script %}")


class ScriptTags(HTMLParser):
    """Collects the attributes and the text of each <script> element."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.texts: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append(dict(attrs))
            self.texts.append("")
            self._inside = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.texts[-1] += data


def parse(html: str) -> ScriptTags:
    parser = ScriptTags()
    parser.feed(html)
    return parser


def make_request(cookies: dict[str, str] | None = None) -> HttpRequest:
    request = RequestFactory().get("/")
    request.COOKIES.update(cookies or {})
    SessionMiddleware(lambda r: HttpResponse()).process_request(request)
    return request


def render(request: HttpRequest, **extra: Any) -> str:
    return TAG.render(RequestContext(request, extra))


@pytest.mark.django_db
def test_renders_one_deferred_script_with_its_configuration() -> None:
    parsed = parse(render(make_request()))

    assert len(parsed.scripts) == 1
    attrs = parsed.scripts[0]
    assert attrs["src"] == "/static/longpoll_app/longpoll.js"
    assert "defer" in attrs
    assert attrs["data-poll-url"] == reverse("longpoll:poll") == "/longpoll/poll/"
    assert attrs["data-send-url"] == reverse("longpoll:send") == "/longpoll/send/"
    assert attrs["data-csrf-token"]
    assert float(attrs["data-timeout"] or "") == conf.LONGPOLL_TIMEOUT
    assert "nonce" not in attrs
    # No inline JavaScript: a strict Content-Security-Policy needs only script-src 'self'.
    assert parsed.texts == [""]


@pytest.mark.django_db
def test_timeout_follows_the_setting(settings: Any) -> None:
    settings.LONGPOLL_TIMEOUT = 2.5

    attrs = parse(render(make_request())).scripts[0]

    assert attrs["data-timeout"] == "2.5"


@pytest.mark.django_db
def test_saves_a_session_that_has_no_key() -> None:
    request = make_request()
    assert request.session.session_key is None

    render(request)

    key = request.session.session_key
    assert key is not None
    assert SessionStore().exists(key)


@pytest.mark.django_db
def test_keeps_a_live_session() -> None:
    session = SessionStore()
    session["x"] = 1
    session.save()
    request = make_request({settings.SESSION_COOKIE_NAME: session.session_key or ""})

    render(request)

    assert request.session.session_key == session.session_key
    assert request.session["x"] == 1


@pytest.mark.django_db
def test_replaces_a_cookie_that_names_no_live_session() -> None:
    request = make_request({settings.SESSION_COOKIE_NAME: "x" * 32})

    render(request)

    key = request.session.session_key
    assert key is not None
    assert key != "x" * 32
    assert SessionStore().exists(key)


@pytest.mark.django_db
def test_the_token_passes_django_csrf_check() -> None:
    request = make_request()
    token = parse(render(request)).scripts[0]["data-csrf-token"]
    assert token
    # get_token() created the secret and marked the cookie for sending.
    assert request.META["CSRF_COOKIE_NEEDS_UPDATE"] is True
    secret = request.META["CSRF_COOKIE"]

    post = RequestFactory().post(
        "/longpoll/send/", HTTP_X_CSRFTOKEN=token, content_type="application/json"
    )
    post.COOKIES[settings.CSRF_COOKIE_NAME] = secret
    middleware = CsrfViewMiddleware(lambda r: HttpResponse())
    middleware.process_request(post)

    assert middleware.process_view(post, lambda r: HttpResponse(), (), {}) is None


@pytest.mark.django_db
@pytest.mark.parametrize("where", ["context", "request"])
def test_passes_the_csp_nonce_through(where: str) -> None:
    request = make_request()
    extra: dict[str, Any] = {}
    if where == "context":
        extra["csp_nonce"] = "n0nce-ctx"
    else:
        request.csp_nonce = "n0nce-ctx"  # type: ignore[attr-defined]  # as django-csp does

    attrs = parse(render(request, **extra)).scripts[0]

    assert attrs["nonce"] == "n0nce-ctx"


@pytest.mark.django_db
def test_attribute_values_are_escaped(settings: Any) -> None:
    settings.STATIC_URL = '/st"atic/'

    html = render(make_request())

    assert '/st&quot;atic/longpoll_app/longpoll.js"' in html
    assert parse(html).scripts[0]["src"] == '/st"atic/longpoll_app/longpoll.js'


def test_needs_the_request_in_the_context() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"context_processors\.request"):
        TAG.render(Context({}))


@pytest.mark.django_db
@pytest.mark.parametrize("httponly", [False, True])
def test_the_demo_page_sets_session_and_csrf_cookies(settings: Any, httponly: bool) -> None:
    """Through the whole middleware stack, as a browser sees it: the page's response
    sets both cookies, and the token in the page passes a CSRF-checked POST even when
    JavaScript cannot read the CSRF cookie."""
    settings.CSRF_COOKIE_HTTPONLY = httponly
    client = Client(enforce_csrf_checks=True)

    response = client.get("/")

    assert response.status_code == 200
    session_cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert SessionStore().exists(session_cookie.value)
    csrf_cookie = response.cookies[settings.CSRF_COOKIE_NAME]
    assert bool(csrf_cookie["httponly"]) is httponly
    token = parse(response.content.decode()).scripts[0]["data-csrf-token"]

    refused = client.post("/demo/counter/", HTTP_ACCEPT="application/json")
    assert refused.status_code == 403
    accepted = client.post("/demo/counter/", HTTP_ACCEPT="application/json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200
    assert accepted.json() == {"value": 1}
