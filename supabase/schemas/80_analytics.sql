-- ducto: usage analytics over the journal, for the service role.
--
-- Every function reads the journal rows of a window [p_start, p_end) by created_at, which
-- the journal's BRIN index (credit_transactions_time_idx) serves: a one-day window reads
-- that day's blocks, not the journal (bench/stats.py measures it on 1M rows). Each query is
-- planned for its window (plan_cache_mode = force_custom_plan): a cached generic plan,
-- blind to the window's width, would pick a whole-index scan for every window.
--
-- What counts (docs/analytics.md):
--   spent      charges: usage, fixed_job and capture rows (usage happened)
--   refunded   refund rows, counted in the window in which the refund was made
--   net_spent  spent - refunded
--   credited   grant, purchase, adjustment and promotion rows
--   expired    expiry rows: credits that lapsed, never spend
-- Void rows (credits taken back) count in none of them.
-- A row is attributed to its user: the account's user, or for a team pool's rows the
-- member who spent (credit_transactions.attributed_user_id, inherited by refunds). A
-- refund counts for the model of the charge it refunds. Days are UTC days. Sums of credits
-- are numeric: a window's total can pass bigint's range even though each row cannot.

create view credit_private.journal_activity with (security_invoker = true) as
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

revoke all on table credit_private.journal_activity
from public, anon, authenticated, service_role;
grant select on table credit_private.journal_activity to service_role;

create function credit_private.check_window(p_start timestamptz, p_end timestamptz)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    if p_start is null or p_end is null or p_start >= p_end
        or not isfinite(p_start) or not isfinite(p_end) then
        perform credit_private.fail(
            'DC006',
            format('the window must be finite times with start < end, got [%s, %s)',
                coalesce(p_start::text, 'null'), coalesce(p_end::text, 'null')),
            jsonb_build_object('argument', 'window', 'start', p_start, 'end', p_end)
        );
    end if;
end;
$$;
revoke all on function credit_private.check_window(
    timestamptz, timestamptz
) from public, anon, authenticated, service_role;
-- authenticated: a signed-in user's own statement (credit_statement) checks its window
grant execute on function credit_private.check_window(
    timestamptz, timestamptz
) to authenticated, service_role;

-- The sums every analytics function reports, in one place.
create function credit_private.spend(p_start timestamptz, p_end timestamptz, p_by text)
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

create function public.credit_aggregate_stats(p_start timestamptz, p_end timestamptz)
returns public.credit_stats_result
language plpgsql
stable
set search_path = ''
as $$
declare
    v_result public.credit_stats_result;
begin
    perform credit_private.check_window(p_start, p_end);
    select
        p_start, p_end, coalesce(s.spent, 0), coalesce(s.refunded, 0),
        coalesce(s.spent - s.refunded, 0), coalesce(s.credited, 0), coalesce(s.expired, 0),
        coalesce(s.charges, 0), coalesce(s.refunds, 0), coalesce(s.users, 0)
    into v_result
    from (select) as one
    left join credit_private.spend(p_start, p_end, null) as s on true;
    return v_result;
end;
$$;
revoke all on function public.credit_aggregate_stats(
    timestamptz, timestamptz
) from public, anon, authenticated, service_role;
grant execute on function public.credit_aggregate_stats(
    timestamptz, timestamptz
) to service_role;

create function public.credit_daily_spend(p_start timestamptz, p_end timestamptz)
returns setof public.credit_daily_spend_row
language plpgsql
stable
set search_path = ''
as $$
begin
    perform credit_private.check_window(p_start, p_end);
    -- every UTC day the window touches, zeros included, oldest first
    return query
    select
        d.day::date, coalesce(s.spent, 0), coalesce(s.refunded, 0),
        coalesce(s.spent - s.refunded, 0), coalesce(s.charges, 0), coalesce(s.users, 0)
    from generate_series(
        (p_start at time zone 'UTC')::date,
        ((p_end - interval '1 microsecond') at time zone 'UTC')::date,
        interval '1 day'
    ) as d (day)
    left join credit_private.spend(p_start, p_end, 'day') as s on d.day::date::text = s.key
    order by 1;
end;
$$;
revoke all on function public.credit_daily_spend(timestamptz, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_daily_spend(
    timestamptz, timestamptz
) to service_role;

create function public.credit_spend_by_model(p_start timestamptz, p_end timestamptz)
returns setof public.credit_model_spend_row
language plpgsql
stable
set search_path = ''
as $$
begin
    perform credit_private.check_window(p_start, p_end);
    -- model is null for charges priced by amount (and fixed jobs), which have none
    return query
    select s.key, s.spent, s.refunded, s.spent - s.refunded, s.charges, s.users
    from credit_private.spend(p_start, p_end, 'model') as s
    order by 4 desc, 1 nulls last;
end;
$$;
revoke all on function public.credit_spend_by_model(
    timestamptz, timestamptz
) from public, anon, authenticated, service_role;
grant execute on function public.credit_spend_by_model(
    timestamptz, timestamptz
) to service_role;

create function public.credit_spend_by_user(p_start timestamptz, p_end timestamptz)
returns setof public.credit_user_spend_row
language plpgsql
stable
set search_path = ''
as $$
begin
    perform credit_private.check_window(p_start, p_end);
    return query
    select s.key, s.spent, s.refunded, s.spent - s.refunded, s.charges
    from credit_private.spend(p_start, p_end, 'user') as s
    order by 4 desc, 1;
end;
$$;
revoke all on function public.credit_spend_by_user(
    timestamptz, timestamptz
) from public, anon, authenticated, service_role;
grant execute on function public.credit_spend_by_user(
    timestamptz, timestamptz
) to service_role;

create function public.credit_top_users(
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
