"""TypeScript types of ducto's database, generated from the catalog.

Writes ``supabase/functions/_shared/database.types.ts``: a ``Database`` type in the
shape ``supabase gen types typescript`` produces, so ``createClient<Database>()``
types every ``.rpc()`` and ``.from()`` call, and the edge functions, the JS
example and the tests share one declaration of each RPC's arguments and result.
Nothing is copied by hand: the tables, functions and composite types come from
``pg_catalog`` (every ``credit_*`` object in ``public``), and the test suite
regenerates the file and fails when it differs (``tests/integration/test_db_types.py``).

Nullability: a table column is ``T | null`` unless it is NOT NULL. A composite type's
attributes cannot be NOT NULL in PostgreSQL, so a result type says which of its fields
the functions always fill with a ``@notNull`` line in its comment::

    comment on type public.credit_balance_result is 'A user''s balance, the credits held
    and what is available.
    @notNull user_id, balance, held, available';

Every other field is ``T | null``; a test holds the comments to the Python results
(``tests/integration/test_db_types.py``).

Usage (against a database with the migrations, e.g. the local stack)::

    .venv/bin/python scripts/db_types.py --write     # rewrite the file
    .venv/bin/python scripts/db_types.py --check     # exit 1 when it is stale
    .venv/bin/python scripts/db_types.py             # print to stdout

The database is ``--url`` or ``$DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

OUTPUT = Path(__file__).resolve().parent.parent / "supabase/functions/_shared/database.types.ts"

# How PostgREST answers each PostgreSQL type in JSON. bigint and numeric arrive as JSON
# numbers; ducto keeps every amount within 2^53 - 1, which a JS number holds exactly.
SCALARS = {
    "bool": "boolean",
    "int2": "number",
    "int4": "number",
    "int8": "number",
    "float4": "number",
    "float8": "number",
    "numeric": "number",
    "json": "Json",
    "jsonb": "Json",
    "text": "string",
    "varchar": "string",
    "bpchar": "string",
    "uuid": "string",
    "date": "string",
    "timestamp": "string",
    "timestamptz": "string",
    "interval": "string",
}

#: the line of a composite type's comment that names its fields never null
NOT_NULL_TAG = re.compile(r"^@notNull\s+(?P<fields>.*)$", re.M)

OBJECTS = "n.nspname = 'public' and starts_with({name}, 'credit_')"

TYPES_SQL = """
select t.oid, t.typname, t.typtype, t.typelem, n.nspname, coalesce(c.relkind, '')
from pg_catalog.pg_type as t
join pg_catalog.pg_namespace as n on n.oid = t.typnamespace
left join pg_catalog.pg_class as c on c.oid = t.typrelid
"""

COLUMNS_SQL = f"""
select c.relname, a.attname, a.atttypid, a.attnotnull
from pg_catalog.pg_class as c
join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
join pg_catalog.pg_attribute as a on a.attrelid = c.oid
where {OBJECTS.format(name="c.relname")} and c.relkind = any(%s)
  and a.attnum > 0 and not a.attisdropped
order by c.relname, a.attnum
"""

COMPOSITE_COMMENTS_SQL = f"""
select c.relname, coalesce(pg_catalog.obj_description(c.reltype, 'pg_type'), '')
from pg_catalog.pg_class as c
join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
where {OBJECTS.format(name="c.relname")} and c.relkind = 'c'
"""

FOREIGN_KEYS_SQL = f"""
select
    c.relname,
    k.conname,
    array(select a.attname from unnest(k.conkey) with ordinality as u (num, i)
          join pg_catalog.pg_attribute as a on a.attrelid = k.conrelid and a.attnum = u.num
          order by u.i)::text[],
    exists (
        select from pg_catalog.pg_constraint as u
        where u.conrelid = k.conrelid and u.contype in ('p', 'u')
          and u.conkey::int2[] @> k.conkey::int2[] and u.conkey::int2[] <@ k.conkey::int2[]
    ),
    r.relname,
    array(select a.attname from unnest(k.confkey) with ordinality as u (num, i)
          join pg_catalog.pg_attribute as a on a.attrelid = k.confrelid and a.attnum = u.num
          order by u.i)::text[]
from pg_catalog.pg_constraint as k
join pg_catalog.pg_class as c on c.oid = k.conrelid
join pg_catalog.pg_namespace as n on n.oid = c.relnamespace
join pg_catalog.pg_class as r on r.oid = k.confrelid
where {OBJECTS.format(name="c.relname")} and k.contype = 'f'
  -- a foreign key to a partitioned table, not its copy for each partition
  and k.conparentid = 0
order by c.relname, k.conname
"""

FUNCTIONS_SQL = f"""
select
    p.proname,
    coalesce(p.proargnames, '{{}}')::text[],
    coalesce(p.proallargtypes, p.proargtypes::oid[])::oid[],
    coalesce(p.proargmodes, '{{}}')::text[],
    p.pronargs,
    p.pronargdefaults,
    p.prorettype,
    p.proretset
from pg_catalog.pg_proc as p
join pg_catalog.pg_namespace as n on n.oid = p.pronamespace
where {OBJECTS.format(name="p.proname")} and p.prokind = 'f'
order by p.proname
"""


@dataclass(frozen=True)
class PgType:
    name: str
    kind: str  # pg_type.typtype: b(ase), c(omposite), d(omain), e(num), p(seudo)
    element: int
    schema: str
    relkind: str


class Catalog:
    """The types of one database, to map an oid to its TypeScript type."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.types = {
            oid: PgType(name, kind, element, schema, relkind)
            for oid, name, kind, element, schema, relkind in conn.execute(TYPES_SQL)
        }

    def ts(self, oid: int) -> str:
        pg = self.types[oid]
        if pg.element and pg.name.startswith("_"):
            return f"{self.ts(pg.element)}[]"
        if pg.kind == "c" and pg.schema == "public" and pg.relkind == "c":
            return f'Database["public"]["CompositeTypes"]["{pg.name}"]'
        if pg.kind == "c" and pg.schema == "public" and pg.relkind in ("r", "p"):
            return f'Database["public"]["Tables"]["{pg.name}"]["Row"]'  # a table's row type
        if pg.kind == "p" and pg.name == "void":
            return "undefined"
        if pg.schema == "pg_catalog" and pg.name in SCALARS:
            return SCALARS[pg.name]
        raise SystemExit(f"db_types.py: no TypeScript type for {pg.schema}.{pg.name}")


def block(name: str, lines: Iterable[str], indent: int, suffix: str = ";") -> list[str]:
    """``name: { ...lines }`` at ``indent`` levels, or ``{ [_ in never]: never }`` if empty."""
    pad = "  " * indent
    body = list(lines)
    if not body:
        return [f"{pad}{name}: {{ [_ in never]: never }}{suffix}"]
    return [f"{pad}{name}: {{", *body, f"{pad}}}{suffix}"]


def fields(rows: Iterable[tuple[str, str]], indent: int) -> list[str]:
    pad = "  " * indent
    return [f"{pad}{name}: {ts};" for name, ts in rows]


def not_null_fields(conn: psycopg.Connection[Any]) -> dict[str, frozenset[str]]:
    """Per composite type, the fields its ``@notNull`` comment line names."""
    found: dict[str, frozenset[str]] = {}
    for name, comment in conn.execute(COMPOSITE_COMMENTS_SQL):
        tags = NOT_NULL_TAG.findall(comment)
        if tags:
            found[name] = frozenset(
                field for tag in tags for field in re.split(r"[\s,]+", tag) if field
            )
    return found


def columns(conn: psycopg.Connection[Any], catalog: Catalog, relkind: str) -> dict[str, list[str]]:
    """Per relation of ``relkind``, its ``name: type`` lines (nullable: ``| null``)."""
    found: dict[str, list[tuple[str, str]]] = defaultdict(list)
    # a composite type's attributes cannot be NOT NULL: its comment says
    not_null = not_null_fields(conn) if relkind == "c" else {}
    # a table: plain or partitioned (the journal and the draws)
    kinds = ["r", "p"] if relkind == "r" else [relkind]
    for relation, column, oid, notnull in conn.execute(COLUMNS_SQL, (kinds,)):
        if relkind == "c":
            notnull = column in not_null.get(relation, ())
        nullable = "" if notnull else " | null"
        found[relation].append((column, catalog.ts(oid) + nullable))
    for relation, names in not_null.items():
        unknown = sorted(names - {column for column, _ in found.get(relation, [])})
        if relation in found and unknown:
            raise SystemExit(f"db_types.py: {relation} has no field {', '.join(unknown)}")
    indent = 4 if relkind == "c" else 5
    return {relation: fields(rows, indent) for relation, rows in found.items()}


def quoted(names: Iterable[str]) -> str:
    return "[" + ", ".join(f'"{name}"' for name in names) + "]"


def relationships(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for relation, name, cols, one_to_one, target, target_cols in conn.execute(FOREIGN_KEYS_SQL):
        found[relation] += [
            "          {",
            f'            foreignKeyName: "{name}";',
            f"            columns: {quoted(cols)};",
            f"            isOneToOne: {'true' if one_to_one else 'false'};",
            f'            referencedRelation: "{target}";',
            f"            referencedColumns: {quoted(target_cols)};",
            "          },",
        ]
    return found


def tables(conn: psycopg.Connection[Any], catalog: Catalog) -> list[str]:
    rows = columns(conn, catalog, "r")
    links = relationships(conn)
    lines: list[str] = []
    for table in sorted(rows):
        lines += [f"      {table}: {{", *block("Row", rows[table], 4)]
        # No API role may write a ledger table: every write is an RPC.
        lines += [
            "        Insert: { [_ in never]: never };",
            "        Update: { [_ in never]: never };",
        ]
        if links[table]:
            lines += ["        Relationships: [", *links[table], "        ];"]
        else:
            lines.append("        Relationships: [];")
        lines.append("      };")
    return lines


def functions(conn: psycopg.Connection[Any], catalog: Catalog) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for name, arg_names, arg_types, modes, n_in, n_defaults, returns, returns_set in conn.execute(
        FUNCTIONS_SQL
    ):
        if name in seen:
            raise SystemExit(f"db_types.py: {name} is overloaded; give every function one name")
        seen.add(name)
        inputs = [
            (arg_names[i] if i < len(arg_names) else "", oid)
            for i, oid in enumerate(arg_types)
            if not modes or modes[i] in ("i", "b", "v")
        ]
        args = []
        for position, (arg, oid) in enumerate(inputs):
            if not arg:
                raise SystemExit(f"db_types.py: {name} has an unnamed argument")
            optional = "?" if position >= n_in - n_defaults else ""
            args.append((arg + optional, catalog.ts(oid)))
        result = catalog.ts(returns) + ("[]" if returns_set else "")
        lines.append(f"      {name}: {{")
        if args:
            lines += ["        Args: {", *fields(args, 5), "        };"]
        else:
            lines.append("        Args: never;")
        lines += [f"        Returns: {result};", "      };"]
    return lines


def composite_types(conn: psycopg.Connection[Any], catalog: Catalog) -> list[str]:
    rows = columns(conn, catalog, "c")
    lines: list[str] = []
    for name in sorted(rows):
        lines += block(name, rows[name], 3)
    return lines


HEADER = """\
// Generated by scripts/db_types.py from the database catalog. Do not edit: after a
// migration, run `.venv/bin/python scripts/db_types.py --write` against the local stack.
// tests/integration/test_db_types.py fails when this file and the migrations disagree.

export type Json =
  | string
  | number
  | boolean
  | null
  | { [key: string]: Json | undefined }
  | Json[];
"""

FOOTER = """
type PublicSchema = Database["public"];

/** The name of an RPC (a function in `public`). */
export type RpcName = keyof PublicSchema["Functions"];
/** The named arguments of an RPC, as PostgREST takes them (a JSON object). */
export type RpcArgs<F extends RpcName> = PublicSchema["Functions"][F]["Args"];
/** What an RPC answers through PostgREST. */
export type RpcResult<F extends RpcName> = PublicSchema["Functions"][F]["Returns"];
/** A row of a table, as a signed-in user or the service role reads it. */
export type TableRow<T extends keyof PublicSchema["Tables"]> = PublicSchema["Tables"][T]["Row"];
"""


def render(conn: psycopg.Connection[Any]) -> str:
    catalog = Catalog(conn)
    lines = [HEADER, "export type Database = {", "  public: {"]
    lines += block("Tables", tables(conn, catalog), 2)
    lines.append("    Views: { [_ in never]: never };")
    lines += block("Functions", functions(conn, catalog), 2)
    lines.append("    Enums: { [_ in never]: never };")
    lines += block("CompositeTypes", composite_types(conn, catalog), 2)
    lines += ["  };", "};", FOOTER]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {OUTPUT.name}")
    mode.add_argument("--check", action="store_true", help=f"fail when {OUTPUT.name} is stale")
    parser.add_argument("--url", default=os.environ.get("DATABASE_URL"), help="database URL")
    options = parser.parse_args(argv)
    if not options.url:
        parser.error("no database: pass --url or set DATABASE_URL")
    with psycopg.connect(options.url) as conn:
        text = render(conn)
    if options.write:
        OUTPUT.write_text(text, encoding="utf-8")
    elif options.check:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run scripts/db_types.py --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
