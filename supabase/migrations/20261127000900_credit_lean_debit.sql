-- ducto: the one-call debit (deduct, usage and fixed-job charges, team charges) does less
-- work per call, with the same rules and results. It is the ledger's hot path: one call
-- per model call. bench/run measures it against pgbench's TPC-B-like transaction.
--
--   * Row checks are one function call per table. PostgreSQL reads a CHECK expression
--     back from its stored form and plans it again in every statement that writes the
--     table; the journal's six checks cost more than the insert they guard. A call to an
--     immutable plpgsql function is one node to plan, and the function's own expressions
--     are compiled once per session. The rules are the same; tests/sql/25_row_checks.sql
--     breaks each of them.
--   * The balance update and its journal row are one statement, and so are a grant's
--     debit and its draw: a debit from one grant runs five statements where it ran seven.
--   * A debit updates its grant in place (a HOT update: no new index entries). No index
--     of credit_grants mentions `remaining` any more, which changes on every debit; the
--     partial indexes of spendable grants use `spendable`, stored as remaining > 0,
--     which changes once, when a grant is used up. Before, every debit added an entry to
--     each index of the table, and a busy account's grant lookups slowed down as dead
--     entries piled up until the next vacuum. The functions that look grants up by
--     spendability are replaced by versions that say `spendable` (nothing else in them
--     changes).
--   * The one-call debits and team charges share their debit: expire what is due, read
--     what is available, journal and draw (credit_private.available_now, .debit).

-- ---------------------------------------------------------------- row checks

create function credit_private.journal_row_ok(
    p_type text,
    p_amount bigint,
    p_seq bigint,
    p_refund_of uuid,
    p_reservation_id uuid,
    p_metadata jsonb,
    p_usage jsonb,
    p_model text,
    p_pricing_version bigint,
    p_job_name text
)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
    -- the rules of the checks it replaces, one per line, in their order
    return p_seq > 0
        -- credits carry a positive amount, debits a negative one
        and (
            (p_type in ('grant', 'purchase', 'adjustment', 'promotion', 'refund') and p_amount > 0)
            or (p_type in ('usage', 'fixed_job', 'capture', 'expiry') and p_amount < 0)
        )
        and (p_type = 'refund') = (p_refund_of is not null)
        and (p_type = 'capture') = (p_reservation_id is not null)
        and jsonb_typeof(p_metadata) = 'object'
        -- what priced a row (see 20261127000500_credit_pricing.sql)
        and (p_usage is null or (p_type in ('usage', 'capture') and p_pricing_version is not null))
        and (p_model is not distinct from p_usage ->> 'model')
        and ((p_job_name is not null) = (p_type = 'fixed_job' and p_pricing_version is not null));
end;
$$;

create function credit_private.grant_row_ok(
    p_category text,
    p_priority integer,
    p_amount bigint,
    p_remaining bigint,
    p_expires_at timestamptz
)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
    return p_category in ('paid', 'promotional')
        and p_priority between 0 and 100
        and p_amount > 0
        and p_remaining between 0 and p_amount
        and p_expires_at < 'infinity';
end;
$$;

-- Every stored row meets the checks being replaced, so it meets these. They are validated
-- apart from the ALTER that adds them, so the tables are not locked against writes while
-- each is read once.
alter table public.credit_transactions
drop constraint credit_transactions_seq_check,
drop constraint credit_transactions_check,
drop constraint credit_transactions_check1,
drop constraint credit_transactions_check2,
drop constraint credit_transactions_metadata_check,
drop constraint credit_transactions_priced_check,
add constraint credit_transactions_row_check check (
    credit_private.journal_row_ok(
        type, amount, seq, refund_of, reservation_id, metadata, usage, model,
        pricing_version, job_name
    )
) not valid;
alter table public.credit_transactions validate constraint credit_transactions_row_check;

alter table public.credit_grants
drop constraint credit_grants_category_check,
drop constraint credit_grants_priority_check,
drop constraint credit_grants_amount_check,
drop constraint credit_grants_expires_at_check,
drop constraint credit_grants_check,
add constraint credit_grants_row_check check (
    credit_private.grant_row_ok(category, priority, amount, remaining, expires_at)
) not valid;
alter table public.credit_grants validate constraint credit_grants_row_check;

-- ---------------------------------------------------------------- spendable grants

-- Adding a stored column rewrites the table once; the free space left on each page lets a
-- debit write the grant's new version next to the old one (a HOT update).
alter table public.credit_grants
set (fillfactor = 70),
add column spendable boolean not null generated always as (remaining > 0) stored;
comment on column public.credit_grants.spendable is
'remaining > 0. The indexes of spendable grants use it, not remaining, so a debit that'
' leaves credits in a grant adds no index entry.';

drop index public.credit_grants_burn_idx;
drop index public.credit_grants_expiry_idx;
-- spendable grants of an account, in burn-down order
create index credit_grants_burn_idx
on public.credit_grants (account_id, priority, expires_at, created_at, id)
where spendable;
-- grants waiting for expiry, for the sweep
create index credit_grants_expiry_idx
on public.credit_grants (expires_at)
where spendable and expires_at is not null;

-- ---------------------------------------------------------------- journal

create or replace function credit_private.append_transaction(
    p_account_id bigint,
    p_type text,
    p_amount bigint,
    p_now timestamptz,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null,
    p_grant_id uuid default null,
    p_reservation_id uuid default null,
    p_refund_of uuid default null,
    p_pricing_version bigint default null,
    p_usage jsonb default null,
    p_job_name text default null,
    p_attributed_user_id text default null
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_row public.credit_transactions;
begin
    -- the balance and the journal change in one statement, under the account lock
    with account as (
        update public.credit_accounts
        set balance = balance + p_amount, version = version + 1, updated_at = p_now
        where id = p_account_id
        returning balance, version, user_id
    )

    insert into public.credit_transactions (
        id, account_id, seq, user_id, type, amount, balance_after, grant_id,
        reservation_id, refund_of, idempotency_key, metadata, created_at, pricing_version,
        usage, model, job_name, attributed_user_id
    )
    select
        gen_random_uuid(), p_account_id, a.version, a.user_id, p_type, p_amount, a.balance,
        p_grant_id, p_reservation_id, p_refund_of, p_idempotency_key, p_metadata, p_now,
        p_pricing_version, p_usage, p_usage ->> 'model', p_job_name, p_attributed_user_id
    from account as a
    returning * into v_row;
    return v_row;
end;
$$;

-- ---------------------------------------------------------------- grants

create or replace function credit_private.draw(
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
    -- Most debits fit in the first grant in burn-down order: take it there directly, and
    -- note the draw in the same statement.
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
                order by f.priority, f.expires_at nulls last, f.created_at, f.id
                limit 1
            )
            and g.remaining >= p_amount
        returning g.id
    )

    insert into public.credit_grant_draws (transaction_id, grant_id, amount)
    select p_transaction_id, t.id, p_amount
    from taken as t
    returning grant_id into v_grant_id;
    if v_grant_id is not null then
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
            and g.spendable
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

-- ---------------------------------------------------------------- expiry

-- The functions below are those of earlier migrations that find grants by spendability,
-- unchanged but for `spendable`, which their indexes now need.

create or replace function credit_private.expire_grants(
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
        insert into public.credit_grant_draws (transaction_id, grant_id, amount)
        values (v_transaction_id, v_grant.id, v_grant.remaining);
        update public.credit_grants set remaining = 0 where id = v_grant.id;
        grants := grants + 1;
        amount := amount + v_grant.remaining;
    end loop;
end;
$$;

create or replace function credit_private.sweep_candidates(p_now timestamptz)
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

create or replace function public.credit_get_balance(p_user_id text)
returns public.credit_balance_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_result public.credit_balance_result;
begin
    perform credit_private.check_user_id(p_user_id);
    -- row-level security would answer zeros for someone else's account; say no instead
    if current_user = 'authenticated' and p_user_id is distinct from (select auth.uid())::text then
        raise exception 'a signed-in user may read only their own balance'
            using errcode = '42501';
    end if;
    select
        p_user_id,
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
    left join public.credit_accounts as a on a.user_id = p_user_id;
    v_result.available := v_result.balance - v_result.held;
    return v_result;
end;
$$;

create or replace function public.credit_sweep_expired(p_dry_run boolean default false)
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
    return v_result;
end;
$$;

-- ---------------------------------------------------------------- the one-call debit

create function credit_private.available_now(p_account_id bigint, p_now timestamptz)
returns bigint
language plpgsql
volatile
set search_path = ''
as $$
begin
    -- the caller holds the account lock; no expiry work unless a grant is due (rare)
    if exists (
        select from public.credit_grants as g
        where g.account_id = p_account_id and g.spendable and g.expires_at <= p_now
    ) then
        perform credit_private.expire_grants(p_account_id, p_now);
    end if;
    return credit_private.available(p_account_id, p_now);
end;
$$;

create function credit_private.debit(
    p_account_id bigint,
    p_type text,
    p_amount bigint,
    p_now timestamptz,
    p_metadata jsonb,
    p_idempotency_key text,
    p_pricing_version bigint,
    p_usage jsonb,
    p_job_name text,
    p_attributed_user_id text
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_row public.credit_transactions;
begin
    -- the caller holds the account lock and has admitted p_amount
    if p_amount = 0 then
        -- usage priced at 0 credits: admitted, nothing to journal
        select a.balance into v_row.balance_after
        from public.credit_accounts as a
        where a.id = p_account_id;
        return v_row;
    end if;
    v_row := credit_private.append_transaction(
        p_account_id, p_type, -p_amount, p_now, p_metadata, p_idempotency_key,
        p_pricing_version => p_pricing_version, p_usage => p_usage, p_job_name => p_job_name,
        p_attributed_user_id => p_attributed_user_id
    );
    perform credit_private.draw(p_account_id, v_row.id, p_amount, p_now);
    return v_row;
end;
$$;

create or replace function credit_private.deduct(
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
    v_available := credit_private.admit(
        p_user_id, coalesce(credit_private.available_now(v_account.id, v_now), 0), v_amount,
        v_min_balance
    );
    v_transaction := credit_private.debit(
        v_account.id, p_type, v_amount, v_now, p_metadata, p_idempotency_key,
        v_cost.pricing_version, p_usage, p_job_name, null
    );

    v_result := row(
        v_transaction.id, null::uuid, p_user_id, v_amount, 0::bigint,
        coalesce(v_transaction.balance_after, 0), v_available - v_amount, v_now, false,
        v_cost.pricing_version
    );
    if p_idempotency_key is not null and v_account.id is not null then
        perform credit_private.remember(
            v_account.id, p_idempotency_key, p_type, p_request, to_jsonb(v_result), v_now
        );
    end if;
    return v_result;
end;
$$;

create or replace function credit_private.team_deduct(
    p_team_id uuid,
    p_user_id text,
    p_usage jsonb,
    p_metadata jsonb,
    p_idempotency_key text
)
returns public.credit_team_deduct_result
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    -- what a replay must match; only needed with a key
    v_request jsonb := case when p_idempotency_key is not null then jsonb_build_object(
        'user_id', p_user_id, 'usage', p_usage, 'metadata', p_metadata
    ) end;
    v_team public.credit_teams;
    v_replay jsonb;
    v_member public.credit_team_members;
    v_cost public.credit_cost_result;
    v_floor bigint;
    v_spent bigint;
    v_available bigint;
    v_transaction public.credit_transactions;
    v_result public.credit_team_deduct_result;
begin
    -- Every check below is made under the pool's lock, in the transaction that debits it,
    -- and each refusal raises: nothing is written, and nothing looks like success.
    v_team := credit_private.lock_team(p_team_id);
    if p_idempotency_key is not null then
        v_replay := credit_private.find_replay(
            v_team.account_id, p_idempotency_key, 'team_usage', v_request
        );
        if v_replay is not null then
            v_result := jsonb_populate_record(null::public.credit_team_deduct_result, v_replay);
            v_result.is_replay := true;
            return v_result;
        end if;
    end if;

    select * into v_member
    from public.credit_team_members as m
    where m.team_id = p_team_id and m.user_id = p_user_id;
    if not found then
        perform credit_private.fail(
            'DC082',
            format('user %s is not a member of team %s', quote_literal(p_user_id), p_team_id),
            jsonb_build_object('team_id', p_team_id, 'user_id', p_user_id)
        );
    end if;

    -- the pool keeps the higher of its own floor and the pricing's
    v_cost := credit_private.price(p_usage, null);
    v_floor := greatest(v_team.min_balance, v_cost.min_balance);

    if v_member.spend_limit is not null then
        v_spent := credit_private.member_spent(
            v_team.account_id, p_user_id, v_member.limit_period, v_now
        );
        if v_spent + v_cost.credits > v_member.spend_limit then
            perform credit_private.fail(
                'DC083',
                format('spending limit of user %s in team %s exceeded: spent %s of %s this %s,'
                    || ' needed %s', quote_literal(p_user_id), p_team_id, v_spent,
                    v_member.spend_limit, v_member.limit_period, v_cost.credits),
                jsonb_build_object(
                    'team_id', p_team_id,
                    'user_id', p_user_id,
                    'spend_limit', v_member.spend_limit,
                    'limit_period', v_member.limit_period,
                    'spent', v_spent,
                    'needed', v_cost.credits
                )
            );
        end if;
    end if;

    -- after the checks that only read: a charge over its member's limit does no expiry
    -- work before it is refused
    v_available := credit_private.available_now(v_team.account_id, v_now);
    if v_available - v_cost.credits < v_floor then
        perform credit_private.fail(
            'DC084',
            format('team %s has too few credits: available %s, needed %s with min_balance %s',
                p_team_id, v_available, v_cost.credits, v_floor),
            jsonb_build_object(
                'team_id', p_team_id,
                'user_id', p_user_id,
                'available', v_available,
                'needed', v_cost.credits,
                'min_balance', v_floor
            )
        );
    end if;

    v_transaction := credit_private.debit(
        v_team.account_id, 'usage', v_cost.credits, v_now, p_metadata, p_idempotency_key,
        v_cost.pricing_version, p_usage, null, p_user_id
    );

    v_result := row(
        v_transaction.id, p_team_id, p_user_id, v_cost.credits, v_transaction.balance_after,
        v_available - v_cost.credits, v_spent + v_cost.credits, v_member.spend_limit,
        v_member.limit_period, v_now, false, v_cost.pricing_version
    );
    perform credit_private.remember(
        v_team.account_id, p_idempotency_key, 'team_usage', v_request, to_jsonb(v_result), v_now
    );
    return v_result;
end;
$$;

-- ---------------------------------------------------------------- privileges

revoke all on function credit_private.journal_row_ok(
    text, bigint, bigint, uuid, uuid, jsonb, jsonb, text, bigint, text
) from public, anon, authenticated, service_role;
revoke all on function credit_private.grant_row_ok(text, integer, bigint, bigint, timestamptz)
from public, anon, authenticated, service_role;
revoke all on function credit_private.available_now(bigint, timestamptz)
from public, anon, authenticated, service_role;
revoke all on function credit_private.debit(
    bigint, text, bigint, timestamptz, jsonb, text, bigint, jsonb, text, text
) from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- schema version

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261127000900'::text;
$$;
