-- ducto: a window of time reads only its months' partitions; the check from the checkpoints
-- reads only what follows them; verification finds a keyed debit without its key record.
--
--   * credit_private.journal_activity finds a refund's model by the original's whole key
--     (id, account_id), in a subquery run for refund rows only: the analytics read no
--     other month's partition, and none at all when they do not report by model. The
--     join it replaces could not be dropped (id alone is no longer unique in the
--     partitioned journal) and probed every month.
--   * credit_private.spend and credit_export_journal bound the window's ids with
--     constants of the plan: the upper bound was a function call evaluated on every row
--     the journal's BRIN index hands back, and pruned partitions only at run time.
--   * credit_private.window_used and credit_statement join a refund to its original by
--     the whole key too.
--   * credit_verify_ledger (the full check and the check from the checkpoints) finds a
--     keyed one-call debit without the key record a retry looks it up by (a retry would
--     charge again): 'keyed debit <id> has its key record'.
--   * credit_private.verify_since (credit_verify_ledger(p_since)) probes by key, per row,
--     a grant's journal row and a keyed debit's record, and names a refunded charge's
--     account from the accounts it starts from: it joined them with the whole journal
--     (and key table), which the planner, blind to how few rows follow the checkpoints,
--     hashed whole.

-- ---------------------------------------------------------------- analytics

create or replace view credit_private.journal_activity with (security_invoker = true) as
select
    t.created_at,
    -- a window of time is a range of ids too (each carries its created_at's millisecond)
    t.id,
    coalesce(t.attributed_user_id, t.user_id) as user_id,
    -- a refund counts for the model of the row it refunds: one probe of the original's
    -- key (its month's partition only) per refund, and none when model is not read
    coalesce(t.model, case when t.refund_of is not null then (
        select o.model from public.credit_transactions as o
        where o.id = t.refund_of and o.account_id = t.account_id
    ) end) as model,
    case
        when t.type in ('usage', 'fixed_job', 'capture') then 'charge'
        when t.type = 'refund' then 'refund'
        when t.type = 'expiry' then 'expiry'
        -- credits taken back (docs/stripe.md) are none of the others
        when t.type = 'void' then 'void'
        else 'credit'
    end as kind,
    abs(t.amount) as amount
from public.credit_transactions as t;
comment on view credit_private.journal_activity is
'Each journal row as analytics sees it: its kind (charge, refund, credit, expiry, void), its'
' positive amount, the user it is attributed to and the model it was for.';

create or replace function credit_private.window_used(
    p_user_id text, p_start timestamptz, p_model_pattern text
)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
declare
    -- the pricing's pattern syntax: _ is literal, * any run of characters
    v_like text := replace(replace(p_model_pattern, '_', '\_'), '*', '%');
begin
    -- Net spend since p_start: charges made since then minus the refunds of those charges
    -- (a refund of an older charge does not make room). Served by the journal's
    -- (user_id, created_at) index: the rows of the window only.
    return coalesce((
        select -sum(t.amount)
        from public.credit_transactions as t
        left join public.credit_transactions as o
            on t.refund_of = o.id and t.account_id = o.account_id
        where
            t.user_id = p_user_id
            and t.created_at >= p_start
            and (
                t.type in ('usage', 'fixed_job', 'capture')
                or (t.type = 'refund' and o.created_at >= p_start)
            )
            and (p_model_pattern is null or lower(coalesce(t.model, o.model)) like v_like)
    ), 0)::bigint;
end;
$$;
revoke all on function credit_private.window_used(text, timestamptz, text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.window_used(text, timestamptz, text)
to authenticated, service_role;

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
declare
    -- the window in ids (each carries its created_at's millisecond), as constants of the
    -- plan: the planner keeps only the partitions of the window's months, and no row is
    -- compared with a function of the window
    v_first_id uuid := credit_private.uuid_floor(p_start);
    v_end_id uuid := credit_private.uuid_floor(p_end + interval '1 millisecond');
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
        and a.id >= v_first_id and a.id < v_end_id
        and (p_by is null or a.kind in ('charge', 'refund'))
    group by 1;
end;
$$;
revoke all on function credit_private.spend(timestamptz, timestamptz, text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.spend(timestamptz, timestamptz, text)
to service_role;

create or replace function credit_private.verify_since(p_since timestamptz)
returns setof public.credit_ledger_issue
language sql
stable
set search_path = ''
-- the planner cannot know how few rows follow each checkpoint; compiling the one query
-- (JIT) would cost more than running it
set jit = off
as $$
    -- credit_verify_ledger's invariants, each account from its newest checkpoint at or
    -- before p_since (an account without one from its first row, which is the full check):
    -- the same issue rows, read from the rows after the checkpoint and what they point to
    with start as (
        select
            a.id as account_id,
            a.user_id,
            a.balance,
            a.debt,
            a.version,
            c.period_start as checkpoint,
            coalesce(c.last_seq, 0) as last_seq,
            coalesce(c.balance, 0) as opening,
            coalesce(c.debt, 0) as opening_debt
        from public.credit_accounts as a
        left join lateral (
            select k.period_start, k.last_seq, k.balance, k.debt
            from public.credit_checkpoints as k
            where k.account_id = a.id and k.period_start <= p_since
            order by k.period_start desc
            limit 1
        ) as c on true
    ),

    -- the rows after each checkpoint: one range of the (account_id, seq) key per account
    recent as materialized (
        select
            t.id, t.account_id, t.user_id, t.seq, t.type, t.amount, t.balance_after,
            t.refund_of, t.reservation_id, t.usage, t.job_name, t.metadata, t.idempotency_key,
            t.request_hash
        from start as s
        cross join lateral (
            select
                x.id, x.account_id, x.user_id, x.seq, x.type, x.amount, x.balance_after,
                x.refund_of, x.reservation_id, x.usage, x.job_name, x.metadata,
                x.idempotency_key, x.request_hash
            from public.credit_transactions as x
            where x.account_id = s.account_id and x.seq > s.last_seq
            -- offset 0: kept a subquery, so each account reads its range of the key
            offset 0
        ) as t
    ),

    recent_draws as materialized (
        select d.account_id, d.transaction_id, d.grant_id, d.amount
        from recent as r
        cross join lateral (
            select x.account_id, x.transaction_id, x.grant_id, x.amount
            from public.credit_grant_draws as x
            where x.transaction_id = r.id and x.account_id = r.account_id
            offset 0
        ) as d
    ),

    -- what each grant gave since the checkpoint
    drawn as (
        select d.account_id, d.grant_id, sum(d.amount) as amount
        from recent_draws as d
        where d.grant_id is not null
        group by d.account_id, d.grant_id
    ),

    journal as (
        select
            s.account_id,
            s.opening + coalesce(sum(r.amount), 0) as total,
            s.last_seq + count(r.id) as n,
            coalesce(max(r.seq), nullif(s.last_seq, 0)) as last_seq
        from start as s
        left join recent as r on s.account_id = r.account_id
        group by s.account_id, s.opening, s.last_seq
    ),

    -- the grants whose remaining the window can tell: listed at the checkpoint, created or
    -- drawn on since, or with credits now (a grant in none of these had nothing left then
    -- and has nothing now)
    touched as (
        select k.account_id, k.grant_id
        from start as s
        inner join public.credit_checkpoint_grants as k
            on s.account_id = k.account_id and s.checkpoint = k.period_start
        union
        select d.account_id, d.grant_id
        from recent_draws as d
        where d.grant_id is not null
        union
        select g.account_id, g.id
        from recent as r
        cross join lateral (
            select x.account_id, x.id from public.credit_grants as x
            where x.transaction_id = r.id and x.account_id = r.account_id
            offset 0
        ) as g
        union
        select g.account_id, g.id
        from start as s
        cross join lateral (
            select x.account_id, x.id from public.credit_grants as x
            where x.account_id = s.account_id and x.spendable
            offset 0
        ) as g
    ),

    grant_check as materialized (
        select
            g.account_id,
            g.user_id,
            g.id,
            g.remaining,
            g.scope,
            -- at the checkpoint: what it listed, the whole amount for a grant created
            -- since, else nothing
            -- (the grant's journal row by its key: one probe of its month per grant)
            case
                when k.grant_id is not null then k.remaining
                when (
                    select o.seq from public.credit_transactions as o
                    where o.account_id = g.account_id and o.id = g.transaction_id
                ) > s.last_seq then g.amount
                else 0
            end - coalesce(w.amount, 0) as expected
        from touched as u
        inner join start as s on u.account_id = s.account_id
        inner join public.credit_grants as g on u.account_id = g.account_id and u.grant_id = g.id
        left join public.credit_checkpoint_grants as k
            on
                s.account_id = k.account_id and s.checkpoint = k.period_start
                and g.id = k.grant_id
        left join drawn as w on g.account_id = w.account_id and g.id = w.grant_id
    ),

    -- the charges refunded since the checkpoint (a refund comes after its charge, so a
    -- charge since the checkpoint has its refunds in the window too)
    refunded as (
        select distinct r.account_id, r.refund_of as id
        from recent as r
        where r.refund_of is not null
    ),

    -- per charge and source: what it drew, less what its refunds gave back
    refund_moves as (
        select r.account_id, coalesce(r.refund_of, r.id) as original, d.grant_id, d.amount
        from recent as r
        inner join recent_draws as d on r.account_id = d.account_id and r.id = d.transaction_id
        where r.type in ('usage', 'fixed_job', 'capture', 'void', 'refund')
        union all
        select r.account_id, r.refund_of, null, -g.amount
        from recent as r
        cross join lateral (
            select x.amount from public.credit_grants as x
            where x.transaction_id = r.id and x.account_id = r.account_id
            offset 0
        ) as g
        where r.type = 'refund'
        -- a charge from before the checkpoint refunded since: its own draws, and those of
        -- its refunds before the checkpoint, read by their keys
        union all
        select o.account_id, o.id, d.grant_id, d.amount
        from refunded as o
        inner join start as s on o.account_id = s.account_id
        cross join lateral (
            select x.id from public.credit_transactions as x
            where
                x.id = o.id and x.account_id = o.account_id and x.seq <= s.last_seq
                and x.type in ('usage', 'fixed_job', 'capture', 'void')
            union all
            select x.id from public.credit_transactions as x
            where x.refund_of = o.id and x.account_id = o.account_id and x.seq <= s.last_seq
        ) as m
        cross join lateral (
            select x.grant_id, x.amount from public.credit_grant_draws as x
            where x.transaction_id = m.id and x.account_id = o.account_id
            offset 0
        ) as d
        union all
        select o.account_id, o.id, null, -g.amount
        from refunded as o
        inner join start as s on o.account_id = s.account_id
        inner join public.credit_transactions as r
            on o.account_id = r.account_id and o.id = r.refund_of and r.seq <= s.last_seq
        inner join public.credit_grants as g
            on r.account_id = g.account_id and r.id = g.transaction_id
    )

    select s.account_id, s.user_id, 'balance = sum of journal', j.total::text, s.balance::text
    from start as s
    inner join journal as j on s.account_id = j.account_id
    where s.balance <> j.total

    union all
    select s.account_id, s.user_id, 'journal seq is 1..version', s.version::text,
        format('%s rows, last seq %s', j.n, j.last_seq)
    from start as s
    inner join journal as j on s.account_id = j.account_id
    where j.n <> s.version or coalesce(j.last_seq, 0) <> s.version

    union all
    select c.account_id, null, 'balance_after chain at seq ' || c.seq, c.expected::text,
        c.balance_after::text
    from (
        select
            r.account_id,
            r.seq,
            r.balance_after,
            coalesce(lag(r.balance_after) over w, s.opening) + r.amount as expected
        from recent as r
        inner join start as s on r.account_id = s.account_id
        window w as (partition by r.account_id order by r.seq)
    ) as c
    where c.balance_after <> c.expected

    union all
    select s.account_id, s.user_id, 'balance = grants remaining - debt',
        (coalesce(g.remaining, 0) - s.debt)::text, s.balance::text
    from start as s
    left join lateral (
        select sum(x.remaining) as remaining from public.credit_grants as x
        where x.account_id = s.account_id and x.spendable
    ) as g on true
    where s.balance <> coalesce(g.remaining, 0) - s.debt

    union all
    select s.account_id, s.user_id, 'debt = sum of debt draws',
        (s.opening_debt + coalesce(d.debt, 0))::text, s.debt::text
    from start as s
    left join (
        select x.account_id, sum(x.amount) as debt from recent_draws as x
        where x.grant_id is null
        group by x.account_id
    ) as d on s.account_id = d.account_id
    where s.debt <> s.opening_debt + coalesce(d.debt, 0)

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' remaining = amount - draws',
        g.expected::text, g.remaining::text
    from grant_check as g
    where g.remaining <> g.expected

    union all
    select r.account_id, r.user_id, 'transaction ' || r.id || ' amount = its draws',
        (-r.amount)::text, coalesce(sum(d.amount), 0)::text
    from recent as r
    left join recent_draws as d on r.account_id = d.account_id and r.id = d.transaction_id
    where r.type in ('usage', 'fixed_job', 'capture', 'expiry', 'void')
    group by r.id, r.account_id, r.user_id, r.amount
    having -r.amount <> coalesce(sum(d.amount), 0)

    union all
    select s.account_id, s.user_id,
        'refunds of ' || m.original || ' gave back at most what it drew from each source',
        '>= 0', m.amount::text
    from (
        select x.account_id, x.original, sum(x.amount) as amount
        from refund_moves as x
        group by x.account_id, x.original, x.grant_id
        having sum(x.amount) < 0
    ) as m
    inner join start as s on m.account_id = s.account_id
    -- of a charge still attached (an archived one's draws left with it), probed by its key
    where (
        select t.id from public.credit_transactions as t
        where t.account_id = m.account_id and t.id = m.original
    ) is not null

    union all
    select o.account_id, o.user_id, 'refunds of ' || o.id || ' <= charged',
        (-o.amount)::text, sum(r.amount)::text
    from refunded as x
    inner join public.credit_transactions as o on x.account_id = o.account_id and x.id = o.id
    inner join public.credit_transactions as r
        on o.account_id = r.account_id and o.id = r.refund_of
    group by o.id, o.account_id
    having sum(r.amount) > -o.amount

    union all
    select v.account_id, v.user_id, 'reservation ' || v.id || ' settled = its capture',
        v.settled_amount::text, coalesce(-t.amount, 0)::text
    from recent as c
    inner join public.credit_reservations as v
        on c.account_id = v.account_id and c.reservation_id = v.id
    left join public.credit_transactions as t
        on v.account_id = t.account_id and v.transaction_id = t.id
    where v.status = 'settled' and v.settled_amount <> coalesce(-t.amount, 0)

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' scope sorted and distinct',
        (select array_agg(distinct s order by s) from unnest(g.scope) as s)::text,
        g.scope::text
    from grant_check as g
    where
        g.scope is not null
        and g.scope is distinct from (
            select array_agg(distinct s order by s) from unnest(g.scope) as s
        )

    union all
    select r.account_id, r.user_id,
        'grant ' || g.id || ' paid only within its scope', g.scope::text,
        format('transaction %s (%s)', r.id, r.type)
    from recent_draws as d
    inner join recent as r on d.account_id = r.account_id and d.transaction_id = r.id
    -- every grant drawn on since is in grant_check
    inner join grant_check as g on d.account_id = g.account_id and d.grant_id = g.id
    where
        g.scope is not null
        and d.amount > 0
        and r.type <> 'expiry'
        and not (
            r.type in ('usage', 'fixed_job', 'capture')
            and credit_private.scope_covers(g.scope, r.usage, r.job_name, r.metadata)
        )

    -- a refund's charge and a grant's row exist, attached or in an archived month (no
    -- foreign key says so: 88_archive.sql)
    union all
    select r.account_id, r.user_id, 'refund ' || r.id || ' names a journal row',
        r.refund_of::text, 'none'
    from recent as r
    where
        r.refund_of is not null
        and not exists (
            select from public.credit_transactions as o
            where o.account_id = r.account_id and o.id = r.refund_of
        )
        and credit_private.archived_month_of(r.refund_of) is null

    -- a keyed one-call debit is found by its key; its record stays when its month is
    -- archived
    union all
    select r.account_id, r.user_id, 'keyed debit ' || r.id || ' has its key record',
        r.idempotency_key, 'none'
    from recent as r
    where
        r.request_hash is not null
        -- a probe of the key per row (the planner cannot know how few rows are recent)
        and (
            select k.transaction_id from public.credit_debit_keys as k
            where k.account_id = r.account_id and k.idempotency_key = r.idempotency_key
        ) is distinct from r.id

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' has its journal row',
        g.transaction_id::text, 'none'
    from grant_check as c
    inner join public.credit_grants as g on c.account_id = g.account_id and c.id = g.id
    where
        not exists (
            select from public.credit_transactions as o
            where o.account_id = g.account_id and o.id = g.transaction_id
        )
        and credit_private.archived_month_of(g.transaction_id) is null;
$$;
revoke all on function credit_private.verify_since(timestamptz)
from public, anon, authenticated, service_role;
-- credit_verify_ledger is security invoker and granted to the service role
grant execute on function credit_private.verify_since(timestamptz) to service_role;

create or replace function public.credit_statement(
    p_user_id text default null, p_start timestamptz default null, p_end timestamptz default null
)
returns public.credit_statement_result
language plpgsql
stable
security invoker
set search_path = ''
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
declare
    -- no user id: a signed-in user's own
    v_user_id text := credit_private.reader_id(p_user_id, 'statement');
    v_result public.credit_statement_result;
    v_horizon timestamptz;
begin
    perform credit_private.check_window(p_start, p_end);
    v_result.user_id := v_user_id;
    v_result.period_start := p_start;
    v_result.period_end := p_end;

    v_horizon := credit_private.archive_horizon();
    if v_horizon is null then
        -- both balances in one pass over the account's journal before p_end
        select
            coalesce(sum(t.amount) filter (where t.created_at < p_start), 0)::bigint,
            coalesce(sum(t.amount), 0)::bigint
        into v_result.opening_balance, v_result.closing_balance
        from public.credit_transactions as t
        where t.user_id = v_user_id and t.created_at < p_end;
    else
        -- months are archived (88_archive.sql): the balances from the checkpoints, and no
        -- window that starts before the horizon
        if p_start < v_horizon then
            perform credit_private.fail_archived(
                format('the statement from %s', p_start), v_horizon - interval '1 month',
                jsonb_build_object('start', p_start, 'horizon', v_horizon)
            );
        end if;
        v_result.opening_balance := credit_private.balance_before(v_user_id, p_start);
        v_result.closing_balance := credit_private.balance_before(v_user_id, p_end);
    end if;

    select coalesce(jsonb_agg(jsonb_build_object(
        'type', s.type, 'count', s.n, 'amount', s.amount
    ) order by s.type), '[]')
    into v_result.by_type
    from (
        select t.type, count(*) as n, sum(t.amount) as amount
        from public.credit_transactions as t
        where t.user_id = v_user_id and t.created_at >= p_start and t.created_at < p_end
        group by t.type
    ) as s;

    -- a refund has no model of its own: it counts for the charge it refunds
    select coalesce(jsonb_agg(jsonb_build_object(
        'model', s.model, 'count', s.n, 'amount', s.amount
    ) order by s.model), '[]')
    into v_result.by_model
    from (
        select coalesce(t.model, o.model) as model, count(*) as n, sum(t.amount) as amount
        from public.credit_transactions as t
        left join public.credit_transactions as o
            on t.refund_of = o.id and t.account_id = o.account_id
        where
            t.user_id = v_user_id and t.created_at >= p_start and t.created_at < p_end
            and coalesce(t.model, o.model) is not null
        group by 1
    ) as s;

    -- the journal rows that created a grant, by the grant's category
    select coalesce(jsonb_agg(jsonb_build_object(
        'category', s.category, 'count', s.n, 'amount', s.amount
    ) order by s.category), '[]')
    into v_result.by_category
    from (
        select g.category, count(*) as n, sum(t.amount) as amount
        from public.credit_transactions as t
        inner join public.credit_grants as g on t.id = g.transaction_id
        where t.user_id = v_user_id and t.created_at >= p_start and t.created_at < p_end
        group by g.category
    ) as s;

    -- what is left now of the grants that lapse in the 30 days after the window
    select
        coalesce(jsonb_agg(jsonb_build_object(
            'grant_id', g.id, 'category', g.category, 'remaining', g.remaining,
            'expires_at', g.expires_at
        ) order by g.expires_at, g.id), '[]'),
        coalesce(sum(g.remaining), 0)::bigint
    into v_result.expiring, v_result.expiring_total
    from public.credit_grants as g
    where
        g.account_id = (select a.id from public.credit_accounts as a where a.user_id = v_user_id)
        and g.spendable
        and g.expires_at > p_end and g.expires_at <= p_end + interval '30 days';
    return v_result;
end;
$$;
revoke all on function public.credit_statement(text, timestamptz, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_statement(text, timestamptz, timestamptz)
to authenticated, service_role;

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
declare
    v_first_id uuid;
    v_end_id uuid;
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
    -- the window in ids (each carries its created_at's millisecond), as constants of the
    -- plan: only the partitions of its months are read
    v_first_id := credit_private.uuid_floor(p_start);
    v_end_id := credit_private.uuid_floor(p_end + interval '1 millisecond');
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
        and t.id >= v_first_id and t.id < v_end_id
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

create or replace function public.credit_verify_ledger(p_since timestamptz default null)
returns setof public.credit_ledger_issue
language plpgsql
stable
security invoker
set search_path = ''
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
declare
    v_horizon timestamptz := credit_private.archive_horizon();
begin
    -- every row is a broken invariant; an empty answer means the ledger is consistent.
    -- p_since: each account from its newest checkpoint at or before it (84_checkpoints.sql);
    -- with no checkpoint that old, the full check reads every row in fewer steps. Once
    -- months are archived (88_archive.sql) the journal starts at the horizon: the full
    -- check, and a p_since before it, check from the checkpoints at the horizon
    if v_horizon is not null and (p_since is null or p_since < v_horizon) then
        return query select * from credit_private.verify_since(v_horizon);
        return;
    end if;
    if p_since is not null
        and exists (select from public.credit_checkpoints as k where k.period_start <= p_since) then
        return query select * from credit_private.verify_since(p_since);
        return;
    end if;
    return query
    with journal as (
        select
            t.account_id,
            sum(t.amount) as total,
            count(*) as n,
            max(t.seq) as last_seq
        from public.credit_transactions as t
        group by t.account_id
    ),

    grants as (
        select g.account_id, sum(g.remaining) as remaining
        from public.credit_grants as g
        group by g.account_id
    ),

    debt_draws as (
        select t.account_id, sum(d.amount) as debt
        from public.credit_grant_draws as d
        inner join public.credit_transactions as t on d.transaction_id = t.id
        where d.grant_id is null
        group by t.account_id
    ),

    chain as (
        select
            t.account_id,
            t.seq,
            t.balance_after,
            coalesce(lag(t.balance_after) over w, 0) + t.amount as expected
        from public.credit_transactions as t
        window w as (partition by t.account_id order by t.seq)
    )

    select a.id, a.user_id, 'balance = sum of journal', coalesce(j.total, 0)::text, a.balance::text
    from public.credit_accounts as a
    left join journal as j on a.id = j.account_id
    where a.balance <> coalesce(j.total, 0)

    union all
    select a.id, a.user_id, 'journal seq is 1..version', a.version::text,
        format('%s rows, last seq %s', coalesce(j.n, 0), j.last_seq)
    from public.credit_accounts as a
    left join journal as j on a.id = j.account_id
    where coalesce(j.n, 0) <> a.version or coalesce(j.last_seq, 0) <> a.version

    union all
    select c.account_id, null, 'balance_after chain at seq ' || c.seq, c.expected::text,
        c.balance_after::text
    from chain as c
    where c.balance_after <> c.expected

    union all
    select a.id, a.user_id, 'balance = grants remaining - debt',
        (coalesce(g.remaining, 0) - a.debt)::text, a.balance::text
    from public.credit_accounts as a
    left join grants as g on a.id = g.account_id
    where a.balance <> coalesce(g.remaining, 0) - a.debt

    union all
    select a.id, a.user_id, 'debt = sum of debt draws', coalesce(d.debt, 0)::text, a.debt::text
    from public.credit_accounts as a
    left join debt_draws as d on a.id = d.account_id
    where a.debt <> coalesce(d.debt, 0)

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' remaining = amount - draws',
        (g.amount - coalesce(sum(d.amount), 0))::text, g.remaining::text
    from public.credit_grants as g
    left join public.credit_grant_draws as d on g.account_id = d.account_id and g.id = d.grant_id
    group by g.id, g.account_id
    having g.remaining <> g.amount - coalesce(sum(d.amount), 0)

    union all
    select t.account_id, t.user_id, 'transaction ' || t.id || ' amount = its draws',
        (-t.amount)::text, coalesce(sum(d.amount), 0)::text
    from public.credit_transactions as t
    left join public.credit_grant_draws as d
        on t.account_id = d.account_id and t.id = d.transaction_id
    where t.type in ('usage', 'fixed_job', 'capture', 'expiry', 'void')
    group by t.id, t.account_id
    having -t.amount <> coalesce(sum(d.amount), 0)

    union all
    select t.account_id, t.user_id,
        'refunds of ' || t.id || ' gave back at most what it drew from each source',
        '>= 0', sum(m.amount)::text
    from public.credit_transactions as t
    inner join (
        select coalesce(r.refund_of, r.id) as original, d.grant_id, d.amount
        from public.credit_grant_draws as d
        inner join public.credit_transactions as r on d.transaction_id = r.id
        where r.type in ('usage', 'fixed_job', 'capture', 'void', 'refund')
        union all
        select r.refund_of, null, -g.amount
        from public.credit_grants as g
        inner join public.credit_transactions as r on g.transaction_id = r.id
        where r.type = 'refund'
    ) as m on t.id = m.original
    group by t.id, t.account_id, m.grant_id
    having sum(m.amount) < 0

    union all
    select o.account_id, o.user_id, 'refunds of ' || o.id || ' <= charged',
        (-o.amount)::text, sum(r.amount)::text
    from public.credit_transactions as o
    inner join public.credit_transactions as r
        on o.account_id = r.account_id and o.id = r.refund_of
    group by o.id, o.account_id
    having sum(r.amount) > -o.amount

    union all
    select r.account_id, r.user_id, 'reservation ' || r.id || ' settled = its capture',
        r.settled_amount::text, coalesce(-t.amount, 0)::text
    from public.credit_reservations as r
    left join public.credit_transactions as t on r.transaction_id = t.id
    where r.status = 'settled' and r.settled_amount <> coalesce(-t.amount, 0)

    -- what the journal's foreign keys checked before rows could be archived: a refund's
    -- charge and a grant's row exist (nothing is archived here: the full check runs only
    -- while every row is attached)
    union all
    select r.account_id, r.user_id, 'refund ' || r.id || ' names a journal row',
        r.refund_of::text, 'none'
    from public.credit_transactions as r
    where
        r.refund_of is not null
        and not exists (
            select from public.credit_transactions as o
            where o.account_id = r.account_id and o.id = r.refund_of
        )

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' has its journal row',
        g.transaction_id::text, 'none'
    from public.credit_grants as g
    where not exists (
        select from public.credit_transactions as o
        where o.account_id = g.account_id and o.id = g.transaction_id
    )

    -- a keyed one-call debit is found by its key (find_replay reads credit_debit_keys
    -- alone): without its record, a retry would charge again
    union all
    select t.account_id, t.user_id, 'keyed debit ' || t.id || ' has its key record',
        t.idempotency_key, 'none'
    from public.credit_transactions as t
    where
        t.request_hash is not null
        and not exists (
            select from public.credit_debit_keys as k
            where
                k.account_id = t.account_id and k.idempotency_key = t.idempotency_key
                and k.transaction_id = t.id
        )

    union all
    select s.account_id, s.user_id, s.check_name, s.expected, s.actual
    from credit_private.verify_scopes() as s;
end;
$$;
revoke all on function public.credit_verify_ledger(timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_verify_ledger(timestamptz) to service_role;

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205001800'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
