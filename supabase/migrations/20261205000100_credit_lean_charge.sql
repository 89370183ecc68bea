-- ducto: the one-call debit records its idempotency key on its own journal row, and a
-- usage is stored compact. A keyed charge writes one row fewer, and a priced charge about
-- half the bytes it did (docs/ledger.md, "The debit's cost").
--
--   * A keyed one-call debit (credit_deduct_credits, _usage, _fixed) is its own key record:
--     its journal row carries the key and a fingerprint of the request (request_hash), and
--     every one-call debit and team charge records what was available after it
--     (available_after), which a replay returns; a unique index makes the key unique per
--     account among such rows. Every other keyed
--     operation, and a charge priced at 0 credits, still records its request and result in
--     credit_idempotency_keys, and find_replay looks in both. Keys recorded before this
--     migration stay where they are and replay as before.
--   * A refused key no longer echoes the first request in the error's detail: it may be
--     another caller's. The detail names the key, the first operation and the caller's own
--     request.
--   * credit_private.check_usage leaves counts at their default (0, or 1 request) out of
--     the usage it returns, which the journal stores: a typical usage takes about a third
--     of the bytes. credit_private.cost reads a missing count as its default, so rows of
--     either form price the same. check_usage runs no query, cost finds a model named as
--     in the config by a JSON path, and pricing() decompresses the config once. The stored requests of keyed usage charges and the
--     usages of settled holds are rewritten to the compact form, so a request retried
--     across this migration is still a replay.
--   * One debit: the user deduct (by amount, usage or job), the team charge and the settle
--     of a hold expire what is due, are admitted against their floor (none for a settle),
--     journal and draw in credit_private.debit; credit_private.admit refuses a user's
--     charge (DC010) or a team pool's (DC084). credit_private.available_now and
--     credit_private.draw are gone (the debit draws itself).
--   * The journal's row check gains the rules of the new columns.
--   * A refund is attributed to the refunded row's member by the refund itself; the
--     trigger credit_transactions_inherit_attribution, which read that row again, is gone.
--   * The analytics functions share their sums (credit_private.spend), each planned for
--     its window as before.
--
-- Every existing row keeps every value; the new columns are null on them. Adding nullable
-- columns without a default rewrites nothing; the row check is validated apart from the
-- ALTER that adds it, so the journal is not locked against writes while it is read once.

-- ---------------------------------------------------------------- the key record

alter table public.credit_transactions
add column request_hash uuid,
add column available_after bigint;
comment on column public.credit_transactions.request_hash is
'For a keyed one-call debit, which is its own key record: a fingerprint of the request the'
' key names (credit_private.request_hash). A replay must match it.';
comment on column public.credit_transactions.available_after is
'For a one-call debit or a team charge: the credits available after it (a replay returns it'
' again).';
comment on column public.credit_transactions.usage is
'The usage metrics priced, normalised by credit_private.check_usage (the model and every count'
' not at its default of 0, or 1 request): credit_calculate_cost(usage, pricing_version)'
' re-prices the row.';
comment on table public.credit_idempotency_keys is
'The first result of each keyed operation but a one-call debit, whose journal row is its key'
' record. Keys are unique per account across both, and never expire.';

-- the keys of one-call debits, which their journal rows record (credit_private.find_replay)
create unique index credit_transactions_key_idx
on public.credit_transactions (account_id, idempotency_key) where request_hash is not null;

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
    p_job_name text,
    p_idempotency_key text,
    p_request_hash uuid,
    p_available_after bigint
)
returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
    -- the journal's row rules, one per line
    return p_seq > 0
        -- credits carry a positive amount, debits a negative one
        and (
            (p_type in ('grant', 'purchase', 'adjustment', 'promotion', 'refund') and p_amount > 0)
            or (p_type in ('usage', 'fixed_job', 'capture', 'expiry') and p_amount < 0)
        )
        -- a refund, and only a refund, names the row it refunds
        and (p_type = 'refund') = (p_refund_of is not null)
        -- a capture, and only a capture, names its hold
        and (p_type = 'capture') = (p_reservation_id is not null)
        and jsonb_typeof(p_metadata) = 'object'
        -- usage only on a priced usage or capture row, and model is the usage's model
        and (p_usage is null or (p_type in ('usage', 'capture') and p_pricing_version is not null))
        and (p_model is not distinct from p_usage ->> 'model')
        -- a job name on a priced fixed-job row, and nowhere else
        and ((p_job_name is not null) = (p_type = 'fixed_job' and p_pricing_version is not null))
        -- what was available after a one-call debit or team charge
        and (p_available_after is null or p_type in ('usage', 'fixed_job'))
        -- a key record only on a keyed one-call debit, with what its replay returns
        and (p_request_hash is null or (
            p_idempotency_key is not null and p_available_after is not null
        ));
end;
$$;
revoke all on function credit_private.journal_row_ok(
    text, bigint, bigint, uuid, uuid, jsonb, jsonb, text, bigint, text, text, uuid, bigint
) from public, anon, authenticated, service_role;

alter table public.credit_transactions
drop constraint credit_transactions_row_check,
add constraint credit_transactions_row_check check (
    credit_private.journal_row_ok(
        type, amount, seq, refund_of, reservation_id, metadata, usage, model,
        pricing_version, job_name, idempotency_key, request_hash, available_after
    )
) not valid;
alter table public.credit_transactions validate constraint credit_transactions_row_check;
drop function credit_private.journal_row_ok(
    text, bigint, bigint, uuid, uuid, jsonb, jsonb, text, bigint, text
);

-- ---------------------------------------------------------------- idempotency

create function credit_private.request_hash(p_operation text, p_request jsonb)
returns uuid
language plpgsql
immutable
set search_path = ''
as $$
begin
    -- jsonb's text form is canonical (keys sorted, no duplicates), so equal requests have
    -- equal fingerprints
    return md5(p_operation || ' ' || p_request::text)::uuid;
end;
$$;
revoke all on function credit_private.request_hash(text, jsonb)
from public, anon, authenticated, service_role;

create or replace function credit_private.find_replay(
    p_account_id bigint, p_key text, p_operation text, p_request jsonb
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
    v_operation text;
    v_result jsonb;
    v_same boolean;
begin
    if p_key is null or p_account_id is null then
        return null;
    end if;
    -- one probe of each record (a key is in at most one of them)
    select r.operation, r.same, r.result into v_operation, v_same, v_result
    from (
        select
            t.type as operation,
            t.request_hash = credit_private.request_hash(p_operation, p_request) as same,
            jsonb_build_object(
                'transaction_id', t.id,
                'user_id', t.user_id,
                'amount', -t.amount,
                'overage', 0,
                'balance_after', t.balance_after,
                'available_after', t.available_after,
                'created_at', t.created_at,
                'is_replay', false,
                'pricing_version', t.pricing_version
            ) as result
        from public.credit_transactions as t
        where
            t.account_id = p_account_id and t.idempotency_key = p_key
            and t.request_hash is not null
        union all
        select k.operation, k.operation = p_operation and k.request = p_request, k.result
        from public.credit_idempotency_keys as k
        where k.account_id = p_account_id and k.idempotency_key = p_key
    ) as r
    limit 1;
    if not found then
        return null;
    end if;
    if not v_same then
        -- the detail names the caller's own request, never the first one: that may be
        -- another caller's
        perform credit_private.fail(
            'DC020',
            format('idempotency key %s was already used for %s with other parameters',
                quote_literal(p_key), v_operation),
            jsonb_build_object(
                'idempotency_key', p_key,
                'operation', v_operation,
                'request', p_request
            ),
            'use a new idempotency key for a different operation'
        );
    end if;
    return v_result;
end;
$$;
revoke all on function credit_private.find_replay(bigint, text, text, jsonb)
from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- the one debit

drop function credit_private.append_transaction(
    bigint, text, bigint, timestamptz, jsonb, text, uuid, uuid, uuid, bigint, jsonb, text, text
);
drop function credit_private.debit(
    bigint, text, bigint, timestamptz, jsonb, text, bigint, jsonb, text, text
);
drop function credit_private.available_now(bigint, timestamptz);
drop function credit_private.admit(text, bigint, bigint, bigint);
drop function credit_private.draw(bigint, uuid, bigint, timestamptz);
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
    p_available_after bigint default null
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
        usage, model, job_name, attributed_user_id, request_hash, available_after
    )
    select
        gen_random_uuid(), p_account_id, a.version, a.user_id, p_type, p_amount, a.balance,
        p_grant_id, p_reservation_id, p_refund_of, p_idempotency_key, p_metadata, p_now,
        p_pricing_version, p_usage, p_usage ->> 'model', p_job_name, p_attributed_user_id,
        p_request_hash, p_available_after
    from account as a
    returning * into v_row;
    return v_row;
end;
$$;
revoke all on function credit_private.append_transaction(
    bigint, text, bigint, timestamptz, jsonb, text, uuid, uuid, uuid, bigint, jsonb, text, text,
    uuid, bigint
) from public, anon, authenticated, service_role;

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
    v_row public.credit_transactions;
    v_grant_id uuid;
    v_drawn bigint;
    v_debt bigint;
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
    v_available := coalesce(credit_private.available(p_account_id, p_now), 0);
    if p_floor is not null then
        v_available := credit_private.admit(
            p_user_id, p_team_id, v_available, p_amount, p_floor
        );
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
        p_available_after => case when p_reservation_id is null then v_available - p_amount end
    );

    -- The draws: most debits fit in the first grant in burn-down order; take it there
    -- directly, and note the draw in the same statement.
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
    select v_row.id, t.id, p_amount
    from taken as t
    returning grant_id into v_grant_id;
    if v_grant_id is not null then
        return v_row;
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
        select v_row.id, t.id, t.amount
        from taken as t
        order by t.drawn_before
    )

    select coalesce(sum(t.amount), 0)::bigint into v_drawn from taken as t;

    -- what no grant could pay is debt: usage that happened is never dropped
    v_debt := p_amount - v_drawn;
    if v_debt > 0 then
        insert into public.credit_grant_draws (transaction_id, grant_id, amount)
        values (v_row.id, null, v_debt);
        update public.credit_accounts set debt = debt + v_debt where id = p_account_id;
    end if;
    return v_row;
end;
$$;
revoke all on function credit_private.debit(
    bigint, text, uuid, text, bigint, bigint, timestamptz, jsonb, text, uuid, bigint, jsonb, text,
    uuid
) from public, anon, authenticated, service_role;

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

create or replace function credit_private.settle(
    p_reservation_id uuid,
    p_actual bigint,
    p_usage jsonb,
    p_metadata jsonb,
    p_idempotency_key text
)
returns public.credit_deduct_result
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_reservation public.credit_reservations;
    v_replay jsonb;
    v_cost public.credit_cost_result;
    v_actual bigint := p_actual;
    v_capture public.credit_transactions;
    v_result public.credit_deduct_result;
begin
    -- Settle a hold by an amount (p_actual) or by usage (p_usage, priced by the active
    -- version). With a key, the key names the request: its first settle stands, and a
    -- retried request's new hold is let go instead of charged again.
    v_reservation := credit_private.lock_reservation(p_reservation_id);
    if p_idempotency_key is not null then
        v_replay := credit_private.find_replay(
            v_reservation.account_id, p_idempotency_key, 'settle_usage', '{}'
        );
        if v_replay is not null then
            if v_reservation.status = 'active' then
                perform credit_private.release(v_reservation, v_now);
            end if;
            v_result := jsonb_populate_record(null::public.credit_deduct_result, v_replay);
            v_result.is_replay := true;
            return v_result;
        end if;
    end if;
    if v_reservation.status = 'settled' then
        -- settling twice with the same amount or usage is a replay; else a conflict
        if v_reservation.usage is not distinct from p_usage
            and (p_usage is not null or v_reservation.settled_amount = p_actual) then
            v_result := jsonb_populate_record(
                null::public.credit_deduct_result, v_reservation.result
            );
            v_result.is_replay := true;
            return v_result;
        end if;
        perform credit_private.fail(
            'DC041',
            format('reservation %s was already settled with %s credits, not %s',
                p_reservation_id, v_reservation.settled_amount,
                coalesce(p_actual::text, 'by this usage')),
            -- the usage fields only where a usage is involved
            jsonb_strip_nulls(jsonb_build_object(
                'reservation_id', p_reservation_id,
                'settled_amount', v_reservation.settled_amount,
                'actual_amount', p_actual,
                'settled_usage', v_reservation.usage,
                'usage', p_usage
            ))
        );
    end if;
    if v_reservation.status = 'released' then
        perform credit_private.fail(
            'DC040',
            format('reservation %s was released and cannot be settled', p_reservation_id),
            jsonb_build_object('reservation_id', p_reservation_id, 'status', 'released')
        );
    end if;

    -- active, or timed out: the usage happened, so it is charged in full, overage included
    if p_usage is not null then
        v_cost := credit_private.price(p_usage, null);
        v_actual := v_cost.credits;
    end if;
    -- no floor: what was used beyond the grants becomes debt
    v_capture := credit_private.debit(
        v_reservation.account_id, v_reservation.user_id, null, 'capture', v_actual, null, v_now,
        v_reservation.metadata || p_metadata, p_idempotency_key, null, v_cost.pricing_version,
        p_usage, null, p_reservation_id
    );

    update public.credit_reservations
    set
        status = 'settled', settled_amount = v_actual, transaction_id = v_capture.id,
        resolved_at = v_now, usage = p_usage
    where id = p_reservation_id;
    v_result := row(
        v_capture.id, p_reservation_id, v_reservation.user_id, v_actual,
        greatest(v_actual - v_reservation.amount, 0), v_capture.balance_after,
        credit_private.available(v_reservation.account_id, v_now), v_now, false,
        v_cost.pricing_version
    );
    update public.credit_reservations set result = to_jsonb(v_result)
    where id = p_reservation_id;
    perform credit_private.remember(
        v_reservation.account_id, p_idempotency_key, 'settle_usage', '{}', to_jsonb(v_result),
        v_now
    );
    return v_result;
end;
$$;
revoke all on function credit_private.settle(uuid, bigint, jsonb, jsonb, text)
from public, anon, authenticated, service_role;

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
    v_transaction := credit_private.debit(
        v_team.account_id, p_user_id, p_team_id, 'usage', v_cost.credits, v_floor, v_now,
        p_metadata, p_idempotency_key, null, v_cost.pricing_version, p_usage, null, null
    );

    v_result := row(
        v_transaction.id, p_team_id, p_user_id, v_cost.credits, v_transaction.balance_after,
        v_transaction.available_after, v_spent + v_cost.credits, v_member.spend_limit,
        v_member.limit_period, v_now, false, v_cost.pricing_version
    );
    perform credit_private.remember(
        v_team.account_id, p_idempotency_key, 'team_usage', v_request, to_jsonb(v_result), v_now
    );
    return v_result;
end;
$$;
revoke all on function credit_private.team_deduct(uuid, text, jsonb, jsonb, text)
from public, anon, authenticated, service_role;

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
    v_available := credit_private.admit(
        p_user_id, null, coalesce(credit_private.available(v_account.id, v_now), 0), v_amount,
        v_min_balance
    );

    v_result := row(
        gen_random_uuid(), p_user_id, v_amount, p_operation_type,
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

-- ---------------------------------------------------------------- refunds

-- A refund names the member it is attributed to when it is written, from the row it
-- refunds, which the refund has read already; the trigger that read it again goes.
drop trigger credit_transactions_inherit_attribution on public.credit_transactions;
drop function credit_private.inherit_attribution();
create or replace function public.credit_refund_transaction(
    p_transaction_id uuid,
    p_amount numeric default null,
    p_reason text default null,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_refund_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_requested bigint;
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_original public.credit_transactions;
    v_request jsonb;
    v_account public.credit_accounts;
    v_replay jsonb;
    v_refunded bigint;
    v_amount bigint;
    v_transaction_id uuid;
    v_balance_after bigint;
    v_result public.credit_refund_result;
begin
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

    select * into v_original
    from public.credit_transactions
    where id = p_transaction_id;
    if not found then
        perform credit_private.fail(
            'DC030', format('transaction %s does not exist', coalesce(p_transaction_id::text, 'null')),
            jsonb_build_object('transaction_id', p_transaction_id)
        );
    end if;
    v_request := jsonb_build_object(
        'transaction_id', p_transaction_id, 'amount', v_requested, 'reason', p_reason,
        'metadata', v_metadata
    );
    v_account := credit_private.lock_account_by_id(v_original.account_id);
    v_replay := credit_private.find_replay(
        v_account.id, p_idempotency_key, 'refund_transaction', v_request
    );
    if v_replay is not null then
        v_result := jsonb_populate_record(null::public.credit_refund_result, v_replay);
        v_result.is_replay := true;
        return v_result;
    end if;

    if v_original.type not in ('usage', 'fixed_job', 'capture') then
        perform credit_private.fail(
            'DC051',
            format('transaction %s is a %s; only usage, fixed_job and capture transactions'
                || ' can be refunded', p_transaction_id, v_original.type),
            jsonb_build_object('transaction_id', p_transaction_id, 'type', v_original.type)
        );
    end if;
    -- under the account lock, so concurrent refunds of one transaction see each other
    select coalesce(sum(t.amount), 0)::bigint into v_refunded
    from public.credit_transactions as t
    where t.refund_of = p_transaction_id;
    if v_refunded = -v_original.amount then
        perform credit_private.fail(
            'DC050',
            format('transaction %s is already fully refunded (charged %s, refunded %s)',
                p_transaction_id, -v_original.amount, v_refunded),
            jsonb_build_object(
                'transaction_id', p_transaction_id,
                'refundable', 0,
                'charged', -v_original.amount,
                'refunded', v_refunded
            )
        );
    end if;
    v_amount := coalesce(v_requested, -v_original.amount - v_refunded);
    if v_amount > -v_original.amount - v_refunded then
        perform credit_private.fail(
            'DC050',
            format('refund of %s exceeds what is refundable of transaction %s: %s'
                || ' (charged %s, refunded %s)', v_amount, p_transaction_id,
                -v_original.amount - v_refunded, -v_original.amount, v_refunded),
            jsonb_build_object(
                'transaction_id', p_transaction_id,
                'requested', v_amount,
                'refundable', -v_original.amount - v_refunded,
                'charged', -v_original.amount,
                'refunded', v_refunded
            )
        );
    end if;

    perform credit_private.expire_grants(v_account.id, v_now);
    v_transaction_id := (credit_private.append_transaction(
        v_account.id, 'refund', v_amount, v_now,
        v_metadata || jsonb_strip_nulls(jsonb_build_object('reason', p_reason)),
        p_idempotency_key, p_refund_of => p_transaction_id,
        -- a refund is attributed to whoever the refunded row was, so a member's net spend
        -- (their limit, spend_by_user) counts refunds of their debits
        p_attributed_user_id => v_original.attributed_user_id
    )).id;
    perform credit_private.restore(v_account.id, v_transaction_id, p_transaction_id, v_amount, v_now);
    -- credits given back to a grant that has expired since expire at once
    perform credit_private.expire_grants(v_account.id, v_now);
    select a.balance into v_balance_after
    from public.credit_accounts as a
    where a.id = v_account.id;

    v_result := row(
        v_transaction_id, p_transaction_id, v_account.user_id, v_amount,
        v_refunded + v_amount, -v_original.amount - v_refunded - v_amount, v_balance_after,
        v_now, false
    );
    perform credit_private.remember(
        v_account.id, p_idempotency_key, 'refund_transaction', v_request, to_jsonb(v_result),
        v_now
    );
    return v_result;
end;
$$;
revoke all on function public.credit_refund_transaction(uuid, numeric, text, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_refund_transaction(
    uuid, numeric, text, jsonb, text
) to service_role;

-- ---------------------------------------------------------------- analytics

-- The four analytics functions share their sums: credit_private.spend.
create function credit_private.spend(p_start timestamptz, p_end timestamptz, p_by text)
returns table (
    key text,
    spent bigint,
    refunded bigint,
    charges bigint,
    refunds bigint,
    users bigint,
    credited bigint,
    expired bigint
)
language plpgsql
stable
set search_path = ''
set plan_cache_mode = force_custom_plan
as $$
begin
    -- What counts in [p_start, p_end), one row per group of p_by: 'day' (UTC), 'model',
    -- 'user', or null for the whole window (every kind of row; no row for an empty one).
    -- Planned for each call, so p_by is a constant to the planner: the group key is one
    -- column, and the join that finds a refund's model is planned only for 'model'.
    return query
    select
        case p_by
            when 'day' then ((a.created_at at time zone 'UTC')::date)::text
            when 'model' then a.model
            when 'user' then a.user_id
        end,
        coalesce(sum(a.amount) filter (where a.kind = 'charge'), 0)::bigint,
        coalesce(sum(a.amount) filter (where a.kind = 'refund'), 0)::bigint,
        count(*) filter (where a.kind = 'charge'),
        count(*) filter (where a.kind = 'refund'),
        count(distinct a.user_id) filter (where a.kind = 'charge'),
        coalesce(sum(a.amount) filter (where a.kind = 'credit'), 0)::bigint,
        coalesce(sum(a.amount) filter (where a.kind = 'expiry'), 0)::bigint
    from credit_private.journal_activity as a
    where
        a.created_at >= p_start and a.created_at < p_end
        and (p_by is null or a.kind in ('charge', 'refund'))
    group by 1;
end;
$$;
revoke all on function credit_private.spend(timestamptz, timestamptz, text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.spend(timestamptz, timestamptz, text)
to service_role;

create or replace function public.credit_aggregate_stats(p_start timestamptz, p_end timestamptz)
returns public.credit_stats_result
language plpgsql
stable
set search_path = ''
as $$
declare
    v_result public.credit_stats_result;
begin
    perform credit_private.check_window(p_start, p_end);
    select
        p_start, p_end, coalesce(s.spent, 0), coalesce(s.refunded, 0),
        coalesce(s.spent - s.refunded, 0), coalesce(s.credited, 0), coalesce(s.expired, 0),
        coalesce(s.charges, 0), coalesce(s.refunds, 0), coalesce(s.users, 0)
    into v_result
    from (select) as one
    left join credit_private.spend(p_start, p_end, null) as s on true;
    return v_result;
end;
$$;
revoke all on function public.credit_aggregate_stats(
    timestamptz, timestamptz
) from public, anon, authenticated, service_role;
grant execute on function public.credit_aggregate_stats(
    timestamptz, timestamptz
) to service_role;

create or replace function public.credit_daily_spend(p_start timestamptz, p_end timestamptz)
returns setof public.credit_daily_spend_row
language plpgsql
stable
set search_path = ''
as $$
begin
    perform credit_private.check_window(p_start, p_end);
    -- every UTC day the window touches, zeros included, oldest first
    return query
    select
        d.day::date, coalesce(s.spent, 0), coalesce(s.refunded, 0),
        coalesce(s.spent - s.refunded, 0), coalesce(s.charges, 0), coalesce(s.users, 0)
    from generate_series(
        (p_start at time zone 'UTC')::date,
        ((p_end - interval '1 microsecond') at time zone 'UTC')::date,
        interval '1 day'
    ) as d (day)
    left join credit_private.spend(p_start, p_end, 'day') as s on d.day::date::text = s.key
    order by 1;
end;
$$;
revoke all on function public.credit_daily_spend(timestamptz, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_daily_spend(
    timestamptz, timestamptz
) to service_role;

create or replace function public.credit_spend_by_model(p_start timestamptz, p_end timestamptz)
returns setof public.credit_model_spend_row
language plpgsql
stable
set search_path = ''
as $$
begin
    perform credit_private.check_window(p_start, p_end);
    -- model is null for charges priced by amount (and fixed jobs), which have none
    return query
    select s.key, s.spent, s.refunded, s.spent - s.refunded, s.charges, s.users
    from credit_private.spend(p_start, p_end, 'model') as s
    order by 4 desc, 1 nulls last;
end;
$$;
revoke all on function public.credit_spend_by_model(
    timestamptz, timestamptz
) from public, anon, authenticated, service_role;
grant execute on function public.credit_spend_by_model(
    timestamptz, timestamptz
) to service_role;

create or replace function public.credit_spend_by_user(p_start timestamptz, p_end timestamptz)
returns setof public.credit_user_spend_row
language plpgsql
stable
set search_path = ''
as $$
begin
    perform credit_private.check_window(p_start, p_end);
    return query
    select s.key, s.spent, s.refunded, s.spent - s.refunded, s.charges
    from credit_private.spend(p_start, p_end, 'user') as s
    order by 4 desc, 1;
end;
$$;
revoke all on function public.credit_spend_by_user(
    timestamptz, timestamptz
) from public, anon, authenticated, service_role;
grant execute on function public.credit_spend_by_user(
    timestamptz, timestamptz
) to service_role;

-- ---------------------------------------------------------------- compact usage

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
begin
    -- Every charge priced by usage runs this: plain expressions, no query, until an error.
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
                || ' + -), got %s', coalesce(p_metrics -> 'model', 'null')),
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

create or replace function credit_private.cost(p_config jsonb, p_usage jsonb)
returns public.credit_cost_result
language plpgsql
immutable
set search_path = ''
as $$
declare
    v_name jsonb := p_usage -> 'model';
    v_model text := lower(p_usage ->> 'model');
    v_rates jsonb;
    v_matched text;
    v_exact numeric;
    v_credits numeric;
begin
    -- The one definition of a cost (docs/pricing.md; ducto.pricing mirrors it).
    -- p_config comes from check_pricing_config and p_usage from check_usage, which leaves
    -- out counts at their default (0; 1 request).
    -- The entry: the exact name, else the matching pattern with the most literal
    -- characters, else the first of those in the list; else the default.
    -- First the name as written (no query; model names have no *, and names compare
    -- without case, so at most one entry is the exact name), then without case and the
    -- patterns.
    v_rates := jsonb_path_query_first(
        p_config -> 'models', '$[*] ? (@.model == $m)', jsonb_build_object('m', v_name)
    );
    v_matched := v_rates ->> 'model';
    if v_rates is null then
        select e.entry, e.entry ->> 'model' into v_rates, v_matched
        from jsonb_array_elements(p_config -> 'models') with ordinality as e (entry, ord)
        where case
            when strpos(e.entry ->> 'model', '*') = 0 then lower(e.entry ->> 'model') = v_model
            -- model names have no % or \; _ is escaped, * becomes %
            else v_model like replace(replace(lower(e.entry ->> 'model'), '_', '\_'), '*', '%')
        end
        order by
            strpos(e.entry ->> 'model', '*') = 0 desc,
            length(replace(e.entry ->> 'model', '*', '')) desc,
            e.ord
        limit 1;
    end if;
    if v_rates is null then
        v_rates := p_config -> 'default';
        if jsonb_typeof(v_rates) is distinct from 'object' then
            perform credit_private.fail(
                'DC061',
                format('no price for model %s: no models entry matches and the pricing has'
                    || ' no default', to_jsonb(p_usage ->> 'model')),
                jsonb_build_object('model', p_usage ->> 'model')
            );
        end if;
    end if;

    -- numeric multiplication and addition are exact: no rounding until the last step
    v_exact := (
        coalesce((p_usage ->> 'input_tokens')::numeric, 0) * (v_rates ->> 'input')::numeric
        + coalesce((p_usage ->> 'output_tokens')::numeric, 0) * (v_rates ->> 'output')::numeric
        + coalesce((p_usage ->> 'cached_input_tokens')::numeric, 0)
        * (v_rates ->> 'cached_input')::numeric
        + coalesce((p_usage ->> 'cache_creation_tokens')::numeric, 0)
        * (v_rates ->> 'cache_creation')::numeric
        + coalesce((p_usage ->> 'cache_creation_1h_tokens')::numeric, 0)
        * (v_rates ->> 'cache_creation_1h')::numeric
        + coalesce((p_usage ->> 'reasoning_tokens')::numeric, 0)
        * (v_rates ->> 'reasoning')::numeric
    ) * 0.000001
    + coalesce((p_usage ->> 'tool_calls')::numeric, 0) * (v_rates ->> 'tool_call')::numeric
    + coalesce((p_usage ->> 'requests')::numeric, 1) * (v_rates ->> 'request')::numeric;
    if p_config ->> 'unit' = 'usd' then
        v_exact := v_exact * (p_config ->> 'credits_per_usd')::numeric
            * (1 + (p_config ->> 'markup')::numeric);
    end if;
    v_credits := case p_config ->> 'rounding'
        when 'ceil' then ceil(v_exact)
        when 'half_up' then round(v_exact)
        else floor(v_exact)
    end;
    if v_credits > 9007199254740991 then
        perform credit_private.fail(
            'DC001', format('the usage costs %s credits, more than one operation can charge',
                v_credits),
            jsonb_build_object('credits', v_credits, 'max', 9007199254740991)
        );
    end if;
    return row(
        null::bigint, p_usage ->> 'model', v_matched, trim_scale(v_exact), v_credits::bigint,
        (p_config ->> 'min_balance')::bigint
    );
end;
$$;
revoke all on function credit_private.cost(jsonb, jsonb)
from public, anon, authenticated, service_role;
grant execute on function credit_private.cost(jsonb, jsonb) to service_role;

create or replace function credit_private.pricing(p_version bigint)
returns public.credit_pricing_config
language plpgsql
stable
set search_path = ''
as $$
declare
    v_pricing public.credit_pricing_config;
begin
    if p_version is null then
        -- the active version is the newest: publishes are serialised, so versions are
        -- in commit order
        select * into v_pricing
        from public.credit_pricing_config
        order by version desc
        limit 1;
        if not found then
            perform credit_private.fail(
                'DC063', 'no pricing is published: publish a pricing config first', null,
                'credit_publish_pricing, or CreditManager.publish_pricing'
            );
        end if;
    else
        select * into v_pricing
        from public.credit_pricing_config
        where version = p_version;
        if not found then
            perform credit_private.fail(
                'DC064', format('pricing version %s does not exist', p_version),
                jsonb_build_object('version', p_version)
            );
        end if;
    end if;
    -- A config of more than a few models is stored compressed, and every -> on it would
    -- decompress it again; || returns it decompressed once, for the cost's many reads.
    v_pricing.config := v_pricing.config || '{}'::jsonb;
    return v_pricing;
end;
$$;
revoke all on function credit_private.pricing(bigint)
from public, anon, authenticated, service_role;
grant execute on function credit_private.pricing(bigint) to service_role;

-- What check_usage now returns for the same metrics: requests keyed before this migration
-- and retried after it must still match.
create function credit_private.compact_usage(p_usage jsonb)
returns jsonb
language sql
immutable
set search_path = ''
as $$
    select jsonb_object_agg(u.key, u.value)
    from jsonb_each(p_usage) as u
    where u.value <> case when u.key = 'requests' then '1' else '0' end::jsonb;
$$;

update public.credit_idempotency_keys
set request = jsonb_set(request, '{usage}', credit_private.compact_usage(request -> 'usage'))
where jsonb_typeof(request -> 'usage') = 'object';
update public.credit_reservations
set usage = credit_private.compact_usage(usage)
where usage is not null;

drop function credit_private.compact_usage(jsonb);

-- ---------------------------------------------------------------- schema version

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205000100'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
