-- ducto: durable events (docs/events.md). An outbox, public.credit_events, written in the
-- transaction of the change it reports: an event exists if and only if its change
-- committed. Endpoints receive every event at least once, with its stable id.
--
--   credit_events             the outbox: one row per event (id time-ordered, a UUIDv7)
--   credit_balance_alerts     balance.low thresholds, of a user (or team pool) or a plan:
--                             absolute credits, or a percent of the account's last top-up
--   credit_event_settings     one row: how many days before expiry grant.expiring fires
--   credit_event_endpoints    HTTP endpoints events are POSTed to (signed)
--   credit_event_deliveries   one row per (event, endpoint): attempts, the next one, the
--                             last error, when it was delivered
--
-- Types: balance.low, balance.depleted (journal writes, credit_private.balance_events),
-- grant.expiring (the sweep and credit_emit_due_events), grant.expired (expire_grants),
-- charge.refunded (credit_refund_transaction), limit.reached (spending limits).
--
-- "Balance" is the journal balance (credit_accounts.balance, the balance_after of each
-- journal row), checked at every journal write: every debit path (charge, team charge,
-- settle, expiry) passes there. Holds change no balance, so they fire no alert.
--
-- Delivery: a worker claims due deliveries (credit_claim_event_deliveries, FOR UPDATE SKIP
-- LOCKED, each claimed for a lease), POSTs them, and reports each one
-- (credit_finish_event_delivery): delivered, or failed and retried after an exponential
-- backoff (10 s doubling, at most an hour) or the receiver's Retry-After.
--
-- Errors: DC006 invalid argument, DC001 invalid threshold, DC002 invalid user id,
-- DC080 plan not found.

-- ---------------------------------------------------------------- tables

create function credit_private.event_types()
returns text[]
language sql
immutable
set search_path = ''
as $$
    select array[
        'balance.low', 'balance.depleted', 'grant.expiring', 'grant.expired',
        'charge.refunded', 'limit.reached', 'topup.requested', 'topup.succeeded',
        'topup.action_required', 'topup.disabled'
    ];
$$;
revoke all on function credit_private.event_types()
from public, anon, authenticated, service_role;

create table public.credit_events (
    id uuid not null,
    account_id bigint not null references public.credit_accounts (id),
    user_id text not null,
    type text not null check (type = any(credit_private.event_types())),
    payload jsonb not null default '{}' check (jsonb_typeof(payload) = 'object'),
    created_at timestamptz not null,
    delivery text not null default 'none' check (delivery in ('none', 'pending', 'delivered')),
    dedupe_key text,
    constraint credit_events_pkey primary key (id, account_id),
    constraint credit_events_dedupe_key_key unique (dedupe_key, account_id)
);
comment on table public.credit_events is
'The outbox: events written in the transaction of the change they report. Rows never change'
' but their delivery state.';
comment on column public.credit_events.id is
'Stable id (UUIDv7, time-ordered); receivers drop a delivery whose id they have seen.';
comment on column public.credit_events.delivery is
'none: no endpoint wanted it when written; pending: some delivery is due; delivered: all were.';
comment on column public.credit_events.dedupe_key is
'Makes an event once-only (grant.expiring:<grant id>, limit.reached:<window>:<period>);'
' null for the others.';

create index credit_events_user_idx on public.credit_events (user_id, id);
create index credit_events_account_idx on public.credit_events (account_id, id);

create table public.credit_balance_alerts (
    id uuid primary key default credit_private.uuid_v7(),
    user_id text,
    plan_id text references public.credit_plans (id) on delete cascade,
    threshold bigint check (threshold between 1 and 9007199254740991),
    percent numeric check (percent > 0 and percent <= 100),
    created_at timestamptz not null,
    -- of a user or of a plan; absolute or a percent of the last top-up
    check ((user_id is null) <> (plan_id is null)),
    check ((threshold is null) <> (percent is null)),
    unique nulls not distinct (user_id, plan_id, threshold, percent)
);
comment on table public.credit_balance_alerts is
'balance.low thresholds. One fires when a journal write takes the balance from at or above'
' it to below it; it re-arms by the balance being at or above it again.';
comment on column public.credit_balance_alerts.percent is
'A percent of the account''s last top-up (its newest grant, purchase, adjustment or'
' promotion row), rounded up to a whole credit; no top-up yet: no alert.';

create index credit_balance_alerts_user_idx on public.credit_balance_alerts (user_id);
create index credit_balance_alerts_plan_idx on public.credit_balance_alerts (plan_id);

create table public.credit_event_settings (
    id boolean primary key default true check (id),
    grant_expiring_days integer not null default 7 check (grant_expiring_days between 1 and 365),
    updated_at timestamptz not null
);
comment on table public.credit_event_settings is
'At most one row; without it grant.expiring fires 7 days before a grant expires.';

create table public.credit_event_endpoints (
    id uuid primary key default credit_private.uuid_v7(),
    url text not null check (url ~ '^https?://' and length(url) <= 2000),
    secret text not null check (length(secret) between 16 and 200),
    event_types text[] check (event_types <@ credit_private.event_types()),
    enabled boolean not null default true,
    created_at timestamptz not null,
    updated_at timestamptz not null
);
comment on table public.credit_event_endpoints is
'Where events are POSTed, signed with secret (docs/events.md). event_types null: every type.'
' An endpoint gets the events written while it is enabled.';

create table public.credit_event_deliveries (
    event_id uuid not null,
    endpoint_id uuid not null references public.credit_event_endpoints (id),
    attempts integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null,
    claim_id uuid,
    last_error text,
    delivered_at timestamptz,
    account_id bigint not null,
    constraint credit_event_deliveries_pkey primary key (event_id, endpoint_id, account_id),
    constraint credit_event_deliveries_claim_id_key unique (claim_id, account_id),
    constraint credit_event_deliveries_event_id_fkey foreign key (account_id, event_id)
    references public.credit_events (account_id, id)
);
comment on table public.credit_event_deliveries is
'One event to one endpoint. A claim moves next_attempt_at to the end of its lease, so no'
' other worker takes the row meanwhile; only the current claim_id may report it.';

-- the due deliveries, for the claim
create index credit_event_deliveries_due_idx
on public.credit_event_deliveries (next_attempt_at)
where delivered_at is null;
create index credit_event_deliveries_endpoint_idx on public.credit_event_deliveries (endpoint_id);

alter table public.credit_events enable row level security;
alter table public.credit_balance_alerts enable row level security;
alter table public.credit_event_settings enable row level security;
alter table public.credit_event_endpoints enable row level security;
alter table public.credit_event_deliveries enable row level security;

-- A signed-in user reads their own events and their teams' pools', like their journal (a
-- Realtime subscription on the table relies on it). The other tables have no policy: only
-- service_role (BYPASSRLS) reads them. Nobody but the ledger writes.
create policy credit_events_read_own on public.credit_events
for select to authenticated
using (
    user_id = (select auth.uid())::text
    or account_id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

revoke all on table
public.credit_events,
public.credit_balance_alerts,
public.credit_event_settings,
public.credit_event_endpoints,
public.credit_event_deliveries
from public, anon, authenticated, service_role;
grant select on table public.credit_events to authenticated, service_role;
grant select on table
public.credit_balance_alerts,
public.credit_event_settings,
public.credit_event_endpoints,
public.credit_event_deliveries
to service_role;

-- ---------------------------------------------------------------- result types

create type public.credit_event_endpoint_row as (
    id uuid,
    url text,
    event_types text [],
    enabled boolean,
    created_at timestamptz,
    updated_at timestamptz
);
comment on type public.credit_event_endpoint_row is
'An endpoint without its secret.
@notNull id, url, enabled, created_at, updated_at';

create type public.credit_event_delivery_claim as (
    claim_id uuid,
    event_id uuid,
    endpoint_id uuid,
    attempt integer,
    url text,
    secret text,
    body text
);
comment on type public.credit_event_delivery_claim is
'A claimed delivery: POST body (exactly these bytes, signed with secret) to url, then report'
' it with claim_id.
@notNull claim_id, event_id, endpoint_id, attempt, url, secret, body';

-- ---------------------------------------------------------------- writing events

create function credit_private.emit_event(
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

create function credit_private.emit(
    p_account_id bigint, p_user_id text, p_type text, p_payload jsonb
)
returns uuid
language plpgsql
volatile
set search_path = ''
as $$
begin
    -- Write an event in the caller's transaction (a rollback takes it back); its id.
    return credit_private.emit_event(p_account_id, p_user_id, p_type, p_payload, null);
end;
$$;
revoke all on function credit_private.emit(bigint, text, text, jsonb)
from public, anon, authenticated, service_role;

create function credit_private.last_top_up(p_account_id bigint)
returns bigint
language sql
stable
set search_path = ''
as $$
    -- the newest credit row that is not a refund, walking the (account_id, seq) index back
    select t.amount
    from public.credit_transactions as t
    where
        t.account_id = p_account_id
        and t.type in ('grant', 'purchase', 'adjustment', 'promotion')
    order by t.seq desc
    limit 1;
$$;
revoke all on function credit_private.last_top_up(bigint)
from public, anon, authenticated, service_role;

create function credit_private.balance_events(p_row public.credit_transactions)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_before bigint := p_row.balance_after - p_row.amount;
    v_plan_id text;
    v_alert public.credit_balance_alerts;
    v_top_up bigint;
    v_threshold bigint;
begin
    -- After a journal row that lowered the balance (the caller holds the account lock, so
    -- writes of one account come here one at a time): a crossing is read from the balance
    -- before and after this row, so each crossing fires once and nothing needs re-arming.
    -- No threshold of this user and none of any plan: one probe, and no alert to check.
    if exists (
        select 1 from public.credit_balance_alerts as a
        where a.user_id = p_row.user_id or a.plan_id is not null
    ) then
        v_plan_id := coalesce(
            (select up.plan_id from public.credit_user_plans as up
             where up.user_id = p_row.user_id),
            (select p.id from public.credit_plans as p where p.is_default)
        );
        for v_alert in
            select a.* from public.credit_balance_alerts as a
            where a.user_id = p_row.user_id or a.plan_id = v_plan_id
            order by a.threshold nulls last, a.percent, a.id
        loop
            if v_alert.percent is null then
                v_threshold := v_alert.threshold;
            else
                v_top_up := coalesce(v_top_up, credit_private.last_top_up(p_row.account_id));
                v_threshold := ceil(v_top_up * v_alert.percent / 100);
            end if;
            if v_threshold is not null and v_before >= v_threshold
                and p_row.balance_after < v_threshold then
                perform credit_private.emit(p_row.account_id, p_row.user_id, 'balance.low',
                    jsonb_strip_nulls(jsonb_build_object(
                        'alert_id', v_alert.id, 'threshold', v_threshold,
                        'percent', v_alert.percent, 'plan_id', v_alert.plan_id,
                        'balance', p_row.balance_after, 'balance_before', v_before,
                        'transaction_id', p_row.id, 'transaction_type', p_row.type
                    )));
            end if;
        end loop;
    end if;
    -- the crossing to zero or below, for every account (arithmetic only)
    if v_before > 0 and p_row.balance_after <= 0 then
        perform credit_private.emit(p_row.account_id, p_row.user_id, 'balance.depleted',
            jsonb_build_object(
                'balance', p_row.balance_after, 'balance_before', v_before,
                'transaction_id', p_row.id, 'transaction_type', p_row.type
            ));
    end if;
end;
$$;
revoke all on function credit_private.balance_events(public.credit_transactions)
from public, anon, authenticated, service_role;

create function credit_private.emit_grant_expired(
    p_account_id bigint, p_grant_id uuid, p_amount bigint, p_transaction_id uuid
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    perform credit_private.emit(p_account_id, g.user_id, 'grant.expired', jsonb_build_object(
        'grant_id', g.id, 'amount', p_amount, 'granted', g.amount, 'category', g.category,
        'expires_at', g.expires_at, 'transaction_id', p_transaction_id
    ))
    from public.credit_grants as g
    where g.id = p_grant_id;
end;
$$;
revoke all on function credit_private.emit_grant_expired(bigint, uuid, bigint, uuid)
from public, anon, authenticated, service_role;

create function credit_private.emit_expiring_grants(p_now timestamptz)
returns integer
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_days integer := coalesce(
        (select s.grant_expiring_days from public.credit_event_settings as s), 7
    );
    v_grant record;
    v_count integer := 0;
begin
    -- one writer at a time: two sweeps writing the same grant's event (its dedupe key) wait
    -- for each other, each holding key locks on the accounts of the events it wrote, which
    -- the charges waiting between them need (a deadlock)
    perform pg_advisory_xact_lock(hashtext('credit_private.emit_expiring_grants'));
    -- grant.expiring, once per grant (its dedupe key), for grants with credits left that
    -- expire within the next v_days days; the sweep's expiry index finds them
    for v_grant in
        select g.id, g.account_id, g.user_id, g.remaining, g.amount, g.category, g.expires_at
        from public.credit_grants as g
        where
            g.spendable and g.expires_at > p_now
            and g.expires_at <= p_now + make_interval(days => v_days)
            and not exists (
                select 1 from public.credit_events as e
                where e.dedupe_key = 'grant.expiring:' || g.id
            )
        order by g.expires_at, g.id
    loop
        if credit_private.emit_event(
            v_grant.account_id, v_grant.user_id, 'grant.expiring',
            jsonb_build_object(
                'grant_id', v_grant.id, 'remaining', v_grant.remaining,
                'granted', v_grant.amount, 'category', v_grant.category,
                'expires_at', v_grant.expires_at, 'days_before', v_days
            ),
            'grant.expiring:' || v_grant.id
        ) is not null then
            v_count := v_count + 1;
        end if;
    end loop;
    return v_count;
end;
$$;
revoke all on function credit_private.emit_expiring_grants(timestamptz)
from public, anon, authenticated, service_role;

-- Writes events: runs as its owner (no API role writes the outbox). Service role only; a
-- pg_cron job runs it as its owner.
create function public.credit_emit_due_events()
returns integer
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
    -- the events that are due by time alone (grant.expiring); the number written
    return credit_private.emit_expiring_grants(credit_private.clock());
end;
$$;
revoke all on function public.credit_emit_due_events()
from public, anon, authenticated, service_role;
grant execute on function public.credit_emit_due_events() to service_role;

-- ---------------------------------------------------------------- reading events

create function public.credit_list_events(
    p_user_id text default null,
    p_after uuid default null,
    p_types text[] default null,
    p_limit integer default 100
)
returns setof public.credit_events
language plpgsql
stable
security invoker
set search_path = ''
as $$
begin
    -- events in id order after the cursor p_after, of the types p_types (null: all): one
    -- user's (a signed-in user: their own, by default), or, for the service role without
    -- a user, everyone's
    if p_limit is null or p_limit < 1 or p_limit > 1000 then
        perform credit_private.fail(
            'DC006',
            format('limit must be from 1 to 1000, got %s', coalesce(p_limit::text, 'null')),
            jsonb_build_object('argument', 'limit')
        );
    end if;
    -- (only a signed-in user is held to their own; the service role may list everyone's)
    if p_user_id is not null or current_user = 'authenticated' then
        p_user_id := credit_private.reader_id(p_user_id, 'events');
    end if;
    return query
    select e.*
    from public.credit_events as e
    where
        (p_user_id is null or e.user_id = p_user_id)
        and (p_after is null or e.id > p_after)
        and (p_types is null or e.type = any(p_types))
    order by e.id
    limit p_limit;
end;
$$;
revoke all on function public.credit_list_events(text, uuid, text[], integer)
from public, anon, authenticated, service_role;
grant execute on function public.credit_list_events(text, uuid, text[], integer)
to authenticated, service_role;

create function public.credit_poll_events(p_after uuid default null, p_limit integer default 100)
returns setof public.credit_events
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    -- Every user's events after the cursor p_after, in id order, for a reader that keeps a
    -- cursor and must miss none. Ids follow the order events were written, not committed:
    -- an event of a transaction still running could later commit below a cursor already
    -- past it. So the read waits for a moment when no transaction that wrote an event is
    -- open (it takes the writers' lock exclusively, without waiting: when some are open it
    -- answers no rows, and the reader asks again); events written later get larger ids.
    -- Volatile, so the read below takes its snapshot after the lock (read committed).
    if p_limit is null or p_limit < 1 or p_limit > 1000 then
        perform credit_private.fail(
            'DC006',
            format('limit must be from 1 to 1000, got %s', coalesce(p_limit::text, 'null')),
            jsonb_build_object('argument', 'limit')
        );
    end if;
    if not pg_catalog.pg_try_advisory_xact_lock(1685418868) then  -- the outbox's lock
        return;
    end if;
    return query
    select e.*
    from public.credit_events as e
    where p_after is null or e.id > p_after
    order by e.id
    limit p_limit;
end;
$$;
revoke all on function public.credit_poll_events(uuid, integer)
from public, anon, authenticated, service_role;
grant execute on function public.credit_poll_events(uuid, integer) to service_role;

-- ---------------------------------------------------------------- alert thresholds

-- The configuration RPCs write tables no API role may write: they run as their owner.
-- Service role only.
create function public.credit_set_alert(
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

create function public.credit_delete_alert(p_alert_id uuid)
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

create function public.credit_list_alerts(p_user_id text default null, p_plan_id text default null)
returns setof public.credit_balance_alerts
language sql
stable
security invoker
set search_path = ''
as $$
    -- a user's, a plan's, or (neither given) every alert
    select a.*
    from public.credit_balance_alerts as a
    where
        (p_user_id is null or a.user_id = p_user_id)
        and (p_plan_id is null or a.plan_id = p_plan_id)
    order by a.user_id nulls last, a.plan_id, a.threshold nulls last, a.percent, a.id;
$$;
revoke all on function public.credit_list_alerts(text, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_list_alerts(text, text) to service_role;

create function public.credit_set_grant_expiring_days(p_days integer)
returns integer
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
    -- how many days before its expiry a grant's grant.expiring fires (from the next sweep)
    if p_days is null or p_days not between 1 and 365 then
        perform credit_private.fail(
            'DC006', format('days must be from 1 to 365, got %s', coalesce(p_days::text, 'null')),
            jsonb_build_object('argument', 'days')
        );
    end if;
    insert into public.credit_event_settings as s (id, grant_expiring_days, updated_at)
    values (true, p_days, credit_private.clock())
    on conflict (id) do update
    set grant_expiring_days = excluded.grant_expiring_days, updated_at = excluded.updated_at;
    return p_days;
end;
$$;
revoke all on function public.credit_set_grant_expiring_days(integer)
from public, anon, authenticated, service_role;
grant execute on function public.credit_set_grant_expiring_days(integer) to service_role;

-- ---------------------------------------------------------------- endpoints and delivery

create function public.credit_set_event_endpoint(
    p_url text,
    p_secret text,
    p_event_types text[] default null,
    p_enabled boolean default true,
    p_id uuid default null
)
returns public.credit_event_endpoint_row
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_row public.credit_event_endpoints;
begin
    -- a new endpoint (p_id null) or a change of one; its deliveries keep their state
    if p_url is null or p_url !~ '^https?://[^[:space:]]+$' or length(p_url) > 2000 then
        perform credit_private.fail(
            'DC006', format('url must be an http(s) URL of at most 2000 characters, got %s',
                coalesce(quote_literal(left(p_url, 100)), 'null')),
            jsonb_build_object('argument', 'url')
        );
    end if;
    if p_secret is null or length(p_secret) not between 16 and 200 then
        perform credit_private.fail(
            'DC006', 'secret must be 16 to 200 characters',
            jsonb_build_object('argument', 'secret')
        );
    end if;
    if p_event_types is not null and not p_event_types <@ credit_private.event_types() then
        perform credit_private.fail(
            'DC006',
            format('event types must be among %s, got %s',
                array_to_string(credit_private.event_types(), ', '),
                left(p_event_types::text, 200)),
            jsonb_build_object('argument', 'event_types')
        );
    end if;
    if p_id is null then
        insert into public.credit_event_endpoints (
            url, secret, event_types, enabled, created_at, updated_at
        )
        values (p_url, p_secret, p_event_types, coalesce(p_enabled, true), v_now, v_now)
        returning * into v_row;
    else
        update public.credit_event_endpoints
        set
            url = p_url, secret = p_secret, event_types = p_event_types,
            enabled = coalesce(p_enabled, true), updated_at = v_now
        where id = p_id
        returning * into v_row;
        if not found then
            perform credit_private.fail(
                'DC006', format('endpoint %s does not exist', p_id),
                jsonb_build_object('argument', 'id')
            );
        end if;
    end if;
    return row(
        v_row.id, v_row.url, v_row.event_types, v_row.enabled, v_row.created_at, v_row.updated_at
    );
end;
$$;
revoke all on function public.credit_set_event_endpoint(text, text, text[], boolean, uuid)
from public, anon, authenticated, service_role;
grant execute on function public.credit_set_event_endpoint(text, text, text[], boolean, uuid)
to service_role;

create function public.credit_list_event_endpoints()
returns setof public.credit_event_endpoint_row
language sql
stable
security invoker
set search_path = ''
as $$
    select e.id, e.url, e.event_types, e.enabled, e.created_at, e.updated_at
    from public.credit_event_endpoints as e
    order by e.created_at, e.id;
$$;
revoke all on function public.credit_list_event_endpoints()
from public, anon, authenticated, service_role;
grant execute on function public.credit_list_event_endpoints() to service_role;

create function public.credit_claim_event_deliveries(
    p_limit integer default 10,
    p_lease_seconds integer default 60
)
returns setof public.credit_event_delivery_claim
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
begin
    -- Claim up to p_limit due deliveries of enabled endpoints. Rows another worker is
    -- claiming are skipped (SKIP LOCKED); a claimed row is not due again before the lease
    -- ends, so no two workers hold it at once. A worker that dies loses its claim when the
    -- lease ends and the row is delivered again: at least once.
    if p_limit is null or p_limit not between 1 and 1000 then
        perform credit_private.fail(
            'DC006',
            format('limit must be from 1 to 1000, got %s', coalesce(p_limit::text, 'null')),
            jsonb_build_object('argument', 'limit')
        );
    end if;
    if p_lease_seconds is null or p_lease_seconds not between 1 and 3600 then
        perform credit_private.fail(
            'DC006', format('lease must be from 1 to 3600 seconds, got %s',
                coalesce(p_lease_seconds::text, 'null')),
            jsonb_build_object('argument', 'lease_seconds')
        );
    end if;
    return query
    with due as (
        select d.event_id, d.endpoint_id
        from public.credit_event_deliveries as d
        inner join public.credit_event_endpoints as p on d.endpoint_id = p.id
        where d.delivered_at is null and d.next_attempt_at <= v_now and p.enabled
        order by d.next_attempt_at, d.event_id
        limit p_limit
        for update of d skip locked
    ),

    claimed as (
        update public.credit_event_deliveries as d
        set
            attempts = d.attempts + 1,
            claim_id = gen_random_uuid(),
            next_attempt_at = v_now + make_interval(secs => p_lease_seconds)
        from due
        where d.event_id = due.event_id and d.endpoint_id = due.endpoint_id
        returning d.claim_id, d.event_id, d.endpoint_id, d.attempts
    )

    select
        c.claim_id, c.event_id, c.endpoint_id, c.attempts, p.url, p.secret,
        jsonb_build_object(
            'id', e.id, 'type', e.type, 'created_at', e.created_at,
            'account_id', e.account_id, 'user_id', e.user_id, 'data', e.payload
        )::text
    from claimed as c
    inner join public.credit_events as e on c.event_id = e.id
    inner join public.credit_event_endpoints as p on c.endpoint_id = p.id
    order by e.id;
end;
$$;
revoke all on function public.credit_claim_event_deliveries(integer, integer)
from public, anon, authenticated, service_role;
grant execute on function public.credit_claim_event_deliveries(integer, integer) to service_role;

create function public.credit_finish_event_delivery(
    p_claim_id uuid,
    p_delivered boolean,
    p_error text default null,
    p_retry_after_seconds integer default null
)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_event_id uuid;
begin
    -- Report a claimed delivery: delivered (a 2xx answer), or failed and due again after
    -- p_retry_after_seconds (the receiver's Retry-After) or 10 s doubling per attempt, at
    -- most an hour. false: the claim is not current (its lease ended and another worker
    -- took the row, or it was reported already); nothing changed.
    if p_delivered is null then
        perform credit_private.fail(
            'DC006', 'delivered must be true or false', jsonb_build_object('argument', 'delivered')
        );
    end if;
    if p_retry_after_seconds is not null and p_retry_after_seconds not between 0 and 86400 then
        perform credit_private.fail(
            'DC006', format('retry_after must be from 0 to 86400 seconds, got %s',
                p_retry_after_seconds),
            jsonb_build_object('argument', 'retry_after_seconds')
        );
    end if;
    select d.event_id into v_event_id
    from public.credit_event_deliveries as d
    where d.claim_id = p_claim_id and d.delivered_at is null;
    if not found then
        return false;
    end if;
    -- the event row first: workers finishing deliveries of one event go one at a time, so
    -- the last one sees the others' and marks the event delivered
    perform from public.credit_events as e where e.id = v_event_id for update;
    update public.credit_event_deliveries as d
    set
        claim_id = null,
        delivered_at = case when p_delivered then v_now end,
        last_error = case when p_delivered then d.last_error else left(p_error, 2000) end,
        next_attempt_at = case
            when p_delivered then d.next_attempt_at
            else v_now + make_interval(secs => coalesce(
                p_retry_after_seconds, least(3600, 10 * 2 ^ least(d.attempts - 1, 20))
            ))
        end
    where d.claim_id = p_claim_id and d.delivered_at is null;
    if not found then
        return false;
    end if;
    update public.credit_events as e
    set delivery = 'delivered'
    where
        e.id = v_event_id and p_delivered
        and not exists (
            select 1 from public.credit_event_deliveries as d
            where d.event_id = v_event_id and d.delivered_at is null
        );
    return true;
end;
$$;
revoke all on function public.credit_finish_event_delivery(uuid, boolean, text, integer)
from public, anon, authenticated, service_role;
grant execute on function public.credit_finish_event_delivery(uuid, boolean, text, integer)
to service_role;
