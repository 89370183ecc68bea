-- ducto: the journal's partitions. credit_transactions is partitioned by month (UTC) of its
-- id, a uuid_v7 that carries the row's created_at; credit_grant_draws by the month of the
-- journal row each draw belongs to, with the same bounds. A month's partitions live in
-- credit_private, which PostgREST does not expose; the API reads and writes through the
-- parent tables only.
--
-- create_partitions makes the partitions of the coming months ahead of time (the sweep
-- calls it): a charge never waits for one. A row whose month has no partition yet lands
-- in the default partition, which credit_partitions() reports; a month whose rows already
-- sit there keeps them there (its partition is not created) until an operator moves them
-- (docs/operations.md, "Partitions").

-- ---------------------------------------------------------------- ids and months

-- The smallest uuid_v7 of a time (its millisecond): partition bounds, and the start of a
-- time window in ids.
create function credit_private.uuid_floor(p_at timestamptz)
returns uuid
language sql
immutable
strict
set search_path = ''
as $$
    select (
        lpad(to_hex(floor(extract(epoch from p_at) * 1000)::bigint), 12, '0') || '00000000000000000000'
    )::uuid;
$$;
revoke all on function credit_private.uuid_floor(timestamptz)
from public, anon, authenticated, service_role;
-- the analytics and the export, which run as their caller, bound their windows with it
grant execute on function credit_private.uuid_floor(timestamptz) to service_role;

-- The time a uuid_v7 carries (to the millisecond).
create function credit_private.uuid_time(p_id uuid)
returns timestamptz
language sql
immutable
strict
set search_path = ''
as $$
    select to_timestamp(
        ('x' || lpad(replace(left(p_id::text, 13), '-', ''), 16, '0'))::bit(64)::bigint / 1000.0
    );
$$;
revoke all on function credit_private.uuid_time(uuid)
from public, anon, authenticated, service_role;
-- credit_partitions (the service role's, as its caller) reads the months of the bounds
grant execute on function credit_private.uuid_time(uuid) to service_role;

-- ---------------------------------------------------------------- ids from before 0.7.0

-- A journal row is in the partition of the month its id carries. The rows written before
-- 0.6.0 had random ids: 0.7.0 gave each of them a new one and keeps the old one here, which
-- credit_refund_transaction still accepts (a replay of such a row's key returns the new id).
create table credit_private.legacy_transaction_ids (
    legacy_id uuid not null,
    account_id bigint not null,
    id uuid not null,
    primary key (legacy_id, account_id)
);
comment on table credit_private.legacy_transaction_ids is
'The ids journal rows had before 0.7.0 gave them ids that carry their month: credit_refund'
' accepts the old id.';
alter table credit_private.legacy_transaction_ids enable row level security;
revoke all on table credit_private.legacy_transaction_ids
from public, anon, authenticated, service_role;
grant select on table credit_private.legacy_transaction_ids to service_role;

-- ---------------------------------------------------------------- creating partitions

-- The partitions of credit_transactions and credit_grant_draws for every month from the
-- month of p_from to the month of p_to (UTC). Returns how many it created. A month that
-- already has its partitions is left as it is; a month with rows in a default partition
-- is skipped (credit_partitions() reports them). Each partition is created alone and then
-- attached. Attaching locks, until the transaction ends, the default partition and the
-- tables the journal's foreign keys join (credit_accounts among them) against every
-- writer: it waits for the charges in flight, and the charges after it wait for its
-- transaction. p_if_free (the sweep's): wait at most 20 ms for each lock, and when one is
-- not free make nothing (0) and leave the months to a later call; a caller that holds
-- account locks never waits for a charge that waits for it.
create function credit_private.create_partitions(
    p_from timestamptz, p_to timestamptz, p_if_free boolean default false
)
returns integer
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_month timestamptz := date_trunc('month', p_from, 'UTC');
    v_table text;
    v_name text;
    v_low uuid;
    v_high uuid;
    v_stragglers boolean;
    v_created integer := 0;
    v_lock_timeout text;
begin
    if p_if_free then
        v_lock_timeout := current_setting('lock_timeout');
        perform set_config('lock_timeout', '20ms', true);
        begin
            v_created := credit_private.create_partitions(p_from, p_to);
        exception when lock_not_available then
            -- what it made is undone with the block
            v_created := 0;
        end;
        perform set_config('lock_timeout', v_lock_timeout, true);
        return v_created;
    end if;
    -- one creator at a time (two sweeps at once would race for the same names)
    perform pg_advisory_xact_lock(hashtext('credit_private.create_partitions'));
    while v_month <= p_to loop
        v_low := credit_private.uuid_floor(v_month);
        v_high := credit_private.uuid_floor(v_month + interval '1 month');
        execute format(
            'select exists (select 1 from credit_private.credit_transactions_default'
            ' where id >= %L and id < %L)'
            ' or exists (select 1 from credit_private.credit_grant_draws_default'
            ' where transaction_id >= %L and transaction_id < %L)',
            v_low, v_high, v_low, v_high
        ) into v_stragglers;
        foreach v_table in array array['credit_transactions', 'credit_grant_draws'] loop
            v_name := format('%s_p%s', v_table, to_char(v_month at time zone 'UTC', 'YYYY_MM'));
            continue when v_stragglers or to_regclass('credit_private.' || v_name) is not null;
            execute format(
                'create table credit_private.%I'
                ' (like public.%I including defaults including constraints)',
                v_name, v_table
            );
            -- read through the parent, whose policies apply; alone, by the service role only
            execute format(
                'alter table credit_private.%I enable row level security', v_name
            );
            execute format(
                'revoke all on table credit_private.%I'
                ' from public, anon, authenticated, service_role',
                v_name
            );
            execute format('grant select on table credit_private.%I to service_role', v_name);
            execute format(
                'alter table public.%I attach partition credit_private.%I'
                ' for values from (%L) to (%L)',
                v_table, v_name, v_low, v_high
            );
            v_created := v_created + 1;
        end loop;
        v_month := v_month + interval '1 month';
    end loop;
    return v_created;
end;
$$;
revoke all on function credit_private.create_partitions(timestamptz, timestamptz, boolean)
from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- the default partitions

create table credit_private.credit_transactions_default
partition of public.credit_transactions default;
create table credit_private.credit_grant_draws_default
partition of public.credit_grant_draws default;
alter table credit_private.credit_transactions_default enable row level security;
alter table credit_private.credit_grant_draws_default enable row level security;
revoke all on table credit_private.credit_transactions_default,
credit_private.credit_grant_draws_default
from public, anon, authenticated, service_role;
grant select on table credit_private.credit_transactions_default,
credit_private.credit_grant_draws_default to service_role;

-- the current month and the three after it
select credit_private.create_partitions(now(), now() + interval '3 months');

-- ---------------------------------------------------------------- report

create type public.credit_partition as (
    table_name text,
    partition_name text,
    month timestamptz,
    row_count bigint
);
comment on type public.credit_partition is
'credit_partitions: a partition of the journal or of the draws, its month (null: the default'
' partition) and its rows: for a default partition the exact count, which should be 0 (its'
' rows belong to a month without a partition); for a month the estimate of the statistics.
@notNull table_name, partition_name, row_count';

create function public.credit_partitions()
returns setof public.credit_partition
language sql
stable
set search_path = ''
as $$
    select
        i.inhparent::regclass::text,
        c.relname::text,
        credit_private.uuid_time(substring(
            pg_catalog.pg_get_expr(c.relpartbound, c.oid) from '\(''([0-9a-f-]+)''\)'
        )::uuid),
        case
            when c.relname = 'credit_transactions_default'
                then (select count(*) from credit_private.credit_transactions_default)
            when c.relname = 'credit_grant_draws_default'
                then (select count(*) from credit_private.credit_grant_draws_default)
            else greatest(c.reltuples, 0)::bigint
        end
    from pg_catalog.pg_inherits as i
    inner join pg_catalog.pg_class as c on i.inhrelid = c.oid
    where i.inhparent in (
        'public.credit_transactions'::regclass, 'public.credit_grant_draws'::regclass
    )
    order by 1, 3 nulls first;
$$;
revoke all on function public.credit_partitions()
from public, anon, authenticated, service_role;
grant execute on function public.credit_partitions() to service_role;
