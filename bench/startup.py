"""What the app adds to a fresh process: to ``django.setup()``, and to its first send.

Runs fresh interpreters in turns, A B A B ...: (A) ``django.setup()`` on settings
without the app, (B) the same settings with it, then a first and a second
``send_to_session`` to a session that has polled before (its record exists), as a
worker or a freshly started server process would. Medians of each. Compiled
bytecode is written before anything is timed (as an installed package has it), so
compiling the sources is not counted.

    python bench/startup.py --backend scaled --runs 15
    python bench/startup.py --backend embedded --runs 15

``scaled`` needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on
127.0.0.1:6379; it uses the database ``longpoll_startup`` (made if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_DB = "longpoll_startup"
REDIS_URL = "redis://127.0.0.1:6379/12"

SETTINGS = """
SECRET_KEY = "bench-startup"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "channels",
] + ({with_app} and ["longpoll_app"] or [])
DATABASES = {databases}
CHANNEL_LAYERS = {layers}
"""

CHILD = textwrap.dedent("""
    import json, os, sys, time
    started, cpu = time.perf_counter(), time.process_time()
    import django
    django.setup()
    result = {"setup": time.perf_counter() - started, "setup_cpu": time.process_time() - cpu}
    if len(sys.argv) > 1:
        from longpoll_app import api
        first = time.perf_counter()
        api.send_to_session(sys.argv[1], "startup", 1)
        result["first_send"] = time.perf_counter() - first
        second = time.perf_counter()
        api.send_to_session(sys.argv[1], "startup", 2)
        result["second_send"] = time.perf_counter() - second
    print(json.dumps(result))
""")


def settings_source(backend: str, workdir: Path, with_app: bool) -> str:
    if backend == "scaled":
        databases = {
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": PG_DB,
                "USER": "postgres",
                "HOST": "127.0.0.1",
                "OPTIONS": {"pool": {"min_size": 2, "max_size": 20, "timeout": 3}},
            }
        }
        layers = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [REDIS_URL]},
            }
        }
    else:
        databases = {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(workdir / "startup.sqlite3"),
            }
        }
        layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return SETTINGS.format(with_app=with_app, databases=repr(databases), layers=repr(layers))


def child_env(workdir: Path, module: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(workdir), str(ROOT)])
    env["DJANGO_SETTINGS_MODULE"] = module
    return env


def run_script(workdir: Path, module: str, script: str, *args: str) -> str:
    """Run ``script`` in a fresh interpreter on settings ``module``: the last line it printed."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=child_env(workdir, module),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"startup: a child process failed:\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def run_child(workdir: Path, module: str, *args: str) -> dict[str, float]:
    result: dict[str, float] = json.loads(run_script(workdir, module, CHILD, *args))
    return result


PREPARE = textwrap.dedent("""
    import django
    django.setup()
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from longpoll_app import queue, sessions
    session = sessions.session_store()
    session.save()
    queue.append(session.session_key, "startup", 0)  # makes its record
    print(session.session_key)
""")


def prepare(backend: str, workdir: Path) -> str:
    """Make the database and a session that has polled (its record exists): its key."""
    if backend == "scaled":
        subprocess.run(
            ["createdb", "-h", "127.0.0.1", "-U", "postgres", PG_DB],
            capture_output=True,
            check=False,  # it may exist already
        )
    return run_script(workdir, "startup_with", PREPARE)


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "scaled"], default="scaled")
    parser.add_argument("--runs", type=int, default=15, help="fresh processes of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="longpoll-startup-") as tmp:
        workdir = Path(tmp)
        for name, with_app in (("startup_with", True), ("startup_without", False)):
            (workdir / f"{name}.py").write_text(settings_source(args.backend, workdir, with_app))
        key = prepare(args.backend, workdir)
        run_child(workdir, "startup_without")  # writes the bytecode of both
        run_child(workdir, "startup_with", key)
        without: list[dict[str, float]] = []
        with_app: list[dict[str, float]] = []
        for _ in range(args.runs):
            without.append(run_child(workdir, "startup_without"))
            with_app.append(run_child(workdir, "startup_with", key))
    print(f"backend {args.backend}, {args.runs} fresh processes of each kind, in turns")
    for what, key in (("wall", "setup"), ("CPU", "setup_cpu")):
        bare = [run[key] for run in without]
        full = [run[key] for run in with_app]
        added = (statistics.median(full) - statistics.median(bare)) * 1000
        print(f"  django.setup() {what} time: without the app {ms(bare)}, with it {ms(full)}")
        print(f"    the app adds {added:.1f} ms")
    print(f"  first send_to_session after setup: median {ms([r['first_send'] for r in with_app])}")
    print(f"  second send_to_session:            median {ms([r['second_send'] for r in with_app])}")


if __name__ == "__main__":
    main()
