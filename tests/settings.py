"""Settings of the in-process test suite: a project with the app and little else.

The demo's settings (project/settings.py) stay what the demo and the server
processes the tests start run on (tests/servers.py, servers_security_settings.py,
browser/browser_settings.py); this module copies none of its switches
(WhiteNoise, daphne's runserver, its log handler), only what the tests need:

* the app with what it builds on (sessions, auth, contenttypes, channels), the
  admin (with messages), whose pages test_admin and test_admin_lookups drive, and
  staticfiles, which makes the script tag's URL;
* Django's middleware that the endpoints mirror (sessions, hosts, CSRF, auth);
* SQLite in a file with WAL, as the demo runs it, or ``DATABASE_URL`` (PostgreSQL),
  which test_postgres sets for its run of this suite;
* an in-process channel layer (conftest's ``layer`` fixture swaps in Redis);
* tests/urls.py: the app under ``/longpoll/`` and the admin under ``/admin/``.
  The demo's pages are not routed; the few tests of the demo get its
  URLconf and templates back from conftest's ``_demo_project`` fixture.
"""

from __future__ import annotations

import os
import tempfile

SECRET_KEY = "tests-only-insecure-key-0123456789abcdefghijklmnopqrstuvwxyz"
DEBUG = False
# The host of Django's test client and of conftest's ASGI scopes; tests that
# change it (or send another Host) expect the rest to be refused.
ALLOWED_HOSTS = ["testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # {% longpoll_script %}'s src comes from the static files storage, as in a
    # project (test_templatetags checks how it is escaped).
    "django.contrib.staticfiles",
    "channels",
    "longpoll_app",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"
# The ASGI application conftest's Browser drives. project/asgi.py is the two lines
# every project writes (longpoll_router(get_asgi_application())), not demo code.
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,  # the admin's templates, and the app's overrides of them
        "OPTIONS": {
            "context_processors": [
                # {% longpoll_script %} needs the request; the admin needs the other two.
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("DATABASE_URL"):
    import dj_database_url

    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
    # As the demo runs PostgreSQL: a pool, since each request's sync code runs in a
    # thread of its own, and an answer after 3 s when the pool has no connection.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": 20,
        "timeout": 3,
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # A file, not the in-memory default: the tests run handlers and sessions
            # checks in worker threads, each with a connection of its own, as a
            # server does. WAL lets them read while one writes; IMMEDIATE queues
            # writers instead of failing with "database is locked".
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            "CONN_MAX_AGE": 600,  # as the demo: each thread keeps its connection
            # One file per test process, so that runs side by side do not share it.
            "TEST": {
                "NAME": os.path.join(tempfile.gettempdir(), f"longpoll-test-{os.getpid()}.sqlite3")
            },
        }
    }

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Tests log users in by the dozen: a fast hash, which only tests may use.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"  # {% longpoll_script %}'s src, and the admin's pages
