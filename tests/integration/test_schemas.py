"""The two forms of the ledger agree: ``supabase/schemas`` (the ledger as it is now, one
place per object) and ``supabase/migrations`` (the released history that ``supabase db
push`` and ``setup()`` apply).

One fresh database gets the migrations through the CLI, another the schema files in the
order of their names; their catalogs (every function with its body, settings, owner and
ACL; every table, column, default, constraint, index, policy, trigger, view, type,
comment and grant in ducto's schemas, and the default privileges) must be equal, under
Supabase's legacy default privileges and under revoked defaults. A difference fails with
the objects that differ and a diff of each.
"""

from __future__ import annotations

import difflib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "supabase" / "schemas"
CATALOG = Path(__file__).with_name("catalog.sql")

Catalog = dict[tuple[str, str], str]


def local_stack(*args: str) -> str:
    done = subprocess.run(
        ["scripts/local-stack", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def apply_schemas(url: str) -> None:
    files = sorted(SCHEMAS.glob("*.sql"))
    assert files, f"no schema files in {SCHEMAS}"
    with psycopg.connect(url, autocommit=True) as conn:
        for path in files:
            try:
                conn.execute(path.read_text(encoding="utf-8").encode())
            except psycopg.Error as exc:
                pytest.fail(f"{path.relative_to(ROOT)} does not apply: {exc}")


def catalog(url: str) -> Catalog:
    with psycopg.connect(url) as conn:
        conn.execute("set search_path = ''")
        rows = conn.execute(CATALOG.read_text(encoding="utf-8").encode()).fetchall()
    facts: Catalog = {}
    for kind, name, detail in rows:
        assert (kind, name) not in facts, f"{kind} {name} is described twice"
        facts[kind, name] = detail or ""
    return facts


def differences(migrated: Catalog, declared: Catalog) -> list[str]:
    """What differs, object by object, as the migrations have it against the schemas."""
    out = []
    for key in sorted(migrated.keys() | declared.keys()):
        label = " ".join(key)
        if key not in declared:
            out.append(f"only in supabase/migrations: {label}")
        elif key not in migrated:
            out.append(f"only in supabase/schemas: {label}")
        elif migrated[key] != declared[key]:
            diff = difflib.unified_diff(
                migrated[key].splitlines(),
                declared[key].splitlines(),
                "migrations",
                "schemas",
                lineterm="",
            )
            out.append(f"differs: {label}\n" + "\n".join(diff))
    return out


@pytest.fixture(scope="module")
def databases(database_url: str) -> Iterator[dict[str, str]]:
    run = uuid.uuid4().hex[:8]
    names: list[str] = []
    urls: dict[str, str] = {}
    try:
        for mode in ("legacy", "revoked"):
            flags = ["--revoked-defaults"] if mode == "revoked" else []
            for form in ("migrations", "schemas"):
                name = f"ducto_schemas_{run}_{mode}_{form}"
                names.append(name)
                more = [] if form == "migrations" else ["--no-migrations"]
                urls[f"{mode}/{form}"] = local_stack("db-create", name, *flags, *more)
            apply_schemas(urls[f"{mode}/schemas"])
        yield urls
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )


@pytest.mark.parametrize("mode", ["legacy", "revoked"])
def test_schemas_build_what_the_migrations_build(databases: dict[str, str], mode: str) -> None:
    migrated = catalog(databases[f"{mode}/migrations"])
    declared = catalog(databases[f"{mode}/schemas"])
    kinds = {kind for kind, _ in migrated}
    # the comparison covers every kind of object the ledger has
    assert {"function", "relation", "column", "constraint", "policy", "trigger", "type"} <= kinds
    problems = differences(migrated, declared)
    assert not problems, "supabase/schemas and supabase/migrations differ:\n\n" + "\n\n".join(
        problems
    )


def test_a_difference_is_found(databases: dict[str, str], database_url: str) -> None:
    """The comparison sees a changed body, comment, grant and index: one of each, made in a
    copy of the schemas' database, is reported by object."""
    copy = f"ducto_schemas_copy_{uuid.uuid4().hex[:8]}"
    source = databases["legacy/schemas"].rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(copy), sql.Identifier(source)
            )
        )
    try:
        url = databases["legacy/schemas"].replace(f"/{source}", f"/{copy}")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                """
                create or replace function public.credit_schema_version()
                returns text language sql immutable set search_path = ''
                as $$ select 'changed'::text $$;
                comment on column public.credit_grants.spendable is 'changed';
                grant select on table public.credit_idempotency_keys to authenticated;
                drop index public.credit_grants_expiry_idx;
                """
            )
        problems = differences(catalog(databases["legacy/schemas"]), catalog(url))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(copy))
            )
    assert [p.splitlines()[0] for p in problems] == [
        "differs: column public.credit_grants.spendable",
        "differs: function public.credit_schema_version()",
        "only in supabase/migrations: relation public.credit_grants_expiry_idx",
        "differs: relation public.credit_idempotency_keys",
    ]
