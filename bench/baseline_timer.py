"""The design being replaced: a Tornado long-poll server driven by timers.

Each held poll re-checks an in-memory per-session queue every 10 ms for the
first 100 ms, then every 100 ms, until a message is there (200, one message per
response) or the hold runs out (304). A sender appends to the queue with
``POST /send?s=<session>``. It is written only to be measured beside the
project, in the same run, on the same machine.

    python bench/baseline_timer.py --port 8101 [--hold 10]

Endpoints:
    GET  /poll?s=<session>   held poll: 200 + one message body, or 304 after the hold
    POST /send?s=<session>   body = the message (bytes, kept as they are); answers 204
    GET  /health             200 "ok"
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging

import tornado.httpserver
import tornado.netutil
import tornado.web

QUEUES: collections.defaultdict[str, collections.deque[bytes]] = collections.defaultdict(
    collections.deque
)
FAST_STEP = 0.010  # seconds between checks during the first FAST_PERIOD
FAST_PERIOD = 0.100
SLOW_STEP = 0.100  # seconds between checks afterwards


class PollHandler(tornado.web.RequestHandler):
    hold: float = 10.0

    def initialize(self, hold: float) -> None:
        self.hold = hold
        self.closed = False

    def on_connection_close(self) -> None:
        self.closed = True

    async def get(self) -> None:
        session = self.get_argument("s")
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.hold
        while not self.closed:
            queue = QUEUES.get(session)
            if queue:
                self.set_header("Content-Type", "application/json")
                self.finish(queue.popleft())
                return
            now = loop.time()
            if now >= deadline:
                self.set_status(304)
                self.finish()
                return
            await asyncio.sleep(FAST_STEP if now - start < FAST_PERIOD else SLOW_STEP)


class SendHandler(tornado.web.RequestHandler):
    async def post(self) -> None:
        QUEUES[self.get_argument("s")].append(self.request.body)
        self.set_status(204)
        self.finish()


class HealthHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.finish("ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args()
    logging.getLogger("tornado.access").setLevel(logging.WARNING)

    async def serve() -> None:
        app = tornado.web.Application(
            [
                (r"/poll", PollHandler, {"hold": args.hold}),
                (r"/send", SendHandler),
                (r"/health", HealthHandler),
            ]
        )
        server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=3600)
        server.add_sockets(tornado.netutil.bind_sockets(args.port, args.host, backlog=4096))
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
