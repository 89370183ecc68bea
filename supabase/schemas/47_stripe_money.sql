-- ducto: money in from Stripe: voiding grants, claw-back of refunded and disputed
-- purchases, and subscriptions that assign plans and grant their allowance per paid
-- invoice (docs/stripe.md). The webhook (supabase/functions/credit-stripe-webhook) calls
-- the credit_stripe_* functions; each is keyed by Stripe's own ids, so a redelivered or
-- reordered event changes nothing.
--
--   credit_stripe_payments       a checkout purchase by its payment intent: the grant it
--                                created and how much of its money was refunded or disputed
--   credit_stripe_clawbacks      the void rows that took a payment's credits back
--   credit_stripe_disputes       each dispute of a payment and whether its funds are withdrawn
--   credit_stripe_early_refunds  refunds of payments not known (yet): a purchase recorded
--                                after its refund is clawed back when it is recorded
--   credit_stripe_prices         which ducto plan a Stripe price sells
--   credit_stripe_customers      which ducto user a Stripe customer is
--   credit_stripe_subscriptions  the last state of each subscription seen
--   credit_stripe_invoices       the paid invoices that granted an allowance
--
-- Errors: DC120 grant not found (404), DC121 more than is left of the grant (409),
-- DC122 unknown Stripe customer (404), DC123 customer already mapped to another user (422).

-- ---------------------------------------------------------------- types

create type public.credit_void_result as (
    transaction_id uuid,
    grant_id uuid,
    user_id text,
    amount bigint,
    remaining bigint,
    balance_after bigint,
    created_at timestamptz,
    is_replay boolean
);
comment on type public.credit_void_result is
'@notNull transaction_id, grant_id, user_id, amount, remaining, balance_after, created_at,'
' is_replay';

create type public.credit_stripe_clawback_result as (
    payment_intent_id text,
    known boolean,
    user_id text,
    credits bigint,
    clawed_back bigint,
    change bigint,
    balance_after bigint,
    debt bigint
);
comment on type public.credit_stripe_clawback_result is
'@notNull payment_intent_id, known, clawed_back, change';

create type public.credit_stripe_invoice_result as (
    invoice_id text,
    user_id text,
    plan_id text,
    granted bigint,
    transaction_id uuid,
    expires_at timestamptz,
    outcome text
);
comment on type public.credit_stripe_invoice_result is '@notNull invoice_id, granted, outcome';

create type public.credit_stripe_subscription_result as (
    subscription_id text,
    user_id text,
    status text,
    plan_id text,
    applied boolean
);
comment on type public.credit_stripe_subscription_result is
'@notNull subscription_id, user_id, status, applied';

-- ---------------------------------------------------------------- tables

create table public.credit_stripe_payments (
    payment_intent_id text not null check (length(payment_intent_id) between 1 and 255),
    account_id bigint not null references public.credit_accounts (id),
    transaction_id uuid not null,
    grant_id uuid not null,
    credits bigint not null check (credits > 0),
    amount bigint not null check (amount > 0),
    currency text,
    refunded bigint not null default 0,
    withdrawn bigint not null default 0 check (withdrawn >= 0),
    clawed_back bigint not null default 0,
    created_at timestamptz not null,
    check (refunded between 0 and amount),
    check (clawed_back between 0 and credits),
    constraint credit_stripe_payments_pkey primary key (payment_intent_id, account_id),
    constraint credit_stripe_payments_transaction_id_key unique (transaction_id, account_id),
    constraint credit_stripe_payments_grant_id_fkey foreign key (account_id, grant_id)
    references public.credit_grants (account_id, id)
);
comment on table public.credit_stripe_payments is
'A credit purchase paid through Stripe, by its payment intent (refunds and disputes name it).'
' Its credits are clawed back in proportion to the money refunded or withdrawn.'
' transaction_id is the purchase row, written in the same transaction; no foreign key, so an'
' archived month''s rows can leave.';
comment on column public.credit_stripe_payments.amount is
'The money paid, in the currency''s smallest unit (Stripe''s amount_total).';
comment on column public.credit_stripe_payments.refunded is
'The cumulative money refunded (Stripe''s charge.amount_refunded), the largest seen.';
comment on column public.credit_stripe_payments.withdrawn is
'The money held by disputes whose funds are withdrawn (sum of credit_stripe_disputes).';
comment on column public.credit_stripe_payments.clawed_back is
'Credits taken back: floor(credits * min(amount, refunded + withdrawn) / amount).';

create table public.credit_stripe_clawbacks (
    transaction_id uuid not null,
    payment_intent_id text not null,
    account_id bigint not null,
    constraint credit_stripe_clawbacks_pkey primary key (transaction_id, account_id),
    constraint credit_stripe_clawbacks_payment_intent_id_fkey
    foreign key (account_id, payment_intent_id)
    references public.credit_stripe_payments (account_id, payment_intent_id)
);
comment on table public.credit_stripe_clawbacks is
'The void rows that clawed back a payment''s credits; a reinstatement refunds them. Each'
' is written in the same transaction as its row; no foreign key to the journal, so an'
' archived month''s rows can leave.';
create index credit_stripe_clawbacks_payment_idx
on public.credit_stripe_clawbacks (payment_intent_id);

create table public.credit_stripe_disputes (
    dispute_id text primary key check (length(dispute_id) between 1 and 255),
    -- no foreign key: a dispute may arrive before the purchase it disputes is recorded
    payment_intent_id text not null,
    amount bigint not null check (amount > 0),
    status text not null check (status in ('withdrawn', 'reinstated')),
    updated_at timestamptz not null
);
comment on table public.credit_stripe_disputes is
'A dispute of a payment. Reinstated is final: a late withdrawn event changes nothing.';
create index credit_stripe_disputes_payment_idx
on public.credit_stripe_disputes (payment_intent_id);

create table public.credit_stripe_early_refunds (
    payment_intent_id text primary key check (length(payment_intent_id) between 1 and 255),
    refunded bigint not null check (refunded >= 0),
    updated_at timestamptz not null
);
comment on table public.credit_stripe_early_refunds is
'The cumulative refund of a payment no purchase is recorded for: a payment that bought no'
' credits, or a purchase whose checkout event has not arrived yet, which applies it.';

create table public.credit_stripe_prices (
    price_id text primary key check (length(price_id) between 1 and 255),
    plan_id text not null references public.credit_plans (id),
    updated_at timestamptz not null
);
comment on table public.credit_stripe_prices is
'The ducto plan a Stripe price sells: a subscription to it assigns the plan, and each paid'
' period invoice grants the plan''s allowance.';
create index credit_stripe_prices_plan_idx on public.credit_stripe_prices (plan_id);

create table public.credit_stripe_customers (
    customer_id text primary key check (length(customer_id) between 1 and 255),
    user_id text not null,
    created_at timestamptz not null
);
comment on table public.credit_stripe_customers is
'Which user a Stripe customer is, learnt from metadata.user_id of its subscriptions.';

create table public.credit_stripe_subscriptions (
    subscription_id text primary key check (length(subscription_id) between 1 and 255),
    customer_id text not null,
    user_id text not null,
    price_id text,
    plan_id text,
    status text not null,
    event_created timestamptz not null,
    updated_at timestamptz not null
);
comment on table public.credit_stripe_subscriptions is
'The newest state of each subscription (by the event''s created time; older events are'
' ignored) and the plan it assigned.';
create index credit_stripe_subscriptions_user_idx
on public.credit_stripe_subscriptions (user_id);

create table public.credit_stripe_invoices (
    invoice_id text not null check (length(invoice_id) between 1 and 255),
    user_id text not null,
    transaction_id uuid not null,
    created_at timestamptz not null,
    account_id bigint not null,
    constraint credit_stripe_invoices_pkey primary key (invoice_id, account_id)
);
comment on table public.credit_stripe_invoices is
'Each paid invoice that granted an allowance: one grant per invoice. transaction_id is its'
' grant''s row, written in the same transaction; no foreign key, so an archived month''s'
' rows can leave.';

alter table public.credit_stripe_payments enable row level security;
alter table public.credit_stripe_clawbacks enable row level security;
alter table public.credit_stripe_disputes enable row level security;
alter table public.credit_stripe_early_refunds enable row level security;
alter table public.credit_stripe_prices enable row level security;
alter table public.credit_stripe_customers enable row level security;
alter table public.credit_stripe_subscriptions enable row level security;
alter table public.credit_stripe_invoices enable row level security;
-- no policies: only the service role (which bypasses RLS) reads them, through the API
revoke all on table public.credit_stripe_payments, public.credit_stripe_clawbacks,
public.credit_stripe_disputes, public.credit_stripe_early_refunds, public.credit_stripe_prices,
public.credit_stripe_customers,
public.credit_stripe_subscriptions, public.credit_stripe_invoices
from public, anon, authenticated, service_role;
grant select on table public.credit_stripe_payments, public.credit_stripe_clawbacks,
public.credit_stripe_disputes, public.credit_stripe_early_refunds, public.credit_stripe_prices,
public.credit_stripe_customers,
public.credit_stripe_subscriptions, public.credit_stripe_invoices
to service_role;

-- ---------------------------------------------------------------- void

create function credit_private.void(
    p_account_id bigint,
    p_grant_id uuid,
    p_from_grant bigint,
    p_as_debt bigint,
    p_now timestamptz,
    p_metadata jsonb,
    p_idempotency_key text
)
returns public.credit_transactions
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_row public.credit_transactions;
begin
    -- Takes p_from_grant credits out of the grant and p_as_debt more as debt, in one
    -- journal row. The caller holds the account lock and has checked the grant has them.
    v_row := credit_private.append_transaction(
        p_account_id, 'void', -(p_from_grant + p_as_debt), p_now, p_metadata,
        p_idempotency_key, p_grant_id => p_grant_id
    );
    if p_from_grant > 0 then
        insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
        values (p_account_id, v_row.id, p_grant_id, p_from_grant);
        update public.credit_grants set remaining = remaining - p_from_grant
        where id = p_grant_id;
    end if;
    if p_as_debt > 0 then
        insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
        values (p_account_id, v_row.id, null, p_as_debt);
        update public.credit_accounts set debt = debt + p_as_debt where id = p_account_id;
    end if;
    return v_row;
end;
$$;
revoke all on function credit_private.void(
    bigint, uuid, bigint, bigint, timestamptz, jsonb, text
) from public, anon, authenticated, service_role;

create function public.credit_void_grant(
    p_grant_id uuid,
    p_amount numeric default null,
    p_reason text default null,
    p_idempotency_key text default null
)
returns public.credit_void_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_requested bigint;
    v_grant public.credit_grants;
    v_request jsonb;
    v_account public.credit_accounts;
    v_replay jsonb;
    v_amount bigint;
    v_row public.credit_transactions;
    v_result public.credit_void_result;
begin
    -- Removes what is left of a grant, or p_amount of it: credits given by mistake, or
    -- paid for with money given back. What was spent stays spent.
    if p_amount is not null then
        v_requested := credit_private.whole(p_amount, 'amount', 1);
    end if;
    perform credit_private.check_key(p_idempotency_key);
    if length(p_reason) > 1000 then
        perform credit_private.fail(
            'DC006', 'reason must be at most 1000 characters',
            jsonb_build_object('argument', 'reason')
        );
    end if;
    select * into v_grant from public.credit_grants where id = p_grant_id;
    if not found then
        perform credit_private.fail(
            'DC120', format('grant %s does not exist', coalesce(p_grant_id::text, 'null')),
            jsonb_build_object('grant_id', p_grant_id)
        );
    end if;
    v_request := jsonb_build_object(
        'grant_id', p_grant_id, 'amount', v_requested, 'reason', p_reason
    );
    v_account := credit_private.lock_account_by_id(v_grant.account_id);
    v_replay := credit_private.find_replay(v_account.id, p_idempotency_key, 'void_grant', v_request);
    if v_replay is not null then
        v_result := jsonb_populate_record(null::public.credit_void_result, v_replay);
        v_result.is_replay := true;
        return v_result;
    end if;
    -- an expired grant has nothing left to void: its rest is journalled as expiry
    perform credit_private.expire_grants(v_account.id, v_now);
    select * into v_grant from public.credit_grants where id = p_grant_id;
    v_amount := coalesce(v_requested, v_grant.remaining);
    if v_amount = 0 or v_amount > v_grant.remaining then
        perform credit_private.fail(
            'DC121',
            format('cannot void %s credits of grant %s: %s left', v_amount, p_grant_id,
                v_grant.remaining),
            jsonb_build_object(
                'grant_id', p_grant_id, 'requested', v_amount, 'remaining', v_grant.remaining
            )
        );
    end if;
    v_row := credit_private.void(
        v_account.id, p_grant_id, v_amount, 0, v_now,
        jsonb_strip_nulls(jsonb_build_object('reason', p_reason)), p_idempotency_key
    );
    v_result := row(
        v_row.id, p_grant_id, v_account.user_id, v_amount, v_grant.remaining - v_amount,
        v_row.balance_after, v_now, false
    );
    perform credit_private.remember(
        v_account.id, p_idempotency_key, 'void_grant', v_request, to_jsonb(v_result), v_now
    );
    return v_result;
end;
$$;
revoke all on function public.credit_void_grant(uuid, numeric, text, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_void_grant(uuid, numeric, text, text) to service_role;

-- ---------------------------------------------------------------- purchases and claw-back

create function public.credit_stripe_record_purchase(
    p_user_id text,
    p_credits numeric,
    p_checkout_session_id text,
    p_payment_intent_id text,
    p_amount_total numeric,
    p_metadata jsonb default '{}'
)
returns public.credit_add_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_amount bigint;
    v_result public.credit_add_result;
begin
    -- A paid checkout: the purchase keyed by its session (every announcement after the
    -- first is a replay), and its payment intent noted so that refunds and disputes,
    -- which name the payment intent, find its grant.
    if p_amount_total is not null then
        v_amount := credit_private.whole(p_amount_total, 'amount_total', 0);
    end if;
    if p_payment_intent_id is not null and v_amount > 0 then
        -- the payment's lock before the account's, as its refunds and disputes take them
        perform credit_private.lock_stripe_payment(p_payment_intent_id);
    end if;
    v_result := public.credit_add_credits(
        p_user_id, p_credits, 'purchase', 'paid', 50, null, p_metadata, p_checkout_session_id
    );
    if p_payment_intent_id is not null and v_amount > 0 then
        insert into public.credit_stripe_payments (
            payment_intent_id, account_id, transaction_id, grant_id, credits, amount, currency,
            created_at
        )
        select
            p_payment_intent_id, t.account_id, t.id, v_result.grant_id, v_result.amount,
            v_amount, p_metadata ->> 'currency', v_now
        from public.credit_transactions as t
        where t.id = v_result.transaction_id
        on conflict do nothing;
        -- refunds and disputes that arrived before the purchase apply now
        update public.credit_stripe_payments as p
        set
            refunded = least(p.amount, greatest(p.refunded, coalesce((
                select e.refunded from public.credit_stripe_early_refunds as e
                where e.payment_intent_id = p.payment_intent_id
            ), 0))),
            withdrawn = coalesce((
                select sum(d.amount) from public.credit_stripe_disputes as d
                where d.payment_intent_id = p.payment_intent_id and d.status = 'withdrawn'
            ), 0)
        where p.payment_intent_id = p_payment_intent_id;
        perform credit_private.stripe_clawback(p_payment_intent_id, v_now);
    end if;
    return v_result;
end;
$$;
revoke all on function public.credit_stripe_record_purchase(
    text, numeric, text, text, numeric, jsonb
) from public, anon, authenticated, service_role;
grant execute on function public.credit_stripe_record_purchase(
    text, numeric, text, text, numeric, jsonb
) to service_role;

create function credit_private.stripe_clawback(p_payment_intent_id text, p_now timestamptz)
returns public.credit_stripe_clawback_result
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_payment public.credit_stripe_payments;
    v_target bigint;
    v_change bigint;
    v_left bigint;
    v_from_grant bigint;
    v_row public.credit_transactions;
    v_void record;
    v_take bigint;
    v_account public.credit_accounts;
    v_result public.credit_stripe_clawback_result;
begin
    -- Brings the payment's claw-back to its share of the money given back: more voided
    -- (the grant's unspent credits first, the spent rest as debt), or, after a dispute is
    -- reinstated, the voids refunded (newest first). The caller holds the account lock and
    -- has updated refunded / withdrawn.
    select * into v_payment from public.credit_stripe_payments
    where payment_intent_id = p_payment_intent_id;
    -- the floor of the money's share: never more than was given back
    v_target := div(
        v_payment.credits::numeric * least(v_payment.amount, v_payment.refunded + v_payment.withdrawn),
        v_payment.amount
    )::bigint;
    v_change := v_target - v_payment.clawed_back;
    if v_change > 0 then
        perform credit_private.expire_grants(v_payment.account_id, p_now);
        select least(g.remaining, v_change) into v_from_grant
        from public.credit_grants as g
        where g.id = v_payment.grant_id;
        v_row := credit_private.void(
            v_payment.account_id, v_payment.grant_id, v_from_grant, v_change - v_from_grant,
            p_now,
            jsonb_build_object(
                'source', 'stripe', 'payment_intent', p_payment_intent_id,
                'refunded', v_payment.refunded, 'withdrawn', v_payment.withdrawn
            ),
            null
        );
        insert into public.credit_stripe_clawbacks (transaction_id, account_id, payment_intent_id)
        values (v_row.id, v_row.account_id, p_payment_intent_id);
    elsif v_change < 0 then
        v_left := -v_change;
        for v_void in
            select t.id, -t.amount - coalesce((
                select sum(r.amount) from public.credit_transactions as r
                where r.refund_of = t.id
            ), 0) as open
            from public.credit_stripe_clawbacks as c
            inner join public.credit_transactions as t on c.transaction_id = t.id
            where c.payment_intent_id = p_payment_intent_id
            order by t.seq desc
        loop
            exit when v_left = 0;
            continue when v_void.open <= 0;
            v_take := least(v_void.open, v_left);
            v_left := v_left - v_take;
            v_row := credit_private.append_transaction(
                v_payment.account_id, 'refund', v_take, p_now,
                jsonb_build_object(
                    'source', 'stripe', 'payment_intent', p_payment_intent_id,
                    'reason', 'dispute reinstated'
                ),
                p_refund_of => v_void.id
            );
            perform credit_private.restore(
                v_payment.account_id, v_row.id, v_void.id, v_take, p_now
            );
        end loop;
        -- credits given back to a grant that has expired since expire at once
        perform credit_private.expire_grants(v_payment.account_id, p_now);
    end if;
    update public.credit_stripe_payments set clawed_back = v_target
    where payment_intent_id = p_payment_intent_id;
    select * into v_account from public.credit_accounts where id = v_payment.account_id;
    v_result := row(
        p_payment_intent_id, true, v_account.user_id, v_payment.credits, v_target, v_change,
        v_account.balance, v_account.debt
    );
    return v_result;
end;
$$;
revoke all on function credit_private.stripe_clawback(text, timestamptz)
from public, anon, authenticated, service_role;

create function credit_private.lock_stripe_payment(p_payment_intent_id text)
returns bigint
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_account_id bigint;
begin
    -- The payment's account id with the account locked, or null for an unknown payment.
    -- Every event of one payment, its purchase's too, takes the payment's own lock first
    -- (then the account's): a refund racing the purchase it refunds is either recorded
    -- early and applied by the purchase, or finds the purchase.
    perform credit_private.check_key(p_payment_intent_id);
    perform pg_advisory_xact_lock(
        hashtextextended('credit_stripe_payment ' || p_payment_intent_id, 0)
    );
    select p.account_id into v_account_id
    from public.credit_stripe_payments as p
    where p.payment_intent_id = p_payment_intent_id;
    if v_account_id is not null then
        perform credit_private.lock_account_by_id(v_account_id);
    end if;
    return v_account_id;
end;
$$;
revoke all on function credit_private.lock_stripe_payment(text)
from public, anon, authenticated, service_role;

create function public.credit_stripe_charge_refunded(
    p_payment_intent_id text, p_amount_refunded numeric
)
returns public.credit_stripe_clawback_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_refunded bigint := credit_private.whole(p_amount_refunded, 'amount_refunded', 0);
begin
    -- Stripe's charge.refunded carries the cumulative amount refunded: the claw-back
    -- follows the largest seen, so a replay or an older event changes nothing.
    if credit_private.lock_stripe_payment(p_payment_intent_id) is null then
        insert into public.credit_stripe_early_refunds as e (
            payment_intent_id, refunded, updated_at
        )
        values (p_payment_intent_id, v_refunded, credit_private.clock())
        on conflict (payment_intent_id) do update
        set refunded = greatest(e.refunded, excluded.refunded), updated_at = excluded.updated_at;
        return row(
            p_payment_intent_id, false, null, null, 0, 0, null, null
        )::public.credit_stripe_clawback_result;
    end if;
    update public.credit_stripe_payments
    set refunded = least(amount, greatest(refunded, v_refunded))
    where payment_intent_id = p_payment_intent_id;
    return credit_private.stripe_clawback(p_payment_intent_id, credit_private.clock());
end;
$$;
revoke all on function public.credit_stripe_charge_refunded(text, numeric)
from public, anon, authenticated, service_role;
grant execute on function public.credit_stripe_charge_refunded(text, numeric) to service_role;

create function public.credit_stripe_dispute(
    p_dispute_id text, p_payment_intent_id text, p_amount numeric, p_funds text
)
returns public.credit_stripe_clawback_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_amount bigint := credit_private.whole(p_amount, 'amount', 1);
    v_known boolean;
begin
    -- charge.dispute.funds_withdrawn (p_funds 'withdrawn') claws the disputed money's
    -- credits back; funds_reinstated ('reinstated') gives them back. Reinstated is final.
    perform credit_private.check_choice(p_funds, 'funds', array['withdrawn', 'reinstated']);
    perform credit_private.check_key(p_dispute_id);
    if p_dispute_id is null then
        perform credit_private.fail(
            'DC006', 'dispute_id is required', jsonb_build_object('argument', 'dispute_id')
        );
    end if;
    v_known := credit_private.lock_stripe_payment(p_payment_intent_id) is not null;
    -- recorded even for a payment not known yet: its purchase applies it when recorded
    insert into public.credit_stripe_disputes as d (
        dispute_id, payment_intent_id, amount, status, updated_at
    )
    values (p_dispute_id, p_payment_intent_id, v_amount, p_funds, v_now)
    on conflict (dispute_id) do update
    set status = 'reinstated', updated_at = excluded.updated_at
    where excluded.status = 'reinstated' and d.status = 'withdrawn';
    if not v_known then
        return row(
            p_payment_intent_id, false, null, null, 0, 0, null, null
        )::public.credit_stripe_clawback_result;
    end if;
    update public.credit_stripe_payments as p
    set withdrawn = coalesce((
        select sum(d.amount) from public.credit_stripe_disputes as d
        where d.payment_intent_id = p.payment_intent_id and d.status = 'withdrawn'
    ), 0)
    where p.payment_intent_id = p_payment_intent_id;
    return credit_private.stripe_clawback(p_payment_intent_id, v_now);
end;
$$;
revoke all on function public.credit_stripe_dispute(text, text, numeric, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_stripe_dispute(text, text, numeric, text) to service_role;

-- ---------------------------------------------------------------- subscriptions

create function public.credit_set_price_plan(p_price_id text, p_plan_id text)
returns setof public.credit_stripe_prices
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
begin
    -- Which plan a Stripe price sells; a null plan removes the price (no row returned).
    if p_price_id is null or length(p_price_id) not between 1 and 255 then
        perform credit_private.fail(
            'DC006', 'price_id must be 1 to 255 characters',
            jsonb_build_object('argument', 'price_id')
        );
    end if;
    if p_plan_id is null then
        delete from public.credit_stripe_prices where price_id = p_price_id;
        return;
    end if;
    perform from public.credit_plans as p where p.id = p_plan_id;
    if not found then
        perform credit_private.fail(
            'DC080', format('plan %s does not exist', quote_literal(left(p_plan_id, 100))),
            jsonb_build_object('plan_id', left(p_plan_id, 100))
        );
    end if;
    return query
    insert into public.credit_stripe_prices as sp (price_id, plan_id, updated_at)
    values (p_price_id, p_plan_id, v_now)
    on conflict (price_id) do update
    set plan_id = excluded.plan_id, updated_at = excluded.updated_at
    returning sp.*;
end;
$$;
revoke all on function public.credit_set_price_plan(text, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_set_price_plan(text, text) to service_role;

create function public.credit_list_price_plans()
returns setof public.credit_stripe_prices
language sql
stable
security invoker
set search_path = ''
as $$
    select * from public.credit_stripe_prices order by price_id;
$$;
revoke all on function public.credit_list_price_plans()
from public, anon, authenticated, service_role;
grant execute on function public.credit_list_price_plans() to service_role;

create function credit_private.stripe_user(p_customer_id text, p_user_id text)
returns text
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_user_id text;
begin
    -- The user a customer is: metadata.user_id when the event carries one (remembered for
    -- the customer's later events), else the one remembered. A customer is one user.
    if p_customer_id is null or length(p_customer_id) not between 1 and 255 then
        perform credit_private.fail(
            'DC006', 'customer_id must be 1 to 255 characters',
            jsonb_build_object('argument', 'customer_id')
        );
    end if;
    if p_user_id is not null then
        perform credit_private.check_user_id(p_user_id);
        insert into public.credit_stripe_customers (customer_id, user_id, created_at)
        values (p_customer_id, p_user_id, credit_private.clock())
        on conflict do nothing;
    end if;
    select c.user_id into v_user_id
    from public.credit_stripe_customers as c
    where c.customer_id = p_customer_id;
    if v_user_id is null then
        perform credit_private.fail(
            'DC122',
            format('Stripe customer %s is not mapped to a user (set metadata.user_id on its'
                || ' subscription)', quote_literal(p_customer_id)),
            jsonb_build_object('customer_id', p_customer_id)
        );
    end if;
    if v_user_id <> coalesce(p_user_id, v_user_id) then
        perform credit_private.fail(
            'DC123',
            format('Stripe customer %s is user %s, not %s', quote_literal(p_customer_id),
                quote_literal(v_user_id), quote_literal(p_user_id)),
            jsonb_build_object('customer_id', p_customer_id, 'user_id', v_user_id)
        );
    end if;
    return v_user_id;
end;
$$;
revoke all on function credit_private.stripe_user(text, text)
from public, anon, authenticated, service_role;

create function public.credit_stripe_subscription_changed(
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

create function public.credit_stripe_invoice_paid(
    p_invoice_id text,
    p_customer_id text,
    p_subscription_id text,
    p_price_id text,
    p_billing_reason text,
    p_period_end timestamptz,
    p_user_id text default null
)
returns public.credit_stripe_invoice_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_user_id text;
    v_plan public.credit_plans;
    v_status text;
    v_added public.credit_add_result;
    v_result public.credit_stripe_invoice_result;
begin
    -- invoice.paid: the first invoice of a subscription (subscription_create) or of a new
    -- period (subscription_cycle) grants the plan's allowance once, expiring at the end
    -- of the period it pays for. Other invoices (a mid-period update's proration, a
    -- manual one) grant nothing.
    if p_invoice_id is null or length(p_invoice_id) not between 1 and 200 then
        perform credit_private.fail(
            'DC006', 'invoice_id must be 1 to 200 characters',
            jsonb_build_object('argument', 'invoice_id')
        );
    end if;
    v_result := row(p_invoice_id, null, null, 0, null, p_period_end, 'ignored');
    select p.* into v_plan
    from public.credit_stripe_prices as sp
    inner join public.credit_plans as p on sp.plan_id = p.id
    where sp.price_id = p_price_id;
    if v_plan.id is null then
        v_result.outcome := 'unknown_price';
        return v_result;
    end if;
    v_result.plan_id := v_plan.id;
    v_user_id := credit_private.stripe_user(p_customer_id, p_user_id);
    v_result.user_id := v_user_id;
    if p_billing_reason is null
        or p_billing_reason not in ('subscription_create', 'subscription_cycle') then
        v_result.outcome := 'not_a_period';
        return v_result;
    end if;
    perform credit_private.lock_account(v_user_id, true);
    select t.id into v_result.transaction_id
    from public.credit_stripe_invoices as i
    inner join public.credit_transactions as t on i.transaction_id = t.id
    where i.invoice_id = p_invoice_id;
    if found then
        v_result.outcome := 'replay';
        v_result.granted := (select t.amount from public.credit_transactions as t
            where t.id = v_result.transaction_id);
        return v_result;
    end if;
    select s.status into v_status
    from public.credit_stripe_subscriptions as s
    where s.subscription_id = p_subscription_id;
    if v_status in ('canceled', 'unpaid', 'incomplete_expired', 'paused') then
        v_result.outcome := 'subscription_' || v_status;
        return v_result;
    end if;
    if v_plan.allowance is null then
        v_result.outcome := 'no_allowance';
        return v_result;
    end if;
    if p_period_end is null or p_period_end <= v_now then
        v_result.outcome := 'period_over';
        return v_result;
    end if;
    v_added := public.credit_add_credits(
        v_user_id, v_plan.allowance, 'grant', 'paid', 50, p_period_end,
        jsonb_build_object(
            'source', 'stripe', 'invoice', p_invoice_id, 'subscription', p_subscription_id,
            'plan_id', v_plan.id
        ),
        null
    );
    insert into public.credit_stripe_invoices (
        invoice_id, account_id, user_id, transaction_id, created_at
    )
    select p_invoice_id, a.id, v_user_id, v_added.transaction_id, v_now
    from public.credit_accounts as a
    where a.user_id = v_user_id;
    v_result.granted := v_added.amount;
    v_result.transaction_id := v_added.transaction_id;
    v_result.outcome := 'granted';
    return v_result;
end;
$$;
revoke all on function public.credit_stripe_invoice_paid(
    text, text, text, text, text, timestamptz, text
) from public, anon, authenticated, service_role;
grant execute on function public.credit_stripe_invoice_paid(
    text, text, text, text, text, timestamptz, text
) to service_role;
