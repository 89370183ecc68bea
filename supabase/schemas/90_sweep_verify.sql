-- ducto: the sweep, which expires what is left of expired grants and times out abandoned
-- holds, one account at a time; and credit_verify_ledger(), which lists every broken
-- invariant of the ledger (none, always), in full or from the checkpoints (84_checkpoints.sql).

create function credit_private.sweep_candidates(p_now timestamptz)
returns table (account_id bigint)
language sql
stable
set search_path = ''
as $$
    -- accounts with expired grants that still hold credits, or with timed-out holds
    select g.account_id
    from public.credit_grants as g
    where g.spendable and g.expires_at <= p_now
    union
    select r.account_id
    from public.credit_reservations as r
    where r.status = 'active' and r.expires_at <= p_now
    order by 1;
$$;
revoke all on function credit_private.sweep_candidates(timestamptz)
from public, anon, authenticated, service_role;

create function public.credit_sweep_expired(p_dry_run boolean default false)
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

create function public.credit_verify_ledger(p_since timestamptz default null)
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
