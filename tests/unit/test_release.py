"""The release's two versions agree everywhere they are written."""

from __future__ import annotations

import re
from pathlib import Path

import ducto
from ducto._migrations import latest_version

ROOT = Path(__file__).resolve().parents[2]


def test_changelog_names_this_version_and_its_schema() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    newest = re.search(r"^## (\S+) \(schema (\d+)\)$", changelog, re.MULTILINE)
    assert newest, "CHANGELOG.md has no '## <version> (schema <version>)' heading"
    assert (newest[1], newest[2]) == (ducto.__version__, latest_version())
