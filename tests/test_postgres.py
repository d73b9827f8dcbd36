"""The whole in-process suite once more, on PostgreSQL (and, through the
``layer`` fixture, Redis), in a child pytest: pytest-django sets up one
database per run, and the default run uses the embedded SQLite."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .servers import POSTGRES_ADMIN_URL, ROOT, postgres_available

pytestmark = pytest.mark.servers


def test_core_suite_passes_on_postgresql() -> None:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432; .ci/run starts it")
    env = dict(os.environ)
    # pytest-django makes (and drops) test_<name>: one name per run, side by side.
    env["DATABASE_URL"] = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/longpoll_{os.getpid()}"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not servers and not browser",
            "--ignore=tests/browser",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    assert " passed" in summary and "skipped" not in summary, summary
