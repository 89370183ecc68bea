"""The migration chain, applied the way a user applies it: ``supabase db push --db-url``.

Each test database is created on the stack's cluster (``DATABASE_URL``), gets only
the Supabase compat bootstrap (``scripts/supabase-compat.sql``, and for the second
one ``scripts/supabase-compat-revoked-defaults.sql`` after it), then the real CLI
pushes ``supabase/migrations``. The databases are dropped at the end.

- the first push applies every migration and records each version;
- the ledger works in the pushed database;
- a second push applies nothing;
- under revoked default privileges the migrations produce exactly the same ACLs as
  under Supabase's legacy "auto-expose" defaults (they grant per object);
- ``supabase db advisors --type all --level info --fail-on warn`` passes on both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
SUPABASE = ROOT / "node_modules" / ".bin" / "supabase"
MIGRATIONS = ROOT / "supabase" / "migrations"
COMPAT = ROOT / "scripts" / "supabase-compat.sql"
REVOKED_DEFAULTS = ROOT / "scripts" / "supabase-compat-revoked-defaults.sql"
PGBIN = Path(os.environ.get("DUCTO_PGBIN", "/usr/lib/postgresql/15/bin"))

# The CLI's rule for migration file names (facts 3.2): <digits>_<name>.sql
MIGRATION_NAME = re.compile(r"^([0-9]+)_(.*)\.sql$")


def migration_files() -> list[tuple[str, str, str]]:
    """(file name, version, name) of every migration the CLI will apply, in order."""
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if match:
            found.append((path.name, match.group(1), match.group(2)))
    assert found, f"no migrations in {MIGRATIONS}"
    return found


def psql() -> str:
    binary = PGBIN / "psql"
    if binary.exists():
        return str(binary)
    found = shutil.which("psql")
    assert found, "psql not found (set DUCTO_PGBIN)"
    return found


def url_for(database_url: str, dbname: str) -> str:
    """``database_url`` with another database name (the CLI needs a URL, not a DSN)."""
    parts = urlsplit(database_url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def push(url: str) -> subprocess.CompletedProcess[str]:
    return run([str(SUPABASE), "db", "push", "--db-url", url, "--yes"])


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


@dataclass
class PushedDatabase:
    """A fresh database with the bootstrap, after its first ``supabase db push``."""

    name: str
    url: str
    first_push: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def databases(database_url: str) -> Iterator[dict[str, PushedDatabase]]:
    """Two fresh databases, legacy and revoked default privileges, each pushed once."""
    assert SUPABASE.exists(), f"no supabase CLI at {SUPABASE} (run `make install`)"
    run_id = uuid.uuid4().hex[:8]
    names = {mode: f"ducto_migtest_{run_id}_{mode}" for mode in ("legacy", "revoked")}
    created: list[str] = []
    try:
        pushed = {}
        for mode, name in names.items():
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("create database {} template template0").format(sql.Identifier(name))
                )
            created.append(name)
            url = url_for(database_url, name)
            scripts = [COMPAT] + ([REVOKED_DEFAULTS] if mode == "revoked" else [])
            for script in scripts:
                result = run([psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), url])
                assert result.returncode == 0, f"{script.name} failed:\n{output(result)}"
            pushed[mode] = PushedDatabase(name, url, push(url))
        yield pushed
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for name in created:
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )


@pytest.fixture(scope="module")
def legacy(databases: dict[str, PushedDatabase]) -> PushedDatabase:
    return databases["legacy"]


@pytest.fixture(scope="module")
def revoked(databases: dict[str, PushedDatabase]) -> PushedDatabase:
    return databases["revoked"]


def history(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations"
            " order by version"
        ).fetchall()


# ---------------------------------------------------------------------------
# db push
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "revoked"])
def test_push_applies_every_migration(databases: dict[str, PushedDatabase], mode: str) -> None:
    first = databases[mode].first_push
    text = output(first)
    assert first.returncode == 0, text
    files = migration_files()
    positions = [text.find(f"Applying migration {file}...") for file, _, _ in files]
    assert all(position >= 0 for position in positions), text
    assert positions == sorted(positions), "migrations applied out of order"
    assert "Finished supabase db push." in text
    rows = history(databases[mode].url)
    assert [(version, name) for version, name, _ in rows] == [
        (version, name) for _, version, name in files
    ]
    assert all(statements for _, _, statements in rows)


def test_pushed_ledger_works(legacy: PushedDatabase) -> None:
    user = f"migration-test-{uuid.uuid4()}"
    with psycopg.connect(legacy.url) as conn:
        conn.execute("set local role service_role")
        added = conn.execute(
            "select amount, balance_after from public.credit_add_credits(%s, 10)", (user,)
        ).fetchone()
        taken = conn.execute(
            "select amount, balance_after, available_after"
            " from public.credit_deduct_credits(%s, 4)",
            (user,),
        ).fetchone()
        balance = conn.execute(
            "select balance, held, available from public.credit_get_balance(%s)", (user,)
        ).fetchone()
        issues = conn.execute("select * from public.credit_verify_ledger()").fetchall()
        conn.commit()
    assert added == (10, 10)
    assert taken == (4, 6, 6)
    assert balance == (6, 0, 6)
    assert issues == []


def test_second_push_applies_nothing(legacy: PushedDatabase) -> None:
    before = history(legacy.url)
    with psycopg.connect(legacy.url) as conn:
        objects_before = conn.execute(OBJECTS_SQL).fetchall()
    second = push(legacy.url)
    text = output(second)
    assert second.returncode == 0, text
    assert "Applying migration" not in text
    # "Local" when the port is config.toml's local db port (54322), "Remote" otherwise
    assert re.search(r"^(Local|Remote) database is up to date\.$", text, re.MULTILINE), text
    assert history(legacy.url) == before
    with psycopg.connect(legacy.url) as conn:
        assert conn.execute(OBJECTS_SQL).fetchall() == objects_before


# ---------------------------------------------------------------------------
# Privileges do not depend on the project's default privileges
# ---------------------------------------------------------------------------

# Every object ducto owns: credit_* in public, everything in credit_private.
OBJECTS_SQL = """
select 'relation ' || c.relkind::text, format('%I.%I', n.nspname, c.relname)
from pg_catalog.pg_class as c
join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
where (n.nspname = 'public' and c.relname like 'credit\\_%') or n.nspname = 'credit_private'
union all
select 'function', format('%I.%I(%s)', n.nspname, p.proname,
    pg_catalog.pg_get_function_identity_arguments(p.oid))
from pg_catalog.pg_proc as p
join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
where (n.nspname = 'public' and p.proname like 'credit\\_%') or n.nspname = 'credit_private'
order by 1, 2
"""

# One row per privilege of every ducto object (NULL ACL = the built-in default).
ACL_SQL = """
with objects as (
    select
        case c.relkind when 'S' then 'sequence' else 'relation' end as kind,
        format('%I.%I', n.nspname, c.relname) as name,
        c.relacl as acl, c.relowner as owner,
        case c.relkind when 'S' then 's' else 'r' end::"char" as default_kind
    from pg_catalog.pg_class as c
    join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
    where ((n.nspname = 'public' and c.relname like 'credit\\_%') or n.nspname = 'credit_private')
      and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
    union all
    select 'column', format('%I.%I.%I', n.nspname, c.relname, a.attname), a.attacl, c.relowner,
        'c'
    from pg_catalog.pg_attribute as a
    join pg_catalog.pg_class as c on c.oid = a.attrelid
    join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
    where ((n.nspname = 'public' and c.relname like 'credit\\_%') or n.nspname = 'credit_private')
      and a.attnum > 0 and not a.attisdropped and a.attacl is not null
    union all
    select 'function',
        format('%I.%I(%s)', n.nspname, p.proname,
            pg_catalog.pg_get_function_identity_arguments(p.oid)),
        p.proacl, p.proowner, 'f'
    from pg_catalog.pg_proc as p
    join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
    where (n.nspname = 'public' and p.proname like 'credit\\_%') or n.nspname = 'credit_private'
    union all
    select 'type', format('%I.%I', n.nspname, t.typname), t.typacl, t.typowner, 'T'
    from pg_catalog.pg_type as t
    join pg_catalog.pg_namespace as n on n.oid = t.typnamespace
    where ((n.nspname = 'public' and t.typname like 'credit\\_%') or n.nspname = 'credit_private')
      and t.typtype <> 'b'
    union all
    select 'schema', n.nspname, n.nspacl, n.nspowner, 'n'
    from pg_catalog.pg_namespace as n
    where n.nspname = 'credit_private'
)
select
    o.kind,
    o.name,
    coalesce(grantee.rolname, 'PUBLIC') as grantee,
    x.privilege_type,
    x.is_grantable,
    grantor.rolname as grantor
from objects as o
cross join lateral pg_catalog.aclexplode(
    coalesce(o.acl, pg_catalog.acldefault(o.default_kind, o.owner))
) as x
left join pg_catalog.pg_roles as grantee on grantee.oid = x.grantee
left join pg_catalog.pg_roles as grantor on grantor.oid = x.grantor
order by 1, 2, 3, 4
"""

DEFAULT_ACL_SQL = """
select d.defaclobjtype, coalesce(r.rolname, '-'), d.defaclacl::text
from pg_catalog.pg_default_acl as d
left join pg_catalog.pg_roles as r on r.oid = d.defaclrole
where d.defaclnamespace = 'public'::regnamespace
order by 1, 2
"""


def acls(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(ACL_SQL).fetchall()


def test_revoked_defaults_really_differ(legacy: PushedDatabase, revoked: PushedDatabase) -> None:
    """Guards the next test: the two databases start from different default privileges."""
    with psycopg.connect(legacy.url) as one, psycopg.connect(revoked.url) as other:
        assert one.execute(DEFAULT_ACL_SQL).fetchall() != other.execute(DEFAULT_ACL_SQL).fetchall()


def test_acls_do_not_depend_on_default_privileges(
    legacy: PushedDatabase, revoked: PushedDatabase
) -> None:
    expected = acls(legacy.url)
    actual = acls(revoked.url)
    only_legacy = sorted(set(expected) - set(actual))
    only_revoked = sorted(set(actual) - set(expected))
    assert (only_legacy, only_revoked) == ([], []), (
        "privileges that differ with revoked default privileges "
        f"(legacy only: {only_legacy}; revoked only: {only_revoked})"
    )
    # and the result is what docs/ledger.md promises, in both
    granted = {(kind, name, grantee, privilege) for kind, name, grantee, privilege, _, _ in actual}
    functions = {name for kind, name, *_ in actual if kind == "function"}
    assert not {row for row in granted if row[0] == "function" and row[2] == "PUBLIC"}
    for row in granted:
        kind, name, grantee, privilege = row
        if kind in ("relation", "sequence", "column") and grantee in (
            "anon",
            "authenticated",
            "service_role",
        ):
            assert privilege == "SELECT", row
        if grantee == "anon":
            raise AssertionError(f"anon may {privilege} {kind} {name}")
    assert any(name.startswith("public.credit_add_credits(") for name in functions)
    assert ("relation", "public.credit_transactions", "authenticated", "SELECT") in granted
    add_credits = next(name for name in functions if name.startswith("public.credit_add_credits("))
    assert {grantee for kind, name, grantee, _ in granted if name == add_credits} == {
        "postgres",
        "service_role",
    }


# ---------------------------------------------------------------------------
# Supabase's advisors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "revoked"])
def test_advisors_find_no_warning(databases: dict[str, PushedDatabase], mode: str) -> None:
    result = run(
        [
            str(SUPABASE),
            "db",
            "advisors",
            "--db-url",
            databases[mode].url,
            "--type",
            "all",
            "--level",
            "info",
            "--fail-on",
            "warn",
        ]
    )
    assert result.returncode == 0, output(result)
    findings = json.loads(result.stdout) if result.stdout.strip() else []
    assert isinstance(findings, list), result.stdout
    serious = [f for f in findings if f.get("level") in ("WARN", "ERROR")]
    assert serious == [], json.dumps(serious, indent=2)
