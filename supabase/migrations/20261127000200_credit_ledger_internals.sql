-- ducto: internal helpers of the ledger RPCs, in the unexposed schema credit_private.
--
-- They are SECURITY INVOKER: they run with the rights of the RPC that calls them (the
-- owner, for the SECURITY DEFINER write RPCs). Only the clock is executable by API roles,
-- because the read RPCs (security invoker) call it.
--
-- Locking rule, which keeps every operation free of deadlocks: an operation locks exactly
-- one account row (FOR UPDATE) before it reads or writes anything of that account; the
-- sweep locks accounts one at a time in id order.

-- ---------------------------------------------------------------- clock

create function credit_private.clock()
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
    -- The one clock of the ledger. Tests move time with set_config('ducto.now', ...);
    -- PostgREST clients cannot set it, and a trusted caller moving its own clock only
    -- changes what it sees as expired. (plpgsql, not sql: a sql function with SET is
    -- planned again on every call.)
    return coalesce(nullif(current_setting('ducto.now', true), '')::timestamptz, now());
end;
$$;

-- ---------------------------------------------------------------- errors

create function credit_private.fail(
    p_code text, p_message text, p_detail jsonb default null, p_hint text default null
)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
    -- detail is JSON so every client can read the numbers without parsing the message
    if p_hint is null then
        raise exception using
            errcode = p_code, message = p_message, detail = coalesce(p_detail, '{}')::text;
    end if;
    raise exception using
        errcode = p_code, message = p_message, detail = coalesce(p_detail, '{}')::text,
        hint = p_hint;
end;
$$;

-- ---------------------------------------------------------------- input checks

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
                p_name, array_to_string(p_allowed, ', '), coalesce(quote_literal(p_value), 'null')),
            jsonb_build_object('argument', p_name, 'allowed', to_jsonb(p_allowed))
        );
    end if;
    return p_value;
end;
$$;

-- ---------------------------------------------------------------- accounts

create function credit_private.lock_account(p_user_id text, p_create boolean)
returns public.credit_accounts
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_account public.credit_accounts;
begin
    select * into v_account
    from public.credit_accounts
    where user_id = p_user_id
    for update;
    if not found and p_create then
        -- two first operations of a new user race here: one inserts, the other waits
        insert into public.credit_accounts (user_id) values (p_user_id)
        on conflict (user_id) do nothing;
        select * into v_account
        from public.credit_accounts
        where user_id = p_user_id
        for update;
    end if;
    return v_account;
end;
$$;

create function credit_private.lock_account_by_id(p_account_id bigint)
returns public.credit_accounts
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_account public.credit_accounts;
begin
    select * into v_account from public.credit_accounts where id = p_account_id for update;
    return v_account;
end;
$$;

create function credit_private.available(p_account_id bigint, p_now timestamptz)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
begin
    -- balance minus active holds; the balance is already net of expired grants because
    -- every write expires them first (credit_private.expire_grants)
    return (
        select a.balance - coalesce((
            select sum(r.amount)
            from public.credit_reservations as r
            where r.account_id = a.id and r.status = 'active' and r.expires_at > p_now
        ), 0)::bigint
        from public.credit_accounts as a
        where a.id = p_account_id
    );
end;
$$;

create function credit_private.admit(
    p_user_id text, p_available bigint, p_amount bigint, p_min_balance bigint
)
returns bigint
language plpgsql
immutable
set search_path = ''
as $$
begin
    if p_available - p_amount < p_min_balance then
        perform credit_private.fail(
            'DC010',
            format('insufficient credits for user %s: available %s, needed %s with min_balance %s',
                quote_literal(p_user_id), p_available, p_amount, p_min_balance),
            jsonb_build_object(
                'user_id', p_user_id,
                'available', p_available,
                'needed', p_amount,
                'min_balance', p_min_balance
            )
        );
    end if;
    return p_available;
end;
$$;

-- ---------------------------------------------------------------- journal

create function credit_private.append_transaction(
    p_account_id bigint,
    p_type text,
    p_amount bigint,
    p_now timestamptz,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null,
    p_grant_id uuid default null,
    p_reservation_id uuid default null,
    p_refund_of uuid default null
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_row public.credit_transactions;
begin
    -- the balance and the journal change in the same statement pair, under the account lock
    update public.credit_accounts
    set balance = balance + p_amount, version = version + 1, updated_at = p_now
    where id = p_account_id
    returning balance, version, user_id into v_row.balance_after, v_row.seq, v_row.user_id;

    insert into public.credit_transactions (
        id, account_id, seq, user_id, type, amount, balance_after, grant_id,
        reservation_id, refund_of, idempotency_key, metadata, created_at
    ) values (
        gen_random_uuid(), p_account_id, v_row.seq, v_row.user_id, p_type, p_amount,
        v_row.balance_after, p_grant_id, p_reservation_id, p_refund_of, p_idempotency_key,
        p_metadata, p_now
    )
    returning * into v_row;
    return v_row;
end;
$$;

-- ---------------------------------------------------------------- grants

create function credit_private.draw(
    p_account_id bigint, p_transaction_id uuid, p_amount bigint, p_now timestamptz
)
returns bigint
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_drawn bigint;
    v_debt bigint;
    v_grant_id uuid;
begin
    -- Most debits fit in the first grant in burn-down order: take it there directly.
    update public.credit_grants as g
    set remaining = g.remaining - p_amount
    where
        g.id = (
            select f.id
            from public.credit_grants as f
            where
                f.account_id = p_account_id
                and f.remaining > 0
                and (f.expires_at is null or f.expires_at > p_now)
            order by f.priority, f.expires_at nulls last, f.created_at, f.id
            limit 1
        )
        and g.remaining >= p_amount
    returning g.id into v_grant_id;
    if v_grant_id is not null then
        insert into public.credit_grant_draws (transaction_id, grant_id, amount)
        values (p_transaction_id, v_grant_id, p_amount);
        return 0::bigint;
    end if;

    -- Otherwise take p_amount across grants in burn-down order, in one statement.
    with ordered as (
        select
            g.id,
            g.remaining,
            sum(g.remaining) over (
                order by g.priority, g.expires_at nulls last, g.created_at, g.id
            ) - g.remaining as drawn_before
        from public.credit_grants as g
        where
            g.account_id = p_account_id
            and g.remaining > 0
            and (g.expires_at is null or g.expires_at > p_now)
    ),

    taken as (
        select o.id, o.drawn_before, least(o.remaining, p_amount - o.drawn_before) as amount
        from ordered as o
        where o.drawn_before < p_amount
    ),

    spent as (
        update public.credit_grants as g
        set remaining = g.remaining - t.amount
        from taken as t
        where g.id = t.id
    ),

    noted as (
        insert into public.credit_grant_draws (transaction_id, grant_id, amount)
        select p_transaction_id, t.id, t.amount
        from taken as t
        order by t.drawn_before
    )

    select coalesce(sum(t.amount), 0)::bigint into v_drawn from taken as t;

    -- what no grant could pay is debt: usage that happened is never dropped
    v_debt := p_amount - v_drawn;
    if v_debt > 0 then
        insert into public.credit_grant_draws (transaction_id, grant_id, amount)
        values (p_transaction_id, null, v_debt);
        update public.credit_accounts set debt = debt + v_debt where id = p_account_id;
    end if;
    return v_debt;
end;
$$;

create function credit_private.create_grant(
    p_account_id bigint,
    p_transaction_id uuid,
    p_grant_id uuid,
    p_category text,
    p_priority integer,
    p_amount bigint,
    p_expires_at timestamptz,
    p_now timestamptz
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_paid bigint;
begin
    insert into public.credit_grants (
        id, account_id, user_id, transaction_id, category, priority, amount, remaining,
        expires_at, created_at
    )
    select
        p_grant_id, a.id, a.user_id, p_transaction_id, p_category, p_priority, p_amount,
        p_amount, p_expires_at, p_now
    from public.credit_accounts as a
    where a.id = p_account_id;

    -- new credits pay outstanding debt first
    select least(a.debt, p_amount) into v_paid
    from public.credit_accounts as a
    where a.id = p_account_id;
    if v_paid > 0 then
        insert into public.credit_grant_draws (transaction_id, grant_id, amount)
        values (p_transaction_id, p_grant_id, v_paid), (p_transaction_id, null, -v_paid);
        update public.credit_grants set remaining = remaining - v_paid where id = p_grant_id;
        update public.credit_accounts set debt = debt - v_paid where id = p_account_id;
    end if;
end;
$$;

create function credit_private.expire_grants(
    p_account_id bigint,
    p_now timestamptz,
    out grants integer,
    out amount bigint
)
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_grant record;
    v_transaction_id uuid;
begin
    -- journal one expiry row per grant that reached its expires_at with credits left
    grants := 0;
    amount := 0;
    for v_grant in
        select g.id, g.remaining
        from public.credit_grants as g
        where g.account_id = p_account_id and g.remaining > 0 and g.expires_at <= p_now
        order by g.expires_at, g.id
    loop
        v_transaction_id := (credit_private.append_transaction(
            p_account_id, 'expiry', -v_grant.remaining, p_now, p_grant_id => v_grant.id
        )).id;
        insert into public.credit_grant_draws (transaction_id, grant_id, amount)
        values (v_transaction_id, v_grant.id, v_grant.remaining);
        update public.credit_grants set remaining = 0 where id = v_grant.id;
        grants := grants + 1;
        amount := amount + v_grant.remaining;
    end loop;
end;
$$;

-- ---------------------------------------------------------------- idempotency

create function credit_private.find_replay(
    p_account_id bigint, p_key text, p_operation text, p_request jsonb
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
    v_stored public.credit_idempotency_keys;
begin
    if p_key is null or p_account_id is null then
        return null;
    end if;
    -- callers hold the account lock, so a concurrent first use of the key has committed
    select * into v_stored
    from public.credit_idempotency_keys
    where account_id = p_account_id and idempotency_key = p_key;
    if not found then
        return null;
    end if;
    if v_stored.operation <> p_operation or v_stored.request <> p_request then
        perform credit_private.fail(
            'DC020',
            format('idempotency key %s was already used for %s with other parameters',
                quote_literal(p_key), v_stored.operation),
            jsonb_build_object(
                'idempotency_key', p_key,
                'operation', v_stored.operation,
                'original_request', v_stored.request,
                'request', p_request
            ),
            'use a new idempotency key for a different operation'
        );
    end if;
    return v_stored.result;
end;
$$;

create function credit_private.remember(
    p_account_id bigint,
    p_key text,
    p_operation text,
    p_request jsonb,
    p_result jsonb,
    p_now timestamptz
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    if p_key is null then
        return;
    end if;
    insert into public.credit_idempotency_keys (
        account_id, idempotency_key, operation, request, result, created_at
    ) values (p_account_id, p_key, p_operation, p_request, p_result, p_now);
end;
$$;

-- ---------------------------------------------------------------- debit

create function credit_private.deduct(
    p_user_id text,
    p_type text,
    p_amount bigint,
    p_min_balance bigint,
    p_metadata jsonb,
    p_idempotency_key text,
    p_request jsonb
)
returns public.credit_deduct_result
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_account public.credit_accounts;
    v_replay jsonb;
    v_available bigint;
    v_transaction public.credit_transactions;
    v_result public.credit_deduct_result;
begin
    -- admit -> hold -> capture in one step: a one-call deduct never leaves a hold behind.
    -- The hot path of the ledger: no work for a key that was not given, no expiry loop
    -- unless a grant has expired.
    v_account := credit_private.lock_account(p_user_id, false);
    if p_idempotency_key is not null then
        v_replay := credit_private.find_replay(
            v_account.id, p_idempotency_key, p_type, p_request
        );
        if v_replay is not null then
            v_result := jsonb_populate_record(null::public.credit_deduct_result, v_replay);
            v_result.is_replay := true;
            return v_result;
        end if;
    end if;
    if exists (
        select from public.credit_grants as g
        where g.account_id = v_account.id and g.remaining > 0 and g.expires_at <= v_now
    ) then
        perform credit_private.expire_grants(v_account.id, v_now);
    end if;
    -- assignments, not PERFORM: a call in an assignment skips the executor
    v_available := credit_private.admit(
        p_user_id, coalesce(credit_private.available(v_account.id, v_now), 0), p_amount,
        p_min_balance
    );

    v_transaction := credit_private.append_transaction(
        v_account.id, p_type, -p_amount, v_now, p_metadata, p_idempotency_key
    );
    perform credit_private.draw(v_account.id, v_transaction.id, p_amount, v_now);

    v_result := row(
        v_transaction.id, null::uuid, p_user_id, p_amount, 0::bigint, v_transaction.balance_after,
        v_available - p_amount, v_now, false
    );
    if p_idempotency_key is not null then
        perform credit_private.remember(
            v_account.id, p_idempotency_key, p_type, p_request, to_jsonb(v_result), v_now
        );
    end if;
    return v_result;
end;
$$;

-- ---------------------------------------------------------------- holds

create function credit_private.lock_reservation(p_reservation_id uuid)
returns public.credit_reservations
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_account_id bigint;
    v_reservation public.credit_reservations;
begin
    select r.account_id into v_account_id
    from public.credit_reservations as r
    where r.id = p_reservation_id;
    if not found then
        perform credit_private.fail(
            'DC031',
            format('reservation %s does not exist', coalesce(p_reservation_id::text, 'null')),
            jsonb_build_object('reservation_id', p_reservation_id)
        );
    end if;
    -- the account first, as everywhere; then the hold, now stable
    perform credit_private.lock_account_by_id(v_account_id);
    select * into v_reservation
    from public.credit_reservations
    where id = p_reservation_id
    for update;
    return v_reservation;
end;
$$;

-- ---------------------------------------------------------------- refunds

create function credit_private.restore(
    p_account_id bigint,
    p_refund_id uuid,
    p_original_id uuid,
    p_amount bigint,
    p_now timestamptz
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_source record;
    v_left bigint := p_amount;
    v_take bigint;
    v_debt bigint;
    v_excess bigint := 0::bigint;
begin
    -- Give the credits back where they came from, the last drawn first: debt (drawn
    -- last) is forgiven before grants are refilled. Net of earlier refunds of the same
    -- transaction, so each grant gets back at most what it paid.
    for v_source in
        with refunds as (
            select t.id from public.credit_transactions as t
            where t.refund_of = p_original_id
        ),

        movements as (
            select d.id, d.grant_id, d.amount
            from public.credit_grant_draws as d
            where d.transaction_id = p_original_id or d.transaction_id in (select id from refunds)
            union all
            -- debt that earlier refunds gave back as new grants is restored debt too
            select null, null, -g.amount
            from public.credit_grants as g
            where g.transaction_id in (select id from refunds)
        )

        select m.grant_id, sum(m.amount)::bigint as net
        from movements as m
        group by m.grant_id
        having sum(m.amount) > 0
        order by min(m.id) desc
    loop
        exit when v_left = 0;
        v_take := least(v_source.net, v_left);
        v_left := v_left - v_take;
        if v_source.grant_id is null then
            select least(a.debt, v_take) into v_debt
            from public.credit_accounts as a
            where a.id = p_account_id;
            if v_debt > 0 then
                insert into public.credit_grant_draws (transaction_id, grant_id, amount)
                values (p_refund_id, null, -v_debt);
                update public.credit_accounts set debt = debt - v_debt where id = p_account_id;
            end if;
            -- debt paid since by newer credits comes back as a new grant
            v_excess := v_excess + v_take - v_debt;
        else
            insert into public.credit_grant_draws (transaction_id, grant_id, amount)
            values (p_refund_id, v_source.grant_id, -v_take);
            update public.credit_grants set remaining = remaining + v_take
            where id = v_source.grant_id;
        end if;
    end loop;
    if v_excess > 0 then
        perform credit_private.create_grant(
            p_account_id, p_refund_id, gen_random_uuid(), 'paid', 50, v_excess, null, p_now
        );
    end if;
end;
$$;

-- ---------------------------------------------------------------- sweep

create function credit_private.sweep_candidates(p_now timestamptz)
returns table (account_id bigint)
language sql
stable
set search_path = ''
as $$
    -- accounts with expired grants that still hold credits, or with timed-out holds
    select g.account_id
    from public.credit_grants as g
    where g.remaining > 0 and g.expires_at <= p_now
    union
    select r.account_id
    from public.credit_reservations as r
    where r.status = 'active' and r.expires_at <= p_now
    order by 1;
$$;

-- ---------------------------------------------------------------- privileges

-- Nothing in credit_private is callable by an API role, whatever the project's defaults,
-- except what the read RPCs (security invoker) call as the caller: the clock and the
-- user id check with its error helper. None of them reads or writes data.
revoke all on all functions in schema credit_private
from public, anon, authenticated, service_role;
grant usage on schema credit_private to authenticated, service_role;
grant execute on function credit_private.clock() to authenticated, service_role;
grant execute on function credit_private.check_user_id(text) to authenticated, service_role;
grant execute on function credit_private.fail(text, text, jsonb, text)
to authenticated, service_role;
