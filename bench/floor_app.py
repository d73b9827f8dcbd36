"""The floor: a bare ASGI app that only holds each poll and answers it empty.

No long-poll app can be cheaper than this under the same server, so the
difference between it and the project is what the project itself costs.

    daphne -b 127.0.0.1 -p 8102 -v 0 bench.floor_app:app
    uvicorn --loop uvloop --http httptools --no-access-log bench.floor_app:app

``POST /longpoll/poll/`` is held for FLOOR_HOLD seconds (default 10) and
answered 204; any other path is answered 200 at once (the load generator's
health check).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

HOLD = float(os.environ.get("FLOOR_HOLD", "10"))
POLL_PATH = "/longpoll/poll/"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more_body = message.get("more_body", False)
    if scope["path"] == POLL_PATH:
        await asyncio.sleep(HOLD)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})
