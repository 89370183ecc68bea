"""ducto's migrations as shipped with the package, and how ``setup()`` applies them.

The wheel carries ``supabase/migrations`` as ``ducto/migrations`` (see pyproject.toml); a
source checkout reads the folder itself. ``setup()`` records what it applied in
``credit_private.schema_migrations``, never in ``supabase_migrations.schema_migrations``:
``supabase db push`` refuses to run on a project whose history names versions missing from
the project's own folder. Versions that ``supabase db push`` applied count as applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from ducto.errors import SchemaError
from ducto.models import SetupResult

_NAME = re.compile(r"^(\d+)_(.+)\.sql$")

#: Session advisory lock key held while setup() runs, so two processes never apply at once.
SETUP_LOCK_KEY = 0x6475_6374_6F00  # "ducto\0"

PREPARE_RECORD = """
create schema if not exists credit_private;
create table if not exists credit_private.schema_migrations (
    version text primary key,
    name text not null,
    applied_at timestamptz not null default now()
);
revoke all on table credit_private.schema_migrations
from public, anon, authenticated, service_role;
"""

APPLIED_BY_DUCTO = "select version from credit_private.schema_migrations"
# asked only when the table exists: a query naming a missing table fails to plan
APPLIED_BY_CLI = "select version from supabase_migrations.schema_migrations"
HAS_CLI_HISTORY = "select to_regclass('supabase_migrations.schema_migrations') is not null"
RECORD = "insert into credit_private.schema_migrations (version, name) values (%s, %s)"
RELOAD_POSTGREST = "notify pgrst, 'reload schema'"


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version (the timestamp), name and SQL."""

    version: str
    name: str
    sql: str


def _shipped(name: str, source: str) -> Traversable:
    """A file the wheel ships inside ``ducto/`` as ``name``; ``source`` in a checkout."""
    shipped = resources.files("ducto").joinpath(name)
    if shipped.is_dir() or shipped.is_file():
        return shipped
    return Path(__file__).resolve().parent.parent / source


def supabase_compat_sql() -> str:
    """The bootstrap that gives a plain PostgreSQL Supabase's roles and ``auth`` functions."""
    return _shipped("supabase-compat.sql", "scripts/supabase-compat.sql").read_text("utf-8")


def bundled() -> list[Migration]:
    """Every migration this version of ducto ships, oldest first."""
    found = []
    for entry in _shipped("migrations", "supabase/migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(match[1], match[2], entry.read_text(encoding="utf-8")))
    if not found:
        raise FileNotFoundError("ducto's migrations are missing from the installation")
    return sorted(found, key=lambda m: m.version)


def latest_version() -> str:
    """The schema version this client expects: its newest migration's."""
    return bundled()[-1].version


def check_installed(installed: str | None) -> SetupResult:
    """setup() for a store that cannot run DDL: the schema must already be current."""
    expected = latest_version()
    if installed is not None and installed >= expected:
        return SetupResult(applied=(), already_applied=(), schema_version=installed)
    state = "is not installed" if installed is None else f"is at version {installed}"
    raise SchemaError(
        f"ducto's schema {state}; this client needs version {expected}. DDL cannot go "
        "through PostgREST: copy ducto's migrations into your project's supabase/migrations "
        "(`ducto sql export PROJECT_DIR`) and run `supabase db push`, or run setup() once "
        "with a PostgresStore on the database URL.",
        code="DC100",
    )
