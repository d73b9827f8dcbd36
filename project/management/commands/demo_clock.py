"""``manage.py demo_clock``: push the server's clock to the demo page once a second.

It runs in its own process, apart from the server: the messages go through the
app's store (and Redis, when REDIS_URL is set) like any other send.
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from longpoll_app.api import send_to_user
from project.demo import push_to_sessions, recent_session_keys


class Command(BaseCommand):
    help = (
        "Push the server's time as a 'demo.clock' message, every --interval seconds, to "
        "the given sessions or users, or else to the recently active sessions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--session", action="append", default=[], help="a session key (repeatable)"
        )
        parser.add_argument("--user", action="append", default=[], help="a username (repeatable)")
        parser.add_argument(
            "--interval", type=float, default=1.0, help="seconds between ticks (default 1)"
        )
        parser.add_argument(
            "--count", type=int, default=0, help="ticks to send, then stop (default: forever)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        interval: float = options["interval"]
        if interval <= 0:
            raise CommandError("--interval must be above 0 seconds.")
        users = [self._user(name) for name in options["user"]]
        sessions: list[str] = options["session"]
        ticks = 0
        try:
            while not options["count"] or ticks < options["count"]:
                started = time.monotonic()
                now = timezone.now()
                data = {"time": now.isoformat(timespec="seconds"), "tick": ticks}
                reached = 0
                if sessions or users:
                    reached += push_to_sessions(sessions, "demo.clock", data)
                    for user in users:
                        send_to_user(user, "demo.clock", data)
                        reached += 1
                else:
                    # Listed again at each tick, so a page opened meanwhile gets the clock.
                    reached = push_to_sessions(recent_session_keys(), "demo.clock", data)
                ticks += 1
                self.stdout.write(f"{data['time']}: sent to {reached} session(s) or user(s)")
                # Sleep to the next tick, not a full interval after sending.
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
        except KeyboardInterrupt:
            pass

    def _user(self, username: str) -> Any:
        model = get_user_model()
        try:
            return model._default_manager.get_by_natural_key(username)
        except model.DoesNotExist as exc:
            raise CommandError(f"No user named {username!r}.") from exc
