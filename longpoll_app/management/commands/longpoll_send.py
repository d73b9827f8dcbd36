"""``manage.py longpoll_send``: send a message to a session or a user from the shell."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from longpoll_app.api import send_to_session, send_to_user
from longpoll_app.models import session_fingerprint


class Command(BaseCommand):
    help = "Send a message to one session (by key) or to every live session of a user."

    def add_arguments(self, parser: CommandParser) -> None:
        # argparse cannot tell an optional leading SESSION_KEY from TYPE: parse by hand.
        parser.add_argument(
            "words", nargs="+", metavar="(SESSION_KEY | --user USERNAME) TYPE [JSON_DATA]"
        )
        parser.add_argument("--user", help="Send to every live session of this username.")

    def handle(self, *args: Any, **options: Any) -> None:
        words: list[str] = options["words"]
        username: str | None = options["user"]
        expected = (1, 2) if username is not None else (2, 3)
        if len(words) not in expected:
            raise CommandError(
                "Usage: longpoll_send (SESSION_KEY | --user USERNAME) TYPE [JSON_DATA]"
            )
        key = None if username is not None else words.pop(0)
        message_type, raw_data = words[0], (words[1] if len(words) > 1 else "null")
        try:
            data = json.loads(raw_data)
        except ValueError as exc:
            raise CommandError(f"JSON_DATA is not valid JSON ({exc}): {raw_data!r}") from None
        try:
            if key is None:
                assert username is not None
                self._send_to_user(username, message_type, data)
            else:
                message_id = send_to_session(key, message_type, data)
                self.stdout.write(
                    f"Sent message {message_id} to session {session_fingerprint(key)}."
                )
        except (LookupError, ValueError, TypeError) as exc:
            raise CommandError(str(exc)) from None

    def _send_to_user(self, username: str, message_type: str, data: Any) -> None:
        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(username)
        except user_model.DoesNotExist:
            raise CommandError(f"No user has the username {username!r}.") from None
        count = send_to_user(user, message_type, data)
        self.stdout.write(f"Sent to {count} live session(s) of {username}.")
