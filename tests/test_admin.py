"""The admin, rendered page by page and action by action with a real superuser
through Django's test client; no page may show a full session key."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.admin.models import LogEntry
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from longpoll_app import counters, queue, reports, send_to_session, sessions
from longpoll_app.api import release_polls
from longpoll_app.models import HubReport, LongpollSession, Message
from longpoll_app.runtime import current_hub

from .conftest import Browser, new_session_key

PASSWORD = "pw-admin-long-123"
SESSIONS = "/admin/longpoll_app/longpollsession/"
MESSAGES = "/admin/longpoll_app/message/"


@pytest.fixture
def superuser(transactional_db: None, django_user_model: Any) -> Client:
    """A superuser logged in through the admin's login form."""
    django_user_model.objects.create_superuser("root", "root@example.com", PASSWORD)
    client = Client()
    response = client.post("/admin/login/", {"username": "root", "password": PASSWORD})
    assert response.status_code == 302
    return client


def all_keys() -> set[str]:
    keys = set(Session.objects.values_list("session_key", flat=True))
    return keys | set(LongpollSession.objects.values_list("session_key", flat=True))


def page(client: Client, url: str, status: int = 200, **post: Any) -> str:
    """GET (or POST, with data) a page; check its status and that no key shows."""
    response = client.post(url, post) if post else client.get(url)
    assert response.status_code == status, (url, response.status_code)
    content = response.content.decode()
    keys = all_keys()
    assert keys, "the test needs sessions"
    leaked = [key for key in keys if key in content]
    assert leaked == [], f"{url} shows a full session key"
    assert "session_key" not in content, url
    return content


def build(django_user_model: Any) -> dict[str, Any]:
    """Sessions as a running site has them: a logged-in user who polls, an
    anonymous page with an expired message, and one holding a poll."""
    ada = django_user_model.objects.create_user("lovelace", password="pw-ada-12345")
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    ada_key = new_session_key(
        **{
            SESSION_KEY: str(ada.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: ada.get_session_auth_hash(),
        }
    )
    sessions.verify_sessions([(ada_key, "203.0.113.7", "Mozilla/5.0 (X11; Linux) Firefox/128.0")])
    for n in range(4):
        send_to_session(ada_key, "cart.updated", {"items": n})
    ada_row = LongpollSession.objects.get(session_key=ada_key)
    queue.acknowledge({(ada_row.pk, ada_key): 1})

    anon_key = new_session_key()
    send_to_session(anon_key, "old.news", "x")
    Message.objects.filter(session__session_key=anon_key).update(
        created_at=timezone.now() - timedelta(days=1)
    )
    held_key = new_session_key()
    sessions.verify_sessions([(held_key, "198.51.100.2", "curl/8")])
    held_row = LongpollSession.objects.get(session_key=held_key)
    # What a hub writes every LONGPOLL_STATUS_INTERVAL seconds.
    reports.write_report("test:1:1", "test:1", timezone.now(), 1, 1, {}, {held_row.pk}, None)
    return {
        "ada": LongpollSession.objects.get(pk=ada_row.pk),
        "anon": LongpollSession.objects.get(session_key=anon_key),
        "held": held_row,
    }


def rows_of(content: str) -> int:
    return len(re.findall(r'name="_selected_action"', content))


def test_every_session_page_renders_without_keys(superuser: Client, django_user_model: Any) -> None:
    s = build(django_user_model)
    page(superuser, "/admin/")
    page(superuser, "/admin/longpoll_app/")
    listing = page(superuser, SESSIONS)
    assert rows_of(listing) == 4  # with the superuser's own session, recorded at login
    for column in ("fingerprint", "user agent", "first seen", "last poll", "poll held", "pending"):
        assert column in listing.lower()
    assert s["ada"].fingerprint in listing and "203.0.113.7" in listing
    # Filters and searches.
    assert rows_of(page(superuser, SESSIONS + "?held=yes")) == 1
    assert s["held"].fingerprint in page(superuser, SESSIONS + "?held=yes")
    assert rows_of(page(superuser, SESSIONS + "?held=no")) == 3
    assert rows_of(page(superuser, SESSIONS + "?pending=yes")) == 1  # the expired one is not
    assert rows_of(page(superuser, SESSIONS + "?pending=no")) == 3
    assert rows_of(page(superuser, SESSIONS + "?q=" + s["anon"].fingerprint[:6])) == 1
    # A username search, with letters no hex fingerprint holds (a fingerprint
    # may begin with "ada", which made this flaky as "ada").
    assert rows_of(page(superuser, SESSIONS + "?q=ovela")) == 1
    # Not searchable by key (the page echoes the search box, so it is not checked for keys).
    by_key = superuser.get(SESSIONS + "?q=" + s["ada"].session_key).content.decode()
    assert rows_of(by_key) == 0 and "0 long-poll sessions" in by_key
    for order in range(1, 10):
        page(superuser, SESSIONS + f"?o={order}")
    # A session's page: its fields and pending messages, read-only.
    detail = page(superuser, f"{SESSIONS}{s['ada'].pk}/change/")
    assert "Mozilla/5.0 (X11; Linux) Firefox/128.0" in detail
    assert detail.count("cart.updated") == 3  # ids 2-4; 1 was acknowledged
    assert "&quot;items&quot;: 3" in detail
    assert 'name="_save"' not in detail  # nothing to edit
    page(superuser, f"{SESSIONS}{s['ada'].pk}/history/")
    page(superuser, SESSIONS + "add/", status=403)
    page(superuser, f"{SESSIONS}{s['ada'].pk}/delete/", status=403)


def test_every_message_page_renders_without_keys(superuser: Client, django_user_model: Any) -> None:
    s = build(django_user_model)
    listing = page(superuser, MESSAGES)
    assert rows_of(listing) == 4  # three pending for ada, one expired
    assert rows_of(page(superuser, MESSAGES + "?state=pending")) == 3
    assert rows_of(page(superuser, MESSAGES + "?state=expired")) == 1
    assert rows_of(page(superuser, MESSAGES + "?q=old.news")) == 1
    assert rows_of(page(superuser, MESSAGES + "?q=" + s["ada"].fingerprint[:8])) == 3
    assert rows_of(page(superuser, f"{MESSAGES}?session__id__exact={s['ada'].pk}")) == 3
    for order in range(1, 7):
        page(superuser, MESSAGES + f"?o={order}")
    message = Message.objects.get(type="old.news")
    detail = page(superuser, f"{MESSAGES}{message.pk}/change/")
    assert s["anon"].fingerprint in detail and "expired" in detail
    page(superuser, MESSAGES + "add/", status=403)
    # Deleting one message, then two through the list's action.
    page(superuser, f"{MESSAGES}{message.pk}/delete/")
    page(superuser, f"{MESSAGES}{message.pk}/delete/", status=302, post="yes")
    assert not Message.objects.filter(pk=message.pk).exists()
    two = list(Message.objects.values_list("pk", flat=True)[:2])
    confirm = page(superuser, MESSAGES, action="delete_selected", _selected_action=two)
    assert "Are you sure" in confirm
    page(
        superuser, MESSAGES, status=302, action="delete_selected", _selected_action=two, post="yes"
    )
    assert Message.objects.count() == 1
    counts = counters.counters()
    assert (counts[counters.EXPIRED], counts[counters.DISCARDED]) == (1, 2)


def test_send_message_action(superuser: Client, django_user_model: Any) -> None:
    s = build(django_user_model)
    chosen = [s["ada"].pk, s["held"].pk]
    form = page(superuser, SESSIONS, action="send_message", _selected_action=chosen)
    assert "Send a message" in form and s["held"].fingerprint in form and "lovelace" in form
    # A bad type and bad JSON are refused on the form, and nothing is sent.
    bad = page(
        superuser,
        SESSIONS,
        action="send_message",
        _selected_action=chosen,
        apply="Send",
        type="",
        json_data="{not json",
    )
    assert "This field is required" in bad and "Enter a valid JSON" in bad
    assert not Message.objects.filter(type="notice").exists()
    page(
        superuser,
        SESSIONS,
        status=302,
        action="send_message",
        _selected_action=chosen,
        apply="Send",
        type="notice",
        json_data='{"text": "maintenance at 6"}',
    )
    sent = Message.objects.filter(type="notice")
    assert sorted(sent.values_list("session_id", flat=True)) == sorted(chosen)
    assert all(m.data == {"text": "maintenance at 6"} for m in sent)
    result = page(superuser, SESSIONS)
    assert "Sent &#x27;notice&#x27; to 2 session(s)." in result
    history = page(superuser, f"{SESSIONS}{s['ada'].pk}/history/")
    assert "Sent a &#x27;notice&#x27; message." in history
    # A session whose Django session ended is skipped, and said so.
    Session.objects.filter(session_key=s["held"].session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    page(
        superuser,
        SESSIONS,
        status=302,
        action="send_message",
        _selected_action=[s["held"].pk],
        apply="Send",
        type="notice",
        json_data="",
    )
    assert "no longer live" in page(superuser, SESSIONS)


def test_send_message_to_all_sessions_across_pages(
    superuser: Client, django_user_model: Any
) -> None:
    build(django_user_model)
    one = LongpollSession.objects.values_list("pk", flat=True).first()
    page(
        superuser,
        SESSIONS + "?pending=no",
        status=302,
        action="send_message",
        _selected_action=[one],
        select_across="1",
        apply="Send",
        type="everyone",
        json_data="1",
    )
    # Every session the filtered list holds (anonymous, held, the superuser's
    # own), not only the one ticked.
    assert Message.objects.filter(type="everyone").count() == 3


def test_purge_pending_action(superuser: Client, django_user_model: Any) -> None:
    s = build(django_user_model)
    page(superuser, SESSIONS, status=302, action="purge_pending", _selected_action=[s["ada"].pk])
    assert not Message.objects.filter(session=s["ada"]).exists()
    assert Message.objects.filter(session=s["anon"]).exists()
    assert "Purged 3 message(s) of 1 session(s)." in page(superuser, SESSIONS)
    assert counters.counters()[counters.DISCARDED] == 3


def test_release_action_renders(superuser: Client, django_user_model: Any) -> None:
    s = build(django_user_model)
    page(superuser, SESSIONS, status=302, action="release_polls", _selected_action=[s["held"].pk])
    assert "Answered the held polls of 1 session(s) (1 held one" in page(superuser, SESSIONS)


async def test_release_answers_held_polls_empty_and_keeps_the_queue(
    browser: Browser, layer: str
) -> None:
    await sync_to_async(send_to_session)(browser.session_key, "kept", 1)
    cursor = (await browser.poll(None)).json()["cursor"]
    held = browser.start({"cursor": cursor})
    assert not await held.answered_within(0.2)
    row = await LongpollSession.objects.aget(session_key=browser.session_key)
    started = asyncio.get_running_loop().time()
    await sync_to_async(release_polls)(row.pk, row.session_key)
    response = await held.response(1.0)
    assert response.status == 204
    assert asyncio.get_running_loop().time() - started < 1.0  # well before the 2 s hold
    # The session goes on: the page polls again, is held, and gets what comes next.
    assert await LongpollSession.objects.filter(pk=row.pk).aexists()
    again = browser.start({"cursor": cursor})
    assert not await again.answered_within(0.2)
    await sync_to_async(send_to_session)(browser.session_key, "next", 2)
    answer = (await again.response(1.0)).json()
    assert answer["messages"] == [{"id": 2, "type": "next", "data": 2}]


async def test_held_column_comes_from_a_real_hub_report(
    browser: Browser, superuser: Client
) -> None:
    held = browser.start({"cursor": None})
    assert not await held.answered_within(0.2)
    hub = current_hub()
    await reports.Reporter(hub).report()
    row = await LongpollSession.objects.aget(session_key=browser.session_key)
    listing = await sync_to_async(page)(superuser, SESSIONS + "?held=yes")
    assert rows_of(listing) == 1 and row.fingerprint in listing
    await held.disconnect()
    # A report older than three intervals is from a stopped process: not held.
    await HubReport.objects.all().aupdate(
        updated_at=timezone.now() - timedelta(seconds=3 * 5.0 + 1)
    )
    assert rows_of(await sync_to_async(page)(superuser, SESSIONS + "?held=yes")) == 0


async def test_bookkeeping_is_written_at_recheck_not_on_every_poll(
    browser: Browser, settings: Any, monkeypatch: Any
) -> None:
    settings.LONGPOLL_TIMEOUT = 0.1
    assert (await browser.poll(None)).status == 204
    first = await LongpollSession.objects.aget(session_key=browser.session_key)
    assert first.last_poll is not None and first.ip_address == "127.0.0.1"
    for _ in range(3):
        assert (await browser.poll(0)).status == 204
    again = await LongpollSession.objects.aget(session_key=browser.session_key)
    assert again.last_poll == first.last_poll  # no write within LONGPOLL_SESSION_RECHECK
    settings.LONGPOLL_SESSION_RECHECK = 0.05
    await asyncio.sleep(0.1)
    assert (await browser.poll(0)).status == 204
    rechecked = await LongpollSession.objects.aget(session_key=browser.session_key)
    assert rechecked.last_poll == first.last_poll  # nothing changed: a re-check writes nothing
    monkeypatch.setattr(sessions, "LAST_POLL_PRECISION", 0.05)
    await asyncio.sleep(0.1)
    assert (await browser.poll(0)).status == 204
    later = await LongpollSession.objects.aget(session_key=browser.session_key)
    assert later.last_poll is not None and later.last_poll > first.last_poll


def test_admin_needs_staff(transactional_db: None, django_user_model: Any, client: Client) -> None:
    django_user_model.objects.create_user("eve", password="pw-eve-123456")
    client.login(username="eve", password="pw-eve-123456")
    response = client.get(SESSIONS)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not LogEntry.objects.exists()


# -- data that could not be stored or sent back (security review, finding 2) -------


def test_send_form_refuses_what_send_to_session_refuses(
    superuser: Client, django_user_model: Any
) -> None:
    from .test_security_review import BAD_JSON

    s = build(django_user_model)
    # A lone surrogate cannot arrive in a form field (a request's UTF-8 decodes
    # invalid bytes to U+FFFD); a NUL can, and every class of bad JSON can.
    posts = [("notice", raw) for raw in BAD_JSON.values()] + [("a\x00b", "1")]
    for type_, raw in posts:
        refused = page(
            superuser,
            SESSIONS,
            action="send_message",
            _selected_action=[s["ada"].pk],
            apply="Send",
            type=type_,
            json_data=raw,
        )
        assert "errorlist" in refused, (type_, raw)
    assert not Message.objects.filter(type="notice").exists()


def test_pages_show_a_stored_lone_surrogate_as_its_escape(
    superuser: Client, django_user_model: Any
) -> None:
    """Rows stored before the app refused such data (SQLite kept them)."""
    from django.db import DataError, connection, transaction

    s = build(django_user_model)
    update = f"UPDATE {Message._meta.db_table} SET data = %s"
    if connection.vendor == "postgresql":  # jsonb refuses them: no such row can exist
        with pytest.raises(DataError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(update, ['{"t": "\\ud800"}'])
        return
    with connection.cursor() as cursor:
        cursor.execute(update, ['{"t": "\\ud800"}'])
    message = Message.objects.filter(session=s["ada"]).first()
    assert message is not None
    for url in (MESSAGES, f"{MESSAGES}{message.pk}/change/", f"{SESSIONS}{s['ada'].pk}/change/"):
        assert "\\ud800" in page(superuser, url)


@pytest.mark.parametrize(
    "query",
    [
        "fingerprint__range=abc",
        "user_agent__range=a,b",
        "last_id__range=1",
        "ip_address__range=1.2.3.4",
    ],
)
def test_filters_that_would_fail_in_the_query_are_400(
    superuser: Client, django_user_model: Any, query: str
) -> None:
    build(django_user_model)
    page(superuser, f"{SESSIONS}?{query}", status=400)
    page(superuser, f"{MESSAGES}?type__range=abc", status=400)
    page(superuser, f"{MESSAGES}?data__contains=1", status=400)
