"""The security fixes of the endpoints, on real daphne and uvicorn processes.

* A body that stops arriving is answered 408 by the app under uvicorn; under
  daphne, Twisted buffers the whole body before the app sees any of it, so the
  app cannot time it (a proxy's ``client_body_timeout`` protects daphne).
* Nothing is remembered for a request that has no live session, however large
  its forged session key: the server's RSS does not grow.
* Form bodies Django cannot read answer 400, as Django's views answer them.
* Repeated ``Cookie`` headers pick the session Django's views pick.
* The endpoint paths without their slash answer a JSON 404, and every answer
  of the endpoints carries ``X-Content-Type-Options: nosniff``.

Wherever Django decides, the same request goes to the oracle view
(``tests/oracle.py``) on the same server, through Django's own middleware, and
the endpoint must reach the same verdict. The servers run
``tests.servers_security_settings``: the oracle's URLconf, a 1 s body deadline
and a 2 s hold, SQLite and the in-memory layer.
"""

from __future__ import annotations

import contextlib
import io
import json
import selectors
import shutil
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .servers import HttpBrowser, Reply, Server, manage, running, server_env

pytestmark = pytest.mark.servers

KINDS = ["uvicorn", "daphne"]
SETTINGS = "tests.servers_security_settings"
BODY_TIMEOUT = 1.0  # LONGPOLL_BODY_TIMEOUT in SETTINGS
HOLD = 2.0  # LONGPOLL_TIMEOUT in SETTINGS
ANSWER_BOUND = 5.0  # seconds within which a stalled body must have been answered and closed
POLL = "/longpoll/poll/"
SEND = "/longpoll/send/"
ORACLE = "/oracle/"
POLL_BODY = b'{"cursor": null}'
# Twisted's HTTPChannel.totalHeadersSize: the request line and header lines,
# each counted without its CRLF, may add up to this many bytes; one more and
# Twisted answers a bare "400 Bad Request" and closes, before daphne sees the request.
TWISTED_HEADERS_LIMIT = 16384
MB = 1024 * 1024
# At the commit before the fix, DEBUG off, this file's forged requests added
# 121 MB (uvicorn) and 73 MB (daphne) to the RSS; nothing of it came back.
RSS_GROWTH_LIMIT_KB = 25 * 1024
NOSNIFF = ("x-content-type-options", "nosniff")


# -- servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, to copy for each server."""
    database = tmp_path_factory.mktemp("servers_security") / "migrated.sqlite3"
    result = manage(
        server_env(DJANGO_SETTINGS_MODULE=SETTINGS, SQLITE_PATH=str(database)), "migrate", "-v0"
    )
    assert result.returncode == 0, result.stderr
    return database


def start(kind: str, migrated: Path, log_dir: Path, **env: str) -> Server:
    """A server of its own, on a copy of the migrated database."""
    database = log_dir / f"{kind}-{time.monotonic_ns()}.sqlite3"
    shutil.copyfile(migrated, database)
    environment = server_env(DJANGO_SETTINGS_MODULE=SETTINGS, SQLITE_PATH=str(database), **env)
    return Server(kind, environment).start(log_dir)


# What a server logs for a 500: the app's own lines, uvicorn's and daphne's for an
# exception out of the application. (Django's views log a traceback for the
# oracle's 400s, so "Traceback" alone proves nothing.)
FAILURE_LINES = (
    "longpoll: could not",
    "Exception in ASGI application",
    "Exception inside application",
    "returned without completing response",  # uvicorn: an answer never finished
    "took too long to shut down",  # daphne: an app still running after its client left
)


def assert_clean(server: Server) -> None:
    log = server.log()
    for phrase in FAILURE_LINES:
        assert phrase not in log, log[-6000:]


@pytest.fixture(scope="module")
def servers(
    migrated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """One daphne and one uvicorn, as the demo runs them (DEBUG on)."""
    log_dir = tmp_path_factory.mktemp("servers_security_logs")
    started: dict[str, Server] = {}
    try:
        for kind in KINDS:
            started[kind] = start(kind, migrated, log_dir)
        yield started
    finally:
        for server in started.values():
            server.stop()
    for server in started.values():
        assert_clean(server)


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest, servers: dict[str, Server]) -> Server:
    return servers[request.param]


# -- raw HTTP -----------------------------------------------------------------------------


def request_bytes(
    server: Server,
    path: str,
    *,
    cookies: list[str],
    csrf: str | None,
    body: bytes = POLL_BODY,
    content_type: str | None = "application/json",
    content_length: int | None = None,
    method: str = "POST",
) -> bytes:
    """A request as a page sends it, with each of ``cookies`` as a Cookie header
    line of its own; ``Connection: close``, so the answer ends with the connection."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Origin: http://127.0.0.1:{server.port}",
        *(f"Cookie: {cookie}" for cookie in cookies),
    ]
    if csrf is not None:
        lines.append(f"X-CSRFToken: {csrf}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_reply(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, body)


def exchange(server: Server, raw: bytes, timeout: float = 15.0) -> Reply | None:
    """Send ``raw`` and read until the server closes; None if it closed (or
    reset) without a byte of answer."""
    data = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # it closed while we sent: read what it said
            sock.sendall(raw)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return parse_reply(data) if data else None


def cookie_line(browser: HttpBrowser) -> str:
    return "; ".join(f"{k}={v}" for k, v in browser.cookies.items())


def page(server: Server) -> HttpBrowser:
    browser = HttpBrowser()
    browser.open_page(server)
    return browser


def queue(server: Server, browser: HttpBrowser, data: str) -> None:
    """A message for the browser's session, from another process (by its key)."""
    sent = manage(
        server.env, "longpoll_send", browser.cookies["sessionid"], "for", json.dumps(data)
    )
    assert sent.returncode == 0, sent.stderr


def assert_endpoint_json(reply: Reply | None, status: int, error: str) -> dict[str, Any]:
    assert reply is not None
    assert (reply.status, reply.body[:300]) == (status, reply.body[:300])
    assert reply.headers.get("content-type") == "application/json", reply.headers
    assert reply.headers.get(NOSNIFF[0]) == NOSNIFF[1], reply.headers
    body: dict[str, Any] = reply.json()
    assert body["error"] == error, body
    return body


def assert_twisted_bare_400(reply: Reply | None) -> None:
    """Twisted's own refusal (``_respondToBadRequestAndDisconnect``): the
    request never reached daphne's ASGI side, so nor the app or Django."""
    assert reply is not None
    assert (reply.status, reply.headers, reply.body) == (400, {}, b"")


# -- 1. a body that stops arriving ---------------------------------------------------------

STALLED = 40  # connections whose body stops arriving, all at once
DECLARED = 1000  # their Content-Length
FULL_BODY = POLL_BODY.ljust(DECLARED)  # JSON allows the trailing spaces
FIRST_PART = FULL_BODY[:9]  # '{"cursor"': then nothing


def stalled_connections(server: Server, browser: HttpBrowser, count: int) -> list[socket.socket]:
    raw = request_bytes(
        server,
        POLL,
        cookies=[cookie_line(browser)],
        csrf=browser.cookies["csrftoken"],
        body=FIRST_PART,
        content_length=DECLARED,
    )
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(raw)
        socks.append(sock)
    return socks


def read_all_until(
    socks: list[socket.socket], deadline: float
) -> tuple[dict[socket.socket, bytes], dict[socket.socket, float]]:
    """What each socket received, and when each was closed by the server
    (absent if still open at ``deadline``)."""
    received = {sock: b"" for sock in socks}
    closed_at: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while len(closed_at) < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    chunk = ready.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[ready] += chunk
                else:
                    closed_at[ready] = time.monotonic()
                    selector.unregister(ready)
    return received, closed_at


def test_uvicorn_answers_a_stalled_body_408_and_closes(servers: dict[str, Server]) -> None:
    server = servers["uvicorn"]
    process = running(server)
    browser = page(server)
    started = time.monotonic()
    socks = stalled_connections(server, browser, STALLED)
    ports = {sock.getsockname()[1] for sock in socks}
    try:
        # Meanwhile an ordinary send and poll are answered at once.
        assert browser.send(server, "meanwhile", "demo.echo", "meanwhile").status == 200
        reply = browser.poll(server)
        assert reply.status == 200 and reply.json()["messages"][0]["data"] == "meanwhile"
        served = time.monotonic() - started
        received, closed_at = read_all_until(socks, started + ANSWER_BOUND)
    finally:
        for sock in socks:
            sock.close()
    elapsed = sorted(at - started for at in closed_at.values())
    print(
        f"\nuvicorn: {STALLED} stalled bodies answered 408 and closed "
        f"{elapsed[0] if elapsed else -1:.2f}-{elapsed[-1] if elapsed else -1:.2f} s after sending"
    )
    assert len(closed_at) == STALLED, f"{STALLED - len(closed_at)} still open after the bound"
    for data in received.values():
        answer = assert_endpoint_json(parse_reply(data), 408, "body_timeout")
        assert "LONGPOLL_BODY_TIMEOUT" in answer["detail"]
        assert parse_reply(data).headers.get("connection") == "close"
    # Not before the deadline: the deadline is the setting, not an instant refusal;
    # and the ordinary requests were served while all 40 were still waiting.
    assert elapsed[0] >= BODY_TIMEOUT * 0.9
    assert served < elapsed[0], (served, elapsed[0])
    # Every connection is gone on the server's side too.
    deadline = time.monotonic() + 5
    while process.peer_ports() & ports and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process.peer_ports() & ports, sorted(process.peer_ports() & ports)


def test_daphne_holds_a_stalled_body_for_twisted_and_the_app_never_sees_it(
    servers: dict[str, Server],
) -> None:
    """Twisted reads the whole body before daphne hands the request to the app,
    so LONGPOLL_BODY_TIMEOUT cannot apply: the connection stays open, unanswered,
    until Twisted's own idle timeout (HTTPChannel.timeOut, 60 s without a byte)
    or a proxy's client_body_timeout. The rest of the body, however late, makes
    an ordinary request."""
    server = servers["daphne"]
    browser = page(server)
    queue(server, browser, "pending")
    started = time.monotonic()
    count = 5  # enough to show it; each is held for the whole wait
    socks = stalled_connections(server, browser, count)
    try:
        reply = browser.poll(server)  # served meanwhile
        assert reply.status == 200 and reply.json()["messages"][0]["data"] == "pending"
        received, closed_at = read_all_until(socks, started + 3 * BODY_TIMEOUT)
        assert closed_at == {} and set(received.values()) == {b""}, "daphne answered or closed"
        # The rest of the body arrives long after the app's deadline: an ordinary answer.
        late = socks[0]
        late.setblocking(True)
        late.settimeout(10)
        late.sendall(FULL_BODY[len(FIRST_PART) :])
        data = b""
        while chunk := late.recv(65536):
            data += chunk
    finally:
        for sock in socks:
            sock.close()
    reply = parse_reply(data)
    assert reply.status == 200, reply
    assert reply.json()["messages"][0]["data"] == "pending"
    print(f"\ndaphne: {count} stalled bodies still open, unanswered, after {3 * BODY_TIMEOUT:g} s")


# -- 2. nothing remembered for sessionless requests ----------------------------------------

FORGED_REQUESTS = 60  # polls, and as many sends, with a forged key
CSRF = "a" * 32  # a self-made CSRF cookie and header pair: Django accepts it


def forged_request(server: Server, path: str, key: str, n: int) -> bytes:
    body = POLL_BODY if path == POLL else json.dumps({"id": f"f{n}", "type": "demo.echo"}).encode()
    return request_bytes(
        server, path, cookies=[f"csrftoken={CSRF}; sessionid={key}"], csrf=CSRF, body=body
    )


def forged_key(length: int, n: int) -> str:
    return f"{n:08d}".ljust(length, "k")  # each different, as an attacker's would be


def daphne_largest_key(server: Server) -> int:
    """The longest session key Twisted lets through in a forged send (the
    larger of the two requests): the header lines fill its limit exactly."""
    probe = forged_request(server, SEND, "", 0)
    head = probe.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return TWISTED_HEADERS_LIMIT - sum(len(line) for line in head)


def send_forged(
    server: Server, pool: ThreadPoolExecutor, key_length: int, count: int, first: int
) -> list[Reply | None]:
    raws = [
        forged_request(server, path, forged_key(key_length, first + n), first + n)
        for n in range(count)
        for path in (POLL, SEND)
    ]
    return list(pool.map(lambda raw: exchange(server, raw, timeout=30), raws))


@pytest.mark.parametrize("debug", ["0", "1"], ids=["DEBUG-off", "DEBUG-on"])
@pytest.mark.parametrize("kind", KINDS)
def test_forged_session_keys_leave_nothing_behind(
    kind: str, debug: str, migrated: Path, tmp_path: Path
) -> None:
    """A fresh server each time, so that its RSS says what these requests cost.

    DJANGO_DEBUG as given; the demo's default is on. With DEBUG on, Django
    keeps the SQL of every query (the forged key in it) in its connection's
    ``queries_log``, up to 9000 queries per connection, and empties it only at
    ``request_started``, which Django's handler sends for a view and the
    endpoints never do: there every sessionless request is remembered.
    """
    server = start(kind, migrated, tmp_path, DJANGO_DEBUG=debug)
    try:
        forged_requests_cost_no_memory(server)
    finally:
        server.stop()
    assert_clean(server)


def forged_requests_cost_no_memory(server: Server) -> None:
    process = running(server)
    fresh = process.rss_kb()
    if server.kind == "uvicorn":
        # httptools takes a header of any size: a 1 MB key reaches the app.
        key_length = MB
        count = FORGED_REQUESTS
        warm_up = 10
    else:
        # Twisted refuses headers over 16 KB before daphne: the largest key it
        # lets through is ~16 KB, so as many bytes of key take ~64 times more
        # requests; 40 times gives 74 MB of keys.
        key_length = daphne_largest_key(server)
        count = FORGED_REQUESTS * 40
        # daphne's RSS climbs by steps for the first thousand or two of these
        # requests, then stays (malloc's arenas of its threads), whatever follows.
        warm_up = count // 2
    with ThreadPoolExecutor(4) as pool:
        # The first requests of this size set up buffers and arenas for good.
        warm = send_forged(server, pool, key_length, warm_up, 10**7)
        for reply in warm:
            assert_endpoint_json(reply, 403, "no_session")
        assert process.wait_idle()
        before = process.rss_kb()
        started = time.monotonic()
        replies = send_forged(server, pool, key_length, count, 0)
        took = time.monotonic() - started
        for reply in replies:
            assert_endpoint_json(reply, 403, "no_session")
        oversized: list[Reply | None] = []
        if server.kind == "daphne":
            # A 1 MB key never reaches daphne's ASGI side: Twisted drops a header
            # line over LineReceiver.MAX_LENGTH (16 KB) and closes without a word,
            # and a request whose header lines add up to one byte over its limit gets
            # its bare 400.
            oversized = send_forged(server, pool, MB, FORGED_REQUESTS, 10**6)
            assert all(r is None for r in oversized), [r.status for r in oversized if r]
            over = forged_request(server, SEND, forged_key(key_length + 1, 1), 1)
            assert_twisted_bare_400(exchange(server, over))
        assert process.wait_idle()
        after = process.rss_kb()
    print(
        f"\n{server.kind}: {count} polls and {count} sends with forged {key_length:,}-byte "
        f"keys ({2 * count * key_length / MB:.0f} MB of keys) in {took:.1f} s, all 403 "
        f"no_session"
        + (
            f", and {len(oversized)} requests with 1 MB keys refused by Twisted"
            if oversized
            else ""
        )
        + f"; RSS {fresh / 1024:.1f} MB fresh, {before / 1024:.1f} MB after "
        f"{2 * warm_up} to warm up, {after / 1024:.1f} MB after these "
        f"({(after - before) / 1024:+.1f} MB)"
    )
    assert after - before < RSS_GROWTH_LIMIT_KB, (before, after)
    # A real session still works.
    assert page(server).poll(server, timeout=HOLD + 10).status == 204


# -- 3. form bodies Django cannot read -----------------------------------------------------

MANY_FIELDS = "&".join(f"f{n}=v" for n in range(1500)).encode()  # DATA_UPLOAD_MAX_NUMBER_FIELDS
FORM_CASES = {
    "1500 fields": ("application/x-www-form-urlencoded", MANY_FIELDS),
    "multipart without boundary": ("multipart/form-data", b"garbage"),
    "multipart with garbage": ("multipart/form-data; boundary=x", b"this is no multipart body"),
}


@pytest.mark.parametrize("case", list(FORM_CASES))
def test_bad_form_bodies_answer_400_like_django(server: Server, case: str) -> None:
    content_type, body = FORM_CASES[case]
    browser = page(server)

    def ask(path: str) -> Reply | None:
        raw = request_bytes(
            server,
            path,
            cookies=[cookie_line(browser)],
            csrf=browser.cookies["csrftoken"],
            body=body,
            content_type=content_type,
        )
        return exchange(server, raw)

    oracle, poll, send = ask(ORACLE), ask(POLL), ask(SEND)
    assert oracle is not None and poll is not None and send is not None
    print(
        f"\n{server.kind}, {case}: oracle {oracle.status}, poll {poll.status}, send {send.status}"
    )
    if server.kind == "daphne" and content_type.startswith("multipart/"):
        # Twisted parses a multipart body itself (Request.requestReceived) and
        # answers its own bare 400 when it cannot, before daphne, Django or the app.
        for reply in (oracle, poll, send):
            assert_twisted_bare_400(reply)
    elif case == "multipart with garbage":
        # Django reads no field from it and no error: the CSRF token in the header
        # passes, and the oracle sees the session. The endpoints pass the CSRF check
        # too, then refuse the body, which is not JSON.
        assert oracle.status == 200, oracle
        assert oracle.json() == {"session": browser.cookies["sessionid"]}
        assert_endpoint_json(poll, 400, "invalid_json")
        assert_endpoint_json(send, 400, "invalid_json")
    else:
        # Django's handler answers TooManyFieldsSent (SuspiciousOperation) and
        # MultiPartParserError 400; so do the endpoints, in JSON.
        assert oracle.status == 400, oracle
        for reply in (poll, send):
            answer = assert_endpoint_json(reply, 400, "bad_request")
            assert answer["detail"].startswith("The request cannot be read"), answer


# -- 4. repeated Cookie headers --------------------------------------------------------------


def cookie_shapes(a: str, b: str, t: str) -> dict[str, list[str]]:
    """Cookie header lines, one list item a line; ``a`` and ``b`` session keys,
    ``t`` the CSRF token. Django joins repeated headers with "," and splits
    cookies on ";" only, so a "," inside a line glues it to the next."""
    return {
        "one line": [f"sessionid={a}; csrftoken={t}"],
        "twice in one line, B last": [f"sessionid={a}; csrftoken={t}; sessionid={b}"],
        "twice in one line, A last": [f"sessionid={b}; csrftoken={t}; sessionid={a}"],
        "spaces and quotes": [f' sessionid = "{a}" ;  csrftoken = {t} '],
        "an empty one last": [f"sessionid={a}; csrftoken={t}; sessionid="],
        "name in another case": [f"SessionId={a}; csrftoken={t}"],
        "two lines, A first": [f"csrftoken={t}; sessionid={a}", f"sessionid={b}"],
        "two lines, B first": [f"sessionid={b}", f"csrftoken={t}; sessionid={a}"],
        "two lines, A first, glued to x": [f"sessionid={a}; x=", f"sessionid={b}; csrftoken={t}"],
        "two lines, A first, B after ';'": [f"sessionid={a}; csrftoken={t};", f"; sessionid={b}"],
        "two lines, token alone first": [f"csrftoken={t}", f"sessionid={b}"],
        "three lines": [f"csrftoken={t};", f"sessionid={a};", f"sessionid={b}"],
    }


def test_repeated_cookie_headers_pick_the_session_django_picks(server: Server) -> None:
    a, b = page(server), page(server)
    queue(server, a, "for A")
    queue(server, b, "for B")
    key_a, key_b = a.cookies["sessionid"], b.cookies["sessionid"]
    names: dict[str | None, str | None] = {key_a: "A", key_b: "B", None: None}
    token = a.cookies["csrftoken"]  # any of the two: unmasked, 32 characters
    seen: dict[str, str | None] = {}
    for shape, lines in cookie_shapes(key_a, key_b, token).items():
        oracle = exchange(server, request_bytes(server, ORACLE, cookies=lines, csrf=token))
        poll = exchange(server, request_bytes(server, POLL, cookies=lines, csrf=token))
        assert oracle is not None and poll is not None
        if oracle.status == 403:  # Django's CSRF check refused: so must the endpoint
            assert_endpoint_json(poll, 403, "csrf_failed")
            seen[shape] = "csrf refused"
            continue
        assert oracle.status == 200, (shape, oracle)
        session = oracle.json()["session"]
        assert session in names, (shape, session)
        seen[shape] = names[session]
        if session is None:
            assert_endpoint_json(poll, 403, "no_session")
        else:
            assert (shape, poll.status) == (shape, 200), poll
            assert poll.json()["messages"][0]["data"] == f"for {names[session]}", (shape, poll)
    print(f"\n{server.kind}: the session Django sees, shape by shape: {seen}")
    # The shapes cover both orders of A and B, and no session; where Django joins
    # repeated Cookie headers with "," (before 6.0), a "," glued to the CSRF token
    # also makes its CSRF check refuse.
    verdicts = {"A", "B", None}
    if django_joins_cookie_lines_with() == ",":
        verdicts.add("csrf refused")
    assert set(seen.values()) == verdicts, seen


def django_joins_cookie_lines_with() -> str:
    """What Django's ASGIRequest puts between two Cookie header lines."""
    from django.core.handlers.asgi import ASGIRequest

    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b""}
    scope["headers"] = [(b"cookie", b"a=1"), (b"cookie", b"b=2")]
    return ASGIRequest(scope, io.BytesIO()).META["HTTP_COOKIE"][len("a=1") : -len("b=2")]


# -- 5. a path without its slash; nosniff everywhere --------------------------------------------


def test_no_slash_is_a_json_404_and_every_answer_says_nosniff(server: Server) -> None:
    browser = page(server)
    cookies, csrf = [cookie_line(browser)], browser.cookies["csrftoken"]
    for path in ("/longpoll/poll", "/longpoll/send"):
        reply = exchange(server, request_bytes(server, path, cookies=cookies, csrf=csrf))
        answer = assert_endpoint_json(reply, 404, "not_found")
        assert f"{path}/" in answer["detail"], answer
    queue(server, browser, "nosniff")

    def ask(path: str, **kwargs: Any) -> Reply | None:
        options: dict[str, Any] = {"cookies": cookies, "csrf": csrf}
        options.update(kwargs)
        return exchange(server, request_bytes(server, path, **options))

    messages = ask(POLL)
    assert messages is not None and messages.status == 200, messages
    cursor = messages.json()["cursor"]
    too_large, extra = (
        (b" " * (64 * 1024 + 1), 0) if server.kind == "daphne" else (b"", 64 * 1024 + 1)
    )
    answers: dict[str, tuple[Reply | None, int]] = {
        "messages": (messages, 200),
        "empty": (ask(POLL, body=json.dumps({"cursor": cursor}).encode()), 204),  # after HOLD
        "sent": (ask(SEND, body=b'{"id": "n1", "type": "demo.echo", "data": 1}'), 200),
        "invalid JSON": (ask(POLL, body=b"{"), 400),
        "unknown type": (ask(SEND, body=b'{"id": "n2", "type": "nope", "data": 1}'), 400),
        "no CSRF token": (ask(POLL, csrf=None), 403),
        "no session": (ask(POLL, cookies=[f"csrftoken={csrf}"]), 403),
        "GET": (ask(POLL, method="GET", body=b""), 405),
        # uvicorn: declared, not sent, as the answer comes before any of it is
        # read. daphne: sent, as Twisted waits for all of it before daphne calls the app.
        "too large": (ask(POLL, body=too_large, content_length=len(too_large) + extra), 413),
    }
    for name, (reply, status) in answers.items():
        assert reply is not None, name
        assert (name, reply.status) == (name, status), reply
        assert reply.headers.get(NOSNIFF[0]) == NOSNIFF[1], (name, reply.headers)
