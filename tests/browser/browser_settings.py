"""Settings of the servers the browser tests start: the demo's, plus a few switches.

DEBUG is the demo's: ``DJANGO_DEBUG`` (on unless ``0``), which browser_helpers.Server
sets per kind of server: on for runserver, off for daphne and uvicorn, as in
production, so that their static files come from WhiteNoise (with
``WHITENOISE_AUTOREFRESH`` off, which project/settings.py derives from it), not from
runserver's DEBUG-only static view. It is not set here, after the import: that derived
setting would not follow.

Switches (environment variables, all optional):
- ``TEST_CSRF_COOKIE_HTTPONLY=1``: the CSRF cookie is HttpOnly, so no script can read it.
- ``TEST_LONGPOLL_TIMEOUT``: seconds a poll is held before it answers empty.
"""

import os

from project.settings import *  # noqa: F403

CSRF_COOKIE_HTTPONLY = os.environ.get("TEST_CSRF_COOKIE_HTTPONLY") == "1"

if os.environ.get("TEST_LONGPOLL_TIMEOUT"):
    LONGPOLL_TIMEOUT = float(os.environ["TEST_LONGPOLL_TIMEOUT"])
