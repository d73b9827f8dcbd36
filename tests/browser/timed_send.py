"""Runs ``manage.py longpoll_send`` from Python and prints when each send started.

``python timed_send.py SESSION_KEY TYPE JSON [JSON ...]`` sends one message per JSON
argument, in order, and prints one line of JSON: the wall-clock times (seconds since
the epoch) at which each ``call_command`` began. Django is set up before the first
one, so what is timed is the send, not the interpreter's start.
"""

from __future__ import annotations

import json
import sys
import time

import django
from django.core.management import call_command, get_commands, load_command_class

PAUSE = 0.3  # seconds between two sends, so that each finds a poll already held


def main(argv: list[str]) -> None:
    session_key, type_, *payloads = argv
    django.setup()
    # Loaded before timing, as it is before a command-line send reaches the send itself.
    command = load_command_class(get_commands()["longpoll_send"], "longpoll_send")
    started: list[float] = []
    for payload in payloads:
        time.sleep(PAUSE)
        started.append(time.time())
        call_command(command, session_key, type_, payload)
    print(json.dumps(started))


if __name__ == "__main__":
    main(sys.argv[1:])
