-- ducto: plans with feature entitlements, each user's plan, and periodic credit allowances.
--
--   credit_plans             a plan: a features JSON object and an optional allowance of
--                            credits per period (day, week, month, year) with a rollover cap
--   credit_user_plans        the plan assigned to a user; a user without one is on the
--                            default plan (at most one plan is the default), or on none
--   credit_allowance_grants  the allowance granted to an account for a period: at most one
--                            per account, period unit, period start and plan (the
--                            idempotency of credit_grant_allowances); after a plan change
--                            within a period the new plan tops the live allowance up to
--                            its own level, never both in full
--
-- Feature values follow a truthy convention: absent, JSON null and false mean "no"; true,
-- a number or a string (and an object or array) mean "yes", and the value is returned so
-- an app can read a limit from it. A user with no plan at all has no features: every check
-- answers "no", never an error an app could mistake for "allowed".
--
-- Errors: DC006 invalid argument, DC080 plan not found (docs/plans-teams.md).

create function credit_private.period_bounds(
    p_period text, p_at timestamptz, out period_start timestamptz, out period_end timestamptz
)
language plpgsql
immutable
set search_path = ''
as $$
declare
    v_start timestamp := date_trunc(p_period, p_at at time zone 'UTC');
begin
    -- calendar periods in UTC (weeks start on Monday), computed on UTC wall-clock time so
    -- that the session's time zone cannot move a period's start or a month's end
    period_start := v_start at time zone 'UTC';
    period_end := (v_start + case p_period
        when 'day' then interval '1 day'
        when 'week' then interval '7 days'
        when 'month' then interval '1 month'
        else interval '1 year'
    end) at time zone 'UTC';
end;
$$;
revoke all on function credit_private.period_bounds(text, timestamptz)
from public, anon, authenticated, service_role;

create function credit_private.grant_allowance(
    p_user_id text, p_plan public.credit_plans, p_now timestamptz,
    out granted bigint, out rollover bigint
)
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_period record := credit_private.period_bounds(p_plan.allowance_period, p_now);
    v_previous_start timestamptz;
    v_account public.credit_accounts;
    v_live bigint;
    v_grant_id uuid := credit_private.uuid_v7();
    v_transaction_id uuid;
begin
    -- Grants the plan's allowance for the current period, once: granted (the allowance
    -- credited, rollover apart) and the rollover carried in, or nulls when there was
    -- nothing to grant. The caller holds no lock; the account lock serialises concurrent
    -- runs, and the second one finds the row.
    v_account := credit_private.lock_account(p_user_id, true);
    if exists (
        select from public.credit_allowance_grants as ag
        where
            ag.account_id = v_account.id
            and ag.period = p_plan.allowance_period
            and ag.period_start = v_period.period_start
            and ag.plan_id = p_plan.id
    ) then
        return;
    end if;
    -- journals the expiry of the previous period's grant, which the rollover reads
    perform credit_private.expire_grants(v_account.id, p_now);

    -- After a plan change within a period, an allowance of the old plan (or of another
    -- period length) is still live: the new plan tops it up to its own level for the
    -- rest of that period, and never grants both in full. A downgrade takes nothing back.
    select sum(g.remaining) into v_live
    from public.credit_allowance_grants as ag
    inner join public.credit_grants as g on ag.grant_id = g.id
    where ag.account_id = v_account.id and g.expires_at > p_now;
    rollover := 0;
    if v_live is not null then
        granted := p_plan.allowance - v_live;
        if granted <= 0 then
            granted := null;
            rollover := null;
            return;
        end if;
    else
        granted := p_plan.allowance;
        if p_plan.rollover_cap > 0 then
            v_previous_start := (credit_private.period_bounds(
                p_plan.allowance_period, v_period.period_start - interval '1 microsecond'
            )).period_start;
            -- what the previous period's allowance had left when it expired
            select least(coalesce(sum(d.amount), 0), p_plan.rollover_cap)::bigint
            into rollover
            from public.credit_allowance_grants as ag
            inner join public.credit_grant_draws as d on ag.grant_id = d.grant_id
            inner join public.credit_transactions as t on d.transaction_id = t.id
            where
                ag.account_id = v_account.id
                and ag.period = p_plan.allowance_period
                and ag.period_start = v_previous_start
                and t.type = 'expiry';
        end if;
    end if;

    v_transaction_id := (credit_private.append_transaction(
        v_account.id, 'grant', granted + rollover, p_now,
        jsonb_build_object(
            'plan_id', p_plan.id,
            'period', p_plan.allowance_period,
            'period_start', v_period.period_start,
            'allowance', granted,
            'rollover', rollover
        ),
        p_grant_id => v_grant_id
    )).id;
    perform credit_private.create_grant(
        v_account.id, v_transaction_id, v_grant_id, 'promotional', 50, granted + rollover,
        v_period.period_end, p_now
    );
    insert into public.credit_allowance_grants (
        account_id, period, period_start, plan_id, grant_id, allowance, rollover, created_at
    ) values (
        v_account.id, p_plan.allowance_period, v_period.period_start, p_plan.id, v_grant_id,
        granted, rollover, p_now
    );
end;
$$;
revoke all on function credit_private.grant_allowance(
    text, public.credit_plans, timestamptz
) from public, anon, authenticated, service_role;

create function public.credit_upsert_plan(
    p_plan_id text,
    p_name text,
    p_features jsonb default '{}',
    p_allowance numeric default null,
    p_allowance_period text default null,
    p_rollover_cap numeric default null,
    p_is_default boolean default false
)
returns public.credit_plan_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_allowance bigint;
    v_rollover_cap bigint;
    v_plan public.credit_plans;
    v_default text;
begin
    if p_plan_id is null or p_plan_id !~ '^[a-z0-9][a-z0-9_.-]{0,63}$' then
        perform credit_private.fail(
            'DC006',
            format('plan_id must be 1 to 64 lower-case letters, digits, ".", "_" or "-",'
                || ' starting with a letter or digit, got %s',
                coalesce(quote_literal(left(p_plan_id, 80)), 'null')),
            jsonb_build_object('argument', 'plan_id')
        );
    end if;
    if p_name is null or length(p_name) not between 1 and 200 then
        perform credit_private.fail(
            'DC006', 'plan name must be 1 to 200 characters',
            jsonb_build_object('argument', 'name')
        );
    end if;
    if p_features is null or jsonb_typeof(p_features) <> 'object'
        or octet_length(p_features::text) > 16384 then
        perform credit_private.fail(
            'DC006', 'features must be a JSON object of at most 16384 bytes',
            jsonb_build_object('argument', 'features', 'limit', 16384)
        );
    end if;
    if p_allowance is not null then
        v_allowance := credit_private.whole(p_allowance, 'allowance', 1);
        perform credit_private.check_choice(
            p_allowance_period, 'allowance_period', array['day', 'week', 'month', 'year']
        );
    elsif p_allowance_period is not null or p_rollover_cap is not null then
        perform credit_private.fail(
            'DC006', 'allowance_period and rollover_cap need an allowance',
            jsonb_build_object('argument', 'allowance')
        );
    end if;
    if p_rollover_cap is not null then
        v_rollover_cap := credit_private.whole(p_rollover_cap, 'rollover_cap', 0);
    end if;
    if coalesce(p_is_default, false) and v_allowance is not null then
        perform credit_private.fail(
            'DC006',
            'the default plan cannot carry an allowance: allowances go to assigned users',
            jsonb_build_object('argument', 'is_default'),
            'assign the plan to each user instead (credit_assign_plan)'
        );
    end if;

    -- the default plan's alerts apply to the users without a plan of their own: a change
    -- of the default plan recomputes their alert flags, with no other change of alerts or
    -- plans meanwhile
    perform credit_private.lock_alert_flags(null);
    -- plan writers take turns, so moving the default flag never races another writer;
    -- readers and assignments are not blocked
    lock table public.credit_plans in share row exclusive mode;
    v_default := (select d.id from public.credit_plans as d where d.is_default);
    if coalesce(p_is_default, false) then
        update public.credit_plans set is_default = false, updated_at = v_now
        where is_default and id <> p_plan_id;
    end if;
    insert into public.credit_plans as p (
        id, name, features, is_default, allowance, allowance_period, rollover_cap,
        created_at, updated_at
    ) values (
        p_plan_id, p_name, p_features, coalesce(p_is_default, false), v_allowance,
        p_allowance_period, v_rollover_cap, v_now, v_now
    )
    on conflict (id) do update set
        name = excluded.name,
        features = excluded.features,
        is_default = excluded.is_default,
        allowance = excluded.allowance,
        allowance_period = excluded.allowance_period,
        rollover_cap = excluded.rollover_cap,
        updated_at = excluded.updated_at
    returning * into v_plan;
    if v_default is distinct from (select d.id from public.credit_plans as d where d.is_default) then
        perform credit_private.refresh_alert_flags(null, null);
    end if;
    return row(
        v_plan.id, v_plan.name, v_plan.features, v_plan.is_default, v_plan.allowance,
        v_plan.allowance_period, v_plan.rollover_cap, v_plan.created_at, v_plan.updated_at
    );
end;
$$;
revoke all on function public.credit_upsert_plan(text, text, jsonb, numeric, text, numeric, boolean)
from public, anon, authenticated, service_role;
grant execute on function public.credit_upsert_plan(
    text, text, jsonb, numeric, text, numeric, boolean
) to service_role;

create function public.credit_get_user_plan(p_user_id text default null)
returns public.credit_user_plan_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    -- no user id: a signed-in user's own
    v_user_id text := credit_private.reader_id(p_user_id, 'plan');
    v_result public.credit_user_plan_result;
begin
    -- the assigned plan, else the default plan, else no plan and no features
    select
        v_user_id, p.id, p.name, coalesce(p.features, '{}'),
        -- on the default plan only when there is one
        up.user_id is null and p.id is not null, p.allowance, p.allowance_period,
        p.rollover_cap, up.assigned_at
    into v_result
    from (select 1) as one
    left join public.credit_user_plans as up on up.user_id = v_user_id
    left join public.credit_plans as p on p.id = coalesce(
        up.plan_id,
        (select d.id from public.credit_plans as d where d.is_default)
    );
    return v_result;
end;
$$;
revoke all on function public.credit_get_user_plan(text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_get_user_plan(text) to authenticated, service_role;

create function public.credit_check_feature(p_user_id text, p_feature text)
returns public.credit_feature_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    v_plan public.credit_user_plan_result := public.credit_get_user_plan(p_user_id);
    v_value jsonb;
begin
    if p_feature is null or length(p_feature) not between 1 and 200 then
        perform credit_private.fail(
            'DC006', 'feature must be 1 to 200 characters',
            jsonb_build_object('argument', 'feature')
        );
    end if;
    v_value := v_plan.features -> p_feature;
    -- absent, null and false: no; true, numbers, strings, objects and arrays: yes
    return row(
        v_plan.user_id, p_feature,
        coalesce(v_value not in ('null'::jsonb, 'false'::jsonb), false),
        nullif(v_value, 'null'::jsonb), v_plan.plan_id
    );
end;
$$;
revoke all on function public.credit_check_feature(text, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_check_feature(text, text) to authenticated, service_role;

create function public.credit_assign_plan(p_user_id text, p_plan_id text)
returns public.credit_user_plan_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
begin
    perform credit_private.check_user_id(p_user_id);
    -- the plan decides which plan alerts apply: the account's alert flag follows
    perform credit_private.lock_alert_flags(p_user_id);
    -- null removes the assignment: the user falls back to the default plan
    if p_plan_id is null then
        delete from public.credit_user_plans where user_id = p_user_id;
        perform credit_private.refresh_alert_flags(p_user_id, null);
        return public.credit_get_user_plan(p_user_id);
    end if;
    perform from public.credit_plans as p where p.id = p_plan_id;
    if not found then
        perform credit_private.fail(
            'DC080', format('plan %s does not exist', quote_literal(left(p_plan_id, 100))),
            jsonb_build_object('plan_id', left(p_plan_id, 100))
        );
    end if;
    insert into public.credit_user_plans as up (user_id, plan_id, assigned_at)
    values (p_user_id, p_plan_id, v_now)
    on conflict (user_id) do update set plan_id = excluded.plan_id, assigned_at = excluded.assigned_at
    where up.plan_id is distinct from excluded.plan_id;
    perform credit_private.refresh_alert_flags(p_user_id, null);
    return public.credit_get_user_plan(p_user_id);
end;
$$;
revoke all on function public.credit_assign_plan(text, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_assign_plan(text, text) to service_role;

create function public.credit_grant_allowances(p_user_id text default null)
returns public.credit_allowance_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_user record;
    v_granted record;
    v_result public.credit_allowance_result := row(0, 0, 0, 0::bigint, 0::bigint);
begin
    -- For every assigned user whose plan has an allowance (or only p_user_id): grant the
    -- current period's allowance, once per user and period. Idempotent, so it can run as
    -- often as wanted (pg_cron). A period in which it never ran is skipped, not granted
    -- late: its credits would have expired at its end anyway.
    if p_user_id is not null then
        perform credit_private.check_user_id(p_user_id);
    end if;
    -- one account at a time, in account id order as the sweep takes them, so the two
    -- jobs cannot deadlock on the locks each holds until commit; users without an
    -- account yet come last (the sweep never locks those)
    for v_user in
        select up.user_id, p as plan
        from public.credit_user_plans as up
        inner join public.credit_plans as p on up.plan_id = p.id
        left join public.credit_accounts as a on up.user_id = a.user_id
        where
            p.allowance is not null and (p_user_id is null or up.user_id = p_user_id)
            -- a plan a live Stripe subscription gave is granted per paid invoice
            -- (47_stripe_money.sql)
            and not exists (
                select from public.credit_stripe_subscriptions as s
                where
                    s.user_id = up.user_id and s.plan_id = up.plan_id
                    and s.status in ('active', 'trialing', 'past_due')
            )
        order by a.id nulls last, up.user_id
    loop
        v_granted := credit_private.grant_allowance(v_user.user_id, v_user.plan, v_now);
        v_result.users := v_result.users + 1;
        if v_granted.granted is null then
            v_result.already_granted := v_result.already_granted + 1;
        else
            v_result.granted := v_result.granted + 1;
            v_result.amount := v_result.amount + v_granted.granted + v_granted.rollover;
            v_result.rollover := v_result.rollover + v_granted.rollover;
        end if;
    end loop;
    return v_result;
end;
$$;
revoke all on function public.credit_grant_allowances(text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_grant_allowances(text) to service_role;
