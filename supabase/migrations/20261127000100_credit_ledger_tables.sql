-- ducto: the credit ledger's tables, result types, row-level security and grants.
--
-- Every object ducto owns in `public` carries the prefix `credit_`. Internal helpers
-- live in the schema `credit_private`, which PostgREST does not expose.
--
-- Model (docs/ledger.md explains it in full):
--   credit_accounts       one row per user: the lock point and the running balance
--   credit_transactions   the journal, append-only: every change of a balance is one row
--   credit_grants         buckets of credits with a remaining amount, priority and expiry
--   credit_grant_draws    which grants (or debt) paid for which journal row
--   credit_reservations   holds on credits for operations whose cost is not known yet
--   credit_idempotency_keys  the first result of every keyed operation, per account
--
-- Invariants, checked by credit_verify_ledger():
--   balance = sum(journal amounts) = sum(grant remaining) - debt
--   grant remaining = grant amount - sum(draws on that grant)
--   debt = sum(draws without a grant) >= 0

-- ---------------------------------------------------------------- schemas

create schema if not exists credit_private;
revoke all on schema credit_private from public;
comment on schema credit_private is
'ducto internals, called by the credit_* RPCs; not exposed through PostgREST.';

-- ---------------------------------------------------------------- tables

create table public.credit_accounts (
    id bigint generated always as identity primary key,
    user_id text not null unique,
    balance bigint not null default 0,
    debt bigint not null default 0 check (debt >= 0),
    version bigint not null default 0 check (version >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
comment on table public.credit_accounts is
'One credit account per user. Every ledger operation locks its account row first.';
comment on column public.credit_accounts.balance is
'Sum of the account''s journal = sum of its grants'' remaining credits - debt.';
comment on column public.credit_accounts.debt is
'Usage recorded beyond what grants could pay (a settle overage); new credits pay it first.';
comment on column public.credit_accounts.version is
'Number of journal rows of the account; the seq of its newest row.';

create table public.credit_transactions (
    id uuid primary key default gen_random_uuid(),
    account_id bigint not null references public.credit_accounts (id),
    seq bigint not null check (seq > 0),
    user_id text not null,
    type text not null,
    amount bigint not null,
    balance_after bigint not null,
    grant_id uuid,
    reservation_id uuid,
    refund_of uuid references public.credit_transactions (id),
    idempotency_key text,
    metadata jsonb not null default '{}',
    created_at timestamptz not null,
    unique (account_id, seq),
    -- credits carry a positive amount, debits a negative one
    check (
        (type in ('grant', 'purchase', 'adjustment', 'promotion', 'refund') and amount > 0)
        or (type in ('usage', 'fixed_job', 'capture', 'expiry') and amount < 0)
    ),
    check ((type = 'refund') = (refund_of is not null)),
    check ((type = 'capture') = (reservation_id is not null)),
    check (jsonb_typeof(metadata) = 'object')
);
comment on table public.credit_transactions is
'The journal. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE.';
comment on column public.credit_transactions.seq is
'1..n per account, in commit order of the account (each operation holds the account lock).';
comment on column public.credit_transactions.grant_id is
'For credits: the grant they created. For expiry: the grant that expired.';

create index credit_transactions_user_time_idx
on public.credit_transactions (user_id, created_at);
-- the journal is appended in time order: a BRIN index serves time windows for a fraction
-- of a B-tree's upkeep on every insert
create index credit_transactions_time_idx on public.credit_transactions
using brin (created_at);
create index credit_transactions_refund_of_idx
on public.credit_transactions (refund_of) where refund_of is not null;

create table public.credit_grants (
    id uuid primary key default gen_random_uuid(),
    account_id bigint not null references public.credit_accounts (id),
    user_id text not null,
    transaction_id uuid not null references public.credit_transactions (id),
    category text not null check (category in ('paid', 'promotional')),
    priority integer not null check (priority between 0 and 100),
    amount bigint not null check (amount > 0),
    remaining bigint not null,
    expires_at timestamptz check (expires_at < 'infinity'),
    created_at timestamptz not null,
    check (remaining between 0 and amount)
);
comment on table public.credit_grants is
'Buckets of credits. Spending draws by priority (lower first), then soonest expiry, then oldest.'
' A grant is never spent at or after expires_at.';

-- spendable grants of an account, in burn-down order
create index credit_grants_burn_idx
on public.credit_grants (account_id, priority, expires_at, created_at, id)
where remaining > 0;
-- grants waiting for expiry, for the sweep
create index credit_grants_expiry_idx
on public.credit_grants (expires_at)
where remaining > 0 and expires_at is not null;
create index credit_grants_transaction_idx on public.credit_grants (transaction_id);

-- A credit row is written before the grant it creates, so this check waits for commit.
alter table public.credit_transactions
add constraint credit_transactions_grant_fk foreign key (grant_id)
references public.credit_grants (id) deferrable initially deferred;

create table public.credit_grant_draws (
    id bigint generated always as identity primary key,
    transaction_id uuid not null references public.credit_transactions (id),
    grant_id uuid references public.credit_grants (id),
    amount bigint not null check (amount <> 0)
);
comment on table public.credit_grant_draws is
'Allocation of journal rows to grants: positive = taken from the grant (or debt when grant_id'
' is null), negative = given back by a refund. Append-only.';

create index credit_grant_draws_transaction_idx
on public.credit_grant_draws (transaction_id);
create index credit_grant_draws_grant_idx on public.credit_grant_draws (grant_id);

create table public.credit_reservations (
    id uuid primary key default gen_random_uuid(),
    account_id bigint not null references public.credit_accounts (id),
    user_id text not null,
    amount bigint not null check (amount > 0),
    operation_type text not null,
    status text not null default 'active'
    check (status in ('active', 'settled', 'released', 'expired')),
    metadata jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
    expires_at timestamptz not null,
    created_at timestamptz not null,
    resolved_at timestamptz,
    settled_amount bigint check (settled_amount >= 0),
    transaction_id uuid references public.credit_transactions (id),
    result jsonb,
    check ((status = 'active') = (resolved_at is null)),
    check ((status = 'settled') = (settled_amount is not null))
);
comment on table public.credit_reservations is
'Holds. An active hold counts against available credits until expires_at; the sweep marks'
' timed-out holds expired.';
comment on column public.credit_reservations.result is
'The result returned when the hold was settled or released, returned again on a replay.';

alter table public.credit_transactions
add constraint credit_transactions_reservation_fk foreign key (reservation_id)
references public.credit_reservations (id);
create index credit_transactions_reservation_idx
on public.credit_transactions (reservation_id) where reservation_id is not null;

create index credit_reservations_active_idx
on public.credit_reservations (account_id, expires_at) where status = 'active';
create index credit_reservations_timeout_idx
on public.credit_reservations (expires_at) where status = 'active';

create table public.credit_idempotency_keys (
    account_id bigint not null references public.credit_accounts (id),
    idempotency_key text not null,
    operation text not null,
    request jsonb not null,
    result jsonb not null,
    created_at timestamptz not null,
    primary key (account_id, idempotency_key)
);
comment on table public.credit_idempotency_keys is
'The first result of each keyed operation. Keys are unique per account and never expire.';

-- ---------------------------------------------------------------- journal immutability

create function credit_private.refuse_journal_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    raise exception 'the credit journal is append-only: % on % is not allowed',
        tg_op, tg_table_name
        using errcode = 'DC900';
end;
$$;

create trigger credit_transactions_append_only
before update or delete on public.credit_transactions
for each row execute function credit_private.refuse_journal_change();

create trigger credit_transactions_no_truncate
before truncate on public.credit_transactions
for each statement execute function credit_private.refuse_journal_change();

create trigger credit_grant_draws_append_only
before update or delete on public.credit_grant_draws
for each row execute function credit_private.refuse_journal_change();

create trigger credit_grant_draws_no_truncate
before truncate on public.credit_grant_draws
for each statement execute function credit_private.refuse_journal_change();

-- ---------------------------------------------------------------- result types

create type public.credit_add_result as (
    transaction_id uuid,
    grant_id uuid,
    user_id text,
    amount bigint,
    tx_type text,
    category text,
    priority integer,
    expires_at timestamptz,
    balance_after bigint,
    created_at timestamptz,
    is_replay boolean
);

create type public.credit_reserve_result as (
    reservation_id uuid,
    user_id text,
    amount bigint,
    operation_type text,
    expires_at timestamptz,
    available_after bigint,
    created_at timestamptz,
    is_replay boolean
);

create type public.credit_deduct_result as (
    transaction_id uuid,
    reservation_id uuid,
    user_id text,
    amount bigint,
    overage bigint,
    balance_after bigint,
    available_after bigint,
    created_at timestamptz,
    is_replay boolean
);

create type public.credit_release_result as (
    reservation_id uuid,
    user_id text,
    amount bigint,
    status text,
    available_after bigint,
    is_replay boolean
);

create type public.credit_refund_result as (
    transaction_id uuid,
    refunded_transaction_id uuid,
    user_id text,
    amount bigint,
    total_refunded bigint,
    refundable_remaining bigint,
    balance_after bigint,
    created_at timestamptz,
    is_replay boolean
);

create type public.credit_balance_result as (
    user_id text,
    balance bigint,
    held bigint,
    available bigint
);

create type public.credit_sweep_result as (
    dry_run boolean,
    accounts integer,
    expired_grants integer,
    expired_amount bigint,
    expired_holds integer,
    expired_hold_amount bigint
);

create type public.credit_ledger_issue as (
    account_id bigint,
    user_id text,
    check_name text,
    expected text,
    actual text
);

-- ---------------------------------------------------------------- row-level security

alter table public.credit_accounts enable row level security;
alter table public.credit_transactions enable row level security;
alter table public.credit_grants enable row level security;
alter table public.credit_grant_draws enable row level security;
alter table public.credit_reservations enable row level security;
alter table public.credit_idempotency_keys enable row level security;

-- A signed-in user reads their own rows; nobody but the RPCs writes.
create policy credit_accounts_read_own on public.credit_accounts
for select to authenticated
using (user_id = (select auth.uid())::text);

create policy credit_transactions_read_own on public.credit_transactions
for select to authenticated
using (user_id = (select auth.uid())::text);

create policy credit_grants_read_own on public.credit_grants
for select to authenticated
using (user_id = (select auth.uid())::text);

create policy credit_reservations_read_own on public.credit_reservations
for select to authenticated
using (user_id = (select auth.uid())::text);

-- credit_grant_draws and credit_idempotency_keys: no policy, so no API role but
-- service_role (BYPASSRLS) reads them.

-- ---------------------------------------------------------------- grants

-- Explicit per object, so the result is the same whether the project grants new
-- objects to the API roles by default or not.
revoke all on table
public.credit_accounts,
public.credit_transactions,
public.credit_grants,
public.credit_grant_draws,
public.credit_reservations,
public.credit_idempotency_keys
from public, anon, authenticated, service_role;

revoke all on sequence
public.credit_accounts_id_seq,
public.credit_grant_draws_id_seq
from public, anon, authenticated, service_role;

grant select on table
public.credit_accounts,
public.credit_transactions,
public.credit_grants,
public.credit_reservations
to authenticated, service_role;

grant select on table
public.credit_grant_draws,
public.credit_idempotency_keys
to service_role;

revoke all on function credit_private.refuse_journal_change()
from public, anon, authenticated, service_role;
