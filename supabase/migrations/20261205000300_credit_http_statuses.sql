-- ducto: HTTP statuses that mean something, and a signed-in user's own reads without an id
-- (docs/ledger.md, "Errors"; docs/edge-functions.md).
--
--   * Through PostgREST, a refusal of the ledger answers by its meaning: 402 when the
--     account cannot pay (DC010, DC083, DC084), 403 for a non-member (DC082), 404 for what
--     does not exist (DC030, DC031, DC064, DC080, DC081), 409 for a conflict with the
--     ledger's state (DC020, DC040, DC041, DC050, DC051, DC063) and 422 for a refused
--     argument (the others), where every refusal was 400. The body keeps ducto's code,
--     message, details and hint. SQL clients see the same SQLSTATE as before.
--   * credit_get_balance() and credit_get_user_plan() without an argument answer for the
--     signed-in user (credit_private.reader_id); the service role must name the user.
--   * credit_get_user_plan says is_default only when a default plan exists.

create or replace function credit_private.fail(
    p_code text, p_message text, p_detail jsonb default null, p_hint text default null
)
returns void
language plpgsql
-- Functions that raise are volatile: the planner folds an immutable call with constant
-- arguments while planning, which would raise where the call is never reached.
volatile
set search_path = ''
as $$
begin
    -- detail is JSON so every client can read the numbers without parsing the message.
    -- Through PostgREST (it sets request.method for each request) the answer's HTTP status
    -- says what kind of refusal it is and the body keeps ducto's code (PostgREST 12 takes
    -- the body from a PGRST error's message, and wants details as text). Elsewhere (psql,
    -- psycopg, pgTAP) the SQLSTATE is ducto's code itself.
    if coalesce(current_setting('request.method', true), '') <> '' then
        raise sqlstate 'PGRST' using
            message = jsonb_build_object(
                'code', p_code,
                'message', p_message,
                'details', coalesce(p_detail, '{}')::text,
                'hint', p_hint
            )::text,
            -- PostgREST wants both keys of the detail
            detail = jsonb_build_object('status', case
                -- the request is valid, the account cannot pay it
                when p_code in ('DC010', 'DC083', 'DC084') then 402
                when p_code = 'DC082' then 403
                when p_code in ('DC030', 'DC031', 'DC064', 'DC080', 'DC081') then 404
                -- it conflicts with the ledger's state (a used key, a settled hold, ...)
                when p_code in ('DC020', 'DC040', 'DC041', 'DC050', 'DC051', 'DC063') then 409
                -- an argument refused (DC001-DC008, DC042, DC06x): nothing was written
                else 422
            end, 'headers', '{}'::jsonb)::text;
    end if;
    if p_hint is null then
        raise exception using
            errcode = p_code, message = p_message, detail = coalesce(p_detail, '{}')::text;
    end if;
    raise exception using
        errcode = p_code, message = p_message, detail = coalesce(p_detail, '{}')::text,
        hint = p_hint;
end;
$$;
revoke all on function credit_private.fail(text, text, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.fail(
    text, text, jsonb, text
) to authenticated, service_role;

create function credit_private.reader_id(p_user_id text, p_what text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
    -- no user id: the signed-in user's own
    v_user_id text := coalesce(p_user_id, (select auth.uid())::text);
begin
    -- The user whose p_what (balance, plan) a read RPC answers for, checked.
    if v_user_id is null then
        perform credit_private.fail(
            'DC002',
            format('user_id is required: only a signed-in user may leave it out, to read'
                || ' their own %s', p_what),
            jsonb_build_object('argument', 'user_id')
        );
    end if;
    perform credit_private.check_user_id(v_user_id);
    -- row-level security would answer zeros, or no plan, for someone else; say no instead
    if current_user = 'authenticated' and v_user_id is distinct from (select auth.uid())::text then
        raise exception 'a signed-in user may read only their own %', p_what
            using errcode = '42501';
    end if;
    return v_user_id;
end;
$$;
revoke all on function credit_private.reader_id(text, text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.reader_id(text, text) to authenticated, service_role;

create or replace function public.credit_get_balance(p_user_id text default null)
returns public.credit_balance_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    -- no user id: a signed-in user's own
    v_user_id text := credit_private.reader_id(p_user_id, 'balance');
    v_result public.credit_balance_result;
begin
    select
        v_user_id,
        -- expired grants not yet swept are not credits any more
        coalesce(a.balance, 0) - coalesce((
            select sum(g.remaining)::bigint
            from public.credit_grants as g
            where g.account_id = a.id and g.spendable and g.expires_at <= v_now
        ), 0),
        coalesce((
            select sum(r.amount)::bigint
            from public.credit_reservations as r
            where r.account_id = a.id and r.status = 'active' and r.expires_at > v_now
        ), 0)
    into v_result.user_id, v_result.balance, v_result.held
    from (select 1) as one
    left join public.credit_accounts as a on a.user_id = v_user_id;
    v_result.available := v_result.balance - v_result.held;
    return v_result;
end;
$$;
revoke all on function public.credit_get_balance(text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_get_balance(text) to authenticated, service_role;

create or replace function public.credit_get_user_plan(p_user_id text default null)
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

create or replace function public.credit_check_feature(p_user_id text, p_feature text)
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

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205000300'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
