"""The app's structure: its layers point one way (import-linter's contracts in
pyproject.toml, explained in docs/architecture.md), and its types are strict."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"  # import-linter's command


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """The contracts, checked against the ``longpoll_app`` found in ``package_parent``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(package_parent)},
        timeout=120,
    )


def test_the_import_contracts_hold() -> None:
    checked = lint_imports(ROOT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 broken" in checked.stdout


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path: Path) -> None:
    """The contracts are not vacuous: they refuse a queue that imports the hub
    (the kind of circle a lazy import once hid), even inside a function."""
    shutil.copytree(ROOT / "longpoll_app", tmp_path / "longpoll_app")
    queue = tmp_path / "longpoll_app" / "queue.py"
    late_import = "\n\ndef _late() -> None:\n    from . import hub  # noqa\n"
    queue.write_text(queue.read_text() + late_import)
    checked = lint_imports(tmp_path)
    assert checked.returncode != 0, checked.stdout
    assert "longpoll_app.queue -> longpoll_app.hub" in checked.stdout


def test_the_app_type_checks_strictly(tmp_path: Path) -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), "longpoll_app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
