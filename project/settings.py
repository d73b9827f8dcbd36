"""Settings for the demo project.

Embedded default: SQLite and an in-process channel layer, served by
``manage.py runserver`` (daphne). Set ``DATABASE_URL`` for PostgreSQL and
``REDIS_URL`` for channels-redis; then any number of server processes can share
the sessions, with no sticky sessions.

For a Redis watched by Sentinel, set ``REDIS_SENTINELS`` to the sentinels'
addresses, comma-separated (``127.0.0.1:26379,127.0.0.1:26380,[::1]:26381``), and
``REDIS_SENTINEL_MASTER`` to the name they monitor it by (default ``mymaster``).
channels-redis then asks the sentinels for the master, and again after a
failover. ``REDIS_SENTINELS`` wins over ``REDIS_URL`` when both are set.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

# The demo's key is only for local use: set DJANGO_SECRET_KEY anywhere else.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-insecure-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get(
    "DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver"
).split(",")
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "longpoll_app",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files under every server (daphne and uvicorn serve none; only
    # runserver does, under DEBUG): the page's longpoll.js must load everywhere.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
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
    # A pool, not CONN_MAX_AGE: under ASGI each request's sync code runs in a
    # thread of its own, and persistent per-thread connections pile up until
    # PostgreSQL refuses more ("too many clients").
    # "timeout": while PostgreSQL is down the pool has no connection to give, and
    # psycopg would hold each request 30 s for one; after 3 s it answers 503.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": 20,
        "timeout": 3,
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            "OPTIONS": {
                # WAL lets the server read while another process (a management
                # command) writes; IMMEDIATE takes the write lock up front so
                # two writers queue instead of failing with "database is locked".
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            # Keep each worker thread's connection: opening SQLite on every trip
            # to a thread was a fifth of the embedded server's idle CPU.
            "CONN_MAX_AGE": 600,
            # A file, not the in-memory default, so that tests see what the
            # server sees: WAL, and a connection per thread.
            # One per test process, so that runs side by side do not share it.
            "TEST": {
                "NAME": os.environ.get(
                    "SQLITE_TEST_PATH",
                    os.path.join(tempfile.gettempdir(), f"longpoll-test-{os.getpid()}.sqlite3"),
                )
            },
        }
    }


def _address(entry: str) -> tuple[str, int]:
    host, _, port = entry.strip().rpartition(":")
    return host.strip("[]"), int(port)  # "[::1]:26379" as well as "127.0.0.1:26379"


_redis_hosts: list[Any] = []
if os.environ.get("REDIS_SENTINELS"):
    # channels-redis's Sentinel form of a host: the master's connections are
    # made to whatever address the sentinels give for master_name.
    _redis_hosts = [
        {
            "sentinels": [
                _address(e) for e in os.environ["REDIS_SENTINELS"].split(",") if e.strip()
            ],
            "master_name": os.environ.get("REDIS_SENTINEL_MASTER", "mymaster"),
        }
    ]
elif os.environ.get("REDIS_URL"):
    _redis_hosts = [os.environ["REDIS_URL"]]

if _redis_hosts:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": _redis_hosts,
                # One hub channel per process receives every wake-up for the
                # sessions it holds polls for: give it room for bursts.
                "capacity": 10_000,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# The demo serves straight from the apps' and STATICFILES_DIRS' files, so it
# needs no collectstatic; a deployment runs collectstatic and turns this off.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "longpoll_app": {
            "handlers": ["console"],
            "level": os.environ.get("LONGPOLL_LOG_LEVEL", "INFO"),
            # daphne gives the root logger a handler of its own: one line, not two.
            "propagate": False,
        },
    },
}
