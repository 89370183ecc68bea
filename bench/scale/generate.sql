-- ducto: a valid ledger of many journal rows, written set-based (one INSERT ... SELECT per
-- table), for bench/scale/run and its test (tests/integration/test_bench_scale.py).
--
-- Settings (set them in the session first, e.g. `set ducto_scale.rows = 10000`):
--   ducto_scale.rows     journal rows to plan (the expiry rows of lapsed promotions add ~1%)
--   ducto_scale.users    accounts, the users bench-1 .. bench-N (bench/workloads' naming)
--   ducto_scale.span     how long the journal spans, ending now (an interval: '24 months')
-- Needs an empty ledger (a fresh database with the migrations) and a published pricing
-- version (the priced usage rows name it).
--
-- What each account holds, by its k-th planned row (row i is account (i - 1) % users + 1's
-- row k = (i - 1) / users + 1, at start + (i - 1) / rows of the span: every account's rows
-- spread over the whole span, the journal in time order):
--   k = 1              a purchase of 10^12 credits: a paid grant, priority 50, no expiry
--   k % 100 = 2        a promotion of 500 credits: a promotional grant, priority 60, expiring
--                      30 days later; lapsed ones (expired before now) have their expiry row
--                      and draw, as the sweep writes them
--   k % 20 = 10        a refund of half (rounded up) of the charge at k - 1
--   k % 3 = 0          a keyed deduct of 1 to 5 credits (credit_deduct_credits)
--   else               a keyed usage charge of one of five models, priced as
--                      examples/pricing.json prices it (credit_deduct_usage)
-- Charges and refunds draw from the purchase (it comes first in burn-down order and never
-- runs out), so each account's draws, grant remainders, seq and balance_after chain are
-- those the ledger's own functions would have written, and credit_verify_ledger() finds
-- nothing. A journal row's id is time-ordered and carries its created_at, as the ledger's
-- own (credit_private.uuid_v7), with md5 bits of its row number where the ledger has a
-- sequence: a refund names its charge without a lookup. Grant ids are md5-derived uuids.
--
-- Every row is inserted right the first time: the journal's append-only triggers, which
-- refuse UPDATE and DELETE, have nothing to refuse. The generation does run with
-- session_replication_role = replica (superuser only), which skips the foreign keys'
-- triggers: their checks lock every referenced row (FOR KEY SHARE), a write into the
-- journal's pages for each row of the draws: the generation took twice as long. The
-- row checks (CHECK constraints) and unique indexes still apply, and credit_verify_ledger()
-- joins draws, grants and the journal afterwards: a draw or grant naming a missing journal
-- row would break its sums.
--
-- Each table's columns are named in the one INSERT that writes it ("write", below), each
-- value under the name of its column: a change of a table's columns or keys is made there.

begin;

-- sorts of the plan in memory; the plan's temp tables in memory (before their first use)
set local work_mem = '256MB';
set local temp_buffers = '1GB';
-- foreign-key triggers off for this transaction (see above)
set local session_replication_role = replica;

do $$
begin
    if exists (select from public.credit_accounts) then
        raise exception 'bench/scale/generate.sql needs an empty ledger';
    end if;
    if not exists (select from public.credit_pricing_config) then
        raise exception 'bench/scale/generate.sql needs a published pricing version';
    end if;
end;
$$;

create temp table scale_settings on commit drop as
select
    current_setting('ducto_scale.rows')::bigint as rows,
    current_setting('ducto_scale.users')::bigint as users,
    now() - current_setting('ducto_scale.span')::interval as start_at,
    now() as end_at,
    -- the time between two planned rows: (i - 1) times the span would pass the range of
    -- an interval
    current_setting('ducto_scale.span')::interval / current_setting('ducto_scale.rows')::bigint
        as step,
    (select max(c.version) from public.credit_pricing_config as c) as pricing_version,
    -- ids of this generation
    md5(random()::text) as salt;

-- the five models charged, and their prices per 1M tokens in USD (examples/pricing.json:
-- 1,000 credits per USD, 20% markup, rounded up)
create temp table scale_models on commit drop as
select *
from (values
    (0, 'gpt-4o', 2.5, 10.0),
    (1, 'gpt-4o-mini', 0.15, 0.6),
    (2, 'claude-sonnet-4-5', 3.0, 15.0),
    (3, 'gemini-2.5-flash', 0.3, 2.5),
    (4, 'o3', 2.0, 8.0)
) as m (model_no, model, input_rate, output_rate);

-- ---------------------------------------------------------------- plan

-- what planned row k of an account is
create function pg_temp.scale_kind(p_k bigint)
returns text
language sql
immutable
as $$
    select case
        when p_k = 1 then 'purchase'
        when p_k % 100 = 2 then 'promotion'
        when p_k % 20 = 10 then 'refund'
        when p_k % 3 = 0 then 'deduct'
        else 'usage'
    end;
$$;

-- the tokens and model of planned row i (used when it is a usage charge)
create function pg_temp.scale_input_tokens(p_i bigint)
returns bigint language sql immutable as $$ select 200 + (p_i * 7919) % 4000; $$;
create function pg_temp.scale_output_tokens(p_i bigint)
returns bigint language sql immutable as $$ select 50 + (p_i * 104729) % 1500; $$;

-- the credits charged by planned row i of kind p_kind (deduct or usage)
create function pg_temp.scale_charge(p_i bigint, p_kind text)
returns bigint
language sql
stable
as $$
    select case p_kind
        when 'deduct' then 1 + p_i % 5
        else (
            select ceil(
                (pg_temp.scale_input_tokens(p_i) * m.input_rate
                    + pg_temp.scale_output_tokens(p_i) * m.output_rate)
                / 1000000 * 1000 * 1.2
            )::bigint
            from pg_temp.scale_models as m
            where m.model_no = p_i % 5
        )
    end;
$$;

create function pg_temp.scale_id(p_salt text, p_what text, p_i bigint)
returns uuid language sql immutable as $$ select md5(p_salt || p_what || p_i)::uuid; $$;

-- the id of journal row i, made at p_at: the layout of credit_private.uuid_v7
create function pg_temp.scale_tx_id(p_salt text, p_i bigint, p_at timestamptz)
returns uuid
language sql
immutable
as $$
    select (
        lpad(to_hex(floor(extract(epoch from p_at) * 1000)::bigint), 12, '0')
        || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15)
    )::uuid
    from md5(p_salt || 't' || p_i) as h;
$$;

-- every journal row: the planned rows, then an expiry row for each lapsed promotion
create temp table scale_rows on commit drop as
with planned as (
    select
        i,
        (i - 1) % s.users + 1 as slot,
        (i - 1) / s.users + 1 as k,
        s.start_at + (i - 1) * s.step as created_at
    from scale_settings as s, generate_series(1, s.rows) as i
),

kinds as (
    select p.*, pg_temp.scale_kind(p.k) as kind from planned as p
)

select
    k.i,
    pg_temp.scale_tx_id(s.salt, k.i, k.created_at) as id,
    k.slot,
    k.created_at,
    case k.kind when 'deduct' then 'usage' else k.kind end as type,
    k.kind,
    case k.kind
        when 'purchase' then 1000000000000
        when 'promotion' then 500
        -- half of the charge planned just before on this account, rounded up
        when 'refund' then
            (pg_temp.scale_charge(k.i - s.users, pg_temp.scale_kind(k.k - 1)) + 1) / 2
        else -pg_temp.scale_charge(k.i, k.kind)
    end as amount,
    case when k.kind = 'refund' then
        pg_temp.scale_tx_id(s.salt, k.i - s.users, s.start_at + (k.i - s.users - 1) * s.step)
    end as refund_of,
    case when k.kind in ('purchase', 'promotion') then pg_temp.scale_id(s.salt, 'g', k.i) end
        as grant_id,
    case when k.kind = 'promotion' then k.created_at + interval '30 days' end as expires_at
from kinds as k, scale_settings as s
union all
select
    -k.i, pg_temp.scale_tx_id(s.salt, -k.i, k.created_at + interval '30 days'), k.slot,
    k.created_at + interval '30 days', 'expiry', 'expiry', -500, null,
    pg_temp.scale_id(s.salt, 'g', k.i), null
from kinds as k, scale_settings as s
where k.kind = 'promotion' and k.created_at + interval '30 days' < s.end_at;

-- ---------------------------------------------------------------- write

-- a partition for each month of the span (the sweep makes only the coming ones)
select credit_private.create_partitions(s.start_at, s.end_at) from scale_settings as s;

insert into public.credit_accounts (user_id, created_at, updated_at)
select 'bench-' || slot as user_id, s.start_at as created_at, s.start_at as updated_at
from scale_settings as s, generate_series(1, s.users) as slot
order by slot;

-- the journal, in time order (as it is appended), with each account's seq and running
-- balance
insert into public.credit_transactions (
    id, account_id, seq, user_id, type, amount, balance_after, grant_id, refund_of,
    idempotency_key, metadata, created_at, pricing_version, usage, model, request_hash,
    available_after
)
select
    r.id,
    a.id as account_id,
    row_number() over w as seq,
    a.user_id,
    r.type,
    r.amount,
    sum(r.amount) over w as balance_after,
    r.grant_id,
    r.refund_of,
    case when r.kind in ('deduct', 'usage') then 'scale-' || r.i end as idempotency_key,
    '{}' as metadata,
    r.created_at,
    case when r.kind = 'usage' then s.pricing_version end as pricing_version,
    case when r.kind = 'usage' then jsonb_build_object(
        'model', m.model,
        'input_tokens', pg_temp.scale_input_tokens(r.i),
        'output_tokens', pg_temp.scale_output_tokens(r.i)
    ) end as usage,
    case when r.kind = 'usage' then m.model end as model,
    case when r.kind in ('deduct', 'usage') then md5('scale-' || r.i)::uuid end as request_hash,
    -- no holds: what was available after a charge is its balance
    case when r.kind in ('deduct', 'usage') then sum(r.amount) over w end as available_after
from scale_rows as r
cross join scale_settings as s
inner join public.credit_accounts as a on a.user_id = 'bench-' || r.slot
left join scale_models as m on m.model_no = r.i % 5
window w as (partition by r.slot order by r.created_at, r.i)
order by r.created_at, r.i;

-- each keyed charge's key record, where a retry finds it (credit_private.find_replay)
insert into public.credit_debit_keys (
    account_id, idempotency_key, transaction_id, operation, request_hash
)
select t.account_id, t.idempotency_key, t.id as transaction_id, t.type as operation, t.request_hash
from public.credit_transactions as t
where t.request_hash is not null
order by t.account_id, t.idempotency_key;

-- the purchases' grants hold 10^12 less what was charged plus what was refunded; a
-- promotion's holds its 500 until it lapses
insert into public.credit_grants (
    id, account_id, user_id, transaction_id, category, priority, amount, remaining,
    expires_at, created_at
)
select
    r.grant_id as id,
    a.id as account_id,
    a.user_id,
    r.id as transaction_id,
    case r.kind when 'purchase' then 'paid' else 'promotional' end as category,
    case r.kind when 'purchase' then 50 else 60 end as priority,
    r.amount,
    case
        when r.kind = 'purchase' then r.amount + coalesce(c.net, 0)
        when r.expires_at < s.end_at then 0
        else r.amount
    end as remaining,
    r.expires_at,
    r.created_at
from scale_rows as r
cross join scale_settings as s
inner join public.credit_accounts as a on a.user_id = 'bench-' || r.slot
left join (
    select c.slot, sum(c.amount) as net
    from scale_rows as c
    where c.kind in ('deduct', 'usage', 'refund')
    group by c.slot
) as c on r.kind = 'purchase' and c.slot = r.slot
where r.kind in ('purchase', 'promotion')
order by r.created_at, r.i;

-- a charge draws its amount from the account's purchase (planned row k = 1, i = slot), a
-- refund gives its amount back there, an expiry takes what its promotion held
insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
select
    a.id as account_id,
    r.id as transaction_id,
    case
        when r.kind = 'expiry' then r.grant_id else pg_temp.scale_id(s.salt, 'g', r.slot)
    end as grant_id,
    -r.amount as amount
from scale_rows as r
cross join scale_settings as s
inner join public.credit_accounts as a on a.user_id = 'bench-' || r.slot
where r.kind in ('deduct', 'usage', 'refund', 'expiry')
order by r.created_at, r.i;

-- each account's balance and version: the sum and count of its journal
update public.credit_accounts as a
set balance = j.balance, version = j.n, updated_at = j.last_at
from (
    select r.slot, sum(r.amount) as balance, count(*) as n, max(r.created_at) as last_at
    from scale_rows as r
    group by r.slot
) as j
where a.user_id = 'bench-' || j.slot;

commit;
