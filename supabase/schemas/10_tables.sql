-- ducto: the ledger's tables, each with its row checks, indexes, comments and row-level
-- security, and who may read it. No API role writes a table: every write goes through an
-- RPC. Privileges are explicit per object, so the result is the same whether the project
-- grants new objects to the API roles by default or not.
--
--   credit_accounts          one row per user (and per team pool): the lock point and the
--                            running balance
--   credit_transactions      the journal, append-only: every change of a balance is one row
--   credit_grants            buckets of credits with a remaining amount, priority and expiry
--   credit_grant_draws       which grants (or debt) paid for which journal row
--   credit_reservations      holds on credits for operations whose cost is not known yet
--   credit_idempotency_keys  the first result of every keyed operation, per account
--   credit_pricing_config    every published pricing config; the newest is the active one
--   credit_plans, credit_user_plans, credit_allowance_grants   plans and allowances
--   credit_teams, credit_team_members                          teams and their pools
--
-- Invariants, checked by credit_verify_ledger():
--   balance = sum(journal amounts) = sum(grant remaining) - debt
--   grant remaining = grant amount - sum(draws on that grant)
--   debt = sum(draws without a grant) >= 0
--   a scoped grant pays only for charges its scope matches (43_scopes.sql)
--
-- Keys, for a ledger distributed by account (docs/operations.md, "Scaling"): every table
-- that holds an account's state carries account_id, and every primary key, unique
-- constraint and foreign key between such tables includes it. A uuid key leads with the
-- id, which is time-ordered (uuid_v7), so lookups by id alone use it and appends land at
-- its right edge. tests/sql/36_distribution_keys.sql enforces the rule on the catalog.

-- ---------------------------------------------------------------- ids

-- Time-ordered ids for the ledger's uuid keys and the events' cursor.
create sequence credit_private.event_seq;
revoke all on sequence credit_private.event_seq from public, anon, authenticated, service_role;

-- A journal row's id carries its created_at (append_transaction passes it), so the month
-- of a row can be read from its id.
create function credit_private.uuid_v7(p_at timestamptz default clock_timestamp())
returns uuid
language plpgsql
volatile
set search_path = ''
as $$
declare
    -- 15 hex digits of a sequence: ids of one millisecond sort in the order they were taken
    v_seq text := lpad(to_hex(nextval('credit_private.event_seq')), 15, '0');
begin
    -- a UUIDv7: the Unix time in milliseconds (48 bits), version 7, the sequence around
    -- the variant bits (10), 12 random bits; ids sort in the order they were made
    return (
        lpad(to_hex(floor(extract(epoch from p_at) * 1000)::bigint), 12, '0')
        || '7' || substr(v_seq, 1, 3) || '8' || substr(v_seq, 4, 12)
        || lpad(to_hex(floor(random() * 4096)::integer), 3, '0')
    )::uuid;
end;
$$;
revoke all on function credit_private.uuid_v7(timestamptz)
from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- row checks

-- The journal's and the grants' rules are one CHECK per table, each a call of an
-- immutable function below. PostgreSQL reads a CHECK expression back from its stored form
-- and plans it again in every statement that writes the table: one call is one node to
-- plan, and the function's own expressions are compiled once per session.
-- tests/sql/25_row_checks.sql breaks each rule.

create function credit_private.journal_row_ok(
    p_type text,
    p_amount bigint,
    p_seq bigint,
    p_refund_of uuid,
    p_reservation_id uuid,
    p_metadata jsonb,
    p_usage jsonb,
    p_model text,
    p_pricing_version bigint,
    p_job_name text,
    p_idempotency_key text,
    p_request_hash uuid,
    p_available_after bigint,
    p_id uuid,
    p_created_at timestamptz
)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
    -- the journal's row rules, one per line
    return p_seq > 0
        -- credits carry a positive amount, debits a negative one
        and (
            (p_type in ('grant', 'purchase', 'adjustment', 'promotion', 'refund') and p_amount > 0)
            or (p_type in ('usage', 'fixed_job', 'capture', 'expiry', 'void') and p_amount < 0)
        )
        -- a refund, and only a refund, names the row it refunds
        and (p_type = 'refund') = (p_refund_of is not null)
        -- a capture, and only a capture, names its hold
        and (p_type = 'capture') = (p_reservation_id is not null)
        and jsonb_typeof(p_metadata) = 'object'
        -- usage only on a priced usage or capture row, and model is the usage's model
        and (p_usage is null or (p_type in ('usage', 'capture') and p_pricing_version is not null))
        and (p_model is not distinct from p_usage ->> 'model')
        -- a job name on a priced fixed-job row, and nowhere else
        and ((p_job_name is not null) = (p_type = 'fixed_job' and p_pricing_version is not null))
        -- what was available after a one-call debit or team charge
        and (p_available_after is null or p_type in ('usage', 'fixed_job'))
        -- a key record only on a keyed one-call debit, with what its replay returns
        and (p_request_hash is null or (
            p_idempotency_key is not null and p_available_after is not null
        ))
        -- the id carries the millisecond of created_at: a row is in the partition of its
        -- month, and a window of time is a range of ids
        and left(p_id::text, 8) || substr(p_id::text, 10, 4)
        = lpad(to_hex(floor(extract(epoch from p_created_at) * 1000)::bigint), 12, '0');
end;
$$;
revoke all on function credit_private.journal_row_ok(
    text, bigint, bigint, uuid, uuid, jsonb, jsonb, text, bigint, text, text, uuid, bigint, uuid,
    timestamptz
) from public, anon, authenticated, service_role;

create function credit_private.grant_row_ok(
    p_category text,
    p_priority integer,
    p_amount bigint,
    p_remaining bigint,
    p_expires_at timestamptz
)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
    return p_category in ('paid', 'promotional')
        and p_priority between 0 and 100
        and p_amount > 0
        and p_remaining between 0 and p_amount
        and p_expires_at < 'infinity';
end;
$$;
revoke all on function credit_private.grant_row_ok(
    text, integer, bigint, bigint, timestamptz
) from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- append-only

create function credit_private.refuse_journal_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- a partition's change names its table (the partitioned one)
    raise exception 'the credit journal is append-only: % on % is not allowed',
        tg_op, coalesce((
            select c.relname from pg_catalog.pg_inherits as i
            inner join pg_catalog.pg_class as c on i.inhparent = c.oid
            where i.inhrelid = tg_relid
        ), tg_table_name)
        using errcode = 'DC900';
end;
$$;
revoke all on function credit_private.refuse_journal_change()
from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- accounts

create table public.credit_accounts (
    id bigint generated always as identity primary key,
    user_id text not null unique,
    balance bigint not null default 0,
    debt bigint not null default 0 check (debt >= 0),
    version bigint not null default 0 check (version >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    features smallint not null default 0 check (features between 0 and 15)
);
comment on table public.credit_accounts is
'One credit account per user. Every ledger operation locks its account row first.';
comment on column public.credit_accounts.balance is
'Sum of the account''s journal = sum of its grants'' remaining credits - debt.';
comment on column public.credit_accounts.debt is
'Usage recorded beyond what grants could pay (a settle overage); new credits pay it first.';
comment on column public.credit_accounts.version is
'Number of journal rows of the account; the seq of its newest row.';
comment on column public.credit_accounts.features is
'Bits of the features the account uses, read by the debit with the row it locks so that it'
' skips the probes of the others: 1 balance alerts (of the user or of their plan), 2 limits'
' (a credit_account_limits row), 4 scoped credits (a scoped grant, ever), 8 auto top-up (a'
' rule). Kept by every writer of those (credit_private.account_features computes them).';

-- ---------------------------------------------------------------- the journal

create table public.credit_transactions (
    id uuid not null,
    account_id bigint not null references public.credit_accounts (id),
    seq bigint not null,
    user_id text not null,
    type text not null,
    amount bigint not null,
    balance_after bigint not null,
    grant_id uuid,
    reservation_id uuid,
    refund_of uuid,
    idempotency_key text,
    metadata jsonb not null default '{}',
    created_at timestamptz not null,
    pricing_version bigint,
    usage jsonb,
    model text,
    job_name text,
    attributed_user_id text,
    request_hash uuid,
    available_after bigint,
    constraint credit_transactions_pkey primary key (id, account_id),
    -- seq > 0; credits (grant, purchase, adjustment, promotion, refund) carry a positive
    -- amount, debits (usage, fixed_job, capture, expiry) a negative one; a refund and only a
    -- refund names the row it refunds, a capture and only a capture its hold; metadata is a
    -- JSON object; usage only on a priced usage or capture row, model = usage's model; a
    -- job_name on a priced fixed_job row and nowhere else; available_after only on a usage
    -- or fixed_job row; a key record (request_hash) only on a keyed one with available_after;
    -- the id carries created_at's millisecond
    constraint credit_transactions_row_check check (
        credit_private.journal_row_ok(
            type, amount, seq, refund_of, reservation_id, metadata, usage, model,
            pricing_version, job_name, idempotency_key, request_hash, available_after, id,
            created_at
        )
    )
)
-- one partition per month (UTC) of the time in the id, which is created_at
-- (15_partitions.sql)
partition by range (id);
comment on table public.credit_transactions is
'The journal. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE. Partitioned by'
' month of id (the time it carries is created_at). refund_of names a row written before it'
' by credit_refund_transaction, which reads it under the account lock; no foreign key, so'
' a closed month can leave the database (ducto archive).';
comment on column public.credit_transactions.seq is
'1..n per account, in commit order of the account (each operation holds the account lock,'
' which keeps it unique: a partitioned table has no unique key without the partition key).';
comment on column public.credit_transactions.grant_id is
'For credits: the grant they created. For expiry: the grant that expired.';
comment on column public.credit_transactions.pricing_version is
'The pricing version that priced this row (usage, fixed_job, or a capture settled by usage).';
comment on column public.credit_transactions.usage is
'The usage metrics priced, normalised by credit_private.check_usage (the model and every count'
' not at its default of 0, or 1 request): credit_calculate_cost(usage, pricing_version)'
' re-prices the row.';
comment on column public.credit_transactions.model is 'usage->>''model'', for reports by model.';
comment on column public.credit_transactions.job_name is 'The fixed-cost job of a fixed_job row.';
comment on column public.credit_transactions.attributed_user_id is
'The member a team pool''s debit is attributed to (a refund of it inherits it); null on'
' rows of a user''s own account, which are that user''s.';
comment on column public.credit_transactions.request_hash is
'For a keyed one-call debit, which is its own key record: a fingerprint of the request the'
' key names (credit_private.request_hash). A replay must match it.';
comment on column public.credit_transactions.available_after is
'For a one-call debit or a team charge: the credits available after it (a replay returns it'
' again).';
-- No foreign key from pricing_version to credit_pricing_config: versions are never deleted
-- (append-only), and a key check on every charge would lock the one active version row
-- from every session.

-- an account's rows by seq (unique by the account lock, and checked by verification)
create index credit_transactions_seq_idx on public.credit_transactions (account_id, seq);
create index credit_transactions_user_time_idx
on public.credit_transactions (user_id, created_at);
-- the journal is appended in time order: a BRIN index serves time windows for a fraction
-- of a B-tree's upkeep on every insert
create index credit_transactions_time_idx on public.credit_transactions
using brin (created_at);
create index credit_transactions_refund_of_idx
on public.credit_transactions (refund_of) where refund_of is not null;
create index credit_transactions_reservation_idx
on public.credit_transactions (reservation_id) where reservation_id is not null;
-- a member's spend from a pool in a period, read by every team debit with a limit
create index credit_transactions_attribution_idx
on public.credit_transactions (account_id, attributed_user_id, created_at) include (amount)
where attributed_user_id is not null;

create trigger credit_transactions_append_only
before update or delete on public.credit_transactions
for each row execute function credit_private.refuse_journal_change();

create trigger credit_transactions_no_truncate
before truncate on public.credit_transactions
for each statement execute function credit_private.refuse_journal_change();

-- ---------------------------------------------------------------- grants

-- The free space left on each page lets a debit write the grant's new version next to the
-- old one (a HOT update: no new index entries).
create table public.credit_grants (
    id uuid not null default credit_private.uuid_v7(),
    account_id bigint not null references public.credit_accounts (id),
    user_id text not null,
    transaction_id uuid not null,
    category text not null,
    priority integer not null,
    amount bigint not null,
    remaining bigint not null,
    expires_at timestamptz,
    created_at timestamptz not null,
    spendable boolean not null generated always as (remaining > 0) stored,
    -- null: usable for any charge; else the charges it may pay (credit_private.check_scope)
    scope text[] check (scope is null or cardinality(scope) between 1 and 20),
    constraint credit_grants_pkey primary key (id, account_id),
    -- category paid or promotional; priority 0..100; amount > 0;
    -- 0 <= remaining <= amount; expires_at finite (null: never)
    constraint credit_grants_row_check check (
        credit_private.grant_row_ok(category, priority, amount, remaining, expires_at)
    )
)
with (fillfactor = 70);
comment on table public.credit_grants is
'Buckets of credits. Spending draws by priority (lower first), then soonest expiry, then oldest.'
' A grant is never spent at or after expires_at. transaction_id is its journal row, written'
' in the same transaction; no foreign key, so an archived month''s rows can leave.';
comment on column public.credit_grants.scope is
'Null: pays for any charge. Else the sorted, distinct entries model:<glob>, job:<name>,'
' feature:<name>; the grant pays only for charges one entry matches (docs/scopes.md).';
comment on column public.credit_grants.spendable is
'remaining > 0. The indexes of spendable grants use it, not remaining, so a debit that'
' leaves credits in a grant adds no index entry.';

-- spendable grants of an account, in burn-down order
create index credit_grants_burn_idx
on public.credit_grants (account_id, priority, expires_at, created_at, id)
where spendable;
-- grants waiting for expiry, for the sweep
create index credit_grants_expiry_idx
on public.credit_grants (expires_at)
where spendable and expires_at is not null;
create index credit_grants_transaction_idx on public.credit_grants (transaction_id);
-- spendable scoped grants: one probe tells a debit whether the account has any
create index credit_grants_scoped_idx
on public.credit_grants (account_id)
where spendable and scope is not null;

-- A credit row is written before the grant it creates, so this check waits for commit.
alter table public.credit_transactions
add constraint credit_transactions_grant_fk foreign key (account_id, grant_id)
references public.credit_grants (account_id, id) deferrable initially deferred;

create table public.credit_grant_draws (
    id bigint generated always as identity,
    transaction_id uuid not null,
    grant_id uuid,
    amount bigint not null check (amount <> 0),
    account_id bigint not null,
    constraint credit_grant_draws_pkey primary key (id, account_id, transaction_id),
    constraint credit_grant_draws_transaction_id_fkey foreign key (account_id, transaction_id)
    references public.credit_transactions (account_id, id),
    constraint credit_grant_draws_grant_id_fkey foreign key (account_id, grant_id)
    references public.credit_grants (account_id, id)
)
-- by the month of its journal row, in step with the journal (15_partitions.sql)
partition by range (transaction_id);
comment on table public.credit_grant_draws is
'Allocation of journal rows to grants: positive = taken from the grant (or debt when grant_id'
' is null), negative = given back by a refund. Append-only. Partitioned with the journal.';

create index credit_grant_draws_transaction_idx
on public.credit_grant_draws (transaction_id);
create index credit_grant_draws_grant_idx on public.credit_grant_draws (grant_id);

create trigger credit_grant_draws_append_only
before update or delete on public.credit_grant_draws
for each row execute function credit_private.refuse_journal_change();

create trigger credit_grant_draws_no_truncate
before truncate on public.credit_grant_draws
for each statement execute function credit_private.refuse_journal_change();

-- ---------------------------------------------------------------- holds

create table public.credit_reservations (
    id uuid not null default credit_private.uuid_v7(),
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
    transaction_id uuid,
    result jsonb,
    usage jsonb,
    constraint credit_reservations_pkey primary key (id, account_id),
    check ((status = 'active') = (resolved_at is null)),
    check ((status = 'settled') = (settled_amount is not null))
);
comment on table public.credit_reservations is
'Holds. An active hold counts against available credits until expires_at; the sweep marks'
' timed-out holds expired. transaction_id is the capture row, written in the same'
' transaction as the settle; no foreign key, so an archived month''s rows can leave.';
comment on column public.credit_reservations.result is
'The result returned when the hold was settled or released, returned again on a replay.';
comment on column public.credit_reservations.usage is
'The usage a hold was settled with by credit_settle_usage (null when settled by amount).';

alter table public.credit_transactions
add constraint credit_transactions_reservation_fk foreign key (account_id, reservation_id)
references public.credit_reservations (account_id, id);

create index credit_reservations_active_idx
on public.credit_reservations (account_id, expires_at) where status = 'active';
create index credit_reservations_timeout_idx
on public.credit_reservations (expires_at) where status = 'active';

-- ---------------------------------------------------------------- idempotency keys

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
'The first result of each keyed operation but a one-call debit, whose journal row is its key'
' record. Keys are unique per account across both, and never expire.';
-- a refund's key by itself: its replay when the refunded charge was archived, whose row
-- no longer says the account (55_refunds.sql)
create index credit_idempotency_keys_refund_idx
on public.credit_idempotency_keys (idempotency_key) where operation = 'refund_transaction';

-- Where the key of a one-call debit is: the journal is partitioned by month, and a key
-- looked up in it would be probed in every month's partition (find_replay).
create table public.credit_debit_keys (
    account_id bigint not null references public.credit_accounts (id),
    idempotency_key text not null,
    transaction_id uuid not null,
    operation text not null,
    request_hash uuid not null,
    primary key (account_id, idempotency_key)
);
comment on table public.credit_debit_keys is
'The key of each keyed one-call debit: its journal row (which a replay''s result is rebuilt'
' from), its type and the request''s fingerprint. One probe finds a key of any month, and'
' the key stays when its month is archived. Never changed.';

-- ---------------------------------------------------------------- pricing

create table public.credit_pricing_config (
    version bigint generated always as identity primary key,
    label text check (length(label) between 1 and 200),
    config jsonb not null,
    created_at timestamptz not null
);
comment on table public.credit_pricing_config is
'Published pricing configs, append-only. The newest version is the active one.';
comment on column public.credit_pricing_config.config is
'The config as credit_private.check_pricing_config normalised it: every field explicit.';

create trigger credit_pricing_config_append_only
before update or delete on public.credit_pricing_config
for each row execute function credit_private.refuse_journal_change();

create trigger credit_pricing_config_no_truncate
before truncate on public.credit_pricing_config
for each statement execute function credit_private.refuse_journal_change();

-- ---------------------------------------------------------------- plans

create table public.credit_plans (
    id text primary key check (id ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    name text not null check (length(name) between 1 and 200),
    features jsonb not null default '{}' check (jsonb_typeof(features) = 'object'),
    is_default boolean not null default false,
    allowance bigint check (allowance between 1 and 9007199254740991),
    allowance_period text check (allowance_period in ('day', 'week', 'month', 'year')),
    rollover_cap bigint check (rollover_cap between 0 and 9007199254740991),
    created_at timestamptz not null,
    updated_at timestamptz not null,
    credit_line bigint not null default 0 check (credit_line between 0 and 9007199254740991),
    credit_line_grace_seconds integer check (credit_line_grace_seconds > 0),
    check ((allowance is null) = (allowance_period is null)),
    check (rollover_cap is null or allowance is not null),
    -- the allowance job grants to assigned users only; a default plan has nobody to list
    check (not (is_default and allowance is not null))
);
comment on table public.credit_plans is
'Plans: feature entitlements and an optional periodic credit allowance.';
comment on column public.credit_plans.is_default is
'The plan of every user without an assignment; at most one plan is the default.';
comment on column public.credit_plans.rollover_cap is
'Most credits of a period''s unspent allowance carried into the next period (null = none).';
comment on column public.credit_plans.credit_line is
'How far below min_balance its users may go unless their account sets its own'
' (docs/limits.md).';
comment on column public.credit_plans.credit_line_grace_seconds is
'How long its users'' balance may stay below zero before charges needing the line are'
' refused (null = no deadline).';

create unique index credit_plans_one_default_idx on public.credit_plans (is_default)
where is_default;

create table public.credit_user_plans (
    user_id text primary key,
    plan_id text not null references public.credit_plans (id),
    assigned_at timestamptz not null
);
comment on table public.credit_user_plans is
'The plan assigned to each user. Users without a row are on the default plan, if any.';

create index credit_user_plans_plan_idx on public.credit_user_plans (plan_id);

create table public.credit_allowance_grants (
    account_id bigint not null references public.credit_accounts (id),
    period text not null,
    period_start timestamptz not null,
    plan_id text not null,
    grant_id uuid not null,
    allowance bigint not null check (allowance > 0),
    rollover bigint not null check (rollover >= 0),
    created_at timestamptz not null,
    primary key (account_id, period, period_start, plan_id),
    constraint credit_allowance_grants_grant_id_key unique (grant_id, account_id),
    constraint credit_allowance_grants_grant_id_fkey foreign key (account_id, grant_id)
    references public.credit_grants (account_id, id)
);
comment on table public.credit_allowance_grants is
'One row per account, period and plan an allowance was granted for; the grant expires at'
' the period''s end. After a plan change within a period, allowance is what the new plan'
' added to reach its level.';

-- ---------------------------------------------------------------- teams

create table public.credit_teams (
    id uuid not null,
    name text not null check (length(name) between 1 and 200),
    account_id bigint not null unique references public.credit_accounts (id),
    min_balance bigint not null default 0 check (min_balance between 0 and 9007199254740991),
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint credit_teams_pkey primary key (id, account_id)
);
comment on table public.credit_teams is
'Teams. Each has a credit pool: the account whose user_id is ''team:'' || id.';
comment on column public.credit_teams.min_balance is
'The pool''s floor: a team debit is admitted only if available - cost >= min_balance.';

create table public.credit_team_members (
    team_id uuid not null,
    user_id text not null,
    role text not null check (role in ('owner', 'admin', 'member')),
    spend_limit bigint check (spend_limit between 0 and 9007199254740991),
    limit_period text check (limit_period in ('day', 'week', 'month')),
    joined_at timestamptz not null,
    updated_at timestamptz not null,
    -- the team's pool
    account_id bigint not null,
    constraint credit_team_members_pkey primary key (team_id, user_id, account_id),
    constraint credit_team_members_team_id_fkey foreign key (account_id, team_id)
    references public.credit_teams (account_id, id),
    check ((spend_limit is null) = (limit_period is null))
);
comment on table public.credit_team_members is
'Members of a team, who may spend from its pool. The role is the app''s to interpret.';
comment on column public.credit_team_members.spend_limit is
'Most net credits (debits minus their refunds) the member may spend from the pool per'
' limit_period (calendar, UTC); null = no limit.';

create index credit_team_members_user_idx on public.credit_team_members (user_id);

-- ---------------------------------------------------------------- row-level security

alter table public.credit_accounts enable row level security;
alter table public.credit_transactions enable row level security;
alter table public.credit_grants enable row level security;
alter table public.credit_grant_draws enable row level security;
alter table public.credit_reservations enable row level security;
alter table public.credit_idempotency_keys enable row level security;
alter table public.credit_debit_keys enable row level security;
alter table public.credit_pricing_config enable row level security;
alter table public.credit_plans enable row level security;
alter table public.credit_user_plans enable row level security;
alter table public.credit_allowance_grants enable row level security;
alter table public.credit_teams enable row level security;
alter table public.credit_team_members enable row level security;

-- A signed-in user reads their own rows, and their teams' pools like their own account:
-- the account row, its journal, grants and holds. `= any(array(...))` keeps the user_id
-- and account_id index paths open (a bitmap OR of the two), where `in (subquery)` would
-- scan the whole table. Nobody but the RPCs writes.
create policy credit_accounts_read_own on public.credit_accounts
for select to authenticated
using (
    user_id = (select auth.uid())::text
    or id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

create policy credit_transactions_read_own on public.credit_transactions
for select to authenticated
using (
    user_id = (select auth.uid())::text
    or account_id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

create policy credit_grants_read_own on public.credit_grants
for select to authenticated
using (
    user_id = (select auth.uid())::text
    or account_id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

create policy credit_reservations_read_own on public.credit_reservations
for select to authenticated
using (
    user_id = (select auth.uid())::text
    or account_id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

-- A user reads their own plan assignment, and the plan they are on (theirs or the
-- default); not the other plans.
create policy credit_user_plans_read_own on public.credit_user_plans
for select to authenticated
using (user_id = (select auth.uid())::text);

create policy credit_plans_read_own on public.credit_plans
for select to authenticated
using (
    is_default
    or id = (
        select up.plan_id from public.credit_user_plans as up
        where up.user_id = (select auth.uid())::text
    )
);

-- A user reads their own memberships and the teams they belong to.
create policy credit_team_members_read_own on public.credit_team_members
for select to authenticated
using (user_id = (select auth.uid())::text);

create policy credit_teams_read_member on public.credit_teams
for select to authenticated
using (
    id in (
        select m.team_id from public.credit_team_members as m
        where m.user_id = (select auth.uid())::text
    )
);

-- No policy, so no API role but service_role (BYPASSRLS) reads them:
-- credit_grant_draws, credit_idempotency_keys, credit_debit_keys, credit_pricing_config (the
-- RPCs read it)
-- and credit_allowance_grants (the grants and journal rows it points to are the user's view
-- of an allowance).

-- ---------------------------------------------------------------- privileges

revoke all on table
public.credit_accounts,
public.credit_transactions,
public.credit_grants,
public.credit_grant_draws,
public.credit_reservations,
public.credit_idempotency_keys,
public.credit_debit_keys,
public.credit_pricing_config,
public.credit_plans,
public.credit_user_plans,
public.credit_allowance_grants,
public.credit_teams,
public.credit_team_members
from public, anon, authenticated, service_role;

revoke all on sequence
public.credit_accounts_id_seq,
public.credit_grant_draws_id_seq,
public.credit_pricing_config_version_seq
from public, anon, authenticated, service_role;

grant select on table
public.credit_accounts,
public.credit_transactions,
public.credit_grants,
public.credit_reservations,
public.credit_plans,
public.credit_user_plans,
public.credit_teams,
public.credit_team_members
to authenticated, service_role;

grant select on table
public.credit_grant_draws,
public.credit_idempotency_keys,
public.credit_debit_keys,
public.credit_pricing_config,
public.credit_allowance_grants
to service_role;
