-- ducto: per-account checkpoints. At a month boundary (UTC) each account's state is recorded:
-- the seq of its last journal row created before the boundary, the balance and debt after
-- it, and what was left of each of its grants. From a checkpoint, credit_verify_ledger(since)
-- checks only the rows after it, credit_balance_at reads at most one month of rows, and the
-- rows before it are no longer needed to answer either (docs/operations.md, "Checkpoints").
--
-- A checkpoint is a prefix of the account's journal by seq: rows 1..last_seq. Seq is the
-- commit order of the account; created_at is the start of the transaction that wrote the
-- row, so a transaction that began before the boundary and waited for the account's lock
-- may carry a created_at before it and a seq after a row created after it. last_seq is the
-- newest row created before the boundary, so every row after it was created at or after
-- the boundary; the few rows at or before it created at or after the boundary start at
-- straddle_seq. credit_take_checkpoints refuses a boundary while a transaction that began
-- before it still runs, so no row created before the boundary can commit after its
-- checkpoint.
--
-- A checkpoint is trusted once taken: credit_take_checkpoints verifies everything after the
-- previous checkpoints before it records new ones, and refuses on a broken ledger.

-- ---------------------------------------------------------------- tables

create table public.credit_checkpoints (
    account_id bigint not null references public.credit_accounts (id),
    period_start timestamptz not null,
    last_seq bigint not null,
    balance bigint not null,
    debt bigint not null,
    straddle_seq bigint,
    taken_at timestamptz not null,
    primary key (account_id, period_start),
    -- a boundary is a month start in UTC
    check (period_start = date_trunc('month', period_start, 'UTC')),
    check (last_seq >= 0 and debt >= 0),
    check (straddle_seq between 1 and last_seq)
);
comment on table public.credit_checkpoints is
'An account''s state at a month boundary (UTC): its journal rows 1..last_seq, the last one'
' the newest created before period_start. Written by credit_take_checkpoints; never changed.';
comment on column public.credit_checkpoints.last_seq is
'The seq of the account''s newest journal row created before period_start (0: none yet).'
' Every row after it was created at or after period_start.';
comment on column public.credit_checkpoints.balance is 'The balance_after of row last_seq.';
comment on column public.credit_checkpoints.debt is
'The debt after row last_seq: the sum of the debt draws of rows 1..last_seq.';
comment on column public.credit_checkpoints.straddle_seq is
'The first seq <= last_seq whose row may have been created at or after period_start (a'
' transaction that began before the boundary and committed after one that began after it);'
' null: none.';

create table public.credit_checkpoint_grants (
    account_id bigint not null,
    period_start timestamptz not null,
    grant_id uuid not null,
    remaining bigint not null check (remaining > 0),
    primary key (account_id, period_start, grant_id),
    constraint credit_checkpoint_grants_checkpoint_fkey foreign key (account_id, period_start)
    references public.credit_checkpoints (account_id, period_start),
    constraint credit_checkpoint_grants_grant_fkey foreign key (account_id, grant_id)
    references public.credit_grants (account_id, id)
);
comment on table public.credit_checkpoint_grants is
'What was left of each grant of the account after row last_seq of its checkpoint: the'
' grant''s amount less the draws of rows 1..last_seq. A grant not listed had nothing left.';

-- is there a checkpoint at or before a time (credit_verify_ledger(p_since))
create index credit_checkpoints_period_idx on public.credit_checkpoints (period_start);

-- the foreign key to the grant, checked when a grant row is removed or re-keyed
create index credit_checkpoint_grants_grant_idx
on public.credit_checkpoint_grants (account_id, grant_id);

-- a checkpoint is trusted once taken: nobody changes it
create trigger credit_checkpoints_append_only
before update or delete on public.credit_checkpoints
for each row execute function credit_private.refuse_journal_change();
create trigger credit_checkpoints_no_truncate
before truncate on public.credit_checkpoints
for each statement execute function credit_private.refuse_journal_change();
create trigger credit_checkpoint_grants_append_only
before update or delete on public.credit_checkpoint_grants
for each row execute function credit_private.refuse_journal_change();
create trigger credit_checkpoint_grants_no_truncate
before truncate on public.credit_checkpoint_grants
for each statement execute function credit_private.refuse_journal_change();

alter table public.credit_checkpoints enable row level security;
alter table public.credit_checkpoint_grants enable row level security;

-- credit_balance_at (security invoker) reads the checkpoints of a signed-in user's own
-- account; the grants of a checkpoint are the service role's alone.
create policy credit_checkpoints_read_own on public.credit_checkpoints
for select to authenticated
using (
    account_id = (
        select a.id from public.credit_accounts as a
        where a.user_id = (select auth.uid())::text
    )
);

revoke all on table public.credit_checkpoints, public.credit_checkpoint_grants
from public, anon, authenticated, service_role;
grant select on table public.credit_checkpoints to authenticated, service_role;
grant select on table public.credit_checkpoint_grants to service_role;

-- ---------------------------------------------------------------- result type

create type public.credit_checkpoint_result as (
    period_start timestamptz,
    recorded integer,
    kept integer,
    grants integer
);
comment on type public.credit_checkpoint_result is
'credit_take_checkpoints: the boundary, the checkpoints it recorded, those it found already'
' recorded (and kept as they were), and the grant balances it recorded.
@notNull period_start, recorded, kept, grants';

-- ---------------------------------------------------------------- verification from a checkpoint

create function credit_private.verify_since(p_since timestamptz)
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

-- ---------------------------------------------------------------- taking checkpoints

create function public.credit_take_checkpoints(p_period_start timestamptz)
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
