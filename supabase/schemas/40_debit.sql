-- ducto: grants, expiry and the debit. Credits come in as grants (credit_add_credits);
-- a debit draws them by priority, then soonest expiry, then oldest, and records each draw,
-- so a refund can give credits back to the grants they came from. What no grant can pay
-- is debt. A grant past its expiry is never spent: the debit expires what is due first.

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
revoke all on function credit_private.available(bigint, timestamptz)
from public, anon, authenticated, service_role;

create function credit_private.admit(
    p_user_id text, p_team_id uuid, p_available bigint, p_amount bigint, p_min_balance bigint
)
returns bigint
language plpgsql
immutable
set search_path = ''
as $$
begin
    -- admission against the floor: a user's charge or hold (DC010), a team pool's (DC084)
    if p_available - p_amount < p_min_balance and p_team_id is null then
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
    elsif p_available - p_amount < p_min_balance then
        perform credit_private.fail(
            'DC084',
            format('team %s has too few credits: available %s, needed %s with min_balance %s',
                p_team_id, p_available, p_amount, p_min_balance),
            jsonb_build_object(
                'team_id', p_team_id,
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
revoke all on function credit_private.admit(text, uuid, bigint, bigint, bigint)
from public, anon, authenticated, service_role;

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
        insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
        values
            (p_account_id, p_transaction_id, p_grant_id, v_paid),
            (p_account_id, p_transaction_id, null, -v_paid);
        update public.credit_grants set remaining = remaining - v_paid where id = p_grant_id;
        update public.credit_accounts set debt = debt - v_paid where id = p_account_id;
    end if;
end;
$$;
revoke all on function credit_private.create_grant(
    bigint, uuid, uuid, text, integer, bigint, timestamptz, timestamptz
) from public, anon, authenticated, service_role;

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
        where g.account_id = p_account_id and g.spendable and g.expires_at <= p_now
        order by g.expires_at, g.id
    loop
        v_transaction_id := (credit_private.append_transaction(
            p_account_id, 'expiry', -v_grant.remaining, p_now, p_grant_id => v_grant.id
        )).id;
        insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
        values (p_account_id, v_transaction_id, v_grant.id, v_grant.remaining);
        update public.credit_grants set remaining = 0 where id = v_grant.id;
        perform credit_private.emit_grant_expired(
            p_account_id, v_grant.id, v_grant.remaining, v_transaction_id
        );
        grants := grants + 1;
        amount := amount + v_grant.remaining;
    end loop;
end;
$$;
revoke all on function credit_private.expire_grants(bigint, timestamptz)
from public, anon, authenticated, service_role;

create function credit_private.draw(
    p_account_id bigint,
    p_transaction_id uuid,
    p_amount bigint,
    p_now timestamptz,
    p_usage jsonb,
    p_job_name text,
    p_metadata jsonb
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_drawn bigint;
    v_debt bigint;
begin
    -- credit_private.debit's draws across grants: the scoped grants that match the charge
    -- first (43_scopes.sql), then the unscoped ones, each in burn-down order; never a
    -- scoped grant that does not match; what nothing can pay is debt (usage that happened
    -- is never dropped)
    with usable as (
        select
            g.id,
            g.remaining,
            g.scope is null as unscoped,
            g.priority,
            g.expires_at,
            g.created_at
        from public.credit_grants as g
        where
            g.account_id = p_account_id
            and g.spendable
            and (g.expires_at is null or g.expires_at > p_now)
            and (
                g.scope is null
                or credit_private.scope_covers(g.scope, p_usage, p_job_name, p_metadata)
            )
    ),

    ordered as (
        select
            u.id,
            u.remaining,
            sum(u.remaining) over (
                order by u.unscoped, u.priority, u.expires_at nulls last, u.created_at, u.id
            ) - u.remaining as drawn_before
        from usable as u
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
        insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
        select p_account_id, p_transaction_id, t.id, t.amount
        from taken as t
        order by t.drawn_before
    )

    select coalesce(sum(t.amount), 0)::bigint into v_drawn from taken as t;

    v_debt := p_amount - v_drawn;
    if v_debt > 0 then
        insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
        values (p_account_id, p_transaction_id, null, v_debt);
        update public.credit_accounts set debt = debt + v_debt where id = p_account_id;
    end if;
end;
$$;
revoke all on function credit_private.draw(
    bigint, uuid, bigint, timestamptz, jsonb, text, jsonb
) from public, anon, authenticated, service_role;

create function credit_private.debit(
    p_account_id bigint,
    p_user_id text,
    p_team_id uuid,
    p_type text,
    p_amount bigint,
    p_floor bigint,
    p_now timestamptz,
    p_metadata jsonb,
    p_idempotency_key text,
    p_request_hash uuid,
    p_pricing_version bigint,
    p_usage jsonb,
    p_job_name text,
    p_reservation_id uuid
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_available bigint;
    v_admissible bigint;
    v_row public.credit_transactions;
    v_grant_id uuid;
    v_scoped boolean := false;
    v_features smallint;
begin
    -- The one debit of the ledger: a one-call deduct (by amount, usage or job), a team
    -- charge (p_team_id: the pool's account, floor and refusal, attributed to the member
    -- p_user_id) and a settled hold (p_reservation_id, no floor: usage that happened is
    -- charged, what grants cannot pay becomes debt). The caller holds the account lock.
    -- Expire what is due (rare), admit against the floor, journal, draw. A keyed one-call
    -- debit's row is its key record (p_request_hash). The row returned has no id when
    -- nothing was journaled (0 credits).
    if exists (
        select from public.credit_grants as g
        where g.account_id = p_account_id and g.spendable and g.expires_at <= p_now
    ) then
        perform credit_private.expire_grants(p_account_id, p_now);
    end if;
    -- what is available (credit_private.available) and the account's features, read from
    -- the row the caller locked: a probe runs only for a feature the account uses
    select
        a.balance - coalesce((
            select sum(r.amount)
            from public.credit_reservations as r
            where r.account_id = a.id and r.status = 'active' and r.expires_at > p_now
        ), 0)::bigint,
        a.features
    into v_available, v_features
    from public.credit_accounts as a
    where a.id = p_account_id;
    v_available := coalesce(v_available, 0);
    v_features := coalesce(v_features, 0);
    -- scoped credits (43_scopes.sql): one index probe if the account has had any
    if v_features & 4 <> 0 then
        v_scoped := credit_private.has_scoped(p_account_id);
    end if;
    if p_floor is not null then
        -- admitted against what the charge may draw (scoped credits outside its scope left
        -- out), down to the floor a credit line lowers, then the account's limits
        -- (42_limits.sql)
        v_admissible := v_available - case when v_scoped then credit_private.out_of_scope(
            p_account_id, p_now, p_usage, p_job_name, p_metadata
        ) else 0 end;
        perform credit_private.admit(
            p_user_id, p_team_id, v_admissible, p_amount,
            credit_private.credit_floor(p_account_id, p_floor, v_admissible - p_amount, p_now)
        );
        if v_features & 2 <> 0 then
            perform credit_private.check_limits(
                p_account_id, p_amount, p_usage ->> 'model', false, p_now
            );
        end if;
    end if;
    if p_amount = 0 then
        -- usage priced at 0 credits: admitted, nothing to journal
        select a.balance into v_row.balance_after
        from public.credit_accounts as a
        where a.id = p_account_id;
        v_row.available_after := v_available;
        return v_row;
    end if;
    v_row := credit_private.append_transaction(
        p_account_id, p_type, -p_amount, p_now, p_metadata, p_idempotency_key,
        p_reservation_id => p_reservation_id, p_pricing_version => p_pricing_version,
        p_usage => p_usage, p_job_name => p_job_name,
        p_attributed_user_id => case when p_team_id is not null then p_user_id end,
        p_request_hash => p_request_hash,
        -- a hold's capture leaves out what the settle reports: the hold is still active
        p_available_after => case when p_reservation_id is null then v_available - p_amount end,
        p_features => v_features
    );

    -- The draws: most debits fit in the first grant in burn-down order; take it there
    -- directly, and note the draw in the same statement (an account with scoped credits
    -- draws them first: credit_private.draw).
    with taken as (
        update public.credit_grants as g
        set remaining = g.remaining - p_amount
        where
            g.id = (
                select f.id
                from public.credit_grants as f
                where
                    f.account_id = p_account_id
                    and f.spendable
                    and (f.expires_at is null or f.expires_at > p_now)
                    and not v_scoped
                order by f.priority, f.expires_at nulls last, f.created_at, f.id
                limit 1
            )
            and g.remaining >= p_amount
        returning g.id
    )

    insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
    select v_row.account_id, v_row.id, t.id, p_amount
    from taken as t
    returning grant_id into v_grant_id;
    if v_grant_id is not null then
        return v_row;
    end if;

    -- Otherwise take p_amount across grants
    perform credit_private.draw(
        p_account_id, v_row.id, p_amount, p_now, p_usage, p_job_name, p_metadata
    );
    return v_row;
end;
$$;
revoke all on function credit_private.debit(
    bigint, text, uuid, text, bigint, bigint, timestamptz, jsonb, text, uuid, bigint, jsonb, text,
    uuid
) from public, anon, authenticated, service_role;

create function credit_private.deduct(
    p_user_id text,
    p_type text,
    p_amount bigint,
    p_min_balance bigint,
    p_metadata jsonb,
    p_idempotency_key text,
    p_request jsonb,
    p_usage jsonb default null,
    p_job_name text default null
)
returns public.credit_deduct_result
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_amount bigint := p_amount;
    v_min_balance bigint := p_min_balance;
    v_cost public.credit_cost_result;
    v_account public.credit_accounts;
    v_replay jsonb;
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
    -- priced after the replay lookup, so a replay returns the original charge whatever
    -- was published since; the price and its floor come from one version
    if p_usage is not null then
        v_cost := credit_private.price(p_usage, null);
    elsif p_job_name is not null then
        v_cost := credit_private.price_job(p_job_name, null);
    end if;
    if v_cost.pricing_version is not null then
        v_amount := v_cost.credits;
        v_min_balance := v_cost.min_balance;
    end if;
    -- with a key, the journal row is the key's record
    v_transaction := credit_private.debit(
        v_account.id, p_user_id, null, p_type, v_amount, v_min_balance, v_now, p_metadata,
        p_idempotency_key,
        case when p_idempotency_key is not null then
            credit_private.request_hash(p_type, p_request)
        end,
        v_cost.pricing_version, p_usage, p_job_name, null
    );
    v_result := row(
        v_transaction.id, null::uuid, p_user_id, v_amount, 0::bigint,
        coalesce(v_transaction.balance_after, 0), v_transaction.available_after, v_now, false,
        v_cost.pricing_version
    );
    -- a charge priced at 0 credits journals nothing: its key is remembered apart
    if v_transaction.id is null and p_idempotency_key is not null and v_account.id is not null then
        perform credit_private.remember(
            v_account.id, p_idempotency_key, p_type, p_request, to_jsonb(v_result), v_now
        );
    end if;
    return v_result;
end;
$$;
revoke all on function credit_private.deduct(
    text, text, bigint, bigint, jsonb, text, jsonb, jsonb, text
) from public, anon, authenticated, service_role;

create function public.credit_add_credits(
    p_user_id text,
    p_amount numeric,
    p_tx_type text default 'adjustment',
    p_category text default 'paid',
    p_priority integer default 50,
    p_expires_at timestamptz default null,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null,
    p_scope text[] default null
)
returns public.credit_add_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_amount bigint := credit_private.whole(p_amount, 'amount', 1);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_grant_id uuid := credit_private.uuid_v7();
    v_scope text[] := credit_private.check_scope(p_scope);
    v_request jsonb;
    v_account public.credit_accounts;
    v_replay jsonb;
    v_transaction_id uuid;
    v_balance_after bigint;
    v_result public.credit_add_result;
begin
    perform credit_private.check_user_id(p_user_id);
    perform credit_private.check_key(p_idempotency_key);
    perform credit_private.check_choice(
        p_tx_type, 'tx_type', array['grant', 'purchase', 'adjustment', 'promotion']
    );
    perform credit_private.check_choice(p_category, 'category', array['paid', 'promotional']);
    if p_priority is null or p_priority not between 0 and 100 then
        perform credit_private.fail(
            'DC006',
            format('priority must be from 0 (spent first) to 100, got %s',
                coalesce(p_priority::text, 'null')),
            jsonb_build_object('argument', 'priority')
        );
    end if;

    v_request := jsonb_build_object(
        'amount', v_amount, 'tx_type', p_tx_type, 'category', p_category,
        'priority', p_priority, 'expires_at', extract(epoch from p_expires_at),
        'metadata', v_metadata
    -- a scoped grant's key names its scope too (an unscoped one's request is as before)
    ) || case when v_scope is not null then jsonb_build_object('scope', v_scope) else '{}' end;
    v_account := credit_private.lock_account(p_user_id, true);
    v_replay := credit_private.find_replay(
        v_account.id, p_idempotency_key, 'add_credits', v_request
    );
    if v_replay is not null then
        v_result := jsonb_populate_record(null::public.credit_add_result, v_replay);
        v_result.is_replay := true;
        return v_result;
    end if;
    -- after the replay lookup: a replay returns the original even once its expiry has passed
    if p_expires_at is not null and (p_expires_at <= v_now or p_expires_at = 'infinity') then
        perform credit_private.fail(
            'DC005',
            format('expires_at must be a finite time after now (%s), got %s; use null for'
                || ' credits that never expire', v_now, p_expires_at),
            jsonb_build_object('argument', 'expires_at', 'now', v_now, 'value', p_expires_at)
        );
    end if;

    perform credit_private.expire_grants(v_account.id, v_now);
    v_transaction_id := (credit_private.append_transaction(
        v_account.id, p_tx_type, v_amount, v_now, v_metadata, p_idempotency_key,
        p_grant_id => v_grant_id
    )).id;
    if v_scope is null then
        perform credit_private.create_grant(
            v_account.id, v_transaction_id, v_grant_id, p_category, p_priority, v_amount,
            p_expires_at, v_now
        );
    else
        perform credit_private.create_scoped_grant(
            v_account.id, v_transaction_id, v_grant_id, p_category, p_priority, v_amount,
            p_expires_at, v_scope, v_now
        );
    end if;
    select a.balance into v_balance_after
    from public.credit_accounts as a
    where a.id = v_account.id;

    v_result := row(
        v_transaction_id, v_grant_id, p_user_id, v_amount, p_tx_type, p_category,
        p_priority, p_expires_at, v_balance_after, v_now, false
    );
    perform credit_private.remember(
        v_account.id, p_idempotency_key, 'add_credits', v_request, to_jsonb(v_result), v_now
    );
    return v_result;
end;
$$;
revoke all on function public.credit_add_credits(
    text, numeric, text, text, integer, timestamptz, jsonb, text, text[]
) from public, anon, authenticated, service_role;
grant execute on function public.credit_add_credits(
    text, numeric, text, text, integer, timestamptz, jsonb, text, text[]
) to service_role;

create function public.credit_deduct_credits(
    p_user_id text,
    p_amount numeric,
    p_min_balance numeric default 0,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_deduct_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_amount bigint := credit_private.whole(p_amount, 'amount', 1);
    v_min_balance bigint := credit_private.whole(p_min_balance, 'min_balance', 0);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_user_id text := credit_private.check_user_id(p_user_id);
    v_key text := credit_private.check_key(p_idempotency_key);
begin
    return credit_private.deduct(
        v_user_id, 'usage', v_amount, v_min_balance, v_metadata, v_key,
        -- what a replay must match; only needed with a key
        case when v_key is not null then jsonb_build_object(
            'amount', v_amount, 'min_balance', v_min_balance, 'metadata', v_metadata
        ) end
    );
end;
$$;
revoke all on function public.credit_deduct_credits(text, numeric, numeric, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_deduct_credits(
    text, numeric, numeric, jsonb, text
) to service_role;
