"""The demo's settings for tests/test_servers_security.py: the oracle view's
URLconf (``tests.oracle``), a short body deadline and a short hold, which no
environment variable of ``project.settings`` sets."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.oracle"
LONGPOLL_BODY_TIMEOUT = 1.0  # seconds a request body may take to arrive (408 after)
LONGPOLL_TIMEOUT = 2.0  # seconds a poll is held before it answers empty
