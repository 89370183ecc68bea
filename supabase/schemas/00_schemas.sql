-- ducto: the ledger as it is now. The files of this folder, applied in the order of their
-- names to a database with Supabase's roles and auth schema, build the same ledger as the
-- migrations in supabase/migrations/ (tests/integration/test_schemas.py compares both).
-- Read the ledger here; change it here, and add the migration that brings the last release
-- to the new state (docs/ledger.md, "Changing the ledger").
--
-- Every object ducto owns in `public` carries the prefix `credit_`; PostgREST exposes them.
-- Internal helpers live in the schema `credit_private`, which PostgREST does not expose.
--
--   00_schemas         the schemas
--   10_tables          tables, their row checks, indexes, comments, row-level security
--   12_types           the RPCs' result types
--   20_checks          the clock, errors and argument checks
--   30_accounts        account locks, the journal writer, the balance
--   40_debit           grants, expiry, the debit and the one-call deduct
--   41_events          the events outbox, balance alerts, endpoints and deliveries
--   45_idempotency     replays of keyed operations
--   50_holds           reservations: hold, settle, release
--   55_refunds         refunds, back to the grants a charge drew from
--   60_pricing         pricing configs, the cost function, priced charges
--   70_plans           plans, features, periodic allowances
--   75_teams           teams, their pools and members
--   80_analytics       spend over time windows
--   85_statements      a balance at an instant, a user's statement of a window
--   86_export          the journal rows of a window, page by page
--   90_sweep_verify    the expiry sweep and the invariants check
--   99_schema_version  the schema version the migrations reach
--
-- The RPCs (public.credit_*) are called by every client: psycopg, PostgREST, edge functions.
-- Write RPCs are SECURITY DEFINER because no API role may write a ledger table directly,
-- not even service_role: the function must run as its owner to write. They live in
-- `public` because PostgREST calls them there, pin search_path = '' and qualify every
-- name, and only service_role may execute them, so splinter's lints 0028/0029 (a definer
-- function executable by anon/authenticated) cannot fire. Read RPCs are SECURITY INVOKER
-- and rely on row-level security.
--
-- Errors (SQLSTATE; through PostgREST an HTTP status by meaning, chosen in
-- credit_private.fail; detail is JSON); the pricing, plan and team errors are listed in
-- their files:
--   DC001 invalid amount        DC002 invalid user id       DC003 invalid metadata
--   DC004 invalid idem. key     DC005 invalid expiry        DC006 invalid argument
--   DC008 the balance would pass the largest balance, 2^53 - 1
--   DC010 insufficient credits  DC020 idempotency conflict
--   DC030 transaction not found DC031 reservation not found
--   DC040 reservation not active (released or settled)
--   DC041 reservation already settled with another amount
--   DC042 a settle beyond its hold's overage bound
--   DC050 refund exceeds what is refundable
--   DC051 transaction not refundable
--   DC900 journal is append-only
--
-- Locking rule, which keeps every operation free of deadlocks: an operation locks exactly
-- one account row (FOR UPDATE) before it reads or writes anything of that account; the
-- sweep locks accounts one at a time in id order.

create schema if not exists credit_private;
revoke all on schema credit_private from public;
grant usage on schema credit_private to authenticated, service_role;
comment on schema credit_private is
'ducto internals, called by the credit_* RPCs; not exposed through PostgREST.';
