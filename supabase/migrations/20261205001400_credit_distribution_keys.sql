-- ducto: keys for a ledger distributed by account, and time-ordered ids
-- (docs/operations.md, "Scaling").
--
--   * Every table that holds an account's state carries account_id, and every primary key,
--     unique constraint and foreign key between such tables includes it: draws, event
--     deliveries, team members, Stripe claw-backs and invoices gain the column (filled from
--     the row they belong to), and the keys of the journal, grants, holds, events, spend
--     windows, top-up requests, teams and Stripe payments are re-made with it. A uuid key
--     leads with the id, so a lookup by id alone still uses it.
--   * New journal rows, grants, holds, top-up requests, alerts and endpoints get
--     time-ordered ids (credit_private.uuid_v7, the events' ids until now), so appends land
--     at the right edge of their keys. A journal row's id carries its created_at, so the
--     month of a row can be read from its id.
--   * The functions that write the re-keyed tables name the account; the verification
--     joins draws to their rows by account too.
--
-- Applying it rebuilds those keys and checks the new foreign keys once; every row is kept.

-- ---------------------------------------------------------------- ids

-- uuid_v7 takes the time the id carries: a journal row's is its created_at
drop function credit_private.uuid_v7();
create function credit_private.uuid_v7(p_at timestamptz default clock_timestamp())
returns uuid
language plpgsql
volatile
set search_path = ''
as $$
declare
    -- 15 hex digits of a sequence: ids of one millisecond sort in the order they were taken
    v_seq text := lpad(to_hex(nextval('credit_private.event_seq')), 15, '0');
begin
    -- a UUIDv7: the Unix time in milliseconds (48 bits), version 7, the sequence around
    -- the variant bits (10), 12 random bits; ids sort in the order they were made
    return (
        lpad(to_hex(floor(extract(epoch from p_at) * 1000)::bigint), 12, '0')
        || '7' || substr(v_seq, 1, 3) || '8' || substr(v_seq, 4, 12)
        || lpad(to_hex(floor(random() * 4096)::integer), 3, '0')
    )::uuid;
end;
$$;
revoke all on function credit_private.uuid_v7(timestamptz)
from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- foreign keys, dropped

alter table public.credit_transactions
drop constraint credit_transactions_grant_fk,
drop constraint credit_transactions_refund_of_fkey,
drop constraint credit_transactions_reservation_fk;
alter table public.credit_grants drop constraint credit_grants_transaction_id_fkey;
alter table public.credit_reservations drop constraint credit_reservations_transaction_id_fkey;
alter table public.credit_grant_draws
drop constraint credit_grant_draws_transaction_id_fkey,
drop constraint credit_grant_draws_grant_id_fkey;
alter table public.credit_allowance_grants
drop constraint credit_allowance_grants_grant_id_fkey;
alter table public.credit_event_deliveries
drop constraint credit_event_deliveries_event_id_fkey;
alter table public.credit_team_members drop constraint credit_team_members_team_id_fkey;
alter table public.credit_topup_requests
drop constraint credit_topup_requests_transaction_id_fkey;
alter table public.credit_stripe_clawbacks
drop constraint credit_stripe_clawbacks_transaction_id_fkey,
drop constraint credit_stripe_clawbacks_payment_intent_id_fkey;
alter table public.credit_stripe_invoices
drop constraint credit_stripe_invoices_transaction_id_fkey;
alter table public.credit_stripe_payments
drop constraint credit_stripe_payments_transaction_id_fkey,
drop constraint credit_stripe_payments_grant_id_fkey;

-- ---------------------------------------------------------------- account_id, added

-- draws are append-only: the trigger that refuses updates steps aside for the fill
alter table public.credit_grant_draws add column account_id bigint;
alter table public.credit_grant_draws disable trigger credit_grant_draws_append_only;
update public.credit_grant_draws as d set account_id = t.account_id
from public.credit_transactions as t
where t.id = d.transaction_id;
alter table public.credit_grant_draws enable trigger credit_grant_draws_append_only;
alter table public.credit_grant_draws alter column account_id set not null;

alter table public.credit_event_deliveries add column account_id bigint;
update public.credit_event_deliveries as d set account_id = e.account_id
from public.credit_events as e
where e.id = d.event_id;
alter table public.credit_event_deliveries alter column account_id set not null;

alter table public.credit_team_members add column account_id bigint;
update public.credit_team_members as m set account_id = t.account_id
from public.credit_teams as t
where t.id = m.team_id;
alter table public.credit_team_members alter column account_id set not null;

alter table public.credit_stripe_clawbacks add column account_id bigint;
update public.credit_stripe_clawbacks as c set account_id = t.account_id
from public.credit_transactions as t
where t.id = c.transaction_id;
alter table public.credit_stripe_clawbacks alter column account_id set not null;

alter table public.credit_stripe_invoices add column account_id bigint;
update public.credit_stripe_invoices as i set account_id = t.account_id
from public.credit_transactions as t
where t.id = i.transaction_id;
alter table public.credit_stripe_invoices alter column account_id set not null;

-- ---------------------------------------------------------------- keys, re-made

alter table public.credit_transactions
drop constraint credit_transactions_pkey,
add constraint credit_transactions_pkey primary key (id, account_id),
alter column id set default credit_private.uuid_v7();
alter table public.credit_grants
drop constraint credit_grants_pkey,
add constraint credit_grants_pkey primary key (id, account_id),
alter column id set default credit_private.uuid_v7();
alter table public.credit_reservations
drop constraint credit_reservations_pkey,
add constraint credit_reservations_pkey primary key (id, account_id),
alter column id set default credit_private.uuid_v7();
alter table public.credit_grant_draws
drop constraint credit_grant_draws_pkey,
add constraint credit_grant_draws_pkey primary key (id, account_id);
alter table public.credit_allowance_grants
drop constraint credit_allowance_grants_grant_id_key,
add constraint credit_allowance_grants_grant_id_key unique (grant_id, account_id);
alter table public.credit_events
drop constraint credit_events_pkey,
drop constraint credit_events_dedupe_key_key,
add constraint credit_events_pkey primary key (id, account_id),
add constraint credit_events_dedupe_key_key unique (dedupe_key, account_id);
alter table public.credit_event_deliveries
drop constraint credit_event_deliveries_pkey,
drop constraint credit_event_deliveries_claim_id_key,
add constraint credit_event_deliveries_pkey primary key (event_id, endpoint_id, account_id),
add constraint credit_event_deliveries_claim_id_key unique (claim_id, account_id);
alter table public.credit_spend_windows
drop constraint credit_spend_windows_pkey,
add constraint credit_spend_windows_pkey primary key (id, account_id);
alter table public.credit_topup_requests
drop constraint credit_topup_requests_pkey,
drop constraint credit_topup_requests_payment_intent_id_key,
add constraint credit_topup_requests_pkey primary key (id, account_id),
add constraint credit_topup_requests_payment_intent_id_key unique (
    payment_intent_id, account_id
);
alter table public.credit_teams
drop constraint credit_teams_pkey,
add constraint credit_teams_pkey primary key (id, account_id);
alter table public.credit_team_members
drop constraint credit_team_members_pkey,
add constraint credit_team_members_pkey primary key (team_id, user_id, account_id);
alter table public.credit_stripe_payments
drop constraint credit_stripe_payments_pkey,
drop constraint credit_stripe_payments_transaction_id_key,
add constraint credit_stripe_payments_pkey primary key (payment_intent_id, account_id),
add constraint credit_stripe_payments_transaction_id_key unique (transaction_id, account_id);
alter table public.credit_stripe_clawbacks
drop constraint credit_stripe_clawbacks_pkey,
add constraint credit_stripe_clawbacks_pkey primary key (transaction_id, account_id);
alter table public.credit_stripe_invoices
drop constraint credit_stripe_invoices_pkey,
add constraint credit_stripe_invoices_pkey primary key (invoice_id, account_id);
alter table public.credit_balance_alerts alter column id set default credit_private.uuid_v7();
alter table public.credit_event_endpoints alter column id set default credit_private.uuid_v7();

-- ---------------------------------------------------------------- foreign keys, with the account

alter table public.credit_transactions
add constraint credit_transactions_refund_of_fkey foreign key (account_id, refund_of)
references public.credit_transactions (account_id, id),
add constraint credit_transactions_grant_fk foreign key (account_id, grant_id)
references public.credit_grants (account_id, id) deferrable initially deferred,
add constraint credit_transactions_reservation_fk foreign key (account_id, reservation_id)
references public.credit_reservations (account_id, id);
alter table public.credit_grants
add constraint credit_grants_transaction_id_fkey foreign key (account_id, transaction_id)
references public.credit_transactions (account_id, id);
alter table public.credit_reservations
add constraint credit_reservations_transaction_id_fkey foreign key (account_id, transaction_id)
references public.credit_transactions (account_id, id);
alter table public.credit_grant_draws
add constraint credit_grant_draws_transaction_id_fkey foreign key (account_id, transaction_id)
references public.credit_transactions (account_id, id),
add constraint credit_grant_draws_grant_id_fkey foreign key (account_id, grant_id)
references public.credit_grants (account_id, id);
alter table public.credit_allowance_grants
add constraint credit_allowance_grants_grant_id_fkey foreign key (account_id, grant_id)
references public.credit_grants (account_id, id);
alter table public.credit_event_deliveries
add constraint credit_event_deliveries_event_id_fkey foreign key (account_id, event_id)
references public.credit_events (account_id, id);
alter table public.credit_team_members
add constraint credit_team_members_team_id_fkey foreign key (account_id, team_id)
references public.credit_teams (account_id, id);
alter table public.credit_topup_requests
add constraint credit_topup_requests_transaction_id_fkey foreign key (account_id, transaction_id)
references public.credit_transactions (account_id, id);
alter table public.credit_stripe_payments
add constraint credit_stripe_payments_transaction_id_fkey foreign key (account_id, transaction_id)
references public.credit_transactions (account_id, id),
add constraint credit_stripe_payments_grant_id_fkey foreign key (account_id, grant_id)
references public.credit_grants (account_id, id);
alter table public.credit_stripe_clawbacks
add constraint credit_stripe_clawbacks_transaction_id_fkey foreign key (account_id, transaction_id)
references public.credit_transactions (account_id, id),
add constraint credit_stripe_clawbacks_payment_intent_id_fkey
foreign key (account_id, payment_intent_id)
references public.credit_stripe_payments (account_id, payment_intent_id);
alter table public.credit_stripe_invoices
add constraint credit_stripe_invoices_transaction_id_fkey foreign key (account_id, transaction_id)
references public.credit_transactions (account_id, id);

-- ---------------------------------------------------------------- functions

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

create or replace function credit_private.create_grant(
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

create or replace function credit_private.draw(
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

create or replace function credit_private.emit_event(
    p_account_id bigint, p_user_id text, p_type text, p_payload jsonb, p_dedupe_key text
)
returns uuid
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_id uuid;
begin
    -- the outbox's advisory lock ('duct'), shared with every other writer of events until
    -- commit: credit_poll_events reads only while no transaction holds it, so no event it
    -- has not seen can commit below its cursor
    perform pg_catalog.pg_advisory_xact_lock_shared(1685418868);
    -- the endpoints enabled now get the event; a dedupe key already used writes nothing
    insert into public.credit_events (
        id, account_id, user_id, type, payload, created_at, delivery, dedupe_key
    )
    values (
        credit_private.uuid_v7(), p_account_id, p_user_id, p_type, coalesce(p_payload, '{}'),
        v_now,
        case when exists (
            select 1 from public.credit_event_endpoints as e
            where e.enabled and (e.event_types is null or p_type = any(e.event_types))
        ) then 'pending' else 'none' end,
        p_dedupe_key
    )
    on conflict (dedupe_key, account_id) do nothing
    returning id into v_id;
    if v_id is not null then
        insert into public.credit_event_deliveries (
            event_id, account_id, endpoint_id, next_attempt_at
        )
        select v_id, p_account_id, e.id, v_now
        from public.credit_event_endpoints as e
        where e.enabled and (e.event_types is null or p_type = any(e.event_types));
    end if;
    return v_id;
end;
$$;
revoke all on function credit_private.emit_event(bigint, text, text, jsonb, text)
from public, anon, authenticated, service_role;

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

create or replace function credit_private.grant_allowance(
    p_user_id text, p_plan public.credit_plans, p_now timestamptz,
    out granted bigint, out rollover bigint
)
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_period record := credit_private.period_bounds(p_plan.allowance_period, p_now);
    v_previous_start timestamptz;
    v_account public.credit_accounts;
    v_live bigint;
    v_grant_id uuid := credit_private.uuid_v7();
    v_transaction_id uuid;
begin
    -- Grants the plan's allowance for the current period, once: granted (the allowance
    -- credited, rollover apart) and the rollover carried in, or nulls when there was
    -- nothing to grant. The caller holds no lock; the account lock serialises concurrent
    -- runs, and the second one finds the row.
    v_account := credit_private.lock_account(p_user_id, true);
    if exists (
        select from public.credit_allowance_grants as ag
        where
            ag.account_id = v_account.id
            and ag.period = p_plan.allowance_period
            and ag.period_start = v_period.period_start
            and ag.plan_id = p_plan.id
    ) then
        return;
    end if;
    -- journals the expiry of the previous period's grant, which the rollover reads
    perform credit_private.expire_grants(v_account.id, p_now);

    -- After a plan change within a period, an allowance of the old plan (or of another
    -- period length) is still live: the new plan tops it up to its own level for the
    -- rest of that period, and never grants both in full. A downgrade takes nothing back.
    select sum(g.remaining) into v_live
    from public.credit_allowance_grants as ag
    inner join public.credit_grants as g on ag.grant_id = g.id
    where ag.account_id = v_account.id and g.expires_at > p_now;
    rollover := 0;
    if v_live is not null then
        granted := p_plan.allowance - v_live;
        if granted <= 0 then
            granted := null;
            rollover := null;
            return;
        end if;
    else
        granted := p_plan.allowance;
        if p_plan.rollover_cap > 0 then
            v_previous_start := (credit_private.period_bounds(
                p_plan.allowance_period, v_period.period_start - interval '1 microsecond'
            )).period_start;
            -- what the previous period's allowance had left when it expired
            select least(coalesce(sum(d.amount), 0), p_plan.rollover_cap)::bigint
            into rollover
            from public.credit_allowance_grants as ag
            inner join public.credit_grant_draws as d on ag.grant_id = d.grant_id
            inner join public.credit_transactions as t on d.transaction_id = t.id
            where
                ag.account_id = v_account.id
                and ag.period = p_plan.allowance_period
                and ag.period_start = v_previous_start
                and t.type = 'expiry';
        end if;
    end if;

    v_transaction_id := (credit_private.append_transaction(
        v_account.id, 'grant', granted + rollover, p_now,
        jsonb_build_object(
            'plan_id', p_plan.id,
            'period', p_plan.allowance_period,
            'period_start', v_period.period_start,
            'allowance', granted,
            'rollover', rollover
        ),
        p_grant_id => v_grant_id
    )).id;
    perform credit_private.create_grant(
        v_account.id, v_transaction_id, v_grant_id, 'promotional', 50, granted + rollover,
        v_period.period_end, p_now
    );
    insert into public.credit_allowance_grants (
        account_id, period, period_start, plan_id, grant_id, allowance, rollover, created_at
    ) values (
        v_account.id, p_plan.allowance_period, v_period.period_start, p_plan.id, v_grant_id,
        granted, rollover, p_now
    );
end;
$$;
revoke all on function credit_private.grant_allowance(
    text, public.credit_plans, timestamptz
) from public, anon, authenticated, service_role;

create or replace function credit_private.request_topup(
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

create or replace function credit_private.restore(
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
                insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
                values (p_account_id, p_refund_id, null, -v_debt);
                update public.credit_accounts set debt = debt - v_debt where id = p_account_id;
            end if;
            -- debt paid since by newer credits comes back as a new grant
            v_excess := v_excess + v_take - v_debt;
        else
            insert into public.credit_grant_draws (account_id, transaction_id, grant_id, amount)
            values (p_account_id, p_refund_id, v_source.grant_id, -v_take);
            update public.credit_grants set remaining = remaining + v_take
            where id = v_source.grant_id;
        end if;
    end loop;
    if v_excess > 0 then
        perform credit_private.create_grant(
            p_account_id, p_refund_id, credit_private.uuid_v7(), 'paid', 50, v_excess, null, p_now
        );
    end if;
end;
$$;
revoke all on function credit_private.restore(bigint, uuid, uuid, bigint, timestamptz)
from public, anon, authenticated, service_role;

create or replace function credit_private.stripe_clawback(
    p_payment_intent_id text, p_now timestamptz
)
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

create or replace function credit_private.void(
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

create or replace function public.credit_add_credits(
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

create or replace function public.credit_reserve_credits(
    p_user_id text,
    p_amount numeric,
    p_operation_type text default 'usage',
    p_min_balance numeric default 0,
    p_timeout_seconds integer default 900,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_reserve_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_amount bigint := credit_private.whole(p_amount, 'amount', 1);
    v_min_balance bigint := credit_private.whole(p_min_balance, 'min_balance', 0);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_request jsonb;
    v_account public.credit_accounts;
    v_replay jsonb;
    v_available bigint;
    v_admissible bigint;
    v_result public.credit_reserve_result;
begin
    perform credit_private.check_user_id(p_user_id);
    perform credit_private.check_key(p_idempotency_key);
    if p_operation_type is null or length(p_operation_type) not between 1 and 64 then
        perform credit_private.fail(
            'DC006', 'operation_type must be 1 to 64 characters',
            jsonb_build_object('argument', 'operation_type')
        );
    end if;
    if p_timeout_seconds is null or p_timeout_seconds not between 1 and 604800 then
        perform credit_private.fail(
            'DC005',
            format('timeout_seconds must be from 1 to 604800 (7 days), got %s',
                coalesce(p_timeout_seconds::text, 'null')),
            jsonb_build_object('argument', 'timeout_seconds')
        );
    end if;

    v_request := jsonb_build_object(
        'amount', v_amount, 'operation_type', p_operation_type, 'min_balance', v_min_balance,
        'timeout_seconds', p_timeout_seconds, 'metadata', v_metadata
    );
    v_account := credit_private.lock_account(p_user_id, false);
    v_replay := credit_private.find_replay(
        v_account.id, p_idempotency_key, 'reserve_credits', v_request
    );
    if v_replay is not null then
        v_result := jsonb_populate_record(null::public.credit_reserve_result, v_replay);
        v_result.is_replay := true;
        return v_result;
    end if;
    if v_account.id is not null then
        perform credit_private.expire_grants(v_account.id, v_now);
    end if;
    v_available := coalesce(credit_private.available(v_account.id, v_now), 0);
    -- a hold relies on the scoped credits its metadata's model, job or feature may draw
    -- (43_scopes.sql), a plain hold on unscoped credits only; a credit line lowers the
    -- floor (42_limits.sql)
    v_admissible := v_available
        - credit_private.out_of_scope(v_account.id, v_now, null, null, v_metadata);
    perform credit_private.admit(
        p_user_id, null, v_admissible, v_amount,
        credit_private.credit_floor(v_account.id, v_min_balance, v_admissible - v_amount, v_now)
    );
    perform credit_private.check_limits(v_account.id, v_amount, null, true, v_now);

    v_result := row(
        credit_private.uuid_v7(), p_user_id, v_amount, p_operation_type,
        v_now + make_interval(secs => p_timeout_seconds), v_available - v_amount, v_now, false
    );
    insert into public.credit_reservations (
        id, account_id, user_id, amount, operation_type, metadata, expires_at, created_at
    ) values (
        v_result.reservation_id, v_account.id, p_user_id, v_amount, p_operation_type,
        v_metadata, v_result.expires_at, v_now
    );
    perform credit_private.remember(
        v_account.id, p_idempotency_key, 'reserve_credits', v_request, to_jsonb(v_result), v_now
    );
    return v_result;
end;
$$;
revoke all on function public.credit_reserve_credits(
    text, numeric, text, numeric, integer, jsonb, text
) from public, anon, authenticated, service_role;
grant execute on function public.credit_reserve_credits(
    text, numeric, text, numeric, integer, jsonb, text
) to service_role;

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205001400'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;

create or replace function public.credit_set_team_member(
    p_team_id uuid,
    p_user_id text,
    p_role text default 'member',
    p_spend_limit numeric default null,
    p_limit_period text default null
)
returns public.credit_team_member_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_spend_limit bigint;
    v_team public.credit_teams;
    v_member public.credit_team_members;
begin
    perform credit_private.check_user_id(p_user_id);
    perform credit_private.check_choice(p_role, 'role', array['owner', 'admin', 'member']);
    if p_spend_limit is not null then
        v_spend_limit := credit_private.whole(p_spend_limit, 'spend_limit', 0);
        perform credit_private.check_choice(
            p_limit_period, 'limit_period', array['day', 'week', 'month']
        );
    elsif p_limit_period is not null then
        perform credit_private.fail(
            'DC006', 'limit_period needs a spend_limit',
            jsonb_build_object('argument', 'limit_period')
        );
    end if;

    v_team := credit_private.lock_team(p_team_id);
    insert into public.credit_team_members as m (
        team_id, account_id, user_id, role, spend_limit, limit_period, joined_at, updated_at
    ) values (
        p_team_id, v_team.account_id, p_user_id, p_role, v_spend_limit, p_limit_period, v_now,
        v_now
    )
    on conflict (team_id, user_id, account_id) do update set
        role = excluded.role,
        spend_limit = excluded.spend_limit,
        limit_period = excluded.limit_period,
        updated_at = excluded.updated_at
    returning * into v_member;
    return credit_private.member_result(v_team, v_member, v_now);
end;
$$;
revoke all on function public.credit_set_team_member(uuid, text, text, numeric, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_set_team_member(
    uuid, text, text, numeric, text
) to service_role;

create or replace function public.credit_stripe_invoice_paid(
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

create or replace function public.credit_upsert_team(
    p_team_id uuid,
    p_name text,
    p_min_balance numeric default 0
)
returns public.credit_team_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_min_balance bigint := credit_private.whole(p_min_balance, 'min_balance', 0);
    v_account public.credit_accounts;
    v_team public.credit_teams;
begin
    if p_team_id is null then
        perform credit_private.fail(
            'DC006', 'team_id must be a uuid', jsonb_build_object('argument', 'team_id')
        );
    end if;
    if p_name is null or length(p_name) not between 1 and 200 then
        perform credit_private.fail(
            'DC006', 'team name must be 1 to 200 characters',
            jsonb_build_object('argument', 'name')
        );
    end if;
    -- the pool's account: created with the team, locked by every later change of it
    v_account := credit_private.lock_account('team:' || p_team_id, true);
    select * into v_team from public.credit_teams where id = p_team_id;
    if not found and v_account.version > 0 then
        -- an account of that name with a history is someone else's, never a new pool
        perform credit_private.fail(
            'DC006',
            format('account %s already exists and is not the pool of team %s',
                quote_literal('team:' || p_team_id), p_team_id),
            jsonb_build_object('argument', 'team_id', 'team_id', p_team_id)
        );
    end if;
    insert into public.credit_teams as t (id, name, account_id, min_balance, created_at, updated_at)
    values (p_team_id, p_name, v_account.id, v_min_balance, v_now, v_now)
    on conflict (id, account_id) do update set
        name = excluded.name, min_balance = excluded.min_balance, updated_at = excluded.updated_at
    returning * into v_team;
    return row(
        v_team.id, v_team.name, 'team:' || v_team.id, v_team.min_balance, v_team.created_at,
        v_team.updated_at
    );
end;
$$;
revoke all on function public.credit_upsert_team(uuid, text, numeric)
from public, anon, authenticated, service_role;
grant execute on function public.credit_upsert_team(uuid, text, numeric) to service_role;

create or replace function public.credit_verify_ledger()
returns setof public.credit_ledger_issue
language sql
stable
security invoker
set search_path = ''
as $$
    -- every row is a broken invariant; an empty answer means the ledger is consistent
    with journal as (
        select
            t.account_id,
            sum(t.amount) as total,
            count(*) as n,
            max(t.seq) as last_seq
        from public.credit_transactions as t
        group by t.account_id
    ),

    grants as (
        select g.account_id, sum(g.remaining) as remaining
        from public.credit_grants as g
        group by g.account_id
    ),

    debt_draws as (
        select t.account_id, sum(d.amount) as debt
        from public.credit_grant_draws as d
        inner join public.credit_transactions as t on d.transaction_id = t.id
        where d.grant_id is null
        group by t.account_id
    ),

    chain as (
        select
            t.account_id,
            t.seq,
            t.balance_after,
            coalesce(lag(t.balance_after) over w, 0) + t.amount as expected
        from public.credit_transactions as t
        window w as (partition by t.account_id order by t.seq)
    )

    select a.id, a.user_id, 'balance = sum of journal', coalesce(j.total, 0)::text, a.balance::text
    from public.credit_accounts as a
    left join journal as j on a.id = j.account_id
    where a.balance <> coalesce(j.total, 0)

    union all
    select a.id, a.user_id, 'journal seq is 1..version', a.version::text,
        format('%s rows, last seq %s', coalesce(j.n, 0), j.last_seq)
    from public.credit_accounts as a
    left join journal as j on a.id = j.account_id
    where coalesce(j.n, 0) <> a.version or coalesce(j.last_seq, 0) <> a.version

    union all
    select c.account_id, null, 'balance_after chain at seq ' || c.seq, c.expected::text,
        c.balance_after::text
    from chain as c
    where c.balance_after <> c.expected

    union all
    select a.id, a.user_id, 'balance = grants remaining - debt',
        (coalesce(g.remaining, 0) - a.debt)::text, a.balance::text
    from public.credit_accounts as a
    left join grants as g on a.id = g.account_id
    where a.balance <> coalesce(g.remaining, 0) - a.debt

    union all
    select a.id, a.user_id, 'debt = sum of debt draws', coalesce(d.debt, 0)::text, a.debt::text
    from public.credit_accounts as a
    left join debt_draws as d on a.id = d.account_id
    where a.debt <> coalesce(d.debt, 0)

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' remaining = amount - draws',
        (g.amount - coalesce(sum(d.amount), 0))::text, g.remaining::text
    from public.credit_grants as g
    left join public.credit_grant_draws as d on g.account_id = d.account_id and g.id = d.grant_id
    group by g.id, g.account_id
    having g.remaining <> g.amount - coalesce(sum(d.amount), 0)

    union all
    select t.account_id, t.user_id, 'transaction ' || t.id || ' amount = its draws',
        (-t.amount)::text, coalesce(sum(d.amount), 0)::text
    from public.credit_transactions as t
    left join public.credit_grant_draws as d
        on t.account_id = d.account_id and t.id = d.transaction_id
    where t.type in ('usage', 'fixed_job', 'capture', 'expiry', 'void')
    group by t.id, t.account_id
    having -t.amount <> coalesce(sum(d.amount), 0)

    union all
    select t.account_id, t.user_id,
        'refunds of ' || t.id || ' gave back at most what it drew from each source',
        '>= 0', sum(m.amount)::text
    from public.credit_transactions as t
    inner join (
        select coalesce(r.refund_of, r.id) as original, d.grant_id, d.amount
        from public.credit_grant_draws as d
        inner join public.credit_transactions as r on d.transaction_id = r.id
        where r.type in ('usage', 'fixed_job', 'capture', 'void', 'refund')
        union all
        select r.refund_of, null, -g.amount
        from public.credit_grants as g
        inner join public.credit_transactions as r on g.transaction_id = r.id
        where r.type = 'refund'
    ) as m on t.id = m.original
    group by t.id, t.account_id, m.grant_id
    having sum(m.amount) < 0

    union all
    select o.account_id, o.user_id, 'refunds of ' || o.id || ' <= charged',
        (-o.amount)::text, sum(r.amount)::text
    from public.credit_transactions as o
    inner join public.credit_transactions as r
        on o.account_id = r.account_id and o.id = r.refund_of
    group by o.id, o.account_id
    having sum(r.amount) > -o.amount

    union all
    select r.account_id, r.user_id, 'reservation ' || r.id || ' settled = its capture',
        r.settled_amount::text, coalesce(-t.amount, 0)::text
    from public.credit_reservations as r
    left join public.credit_transactions as t on r.transaction_id = t.id
    where r.status = 'settled' and r.settled_amount <> coalesce(-t.amount, 0)

    union all
    select s.account_id, s.user_id, s.check_name, s.expected, s.actual
    from credit_private.verify_scopes() as s;
$$;
revoke all on function public.credit_verify_ledger()
from public, anon, authenticated, service_role;
grant execute on function public.credit_verify_ledger() to service_role;
