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
from typing import Any

from asgiref.sync import sync_to_async
from channels.consumer import AsyncConsumer
from django.contrib.auth import get_user
from django.core.handlers.asgi import ASGIRequest
from django.db import DatabaseError, close_old_connections, transaction

from . import handlers, store
from .conf import conf
from .hub import Follow, Hub, run_in_thread
from .limits import TokenBuckets
from .protocol import (
    JSON_HEADERS,
    ProtocolError,
    dumps,
    parse_client_message,
    parse_cursor,
    parse_object,
    too_many,
)
from .security import (
    build_request,
    check_csrf,
    check_host,
    csrf_needs_session,
    remember_vetted,
    request_digest,
    session_cookie,
    vetted_session,
)

log = logging.getLogger("longpoll_app")

UNAVAILABLE_RETRY = 5  # seconds a client waits before retrying after a 503
BUSY_RETRY = 1  # seconds a client waits before polling again after a 429
NO_BODY_STATUSES = (204, 304)  # RFC 9110: no Content-Length on a 204; a 304's would describe a 200

Answer = tuple[int, Any, dict[str, str]]  # status, JSON body (None: no body), headers


class LongpollConsumer(AsyncConsumer, abc.ABC):
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
        """The whole body; None if the client left or it was refused as too large."""
        limit = conf.LONGPOLL_MAX_MESSAGE_BYTES
        if self._declared_length() > limit:
            await self._send_answer(_too_large(limit))
            return None
        body = b""
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

    def _declared_length(self) -> int:
        for name, value in self.scope.get("headers", ()):
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    return int(value)
        return 0

    async def _respond(self, body: bytes) -> None:
        # One coroutine for checks and answer: a held poll keeps every frame of
        # its chain, and each one costs memory and collector time.
        try:
            if self.scope["method"] != "POST":
                raise ProtocolError(
                    405,
                    "method_not_allowed",
                    f"Use POST, not {self.scope['method']}.",
                    {"Allow": "POST"},
                )
            digest = request_digest(self.scope)
            session_key = vetted_session(digest)
            if session_key is None:
                session_key = session_cookie(self.scope)
                await self._check_request(body, session_key)
                if session_key is None:
                    raise no_session()
                remember_vetted(digest, session_key)
            answer = await self.answer(session_key, body)
        except ProtocolError as error:
            answer = (error.status, error.body(), error.headers)
        except DatabaseError as exc:
            log.warning("longpoll: database unavailable: %s", exc)
            answer = (
                503,
                {"error": "unavailable", "detail": "The database is unavailable; retry shortly."},
                {"Retry-After": str(UNAVAILABLE_RETRY)},
            )
        except Exception:  # a bug: say so, rather than leave the browser waiting
            log.exception("longpoll: could not answer %s", self.scope["path"])
            answer = (500, {"error": "internal", "detail": "The server failed; see its log."}, {})
        await self._send_answer(answer)

    async def _check_request(self, body: bytes, session_key: str | None) -> None:
        """Django's host and CSRF checks; raises ``ProtocolError``."""
        request = build_request(self.scope, body)
        check_host(request)
        if csrf_needs_session():
            await sync_to_async(_check_csrf_with_session)(request, session_key)
        else:
            check_csrf(request)  # cookie-based CSRF reads no database: no thread needed

    @abc.abstractmethod
    async def answer(self, session_key: str, body: bytes) -> Answer:
        """The endpoint's answer to a checked request from a live session."""

    async def _send_answer(self, answer: Answer) -> None:
        status, payload, extra = answer
        body = b"" if payload is None else dumps(payload)
        headers = list(JSON_HEADERS) if payload is not None else [JSON_HEADERS[1]]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        if status not in NO_BODY_STATUSES:
            headers.append((b"content-length", str(len(body)).encode()))
        try:
            await self.base_send(
                {"type": "http.response.start", "status": status, "headers": headers}
            )
            await self.base_send({"type": "http.response.body", "body": body})
        except Exception as exc:  # the client left while we answered; nothing to tell it
            log.debug("longpoll: could not send the answer: %s", exc)


def _too_large(limit: int) -> Answer:
    error = ProtocolError(
        413,
        "body_too_large",
        f"The body is larger than LONGPOLL_MAX_MESSAGE_BYTES ({limit} bytes).",
    )
    return error.status, error.body(), error.headers


def _check_csrf_with_session(request: ASGIRequest, session_key: str | None) -> None:
    close_old_connections()  # see _accept
    request.session = store.session_store(session_key)
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

    async def answer(self, session_key: str, body: bytes) -> Answer:
        cursor = parse_cursor(parse_object(body))
        hub = Hub.current()
        if not hub.is_ready():  # checked first: an await costs a coroutine per poll
            await hub.ready()
        follow = hub.follow(session_key)
        if follow.held >= conf.LONGPOLL_MAX_POLLS_PER_SESSION:
            raise too_many(
                "too_many_polls",
                f"This session already holds {follow.held} polls here "
                f"(LONGPOLL_MAX_POLLS_PER_SESSION); one poll per browser is enough.",
                BUSY_RETRY,
            )
        follow.held += 1
        try:
            loop = hub.loop
            deadline = loop.time() + conf.LONGPOLL_TIMEOUT
            acknowledged = cursor  # what the page says it received
            while True:
                # Before reading the store, so that no wake-up falls in between; again
                # after an outage, when the layer forgot the groups.
                if hub.must_subscribe(follow):
                    await hub.subscribe(follow)
                trusted = hub.is_trusted(follow)
                if cursor is None and trusted and follow.last_id <= follow.drained:
                    # A fresh page, and the process knows nothing is pending: wait as
                    # a page with the newest id would. A browser that has never had a
                    # message re-polls like this every hold: this keeps it off the store.
                    cursor = follow.last_id
                batch = None
                if cursor is None or not trusted or cursor != follow.last_id:
                    batch = await self._read(hub, follow, cursor)
                if acknowledged is not None:
                    # Also on the trusted path: the usual re-poll after a batch reads
                    # nothing, yet it is what acknowledges that batch (deleted later,
                    # in bulk; the hub ignores cursors beyond the newest id).
                    hub.ack(follow, acknowledged)
                if batch is not None:
                    if batch.messages or batch.gap:
                        return 200, _batch_body(batch), {}
                    if cursor is None:
                        follow.drained = max(follow.drained, batch.last_id)
                    cursor = batch.cursor
                remaining = deadline - loop.time()
                if remaining <= 0 or not await hub.wait(follow, remaining):
                    return conf.LONGPOLL_EMPTY_STATUS, None, {}
                if follow.ended:
                    raise no_session()
        finally:
            follow.held -= 1
            follow.used_at = hub.loop.time()

    async def _read(self, hub: Hub, follow: Follow, cursor: int | None) -> store.Batch:
        """Read the store (checking the session too, when that is due)."""
        started = hub.loop.time()
        record: store.SessionRecord | None
        if follow.pk is None or started - follow.checked_at >= conf.LONGPOLL_SESSION_RECHECK:
            record = await hub.check_session(follow.session_key, *_client_of(self.scope))
            batch = None if record is None else await _read_after_check(record, cursor)
        else:
            record, batch = await run_in_thread(_read_known)(follow.pk, cursor)
        if record is None or batch is None:
            if follow.pk is not None:
                hub.end(follow.pk)
            hub.follows.pop(follow.session_key, None)
            raise no_session()
        hub.attach(follow, record, started)
        return batch


async def _read_after_check(record: store.SessionRecord, cursor: int | None) -> store.Batch | None:
    ids = (record.last_id, record.acked_id)
    if store.nothing_after(cursor, ids):  # the check said it all: no trip for messages
        return store.read(record.pk, cursor, conf.LONGPOLL_BATCH_SIZE, ids)
    batch: store.Batch | None = await run_in_thread(store.read)(
        record.pk, cursor, conf.LONGPOLL_BATCH_SIZE, ids
    )
    return batch


def _read_known(
    session_pk: int, cursor: int | None
) -> tuple[store.SessionRecord | None, store.Batch | None]:
    batch = store.read(session_pk, cursor, conf.LONGPOLL_BATCH_SIZE)
    if batch is None:
        return None, None
    return store.SessionRecord(pk=session_pk, last_id=batch.last_id, acked_id=0), batch


def _client_of(scope: dict[str, Any]) -> tuple[str | None, str]:
    """The client's address and user agent, as ``request.META`` would give them."""
    client = scope.get("client")
    agents = [v for k, v in scope["headers"] if k == b"user-agent"]
    return (client[0] if client else None), (agents[0].decode("latin-1") if agents else "")


def _batch_body(batch: store.Batch) -> dict[str, Any]:
    return {"messages": batch.messages, "cursor": batch.cursor, "gap": batch.gap}


_send_buckets = TokenBuckets()


class SendConsumer(LongpollConsumer):
    """``POST send/``: hand a message from the page to its registered handler.

    Body ``{"id": <client message id>, "type": <str>, "data": <any>}``. A
    retried ``id`` within ``LONGPOLL_DEDUP_WINDOW`` is handled only once.
    """

    async def answer(self, session_key: str, body: bytes) -> Answer:
        client_id, message_type, data = parse_client_message(parse_object(body))
        wait = _send_buckets.take(session_key, conf.LONGPOLL_SEND_RATE, conf.LONGPOLL_SEND_BURST)
        if wait:
            raise too_many(
                "rate_limited",
                f"This session sends more than {conf.LONGPOLL_SEND_RATE:g} messages per second "
                f"(LONGPOLL_SEND_RATE); retry after the Retry-After delay.",
                wait,
            )
        if not handlers.is_handled(message_type):
            raise ProtocolError(
                400, "unknown_type", f"No handler is registered for message type {message_type!r}."
            )
        request = build_request(self.scope, body)  # for get_user() in the handler's thread
        sync_handler = handlers.sync_handler(message_type)
        if sync_handler is None:
            return await _handle_then_record(request, session_key, client_id, message_type, data)
        try:
            accepted = await sync_to_async(_accept)(
                request, session_key, client_id, sync_handler, data
            )
        except HandlerFailed:
            log.exception("longpoll: handler for %r failed", message_type)
            return _handler_failed(message_type)  # nothing was recorded: a retry runs it again
        if accepted is None:
            raise no_session()
        _, user, first_time = accepted
        if not first_time:
            return _DUPLICATE
        try:
            await handlers.dispatch(message_type, session_key, user, data, handled=True)
        except Exception:
            # Its handler's work is committed: a retry must not run it again, so
            # the id stays and the page is told the message was handled.
            log.exception("longpoll: a message_received receiver failed for %r", message_type)
        return _OK


_OK: Answer = (200, {"ok": True}, {})
_DUPLICATE: Answer = (200, {"ok": True, "duplicate": True}, {})

# Messages for async handlers being handled in this process, by (session key,
# client id): a retry that arrives meanwhile waits for the first to finish.
_in_flight: dict[tuple[str, str], asyncio.Future[None]] = {}


async def _handle_then_record(
    request: ASGIRequest, session_key: str, client_id: str, message_type: str, data: Any
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
        if accepted is None:
            raise no_session()
        session_pk, user, first_time = accepted
        if not first_time:
            return _DUPLICATE
        try:
            await handlers.dispatch(message_type, session_key, user, data)
        except Exception:
            log.exception("longpoll: handler for %r failed", message_type)
            return _handler_failed(message_type)
        await sync_to_async(store.record_client_message)(session_pk, client_id)
        return _OK
    finally:
        del _in_flight[key]
        done.set_result(None)


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
    close_old_connections()
    session = store.load_live_session(session_key)
    if session is None:
        return None
    request.session = session
    user = get_user(request)
    row = store.ensure_session_row(session_key)
    if sync_handler is None:  # an async handler: its id is recorded once it has run
        return row.pk, user, not store.client_message_seen(row.pk, client_id)
    # One transaction for the id and the handler's work: if the handler fails, or
    # the database goes away before the commit, neither stays, and the page's
    # retry runs the handler again instead of being taken for a duplicate.
    with transaction.atomic():
        first_time = store.record_client_message(row.pk, client_id)
        if first_time:
            try:
                sync_handler(session_key, user, data)
            except Exception as exc:
                raise HandlerFailed from exc
    return row.pk, user, first_time
