"""The test matrix: every supported Django on every Python it supports.

The whole suite runs on the oldest pair (Python 3.11 + Django 5.2 LTS: the
README's own test command, which ``.ci/run`` runs first) and on the newest
(Python 3.13 + Django 6.1); the fast suite (no real servers, no browser, no package build) runs on
every other pair. ``nox`` runs them all; ``.ci/run`` runs ``nox -t matrix``,
everything but the README's pair.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True  # a missing Python fails, never skips

SUITES = {"full": [], "fast": ["-m", "not servers and not browser and not package"]}

# (Python, Django, suite): Django 6.x needs Python 3.12 or newer.
MATRIX = [
    ("3.11", "5.2", "full"),
    ("3.12", "5.2", "fast"),
    ("3.13", "5.2", "fast"),
    ("3.12", "6.0", "fast"),
    ("3.13", "6.0", "fast"),
    ("3.12", "6.1", "fast"),
    ("3.13", "6.1", "full"),
]
README_PAIR = ("3.11", "5.2")  # .ci/run has run it already, as the README says


def _pyenv_interpreters_first() -> None:
    """pyenv's shims refuse a Python that is not selected: put the newest
    installed build of each version on PATH ahead of them instead."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    dirs = []
    for python in sorted({python for python, _, _ in MATRIX}):
        builds = sorted(
            versions.glob(f"{python}.*/bin"),
            key=lambda path: [int(n) if n.isdigit() else -1 for n in path.parent.name.split(".")],
        )
        if builds:
            dirs.append(str(builds[-1]))
    os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


_pyenv_interpreters_first()


def _param(python: str, django: str, suite: str) -> object:
    tags = [] if (python, django) == README_PAIR else ["matrix"]
    return nox.param(python, django, suite, id=f"{python}-django{django}-{suite}", tags=tags)


@nox.session
@nox.parametrize("python,django,suite", [_param(*pair) for pair in MATRIX])
def tests(session: nox.Session, django: str, suite: str) -> None:
    session.install("-e", ".[test]", f"Django~={django}.0")
    session.run("python", "-m", "django", "--version")
    session.run("python", "-m", "pytest", *SUITES[suite], *session.posargs)
