-- ducto: the journal partitioned by month (docs/operations.md, "Partitions").
--
--   * credit_transactions is partitioned by range of id, one partition per month (UTC) of
--     the time the id carries (its created_at); credit_grant_draws by its transaction_id,
--     in step. The partitions live in credit_private; a default partition of each catches
--     a row whose month has no partition yet.
--   * A journal row whose id does not carry its month (a random id written before
--     0.6.0) gets a new, time-ordered one; credit_private.legacy_transaction_ids keeps the
--     old id, which credit_refund still accepts. The rows that point to it follow.
--   * (account_id, seq) is no longer a unique index (a partitioned table has none without
--     the partition key): the account lock keeps it unique, and verification checks it.
--   * The key of a one-call debit is found in credit_debit_keys, which points to its row:
--     looked up in the journal, a key would be probed in every month's partition.
--   * credit_private.create_partitions makes a month's partitions; the sweep makes those
--     of the next three months. credit_partitions() lists them, with the rows of the
--     default partitions.
--   * credit_grant_draws' primary key gains transaction_id (its partition key).

-- ---------------------------------------------------------------- ids and months

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

-- ---------------------------------------------------------------- ids that carry their month

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

-- every row whose id does not carry its created_at's millisecond
insert into credit_private.legacy_transaction_ids (legacy_id, account_id, id)
select
    t.id as legacy_id,
    t.account_id,
    credit_private.uuid_v7(t.created_at) as id
from public.credit_transactions as t
where
    t.id < credit_private.uuid_floor(t.created_at)
    or t.id >= credit_private.uuid_floor(t.created_at + interval '1 millisecond')
order by t.account_id, t.seq;

-- ---------------------------------------------------------------- the old tables step aside

alter table public.credit_grants drop constraint credit_grants_transaction_id_fkey;
alter table public.credit_reservations drop constraint credit_reservations_transaction_id_fkey;
alter table public.credit_topup_requests
drop constraint credit_topup_requests_transaction_id_fkey;
alter table public.credit_stripe_payments
drop constraint credit_stripe_payments_transaction_id_fkey;
alter table public.credit_stripe_clawbacks
drop constraint credit_stripe_clawbacks_transaction_id_fkey;
alter table public.credit_stripe_invoices
drop constraint credit_stripe_invoices_transaction_id_fkey;

-- the rows that point to a journal row by id follow it to its new id
update public.credit_grants as g set transaction_id = m.id
from credit_private.legacy_transaction_ids as m
where g.transaction_id = m.legacy_id and g.account_id = m.account_id;
update public.credit_reservations as r set transaction_id = m.id
from credit_private.legacy_transaction_ids as m
where r.transaction_id = m.legacy_id and r.account_id = m.account_id;
update public.credit_topup_requests as r set transaction_id = m.id
from credit_private.legacy_transaction_ids as m
where r.transaction_id = m.legacy_id and r.account_id = m.account_id;
update public.credit_stripe_payments as p set transaction_id = m.id
from credit_private.legacy_transaction_ids as m
where p.transaction_id = m.legacy_id and p.account_id = m.account_id;
update public.credit_stripe_clawbacks as c set transaction_id = m.id
from credit_private.legacy_transaction_ids as m
where c.transaction_id = m.legacy_id and c.account_id = m.account_id;
update public.credit_stripe_invoices as i set transaction_id = m.id
from credit_private.legacy_transaction_ids as m
where i.transaction_id = m.legacy_id and i.account_id = m.account_id;

-- what depends on the old tables' row types is made again below
drop view credit_private.journal_activity;
drop function credit_private.balance_events(public.credit_transactions);
drop function credit_private.append_transaction(
    bigint, text, bigint, timestamptz, jsonb, text, uuid, uuid, uuid, bigint, jsonb, text, text,
    uuid, bigint, smallint
);
drop function credit_private.debit(
    bigint, text, uuid, text, bigint, bigint, timestamptz, jsonb, text, uuid, bigint, jsonb,
    text, uuid
);
drop function credit_private.void(bigint, uuid, bigint, bigint, timestamptz, jsonb, text);

alter table public.credit_grant_draws set schema credit_private;
alter table credit_private.credit_grant_draws rename to credit_grant_draws_unpartitioned;
alter table public.credit_transactions set schema credit_private;
alter table credit_private.credit_transactions rename to credit_transactions_unpartitioned;

-- ---------------------------------------------------------------- the journal

-- its rows' rules gain one: the id carries created_at's millisecond
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

alter table public.credit_transactions
add constraint credit_transactions_grant_fk foreign key (account_id, grant_id)
references public.credit_grants (account_id, id) deferrable initially deferred;

alter table public.credit_transactions
add constraint credit_transactions_reservation_fk foreign key (account_id, reservation_id)
references public.credit_reservations (account_id, id);

-- ---------------------------------------------------------------- draws

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

-- ---------------------------------------------------------------- row-level security, privileges

alter table public.credit_transactions enable row level security;
alter table public.credit_grant_draws enable row level security;

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

revoke all on table public.credit_transactions, public.credit_grant_draws
from public, anon, authenticated, service_role;
revoke all on sequence public.credit_grant_draws_id_seq
from public, anon, authenticated, service_role;
grant select on table public.credit_transactions to authenticated, service_role;
grant select on table public.credit_grant_draws to service_role;

-- ---------------------------------------------------------------- partitions, and the rows

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

-- a partition for every month with rows, and this month and the three after it
select credit_private.create_partitions(m.month, m.month)
from (
    select distinct date_trunc('month', t.created_at, 'UTC') as month
    from credit_private.credit_transactions_unpartitioned as t
) as m;
select credit_private.create_partitions(now(), now() + interval '3 months');

insert into public.credit_transactions (
    account_id, seq, user_id, type, amount, balance_after, grant_id, reservation_id,
    idempotency_key, metadata, created_at, pricing_version, usage, model, job_name,
    attributed_user_id, request_hash, available_after, id, refund_of
)
select
    t.account_id,
    t.seq,
    t.user_id,
    t.type,
    t.amount,
    t.balance_after,
    t.grant_id,
    t.reservation_id,
    t.idempotency_key,
    t.metadata,
    t.created_at,
    t.pricing_version,
    t.usage,
    t.model,
    t.job_name,
    t.attributed_user_id,
    t.request_hash,
    t.available_after,
    coalesce(m.id, t.id) as id,
    coalesce(r.id, t.refund_of) as refund_of
from credit_private.credit_transactions_unpartitioned as t
left join credit_private.legacy_transaction_ids as m
    on t.id = m.legacy_id and t.account_id = m.account_id
left join credit_private.legacy_transaction_ids as r
    on t.refund_of = r.legacy_id and t.account_id = r.account_id
order by t.account_id, t.seq;

insert into public.credit_grant_draws (id, grant_id, amount, account_id, transaction_id)
overriding system value
select
    d.id,
    d.grant_id,
    d.amount,
    d.account_id,
    coalesce(m.id, d.transaction_id) as transaction_id
from credit_private.credit_grant_draws_unpartitioned as d
left join credit_private.legacy_transaction_ids as m
    on d.transaction_id = m.legacy_id and d.account_id = m.account_id
order by d.id;
select setval(
    'public.credit_grant_draws_id_seq',
    coalesce((select max(d.id) from public.credit_grant_draws as d), 0) + 1,
    false
);

-- ---------------------------------------------------------------- the keys of one-call debits

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

alter table public.credit_debit_keys enable row level security;
revoke all on table public.credit_debit_keys from public, anon, authenticated, service_role;
grant select on table public.credit_debit_keys to service_role;

insert into public.credit_debit_keys (
    account_id, idempotency_key, request_hash, transaction_id, operation
)
select
    t.account_id,
    t.idempotency_key,
    t.request_hash,
    t.id as transaction_id,
    t.type as operation
from public.credit_transactions as t
where t.request_hash is not null
order by t.account_id, t.idempotency_key;

drop table credit_private.credit_grant_draws_unpartitioned;
drop table credit_private.credit_transactions_unpartitioned;
drop function credit_private.journal_row_ok(
    text, bigint, bigint, uuid, uuid, jsonb, jsonb, text, bigint, text, text, uuid, bigint
);

-- No foreign key points to the journal any more from tables that outlive a month (their
-- rows are written with it; 20261205001700_credit_archive.sql lets a closed month leave).

-- ---------------------------------------------------------------- what depended on the old tables

create view credit_private.journal_activity with (security_invoker = true) as
select
    t.created_at,
    -- a window of time is a range of ids too (each carries its created_at's millisecond)
    t.id,
    coalesce(t.attributed_user_id, t.user_id) as user_id,
    -- only refunds need the original row; the join is dropped when model is not read
    coalesce(t.model, o.model) as model,
    case
        when t.type in ('usage', 'fixed_job', 'capture') then 'charge'
        when t.type = 'refund' then 'refund'
        when t.type = 'expiry' then 'expiry'
        -- credits taken back (docs/stripe.md) are none of the others
        when t.type = 'void' then 'void'
        else 'credit'
    end as kind,
    abs(t.amount) as amount
from public.credit_transactions as t
left join public.credit_transactions as o on t.refund_of = o.id;
comment on view credit_private.journal_activity is
'Each journal row as analytics sees it: its kind (charge, refund, credit, expiry, void), its'
' positive amount, the user it is attributed to and the model it was for.';

revoke all on table credit_private.journal_activity
from public, anon, authenticated, service_role;
grant select on table credit_private.journal_activity to service_role;

create function credit_private.append_transaction(
    p_account_id bigint,
    p_type text,
    p_amount bigint,
    p_now timestamptz,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null,
    p_grant_id uuid default null,
    p_reservation_id uuid default null,
    p_refund_of uuid default null,
    p_pricing_version bigint default null,
    p_usage jsonb default null,
    p_job_name text default null,
    p_attributed_user_id text default null,
    p_request_hash uuid default null,
    p_available_after bigint default null,
    p_features smallint default null
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_row public.credit_transactions;
    v_features smallint;
begin
    -- the balance and the journal change in one statement, under the account lock
    with account as (
        update public.credit_accounts
        set balance = balance + p_amount, version = version + 1, updated_at = p_now
        where id = p_account_id
        returning balance, version, user_id
    )

    insert into public.credit_transactions (
        id, account_id, seq, user_id, type, amount, balance_after, grant_id,
        reservation_id, refund_of, idempotency_key, metadata, created_at, pricing_version,
        usage, model, job_name, attributed_user_id, request_hash, available_after
    )
    select
        credit_private.uuid_v7(p_now), p_account_id, a.version, a.user_id, p_type, p_amount,
        a.balance, p_grant_id, p_reservation_id, p_refund_of, p_idempotency_key, p_metadata, p_now,
        p_pricing_version, p_usage, p_usage ->> 'model', p_job_name, p_attributed_user_id,
        p_request_hash, p_available_after
    from account as a
    returning * into v_row;
    -- a keyed one-call debit: where its key is found (45_idempotency.sql)
    if p_request_hash is not null then
        insert into public.credit_debit_keys (
            account_id, idempotency_key, transaction_id, operation, request_hash
        ) values (p_account_id, p_idempotency_key, v_row.id, p_type, p_request_hash);
    end if;
    -- the largest balance is the largest amount: every balance stays exact in JavaScript
    -- and a sum of balances far from bigint's end
    if v_row.balance_after > 9007199254740991 then
        perform credit_private.fail(
            'DC008',
            format('the balance of %s would be %s, above the largest balance 9007199254740991',
                quote_literal(v_row.user_id), v_row.balance_after),
            jsonb_build_object(
                'user_id', v_row.user_id, 'amount', p_amount, 'maximum', 9007199254740991
            )
        );
    end if;
    if v_row.amount >= 0 then
        return v_row;
    end if;
    -- a row that lowers the balance: the features of the account (p_features: the debit
    -- read them with the locked row) tell which probes can find something
    if p_features is null then
        select a.features into v_features from public.credit_accounts as a
        where a.id = p_account_id;
    else
        -- (apart: an expression with a query runs in the executor even when not needed)
        v_features := p_features;
    end if;
    -- balance.low (41_events.sql) with an alert of the user or their plan; balance.depleted
    -- for every account, on the crossing to zero or below
    if v_features & 1 <> 0
        or (v_row.balance_after <= 0 and v_row.balance_after - v_row.amount > 0) then
        perform credit_private.balance_events(v_row);
    end if;
    -- auto top-up (46_auto_topup.sql): one primary-key probe of the account's rule
    if v_features & 8 <> 0 then
        if exists (
            select 1 from public.credit_auto_topups as r
            where
                r.account_id = v_row.account_id and r.enabled
                and v_row.balance_after < r.threshold
        ) then
            perform credit_private.request_topup(
                v_row.account_id, v_row.balance_after, p_now, v_row.id
            );
        end if;
    end if;
    return v_row;
end;
$$;
revoke all on function credit_private.append_transaction(
    bigint, text, bigint, timestamptz, jsonb, text, uuid, uuid, uuid, bigint, jsonb, text, text,
    uuid, bigint, smallint
) from public, anon, authenticated, service_role;

create function credit_private.balance_events(p_row public.credit_transactions)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_before bigint := p_row.balance_after - p_row.amount;
    v_plan_id text;
    v_alert public.credit_balance_alerts;
    v_top_up bigint;
    v_threshold bigint;
begin
    -- After a journal row that lowered the balance (the caller holds the account lock, so
    -- writes of one account come here one at a time): a crossing is read from the balance
    -- before and after this row, so each crossing fires once and nothing needs re-arming.
    -- No threshold of this user and none of any plan: one probe, and no alert to check.
    if exists (
        select 1 from public.credit_balance_alerts as a
        where a.user_id = p_row.user_id or a.plan_id is not null
    ) then
        v_plan_id := coalesce(
            (select up.plan_id from public.credit_user_plans as up
             where up.user_id = p_row.user_id),
            (select p.id from public.credit_plans as p where p.is_default)
        );
        for v_alert in
            select a.* from public.credit_balance_alerts as a
            where a.user_id = p_row.user_id or a.plan_id = v_plan_id
            order by a.threshold nulls last, a.percent, a.id
        loop
            if v_alert.percent is null then
                v_threshold := v_alert.threshold;
            else
                v_top_up := coalesce(v_top_up, credit_private.last_top_up(p_row.account_id));
                v_threshold := ceil(v_top_up * v_alert.percent / 100);
            end if;
            if v_threshold is not null and v_before >= v_threshold
                and p_row.balance_after < v_threshold then
                perform credit_private.emit(p_row.account_id, p_row.user_id, 'balance.low',
                    jsonb_strip_nulls(jsonb_build_object(
                        'alert_id', v_alert.id, 'threshold', v_threshold,
                        'percent', v_alert.percent, 'plan_id', v_alert.plan_id,
                        'balance', p_row.balance_after, 'balance_before', v_before,
                        'transaction_id', p_row.id, 'transaction_type', p_row.type
                    )));
            end if;
        end loop;
    end if;
    -- the crossing to zero or below, for every account (arithmetic only)
    if v_before > 0 and p_row.balance_after <= 0 then
        perform credit_private.emit(p_row.account_id, p_row.user_id, 'balance.depleted',
            jsonb_build_object(
                'balance', p_row.balance_after, 'balance_before', v_before,
                'transaction_id', p_row.id, 'transaction_type', p_row.type
            ));
    end if;
end;
$$;
revoke all on function credit_private.balance_events(public.credit_transactions)
from public, anon, authenticated, service_role;

create function credit_private.debit(
    p_account_id bigint,
    p_user_id text,
    p_team_id uuid,
    p_type text,
    p_amount bigint,
    p_floor bigint,
    p_now timestamptz,
    p_metadata jsonb,
    p_idempotency_key text,
    p_request_hash uuid,
    p_pricing_version bigint,
    p_usage jsonb,
    p_job_name text,
    p_reservation_id uuid
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_available bigint;
    v_admissible bigint;
    v_row public.credit_transactions;
    v_grant_id uuid;
    v_scoped boolean := false;
    v_features smallint;
begin
    -- The one debit of the ledger: a one-call deduct (by amount, usage or job), a team
    -- charge (p_team_id: the pool's account, floor and refusal, attributed to the member
    -- p_user_id) and a settled hold (p_reservation_id, no floor: usage that happened is
    -- charged, what grants cannot pay becomes debt). The caller holds the account lock.
    -- Expire what is due (rare), admit against the floor, journal, draw. A keyed one-call
    -- debit's row is its key record (p_request_hash). The row returned has no id when
    -- nothing was journaled (0 credits).
    if exists (
        select from public.credit_grants as g
        where g.account_id = p_account_id and g.spendable and g.expires_at <= p_now
    ) then
        perform credit_private.expire_grants(p_account_id, p_now);
    end if;
    -- what is available (credit_private.available) and the account's features, read from
    -- the row the caller locked: a probe runs only for a feature the account uses
    select
        a.balance - coalesce((
            select sum(r.amount)
            from public.credit_reservations as r
            where r.account_id = a.id and r.status = 'active' and r.expires_at > p_now
        ), 0)::bigint,
        a.features
    into v_available, v_features
    from public.credit_accounts as a
    where a.id = p_account_id;
    v_available := coalesce(v_available, 0);
    v_features := coalesce(v_features, 0);
    -- scoped credits (43_scopes.sql): one index probe if the account has had any
    if v_features & 4 <> 0 then
        v_scoped := credit_private.has_scoped(p_account_id);
    end if;
    if p_floor is not null then
        -- admitted against what the charge may draw (scoped credits outside its scope left
        -- out), down to the floor a credit line lowers, then the account's limits
        -- (42_limits.sql)
        v_admissible := v_available - case when v_scoped then credit_private.out_of_scope(
            p_account_id, p_now, p_usage, p_job_name, p_metadata
        ) else 0 end;
        perform credit_private.admit(
            p_user_id, p_team_id, v_admissible, p_amount,
            credit_private.credit_floor(p_account_id, p_floor, v_admissible - p_amount, p_now)
        );
        if v_features & 2 <> 0 then
            perform credit_private.check_limits(
                p_account_id, p_amount, p_usage ->> 'model', false, p_now
            );
        end if;
    end if;
    if p_amount = 0 then
        -- usage priced at 0 credits: admitted, nothing to journal
        select a.balance into v_row.balance_after
        from public.credit_accounts as a
        where a.id = p_account_id;
        v_row.available_after := v_available;
        return v_row;
    end if;
    v_row := credit_private.append_transaction(
        p_account_id, p_type, -p_amount, p_now, p_metadata, p_idempotency_key,
        p_reservation_id => p_reservation_id, p_pricing_version => p_pricing_version,
        p_usage => p_usage, p_job_name => p_job_name,
        p_attributed_user_id => case when p_team_id is not null then p_user_id end,
        p_request_hash => p_request_hash,
        -- a hold's capture leaves out what the settle reports: the hold is still active
        p_available_after => case when p_reservation_id is null then v_available - p_amount end,
        p_features => v_features
    );

    -- The draws: most debits fit in the first grant in burn-down order; take it there
    -- directly, and note the draw in the same statement (an account with scoped credits
    -- draws them first: credit_private.draw).
    with taken as (
        update public.credit_grants as g
        set remaining = g.remaining - p_amount
        where
            g.id = (
                select f.id
                from public.credit_grants as f
                where
                    f.account_id = p_account_id
                    and f.spendable
                    and (f.expires_at is null or f.expires_at > p_now)
                    and not v_scoped
                order by f.priority, f.expires_at nulls last, f.created_at, f.id
                limit 1
            )
            and g.remaining >= p_amount
        returning g.id
    )

    insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
    select v_row.account_id, v_row.id, t.id, p_amount
    from taken as t
    returning grant_id into v_grant_id;
    if v_grant_id is not null then
        return v_row;
    end if;

    -- Otherwise take p_amount across grants
    perform credit_private.draw(
        p_account_id, v_row.id, p_amount, p_now, p_usage, p_job_name, p_metadata
    );
    return v_row;
end;
$$;
revoke all on function credit_private.debit(
    bigint, text, uuid, text, bigint, bigint, timestamptz, jsonb, text, uuid, bigint, jsonb, text,
    uuid
) from public, anon, authenticated, service_role;

create function credit_private.void(
    p_account_id bigint,
    p_grant_id uuid,
    p_from_grant bigint,
    p_as_debt bigint,
    p_now timestamptz,
    p_metadata jsonb,
    p_idempotency_key text
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_row public.credit_transactions;
begin
    -- Takes p_from_grant credits out of the grant and p_as_debt more as debt, in one
    -- journal row. The caller holds the account lock and has checked the grant has them.
    v_row := credit_private.append_transaction(
        p_account_id, 'void', -(p_from_grant + p_as_debt), p_now, p_metadata,
        p_idempotency_key, p_grant_id => p_grant_id
    );
    if p_from_grant > 0 then
        insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
        values (p_account_id, v_row.id, p_grant_id, p_from_grant);
        update public.credit_grants set remaining = remaining - p_from_grant
        where id = p_grant_id;
    end if;
    if p_as_debt > 0 then
        insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
        values (p_account_id, v_row.id, null, p_as_debt);
        update public.credit_accounts set debt = debt + p_as_debt where id = p_account_id;
    end if;
    return v_row;
end;
$$;
revoke all on function credit_private.void(
    bigint, uuid, bigint, bigint, timestamptz, jsonb, text
) from public, anon, authenticated, service_role;

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

-- ---------------------------------------------------------------- changed functions

create or replace function credit_private.refuse_journal_change()
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

create or replace function credit_private.find_replay(
    p_account_id bigint, p_key text, p_operation text, p_request jsonb
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
    v_transaction_id uuid;
    v_operation text;
    v_result jsonb;
    v_same boolean;
begin
    if p_key is null or p_account_id is null then
        return null;
    end if;
    -- one probe of each key table (a key is in at most one of them). The journal is read
    -- only for a key found there: a statement that may read the partitioned journal locks
    -- every partition (and index) of it, even when it reads none.
    select
        k.transaction_id,
        k.operation,
        k.request_hash = credit_private.request_hash(p_operation, p_request)
    into v_transaction_id, v_operation, v_same
    from public.credit_debit_keys as k
    where k.account_id = p_account_id and k.idempotency_key = p_key;
    if found then
        select jsonb_build_object(
            'transaction_id', t.id,
            'user_id', t.user_id,
            'amount', -t.amount,
            'overage', 0,
            'balance_after', t.balance_after,
            'available_after', t.available_after,
            'created_at', t.created_at,
            'is_replay', false,
            'pricing_version', t.pricing_version
        )
        into v_result
        from public.credit_transactions as t
        where t.id = v_transaction_id and t.account_id = p_account_id;
        if v_result is null and v_same then
            -- the row that would rebuild the result is in an archived month (88_archive.sql)
            perform credit_private.fail_archived(
                format('the result of idempotency key %s',
                    quote_literal(split_part(p_key, chr(31), -1))),
                date_trunc('month', credit_private.uuid_time(v_transaction_id), 'UTC'),
                jsonb_build_object(
                    'idempotency_key', split_part(p_key, chr(31), -1),
                    'transaction_id', v_transaction_id
                )
            );
        end if;
    else
        select k.operation, k.operation = p_operation and k.request = p_request, k.result
        into v_operation, v_same, v_result
        from public.credit_idempotency_keys as k
        where k.account_id = p_account_id and k.idempotency_key = p_key;
    end if;
    if v_operation is null then
        return null;
    end if;
    if not v_same then
        -- the detail names the caller's own request, never the first one: that may be
        -- another caller's; and the caller's key as given, without a member's scope
        perform credit_private.fail(
            'DC020',
            format('idempotency key %s was already used for %s with other parameters',
                quote_literal(split_part(p_key, chr(31), -1)), v_operation),
            jsonb_build_object(
                'idempotency_key', split_part(p_key, chr(31), -1),
                'operation', v_operation,
                'request', p_request
            ),
            'use a new idempotency key for a different operation'
        );
    end if;
    return v_result;
end;
$$;
revoke all on function credit_private.find_replay(bigint, text, text, jsonb)
from public, anon, authenticated, service_role;

create or replace function credit_private.spend(p_start timestamptz, p_end timestamptz, p_by text)
returns table (
    key text,
    spent numeric,
    refunded numeric,
    charges bigint,
    refunds bigint,
    users bigint,
    credited numeric,
    expired numeric
)
language plpgsql
stable
set search_path = ''
set plan_cache_mode = force_custom_plan
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
begin
    -- What counts in [p_start, p_end), one row per group of p_by: 'day' (UTC), 'model',
    -- 'user', or null for the whole window (every kind of row; no row for an empty one).
    -- Planned for each call, so p_by is a constant to the planner: the group key is one
    -- column, and the join that finds a refund's model is planned only for 'model'.
    return query
    select
        case p_by
            when 'day' then ((a.created_at at time zone 'UTC')::date)::text
            when 'model' then a.model
            when 'user' then a.user_id
        end,
        coalesce(sum(a.amount) filter (where a.kind = 'charge'), 0),
        coalesce(sum(a.amount) filter (where a.kind = 'refund'), 0),
        count(*) filter (where a.kind = 'charge'),
        count(*) filter (where a.kind = 'refund'),
        count(distinct a.user_id) filter (where a.kind = 'charge'),
        coalesce(sum(a.amount) filter (where a.kind = 'credit'), 0),
        coalesce(sum(a.amount) filter (where a.kind = 'expiry'), 0)
    from credit_private.journal_activity as a
    where
        a.created_at >= p_start and a.created_at < p_end
        -- the same window in ids (each carries its created_at's millisecond): the planner
        -- reads only the months' partitions it spans
        and a.id >= credit_private.uuid_floor(p_start)
        and a.id < credit_private.uuid_floor(p_end + interval '1 millisecond')
        and (p_by is null or a.kind in ('charge', 'refund'))
    group by 1;
end;
$$;
revoke all on function credit_private.spend(timestamptz, timestamptz, text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.spend(timestamptz, timestamptz, text)
to service_role;

create or replace function public.credit_top_users(
    p_limit integer, p_start timestamptz, p_end timestamptz
)
returns setof public.credit_top_user_row
language plpgsql
stable
set search_path = ''
set plan_cache_mode = force_custom_plan
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
begin
    if p_limit is null or p_limit not between 1 and 1000 then
        perform credit_private.fail(
            'DC006', format('limit must be from 1 to 1000, got %s', coalesce(p_limit::text, 'null')),
            jsonb_build_object('argument', 'limit')
        );
    end if;
    -- ranked by net spend, then user id; the first p_limit
    return query
    select row_number() over (order by u.net_spent desc, u.user_id), u.user_id, u.net_spent,
        u.spent, u.refunded, u.charges
    from public.credit_spend_by_user(p_start, p_end) as u
    order by 1
    limit p_limit;
end;
$$;
revoke all on function public.credit_top_users(
    integer, timestamptz, timestamptz
) from public, anon, authenticated, service_role;
grant execute on function public.credit_top_users(
    integer, timestamptz, timestamptz
) to service_role;

create or replace function public.credit_take_checkpoints(p_period_start timestamptz)
returns public.credit_checkpoint_result
language plpgsql
volatile
-- security definer: it writes the checkpoint tables, which no API role may write, and reads
-- every session's transaction start in pg_stat_activity
security definer
set search_path = ''
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_oldest timestamptz;
    v_issues bigint;
    v_account_id bigint;
    v_check text;
    v_result public.credit_checkpoint_result := row(p_period_start, 0, 0, 0);
begin
    if p_period_start is null or not isfinite(p_period_start)
        or p_period_start <> date_trunc('month', p_period_start, 'UTC') then
        perform credit_private.fail(
            'DC006',
            format('period_start must be the start of a month in UTC, got %s',
                coalesce(p_period_start::text, 'null')),
            jsonb_build_object('argument', 'period_start')
        );
    end if;
    -- closed: an hour past, and no transaction that began before it still running (its
    -- rows carry a created_at before the boundary and could commit after the checkpoint)
    select min(a.xact_start) into v_oldest
    from pg_catalog.pg_stat_activity as a
    where
        a.pid <> pg_catalog.pg_backend_pid()
        and a.datname = pg_catalog.current_database()
        and a.backend_type = 'client backend'
        and a.xact_start is not null;
    if p_period_start > v_now - interval '1 hour' or v_oldest < p_period_start then
        perform credit_private.fail(
            'DC130',
            format('the month before %s is not closed yet: a boundary must be an hour past,'
                || ' with no transaction begun before it still running', p_period_start),
            jsonb_build_object(
                'period_start', p_period_start, 'now', v_now, 'oldest_transaction', v_oldest
            ),
            'take it later, e.g. monthly from pg_cron a few hours into the month'
        );
    end if;

    -- a checkpoint is trusted once taken: verify what it summarizes first (the rows after
    -- the previous checkpoints, in one snapshot)
    select count(*) over (), i.account_id, i.check_name
    into v_issues, v_account_id, v_check
    from public.credit_verify_ledger(p_period_start - interval '1 microsecond') as i
    limit 1;
    if v_issues > 0 then
        perform credit_private.fail(
            'DC131',
            format('the ledger has %s broken invariants (first: %s, account %s): no checkpoint'
                || ' is taken on it', v_issues, v_check, v_account_id),
            jsonb_build_object(
                'issues', v_issues, 'account_id', v_account_id, 'check_name', v_check
            ),
            'see ducto verify'
        );
    end if;

    -- every account with rows before the boundary, from its previous checkpoint and the
    -- rows after it: month after month, each account's rows of one month are read
    with previous as (
        select
            a.id as account_id,
            p.period_start,
            coalesce(p.last_seq, 0) as last_seq,
            coalesce(p.balance, 0) as balance,
            coalesce(p.debt, 0) as debt,
            p.straddle_seq,
            (
                select max(t.seq) from public.credit_transactions as t
                where
                    t.account_id = a.id and t.seq > coalesce(p.last_seq, 0)
                    and t.created_at < p_period_start
            ) as new_seq
        from public.credit_accounts as a
        left join lateral (
            select k.period_start, k.last_seq, k.balance, k.debt, k.straddle_seq
            from public.credit_checkpoints as k
            where k.account_id = a.id and k.period_start < p_period_start
            order by k.period_start desc
            limit 1
        ) as p on true
    ),

    closing as (
        select
            p.account_id,
            p.period_start as previous_start,
            p.last_seq as previous_seq,
            coalesce(p.new_seq, p.last_seq) as last_seq,
            p.balance as previous_balance,
            p.debt as previous_debt,
            p.straddle_seq as previous_straddle
        from previous as p
        where p.new_seq is not null or p.period_start is not null
    ),

    -- the rows of the month: after the previous checkpoint, up to the new one
    month as materialized (
        select c.account_id, t.id, t.seq, t.balance_after
        from closing as c
        cross join lateral (
            select x.id, x.seq, x.balance_after
            from public.credit_transactions as x
            where
                x.account_id = c.account_id
                and x.seq > c.previous_seq and x.seq <= c.last_seq
            -- offset 0: kept a subquery, so each account reads its range of the key
            offset 0
        ) as t
    ),

    month_draws as materialized (
        select d.account_id, d.grant_id, d.amount
        from month as m
        cross join lateral (
            select x.account_id, x.grant_id, x.amount from public.credit_grant_draws as x
            where x.transaction_id = m.id and x.account_id = m.account_id
            offset 0
        ) as d
    ),

    -- each account's newest row of the month, and its debt draws (grouped once: a lookup
    -- per account in the materialized month would read all of it per account)
    last_row as (
        select distinct on (m.account_id) m.account_id, m.balance_after
        from month as m
        order by m.account_id asc, m.seq desc
    ),

    debt_drawn as (
        select d.account_id, sum(d.amount) as debt
        from month_draws as d
        where d.grant_id is null
        group by d.account_id
    ),

    state as (
        select
            c.account_id,
            c.last_seq,
            coalesce(l.balance_after, c.previous_balance) as balance,
            c.previous_debt + coalesce(b.debt, 0) as debt,
            -- the month's rows, and the previous checkpoint's straddlers, created at or
            -- after the boundary
            (
                select min(t.seq) from public.credit_transactions as t
                where
                    t.account_id = c.account_id
                    and t.seq >= coalesce(c.previous_straddle, c.previous_seq + 1)
                    and t.seq <= c.last_seq
                    and t.created_at >= p_period_start
            ) as straddle_seq
        from closing as c
        left join last_row as l on c.account_id = l.account_id
        left join debt_drawn as b on c.account_id = b.account_id
    ),

    -- each grant's remaining after last_seq: at the previous checkpoint (or its amount if
    -- created in the month) less the month's draws
    grant_state as (
        select u.account_id, u.grant_id, sum(u.amount) as remaining
        from (
            select k.account_id, k.grant_id, k.remaining as amount
            from closing as c
            inner join public.credit_checkpoint_grants as k
                on c.account_id = k.account_id and c.previous_start = k.period_start
            union all
            select g.account_id, g.id, g.amount
            from month as m
            cross join lateral (
                select x.account_id, x.id, x.amount from public.credit_grants as x
                where x.account_id = m.account_id and x.transaction_id = m.id
                offset 0
            ) as g
            union all
            select d.account_id, d.grant_id, -d.amount
            from month_draws as d
            where d.grant_id is not null
        ) as u
        group by u.account_id, u.grant_id
        having sum(u.amount) <> 0
    ),

    recorded as (
        insert into public.credit_checkpoints (
            account_id, period_start, last_seq, balance, debt, straddle_seq, taken_at
        )
        select
            s.account_id, p_period_start, s.last_seq, s.balance, s.debt, s.straddle_seq,
            pg_catalog.clock_timestamp()
        from state as s
        order by s.account_id
        on conflict (account_id, period_start) do nothing
        returning account_id
    ),

    recorded_grants as (
        insert into public.credit_checkpoint_grants (
            account_id, period_start, grant_id, remaining
        )
        select g.account_id, p_period_start, g.grant_id, g.remaining
        from grant_state as g
        inner join recorded as r on g.account_id = r.account_id
        returning 1
    )

    select
        (select count(*) from recorded)::integer,
        (select count(*) from state)::integer - (select count(*) from recorded)::integer,
        (select count(*) from recorded_grants)::integer
    into v_result.recorded, v_result.kept, v_result.grants;
    return v_result;
end;
$$;
revoke all on function public.credit_take_checkpoints(timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_take_checkpoints(timestamptz) to service_role;

create or replace function public.credit_export_journal(
    p_start timestamptz,
    p_end timestamptz,
    p_user_id text default null,
    p_after_account bigint default null,
    p_after_seq bigint default null,
    p_limit integer default 1000
)
returns setof public.credit_journal_row
language plpgsql
stable
security invoker
set search_path = ''
set plan_cache_mode = force_custom_plan
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
begin
    perform credit_private.check_window(p_start, p_end);
    if p_limit is null or p_limit < 1 or p_limit > 10000 then
        perform credit_private.fail(
            'DC006',
            format('limit must be from 1 to 10000, got %s', coalesce(p_limit::text, 'null')),
            jsonb_build_object('argument', 'limit')
        );
    end if;
    -- a cursor is both halves of the last row's key, or none (the first page)
    if (p_after_account is null) <> (p_after_seq is null) then
        perform credit_private.fail(
            'DC006',
            format('the cursor must be an account and a seq, or neither, got (%s, %s)',
                coalesce(p_after_account::text, 'null'), coalesce(p_after_seq::text, 'null')),
            jsonb_build_object('argument', 'cursor')
        );
    end if;
    if p_user_id is not null then
        perform credit_private.check_user_id(p_user_id);
    end if;
    -- the row comparison walks the (account_id, seq) index from the cursor, within the
    -- user's account when one is named (planned per call, so the index range is exact);
    -- the window filters the rows it meets
    return query
    select
        t.id, t.account_id, t.seq, t.user_id, t.type, t.amount, t.balance_after, t.grant_id,
        t.reservation_id, t.refund_of, t.idempotency_key, t.metadata, t.created_at,
        t.pricing_version, t.usage, t.model, t.job_name, t.attributed_user_id
    from public.credit_transactions as t
    where
        (p_after_account is null or (t.account_id, t.seq) > (p_after_account, p_after_seq))
        and t.created_at >= p_start and t.created_at < p_end
        -- the window in ids: only the partitions of its months are read
        and t.id >= credit_private.uuid_floor(p_start)
        and t.id < credit_private.uuid_floor(p_end + interval '1 millisecond')
        and (p_user_id is null or t.account_id = (
            select a.id from public.credit_accounts as a where a.user_id = p_user_id
        ))
    order by t.account_id, t.seq
    limit p_limit;
end;
$$;
revoke all on function public.credit_export_journal(
    timestamptz, timestamptz, text, bigint, bigint, integer
) from public, anon, authenticated, service_role;
grant execute on function public.credit_export_journal(
    timestamptz, timestamptz, text, bigint, bigint, integer
) to service_role;

create or replace function public.credit_refund_transaction(
    p_transaction_id uuid,
    p_amount numeric default null,
    p_reason text default null,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_refund_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_requested bigint;
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_original public.credit_transactions;
    v_archived timestamptz;
    v_request jsonb;
    v_account public.credit_accounts;
    v_replay jsonb;
    v_refunded bigint;
    v_amount bigint;
    v_transaction_id uuid;
    v_balance_after bigint;
    v_result public.credit_refund_result;
begin
    if p_amount is not null then
        v_requested := credit_private.whole(p_amount, 'amount', 1);
    end if;
    perform credit_private.check_key(p_idempotency_key);
    if length(p_reason) > 1000 then
        perform credit_private.fail(
            'DC006', 'reason must be at most 1000 characters',
            jsonb_build_object('argument', 'reason')
        );
    end if;

    select * into v_original
    from public.credit_transactions
    where id = p_transaction_id;
    if not found then
        -- an id a row had before 0.7.0 gave it one that carries its month
        select t.* into v_original
        from credit_private.legacy_transaction_ids as m
        inner join public.credit_transactions as t on m.id = t.id and m.account_id = t.account_id
        where m.legacy_id = p_transaction_id;
    end if;
    if not found then
        -- a row of an archived month (88_archive.sql), or an old id of one
        v_archived := credit_private.archived_month_of(coalesce(
            (select m.id from credit_private.legacy_transaction_ids as m
            where m.legacy_id = p_transaction_id limit 1),
            p_transaction_id
        ));
        if v_archived is not null and p_idempotency_key is not null then
            -- a refund's key replays forever: its result is stored whole, and its request
            -- names the charge (the account is not known without the charge's row)
            select k.request, k.result into v_request, v_replay
            from public.credit_idempotency_keys as k
            where
                k.operation = 'refund_transaction' and k.idempotency_key = p_idempotency_key
                and k.request ->> 'transaction_id' = p_transaction_id::text;
            if found and v_request = jsonb_build_object(
                'transaction_id', p_transaction_id, 'amount', v_requested, 'reason', p_reason,
                'metadata', v_metadata
            ) then
                v_result := jsonb_populate_record(null::public.credit_refund_result, v_replay);
                v_result.is_replay := true;
                return v_result;
            end if;
        end if;
        if v_archived is not null then
            perform credit_private.fail_archived(
                format('transaction %s', p_transaction_id), v_archived,
                jsonb_build_object('transaction_id', p_transaction_id)
            );
        end if;
        perform credit_private.fail(
            'DC030', format('transaction %s does not exist', coalesce(p_transaction_id::text, 'null')),
            jsonb_build_object('transaction_id', p_transaction_id)
        );
    end if;
    v_request := jsonb_build_object(
        'transaction_id', p_transaction_id, 'amount', v_requested, 'reason', p_reason,
        'metadata', v_metadata
    );
    v_account := credit_private.lock_account_by_id(v_original.account_id);
    v_replay := credit_private.find_replay(
        v_account.id, p_idempotency_key, 'refund_transaction', v_request
    );
    if v_replay is not null then
        v_result := jsonb_populate_record(null::public.credit_refund_result, v_replay);
        v_result.is_replay := true;
        return v_result;
    end if;

    if v_original.type not in ('usage', 'fixed_job', 'capture') then
        perform credit_private.fail(
            'DC051',
            format('transaction %s is of type %s; only usage, fixed_job and capture transactions'
                || ' can be refunded', p_transaction_id, v_original.type),
            jsonb_build_object('transaction_id', p_transaction_id, 'type', v_original.type)
        );
    end if;
    -- under the account lock, so concurrent refunds of one transaction see each other
    select coalesce(sum(t.amount), 0)::bigint into v_refunded
    from public.credit_transactions as t
    where t.refund_of = v_original.id;
    if v_refunded = -v_original.amount then
        perform credit_private.fail(
            'DC050',
            format('transaction %s is already fully refunded (charged %s, refunded %s)',
                p_transaction_id, -v_original.amount, v_refunded),
            jsonb_build_object(
                'transaction_id', p_transaction_id,
                'refundable', 0,
                'charged', -v_original.amount,
                'refunded', v_refunded
            )
        );
    end if;
    v_amount := coalesce(v_requested, -v_original.amount - v_refunded);
    if v_amount > -v_original.amount - v_refunded then
        perform credit_private.fail(
            'DC050',
            format('refund of %s exceeds what is refundable of transaction %s: %s'
                || ' (charged %s, refunded %s)', v_amount, p_transaction_id,
                -v_original.amount - v_refunded, -v_original.amount, v_refunded),
            jsonb_build_object(
                'transaction_id', p_transaction_id,
                'requested', v_amount,
                'refundable', -v_original.amount - v_refunded,
                'charged', -v_original.amount,
                'refunded', v_refunded
            )
        );
    end if;

    perform credit_private.expire_grants(v_account.id, v_now);
    v_transaction_id := (credit_private.append_transaction(
        v_account.id, 'refund', v_amount, v_now,
        v_metadata || jsonb_strip_nulls(jsonb_build_object('reason', p_reason)),
        p_idempotency_key, p_refund_of => v_original.id,
        -- a refund is attributed to whoever the refunded row was, so a member's net spend
        -- (their limit, spend_by_user) counts refunds of their debits
        p_attributed_user_id => v_original.attributed_user_id
    )).id;
    perform credit_private.restore(v_account.id, v_transaction_id, v_original.id, v_amount, v_now);
    perform credit_private.emit(v_account.id, v_account.user_id, 'charge.refunded',
        jsonb_build_object('transaction_id', p_transaction_id,
            'refund_transaction_id', v_transaction_id, 'amount', v_amount, 'reason', p_reason));
    -- credits given back to a grant that has expired since expire at once
    perform credit_private.expire_grants(v_account.id, v_now);
    select a.balance into v_balance_after
    from public.credit_accounts as a
    where a.id = v_account.id;

    v_result := row(
        v_transaction_id, p_transaction_id, v_account.user_id, v_amount,
        v_refunded + v_amount, -v_original.amount - v_refunded - v_amount, v_balance_after,
        v_now, false
    );
    perform credit_private.remember(
        v_account.id, p_idempotency_key, 'refund_transaction', v_request, to_jsonb(v_result),
        v_now
    );
    return v_result;
end;
$$;
revoke all on function public.credit_refund_transaction(uuid, numeric, text, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_refund_transaction(
    uuid, numeric, text, jsonb, text
) to service_role;

create or replace function public.credit_sweep_expired(p_dry_run boolean default false)
returns public.credit_sweep_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_account_id bigint;
    v_expired record;
    v_holds integer;
    v_hold_amount bigint;
    v_result public.credit_sweep_result := row(
        coalesce(p_dry_run, false), 0, 0, 0::bigint, 0, 0::bigint
    );
begin
    if v_result.dry_run then
        select count(*)::integer, coalesce(sum(g.remaining), 0)::bigint
        into v_result.expired_grants, v_result.expired_amount
        from public.credit_grants as g
        where g.spendable and g.expires_at <= v_now;
        select count(*)::integer, coalesce(sum(r.amount), 0)::bigint
        into v_result.expired_holds, v_result.expired_hold_amount
        from public.credit_reservations as r
        where r.status = 'active' and r.expires_at <= v_now;
        select count(*)::integer into v_result.accounts
        from credit_private.sweep_candidates(v_now);
        return v_result;
    end if;

    -- grant.expiring of the grants due soon (41_events.sql)
    perform credit_private.emit_expiring_grants(v_now);
    -- one account at a time, in id order: no deadlock with other sweeps or operations
    for v_account_id in select c.account_id from credit_private.sweep_candidates(v_now) as c loop
        perform credit_private.lock_account_by_id(v_account_id);
        v_expired := credit_private.expire_grants(v_account_id, v_now);
        with timed_out as (
            update public.credit_reservations as r
            set status = 'expired', resolved_at = v_now
            where r.account_id = v_account_id and r.status = 'active' and r.expires_at <= v_now
            returning r.amount
        )
        select count(*)::integer, coalesce(sum(t.amount), 0)::bigint into v_holds, v_hold_amount
        from timed_out as t;
        v_result.accounts := v_result.accounts + 1;
        v_result.expired_grants := v_result.expired_grants + v_expired.grants;
        v_result.expired_amount := v_result.expired_amount + v_expired.amount;
        v_result.expired_holds := v_result.expired_holds + v_holds;
        v_result.expired_hold_amount := v_result.expired_hold_amount + v_hold_amount;
    end loop;
    -- the journal's partitions of this month and the next three (15_partitions.sql), made
    -- ahead of the charges that will need them. Last, and only when their locks are free:
    -- attaching a partition makes the charges wait, and a charge waiting while it holds an
    -- account this sweep has locked would be a deadlock. A busy moment leaves the months
    -- to the next sweep, months ahead of the first charge that needs them.
    perform credit_private.create_partitions(v_now, v_now + interval '3 months', true);
    return v_result;
end;
$$;
revoke all on function public.credit_sweep_expired(boolean)
from public, anon, authenticated, service_role;
grant execute on function public.credit_sweep_expired(boolean) to service_role;

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205001600'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
