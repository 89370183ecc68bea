-- ducto: the ledger's clock, its errors and the checks of every RPC argument.
--
-- The helpers in credit_private are SECURITY INVOKER: they run with the rights of the RPC
-- that calls them (the owner, for the SECURITY DEFINER write RPCs). Only the clock, the
-- errors and the user id checks are executable by API roles, because the read RPCs
-- (security invoker) call them.

create function credit_private.clock()
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
    -- The one clock of the ledger: the transaction's start. No setting moves it, so no
    -- role can backdate a journal row or spend a grant after its expiry. The test suite
    -- replaces this function with one it can move (tests/test-clock.sql); an install never
    -- has it. (plpgsql, not sql: a sql function with SET is planned again on every call.)
    return now();
end;
$$;
revoke all on function credit_private.clock()
from public, anon, authenticated, service_role;
grant execute on function credit_private.clock() to authenticated, service_role;

create function credit_private.fail(
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
                when p_code in ('DC010', 'DC083', 'DC084', 'DC085', 'DC087') then 402
                -- too many holds at once: a rate of work, not a lack of credits
                when p_code = 'DC086' then 429
                when p_code = 'DC082' then 403
                when p_code in (
                    'DC030', 'DC031', 'DC064', 'DC080', 'DC081', 'DC110', 'DC120', 'DC122'
                ) then 404
                -- it conflicts with the ledger's state (a used key, a settled hold, a
                -- checkpoint not yet possible, ...)
                when p_code in (
                    'DC020', 'DC040', 'DC041', 'DC050', 'DC051', 'DC063', 'DC111', 'DC121',
                    'DC130', 'DC131', 'DC133', 'DC134', 'DC135'
                ) then 409
                -- the row it needs was archived: gone from the database, for good
                when p_code = 'DC132' then 410
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

create function credit_private.whole(p_value numeric, p_name text, p_min bigint)
returns bigint
language plpgsql
immutable
set search_path = ''
as $$
begin
    -- NaN and Infinity compare greater than every number, so test them explicitly;
    -- 2^53 - 1 keeps every amount exact in JavaScript clients too.
    if p_value is null
        or p_value = 'NaN'::numeric
        or p_value < p_min
        or p_value > 9007199254740991
        or p_value <> trunc(p_value) then
        perform credit_private.fail(
            'DC001',
            format('%s must be a whole number of credits from %s to 9007199254740991, got %s',
                p_name, p_min, coalesce(p_value::text, 'null')),
            jsonb_build_object('argument', p_name, 'value', p_value::text, 'minimum', p_min)
        );
    end if;
    return p_value::bigint;
end;
$$;
revoke all on function credit_private.whole(numeric, text, bigint)
from public, anon, authenticated, service_role;

create function credit_private.check_user_id(p_user_id text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
    if p_user_id is null
        or length(p_user_id) not between 1 and 255
        or p_user_id ~ '[[:cntrl:]]'
        or btrim(p_user_id) = '' then
        perform credit_private.fail(
            'DC002',
            format('user_id must be 1 to 255 characters without control characters, got %s',
                coalesce(quote_literal(left(p_user_id, 40)), 'null')),
            jsonb_build_object('argument', 'user_id')
        );
    end if;
    return p_user_id;
end;
$$;
revoke all on function credit_private.check_user_id(text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.check_user_id(text) to authenticated, service_role;

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

create function credit_private.check_metadata(p_metadata jsonb)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
begin
    if p_metadata is null then
        return '{}'::jsonb;
    end if;
    if jsonb_typeof(p_metadata) <> 'object' then
        perform credit_private.fail(
            'DC003',
            format('metadata must be a JSON object, got a JSON %s', jsonb_typeof(p_metadata)),
            jsonb_build_object('argument', 'metadata')
        );
    end if;
    if octet_length(p_metadata::text) > 16384 then
        perform credit_private.fail(
            'DC003',
            format('metadata must be at most 16384 bytes as JSON, got %s',
                octet_length(p_metadata::text)),
            jsonb_build_object('argument', 'metadata', 'limit', 16384)
        );
    end if;
    return p_metadata;
end;
$$;
revoke all on function credit_private.check_metadata(jsonb)
from public, anon, authenticated, service_role;

create function credit_private.check_key(p_key text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
    if p_key is not null and (length(p_key) not between 1 and 255 or p_key ~ '[[:cntrl:]]') then
        perform credit_private.fail(
            'DC004',
            format('idempotency_key must be 1 to 255 characters without control characters,'
                || ' got %s characters', length(p_key)),
            jsonb_build_object('argument', 'idempotency_key')
        );
    end if;
    return p_key;
end;
$$;
revoke all on function credit_private.check_key(text)
from public, anon, authenticated, service_role;

create function credit_private.check_choice(p_value text, p_name text, p_allowed text[])
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
    if p_value is null or not (p_value = any(p_allowed)) then
        perform credit_private.fail(
            'DC006',
            format('%s must be one of %s, got %s',
                p_name, array_to_string(p_allowed, ', '), coalesce(quote_literal(left(p_value, 100)), 'null')),
            jsonb_build_object('argument', p_name, 'allowed', to_jsonb(p_allowed))
        );
    end if;
    return p_value;
end;
$$;
revoke all on function credit_private.check_choice(text, text, text[])
from public, anon, authenticated, service_role;
