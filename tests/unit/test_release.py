"""The release's two versions agree everywhere they are written."""

from __future__ import annotations

import hashlib
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


#: sha256 and name of every migration a release has shipped (sha256sum's format)
RELEASED = Path(__file__).with_name("released_migrations.sha256")


def test_released_migrations_are_never_edited() -> None:
    """A database that applied a migration never sees a later edit of it: a change is a new
    migration. Every migration up to the previous release is listed, and matches."""
    listed: dict[str, str] = {}
    for line in RELEASED.read_text("utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    folder = ROOT / "supabase" / "migrations"
    changed = [
        name
        for name, digest in listed.items()
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest
    ]
    assert changed == [], f"released migrations edited: {changed}; add a new migration"
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    previous = re.findall(r"^## \S+ \(schema (\d+)\)$", changelog, re.MULTILINE)[1]
    unlisted = [
        path.name
        for path in sorted(folder.glob("*.sql"))
        if path.name[:14] <= previous and path.name not in listed
    ]
    assert unlisted == [], f"released migrations missing from {RELEASED.name}: {unlisted}"
