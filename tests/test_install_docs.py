"""The install and deployment pages, copied into a fresh ``startproject`` and run.

Each marked snippet (``<!-- snippet: NAME -->`` right before a fenced block) is
applied exactly as the sentence before it says ("Replace `X` in `FILE` with:",
"Replace `FILE` with:", "Add to the end of `FILE`:", "Create `FILE`:", "Save as
`FILE`:"); a missing snippet or an instruction the test cannot follow fails with
the page's name. The project is then served by runserver (docs/install.md alone),
by daphne and uvicorn (with docs/deployment.md's static files, DEBUG off), and by
two processes on Redis and PostgreSQL (with its scaling block), and checked over
real HTTP as a browser and an operator use it: the page and its tag, longpoll.js
served, a held poll woken by the page's own view, ``longpoll_send``, the admin.
"""

from __future__ import annotations

import ast
import http.client
import http.cookies
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

import pytest

import longpoll_app
from longpoll_app.models import session_fingerprint

from .conftest import REDIS_URL, redis_available
from .servers import (
    POSTGRES_ADMIN_URL,
    ROOT,
    Nginx,
    Reply,
    Server,
    drop_postgres_database,
    flush_redis_db,
    fresh_postgres_database,
    postgres_available,
)

pytestmark = pytest.mark.servers

INSTALL_PAGE = ROOT / "docs" / "install.md"
DEPLOYMENT_PAGE = ROOT / "docs" / "deployment.md"
INSTALL_SNIPPETS = ["installed-apps", "settings", "urls", "asgi", "views", "template", "app-js"]
STATIC_SNIPPETS = ["production", "static-root", "whitenoise"]
SCALING_SNIPPETS = ["scaling"]
PROJECT = "mysite"

HOLD = 10.0  # seconds: LONGPOLL_TIMEOUT's default, which the snippets keep
HELD_AFTER = 0.5  # seconds after which a poll that has not answered counts as held
PROMPT = 3.0  # seconds: a woken poll answers within this, far under the hold
COMMAND_TIMEOUT = 120.0  # seconds a manage.py command may take on a busy machine
SCALING_REDIS_DB = 11  # this module's own Redis database, flushed before and after
# The Python the project runs with: that of another virtualenv tests an installed
# wheel (python -m pip install "dist/...whl[daphne]") instead of this checkout.
PROJECT_PYTHON = os.environ.get("INSTALL_DOCS_PYTHON", sys.executable)
LONGPOLL_JS = Path(longpoll_app.__file__).parent / "static" / "longpoll_app" / "longpoll.js"
ADMIN_USER, ADMIN_PASSWORD = "admin", "install-docs-" + secrets.token_hex(8)

# What the test adds of its own to the deployed projects: DEBUG off, as a
# deployment has it, so that static files come from collectstatic and WhiteNoise
# rather than from runserver's handler or WhiteNoise's finders.


# -- The pages' snippets --------------------------------------------------------------

SNIPPET = re.compile(r"<!-- snippet: (?P<name>[\w-]+) -->\n```[\w-]*\n(?P<code>.*?)\n```", re.S)
INSTRUCTIONS = [
    ("replace-assignment", re.compile(r"^Replace `(?P<name>[A-Z_]+)` in `(?P<path>[^`]+)` with")),
    ("replace-file", re.compile(r"^Replace `(?P<path>[^`]+)` with")),
    ("append", re.compile(r"^Add to the end of `(?P<path>[^`]+)`")),
    ("create", re.compile(r"^(?:Create|Save as) `(?P<path>[^`]+)`")),
]


@dataclass
class Snippet:
    page: str
    name: str
    code: str
    instruction: str  # the sentence before the block that says where it goes


def read_snippets(page: Path) -> dict[str, Snippet]:
    text = page.read_text()
    found: dict[str, Snippet] = {}
    for match in SNIPPET.finditer(text):
        paragraph = text[: match.start()].rstrip().rsplit("\n\n", 1)[-1]
        sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(paragraph.split()))[-1]
        name = match["name"]
        assert name not in found, f"{page.name} marks two snippets {name!r}"
        found[name] = Snippet(page.name, name, match["code"] + "\n", sentence.lstrip("* "))
    return found


def snippets_from(page: Path, names: list[str]) -> list[Snippet]:
    found = read_snippets(page)
    missing = [name for name in names if name not in found]
    assert not missing, (
        f"{page.relative_to(ROOT)} has no block marked <!-- snippet: NAME --> for {missing} "
        f"(it marks {sorted(found)})"
    )
    return [found[name] for name in names]


def apply(snippet: Snippet, project: Path) -> None:
    """Do what the sentence before the snippet says, in the project's directory."""
    for action, pattern in INSTRUCTIONS:  # noqa: B007 (the action found is used below)
        match = pattern.search(snippet.instruction)
        if match:
            break
    else:
        raise AssertionError(
            f"{snippet.page}, snippet {snippet.name!r}: the sentence before it does not say "
            f"where it goes in words this test follows: {snippet.instruction!r}"
        )
    target = project / match["path"]
    assert project in target.resolve().parents, f"{snippet.name}: {match['path']} is outside"
    if action == "replace-assignment":
        target.write_text(replace_assignment(target.read_text(), match["name"], snippet))
    elif action == "append":
        target.write_text(target.read_text() + "\n" + snippet.code)
    elif action == "replace-file":
        assert target.exists(), f"{snippet.name}: {match['path']} does not exist to replace"
        target.write_text(snippet.code)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(snippet.code)


def replace_assignment(source: str, name: str, snippet: Snippet) -> str:
    """The module with its top-level ``name = ...`` statement replaced by the snippet."""
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if [t.id for t in targets if isinstance(t, ast.Name)] == [name]:
            lines = source.splitlines(keepends=True)
            assert node.end_lineno is not None
            return "".join([*lines[: node.lineno - 1], snippet.code, *lines[node.end_lineno :]])
    raise AssertionError(f"{snippet.page}, snippet {snippet.name!r}: no `{name} = ...` to replace")


# -- The project and its commands ---------------------------------------------------


def project_env(**extra: str) -> dict[str, str]:
    """This environment without what would point the project elsewhere."""
    foreign = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if k not in foreign and not k.startswith("PG")}
    env.update(DJANGO_SETTINGS_MODULE=f"{PROJECT}.settings", PYTHONUNBUFFERED="1", **extra)
    return env


def run(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [PROJECT_PYTHON, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def new_project(tmp: Path, snippets: list[Snippet]) -> Path:
    """``startproject`` with the snippets applied, ready to run: migrated, one superuser."""
    subprocess.run(
        [PROJECT_PYTHON, "-m", "django", "startproject", PROJECT],
        cwd=tmp,
        check=True,
        timeout=COMMAND_TIMEOUT,
    )
    project = tmp / PROJECT
    for snippet in snippets:
        apply(snippet, project)
    return project


def prepare(project: Path, env: dict[str, str], collectstatic: bool) -> None:
    if collectstatic:
        run(project, env, "manage.py", "collectstatic", "--noinput", "-v0")
    run(project, env, "manage.py", "migrate", "-v0")
    superuser = dict(env, DJANGO_SUPERUSER_PASSWORD=ADMIN_PASSWORD)
    args = ["--noinput", "--username", ADMIN_USER, "--email", "admin@example.com"]
    run(project, superuser, "manage.py", "createsuperuser", *args)


class Endpoint(Protocol):
    """Where a browser's requests go: a server of the project, or a proxy in front."""

    port: int

    def log(self) -> str: ...


def project_server(kind: str, project: Path, env: dict[str, str]) -> Server:
    """One server process of the project, started as the pages say (uvicorn with
    uvloop and httptools, logging every response)."""
    app = f"{PROJECT}.asgi:application"
    return Server(kind, env, access_log=True, cwd=project, app=app, python=PROJECT_PYTHON)


def stop_and_check(*servers: Server) -> None:
    for server in servers:
        server.stop()
    for server in servers:
        assert "Traceback" not in server.log(), server.log()


# -- A browser, as longpoll.js and the page's form use the server ---------------------


class PageParser(HTMLParser):
    """The page's script elements and its form's CSRF token."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.form_token: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            self.scripts.append(found)
        elif tag == "input" and found.get("name") == "csrfmiddlewaretoken":
            self.form_token = found.get("value")


@dataclass
class Page:
    tag: dict[str, str | None]  # the attributes of {% longpoll_script %}'s element
    scripts: list[dict[str, str | None]]
    form_token: str

    def attr(self, name: str) -> str:
        value = self.tag.get(name)
        assert value, f"the tag's script element has no {name}: {self.tag}"
        return value


@dataclass
class Visitor:
    """One browser's cookies, against any server of the project."""

    cookies: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        server: Endpoint,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = HOLD + 5,
    ) -> Reply:
        sent = {"Origin": f"http://127.0.0.1:{server.port}", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            jar = http.cookies.SimpleCookie(header)
            self.cookies.update({k: m.value for k, m in jar.items()})
        # Header names in lower case: servers spell them differently.
        headers_received = {k.lower(): v for k, v in response.headers.items()}
        return Reply(response.status, headers_received, data)

    def open_page(self, server: Endpoint) -> Page:
        reply = self.request(server, "GET", "/")
        assert reply.status == 200, (reply, server.log())
        parser = PageParser()
        parser.feed(reply.body.decode())
        tags = [s for s in parser.scripts if s.get("data-poll-url")]
        assert len(tags) == 1, f"the page has not one longpoll script element: {parser.scripts}"
        assert parser.form_token, "the page's form has no CSRF token"
        assert "sessionid" in self.cookies, "the tag did not give the page a session"
        return Page(tags[0], parser.scripts, parser.form_token)

    def poll(self, server: Endpoint, page: Page, cursor: int | None) -> Reply:
        """POST the poll as longpoll.js does: JSON, the element's CSRF token, cookies."""
        headers = {"Content-Type": "application/json", "X-CSRFToken": page.attr("data-csrf-token")}
        body = json.dumps({"cursor": cursor}).encode()
        return self.request(server, "POST", page.attr("data-poll-url"), body, headers)

    def submit_form(self, server: Endpoint, path: str, fields: dict[str, str]) -> Reply:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.request(server, "POST", path, urllib.parse.urlencode(fields).encode(), headers)


@dataclass
class Held:
    """A poll sent and not answered yet."""

    future: Future[Reply]

    def answer(self) -> tuple[Reply, float]:
        """The poll's answer, and the seconds it took from now."""
        started = time.monotonic()
        reply = self.future.result(HOLD + 5)
        return reply, time.monotonic() - started


def hold_poll(
    pool: ThreadPoolExecutor, visitor: Visitor, server: Endpoint, page: Page, cursor: Any
) -> Held:
    future = pool.submit(visitor.poll, server, page, cursor)
    time.sleep(HELD_AFTER)
    assert not future.done(), f"the poll answered at once: {future.result()}"
    return Held(future)


def woken_with(held: Held, message_id: int, data: Any) -> int:
    """Check the held poll answered at once with that one message; its new cursor."""
    reply, waited = held.answer()
    assert reply.status == 200, reply
    answer = reply.json()
    assert answer["messages"] == [{"id": message_id, "type": "notice", "data": data}], answer
    assert waited < PROMPT, f"the poll answered {waited:.2f} s after the send"
    return int(answer["cursor"])


# -- What is checked on every setup ---------------------------------------------------


def check_page_and_static_files(visitor: Visitor, server: Endpoint, app_js: str) -> Page:
    page = visitor.open_page(server)
    assert page.attr("src").endswith("longpoll_app/longpoll.js"), page.tag
    assert "defer" in page.tag, page.tag
    served = visitor.request(server, "GET", page.attr("src"))
    assert served.status == 200, (served.status, page.attr("src"), server.log())
    assert served.body == LONGPOLL_JS.read_bytes()
    sources = [script.get("src") or "" for script in page.scripts]
    own = [src for src in sources if src.endswith("/app.js")]
    assert len(own) == 1, page.scripts
    mine = visitor.request(server, "GET", own[0])
    assert (mine.status, mine.body.decode()) == (200, app_js), mine
    return page


def notify_through_view(visitor: Visitor, server: Endpoint, page: Page, text: str) -> int:
    """Submit the page's form to its view, which calls send_to_session; the message id."""
    fields = {"csrfmiddlewaretoken": page.form_token, "text": text}
    reply = visitor.submit_form(server, "/notify/", fields)
    assert reply.status == 200, (reply, server.log())
    return int(reply.json()["id"])


def longpoll_send(project: Path, env: dict[str, str], session_key: str, data: Any) -> int:
    done = run(project, env, "manage.py", "longpoll_send", session_key, "notice", json.dumps(data))
    sent = re.search(r"Sent message (\d+) to session", done.stdout)
    assert sent, done.stdout
    return int(sent[1])


def check_admin(server: Endpoint, session_key: str, pending_text: str) -> None:
    admin = Visitor()
    login = admin.request(server, "GET", "/admin/login/")
    assert login.status == 200, login
    parser = PageParser()
    parser.feed(login.body.decode())
    assert parser.form_token, "the admin login page has no CSRF token"
    fields = {"csrfmiddlewaretoken": parser.form_token, "next": "/admin/"}
    fields.update(username=ADMIN_USER, password=ADMIN_PASSWORD)
    logged_in = admin.submit_form(server, "/admin/login/?next=/admin/", fields)
    assert (logged_in.status, logged_in.headers.get("location")) == (302, "/admin/"), logged_in
    sessions = admin.request(server, "GET", "/admin/longpoll_app/longpollsession/")
    assert sessions.status == 200, sessions
    assert session_fingerprint(session_key) in sessions.body.decode()
    messages = admin.request(server, "GET", "/admin/longpoll_app/message/")
    assert messages.status == 200, messages
    assert pending_text in messages.body.decode()


@dataclass
class Browsing:
    """A visitor left after the end-to-end checks, with its page and cursor."""

    visitor: Visitor
    page: Page
    cursor: int


def check_end_to_end(
    project: Path, env: dict[str, str], poll_on: Endpoint, send_through: Endpoint
) -> Browsing:
    """A page on one server, its poll held there, woken by a view of the other server
    (or the same) and by ``longpoll_send``; then the admin shows the session."""
    app_js = (project / "static" / "app.js").read_text()
    visitor = Visitor()
    page = check_page_and_static_files(visitor, send_through, app_js)
    session_key = visitor.cookies["sessionid"]
    with ThreadPoolExecutor(1) as pool:
        held = hold_poll(pool, visitor, poll_on, page, None)
        text = "from a view " + secrets.token_hex(4)
        message_id = notify_through_view(visitor, send_through, page, text)
        cursor = woken_with(held, message_id, {"text": text})

        held = hold_poll(pool, visitor, poll_on, page, cursor)
        data = {"text": "from the shell " + secrets.token_hex(4)}
        message_id = longpoll_send(project, env, session_key, data)
        cursor = woken_with(held, message_id, data)
    check_admin(send_through, session_key, data["text"])
    return Browsing(visitor, page, cursor)


# -- The three setups -----------------------------------------------------------------


def install_snippets() -> list[Snippet]:
    return snippets_from(INSTALL_PAGE, INSTALL_SNIPPETS)


def static_snippets() -> list[Snippet]:
    return snippets_from(DEPLOYMENT_PAGE, STATIC_SNIPPETS)


def test_install_page_under_runserver(tmp_path: Path) -> None:
    """docs/install.md alone, first run as it says: runserver, which serves longpoll.js."""
    project = new_project(tmp_path, install_snippets())
    env = project_env()
    prepare(project, env, collectstatic=False)
    server = project_server("runserver", project, env).start(tmp_path)
    try:
        check_end_to_end(project, env, server, server)
    finally:
        stop_and_check(server)


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
def test_deployment_static_files_under(tmp_path: Path, kind: str) -> None:
    """With the deployment page's static files (collectstatic, WhiteNoise) and DEBUG
    off, daphne and uvicorn serve longpoll.js, and everything else works as before."""
    project = new_project(tmp_path, install_snippets() + static_snippets())
    env = project_env()
    prepare(project, env, collectstatic=True)
    server = project_server(kind, project, env).start(tmp_path)
    try:
        check_end_to_end(project, env, server, server)
    finally:
        stop_and_check(server)


@pytest.fixture(scope="module")
def scaling_services() -> Iterator[dict[str, str]]:
    """The environment that points the scaling block at a Redis db and a database of our own."""
    if not redis_available():
        pytest.skip(f"Redis is not reachable at {REDIS_URL}; .ci/run starts it")
    if not postgres_available():
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}; .ci/run starts it")
    redis_url = REDIS_URL.rsplit("/", 1)[0] + f"/{SCALING_REDIS_DB}"
    database = f"longpoll_install_docs_{os.getpid()}"
    postgres = urllib.parse.urlsplit(fresh_postgres_database(database))
    flush_redis_db(redis_url)
    try:
        yield {
            "REDIS_URL": redis_url,
            "PGDATABASE": database,
            "PGUSER": postgres.username or "",
            "PGPASSWORD": postgres.password or "",
            "PGHOST": postgres.hostname or "",
            "PGPORT": str(postgres.port or 5432),
        }
    finally:
        flush_redis_db(redis_url)
        drop_postgres_database(database)


@dataclass
class Scaled:
    project: Path
    env: dict[str, str]
    daphne: Server
    uvicorn: Server
    logs: Path


@pytest.fixture(scope="module")
def scaled(
    tmp_path_factory: pytest.TempPathFactory, scaling_services: dict[str, str]
) -> Iterator[Scaled]:
    """The project with the scaling block, served by a daphne and a uvicorn process."""
    tmp = tmp_path_factory.mktemp("scaled")
    scaling = snippets_from(DEPLOYMENT_PAGE, SCALING_SNIPPETS)
    snippets = install_snippets() + static_snippets() + scaling
    project = new_project(tmp, snippets)
    env = project_env(**scaling_services)
    prepare(project, env, collectstatic=True)
    daphne = project_server("daphne", project, env).start(tmp)
    uvicorn = project_server("uvicorn", project, env).start(tmp)
    try:
        yield Scaled(project, env, daphne, uvicorn, tmp)
    finally:
        stop_and_check(daphne, uvicorn)
    for server in (daphne, uvicorn):
        # Wake-ups came through Redis all along, not from re-reading the store.
        assert "channel layer unreachable" not in server.log(), server.log()


@pytest.mark.parametrize("direction", ["daphne->uvicorn", "uvicorn->daphne"])
def test_scaling_block_wakes_a_poll_held_by_the_other_process(
    scaled: Scaled, direction: str
) -> None:
    """The deployment page's Redis + PostgreSQL block: a poll held by one server
    process is woken by the view through the other, and by a management command,
    with no sticky sessions."""
    poll_on, send_through = scaled.uvicorn, scaled.daphne
    if direction == "uvicorn->daphne":
        poll_on, send_through = send_through, poll_on
    check_end_to_end(scaled.project, scaled.env, poll_on, send_through)


# -- nginx in front, as the deployment page configures it -----------------------------


def test_nginx_block_in_front_of_both_processes(scaled: Scaled) -> None:
    """The page's nginx block, with the two processes as its upstreams: the page, its
    static files (from STATIC_ROOT), a poll woken at once and one held for the whole
    hold, all through the proxy."""
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    (block,) = snippets_from(DEPLOYMENT_PAGE, ["nginx"])
    work = scaled.logs / "nginx"
    work.mkdir()
    nginx = Nginx(work)
    upstreams = [scaled.daphne.port, scaled.uvicorn.port]
    nginx.start(nginx.configure(block.code, upstreams, scaled.project / "staticfiles"))
    try:
        browsing = check_end_to_end(scaled.project, scaled.env, nginx, nginx)
        started = time.monotonic()
        reply = browsing.visitor.poll(nginx, browsing.page, browsing.cursor)
        held_for = time.monotonic() - started
        assert reply.status == 204, reply
        assert held_for >= HOLD - 1, f"the proxy answered after {held_for:.1f} s, not the hold"
    finally:
        nginx.stop()
    assert "[error]" not in nginx.log(), nginx.log()
