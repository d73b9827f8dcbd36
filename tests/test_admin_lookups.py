"""No admin page may answer anything that depends on a session key.

A session key is a bearer credential. If any URL of the admin (a changelist
filter, ``_to_field``, ordering, the search box, ``_changelist_filters``, the
autocomplete view) answered differently according to a key, a staff user who
may only *view* sessions could read one character by character, as a binary
search, and take over its session.

The tests are oracles over classes of URLs, not examples: every registered
admin, every path from its model to ``LongpollSession.session_key`` (found by
walking the models' relations) and every lookup registered on the field (so a
lookup added later is attacked too), each asked once with a value that matches
the victim's real key and once with one that does not. The two answers must
be the same. Where no "non-matching value" exists (ordering, searching), the
same request is made twice, with the victim's key changed in between (its
fingerprint and everything else kept): the two pages must be the same.

Each test collects every case that fails and reports them together.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db.models import Model
from django.http.response import HttpResponseBase
from django.test import Client
from django.urls import reverse

from longpoll_app import send_to_session
from longpoll_app.admin import names_session_key
from longpoll_app.models import LongpollSession, Message

from .test_admin import all_keys, build, superuser  # noqa: F401 (a fixture)

KEY_FIELD = LongpollSession._meta.get_field("session_key")
VIEWER_PERMISSIONS = ("view_longpollsession", "view_message", "view_user")
HOPS = 3  # relations walked from an admin's model to find paths to the key
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"')


@dataclass
class Victim:
    """The superuser's real session, recorded at login: the key to protect."""

    key: str
    pk: int
    user_pk: int


@dataclass
class Attacker:
    name: str
    client: Client
    sees: set[type[Model]] | None = None  # the models it may view; None: all

    def can_view(self, model: type[Model]) -> bool:
        return self.sees is None or model in self.sees


@dataclass
class Failures:
    """The cases checked, and what was wrong with each one that failed."""

    cases: list[str] = field(default_factory=list)
    checked: int = 0

    def case(self, name: str, *problems: str | None) -> None:
        self.checked += 1
        wrong = [problem for problem in problems if problem]
        if wrong:
            self.cases.append(f"{name}: {'; '.join(wrong)}")

    def assert_none(self) -> None:
        assert self.checked, "no case was checked"
        shown = "\n".join(self.cases[:40])
        assert not self.cases, f"{len(self.cases)} of {self.checked} cases failed:\n{shown}"


# -- the world ----------------------------------------------------------------


@pytest.fixture
def victim(request: pytest.FixtureRequest, django_user_model: Any) -> Victim:
    root: Client = request.getfixturevalue("superuser")  # from test_admin
    build(django_user_model)  # other users' sessions and messages, around the victim's
    key = root.cookies["sessionid"].value
    row = LongpollSession.objects.get(session_key=key)
    for n in range(3):
        send_to_session(key, "for.root", {"n": n})
    assert row.user_id is not None
    return Victim(key, row.pk, row.user_id)


@pytest.fixture(params=["view-only staff", "superuser"])
def attacker(request: pytest.FixtureRequest, victim: Victim, django_user_model: Any) -> Attacker:
    # A page that crashes answers 500 here, to be counted, rather than raising.
    if request.param == "superuser":
        admin_client: Client = request.getfixturevalue("admin_client")
        admin_client.raise_request_exception = False
        return Attacker("superuser", admin_client)
    client: Client = request.getfixturevalue("client")
    client.raise_request_exception = False
    viewer = django_user_model.objects.create_user(
        "viewer", password="pw-viewer-12345", is_staff=True
    )
    viewer.user_permissions.set(Permission.objects.filter(codename__in=VIEWER_PERMISSIONS))
    assert client.login(username="viewer", password="pw-viewer-12345")
    return Attacker("view-only staff", client, {LongpollSession, Message, django_user_model})


@contextmanager
def key_changed(victim: Victim) -> Iterator[str]:
    """The victim's row with another key for a while (its fingerprint kept),
    one that sorts at the other end of the keys and shares no prefix."""
    keys = sorted(LongpollSession.objects.values_list("session_key", flat=True))
    other = ("!" if victim.key == keys[-1] else "~") + victim.key[::-1][1:]
    LongpollSession.objects.filter(pk=victim.pk).update(session_key=other)
    try:
        yield other
    finally:
        LongpollSession.objects.filter(pk=victim.pk).update(session_key=victim.key)


def registered() -> list[tuple[type[Model], admin.ModelAdmin[Any]]]:
    found = list(admin.site._registry.items())
    assert {LongpollSession, Message} <= {model for model, _ in found}
    return found


def changelist(model: type[Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def paths_to_key(model: type[Model], hops: int = HOPS) -> list[str]:
    """Every lookup path from ``model`` to the session key, through at most
    ``hops`` relations (forward and reverse)."""
    found: list[str] = []

    def walk(opts: Any, prefix: str, left: int) -> None:
        for f in opts.get_fields():
            if f is KEY_FIELD:
                found.append(prefix + f.name)
            elif left and f.is_relation and getattr(f, "path_infos", None):
                walk(f.path_infos[-1].to_opts, f"{prefix}{f.name}__", left - 1)

    walk(model._meta, "", hops)
    return found


def lookup_names() -> list[str]:
    """The bare field (``exact``) and every lookup and transform on it."""
    names = sorted(KEY_FIELD.get_lookups())
    assert {"startswith", "lt", "regex", "in", "range", "isnull"} <= set(names)
    return ["", *names]


def near_miss(key: str) -> str:
    """A key that differs from the real one only in its last character."""
    other = key[:-1] + ("0" if key[-1] != "0" else "1")
    assert other not in all_keys()
    return other


def values(lookup: str, key: str) -> list[tuple[str, str]]:
    """(a value that matches ``key``, one that does not), for one lookup."""
    head, tail, middle = key[:2], key[-2:], key[3:9]
    succ = chr(ord(key[0]) + 1)
    table = {
        "": [(key, near_miss(key))],
        "exact": [(key, near_miss(key))],
        "iexact": [(key.upper(), near_miss(key).upper())],
        "startswith": [(head, "~~")],
        "istartswith": [(head.upper(), "~~")],
        "endswith": [(tail, "~~")],
        "iendswith": [(tail.upper(), "~~")],
        "contains": [(middle, "~~")],
        "icontains": [(middle.upper(), "~~")],
        "regex": [(f"^{head}", "^~~")],
        "iregex": [(f"^{head.upper()}", "^~~")],
        # Each bound just either side of the key: only the victim's row moves.
        "lt": [(key + "0", key)],
        "lte": [(key, key[:-1])],
        "gt": [(key[:-1], key)],
        "gte": [(key, key + "0")],
        "in": [(f"{key},{near_miss(key)}", f"{near_miss(key)},~~")],
        # The admin does not split a range: a two-character string is (low, high).
        "range": [(key[0] + succ, "~~"), (f"{key[:-1]},{key}", f"{key}0,{key}1")],
        "isnull": [("false", "true"), ("0", "1")],
    }
    return table.get(lookup, [(key, near_miss(key)), (head, "~~")])


# -- what a response tells ------------------------------------------------------


def text(response: HttpResponseBase) -> str:
    return bytes(getattr(response, "content", b"")).decode(errors="replace")


def leaked_keys(response: HttpResponseBase, sent: str) -> list[str]:
    """The session keys a response shows, but for one the request itself held."""
    body = text(response)
    return [key for key in all_keys() if key in body and key not in unquote_plus(sent)]


def rows(response: HttpResponseBase) -> tuple[Any, ...]:
    """What a list answer says about the rows: status, redirect, the rows' links
    (without their query strings, which echo the filters) and the count."""
    body = text(response)
    tbody = re.search(r'<table id="result_list">.*?<tbody>(.*?)</tbody>', body, re.S)
    links = re.findall(r'href="([^"?]*)', tbody.group(1)) if tbody else []
    paginator = re.search(r'<p class="paginator">(.*?)</p>', body, re.S)
    count = re.sub(r"<[^>]*>|\s+", " ", paginator.group(1)).strip() if paginator else ""
    return response.status_code, response.get("Location"), tuple(links), count


def page(response: HttpResponseBase) -> tuple[int, str | None, str]:
    """A whole answer, but for what changes at every request (CSRF tokens)."""
    body = CSRF.sub("", text(response))
    return response.status_code, response.get("Location"), body


def same_with_key_changed(
    failures: Failures,
    attacker: Attacker,
    victim: Victim,
    url: str,
    see: Callable[[HttpResponseBase], Any] = page,
    ok_statuses: tuple[int, ...] = (200,),
) -> None:
    """One URL, asked with the victim's real key and with another one."""
    before = attacker.client.get(url)
    with key_changed(victim):
        after = attacker.client.get(url)
    failures.case(
        f"{attacker.name}: {url}",
        None if before.status_code in ok_statuses else f"answers {before.status_code}",
        "shows a key" if leaked_keys(before, url) else None,
        "depends on the key" if see(before) != see(after) else None,
    )


# -- the tests ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "path", "refused"),
    [
        (LongpollSession, "session_key", True),
        (LongpollSession, "session_key__lower__startswith", True),  # any transform
        (LongpollSession, "user__longpoll_sessions__session_key__lt", True),
        (LongpollSession, "messages__session__session_key", True),
        (Message, "session__session_key__regex", True),
        (Message, "session__user__longpoll_sessions__session_key__in", True),
        (LongpollSession, "fingerprint__startswith", False),
        (LongpollSession, "user__exact", False),
        (LongpollSession, "user__username__icontains", False),
        (LongpollSession, "pk", False),
        (LongpollSession, "_pending__gte", False),  # an annotation
        (Message, "session__id__exact", False),
        (Message, "session__pk", False),
        (Message, "session", False),
        (Message, "session_id", False),
        (Message, "session__fingerprint__startswith", False),
        (Message, "data__session_key", False),  # a key inside the JSON, not the field
    ],
)
def test_paths_to_the_key_are_found_and_no_others(
    model: type[Model], path: str, refused: bool
) -> None:
    assert names_session_key(model, path) is refused


def test_the_victim_is_real(victim: Victim, attacker: Attacker) -> None:
    """The cases below compare answers, so first: they do see the victim's rows."""
    listing = attacker.client.get(changelist(LongpollSession) + f"?user__exact={victim.user_pk}")
    assert listing.status_code == 200
    assert LongpollSession.objects.get(pk=victim.pk).fingerprint in listing.content.decode()
    assert len(paths_to_key(LongpollSession)) > 1 and paths_to_key(Message)


def test_no_lookup_on_the_key_tells_anything(victim: Victim, attacker: Attacker) -> None:
    """Every admin x every path to the key x every lookup x matching/non-matching
    value: the same answer, a refusal (400) wherever the list may be seen."""
    failures = Failures()
    for model, _ in registered():
        url = changelist(model)
        expected = 400 if attacker.can_view(model) else 403
        for path in paths_to_key(model):
            for lookup in lookup_names():
                param = f"{path}__{lookup}" if lookup else path
                for match, miss in values(lookup, victim.key):
                    hit, other = (attacker.client.get(url, {param: v}) for v in (match, miss))
                    statuses = {hit.status_code, other.status_code}
                    failures.case(
                        f"{attacker.name}: {url}?{param}={match} (or ={miss})",
                        "answers differ" if rows(hit) != rows(other) else None,
                        None if statuses == {expected} else f"answers {sorted(statuses)}",
                        "shows a key" if leaked_keys(hit, match) else None,
                        "shows a key" if leaked_keys(other, miss) else None,
                    )
    failures.assert_none()


def test_the_brief_s_attack_is_refused(victim: Victim, attacker: Attacker) -> None:
    """The request that read a superuser's key, and its spellings through relations."""
    user = {"user__exact": str(victim.user_pk)}
    for url, param in [
        (changelist(LongpollSession), "session_key__startswith"),
        (changelist(LongpollSession), "user__longpoll_sessions__session_key__startswith"),
        (changelist(Message), "session__session_key__startswith"),
        (changelist(Message), "session__user__longpoll_sessions__session_key__startswith"),
    ]:
        for value in (victim.key[:2], "~~"):
            query = {**user, param: value} if "longpollsession" in url else {param: value}
            assert attacker.client.get(url, query).status_code == 400, (url, param)


def test_other_admins_refuse_paths_to_the_key(
    victim: Victim, attacker: Attacker, django_user_model: Any
) -> None:
    """Django's UserAdmin and GroupAdmin: refused by Django's own rule (a lookup
    through relations must be in ``list_filter``)."""
    users = changelist(django_user_model)
    for param in (
        "longpoll_sessions__session_key__startswith",
        "longpoll_sessions__session_key",
        "groups__user__longpoll_sessions__session_key__startswith",
    ):
        assert attacker.client.get(users, {param: victim.key[:2]}).status_code == 400, param
    if attacker.sees is None:
        groups = changelist(apps.get_model("auth", "Group"))
        param = "user__longpoll_sessions__session_key__startswith"
        assert attacker.client.get(groups, {param: victim.key[:2]}).status_code == 400


def test_to_field_cannot_name_the_key(victim: Victim, attacker: Attacker) -> None:
    """``_to_field`` picks the field a popup answers with and the change view
    finds its object by: never the key."""
    failures = Failures()
    sessions = changelist(LongpollSession)
    for model, _ in registered():
        url = changelist(model)
        expected = 400 if attacker.can_view(model) else 403
        for params in ({"_to_field": "session_key"}, {"_to_field": "session_key", "_popup": "1"}):
            status = attacker.client.get(url, params).status_code
            failures.case(
                f"{attacker.name}: {url}?{urlencode(params)}",
                None if status == expected else f"answers {status}",
            )
    for object_id in (victim.key, near_miss(victim.key), str(victim.pk)):
        for view in ("change", "delete"):
            url = f"{sessions}{object_id}/{view}/?_to_field=session_key"
            answer = attacker.client.get(url)
            failures.case(
                f"{attacker.name}: {url}",
                None if answer.status_code == 400 else f"answers {answer.status_code}",
                "shows a key" if leaked_keys(answer, url) else None,
            )
    failures.assert_none()


def test_ordering_tells_nothing(victim: Victim, attacker: Attacker) -> None:
    """Every ``?o=`` the lists accept (and some they do not), with the key changed
    to sort at the other end: the same page."""
    failures = Failures()
    for model, model_admin in registered():
        if not attacker.can_view(model):
            continue
        n = len(model_admin.list_display)
        orders = [str(i) for i in range(n + 2)]
        orders += [f"-{i}" for i in range(1, n + 1)]
        orders += ["1.2", "-2.1", f"{n}.-1", "x", "session_key", "-session_key"]
        for order in orders:
            same_with_key_changed(
                failures, attacker, victim, f"{changelist(model)}?o={order}", rows
            )
    failures.assert_none()


def test_search_tells_nothing(victim: Victim, attacker: Attacker) -> None:
    """A search for the first characters of the real key finds exactly what it
    finds once the key no longer starts with them: nothing comes from the key."""
    failures = Failures()
    queries = [victim.key[:n] for n in (1, 2, 4, 8, 40)] + [victim.key[:4].upper()]
    for model, _ in registered():
        if not attacker.can_view(model):
            continue
        for q in queries:
            url = f"{changelist(model)}?{urlencode({'q': q})}"
            same_with_key_changed(failures, attacker, victim, url)
    failures.assert_none()


def test_autocomplete_tells_nothing(victim: Victim, attacker: Attacker) -> None:
    """The autocomplete view, for every relation of every model to a registered
    admin: the same answer whatever the key."""
    failures = Failures()
    registry = admin.site._registry
    sources = [
        (model, f)
        for model in apps.get_models()
        for f in model._meta.get_fields()
        if f.is_relation and f.concrete and f.related_model in registry
    ]
    assert any(f.related_model is LongpollSession for _, f in sources)
    for model, f in sources:
        for term in (victim.key[:1], victim.key[:2], victim.key[:8], victim.key):
            query = {
                "app_label": model._meta.app_label,
                "model_name": model._meta.model_name,
                "field_name": f.name,
                "term": term,
            }
            url = f"{reverse('admin:autocomplete')}?{urlencode(query)}"
            remote = f.related_model
            seen = isinstance(remote, type) and attacker.can_view(remote)
            ok = (200,) if seen else (403,)
            same_with_key_changed(failures, attacker, victim, url, page, ok)
    failures.assert_none()


def test_changelist_filters_of_a_change_view_tell_nothing(
    victim: Victim, attacker: Attacker
) -> None:
    """``_changelist_filters`` only rides along to the next list (which refuses
    it): the change and history pages are the same whatever the key."""
    failures = Failures()
    objects: dict[type[Model], Any] = {
        LongpollSession: victim.pk,
        Message: Message.objects.filter(session_id=victim.pk).values_list("pk", flat=True)[0],
        LongpollSession.user.field.related_model: victim.user_pk,
    }
    for model, _ in registered():
        object_id = objects.get(model, model._default_manager.values_list("pk", flat=True).first())
        if not attacker.can_view(model) or object_id is None:
            continue
        for path in paths_to_key(model, hops=2):
            for lookup in ("", "startswith", "lt", "regex", "in", "isnull"):
                param = f"{path}__{lookup}" if lookup else path
                match = values(lookup, victim.key)[0][0]
                filters = urlencode({"_changelist_filters": urlencode({param: match})})
                for view in ("change", "history"):
                    url = f"{changelist(model)}{object_id}/{view}/?{filters}"
                    same_with_key_changed(failures, attacker, victim, url)
    failures.assert_none()
