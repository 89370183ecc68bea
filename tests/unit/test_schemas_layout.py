"""``supabase/schemas`` defines every object of the ledger in exactly one place.

The catalog comparison (tests/integration/test_schemas.py) proves the schema files build
what the migrations build; this proves a reader finds each function, table, type, view,
index, policy and trigger of the ledger once, in one file.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "supabase" / "schemas"

# A definition at the start of a line: function bodies are indented, so a `create` inside
# one (there is none today) would not count.
DEFINITION = re.compile(
    r"^create\s+(?:or\s+replace\s+)?(?:unique\s+)?"
    r"(function|table|type|view|index|policy|trigger)\s+([\w.\"]+)(?:\s+on\s+([\w.\"]+))?",
    re.IGNORECASE | re.MULTILINE,
)


def definitions(files: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """(kind, name) -> the files that define it; a policy or trigger is named with its
    table, a function by its name alone (the ledger has no overloads)."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for file, text in files.items():
        for kind, name, table in DEFINITION.findall(text):
            key = name.lower().replace('"', "")
            if kind.lower() in ("policy", "trigger"):
                key = f"{key} on {table.lower()}"
            found[kind.lower(), key].append(file)
    return found


def twice(files: dict[str, str]) -> list[str]:
    return sorted(
        f"{kind} {name}: {', '.join(where)}"
        for (kind, name), where in definitions(files).items()
        if len(where) > 1
    )


def schema_files() -> dict[str, str]:
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(SCHEMAS.glob("*.sql"))}
    assert files, f"no schema files in {SCHEMAS}"
    return files


def test_every_object_is_defined_once() -> None:
    assert twice(schema_files()) == []


def test_the_schemas_define_the_ledger() -> None:
    kinds = Counter(kind for kind, _ in definitions(schema_files()))
    # the counts of the ledger as it is: a file that goes missing shows here
    assert kinds["function"] >= 70
    assert kinds["table"] == 36
    assert kinds["policy"] == 13
    assert {"type", "view", "index", "trigger"} <= kinds.keys()


def test_a_second_definition_is_found() -> None:
    files = {
        "30_accounts.sql": "create function credit_private.lock_account(p text)\n",
        "40_debit.sql": (
            "create or replace function credit_private.lock_account(p text)\n"
            "create policy read_own on public.a\ncreate policy read_own on public.b\n"
            "create table public.credit_x (\n"
        ),
        "50_holds.sql": "CREATE TABLE public.credit_x (\n",
    }
    assert twice(files) == [
        "function credit_private.lock_account: 30_accounts.sql, 40_debit.sql",
        "table public.credit_x: 40_debit.sql, 50_holds.sql",
    ]
