"""Create browser sessions for the load generators, straight in the database.

What ``GET /`` of the demo page does for a browser (``request.session.save()``
and a CSRF cookie), done in bulk: one row in ``django_session`` per browser,
and a CSRF secret of the kind Django puts in the ``csrftoken`` cookie. Run with
the server's environment (DJANGO_SETTINGS_MODULE, SQLITE_PATH or DATABASE_URL).

    python bench/make_sessions.py --count 10000 --out sessions.txt

Writes (appends) ``index sessionid csrftoken`` lines for indices from the
number of lines already in --out up to --count. The project is imported from
the tree named by BENCH_APP_ROOT (default: this file's repository).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(
    0,
    os.environ.get("BENCH_APP_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import django

    django.setup()
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.middleware.csrf import (
        _get_new_csrf_string,
    )  # the cookie's secret, as Django makes it
    from django.utils import timezone

    have = 0
    if os.path.exists(args.out):
        with open(args.out) as fh:
            have = sum(1 for _ in fh)
    if have >= args.count:
        return
    t = time.monotonic()
    store = SessionStore()
    expire = timezone.now() + timezone.timedelta(days=14)
    data = store.encode({})
    rows, lines = [], []
    for idx in range(have, args.count):
        key = store._get_new_session_key()
        rows.append(Session(session_key=key, session_data=data, expire_date=expire))
        lines.append(f"{idx} {key} {_get_new_csrf_string()}\n")
    Session.objects.bulk_create(rows, batch_size=500)
    with open(args.out, "a") as fh:
        fh.writelines(lines)
    print(f"created {len(rows)} sessions in {time.monotonic() - t:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
