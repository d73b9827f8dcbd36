"""The two HTTP endpoints, as Channels consumers.

``AsyncHttpConsumer`` cannot hold a poll: its ``http_request`` ends the
consumer as soon as ``handle()`` returns, and its dispatch loop runs one
handler at a time, so a ``handle()`` that waits would also keep
``http.disconnect`` from being seen. ``LongpollConsumer`` therefore reads the
body, answers in a task of its own, and leaves the dispatch loop free: an
``http.disconnect`` while a poll is held cancels that task at once, and the
task's ``finally`` blocks give back everything it held.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from channels.consumer import AsyncConsumer
from django.contrib.auth import get_user
from django.core.handlers.asgi import ASGIRequest
from django.db import InterfaceError, OperationalError, transaction

from . import handlers, process, queue, sessions
from .conf import conf
from .hold import Ended, hold
from .limits import TokenBuckets
from .protocol import (
    JSON_HEADERS,
    Answer,
    ProtocolError,
    dumps,
    parse_client_message,
    parse_cursor,
    parse_object,
    too_many,
)
from .runtime import current_hub
from .security import (
    build_request,
    check_csrf,
    check_host,
    csrf_needs_session,
    forget_vetted,
    remember_vetted,
    request_digest,
    session_cookie,
    vetted_session,
)
from .threads import like_a_request_start

log = logging.getLogger("longpoll_app")

UNAVAILABLE_RETRY = 5  # seconds a client waits before retrying after a 503
BUSY_RETRY = 1  # seconds a client waits before polling again after a 429
NO_BODY_STATUSES = (204, 304)  # RFC 9110: no Content-Length on a 204; a 304's would describe a 200


class LongpollConsumer(AsyncConsumer, abc.ABC):  # type: ignore[misc]  # channels is untyped
    """Reads a POST body, checks host, CSRF and session, and answers with JSON.

    Subclasses implement ``answer(session_key, body)``. It runs in a task of its
    own while this consumer waits for ``http.disconnect``, so it may wait as
    long as it likes and is cancelled the moment the client leaves; whatever it
    raises becomes a JSON error.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Unlike AsyncConsumer.__call__, ask the channel layer for no channel (one
        # per request is the churn that made idle polls expensive; the hub gets
        # wake-ups for the whole process), and dispatch without a task per message.
        self.scope = scope
        self.base_send = send
        body = await self._read_body(receive)
        if body is None:
            return
        answering = asyncio.get_running_loop().create_task(self._respond(body))
        try:
            # Both servers send http.disconnect once the answer is complete, too.
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            if not answering.done():
                answering.cancel()  # the client left: give back what the poll holds
                await asyncio.gather(answering, return_exceptions=True)

    async def _read_body(self, receive: Any) -> bytes | None:
        """The whole body; None if the client left, or it was refused as too
        large or too slow (``LONGPOLL_BODY_TIMEOUT``: a client that trickles a
        body must not hold a connection and a task for ever)."""
        limit = conf.LONGPOLL_MAX_MESSAGE_BYTES
        if self._declared_length() > limit:
            await self._send_answer(_too_large(limit))
            return None
        body: bytes = b""
        try:
            async with asyncio.timeout(conf.LONGPOLL_BODY_TIMEOUT):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body += message.get("body", b"")
                    if len(body) > limit:
                        await self._send_answer(_too_large(limit))
                        return None
                    if not message.get("more_body", False):
                        return body
        except TimeoutError:
            await self._send_answer(_too_slow())
            return None

    def _declared_length(self) -> int:
        for name, value in self.scope.get("headers", ()):
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    return int(value)
        return 0

    async def _respond(self, body: bytes) -> None:
        # One coroutine for checks and answer, and a held poll's wait (``Later``)
        # awaited right here: a held poll keeps every frame of its chain, and
        # each one costs memory and collector time.
        try:
            if self.scope["method"] != "POST":
                raise ProtocolError(
                    405,
                    "method_not_allowed",
                    f"Use POST, not {self.scope['method']}.",
                    {"Allow": "POST"},
                )
            self.digest = request_digest(self.scope)
            session_key = vetted_session(self.digest)
            if session_key is None:
                session_key = await self._check_request(body)
            answer = await self.answer(session_key, body)
            if isinstance(answer, Later):
                try:
                    answer = answer.render(await answer.wait)
                except Ended:  # the session ended, or its key was rotated, while held
                    raise self.session_is_dead(session_key) from None
        except ProtocolError as error:
            answer = error.answer()
        except (OperationalError, InterfaceError) as exc:  # unreachable, not refused
            log.warning("longpoll: database unavailable: %s", exc)
            answer = (
                503,
                {"error": "unavailable", "detail": "The database is unavailable; retry shortly."},
                {"Retry-After": str(UNAVAILABLE_RETRY)},
            )
        except Exception:  # a bug: say so, rather than leave the browser waiting
            log.exception("longpoll: could not answer %s", self.scope["path"])
            answer = _INTERNAL
        await self._send_answer(answer)

    async def _check_request(self, body: bytes) -> str:
        """Django's host and CSRF checks; the session key the cookies carry.
        Raises ``ProtocolError``."""
        request = build_request(self.scope, body)
        check_host(request)
        session_key = session_cookie(request)
        if csrf_needs_session():
            await sync_to_async(_check_csrf_with_session)(request, session_key)
        else:
            check_csrf(request)  # cookie-based CSRF reads no database: no thread needed
        if session_key is None:
            raise no_session()
        return session_key

    def session_is_live(self, session_key: str) -> None:
        """The session was just found live: its request's verdict may be remembered."""
        remember_vetted(self.digest, session_key)

    def session_is_dead(self, session_key: str) -> ProtocolError:
        """The session is not live: forget it, and refuse the request."""
        forget_vetted(session_key)
        return no_session()

    @abc.abstractmethod
    async def answer(self, session_key: str, body: bytes) -> Answer | Later:
        """The endpoint's answer to a checked request from a live session, or
        what to wait for before rendering it."""

    async def _send_answer(self, answer: Answer) -> None:
        await send_answer(self.base_send, answer, self.scope["path"])


async def send_answer(send: Any, answer: Answer, path: str) -> None:
    """Send ``answer`` as the whole response (the endpoints' and the router's)."""
    status, payload, extra = answer
    try:
        body = b"" if payload is None else dumps(payload)
    except (TypeError, ValueError):  # a bug (every stored message encodes): still answer
        log.exception("longpoll: could not encode the answer to %s", path)
        status, payload, extra = _INTERNAL
        body = dumps(payload)
    headers = list(JSON_HEADERS) if payload is not None else JSON_HEADERS[1:]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    if process.draining() and "Connection" not in extra:
        # The server is stopping: the next request goes to another one.
        headers.append((b"connection", b"close"))
    if status not in NO_BODY_STATUSES:
        headers.append((b"content-length", str(len(body)).encode()))
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except Exception as exc:  # the client left while we answered; nothing to tell it
        log.debug("longpoll: could not send the answer: %s", exc)


@dataclass(frozen=True, slots=True)
class Later:
    """An answer that waits: ``_respond`` awaits ``wait`` itself and renders
    what it gives, so a held poll keeps no frame of ``answer`` (thousands are
    held at once, and every frame costs memory and collector time)."""

    wait: Coroutine[Any, Any, Any]
    render: Callable[[Any], Answer]


_INTERNAL: Answer = (500, {"error": "internal", "detail": "The server failed; see its log."}, {})
# An answer before the whole body arrived: the rest of it would be read as the
# next request, so the connection must close.
CLOSE = {"Connection": "close"}


def _too_large(limit: int) -> Answer:
    return ProtocolError(
        413,
        "body_too_large",
        f"The body is larger than LONGPOLL_MAX_MESSAGE_BYTES ({limit} bytes).",
        CLOSE,
    ).answer()


def _too_slow() -> Answer:
    return ProtocolError(
        408,
        "body_timeout",
        f"The body did not arrive within LONGPOLL_BODY_TIMEOUT "
        f"({conf.LONGPOLL_BODY_TIMEOUT:g} seconds).",
        CLOSE,
    ).answer()


def _check_csrf_with_session(request: ASGIRequest, session_key: str | None) -> None:
    like_a_request_start()  # see _accept
    request.session = sessions.session_store(session_key)
    check_csrf(request)


def no_session() -> ProtocolError:
    return ProtocolError(
        403,
        "no_session",
        "The request carries no live session; load a page that starts one (it sets the "
        "session cookie) and poll again.",
    )


class PollConsumer(LongpollConsumer):
    """``POST poll/``: answer at once with pending messages, else hold.

    Body ``{"cursor": <id of the last message received, or null>}``. The cursor
    also acknowledges everything up to it. Answers ``200`` with the messages, or
    ``LONGPOLL_EMPTY_STATUS`` after ``LONGPOLL_TIMEOUT`` seconds without any.
    """

    async def answer(self, session_key: str, body: bytes) -> Answer | Later:
        cursor = parse_cursor(parse_object(body))
        hub = current_hub()
        if not hub.is_ready():  # checked first: an await costs a coroutine per poll
            await hub.ready()
        # Every poll checks its session, as Django's SessionMiddleware would on
        # a view, before the process keeps or subscribes anything for it.
        checked_at = hub.loop.time()
        record = await hub.check_session(session_key, *_client_of(self.scope))
        if record is None:
            hub.forget(session_key)
            raise self.session_is_dead(session_key)
        self.session_is_live(session_key)
        follow = hub.follow(session_key)
        if follow.held >= conf.LONGPOLL_MAX_POLLS_PER_SESSION:
            raise too_many(
                "too_many_polls",
                f"This session already holds {follow.held} polls here "
                f"(LONGPOLL_MAX_POLLS_PER_SESSION); one poll per browser is enough.",
                BUSY_RETRY,
            )
        hub.attach(follow, record, checked_at)
        ids = (record.last_id, record.acked_id)
        return Later(hold(hub, follow, cursor, ids, conf.LONGPOLL_TIMEOUT), _render)


def _client_of(scope: dict[str, Any]) -> tuple[str | None, str]:
    """The client's address and user agent, as ``request.META`` would give them."""
    client = scope.get("client")
    agents = [v for k, v in scope["headers"] if k == b"user-agent"]
    return (client[0] if client else None), (agents[0].decode("latin-1") if agents else "")


def _render(batch: queue.Batch | None) -> Answer:
    if batch is None:
        return conf.LONGPOLL_EMPTY_STATUS, None, {}
    return 200, {"messages": batch.messages, "cursor": batch.cursor, "gap": batch.gap}, {}


# Taken only in Django's one shared thread (``_accept``), for live sessions only.
_send_buckets = TokenBuckets()


def _take_send_token(session_key: str) -> None:
    wait = _send_buckets.take(session_key, conf.LONGPOLL_SEND_RATE, conf.LONGPOLL_SEND_BURST)
    if wait:
        raise too_many(
            "rate_limited",
            f"This session sends more than {conf.LONGPOLL_SEND_RATE:g} messages per second "
            f"(LONGPOLL_SEND_RATE); retry after the Retry-After delay.",
            wait,
        )


class SendConsumer(LongpollConsumer):
    """``POST send/``: hand a message from the page to its registered handler.

    Body ``{"id": <client message id>, "type": <str>, "data": <any>}``. A
    retried ``id`` within ``LONGPOLL_DEDUP_WINDOW`` is handled only once.
    """

    async def answer(self, session_key: str, body: bytes) -> Answer:
        client_id, message_type, data = parse_client_message(parse_object(body))
        if not handlers.is_handled(message_type):
            raise ProtocolError(
                400, "unknown_type", f"No handler is registered for message type {message_type!r}."
            )
        request = build_request(self.scope, body)  # for get_user() in the handler's thread
        sync_handler = handlers.sync_handler(message_type)
        if sync_handler is None:
            return await self._handle_then_record(
                request, session_key, client_id, message_type, data
            )
        try:
            accepted = await sync_to_async(_accept)(
                request, session_key, client_id, sync_handler, data
            )
        except HandlerFailed:
            log.exception("longpoll: handler for %r failed", message_type)
            return _handler_failed(message_type)  # nothing was recorded: a retry runs it again
        _, user, first_time = self._of_live_session(accepted, session_key)
        if not first_time:
            return _DUPLICATE
        try:
            await handlers.dispatch(message_type, session_key, user, data, handled=True)
        except Exception:
            # Its handler's work is committed: a retry must not run it again, so
            # the id stays and the page is told the message was handled.
            log.exception("longpoll: a message_received receiver failed for %r", message_type)
        return _OK

    def _of_live_session(
        self, accepted: tuple[int, Any, bool] | None, session_key: str
    ) -> tuple[int, Any, bool]:
        """``_accept``'s answer; a refusal if it found no live session."""
        if accepted is None:
            raise self.session_is_dead(session_key)
        self.session_is_live(session_key)
        return accepted

    async def _handle_then_record(
        self, request: ASGIRequest, session_key: str, client_id: str, message_type: str, data: Any
    ) -> Answer:
        """Run an async handler (and the ``message_received`` receivers), then
        record the message id.

        No transaction can hold an async handler, so the id is recorded only once it
        has returned: if it fails, or the process or the database goes away before
        the record, the page's retry runs it again (at least once, never lost).
        """
        key = (session_key, client_id)
        while (running := _in_flight.get(key)) is not None:
            await asyncio.shield(running)  # then it is recorded (a duplicate), or it failed
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _in_flight[key] = done
        try:
            accepted = await sync_to_async(_accept)(request, session_key, client_id, None, data)
            session_pk, user, first_time = self._of_live_session(accepted, session_key)
            if not first_time:
                return _DUPLICATE
            try:
                await handlers.dispatch(message_type, session_key, user, data)
            except Exception:
                log.exception("longpoll: handler for %r failed", message_type)
                return _handler_failed(message_type)
            await sync_to_async(queue.record_client_message)(session_pk, client_id)
            return _OK
        finally:
            del _in_flight[key]
            done.set_result(None)


_OK: Answer = (200, {"ok": True}, {})
_DUPLICATE: Answer = (200, {"ok": True, "duplicate": True}, {})

# Messages for async handlers being handled in this process, by (session key,
# client id): a retry that arrives meanwhile waits for the first to finish.
_in_flight: dict[tuple[str, str], asyncio.Future[None]] = {}


class HandlerFailed(Exception):
    """A plain-function handler raised; its transaction was rolled back."""


def _handler_failed(message_type: str) -> Answer:
    detail = f"The handler for {message_type!r} failed."
    return 500, {"error": "handler_failed", "detail": detail}, {}


def _accept(
    request: ASGIRequest,
    session_key: str,
    client_id: str,
    sync_handler: handlers.Handler | None,
    data: Any,
) -> tuple[int, Any, bool] | None:
    """Check the session, load its user, and say whether the message id is new;
    for a plain-function handler, record the id and run the handler in one
    transaction."""
    # This runs in Django's shared thread, where no request_started signal
    # checks the connection: a connection the database dropped (a restart, a
    # network cut) would fail every send from now on, or outlive CONN_MAX_AGE.
    like_a_request_start()
    session = sessions.load_live_session(session_key)
    if session is None:
        return None
    _take_send_token(session_key)  # only now: a forged key must leave nothing behind
    request.session = session
    user = get_user(request)
    row = sessions.ensure_session_row(session_key)
    if sync_handler is None:  # an async handler: its id is recorded once it has run
        return row.pk, user, not queue.client_message_seen(row.pk, client_id)
    # One transaction for the id and the handler's work: if the handler fails, or
    # the database goes away before the commit, neither stays, and the page's
    # retry runs the handler again instead of being taken for a duplicate.
    with transaction.atomic():
        first_time = queue.record_client_message(row.pk, client_id)
        if first_time:
            try:
                sync_handler(session_key, user, data)
            except Exception as exc:
                raise HandlerFailed from exc
    return row.pk, user, first_time
