"""The TypeScript types of the RPCs stay in step with the SQL.

``supabase/functions/_shared/database.types.ts`` is generated from ``pg_catalog`` by
``scripts/db_types.py``; the edge functions, the supabase-js example and the Deno tests
import it, and ``deno check`` type-checks them against it. Here:

- regenerating it from the stack's database (the migrations, applied by
  ``supabase db push``) gives the committed file byte for byte;
- the generator maps what the catalog says (argument defaults, nullability, composite
  and set-returning results, foreign keys, a result type's ``@notNull`` comment) and
  refuses what it cannot type, checked on a throw-away database of probe objects;
- the result fields it types as never null are those the Python results (``ducto.models``,
  ``ducto.pricing``) declare without ``None``: one contract for both clients.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from ducto import models, pricing

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "db_types.py"


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_committed_types_match_the_migrations(database_url: str) -> None:
    result = generate("--check", "--url", database_url)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def probe_url(database_url: str) -> Iterator[str]:
    """An empty database of its own, dropped afterwards."""
    name = f"ducto_types_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {} template template0").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


PROBE_SQL = """
create table public.credit_probe_parent (id bigint primary key);
create table public.credit_probe (
    id uuid primary key,
    parent_id bigint not null unique references public.credit_probe_parent (id),
    note text,
    tags text[] not null,
    data jsonb
);
create table public.not_ducto (id int);
create type public.credit_probe_result as (n bigint, ok boolean);
create function public.credit_probe_fn(p_a text, p_b numeric default 1, p_c jsonb default '{}')
returns public.credit_probe_result language sql as $$ select 1::bigint, true $$;
create function public.credit_probe_set()
returns setof public.credit_probe_result language sql as $$ select 1::bigint, true $$;
create function public.credit_probe_void(p_x integer[]) returns void language sql as '';
create type public.credit_probe_filled as (n bigint, note text, ok boolean);
comment on type public.credit_probe_filled is 'A probe''s answer.
@notNull n, ok';
"""


def test_generator_types_what_the_catalog_says(probe_url: str) -> None:
    with psycopg.connect(probe_url, autocommit=True) as conn:
        conn.execute(PROBE_SQL)
    result = generate("--url", probe_url)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    expected = [
        # a table: nullability from NOT NULL, arrays, json; no write types
        """      credit_probe: {
        Row: {
          id: string;
          parent_id: number;
          note: string | null;
          tags: string[];
          data: Json | null;
        };
        Insert: { [_ in never]: never };
        Update: { [_ in never]: never };
        Relationships: [
          {
            foreignKeyName: "credit_probe_parent_id_fkey";
            columns: ["parent_id"];
            isOneToOne: true;
            referencedRelation: "credit_probe_parent";
            referencedColumns: ["id"];
          },
        ];
      };""",
        # arguments with a default are optional; a composite result is referenced
        """      credit_probe_fn: {
        Args: {
          p_a: string;
          p_b?: number;
          p_c?: Json;
        };
        Returns: Database["public"]["CompositeTypes"]["credit_probe_result"];
      };""",
        """      credit_probe_set: {
        Args: never;
        Returns: Database["public"]["CompositeTypes"]["credit_probe_result"][];
      };""",
        """      credit_probe_void: {
        Args: {
          p_x: number[];
        };
        Returns: undefined;
      };""",
        # no @notNull comment: every field may be null
        """      credit_probe_result: {
        n: number | null;
        ok: boolean | null;
      };""",
        # the fields its comment's @notNull line names are never null
        """      credit_probe_filled: {
        n: number;
        note: string | null;
        ok: boolean;
      };""",
    ]
    for part in expected:
        assert part in text, f"missing:\n{part}\n--- in ---\n{text}"
    assert "not_ducto" not in text


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        (
            "create function public.credit_probe(p_at point) returns text language sql"
            " as $$ select 'x' $$",
            "no TypeScript type for pg_catalog.point",
        ),
        (
            "create function public.credit_probe(p_a text) returns text language sql"
            " as $$ select p_a $$;"
            "create function public.credit_probe(p_a int) returns text language sql"
            " as $$ select 'x' $$",
            "credit_probe is overloaded",
        ),
        (
            "create function public.credit_probe(text) returns text language sql"
            " as $$ select 'x' $$",
            "credit_probe has an unnamed argument",
        ),
        (
            "create type public.credit_probe as (n bigint);"
            "comment on type public.credit_probe is '@notNull n, m'",
            "credit_probe has no field m",
        ),
    ],
)
def test_generator_refuses_what_it_cannot_type(probe_url: str, ddl: str, message: str) -> None:
    with psycopg.connect(probe_url, autocommit=True) as conn:
        conn.execute(ddl)
    result = generate("--url", probe_url)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def load_generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("db_types", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


#: each SQL result type and the Python result built from it
PYTHON_RESULTS: dict[str, type[object]] = {
    "credit_add_result": models.AddCreditsResult,
    "credit_allowance_result": models.AllowanceResult,
    "credit_balance_at_result": models.BalanceAtResult,
    "credit_balance_result": models.BalanceResult,
    "credit_cost_result": pricing.CostResult,
    "credit_daily_spend_row": models.DailySpendRow,
    "credit_event_delivery_claim": models.EventDeliveryClaim,
    "credit_event_endpoint_row": models.EventEndpoint,
    "credit_journal_row": models.JournalRow,
    "credit_deduct_result": models.DeductionResult,
    "credit_feature_result": models.CheckFeatureResult,
    "credit_checkpoint_result": models.CheckpointResult,
    "credit_ledger_issue": models.LedgerIssue,
    "credit_partition": models.PartitionRow,
    "credit_model_spend_row": models.SpendByModelRow,
    "credit_plan_result": models.PlanResult,
    "credit_pricing_version": pricing.PricingVersion,
    "credit_refund_result": models.RefundResult,
    "credit_release_result": models.ReleaseResult,
    "credit_reserve_result": models.ReserveResult,
    "credit_statement_result": models.StatementResult,
    "credit_limits_result": models.LimitsResult,
    "credit_auto_topup_row": models.AutoTopupRule,
    "credit_topup_request_row": models.TopupRequest,
    "credit_stats_result": models.AggregateStatsRow,
    "credit_sweep_result": models.SweepResult,
    "credit_team_deduct_result": models.TeamDeductionResult,
    "credit_team_member_result": models.TeamMemberResult,
    "credit_team_result": models.TeamResult,
    "credit_top_user_row": models.TopUserRow,
    "credit_user_plan_result": models.GetUserPlanResult,
    "credit_user_spend_row": models.SpendByUserRow,
    "credit_void_result": models.VoidResult,
}

#: results only the Stripe webhook reads (docs/stripe.md): no Python call returns them
WEBHOOK_ONLY = {
    "credit_stripe_clawback_result",
    "credit_stripe_invoice_result",
    "credit_stripe_subscription_result",
}

#: where the TypeScript type is stricter than the Python one, and why
STRICTER_IN_SQL = {
    # a PricingEngine built from a config never published has no version; the database
    # always prices with a published one
    ("credit_cost_result", "pricing_version"),
}


def test_never_null_fields_are_those_python_declares_without_none(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        # what the generator uses: the types' @notNull comments
        not_null: dict[str, frozenset[str]] = load_generator().not_null_fields(conn)
        composite = {
            name
            for (name,) in conn.execute(
                "select typname from pg_type join pg_class on pg_class.oid = typrelid"
                " where typnamespace = 'public'::regnamespace and relkind = 'c'"
                " and starts_with(typname, 'credit_')"
            )
        }
    assert set(not_null) == composite == set(PYTHON_RESULTS) | WEBHOOK_ONLY
    for name, cls in PYTHON_RESULTS.items():
        hints = {f.name: f.type for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        # ``Any`` (a feature's JSON value) may be None: JSON's null
        never_none = {f for f, hint in hints.items() if "None" not in str(hint) and hint != "Any"}
        assert never_none | {f for t, f in STRICTER_IN_SQL if t == name} == not_null[name], name
