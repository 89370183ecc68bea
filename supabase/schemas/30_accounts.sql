-- ducto: accounts and the journal. An operation locks its account row first; the journal
-- writer changes the balance and appends the journal row in one statement.

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
        -- two first operations of a new user race here: one inserts, the other waits; the
        -- new account's alert flag is read after the changes of alerts and plans that
        -- could affect it (credit_private.lock_alert_flags)
        perform credit_private.lock_alert_flags(p_user_id);
        insert into public.credit_accounts (user_id, features)
        values (p_user_id, credit_private.alert_flag(p_user_id))
        on conflict (user_id) do nothing;
        select * into v_account
        from public.credit_accounts
        where user_id = p_user_id
        for update;
    end if;
    return v_account;
end;
$$;
revoke all on function credit_private.lock_account(text, boolean)
from public, anon, authenticated, service_role;

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
revoke all on function credit_private.lock_account_by_id(bigint)
from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- feature flags
--
-- credit_accounts.features: which features an account uses, so that the debit, reading
-- them with the row it locks, skips the probes of the others:
--   1  balance alerts: an alert of the account's user, or of their plan (the default plan
--      for a user without one of their own, and for team pools), 41_events.sql
--   2  limits: a credit_account_limits row, 42_limits.sql (a credit line is read only when
--      the floor alone would refuse a charge, so it needs no flag)
--   4  scoped credits: the account has had a scoped grant, 43_scopes.sql (never cleared: a
--      refund may make a used-up one spendable again; credit_private.has_scoped answers
--      whether one is spendable now)
--   8  auto top-up: a rule, enabled or not, 46_auto_topup.sql
-- Bits 2, 4 and 8 follow one account's rows, changed under its lock
-- (credit_private.set_feature). Bit 1 also follows plans: see lock_alert_flags.

create function credit_private.set_feature(p_account_id bigint, p_bit smallint, p_on boolean)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    -- the caller holds the account lock and has just written the feature's rows
    update public.credit_accounts as a
    set features = case when p_on then a.features | p_bit else a.features & ~p_bit end
    where a.id = p_account_id and (a.features & p_bit <> 0) <> p_on;
end;
$$;
revoke all on function credit_private.set_feature(bigint, smallint, boolean)
from public, anon, authenticated, service_role;

create function credit_private.alert_flag(p_user_id text)
returns smallint
language plpgsql
-- volatile: reads a fresh snapshot, taken after the caller's locks
volatile
set search_path = ''
as $$
begin
    -- 1 when a balance alert applies to the user, as credit_private.balance_events finds
    -- them: their own, or their plan's (the default plan's without one of their own)
    return case when exists (
        select 1 from public.credit_balance_alerts as x
        where
            x.user_id = p_user_id
            or x.plan_id = coalesce(
                (select up.plan_id from public.credit_user_plans as up
                 where up.user_id = p_user_id),
                (select d.id from public.credit_plans as d where d.is_default)
            )
    ) then 1 else 0 end;
end;
$$;
revoke all on function credit_private.alert_flag(text)
from public, anon, authenticated, service_role;

create function credit_private.account_features(p_account_id bigint)
returns smallint
language plpgsql
volatile
set search_path = ''
as $$
begin
    -- the features of an account computed from scratch (the migration's backfill, checks)
    return (
        select
            credit_private.alert_flag(a.user_id)
            | case when exists (
                select 1 from public.credit_account_limits as l where l.account_id = a.id
            ) then 2 else 0 end
            | case when exists (
                select 1 from public.credit_grants as g
                where g.account_id = a.id and g.scope is not null
            ) then 4 else 0 end
            | case when exists (
                select 1 from public.credit_auto_topups as t where t.account_id = a.id
            ) then 8 else 0 end
        from public.credit_accounts as a
        where a.id = p_account_id
    );
end;
$$;
revoke all on function credit_private.account_features(bigint)
from public, anon, authenticated, service_role;

create function credit_private.lock_alert_flags(p_user_id text)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    -- The alert flag of an account depends on rows that are not its own (its plan, the
    -- plan's alerts, the default plan), so their writers take turns on this lock ('flag'
    -- in ASCII) before any account lock, then recompute the flags they affect in a later
    -- statement, which sees every change committed before: a change for one user (their
    -- alerts, their plan, their new account) takes it shared plus the user's own lock; a
    -- change for a plan's users (a plan's alerts, the default plan; p_user_id null) takes
    -- it exclusively, so no change for one user runs meanwhile.
    if p_user_id is null then
        perform pg_catalog.pg_advisory_xact_lock(1718378855);
    else
        perform pg_catalog.pg_advisory_xact_lock_shared(1718378855);
        perform pg_catalog.pg_advisory_xact_lock(1718378855, pg_catalog.hashtext(p_user_id));
    end if;
end;
$$;
revoke all on function credit_private.lock_alert_flags(text)
from public, anon, authenticated, service_role;

create function credit_private.refresh_alert_flags(p_user_id text, p_plan_id text)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    -- Recompute the alert flag of the user p_user_id's account, or (p_user_id null) of the
    -- accounts on plan p_plan_id: its users, and when it is the default plan (or p_plan_id
    -- is null: the default plan changed) the users without a plan of their own. The caller
    -- holds credit_private.lock_alert_flags(p_user_id).
    if p_user_id is not null then
        update public.credit_accounts as a
        set features = (a.features & ~1) | credit_private.alert_flag(a.user_id)
        where
            a.user_id = p_user_id
            and (a.features & 1) <> credit_private.alert_flag(a.user_id);
        return;
    end if;
    -- the plan's users (through credit_user_plans_plan_idx)
    update public.credit_accounts as a
    set features = (a.features & ~1) | credit_private.alert_flag(a.user_id)
    from public.credit_user_plans as up
    where
        up.plan_id = p_plan_id
        and a.user_id = up.user_id
        and (a.features & 1) <> credit_private.alert_flag(a.user_id);
    -- the default plan's: every account without a plan of its own
    if p_plan_id is null or exists (
        select 1 from public.credit_plans as d where d.id = p_plan_id and d.is_default
    ) then
        update public.credit_accounts as a
        set features = (a.features & ~1) | credit_private.alert_flag(a.user_id)
        where
            not exists (
                select 1 from public.credit_user_plans as up where up.user_id = a.user_id
            )
            and (a.features & 1) <> credit_private.alert_flag(a.user_id);
    end if;
end;
$$;
revoke all on function credit_private.refresh_alert_flags(text, text)
from public, anon, authenticated, service_role;

create function credit_private.append_transaction(
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
    p_attributed_user_id text default null,
    p_request_hash uuid default null,
    p_available_after bigint default null,
    p_features smallint default null
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_row public.credit_transactions;
    v_features smallint;
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
        usage, model, job_name, attributed_user_id, request_hash, available_after
    )
    select
        credit_private.uuid_v7(p_now), p_account_id, a.version, a.user_id, p_type, p_amount,
        a.balance, p_grant_id, p_reservation_id, p_refund_of, p_idempotency_key, p_metadata, p_now,
        p_pricing_version, p_usage, p_usage ->> 'model', p_job_name, p_attributed_user_id,
        p_request_hash, p_available_after
    from account as a
    returning * into v_row;
    -- a keyed one-call debit: where its key is found (45_idempotency.sql)
    if p_request_hash is not null then
        insert into public.credit_debit_keys (
            account_id, idempotency_key, transaction_id, operation, request_hash
        ) values (p_account_id, p_idempotency_key, v_row.id, p_type, p_request_hash);
    end if;
    -- the largest balance is the largest amount: every balance stays exact in JavaScript
    -- and a sum of balances far from bigint's end
    if v_row.balance_after > 9007199254740991 then
        perform credit_private.fail(
            'DC008',
            format('the balance of %s would be %s, above the largest balance 9007199254740991',
                quote_literal(v_row.user_id), v_row.balance_after),
            jsonb_build_object(
                'user_id', v_row.user_id, 'amount', p_amount, 'maximum', 9007199254740991
            )
        );
    end if;
    if v_row.amount >= 0 then
        return v_row;
    end if;
    -- a row that lowers the balance: the features of the account (p_features: the debit
    -- read them with the locked row) tell which probes can find something
    if p_features is null then
        select a.features into v_features from public.credit_accounts as a
        where a.id = p_account_id;
    else
        -- (apart: an expression with a query runs in the executor even when not needed)
        v_features := p_features;
    end if;
    -- balance.low (41_events.sql) with an alert of the user or their plan; balance.depleted
    -- for every account, on the crossing to zero or below
    if v_features & 1 <> 0
        or (v_row.balance_after <= 0 and v_row.balance_after - v_row.amount > 0) then
        perform credit_private.balance_events(v_row);
    end if;
    -- auto top-up (46_auto_topup.sql): one primary-key probe of the account's rule
    if v_features & 8 <> 0 then
        if exists (
            select 1 from public.credit_auto_topups as r
            where
                r.account_id = v_row.account_id and r.enabled
                and v_row.balance_after < r.threshold
        ) then
            perform credit_private.request_topup(
                v_row.account_id, v_row.balance_after, p_now, v_row.id
            );
        end if;
    end if;
    return v_row;
end;
$$;
revoke all on function credit_private.append_transaction(
    bigint, text, bigint, timestamptz, jsonb, text, uuid, uuid, uuid, bigint, jsonb, text, text,
    uuid, bigint, smallint
) from public, anon, authenticated, service_role;

create function public.credit_get_balance(p_user_id text default null)
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
    v_result.scopes := coalesce(credit_private.scope_breakdown(
        (select a.id from public.credit_accounts as a where a.user_id = v_user_id), v_now
    ), '[]');
    return v_result;
end;
$$;
revoke all on function public.credit_get_balance(text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_get_balance(text) to authenticated, service_role;
