-- ducto: spending limits, a cap on active holds and a credit line, per account
-- (docs/limits.md).
--
--   credit_account_limits  one row per account with any limit: the cap on active holds,
--                          the account's own credit line and grace; no row, no limits
--   credit_spend_windows   the account's spend windows: a calendar day, week or month (UTC)
--                          or a rolling number of hours, optionally for one model pattern
--   credit_plans.credit_line, .credit_line_grace_seconds   a plan's default credit line
--
-- Every check runs in the debit or the hold creation, under the account lock, so
-- concurrent charges and holds of one account are judged one after the other:
--   * a window admits a charge (or a new hold) if its net spend + the active holds + the
--     amount stay within its limit (DC085). Net spend: the charges (usage, fixed_job,
--     capture) made in the window, minus the refunds of those charges. A hold's model is
--     not known, so every active hold counts in every window. A settle is never refused
--     (the usage happened); it may take a window past its limit by its overage;
--   * at most max_active_holds active holds (DC086);
--   * a credit line lowers the floor: effective floor = min_balance - credit_line, so an
--     account may go that far below zero, the grants' shortfall being debt that the next
--     credits pay first. With a grace, once the balance has been below zero for longer
--     than the grace, charges that need the line are refused (DC087) until it is >= 0.
-- The cost for an account without limits: nothing per charge (the limits bit of its
-- credit_accounts.features is clear), one primary-key probe of credit_account_limits per
-- hold; the credit line is looked up only when a charge would otherwise be refused by its
-- floor.

-- ---------------------------------------------------------------- tables

create table public.credit_account_limits (
    account_id bigint primary key references public.credit_accounts (id),
    user_id text not null,
    max_active_holds integer check (max_active_holds between 0 and 1000000),
    credit_line bigint check (credit_line between 0 and 9007199254740991),
    credit_line_grace_seconds integer check (credit_line_grace_seconds > 0),
    updated_at timestamptz not null,
    -- a grace belongs to the account's own credit line
    check (credit_line_grace_seconds is null or credit_line is not null)
);
comment on table public.credit_account_limits is
'Limits of an account (docs/limits.md). An account with no row has no limits; every charge'
' and hold probes this table once by its primary key.';
comment on column public.credit_account_limits.user_id is
'The account''s user_id (for team pools ''team:<id>''): row-level security and the window'
' sums use it.';
comment on column public.credit_account_limits.max_active_holds is
'Most holds active at once (null = no cap). A new hold beyond it is refused (DC086).';
comment on column public.credit_account_limits.credit_line is
'How far below min_balance the account may go (null = its plan''s credit_line).';
comment on column public.credit_account_limits.credit_line_grace_seconds is
'How long the balance may stay below zero before charges needing the line are refused'
' (null = no deadline).';

create table public.credit_spend_windows (
    id bigint generated always as identity,
    account_id bigint not null references public.credit_account_limits (account_id),
    period text not null check (period in ('day', 'week', 'month', 'hours')),
    hours integer check (hours between 1 and 8784),
    model_pattern text check (
        model_pattern ~ '^[a-z0-9._:/@+*-]{1,200}$' and model_pattern ~ '[^*]'
        and model_pattern !~ '\*\*'
    ),
    spend_limit bigint not null check (spend_limit between 0 and 9007199254740991),
    -- hours only, and always, for a rolling window
    check ((period = 'hours') = (hours is not null)),
    constraint credit_spend_windows_pkey primary key (id, account_id)
);
comment on table public.credit_spend_windows is
'Spend windows: the net spend of the window + active holds + a new charge must stay within'
' spend_limit. day, week, month: the calendar period (UTC, weeks from Monday); hours: the'
' last `hours` hours.';
comment on column public.credit_spend_windows.model_pattern is
'Only charges whose model matches (lower case; * matches any run of characters, as in the'
' pricing); null: every charge. Active holds count in every window.';

create index credit_spend_windows_account_idx on public.credit_spend_windows (account_id);

alter table public.credit_account_limits enable row level security;
alter table public.credit_spend_windows enable row level security;

create policy credit_account_limits_read_own on public.credit_account_limits
for select to authenticated
using (user_id = (select auth.uid())::text);

create policy credit_spend_windows_read_own on public.credit_spend_windows
for select to authenticated
using (
    account_id = (
        select a.id from public.credit_accounts as a
        where a.user_id = (select auth.uid())::text
    )
);

revoke all on table public.credit_account_limits, public.credit_spend_windows
from public, anon, authenticated, service_role;
revoke all on sequence public.credit_spend_windows_id_seq
from public, anon, authenticated, service_role;
grant select on table public.credit_account_limits, public.credit_spend_windows
to authenticated, service_role;

-- ---------------------------------------------------------------- result types

create type public.credit_limits_result as (
    user_id text,
    windows jsonb,
    max_active_holds integer,
    active_holds integer,
    held bigint,
    credit_line bigint,
    credit_line_grace_seconds integer,
    balance bigint,
    below_zero_since timestamptz,
    credit_line_due_at timestamptz
);
comment on type public.credit_limits_result is
'credit_get_limits and credit_set_limits. windows: [{period, hours, model_pattern,'
' spend_limit, window_start, used, held, remaining}] in the order they were set; used is the'
' window''s net spend now, held the active holds (counted in every window), remaining ='
' spend_limit - used - held (may be negative after a settle''s overage). credit_line: the'
' effective one (the account''s, else its plan''s, else 0). below_zero_since: when the'
' balance last went below zero (null while it is >= 0); credit_line_due_at: when the grace'
' ends, after which charges needing the line are refused.
@notNull user_id, windows, active_holds, held, credit_line, balance';

-- ---------------------------------------------------------------- functions

create function credit_private.window_start(
    p_period text, p_hours integer, p_now timestamptz
)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
    if p_period = 'hours' then
        return p_now - make_interval(hours => p_hours);
    end if;
    -- the calendar period in UTC, weeks from Monday, as credit_private.period_bounds
    return date_trunc(p_period, p_now at time zone 'UTC') at time zone 'UTC';
end;
$$;
revoke all on function credit_private.window_start(text, integer, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function credit_private.window_start(text, integer, timestamptz)
to authenticated, service_role;

create function credit_private.window_used(
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

create function credit_private.active_holds(
    p_account_id bigint, p_now timestamptz, out holds integer, out held bigint
)
language plpgsql
stable
set search_path = ''
as $$
begin
    select count(*)::integer, coalesce(sum(r.amount), 0)::bigint into holds, held
    from public.credit_reservations as r
    where r.account_id = p_account_id and r.status = 'active' and r.expires_at > p_now;
end;
$$;
revoke all on function credit_private.active_holds(bigint, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function credit_private.active_holds(bigint, timestamptz)
to authenticated, service_role;

create function credit_private.check_limits(
    p_account_id bigint, p_amount bigint, p_model text, p_hold boolean, p_now timestamptz
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_limits public.credit_account_limits;
    v_holds record;
    v_window public.credit_spend_windows;
    v_start timestamptz;
    v_used bigint;
begin
    -- A charge (p_hold false: p_model is its model, null for one by amount or job) or a
    -- new hold of p_amount on a locked account, against the account's limits.
    -- The one probe for an account without limits:
    select * into v_limits from public.credit_account_limits where account_id = p_account_id;
    if not found or p_amount = 0 then
        return;
    end if;
    v_holds := credit_private.active_holds(p_account_id, p_now);
    if p_hold and v_holds.holds >= v_limits.max_active_holds then
        perform credit_private.fail(
            'DC086',
            format('user %s has %s active holds, the most allowed', quote_literal(
                v_limits.user_id), v_holds.holds),
            jsonb_build_object(
                'user_id', v_limits.user_id,
                'max_active_holds', v_limits.max_active_holds,
                'active_holds', v_holds.holds
            ),
            'settle or release a hold first'
        );
    end if;
    for v_window in
        select * from public.credit_spend_windows as w
        where w.account_id = p_account_id
        order by w.id
    loop
        -- a hold counts in every window; a charge in those that match its model
        continue when not p_hold and v_window.model_pattern is not null and (
            p_model is null or lower(p_model) not like replace(replace(
                v_window.model_pattern, '_', '\_'), '*', '%')
        );
        v_start := credit_private.window_start(v_window.period, v_window.hours, p_now);
        v_used := credit_private.window_used(v_limits.user_id, v_start, v_window.model_pattern);
        if v_used + v_holds.held + p_amount > v_window.spend_limit then
            -- limit.reached: a refusal raises, which rolls back anything emitted here;
            -- the event is written where an admitted charge fills the window (below)
            perform credit_private.fail(
                'DC085',
                format('spending limit of user %s exceeded: %s of %s used in the %s window'
                    || ' since %s (%s of it held), needed %s', quote_literal(v_limits.user_id),
                    v_used + v_holds.held, v_window.spend_limit,
                    case when v_window.period = 'hours' then v_window.hours || '-hour'
                    else v_window.period end || coalesce(' ' || v_window.model_pattern, ''),
                    v_start, v_holds.held, p_amount),
                jsonb_build_object(
                    'user_id', v_limits.user_id,
                    'window', jsonb_build_object(
                        'period', v_window.period, 'hours', v_window.hours,
                        'model_pattern', v_window.model_pattern, 'window_start', v_start
                    ),
                    'spend_limit', v_window.spend_limit,
                    'used', v_used,
                    'held', v_holds.held,
                    'needed', p_amount
                ),
                'wait for the window to move on, or raise the limit'
            );
        end if;
        if v_used + v_holds.held + 2 * p_amount > v_window.spend_limit then
            -- limit.reached: a refusal rolls back what it writes, so the event is written by
            -- the admitted charge (or hold) after which the same again would be refused; once
            -- per calendar period, or per span of a rolling window's hours
            perform credit_private.emit_event(
                p_account_id, v_limits.user_id, 'limit.reached',
                jsonb_build_object(
                    'window_id', v_window.id, 'period', v_window.period,
                    'hours', v_window.hours, 'model_pattern', v_window.model_pattern,
                    'window_start', v_start, 'spend_limit', v_window.spend_limit,
                    'used', v_used + case when p_hold then 0 else p_amount end,
                    'held', v_holds.held + case when p_hold then p_amount else 0 end
                ),
                format('limit.reached:%s:%s', v_window.id, case
                    when v_window.period = 'hours' then
                        floor(extract(epoch from p_now) / (v_window.hours * 3600))::bigint
                    else extract(epoch from v_start)::bigint
                end)
            );
        end if;
    end loop;
end;
$$;
revoke all on function credit_private.check_limits(bigint, bigint, text, boolean, timestamptz)
from public, anon, authenticated, service_role;

create function credit_private.below_zero_since(p_account_id bigint)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
    -- when the balance went below zero and stayed there: the first row after the newest
    -- row that left it >= 0 (null if it is >= 0); read only for an account below zero
    return (
        select min(t.created_at)
        from public.credit_transactions as t
        where
            t.account_id = p_account_id
            and t.seq > coalesce((
                select max(z.seq) from public.credit_transactions as z
                where z.account_id = p_account_id and z.balance_after >= 0
            ), 0)
    );
end;
$$;
revoke all on function credit_private.below_zero_since(bigint)
from public, anon, authenticated, service_role;
grant execute on function credit_private.below_zero_since(bigint) to authenticated, service_role;

create function credit_private.credit_line(
    p_account_id bigint,
    p_user_id text default null,
    out credit_line bigint,
    out grace_seconds integer
)
language plpgsql
stable
set search_path = ''
as $$
declare
    v_user_id text;
begin
    -- the account's own credit line, else its user's plan's (a team pool has no plan);
    -- p_user_id names the user of an account not created yet
    select l.credit_line, l.credit_line_grace_seconds into credit_line, grace_seconds
    from public.credit_account_limits as l
    where l.account_id = p_account_id and l.credit_line is not null;
    if credit_line is not null then
        return;
    end if;
    v_user_id := coalesce(p_user_id, (
        select a.user_id from public.credit_accounts as a where a.id = p_account_id
    ));
    if v_user_id is not null and v_user_id not like 'team:%' then
        select p.credit_line, p.credit_line_grace_seconds into credit_line, grace_seconds
        from public.credit_plans as p
        where p.id = coalesce(
            (select up.plan_id from public.credit_user_plans as up where up.user_id = v_user_id),
            (select d.id from public.credit_plans as d where d.is_default)
        );
    end if;
    credit_line := coalesce(credit_line, 0);
end;
$$;
revoke all on function credit_private.credit_line(bigint, text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.credit_line(bigint, text) to authenticated, service_role;

create function credit_private.credit_floor(
    p_account_id bigint, p_floor bigint, p_after bigint, p_now timestamptz
)
returns bigint
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_line record;
    v_balance bigint;
    v_since timestamptz;
begin
    -- The floor a charge or hold is admitted against: min_balance - the credit line.
    -- p_after: what would be available after it. Looked up only when the floor alone
    -- would refuse it, so a charge within the credits costs nothing here.
    if p_after >= p_floor or p_account_id is null then
        return p_floor;
    end if;
    v_line := credit_private.credit_line(p_account_id);
    if v_line.credit_line = 0 then
        return p_floor;
    end if;
    select a.balance into v_balance from public.credit_accounts as a where a.id = p_account_id;
    if v_line.grace_seconds is not null and v_balance < 0 then
        v_since := credit_private.below_zero_since(p_account_id);
        if v_since + make_interval(secs => v_line.grace_seconds) <= p_now then
            perform credit_private.fail(
                'DC087',
                format('the credit line of account %s is overdue: below zero since %s, grace'
                    || ' %s seconds; charges resume once the balance is back to 0',
                    p_account_id, v_since, v_line.grace_seconds),
                jsonb_build_object(
                    'balance', v_balance,
                    'below_zero_since', v_since,
                    'due_at', v_since + make_interval(secs => v_line.grace_seconds),
                    'credit_line', v_line.credit_line
                ),
                'add credits to pay the debt'
            );
        end if;
    end if;
    return p_floor - v_line.credit_line;
end;
$$;
revoke all on function credit_private.credit_floor(bigint, bigint, bigint, timestamptz)
from public, anon, authenticated, service_role;

create function credit_private.limits_result(p_user_id text, p_now timestamptz)
returns public.credit_limits_result
language plpgsql
stable
set search_path = ''
as $$
declare
    v_account public.credit_accounts;
    v_limits public.credit_account_limits;
    v_holds record;
    v_line record;
    v_result public.credit_limits_result;
begin
    -- the caller's role reads through row-level security (a user: their own rows)
    select * into v_account from public.credit_accounts as a where a.user_id = p_user_id;
    select * into v_limits from public.credit_account_limits as l where l.account_id = v_account.id;
    v_holds := credit_private.active_holds(v_account.id, p_now);
    v_line := credit_private.credit_line(v_account.id, p_user_id);
    v_result.user_id := p_user_id;
    v_result.max_active_holds := v_limits.max_active_holds;
    v_result.active_holds := coalesce(v_holds.holds, 0);
    v_result.held := coalesce(v_holds.held, 0);
    v_result.credit_line := coalesce(v_line.credit_line, 0);
    v_result.credit_line_grace_seconds := v_line.grace_seconds;
    v_result.balance := coalesce(v_account.balance, 0);
    if v_result.balance < 0 then
        v_result.below_zero_since := credit_private.below_zero_since(v_account.id);
        v_result.credit_line_due_at :=
            v_result.below_zero_since + make_interval(secs => v_line.grace_seconds);
    end if;
    select coalesce(jsonb_agg(jsonb_build_object(
        'period', w.period, 'hours', w.hours, 'model_pattern', w.model_pattern,
        'spend_limit', w.spend_limit, 'window_start', w.window_start, 'used', w.used,
        'held', v_result.held, 'remaining', w.spend_limit - w.used - v_result.held
    ) order by w.id), '[]')
    into v_result.windows
    from (
        select
            s.id, s.period, s.hours, s.model_pattern, s.spend_limit, s.window_start,
            credit_private.window_used(p_user_id, s.window_start, s.model_pattern) as used
        from (
            select
                x.*, credit_private.window_start(x.period, x.hours, p_now) as window_start
            from public.credit_spend_windows as x
            where x.account_id = v_account.id
        ) as s
    ) as w;
    return v_result;
end;
$$;
revoke all on function credit_private.limits_result(text, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function credit_private.limits_result(text, timestamptz)
to authenticated, service_role;

create function public.credit_get_limits(p_user_id text default null)
returns public.credit_limits_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    -- no user id: a signed-in user's own
    v_user_id text := credit_private.reader_id(p_user_id, 'limits');
begin
    return credit_private.limits_result(v_user_id, credit_private.clock());
end;
$$;
revoke all on function public.credit_get_limits(text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_get_limits(text) to authenticated, service_role;

create function public.credit_set_limits(
    p_user_id text,
    p_windows jsonb default '[]',
    p_max_active_holds integer default null,
    p_credit_line numeric default null,
    p_credit_line_grace_seconds integer default null
)
returns public.credit_limits_result
language plpgsql
volatile
-- definer: writes the limits tables, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_windows jsonb := coalesce(p_windows, '[]');
    v_credit_line bigint;
    v_window jsonb;
    v_index integer := 0;
    v_account public.credit_accounts;
begin
    -- Sets the account's whole limit configuration: what is left out is no limit
    -- (no windows, no cap on holds, the plan's credit line).
    perform credit_private.check_user_id(p_user_id);
    if p_credit_line is not null then
        v_credit_line := credit_private.whole(p_credit_line, 'credit_line', 0);
    end if;
    if p_max_active_holds is not null and p_max_active_holds not between 0 and 1000000 then
        perform credit_private.fail(
            'DC006', format('max_active_holds must be from 0 to 1000000, got %s',
                p_max_active_holds),
            jsonb_build_object('argument', 'max_active_holds')
        );
    end if;
    if p_credit_line_grace_seconds is not null and (
        p_credit_line is null or p_credit_line_grace_seconds < 1
    ) then
        perform credit_private.fail(
            'DC006', 'credit_line_grace_seconds must be at least 1, and needs a credit_line',
            jsonb_build_object('argument', 'credit_line_grace_seconds')
        );
    end if;
    if jsonb_typeof(v_windows) <> 'array' or jsonb_array_length(v_windows) > 20 then
        perform credit_private.fail(
            'DC006', 'windows must be a JSON array of at most 20 windows',
            jsonb_build_object('argument', 'windows')
        );
    end if;
    for v_window in select e from jsonb_array_elements(v_windows) as e loop
        perform credit_private.check_window_spec(v_window, v_index);
        v_index := v_index + 1;
    end loop;

    v_account := credit_private.lock_account(p_user_id, true);
    delete from public.credit_spend_windows where account_id = v_account.id;
    if v_index = 0 and p_max_active_holds is null and v_credit_line is null then
        -- no limits: no row and no flag, so the account's charges skip every check
        delete from public.credit_account_limits where account_id = v_account.id;
        perform credit_private.set_feature(v_account.id, 2::smallint, false);
    else
        insert into public.credit_account_limits as l (
            account_id, user_id, max_active_holds, credit_line, credit_line_grace_seconds,
            updated_at
        ) values (
            v_account.id, p_user_id, p_max_active_holds, v_credit_line,
            p_credit_line_grace_seconds, v_now
        )
        on conflict (account_id) do update set
            max_active_holds = excluded.max_active_holds,
            credit_line = excluded.credit_line,
            credit_line_grace_seconds = excluded.credit_line_grace_seconds,
            updated_at = excluded.updated_at;
        insert into public.credit_spend_windows (
            account_id, period, hours, model_pattern, spend_limit
        )
        select
            v_account.id, e.w ->> 'period', (e.w ->> 'hours')::integer,
            lower(e.w ->> 'model_pattern'), (e.w ->> 'spend_limit')::bigint
        from jsonb_array_elements(v_windows) with ordinality as e (w, ord)
        order by e.ord;
        perform credit_private.set_feature(v_account.id, 2::smallint, true);
    end if;
    return credit_private.limits_result(p_user_id, v_now);
end;
$$;
revoke all on function public.credit_set_limits(text, jsonb, integer, numeric, integer)
from public, anon, authenticated, service_role;
grant execute on function public.credit_set_limits(
    text, jsonb, integer, numeric, integer
) to service_role;

create function credit_private.check_window_spec(p_window jsonb, p_index integer)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_path text := format('windows[%s]', p_index);
    v_period text := p_window ->> 'period';
    v_pattern text := p_window ->> 'model_pattern';
begin
    -- one window of credit_set_limits: {period, hours (rolling only), spend_limit,
    -- model_pattern (optional)}; DC006 names the field
    if jsonb_typeof(p_window) <> 'object' then
        perform credit_private.fail(
            'DC006', format('%s must be an object', v_path),
            jsonb_build_object('argument', v_path)
        );
    end if;
    if exists (
        select from jsonb_object_keys(p_window) as k
        where k not in ('period', 'hours', 'spend_limit', 'model_pattern')
    ) then
        perform credit_private.fail(
            'DC006', format('%s has an unknown field (period, hours, spend_limit,'
                || ' model_pattern)', v_path),
            jsonb_build_object('argument', v_path)
        );
    end if;
    perform credit_private.check_choice(
        v_period, v_path || '.period', array['day', 'week', 'month', 'hours']
    );
    if (v_period = 'hours') <> (jsonb_typeof(p_window -> 'hours') is not distinct from 'number')
        or (v_period = 'hours' and (
            (p_window ->> 'hours')::numeric not between 1 and 8784
            or (p_window ->> 'hours')::numeric <> trunc((p_window ->> 'hours')::numeric)
        )) then
        perform credit_private.fail(
            'DC006', format('%s.hours: a whole number from 1 to 8784 for a rolling window,'
                || ' and only then', v_path),
            jsonb_build_object('argument', v_path || '.hours')
        );
    end if;
    if jsonb_typeof(p_window -> 'spend_limit') is distinct from 'number' then
        perform credit_private.fail(
            'DC001', format('%s.spend_limit must be a whole number', v_path),
            jsonb_build_object('argument', v_path || '.spend_limit')
        );
    end if;
    perform credit_private.whole(
        (p_window ->> 'spend_limit')::numeric, v_path || '.spend_limit', 0
    );
    if p_window ? 'model_pattern' and (
        jsonb_typeof(p_window -> 'model_pattern') <> 'string'
        or v_pattern !~ '^[A-Za-z0-9._:/@+*-]{1,200}$' or v_pattern !~ '[^*]'
        or v_pattern ~ '\*\*'
    ) then
        perform credit_private.fail(
            'DC006', format('%s.model_pattern: 1 to 200 of A-Z a-z 0-9 . _ : / @ + -, with'
                || ' single * wildcards, not only *', v_path),
            jsonb_build_object('argument', v_path || '.model_pattern')
        );
    end if;
end;
$$;
revoke all on function credit_private.check_window_spec(jsonb, integer)
from public, anon, authenticated, service_role;

create function public.credit_set_plan_credit_line(
    p_plan_id text, p_credit_line numeric, p_credit_line_grace_seconds integer default null
)
returns bigint
language plpgsql
volatile
-- definer: writes credit_plans, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_credit_line bigint := credit_private.whole(p_credit_line, 'credit_line', 0);
begin
    -- the default credit line of the plan's users (an account's own one wins); returns it
    if p_credit_line_grace_seconds is not null and p_credit_line_grace_seconds < 1 then
        perform credit_private.fail(
            'DC006', 'credit_line_grace_seconds must be at least 1',
            jsonb_build_object('argument', 'credit_line_grace_seconds')
        );
    end if;
    update public.credit_plans
    set credit_line = v_credit_line, credit_line_grace_seconds = p_credit_line_grace_seconds
    where id = p_plan_id;
    if not found then
        perform credit_private.fail(
            'DC080', format('plan %s does not exist', quote_literal(p_plan_id)),
            jsonb_build_object('plan_id', p_plan_id)
        );
    end if;
    return v_credit_line;
end;
$$;
revoke all on function public.credit_set_plan_credit_line(text, numeric, integer)
from public, anon, authenticated, service_role;
grant execute on function public.credit_set_plan_credit_line(text, numeric, integer)
to service_role;
