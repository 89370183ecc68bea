-- ducto: the debit skips the probes of the features an account does not use
-- (docs/ledger.md, "What a debit costs").
--
--   * credit_accounts.features: bits of the features the account uses (1 balance alerts,
--     of the user or of their plan; 2 limits; 4 scoped credits; 8 auto top-up), read by the
--     debit with the account row it locks. Every writer of those features keeps them:
--     credit_set_limits, credit_add_credits with a scope, credit_set_auto_topup (under the
--     account lock); credit_set_alert, credit_delete_alert, credit_assign_plan,
--     credit_upsert_plan (the default plan), a Stripe subscription's end and a new account
--     (under credit_private.lock_alert_flags). Existing accounts are backfilled here.
--   * credit_private.debit reads what is available and the features in one statement, and
--     probes scoped credits and limits only for an account that has them;
--     credit_private.append_transaction (a new last parameter, p_features) checks balance
--     alerts and the auto top-up rule only for an account that has them (balance.depleted
--     still fires for every account).
--   * credit_private.check_usage returns usage already in its normal form after a few
--     expressions; it accepts and rejects what it did, with the same errors.


-- ---------------------------------------------------------------- tables

alter table public.credit_accounts
add column features smallint not null default 0 check (features between 0 and 15);
comment on column public.credit_accounts.features is
'Bits of the features the account uses, read by the debit with the row it locks so that it'
' skips the probes of the others: 1 balance alerts (of the user or of their plan), 2 limits'
' (a credit_account_limits row), 4 scoped credits (a scoped grant, ever), 8 auto top-up (a'
' rule). Kept by every writer of those (credit_private.account_features computes them).';

-- ---------------------------------------------------------------- new functions

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

-- ---------------------------------------------------------------- changed functions

-- a new last parameter, p_features: dropped and created again
drop function credit_private.append_transaction(
    bigint, text, bigint, timestamptz, jsonb, text, uuid, uuid, uuid, bigint, jsonb, text, text,
    uuid, bigint
);

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
        gen_random_uuid(), p_account_id, a.version, a.user_id, p_type, p_amount, a.balance,
        p_grant_id, p_reservation_id, p_refund_of, p_idempotency_key, p_metadata, p_now,
        p_pricing_version, p_usage, p_usage ->> 'model', p_job_name, p_attributed_user_id,
        p_request_hash, p_available_after
    from account as a
    returning * into v_row;
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

create or replace function credit_private.lock_account(p_user_id text, p_create boolean)
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

create or replace function credit_private.debit(
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

    insert into public.credit_grant_draws (transaction_id, grant_id, amount)
    select v_row.id, t.id, p_amount
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

create or replace function public.credit_set_alert(
    p_user_id text default null,
    p_plan_id text default null,
    p_threshold numeric default null,
    p_percent numeric default null
)
returns public.credit_balance_alerts
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_alert public.credit_balance_alerts;
    v_threshold bigint;
begin
    -- a balance.low threshold of a user (or team pool, 'team:<id>') or of a plan; setting
    -- one that exists returns it unchanged
    if (p_user_id is null) = (p_plan_id is null) then
        perform credit_private.fail(
            'DC006', 'an alert is either a user''s or a plan''s: give user_id or plan_id',
            jsonb_build_object('argument', 'user_id')
        );
    end if;
    if (p_threshold is null) = (p_percent is null) then
        perform credit_private.fail(
            'DC006', 'an alert is either a threshold in credits or a percent: give one of them',
            jsonb_build_object('argument', 'threshold')
        );
    end if;
    if p_user_id is not null then
        perform credit_private.check_user_id(p_user_id);
    else
        perform from public.credit_plans as p where p.id = p_plan_id;
        if not found then
            perform credit_private.fail(
                'DC080', format('plan %s does not exist', quote_literal(left(p_plan_id, 100))),
                jsonb_build_object('plan_id', left(p_plan_id, 100))
            );
        end if;
    end if;
    if p_threshold is not null then
        v_threshold := credit_private.whole(p_threshold, 'threshold', 1);
    elsif p_percent = 'NaN'::numeric or p_percent <= 0 or p_percent > 100 then
        perform credit_private.fail(
            'DC006', format('percent must be above 0 and at most 100, got %s', p_percent),
            jsonb_build_object('argument', 'percent', 'value', p_percent::text)
        );
    end if;
    -- the alert flags of the accounts it applies to (the user's, or the plan's users')
    perform credit_private.lock_alert_flags(p_user_id);
    insert into public.credit_balance_alerts as a (user_id, plan_id, threshold, percent, created_at)
    values (p_user_id, p_plan_id, v_threshold, p_percent, credit_private.clock())
    on conflict (user_id, plan_id, threshold, percent) do nothing
    returning a.* into v_alert;
    perform credit_private.refresh_alert_flags(p_user_id, p_plan_id);
    if v_alert.id is null then
        select a.* into v_alert from public.credit_balance_alerts as a
        where
            a.user_id is not distinct from p_user_id and a.plan_id is not distinct from p_plan_id
            and a.threshold is not distinct from v_threshold
            and a.percent is not distinct from p_percent;
    end if;
    return v_alert;
end;
$$;
revoke all on function public.credit_set_alert(text, text, numeric, numeric)
from public, anon, authenticated, service_role;
grant execute on function public.credit_set_alert(text, text, numeric, numeric) to service_role;

create or replace function public.credit_delete_alert(p_alert_id uuid)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_alert public.credit_balance_alerts;
begin
    -- true if it existed; then the alert flags of the accounts it applied to are recomputed
    select * into v_alert from public.credit_balance_alerts where id = p_alert_id;
    if not found then
        return false;
    end if;
    perform credit_private.lock_alert_flags(v_alert.user_id);
    delete from public.credit_balance_alerts where id = p_alert_id;
    if not found then
        return false;
    end if;
    perform credit_private.refresh_alert_flags(v_alert.user_id, v_alert.plan_id);
    return true;
end;
$$;
revoke all on function public.credit_delete_alert(uuid)
from public, anon, authenticated, service_role;
grant execute on function public.credit_delete_alert(uuid) to service_role;

create or replace function public.credit_set_limits(
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

create or replace function credit_private.create_scoped_grant(
    p_account_id bigint,
    p_transaction_id uuid,
    p_grant_id uuid,
    p_category text,
    p_priority integer,
    p_amount bigint,
    p_expires_at timestamptz,
    p_scope text[],
    p_now timestamptz
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    -- unlike credit_private.create_grant, no debt is paid: debt is what a charge could not
    -- pay, and a scoped grant pays nothing outside its scope
    insert into public.credit_grants (
        id, account_id, user_id, transaction_id, category, priority, amount, remaining,
        expires_at, created_at, scope
    )
    select
        p_grant_id, a.id, a.user_id, p_transaction_id, p_category, p_priority, p_amount,
        p_amount, p_expires_at, p_now, p_scope
    from public.credit_accounts as a
    where a.id = p_account_id;
    -- its debits probe for scoped credits from now on (the caller holds the account lock)
    perform credit_private.set_feature(p_account_id, 4::smallint, true);
end;
$$;
revoke all on function credit_private.create_scoped_grant(
    bigint, uuid, uuid, text, integer, bigint, timestamptz, text[], timestamptz
) from public, anon, authenticated, service_role;

create or replace function public.credit_set_auto_topup(
    p_user_id text,
    p_threshold bigint,
    p_unit_price_minor numeric,
    p_currency text,
    p_stripe_customer_id text,
    p_stripe_payment_method_id text,
    p_amount bigint default null,
    p_target_balance bigint default null,
    p_monthly_cap_credits bigint default null,
    p_monthly_cap_minor bigint default null,
    p_cooldown_seconds integer default 3600,
    p_max_failures integer default 3,
    p_enabled boolean default true
)
returns public.credit_auto_topup_row
language plpgsql
volatile
-- definer: writes tables no API role may write
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_account public.credit_accounts;
begin
    perform credit_private.check_user_id(p_user_id);
    if (p_amount is null) = (p_target_balance is null) then
        perform credit_private.fail('DC006', 'give either amount or target_balance',
            jsonb_build_object('argument', 'amount'));
    end if;
    if p_enabled is null then
        perform credit_private.fail('DC006', 'enabled must not be null',
            jsonb_build_object('argument', 'enabled'));
    end if;
    v_account := credit_private.lock_account(p_user_id, true);
    begin
        insert into public.credit_auto_topups as t (
            account_id, user_id, enabled, threshold, amount, target_balance, unit_price_minor,
            currency, monthly_cap_credits, monthly_cap_minor, cooldown_seconds, max_failures,
            stripe_customer_id, stripe_payment_method_id, created_at, updated_at
        ) values (
            v_account.id, p_user_id, p_enabled, p_threshold, p_amount, p_target_balance,
            p_unit_price_minor, p_currency, p_monthly_cap_credits, p_monthly_cap_minor,
            coalesce(p_cooldown_seconds, 3600), coalesce(p_max_failures, 3),
            p_stripe_customer_id, p_stripe_payment_method_id, v_now, v_now
        )
        on conflict (account_id) do update set
            enabled = excluded.enabled, threshold = excluded.threshold,
            amount = excluded.amount, target_balance = excluded.target_balance,
            unit_price_minor = excluded.unit_price_minor, currency = excluded.currency,
            monthly_cap_credits = excluded.monthly_cap_credits,
            monthly_cap_minor = excluded.monthly_cap_minor,
            cooldown_seconds = excluded.cooldown_seconds, max_failures = excluded.max_failures,
            stripe_customer_id = excluded.stripe_customer_id,
            stripe_payment_method_id = excluded.stripe_payment_method_id,
            -- setting a rule again starts its failure count over
            consecutive_failures = 0, disabled_reason = null, updated_at = excluded.updated_at;
    exception when check_violation or not_null_violation then
        perform credit_private.fail('DC006',
            'invalid auto top-up rule: ' || sqlerrm
            || ' (threshold and amounts 1 to 2^53-1, target_balance above threshold,'
            || ' unit_price_minor > 0, currency 3 lower-case letters, cooldown 0 to 2592000 s,'
            || ' max_failures 1 to 100, Stripe ids of letters, digits and _)',
            jsonb_build_object('argument', 'rule'));
    end;
    -- its debits probe the rule from now on (a rule is never deleted: disabled, it stays)
    perform credit_private.set_feature(v_account.id, 8::smallint, true);
    -- enabled while already below the threshold: the request is due now
    if p_enabled then
        perform credit_private.request_topup(v_account.id, v_account.balance, v_now, null);
    end if;
    return credit_private.auto_topup_row(v_account.id, v_now);
end;
$$;
revoke all on function public.credit_set_auto_topup(
    text, bigint, numeric, text, text, text, bigint, bigint, bigint, bigint, integer, integer,
    boolean
) from public, anon, authenticated, service_role;
grant execute on function public.credit_set_auto_topup(
    text, bigint, numeric, text, text, text, bigint, bigint, bigint, bigint, integer, integer,
    boolean
) to service_role;

create or replace function public.credit_stripe_subscription_changed(
    p_subscription_id text,
    p_customer_id text,
    p_price_id text,
    p_status text,
    p_event_created timestamptz,
    p_user_id text default null
)
returns public.credit_stripe_subscription_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_user_id text := credit_private.stripe_user(p_customer_id, p_user_id);
    v_plan_id text;
    v_previous public.credit_stripe_subscriptions;
    v_applied boolean;
begin
    -- customer.subscription.created / updated / deleted: the plan follows the newest
    -- state. active, trialing and past_due (Stripe still retrying) hold the price's plan;
    -- canceled, unpaid and incomplete_expired remove it; incomplete changes nothing yet.
    perform credit_private.check_choice(p_status, 'status', array[
        'incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due', 'canceled',
        'unpaid', 'paused'
    ]);
    if p_subscription_id is null or length(p_subscription_id) not between 1 and 255
        or p_event_created is null then
        perform credit_private.fail(
            'DC006', 'subscription_id (1 to 255 characters) and event_created are required',
            jsonb_build_object('argument', 'subscription_id')
        );
    end if;
    select sp.plan_id into v_plan_id
    from public.credit_stripe_prices as sp
    where sp.price_id = p_price_id;
    -- the user's plan may change: the alert flags' lock comes before the account lock
    perform credit_private.lock_alert_flags(v_user_id);
    -- one subscription's events apply one at a time, in the order Stripe created them
    perform credit_private.lock_account(v_user_id, true);
    select * into v_previous from public.credit_stripe_subscriptions
    where subscription_id = p_subscription_id;
    v_applied := v_previous.subscription_id is null or v_previous.event_created <= p_event_created;
    if not v_applied then
        return row(p_subscription_id, v_user_id, v_previous.status, v_previous.plan_id, false);
    end if;
    insert into public.credit_stripe_subscriptions as s (
        subscription_id, customer_id, user_id, price_id, plan_id, status, event_created,
        updated_at
    )
    values (
        p_subscription_id, p_customer_id, v_user_id, p_price_id, v_plan_id, p_status,
        p_event_created, v_now
    )
    on conflict (subscription_id) do update
    set price_id = excluded.price_id, plan_id = excluded.plan_id, status = excluded.status,
        event_created = excluded.event_created, updated_at = excluded.updated_at;
    if p_status in ('active', 'trialing', 'past_due') and v_plan_id is not null then
        perform public.credit_assign_plan(v_user_id, v_plan_id);
    elsif p_status in ('canceled', 'unpaid', 'incomplete_expired', 'paused') then
        -- only the plan this subscription gave: an operator's own assignment stays
        delete from public.credit_user_plans as up
        where up.user_id = v_user_id and up.plan_id = coalesce(v_plan_id, v_previous.plan_id);
        perform credit_private.refresh_alert_flags(v_user_id, null);
    end if;
    return row(p_subscription_id, v_user_id, p_status, v_plan_id, true);
end;
$$;
revoke all on function public.credit_stripe_subscription_changed(
    text, text, text, text, timestamptz, text
) from public, anon, authenticated, service_role;
grant execute on function public.credit_stripe_subscription_changed(
    text, text, text, text, timestamptz, text
) to service_role;

create or replace function credit_private.check_usage(p_metrics jsonb)
returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
declare
    -- the token kinds are disjoint counts (docs/pricing.md)
    v_counts constant text[] := array[
        'input_tokens', 'output_tokens', 'cached_input_tokens', 'cache_creation_tokens',
        'cache_creation_1h_tokens', 'reasoning_tokens', 'tool_calls', 'requests'
    ];
    v_unknown jsonb;
    v_field text;
    v_count jsonb;
    v_whole numeric;
    v_usage jsonb;
    v_counted jsonb;
begin
    -- Every charge priced by usage runs this: plain expressions, no query, until an error.
    -- Usage already in its normal form (known fields, a model name, counts that are whole
    -- numbers from 1 written without a decimal point, requests not 1) is returned as it is,
    -- in a few expressions; any other goes through the checks below, field by field, which
    -- normalise it or name what is wrong.
    if jsonb_typeof(p_metrics) = 'object' then
        v_counted := p_metrics - 'model';
        if v_counted - v_counts = '{}'::jsonb
            and jsonb_typeof(p_metrics -> 'model') = 'string'
            -- the model check below, without its {1,200}: a bounded repeat costs a regex
            -- engine much more than a length does
            and p_metrics ->> 'model' ~ '^[A-Za-z0-9._:/@+-]+$'
            and length(p_metrics ->> 'model') <= 200
            and not jsonb_path_exists(v_counted, 'strict $.* ? (!(@.type() == "number"
                && @ >= 1 && @ <= 9007199254740991 && @ == @.floor()))')
            and strpos(v_counted::text, '.') = 0
            and (v_counted -> 'requests') is distinct from '1'::jsonb then
            return p_metrics;
        end if;
    end if;
    if jsonb_typeof(p_metrics) is distinct from 'object' then
        perform credit_private.fail(
            'DC007', 'usage metrics must be a JSON object',
            jsonb_build_object('argument', 'metrics')
        );
    end if;
    v_unknown := p_metrics - 'model' - v_counts;
    if v_unknown <> '{}'::jsonb then
        v_field := (select k from jsonb_object_keys(v_unknown) as k limit 1);
        perform credit_private.fail(
            'DC007', format('usage metrics: %s is not a known field', to_jsonb(v_field)),
            jsonb_build_object('argument', 'metrics', 'field', v_field)
        );
    end if;
    if jsonb_typeof(p_metrics -> 'model') is distinct from 'string'
        or p_metrics ->> 'model' !~ '^[A-Za-z0-9._:/@+-]{1,200}$' then
        perform credit_private.fail(
            'DC007',
            format('usage metrics: model must be a model name (1 to 200 of A-Z a-z 0-9 . _ : / @'
                || ' + -), got %s', coalesce(left((p_metrics -> 'model')::text, 100), 'null')),
            jsonb_build_object('argument', 'metrics', 'field', 'model')
        );
    end if;
    v_usage := jsonb_build_object('model', p_metrics -> 'model');
    foreach v_field in array v_counts loop
        v_count := p_metrics -> v_field;
        -- absent: its default (0; 1 request), which the usage leaves out
        continue when v_count is null;
        -- two steps: SQL does not promise to short-circuit OR, and only a number casts
        if jsonb_typeof(v_count) = 'number' then
            v_whole := v_count::numeric;
        else
            v_whole := -1;
        end if;
        if v_whole <> trunc(v_whole) or v_whole not between 0 and 9007199254740991 then
            perform credit_private.fail(
                'DC007',
                format('usage metrics: %s must be a whole number from 0 to 2^53 - 1, got %s',
                    v_field, v_count),
                jsonb_build_object('argument', 'metrics', 'field', v_field)
            );
        end if;
        if v_whole <> (case when v_field = 'requests' then 1 else 0 end) then
            v_usage := v_usage || jsonb_build_object(v_field, v_whole::bigint);
        end if;
    end loop;
    return v_usage;
end;
$$;
revoke all on function credit_private.check_usage(jsonb)
from public, anon, authenticated, service_role;
grant execute on function credit_private.check_usage(jsonb) to service_role;

create or replace function public.credit_upsert_plan(
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

create or replace function public.credit_assign_plan(p_user_id text, p_plan_id text)
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

-- ---------------------------------------------------------------- backfill

-- every account's features from its rows, computed while their writers wait
do $$
begin
    lock table
    public.credit_balance_alerts,
    public.credit_user_plans,
    public.credit_plans,
    public.credit_account_limits,
    public.credit_grants,
    public.credit_auto_topups
    in share mode;
    update public.credit_accounts as a
    set features = f.features
    from (
        select x.id, credit_private.account_features(x.id) as features
        from public.credit_accounts as x
    ) as f
    where a.id = f.id and f.features <> 0;
end;
$$;

-- ---------------------------------------------------------------- schema version

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205001300'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
