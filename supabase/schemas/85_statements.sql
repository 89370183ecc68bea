-- ducto: statements. What an account's journal says at an instant, and what happened in a
-- window: the reads behind an invoice, a monthly statement or a support answer.
--
-- Both read the journal as it is written (docs/statements.md):
--   * a balance at T is the sum of the amounts of the account's journal rows created at or
--     before T: the journal's balance. An expiry counts from the moment the sweep journaled
--     it, so between a grant's expires_at and the sweep this balance still holds the
--     lapsed credits that credit_get_balance already leaves out; holds are not journal
--     rows and never count;
--   * a statement covers [p_start, p_end), like the analytics windows: its opening balance
--     is the balance just before p_start, its closing balance the balance just before
--     p_end, and every journal row created in the window is in its totals, so opening +
--     the sum of the totals by type = closing.
-- Security invoker: a signed-in user reads their own account through row-level security
-- and nobody else's (credit_private.reader_id says 42501); the service role reads anyone's.

-- ---------------------------------------------------------------- result types

create type public.credit_balance_at_result as (
    user_id text,
    at timestamptz,
    balance bigint
);
comment on type public.credit_balance_at_result is
'credit_balance_at: the sum of the user''s journal rows created at or before at.
@notNull user_id, at, balance';

create type public.credit_statement_result as (
    user_id text,
    period_start timestamptz,
    period_end timestamptz,
    opening_balance bigint,
    closing_balance bigint,
    by_type jsonb,
    by_model jsonb,
    by_category jsonb,
    expiring jsonb,
    expiring_total bigint
);
comment on type public.credit_statement_result is
'credit_statement over [period_start, period_end). by_type: [{type, count, amount}] of every'
' journal row of the window (amounts signed, credits positive), so opening_balance + the sum'
' of its amounts = closing_balance. by_model: [{model, count, amount}] of the rows with a'
' model (a refund counts for the model of the charge it refunds). by_category: [{category,'
' count, amount}] of the grants credited in the window. expiring: [{grant_id, category,'
' remaining, expires_at}] of the grants with credits left now that expire in (period_end,'
' period_end + 30 days], soonest first; expiring_total is their sum. Every list is sorted by'
' its key.
@notNull user_id, period_start, period_end, opening_balance, closing_balance, by_type, by_model,'
' by_category, expiring, expiring_total';

-- ---------------------------------------------------------------- functions

create function public.credit_balance_at(
    p_user_id text default null, p_at timestamptz default null
)
returns public.credit_balance_at_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    -- no user id: a signed-in user's own
    v_user_id text := credit_private.reader_id(p_user_id, 'statement');
    v_result public.credit_balance_at_result;
    v_account_id bigint;
    v_checkpoint public.credit_checkpoints;
    v_until bigint;
    v_horizon timestamptz;
begin
    if p_at is null or not isfinite(p_at) then
        perform credit_private.fail(
            'DC006',
            format('at must be a finite time, got %s', coalesce(p_at::text, 'null')),
            jsonb_build_object('argument', 'at')
        );
    end if;
    -- before the archive horizon the journal no longer holds every row (88_archive.sql)
    v_horizon := credit_private.archive_horizon();
    if p_at < v_horizon then
        perform credit_private.fail_archived(
            format('the balance at %s', p_at), v_horizon - interval '1 month',
            jsonb_build_object('at', p_at, 'horizon', v_horizon)
        );
    end if;
    select a.id into v_account_id from public.credit_accounts as a where a.user_id = v_user_id;
    -- the newest checkpoint at or before p_at (84_checkpoints.sql), and the next one's seq
    select k.* into v_checkpoint
    from public.credit_checkpoints as k
    where k.account_id = v_account_id and k.period_start <= p_at
    order by k.period_start desc
    limit 1;
    if v_checkpoint.account_id is null then
        -- a sum, not the newest row's balance_after: rows of concurrent operations commit in
        -- seq order but may carry created_at out of that order
        select v_user_id, p_at, coalesce(sum(t.amount), 0)::bigint
        into v_result
        from public.credit_transactions as t
        where t.user_id = v_user_id and t.created_at <= p_at;
        return v_result;
    end if;
    -- rows after the next checkpoint's last_seq were created after its boundary, so after p_at
    select k.last_seq into v_until
    from public.credit_checkpoints as k
    where k.account_id = v_account_id and k.period_start > p_at
    order by k.period_start
    limit 1;
    -- the checkpoint's balance, less its rows created after p_at (only straddlers can be),
    -- plus the month's rows after it created at or before p_at
    select v_user_id, p_at, (v_checkpoint.balance + coalesce(sum(
        case when t.seq <= v_checkpoint.last_seq then -t.amount else t.amount end
    ), 0))::bigint
    into v_result
    from public.credit_transactions as t
    where
        t.account_id = v_account_id
        and t.seq >= coalesce(v_checkpoint.straddle_seq, v_checkpoint.last_seq + 1)
        and t.seq <= coalesce(v_until, 9223372036854775807)
        and (
            (t.seq <= v_checkpoint.last_seq and t.created_at > p_at)
            or (t.seq > v_checkpoint.last_seq and t.created_at <= p_at)
        );
    return v_result;
end;
$$;
revoke all on function public.credit_balance_at(text, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_balance_at(text, timestamptz)
to authenticated, service_role;

-- The sum of a user's journal rows created before p_at, from the newest checkpoint at or
-- before it (84_checkpoints.sql): its balance, less its rows created at or after p_at (only
-- straddlers can be), plus the later rows created before p_at. Once months are archived,
-- for p_at at or after the horizon, every row it reads is attached.
create function credit_private.balance_before(p_user_id text, p_at timestamptz)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
declare
    v_account_id bigint;
    v_checkpoint public.credit_checkpoints;
begin
    select a.id into v_account_id from public.credit_accounts as a where a.user_id = p_user_id;
    select k.* into v_checkpoint
    from public.credit_checkpoints as k
    where k.account_id = v_account_id and k.period_start <= p_at
    order by k.period_start desc
    limit 1;
    return (
        select (coalesce(v_checkpoint.balance, 0) + coalesce(sum(
            case when t.seq <= v_checkpoint.last_seq then -t.amount else t.amount end
        ), 0))::bigint
        from public.credit_transactions as t
        where
            t.account_id = v_account_id
            and t.seq >= coalesce(v_checkpoint.straddle_seq, v_checkpoint.last_seq + 1, 1)
            and (
                (t.seq <= v_checkpoint.last_seq and t.created_at >= p_at)
                or (t.seq > coalesce(v_checkpoint.last_seq, 0) and t.created_at < p_at)
            )
    );
end;
$$;
revoke all on function credit_private.balance_before(text, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function credit_private.balance_before(text, timestamptz)
to authenticated, service_role;

create function public.credit_statement(
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
