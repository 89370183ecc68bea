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
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "supabase" / "schemas"
CATALOG = Path(__file__).with_name("catalog.sql")

Catalog = dict[tuple[str, str], str]


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


@pytest.mark.parametrize("revoked_defaults", [False, True], ids=["legacy", "revoked"])
def test_schemas_build_what_the_migrations_build(
    new_database: Callable[..., str], revoked_defaults: bool
) -> None:
    migrated = catalog(new_database(migrated=True, revoked_defaults=revoked_defaults))
    declared_url = new_database(revoked_defaults=revoked_defaults)
    apply_schemas(declared_url)
    declared = catalog(declared_url)
    kinds = {kind for kind, _ in migrated}
    # the comparison covers every kind of object the ledger has
    assert {"function", "relation", "column", "constraint", "policy", "trigger", "type"} <= kinds
    problems = differences(migrated, declared)
    assert not problems, "supabase/schemas and supabase/migrations differ:\n\n" + "\n\n".join(
        problems
    )


def test_a_difference_is_found(new_database: Callable[..., str]) -> None:
    """The comparison sees a changed body, comment, grant and index: one of each, made in
    one of two databases built from the schemas, is reported by object."""
    first, second = new_database(), new_database()
    for url in (first, second):
        apply_schemas(url)
    with psycopg.connect(second, autocommit=True) as conn:
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
    problems = differences(catalog(first), catalog(second))
    assert [p.splitlines()[0] for p in problems] == [
        "differs: column public.credit_grants.spendable",
        "differs: function public.credit_schema_version()",
        "only in supabase/migrations: relation public.credit_grants_expiry_idx",
        "differs: relation public.credit_idempotency_keys",
    ]
