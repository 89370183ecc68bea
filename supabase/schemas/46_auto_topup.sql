-- ducto: Stripe auto top-up (docs/stripe.md).
--
--   credit_auto_topups       one rule per account: below `threshold`, buy `amount` credits
--                            (or up to `target_balance`) with the saved payment method
--   credit_topup_requests    one row per payment attempt; its id is the Stripe idempotency
--                            key, so a worker that runs twice never charges twice
--
-- A journal row that lowers the balance below an enabled rule's threshold writes a request
-- (state pending, event topup.requested) in the debit's own transaction, under the account
-- lock, when: no request of the account is open (pending, processing, requires_action), the
-- cooldown since the last request has passed, and the monthly caps (credits and money of the
-- calendar month's requests that did not fail, UTC) leave room for it. Concurrent debits of
-- one account are judged one after the other, so a crossing writes one request.
--
-- A worker claims due requests (credit_claim_topup_requests, FOR UPDATE SKIP LOCKED, leased),
-- creates a confirmed off-session PaymentIntent (idempotency key = request id), records its
-- id (credit_record_topup_payment) and reports its status (credit_complete_topup); the Stripe
-- webhook reports the same payment intents. Outcomes:
--   succeeded        the credits are granted once (a purchase keyed by the payment intent id)
--   requires_action  event topup.action_required; the request stays open until the payment
--                    intent succeeds or fails (the webhook reports it)
--   failed           consecutive_failures + 1; below max_failures a new request (a new
--                    payment intent) is due after the cooldown; at max_failures the rule is
--                    disabled (disabled_reason, event topup.disabled)
--
-- The cost for an account that never had a rule: nothing (the auto top-up bit of its
-- credit_accounts.features is clear); with one, one primary-key probe of credit_auto_topups
-- per journal row that lowers a balance (credit_private.append_transaction).
--
-- Errors: DC006 invalid argument, DC002 invalid user id, DC110 request or rule not found,
-- DC111 a different payment intent already recorded for the request.

-- ---------------------------------------------------------------- tables

create table public.credit_auto_topups (
    account_id bigint primary key references public.credit_accounts (id),
    user_id text not null,
    enabled boolean not null default true,
    threshold bigint not null check (threshold between 1 and 9007199254740991),
    amount bigint check (amount between 1 and 9007199254740991),
    target_balance bigint check (target_balance between 1 and 9007199254740991),
    unit_price_minor numeric not null check (unit_price_minor > 0 and unit_price_minor <= 1e9),
    currency text not null check (currency ~ '^[a-z]{3}$'),
    monthly_cap_credits bigint check (monthly_cap_credits between 1 and 9007199254740991),
    monthly_cap_minor bigint check (monthly_cap_minor between 1 and 9007199254740991),
    cooldown_seconds integer not null default 3600 check (cooldown_seconds between 0 and 2592000),
    max_failures integer not null default 3 check (max_failures between 1 and 100),
    stripe_customer_id text not null check (stripe_customer_id ~ '^[A-Za-z0-9_]{1,255}$'),
    stripe_payment_method_id text not null check (
        stripe_payment_method_id ~ '^[A-Za-z0-9_]{1,255}$'
    ),
    consecutive_failures integer not null default 0 check (consecutive_failures >= 0),
    disabled_reason text check (length(disabled_reason) <= 1000),
    last_requested_at timestamptz,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    -- an amount or a target balance, and a target above the threshold
    check ((amount is null) <> (target_balance is null)),
    check (target_balance > threshold)
);
comment on table public.credit_auto_topups is
'Auto top-up rules (docs/stripe.md). Every journal row that lowers a balance probes this'
' table once by its primary key.';
comment on column public.credit_auto_topups.user_id is
'The account''s user_id (for team pools ''team:<id>'').';
comment on column public.credit_auto_topups.threshold is
'A debit leaving the balance below this writes a top-up request.';
comment on column public.credit_auto_topups.amount is
'Credits bought per top-up (null when target_balance is set).';
comment on column public.credit_auto_topups.target_balance is
'Buy what takes the balance (when the request is written) up to this.';
comment on column public.credit_auto_topups.unit_price_minor is
'Price of one credit in minor units of currency; a top-up costs ceil(credits * it).';
comment on column public.credit_auto_topups.cooldown_seconds is
'Least time between two requests, and the delay before a failed payment is tried again.';
comment on column public.credit_auto_topups.max_failures is
'Failed payments in a row after which the rule disables itself.';
comment on column public.credit_auto_topups.disabled_reason is
'Why the ledger disabled the rule (null when enabled or disabled by its owner).';

create table public.credit_topup_requests (
    id uuid not null,
    account_id bigint not null references public.credit_accounts (id),
    user_id text not null,
    state text not null default 'pending' check (
        state in ('pending', 'processing', 'requires_action', 'succeeded', 'failed')
    ),
    credits bigint not null check (credits between 1 and 9007199254740991),
    amount_minor bigint not null check (amount_minor between 1 and 9007199254740991),
    currency text not null check (currency ~ '^[a-z]{3}$'),
    stripe_customer_id text not null,
    stripe_payment_method_id text not null,
    balance_at_request bigint not null,
    attempts integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null,
    payment_intent_id text check (payment_intent_id ~ '^[A-Za-z0-9_]{1,255}$'),
    transaction_id uuid,
    last_error text check (length(last_error) <= 1000),
    created_at timestamptz not null,
    updated_at timestamptz not null,
    completed_at timestamptz,
    -- credits granted exactly when the payment succeeded
    check ((state = 'succeeded') = (transaction_id is not null)),
    constraint credit_topup_requests_pkey primary key (id, account_id),
    constraint credit_topup_requests_payment_intent_id_key unique (payment_intent_id, account_id)
);
comment on table public.credit_topup_requests is
'Auto top-up payments, one per attempt; id is the Stripe idempotency key and the'
' PaymentIntent''s metadata.ducto_topup_request_id. transaction_id is the purchase row,'
' written in the same transaction; no foreign key, so an archived month''s rows can leave.';
comment on column public.credit_topup_requests.next_attempt_at is
'pending: when the worker may take it; processing: the end of the current claim''s lease.';
comment on column public.credit_topup_requests.transaction_id is
'The purchase row that granted the credits.';

-- at most one open request per account: the debits' check, and the last word on races
create unique index credit_topup_requests_open_idx on public.credit_topup_requests (account_id)
where state in ('pending', 'processing', 'requires_action');
-- the worker's claim
create index credit_topup_requests_due_idx on public.credit_topup_requests (next_attempt_at)
where state in ('pending', 'processing');
-- the monthly caps
create index credit_topup_requests_account_idx
on public.credit_topup_requests (account_id, created_at);

alter table public.credit_auto_topups enable row level security;
alter table public.credit_topup_requests enable row level security;

-- No policies: payment details are the service role's (BYPASSRLS) only.
revoke all on table public.credit_auto_topups, public.credit_topup_requests
from public, anon, authenticated, service_role;
grant select on table public.credit_auto_topups, public.credit_topup_requests to service_role;

-- ---------------------------------------------------------------- result types

create type public.credit_auto_topup_row as (
    user_id text,
    enabled boolean,
    threshold bigint,
    amount bigint,
    target_balance bigint,
    unit_price_minor numeric,
    currency text,
    monthly_cap_credits bigint,
    monthly_cap_minor bigint,
    cooldown_seconds integer,
    max_failures integer,
    stripe_customer_id text,
    stripe_payment_method_id text,
    consecutive_failures integer,
    disabled_reason text,
    last_requested_at timestamptz,
    month_credits bigint,
    month_minor bigint,
    open_request_id uuid,
    balance bigint,
    updated_at timestamptz
);
comment on type public.credit_auto_topup_row is
'A rule with this month''s requested credits and money (requests that did not fail) and the'
' open request.
@notNull user_id, enabled, threshold, unit_price_minor, currency, cooldown_seconds,'
' max_failures, stripe_customer_id, stripe_payment_method_id, consecutive_failures,'
' month_credits, month_minor, balance, updated_at';

create type public.credit_topup_request_row as (
    id uuid,
    user_id text,
    state text,
    credits bigint,
    amount_minor bigint,
    currency text,
    stripe_customer_id text,
    stripe_payment_method_id text,
    attempts integer,
    payment_intent_id text,
    transaction_id uuid,
    last_error text,
    created_at timestamptz,
    completed_at timestamptz
);
comment on type public.credit_topup_request_row is
'A top-up request.
@notNull id, user_id, state, credits, amount_minor, currency, stripe_customer_id,'
' stripe_payment_method_id, attempts, created_at';

-- ---------------------------------------------------------------- requests

create function credit_private.request_topup(
    p_account_id bigint, p_balance bigint, p_now timestamptz, p_transaction_id uuid,
    p_retry_at timestamptz default null
)
returns uuid
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_rule public.credit_auto_topups;
    v_credits bigint;
    v_minor bigint;
    v_month_credits bigint;
    v_month_minor bigint;
    v_id uuid;
begin
    -- The caller holds the account lock: the checks below and the insert see every request
    -- of the account. Writes a pending request and topup.requested, or nothing. A retry
    -- after a failed payment (p_retry_at: when it is due) does not wait for the cooldown.
    select * into v_rule from public.credit_auto_topups where account_id = p_account_id;
    if not found or not v_rule.enabled or p_balance >= v_rule.threshold then
        return null;
    end if;
    -- one open request at a time; then the cooldown since the last one
    if exists (
        select 1 from public.credit_topup_requests as r
        where r.account_id = p_account_id
            and r.state in ('pending', 'processing', 'requires_action')
    ) or (p_retry_at is null
        and v_rule.last_requested_at + make_interval(secs => v_rule.cooldown_seconds) > p_now)
    then
        return null;
    end if;
    v_credits := coalesce(v_rule.amount, v_rule.target_balance - p_balance);
    v_minor := ceil(v_credits * v_rule.unit_price_minor)::bigint;
    -- the calendar month (UTC) of the requests that did not fail
    select coalesce(sum(r.credits), 0), coalesce(sum(r.amount_minor), 0)
    into v_month_credits, v_month_minor
    from public.credit_topup_requests as r
    where r.account_id = p_account_id and r.state <> 'failed'
        and r.created_at >= date_trunc('month', p_now, 'UTC');
    if v_month_credits + v_credits > v_rule.monthly_cap_credits
        or v_month_minor + v_minor > v_rule.monthly_cap_minor then
        return null;
    end if;
    v_id := credit_private.uuid_v7();
    insert into public.credit_topup_requests (
        id, account_id, user_id, credits, amount_minor, currency, stripe_customer_id,
        stripe_payment_method_id, balance_at_request, next_attempt_at, created_at, updated_at
    ) values (
        v_id, p_account_id, v_rule.user_id, v_credits, v_minor, v_rule.currency,
        v_rule.stripe_customer_id, v_rule.stripe_payment_method_id, p_balance,
        coalesce(p_retry_at, p_now), p_now, p_now
    );
    update public.credit_auto_topups set last_requested_at = p_now
    where account_id = p_account_id;
    perform credit_private.emit(p_account_id, v_rule.user_id, 'topup.requested',
        jsonb_strip_nulls(jsonb_build_object(
            'request_id', v_id, 'credits', v_credits, 'amount_minor', v_minor,
            'currency', v_rule.currency, 'balance', p_balance, 'threshold', v_rule.threshold,
            'transaction_id', p_transaction_id, 'retry', p_retry_at is not null
        )));
    return v_id;
end;
$$;
revoke all on function credit_private.request_topup(bigint, bigint, timestamptz, uuid, timestamptz)
from public, anon, authenticated, service_role;

create function credit_private.auto_topup_row(p_account_id bigint, p_now timestamptz)
returns public.credit_auto_topup_row
language sql
stable
set search_path = ''
as $$
    select
        t.user_id, t.enabled, t.threshold, t.amount, t.target_balance, t.unit_price_minor,
        t.currency, t.monthly_cap_credits, t.monthly_cap_minor, t.cooldown_seconds,
        t.max_failures, t.stripe_customer_id, t.stripe_payment_method_id,
        t.consecutive_failures, t.disabled_reason, t.last_requested_at,
        coalesce(m.credits, 0)::bigint, coalesce(m.minor, 0)::bigint,
        (select r.id from public.credit_topup_requests as r
         where r.account_id = t.account_id
             and r.state in ('pending', 'processing', 'requires_action')),
        a.balance, t.updated_at
    from public.credit_auto_topups as t
    inner join public.credit_accounts as a on t.account_id = a.id
    cross join lateral (
        select sum(r.credits) as credits, sum(r.amount_minor) as minor
        from public.credit_topup_requests as r
        where r.account_id = t.account_id and r.state <> 'failed'
            and r.created_at >= date_trunc('month', p_now, 'UTC')
    ) as m
    where t.account_id = p_account_id;
$$;
revoke all on function credit_private.auto_topup_row(bigint, timestamptz)
from public, anon, authenticated, service_role;
-- credit_get_auto_topup (security invoker) calls it as the service role
grant execute on function credit_private.auto_topup_row(bigint, timestamptz) to service_role;

create function credit_private.topup_request_row(p_id uuid)
returns public.credit_topup_request_row
language sql
stable
set search_path = ''
as $$
    select
        r.id, r.user_id, r.state, r.credits, r.amount_minor, r.currency,
        r.stripe_customer_id, r.stripe_payment_method_id, r.attempts, r.payment_intent_id,
        r.transaction_id, r.last_error, r.created_at, r.completed_at
    from public.credit_topup_requests as r
    where r.id = p_id;
$$;
revoke all on function credit_private.topup_request_row(uuid)
from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- RPCs

create function public.credit_set_auto_topup(
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

create function public.credit_get_auto_topup(p_user_id text)
returns public.credit_auto_topup_row
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    v_result public.credit_auto_topup_row;
begin
    perform credit_private.check_user_id(p_user_id);
    v_result := credit_private.auto_topup_row(
        (select a.id from public.credit_accounts as a where a.user_id = p_user_id),
        credit_private.clock()
    );
    if v_result.user_id is null then
        perform credit_private.fail('DC110',
            format('no auto top-up rule for %s', quote_literal(p_user_id)),
            jsonb_build_object('user_id', p_user_id));
    end if;
    return v_result;
end;
$$;
revoke all on function public.credit_get_auto_topup(text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_get_auto_topup(text) to service_role;

create function public.credit_claim_topup_requests(
    p_limit integer default 10, p_lease_seconds integer default 300
)
returns setof public.credit_topup_request_row
language plpgsql
volatile
-- definer: writes tables no API role may write
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
begin
    if p_limit is null or p_limit not between 1 and 1000
        or p_lease_seconds is null or p_lease_seconds not between 1 and 3600 then
        perform credit_private.fail('DC006',
            'limit must be 1 to 1000 and lease_seconds 1 to 3600',
            jsonb_build_object('argument', 'limit'));
    end if;
    -- due pending requests and processing ones whose lease ran out (a worker that died:
    -- the same request id is the same Stripe idempotency key, so no second payment)
    return query
    with due as (
        select r.id from public.credit_topup_requests as r
        where r.state in ('pending', 'processing') and r.next_attempt_at <= v_now
        order by r.next_attempt_at, r.id
        limit p_limit
        for update skip locked
    ),

    claimed as (
        update public.credit_topup_requests as r
        set state = 'processing', attempts = r.attempts + 1,
            next_attempt_at = v_now + make_interval(secs => p_lease_seconds), updated_at = v_now
        from due
        where r.id = due.id
        returning r.*
    )

    select
        c.id, c.user_id, c.state, c.credits, c.amount_minor, c.currency,
        c.stripe_customer_id, c.stripe_payment_method_id, c.attempts, c.payment_intent_id,
        c.transaction_id, c.last_error, c.created_at, c.completed_at
    from claimed as c
    order by c.next_attempt_at, c.id;
end;
$$;
revoke all on function public.credit_claim_topup_requests(integer, integer)
from public, anon, authenticated, service_role;
grant execute on function public.credit_claim_topup_requests(integer, integer) to service_role;

create function public.credit_record_topup_payment(
    p_request_id uuid, p_payment_intent_id text
)
returns public.credit_topup_request_row
language plpgsql
volatile
-- definer: writes tables no API role may write
security definer
set search_path = ''
as $$
declare
    v_request public.credit_topup_requests;
begin
    if p_payment_intent_id is null or p_payment_intent_id !~ '^[A-Za-z0-9_]{1,255}$' then
        perform credit_private.fail('DC006', 'payment_intent_id must be a Stripe id',
            jsonb_build_object('argument', 'payment_intent_id'));
    end if;
    select * into v_request from public.credit_topup_requests where id = p_request_id
    for update;
    if not found then
        perform credit_private.fail('DC110',
            format('no top-up request %s', p_request_id),
            jsonb_build_object('request_id', p_request_id));
    end if;
    if v_request.payment_intent_id is distinct from p_payment_intent_id then
        if v_request.payment_intent_id is not null then
            perform credit_private.fail('DC111',
                format('top-up request %s already has payment intent %s, not %s',
                    p_request_id, v_request.payment_intent_id, p_payment_intent_id),
                jsonb_build_object('request_id', p_request_id,
                    'payment_intent_id', v_request.payment_intent_id));
        end if;
        update public.credit_topup_requests
        set payment_intent_id = p_payment_intent_id, updated_at = credit_private.clock()
        where id = p_request_id;
    end if;
    return credit_private.topup_request_row(p_request_id);
end;
$$;
revoke all on function public.credit_record_topup_payment(uuid, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_record_topup_payment(uuid, text) to service_role;

create function public.credit_complete_topup(
    p_request_id uuid, p_payment_intent_id text, p_status text, p_error text default null
)
returns public.credit_topup_request_row
language plpgsql
volatile
-- definer: writes tables no API role may write, and grants credits
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_account_id bigint;
    v_request public.credit_topup_requests;
    v_rule public.credit_auto_topups;
    v_transaction_id uuid;
    v_error text := left(p_error, 1000);
begin
    -- a PaymentIntent's status, or failed / payment_failed for a refused payment (as the
    -- worker and the payment_intent.payment_failed event say it)
    perform credit_private.check_choice(p_status, 'status', array[
        'succeeded', 'requires_action', 'processing', 'failed', 'payment_failed',
        'requires_payment_method', 'canceled'
    ]);
    -- the account lock first, as every writer of the account takes it
    select r.account_id into v_account_id
    from public.credit_topup_requests as r where r.id = p_request_id;
    if not found then
        perform credit_private.fail('DC110',
            format('no top-up request %s', p_request_id),
            jsonb_build_object('request_id', p_request_id));
    end if;
    perform credit_private.lock_account_by_id(v_account_id);
    select * into v_request from public.credit_topup_requests where id = p_request_id
    for update;
    -- a payment refused before Stripe made an intent (no id) can still be reported failed
    if p_payment_intent_id is not null then
        perform public.credit_record_topup_payment(p_request_id, p_payment_intent_id);
    elsif p_status = 'succeeded' then
        perform credit_private.fail('DC006', 'a succeeded top-up needs its payment_intent_id',
            jsonb_build_object('argument', 'payment_intent_id'));
    end if;
    -- succeeded is final: a second report (worker and webhook, redeliveries) changes nothing
    if v_request.state = 'succeeded' then
        return credit_private.topup_request_row(p_request_id);
    end if;
    select * into v_rule from public.credit_auto_topups where account_id = v_account_id
    for update;

    if p_status = 'succeeded' then
        -- one purchase per payment intent (its id is the idempotency key), even after a
        -- failure was reported (a payment completed by the user after requires_action)
        v_transaction_id := (public.credit_add_credits(
            v_request.user_id, v_request.credits, 'purchase', 'paid', 50, null,
            jsonb_build_object(
                'source', 'auto_topup', 'topup_request_id', p_request_id,
                'payment_intent_id', p_payment_intent_id
            ),
            p_payment_intent_id
        )).transaction_id;
        update public.credit_topup_requests
        set state = 'succeeded', transaction_id = v_transaction_id, last_error = null,
            completed_at = v_now, updated_at = v_now
        where id = p_request_id;
        update public.credit_auto_topups set consecutive_failures = 0, updated_at = v_now
        where account_id = v_account_id;
        perform credit_private.emit(v_account_id, v_request.user_id, 'topup.succeeded',
            jsonb_build_object(
                'request_id', p_request_id, 'payment_intent_id', p_payment_intent_id,
                'credits', v_request.credits, 'amount_minor', v_request.amount_minor,
                'currency', v_request.currency, 'transaction_id', v_transaction_id
            ));
    elsif v_request.state = 'failed' then
        -- a failure already counted: reports after it change nothing
        null;
    elsif p_status = 'processing' then
        -- Stripe is still working on it: the webhook reports the outcome, or the worker
        -- asks again in 10 minutes (the same idempotency key returns the same intent)
        update public.credit_topup_requests
        set state = 'processing', next_attempt_at = v_now + interval '10 minutes',
            updated_at = v_now
        where id = p_request_id;
    elsif p_status = 'requires_action' then
        if v_request.state <> 'requires_action' then
            update public.credit_topup_requests
            set state = 'requires_action', last_error = v_error, updated_at = v_now
            where id = p_request_id;
            perform credit_private.emit(v_account_id, v_request.user_id,
                'topup.action_required', jsonb_strip_nulls(jsonb_build_object(
                    'request_id', p_request_id, 'payment_intent_id', p_payment_intent_id,
                    'credits', v_request.credits, 'amount_minor', v_request.amount_minor,
                    'currency', v_request.currency
                )));
        end if;
    else
        update public.credit_topup_requests
        set state = 'failed', last_error = coalesce(v_error, p_status), completed_at = v_now,
            updated_at = v_now
        where id = p_request_id;
        update public.credit_auto_topups
        set consecutive_failures = consecutive_failures + 1, updated_at = v_now
        where account_id = v_account_id
        returning * into v_rule;
        if v_rule.enabled and v_rule.consecutive_failures >= v_rule.max_failures then
            update public.credit_auto_topups
            set enabled = false,
                disabled_reason = format('%s payments failed in a row; last: %s',
                    v_rule.consecutive_failures, coalesce(v_error, p_status))
            where account_id = v_account_id;
            perform credit_private.emit(v_account_id, v_request.user_id, 'topup.disabled',
                jsonb_build_object(
                    'request_id', p_request_id, 'failures', v_rule.consecutive_failures,
                    'error', coalesce(v_error, p_status)
                ));
        elsif v_rule.enabled then
            -- retry: a new request (a new payment intent), due after the cooldown
            perform credit_private.request_topup(
                v_account_id,
                (select a.balance from public.credit_accounts as a where a.id = v_account_id),
                v_now, null, v_now + make_interval(secs => v_rule.cooldown_seconds)
            );
        end if;
    end if;
    return credit_private.topup_request_row(p_request_id);
end;
$$;
revoke all on function public.credit_complete_topup(uuid, text, text, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_complete_topup(uuid, text, text, text) to service_role;
