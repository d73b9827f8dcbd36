"""The distribution as a user gets it: sdist and wheel built and checked, and
the wheel installed into a clean virtualenv with only its declared dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_TIMEOUT = 300  # seconds: an isolated build installs setuptools first

# Run in the clean virtualenv: settings of a project that only has the app,
# then the public API, the system checks and the migrations, in memory.
USE_THE_API = """
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                    "django.contrib.sessions", "channels", "longpoll_app"],
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    ROOT_URLCONF="longpoll_app.urls",
    SECRET_KEY="only-for-this-check",
)
django.setup()
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command

import longpoll_app
from longpoll_app import handler, send_to_session, send_to_user
from longpoll_app.routing import longpoll_router

call_command("check", fail_level="WARNING")
call_command("migrate", verbosity=0)
session = SessionStore()
session.create()
send_to_session(session.session_key, "hello", {"n": 1})
print("api", longpoll_app.__file__)
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sdist, and the wheel built from it (python -m build's own order), of a
    copy of the checkout's files: nothing left over in build/ can get in."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    run(sys.executable, "-m", "build", "--outdir", str(out), str(source))
    yield out


def run(*cmd: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def only(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.package
def test_twine_checks_the_sdist_and_the_wheel(dist: Path) -> None:
    files = [str(only(dist, "*.tar.gz")), str(only(dist, "*.whl"))]
    output = run(sys.executable, "-m", "twine", "check", "--strict", *files)
    assert output.count("PASSED") == 2, output


@pytest.mark.package
def test_the_sdist_holds_what_the_wheel_is_built_from(dist: Path) -> None:
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("pyproject.toml", "README.md", "LICENSE"):
        assert needed in names, needed
    assert "longpoll_app/static/longpoll_app/longpoll.js" in names


@pytest.mark.package
def test_the_wheel_holds_the_app_and_nothing_of_the_demo(dist: Path) -> None:
    names = zipfile.ZipFile(only(dist, "*.whl")).namelist()
    for needed in (
        "longpoll_app/py.typed",
        "longpoll_app/static/longpoll_app/longpoll.js",
        "longpoll_app/migrations/0001_initial.py",
    ):
        assert needed in names, needed
    assert any(name.endswith("licenses/LICENSE") for name in names), names
    assert not [n for n in names if n.split("/")[0] in {"project", "tests", "bench", "templates"}]


@pytest.mark.package
def test_the_wheel_works_with_only_its_declared_dependencies(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "--quiet", str(only(dist, "*.whl")))
    run(python, "-m", "pip", "check")

    installed = run(python, "-m", "pip", "list", "--format=freeze").lower()
    for extra in ("daphne", "channels-redis", "uvicorn", "granian", "psycopg", "prometheus-client"):
        assert f"{extra}==" not in installed, f"{extra} came without its extra"

    output = run(python, "-c", USE_THE_API, cwd=tmp_path)
    assert f"api {venv}" in output, output  # the installed copy, not the checkout


def test_the_declared_ranges_are_the_tested_ones() -> None:
    """noxfile.py's matrix and pyproject's classifiers and ranges say the same."""
    path = os.environ["PATH"]  # noxfile puts pyenv's interpreters on it
    sys.path.insert(0, str(ROOT))
    try:
        import noxfile
    finally:
        sys.path.remove(str(ROOT))
        os.environ["PATH"] = path
    djangos = sorted({django for _, django, _ in noxfile.MATRIX})
    pythons = sorted({python for python, _, _ in noxfile.MATRIX})
    classifiers = PYPROJECT["project"]["classifiers"]
    assert [c.rsplit(" ", 1)[1] for c in classifiers if c.startswith("Framework :: Django ::")] == (
        djangos
    )
    assert [
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if c.startswith("Programming Language :: Python :: 3.")
    ] == pythons
    django_range = f"Django>={djangos[0]},<{_next_minor(djangos[-1])}"
    assert django_range in PYPROJECT["project"]["dependencies"]
    assert PYPROJECT["project"]["requires-python"] == f">={pythons[0]}"


def _next_minor(version: str) -> str:
    major, minor = version.split(".")
    return f"{major}.{int(minor) + 1}"
