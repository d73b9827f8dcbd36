"""The documentation matches the code, builds, and the README's links lead somewhere."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from longpoll_app.checks import RETIRED_CHECK_IDS
from longpoll_app.conf import DEFAULTS, SETTINGS, Setting

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
BUILD_TIMEOUT = 180.0  # seconds; the site builds in about 2 s

# `[text](target)` and `![alt](target "title")`; reference definitions `[name]: target`.
INLINE_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


CHECK_ID = re.compile(r"""id=["'](longpoll_app\.[EW]\d{3})["']""")


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _unquote(cell: str) -> str:
    """A cell's text without the backticks of inline code."""
    return cell[1:-1] if len(cell) > 1 and cell[0] == cell[-1] == "`" else cell


def table(first_columns: list[str]) -> list[dict[str, str]]:
    """The rows of the table in docs/settings.md whose header starts with these columns."""
    lines = SETTINGS_PAGE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        header = _cells(line) if line.lstrip().startswith("|") else []
        if header[: len(first_columns)] == first_columns:
            rows = []
            for row in lines[index + 2 :]:  # below the header and its |---| line
                if not row.lstrip().startswith("|"):
                    break
                rows.append(dict(zip(header, map(_unquote, _cells(row)), strict=True)))
            return rows
    raise AssertionError(f"{SETTINGS_PAGE} has no table whose header starts {first_columns}")


def settings_table() -> list[dict[str, str]]:
    return table(["setting", "default"])


def test_the_settings_table_lists_every_setting_once() -> None:
    names = [row["setting"] for row in settings_table()]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    assert not repeated, f"listed more than once: {repeated}"
    assert sorted(set(DEFAULTS) - set(names)) == [], "settings missing from docs/settings.md"
    assert sorted(set(names) - set(DEFAULTS)) == [], "docs/settings.md lists unknown settings"
    assert names == [s.name for s in SETTINGS], "not in the order conf.Settings declares them"


def test_the_settings_table_gives_the_defaults_of_conf() -> None:
    for row in settings_table():
        name = row["setting"]
        documented: Any = ast.literal_eval(row["default"])
        expected = DEFAULTS[name]
        # 10 and 10.0 are equal, but a float setting documented as an int misleads.
        assert (type(documented), documented) == (type(expected), expected), name


def declared(name: str) -> Setting[Any]:
    return next(s for s in SETTINGS if s.name == name)


def test_the_settings_table_says_what_the_checks_accept() -> None:
    rows = settings_table()
    assert len(rows) == len(SETTINGS)  # every setting has a rule now, so every row is compared
    for row in rows:
        assert row["accepted"] == declared(row["setting"]).accepted, row["setting"]


def test_the_settings_table_gives_each_settings_check_id() -> None:
    for row in settings_table():
        assert row["check"] == declared(row["setting"]).check_id, row["setting"]


def meaning_follows_doc(meaning: str, doc: str) -> bool:
    """Whether a docs meaning says the declaration's doc first, and goes on only after it.

    The page may mark code with backticks, which the doc (plain text) does not, and add
    detail or links after it; it may not cut the doc mid-word or say it otherwise.
    """
    plain = meaning.replace("`", "")
    rest = plain.removeprefix(doc)
    return bool(doc) and plain.startswith(doc) and (rest == "" or not rest[0].isalnum())


def test_the_settings_table_means_what_conf_says() -> None:
    for row in settings_table():
        doc = declared(row["setting"]).doc
        assert meaning_follows_doc(row["meaning"], doc), f"{row['setting']}: starts with {doc!r}"


def test_the_meaning_rule_refuses_a_different_or_cut_meaning() -> None:
    doc = "seconds a poll is held"
    assert meaning_follows_doc("seconds a poll is held", doc)
    assert meaning_follows_doc("seconds a `poll` is held (see [Hub](hub.md))", doc)
    assert not meaning_follows_doc("seconds a poll is heldover", doc)
    assert not meaning_follows_doc("the seconds a poll is held", doc)
    assert not meaning_follows_doc("seconds a poll waits", doc)
    assert not meaning_follows_doc("anything", "")


def test_the_checks_table_lists_every_check_the_app_has() -> None:
    sources = (ROOT / "longpoll_app").rglob("*.py")
    found = {found for path in sources for found in CHECK_ID.findall(path.read_text())}
    in_code = sorted(found | {s.check_id for s in SETTINGS})
    checks = table(["id", "level"])
    retired = sorted(row["id"] for row in checks if row["level"] == "retired")
    # The settings' own ids are in the settings table's check column, not repeated here.
    documented = [row["id"] for row in checks if row["level"] != "retired"]
    documented += [row["check"] for row in settings_table()]
    assert found, "no check ids found in longpoll_app: the pattern no longer matches"
    assert sorted(documented) == in_code
    assert retired == sorted(RETIRED_CHECK_IDS), "a retired id is not listed as retired"
    assert not set(retired) & set(in_code), "a retired id is reported again"


def _mkdocs_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("mkdocs", "material"))


def test_the_docs_build_in_strict_mode(tmp_path: Path) -> None:
    # No skip: the [test] extra installs mkdocs-material, so its absence is a broken set-up.
    assert _mkdocs_installed(), "mkdocs-material is not installed (pip install mkdocs-material)"
    site = tmp_path / "site"
    config = ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)]
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", *config],
        cwd=tmp_path,  # the config must not depend on where it is built from
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    releases = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    changelog_page = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert releases, "CHANGELOG.md has no release headings"
    assert all(f"[{release}]" in changelog_page for release in releases), (
        "the changelog page does not include CHANGELOG.md"
    )


def readme_links() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def test_the_readme_links_point_at_files_that_exist() -> None:
    relative = [
        link for link in readme_links() if not URL_SCHEME.match(link) and not link.startswith("#")
    ]
    assert relative, "README.md links to no file: the pattern no longer finds its links"
    missing = [link for link in relative if not (ROOT / link.split("#", 1)[0]).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def test_the_metrics_table_lists_every_metric_with_its_type() -> None:
    from longpoll_app.metrics import LongpollCollector

    page = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(longpoll_\w+)` \| (\w+) \|", page, re.M)
    exposed = {}
    for family in LongpollCollector().describe():
        # The text format names a counter's sample with _total; the table does too.
        suffix = "_total" if family.type == "counter" else ""
        exposed[family.name + suffix] = family.type
    assert dict(rows) == exposed
    assert len(rows) == len(exposed)  # each once
