"""Routing the two endpoints to their consumers, beside Django's own handler."""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.urls import NoReverseMatch, reverse

from .consumers import CLOSE, LongpollConsumer, PollConsumer, SendConsumer, send_answer
from .protocol import ProtocolError

ASGIApp = Any


class LongpollRouter:
    """An ASGI app that sends the app's endpoints to its consumers and every
    other request to ``app`` (usually ``get_asgi_application()``).

    The endpoints' paths come from the URLconf (``include("longpoll_app.urls")``),
    so they are configured in one place, like every other URL of the project.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The classes, not their as_asgi() wrappers: a held poll would keep the
        # wrapper's coroutine too, one more object for every young collection.
        self._consumers = {"poll": PollConsumer, "send": SendConsumer}
        self._routes: dict[str, type[LongpollConsumer]] | None = None

    def routes(self) -> dict[str, type[LongpollConsumer]]:
        if self._routes is None:
            routes = {}
            for name, consumer in self._consumers.items():
                try:
                    routes[reverse(f"longpoll:{name}")] = consumer
                except NoReverseMatch:
                    raise LookupError(
                        "longpoll_app's URLs are not in the URLconf: add "
                        'path("longpoll/", include("longpoll_app.urls")) to urls.py.'
                    ) from None
            self._routes = routes
        return self._routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" and isinstance(self.app, ASGIHandler):
            # Django's handler raises on it, and uvicorn then logs "ASGI
            # 'lifespan' protocol appears unsupported": say there is nothing to do.
            return await _nothing_to_start_or_stop(receive, send)
        if scope["type"] == "http":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            routes = self.routes()
            consumer = routes.get(path)
            if consumer is not None:
                return await consumer()(scope, receive, send)
            if path + "/" in routes:
                # Django's APPEND_SLASH cannot redirect a POST (under DEBUG it
                # raises): say where the endpoint is, in the app's own words.
                await send_answer(send, _missing_slash(path).answer(), path)
                return
        await self.app(scope, receive, send)


async def _nothing_to_start_or_stop(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _missing_slash(path: str) -> ProtocolError:
    return ProtocolError(
        404,
        "not_found",
        f"No endpoint at {path}; did you mean {path}/ (with the slash)?",
        CLOSE,  # the request's body is never read
    )


def longpoll_router(app: ASGIApp) -> LongpollRouter:
    """Wrap the project's ASGI app so the long-poll endpoints reach their consumers."""
    return LongpollRouter(app)
