"""The findings of the adversarial review, each attacked as a class.

Wherever Django decides (CSRF, cookies, hosts, sessions), the same request
goes to an ordinary Django view (``tests.oracle``) as the oracle, and the
endpoints must reach the same verdict. The real-server side of the same
findings (body deadline, memory under big headers) is in
test_servers_security.py.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import ApplicationCommunicator
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils.crypto import get_random_string

import longpoll_app
from longpoll_app import api, consumers, queue, security, sessions
from longpoll_app.api import send_many_to_session, send_to_session, send_to_user
from longpoll_app.models import LongpollSession, Message
from longpoll_app.runtime import current_hub

from .conftest import Browser, flush_redis, redis_available, use_redis_layer
from .oracle import ORACLE_PATH
from .servers import Reply

pytestmark = pytest.mark.urls("tests.oracle")

asend = sync_to_async(send_to_session)

Headers = list[tuple[bytes, bytes]]


async def call(scope: dict[str, Any], body: bytes, timeout: float = 5.0) -> Reply:
    """One request through the project's ASGI application (router, then Django)."""
    from project.asgi import application

    comm = ApplicationCommunicator(application, scope)
    await comm.send_input({"type": "http.request", "body": body})
    start = await comm.receive_output(timeout)
    assert start["type"] == "http.response.start", start
    chunks = []
    while True:
        message = await comm.receive_output(timeout)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(timeout)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    return Reply(start["status"], headers, b"".join(chunks))


def raw_scope(browser: Browser, path: str, headers: Headers) -> dict[str, Any]:
    """The browser's scope for ``path`` with exactly these headers (bytes as sent)."""
    scope = browser.scope(path=path)
    scope["headers"] = [(b"host", b"testserver"), (b"origin", b"http://testserver"), *headers]
    return scope


def cookie(browser: Browser) -> tuple[bytes, bytes]:
    return (b"cookie", f"sessionid={browser.session_key}; csrftoken={browser.csrf}".encode())


def json_headers(browser: Browser) -> Headers:
    return [
        (b"content-type", b"application/json"),
        (b"x-csrftoken", browser.csrf.encode()),
        cookie(browser),
    ]


async def both(browser: Browser, headers: Headers, body: bytes) -> tuple[Reply, Reply]:
    """The same request to the poll endpoint and to the oracle view."""
    ours = await call(raw_scope(browser, "/longpoll/poll/", headers), body)
    django = await call(raw_scope(browser, ORACLE_PATH, headers), body)
    return ours, django


def refused_by_csrf(reply: Reply) -> bool:
    return reply.status == 403 and b"no_session" not in reply.body


def verdict(reply: Reply) -> str:
    """What Django's checks decided: refused (CSRF), unreadable (400), or passed
    (the endpoint's own answers past the checks, or the oracle's 200)."""
    if refused_by_csrf(reply):
        return "refused"
    if reply.status == 400 and not reply.headers["content-type"].startswith("application/json"):
        return "unreadable"  # Django's own 400 page
    if reply.status == 400 and reply.json()["error"] == "bad_request":
        return "unreadable"
    return "passed"


@pytest.fixture
def fast(settings: Any) -> None:
    settings.LONGPOLL_TIMEOUT = 0.05


# -- 2. data that cannot be stored or sent back as strict JSON ----------------------------


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# Every class of value that json.loads or a Python caller can produce and that
# cannot be stored everywhere and sent back as strict JSON.
BAD_VALUES: dict[str, Any] = {
    "nan": math.nan,
    "infinity": math.inf,
    "-infinity": -math.inf,
    "high surrogate": "a\ud800b",
    "low surrogate": "\udfff",
    "nul": "a\x00b",
    "surrogate key": {"\ud83d": 1},
    "nul key": {"k\x00": 1},
    "deep inside": {"a": [nested(64)]},
    "too deep": nested(65),
}
# The same classes as JSON text, as a page can send them.
BAD_JSON: dict[str, str] = {
    "nan": "NaN",
    "infinity": "Infinity",
    "-infinity": "-Infinity",
    "high surrogate": '"a\\ud800b"',
    "low surrogate": '"\\udfff"',
    "nul": '"a\\u0000b"',
    "surrogate key": '{"\\ud83d": 1}',
    "nul key": '{"k\\u0000": 1}',
    "deep inside": '{"a": [' + "[" * 64 + "0" + "]" * 64 + "]}",
    "too deep": "[" * 65 + "0" + "]" * 65,
    "far too deep": "[" * 3000 + "]" * 3000,
}


def test_bad_values_are_refused_by_every_python_entry_point(transactional_db: None) -> None:
    key = _new_key()
    user = _user()
    sessions.record_user(key, user.pk, _later())
    for name, value in BAD_VALUES.items():
        for send in (
            lambda v: send_to_session(key, "t", v),
            lambda v: send_many_to_session(key, [("t", 1), ("t", v)]),
            lambda v: send_to_user(user, "t", v),
        ):
            with pytest.raises(ValueError):
                send(value)
        with pytest.raises(CommandError):
            call_command("longpoll_send", key, "t", BAD_JSON[name])
    for bad_type in ("a\x00", "\ud800"):
        with pytest.raises(ValueError):
            send_to_session(key, bad_type, 1)
    assert Message.objects.count() == 0
    # What is fine stays fine: astral characters, 64 levels, big integers.
    send_to_session(key, "t", {"emoji": "\U0001f600", "deep": nested(63), "n": 2**70})
    assert Message.objects.count() == 1


@pytest.mark.parametrize("name", sorted(BAD_JSON))
@pytest.mark.parametrize("where", ["data", "type", "field", "poll"])
async def test_bad_json_from_a_page_is_400_and_wedges_nothing(
    browser: Browser, registered: dict[str, Any], fast: None, name: str, where: str
) -> None:
    seen: list[Any] = []

    @longpoll_app.handler("echo")
    def echo(session_key: str, user: Any, data: Any) -> None:
        seen.append(data)
        send_to_session(session_key, "echo", data)

    bad = BAD_JSON[name]
    path = "/longpoll/send/"
    if where == "data":
        body = f'{{"id": "m1", "type": "echo", "data": {bad}}}'
    elif where == "type":
        body = f'{{"id": "m1", "type": {bad}, "data": 1}}'
    elif where == "field":
        body = f'{{"id": "m1", "type": "echo", "data": 1, "x": {bad}}}'
    else:
        path, body = "/longpoll/poll/", f'{{"cursor": null, "x": {bad}}}'
    reply = await browser.request(body.encode(), path=path)
    assert 400 <= reply.status < 500, (reply.status, reply.body)
    assert reply.json()["error"] in {"invalid_json", "invalid_data", "invalid_type", "invalid_body"}
    assert seen == []
    # The channel works on: a good message goes through and is delivered.
    ok = await browser.send("m2", "echo", {"fine": "\U0001f600"})
    assert ok.status == 200, ok.body
    delivered = (await browser.poll(None)).json()["messages"]
    assert [m["data"] for m in delivered] == [{"fine": "\U0001f600"}]


async def test_a_stored_row_that_cannot_be_encoded_still_gets_an_answer(
    browser: Browser, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows stored before the entry points refused such data: SQLite kept lone
    surrogates (its JSON_VALID check takes them, and refuses NaN)."""
    await asend(browser.session_key, "fine", 1)
    if connection.vendor == "sqlite":
        await sync_to_async(_rewrite_data)(Message._meta.db_table, '"\\ud800"')
        reply = await browser.poll(None)  # a lone surrogate goes out as its escape
        assert reply.status == 200
        assert b'"\\ud800"' in reply.body
    # Whatever else cannot be encoded is answered (and logged), never left hanging.
    read = queue.read

    def unencodable(*args: Any) -> Any:
        batch = read(*args)
        assert batch is not None
        for message in batch.messages:
            message["data"] = math.nan
        return batch

    monkeypatch.setattr(queue, "read", unencodable)
    reply = await browser.poll(None)
    assert reply.status == 500 and reply.json()["error"] == "internal"


def _rewrite_data(table: str, raw: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET data = %s", [raw])


# -- 3. a rotated or ended key reads and acknowledges nothing, in every process ------------


@pytest.fixture(params=["memory", "redis"])
def other_process_layer(request: pytest.FixtureRequest, settings: Any) -> Iterator[str]:
    if request.param == "redis":
        if not redis_available():
            pytest.skip("Redis is not reachable; .ci/run starts it")
        use_redis_layer(settings)
    yield request.param
    if request.param == "redis":
        flush_redis()


async def test_a_rotated_key_is_refused_at_once_where_the_news_never_arrived(
    browser: Browser, monkeypatch: pytest.MonkeyPatch, other_process_layer: str
) -> None:
    """This process stands for one that the rotation's order does not reach
    (another process on the in-process layer, or Redis down)."""
    await asend(browser.session_key, "before", 0)
    first = (await browser.poll(None)).json()
    assert [m["type"] for m in first["messages"]] == ["before"]
    held = browser.start({"cursor": first["cursor"]})  # acknowledges "before", then waits
    assert not await held.answered_within(0.2)

    monkeypatch.setattr(api, "_tell_hubs", lambda *args: None)  # the order is lost
    new_key = await sync_to_async(_rotate)(browser.session_key)
    successor = Browser(new_key, csrf=browser.csrf)
    await asend(new_key, "secret", "for the new key only")  # wakes by record pk

    woken = await held.response(2.0)  # the old key's held poll: woken, reads nothing
    assert woken.status == 403 and woken.json()["error"] == "no_session"
    again = await browser.poll(first["cursor"])
    assert again.status == 403 and again.json()["error"] == "no_session"
    fresh = await browser.poll(None)
    assert fresh.status == 403
    # ... nor does it acknowledge (delete) the new key's messages.
    await browser.poll(first["cursor"] + 1)
    await asyncio.sleep(0.2)  # acknowledgements are flushed after 50 ms
    delivered = (await successor.poll(None)).json()["messages"]
    assert [m["data"] for m in delivered] == ["for the new key only"]


def _rotate(key: str) -> str:
    session = sessions.session_store(key)
    session.keys()
    session.cycle_key()
    assert session.session_key is not None
    return session.session_key


async def test_a_deleted_session_is_refused_on_its_next_poll(browser: Browser, fast: None) -> None:
    """Deleted without any signal (raw SQL, another system): Django's views
    refuse it at once, and so must a poll."""
    assert (await browser.poll(None)).status == 204
    from django.contrib.sessions.models import Session

    table = Session._meta.db_table
    await sync_to_async(_run_sql)(f"DELETE FROM {table}")
    reply = await browser.poll(None)
    assert reply.status == 403 and reply.json()["error"] == "no_session"


def _run_sql(sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql)


# -- 4. nothing is remembered about a request without a live session ---------------------


def forged(length: int) -> Browser:
    """A made-up session key with a self-made CSRF cookie and header pair
    (which passes Django's CSRF check)."""
    return Browser(get_random_string(length), csrf=get_random_string(32))


@pytest.mark.parametrize("length", [32, 40, 100_000])
async def test_a_forged_session_leaves_nothing_behind(
    transactional_db: None,
    registered: dict[str, Any],
    settings: Any,
    length: int,
    other_process_layer: str,
) -> None:
    longpoll_app.handler("echo")(lambda *args: None)
    security.forget_all()
    attacker = forged(length)
    for n in range(3):
        poll = await attacker.poll(None)
        assert poll.status == 403 and poll.json()["error"] == "no_session", poll.body
        send = await attacker.send(f"m{n}", "echo", 1)
        assert send.status == 403 and send.json()["error"] == "no_session", send.body
    hub = current_hub()
    assert (security._vetted, security._digest_of) == ({}, {})
    assert attacker.session_key not in consumers._send_buckets._buckets
    assert attacker.session_key not in hub.follows
    assert hub.follows.by_pk == {} and hub.acks.pending == {} and consumers._in_flight == {}
    assert await LongpollSession.objects.acount() == 0
    if other_process_layer == "redis":
        import redis

        from .conftest import REDIS_PREFIX, REDIS_URL

        keys = redis.Redis.from_url(REDIS_URL).keys(f"{REDIS_PREFIX}*")
        group = sessions.wake_group(attacker.session_key).encode()
        assert not [k for k in keys if group in k], keys  # it joined no group


async def test_a_live_session_is_remembered_once_however_its_headers_vary(
    browser: Browser, fast: None
) -> None:
    security.forget_all()
    for n in range(20):
        reply = await browser.request({"cursor": None}, headers={"user-agent": f"UA/{n}"})
        assert reply.status == 204
    assert list(security._digest_of) == [browser.session_key]
    assert len(security._vetted) == 1
    # It ends: nothing about it stays once a poll finds it dead.
    await sync_to_async(sessions.session_store(browser.session_key).delete)()
    assert (await browser.request({"cursor": None}, headers={"user-agent": "UA/19"})).status == 403
    assert (security._vetted, security._digest_of) == ({}, {})


# -- 5. one request's bad input fails no other request -----------------------------------

BAD_ADDRESSES = ["not-an-ip", "203.0.113.7, 198.51.100.1", "fe80::1%eth0", "999.1.1.1", "\x00", ""]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
async def test_a_client_address_that_is_no_ip_fails_no_poll(
    make_browser: Any, fast: None, address: str
) -> None:
    pages = [await sync_to_async(make_browser)() for _ in range(4)]
    answers = await asyncio.gather(
        pages[0].request({"cursor": None}, client=(address, 1)),
        *(page.poll(None) for page in pages[1:]),
    )
    assert [a.status for a in answers] == [204] * 4
    stored = await LongpollSession.objects.aget(session_key=pages[0].session_key)
    assert stored.ip_address is None
    agent = await pages[1].request({"cursor": None}, headers={"user-agent": "UA\x00/1"})
    assert agent.status == 204


async def test_one_failing_session_check_fails_only_its_own_poll(
    make_browser: Any, fast: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pages = [await sync_to_async(make_browser)() for _ in range(4)]
    poisoned = pages[0].session_key
    verify = sessions.verify_sessions

    def fragile(polls: list[tuple[str, str | None, str]]) -> Any:
        if any(key == poisoned for key, _, _ in polls):
            raise ValueError("a value this database refuses")
        return verify(polls)

    monkeypatch.setattr(sessions, "verify_sessions", fragile)
    answers = await asyncio.gather(*(page.poll(None) for page in pages))
    assert [a.status for a in answers] == [500, 204, 204, 204]


async def test_one_failing_acknowledgement_holds_back_no_other(
    make_browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pages = [await sync_to_async(make_browser)() for _ in range(3)]
    cursors = []
    for page in pages:
        await asend(page.session_key, "t", 1)
        cursors.append((await page.poll(None)).json()["cursor"])
    acknowledge = queue.acknowledge
    poisoned = pages[0].session_key

    def fragile(cursors: dict[tuple[int, str], int]) -> None:
        if any(key == poisoned for _, key in cursors):
            raise ValueError("a value this database refuses")
        acknowledge(cursors)

    monkeypatch.setattr(queue, "acknowledge", fragile)
    held = [page.start({"cursor": c}) for page, c in zip(pages, cursors, strict=True)]
    await asyncio.sleep(0.3)  # acknowledged together, 50 ms after
    for poll in held:
        await poll.disconnect()
    left = [m async for m in Message.objects.order_by("session_id").values_list("session_id")]
    first = await LongpollSession.objects.aget(session_key=poisoned)
    assert left == [(first.pk,)]


# -- 6. a remembered CSRF verdict never passes what Django refuses -----------------------

FORM = b"application/x-www-form-urlencoded"
# How a Content-Type may be spelled; Django strips Unicode whitespace, which
# the servers pass through as latin-1 bytes (0x85, 0xa0, 0x1c-0x1f).
CONTENT_TYPES: list[bytes | None] = [
    FORM,
    b"\xa0" + FORM,
    b"\x85" + FORM,
    b"\x1c" + FORM,
    b"\t" + FORM,
    b" " + FORM,
    FORM + b"\xa0",
    FORM.upper(),
    FORM + b"; charset=utf-8",
    b"multipart/form-data; boundary=XyZ",
    b"\xa0multipart/form-data; boundary=XyZ",
    b"application/json",
    b"\xa0application/json",
    b"application/json; charset=utf-8",
    b"text/plain",
    None,
]


def form_body(content_type: bytes | None, token: str) -> bytes:
    if content_type is not None and b"multipart" in content_type:
        return (
            b'--XyZ\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n'
            + token.encode()
            + b"\r\n--XyZ--\r\n"
        )
    return b"csrfmiddlewaretoken=" + token.encode()


@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=repr)
async def test_csrf_verdicts_match_django_for_every_spelling_of_a_form(
    browser: Browser, fast: None, content_type: bytes | None
) -> None:
    security.forget_all()
    headers = [cookie(browser)]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    # The token only in the body, where Django looks for it in a form.
    ours, django = await both(browser, headers, form_body(content_type, browser.csrf))
    assert verdict(ours) == verdict(django), (ours, django)
    # Then the same headers with a JSON body and no token anywhere: Django never passes it.
    for _ in range(2):
        ours, django = await both(browser, headers, b'{"cursor": null}')
        assert verdict(django) != "passed", django
        assert verdict(ours) == verdict(django), (ours, django)
    # With the token in the header too, the verdicts agree, remembered or not.
    headers.append((b"x-csrftoken", browser.csrf.encode()))
    for _ in range(2):
        ours, django = await both(browser, headers, b'{"cursor": null}')
        assert verdict(ours) == verdict(django), (ours, django)


# -- 7. what Django answers 400 is 400 here, never 500 ------------------------------------

BAD_BODIES: dict[str, tuple[bytes, bytes]] = {
    "1,500 form fields": (FORM, b"&".join(b"f%d=1" % n for n in range(1500))),
    "multipart without a boundary": (b"multipart/form-data", b"--x\r\n\r\n"),
    "multipart with a bad boundary": (b"multipart/form-data; boundary=\x01", b"x"),
    "multipart garbage": (b"multipart/form-data; boundary=XyZ", b"\x00" * 100),
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
async def test_unreadable_form_bodies_get_the_status_django_gives(
    browser: Browser, fast: None, name: str
) -> None:
    content_type, body = BAD_BODIES[name]
    headers = [cookie(browser), (b"content-type", content_type)]
    ours, django = await both(browser, headers, body)
    assert ours.status != 500 and ours.json()["error"], ours
    assert django.status // 100 == ours.status // 100 == 4, (ours, django)
    if django.status == 400:
        assert ours.status == 400


# -- 9. the session is read from the cookies exactly as Django reads it ------------------


def cookie_shapes(a: Browser, b: Browser) -> dict[str, Headers]:
    t = f"csrftoken={a.csrf}"
    ka, kb = a.session_key, b.session_key
    return {
        "A then B headers": [
            (b"cookie", f"sessionid={ka}; {t}".encode()),
            (b"cookie", f"sessionid={kb}".encode()),
        ],
        "B then A headers": [
            (b"cookie", f"sessionid={kb}".encode()),
            (b"cookie", f"sessionid={ka}; {t}".encode()),
        ],
        "twice in one": [(b"cookie", f"sessionid={ka}; sessionid={kb}; {t}".encode())],
        "comma joined": [(b"cookie", f"sessionid={ka},sessionid={kb}; {t}".encode())],
        "token apart": [(b"cookie", t.encode()), (b"cookie", f"sessionid={kb}".encode())],
        "quoted": [(b"cookie", f'sessionid="{ka}"; {t}'.encode())],
        "spaces": [(b"cookie", f"  sessionid = {kb} ;  {t} ".encode())],
        "empty header first": [(b"cookie", b""), (b"cookie", f"sessionid={ka}; {t}".encode())],
    }


async def test_the_session_is_the_one_django_sees_for_every_cookie_shape(
    make_browser: Any, fast: None
) -> None:
    a = await sync_to_async(make_browser)()
    b = Browser(await sync_to_async(_new_key)(), csrf=a.csrf)
    await asend(a.session_key, "for.a", None)
    await asend(b.session_key, "for.b", None)
    names = {a.session_key: "for.a", b.session_key: "for.b"}
    for shape, cookies in cookie_shapes(a, b).items():
        headers = [(b"content-type", b"application/json"), (b"x-csrftoken", a.csrf.encode())]
        ours, django = await both(a, [*headers, *cookies], b'{"cursor": null}')
        if django.status != 200:
            assert ours.status == django.status == 403, (shape, ours, django)
            continue
        seen = django.json()["session"]
        if seen is None:
            assert ours.status == 403 and ours.json()["error"] == "no_session", (shape, ours)
        else:
            assert ours.status == 200, (shape, ours)
            assert [m["type"] for m in ours.json()["messages"]] == [names[seen]], shape


# -- Also seen ------------------------------------------------------------------------


async def test_every_answer_says_nosniff(
    browser: Browser, registered: dict[str, Any], fast: None, settings: Any
) -> None:
    longpoll_app.handler("echo")(lambda *args: None)
    settings.LONGPOLL_MAX_MESSAGE_BYTES = 100
    await asend(browser.session_key, "t", 1)
    replies = [
        await browser.poll(None),  # 200
        await browser.poll(1),  # 204
        await browser.request(b"{", timeout=5),  # 400
        await browser.send("m1", "echo", 1),  # 200
        await forged(32).poll(None),  # 403
        await browser.request({"cursor": None}, method="GET"),  # 405
        await browser.request({"cursor": "x" * 200}),  # 413
    ]
    assert [r.status for r in replies] == [200, 204, 400, 200, 403, 405, 413]
    for reply in replies:
        assert reply.headers["x-content-type-options"] == "nosniff", reply


@pytest.mark.parametrize("path", ["/longpoll/poll", "/longpoll/send"])
async def test_an_endpoint_without_its_slash_answers_json(browser: Browser, path: str) -> None:
    reply = await browser.request({"cursor": None}, path=path)
    assert reply.status == 404
    assert reply.json()["error"] == "not_found" and f"{path}/" in reply.json()["detail"]


async def test_a_body_that_never_ends_is_answered_408(browser: Browser, settings: Any) -> None:
    from project.asgi import application

    settings.LONGPOLL_BODY_TIMEOUT = 0.2
    comm = ApplicationCommunicator(application, browser.scope())
    await comm.send_input({"type": "http.request", "body": b'{"cur', "more_body": True})
    start = await comm.receive_output(2.0)
    body = await comm.receive_output(2.0)
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"])["error"] == "body_timeout"
    await comm.send_input({"type": "http.disconnect"})
    await comm.wait(2.0)


# -- helpers --------------------------------------------------------------------------


def _new_key() -> str:
    from .conftest import new_session_key

    return new_session_key()


def _user() -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("mallory", password="pw")


def _later() -> Any:
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() + timedelta(days=1)
