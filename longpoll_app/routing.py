"""Routing the two endpoints to their consumers, beside Django's own handler."""

from __future__ import annotations

from typing import Any

from django.urls import NoReverseMatch, reverse

from .consumers import LongpollConsumer, PollConsumer, SendConsumer

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
        if scope["type"] == "http":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            consumer = self.routes().get(path)
            if consumer is not None:
                return await consumer()(scope, receive, send)
        return await self.app(scope, receive, send)


def longpoll_router(app: ASGIApp) -> LongpollRouter:
    """Wrap the project's ASGI app so the long-poll endpoints reach their consumers."""
    return LongpollRouter(app)
