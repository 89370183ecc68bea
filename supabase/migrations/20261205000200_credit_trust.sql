-- ducto: trust. No key, clock or number lets a caller pay less (docs/ledger.md).
--
--   * The clock: credit_private.clock() is now(), the transaction's start. No setting
--     moves it: no role can backdate a journal row or spend a grant after its expiry.
--   * A settle's key names its request, the usage or amount: the same request retried
--     (on any hold of the account) is a replay, as before; another request under the
--     key is refused (DC020), nothing is charged and the hold stays active. Keys recorded
--     before this migration are rewritten to name the usage their hold was settled with.
--   * A settle's overage is bounded (DC042): by default at most 9 times the hold, or what
--     the call allows (credit_settle_reservation / credit_settle_usage: p_max_overage).
--   * A team member's idempotency keys are the member's own: recorded under member id,
--     U+001F, key. No member can replay, block or learn another's request. Keys recorded
--     before this migration are rewritten to that form.
--   * The largest balance is 2^53 - 1 (DC008); analytics totals are numeric.
--   * Allowances after a plan change within a period: the new plan tops the live
--     allowance up to its own level, never both in full (credit_allowance_grants is keyed
--     by plan too).
--   * Error messages cut long values to 100 characters; a refund of a credit says "of
--     type".
--
-- Every existing row keeps its values, but for the key records above.


-- ---------------------------------------------------------------- the clock

create or replace function credit_private.clock()
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
    -- The one clock of the ledger: the transaction's start. No setting moves it, so no
    -- role can backdate a journal row or spend a grant after its expiry. The test suite
    -- replaces this function with one it can move (tests/test-clock.sql); an install never
    -- has it. (plpgsql, not sql: a sql function with SET is planned again on every call.)
    return now();
end;
$$;
revoke all on function credit_private.clock()
from public, anon, authenticated, service_role;
grant execute on function credit_private.clock() to authenticated, service_role;


-- ---------------------------------------------------------------- messages

create or replace function credit_private.check_choice(p_value text, p_name text, p_allowed text[])
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
                p_name, array_to_string(p_allowed, ', '), coalesce(quote_literal(left(p_value, 100)), 'null')),
            jsonb_build_object('argument', p_name, 'allowed', to_jsonb(p_allowed))
        );
    end if;
    return p_value;
end;
$$;
revoke all on function credit_private.check_choice(text, text, text[])
from public, anon, authenticated, service_role;

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

create or replace function credit_private.check_job_name(p_job_name text)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
    if p_job_name is null or p_job_name !~ '^[A-Za-z0-9._:-]{1,64}$' then
        perform credit_private.fail(
            'DC006',
            format('job_name must be 1 to 64 of A-Z a-z 0-9 . _ : -, got %s',
                coalesce(to_jsonb(left(p_job_name, 100)), 'null')),
            jsonb_build_object('argument', 'job_name')
        );
    end if;
    return p_job_name;
end;
$$;
revoke all on function credit_private.check_job_name(text)
from public, anon, authenticated, service_role;

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
            format('transaction %s is of type %s; only usage, fixed_job and capture transactions'
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
    -- null removes the assignment: the user falls back to the default plan
    if p_plan_id is null then
        delete from public.credit_user_plans where user_id = p_user_id;
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
    return public.credit_get_user_plan(p_user_id);
end;
$$;
revoke all on function public.credit_assign_plan(text, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_assign_plan(text, text) to service_role;


-- ---------------------------------------------------------------- the largest balance

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
    return v_row;
end;
$$;
revoke all on function credit_private.append_transaction(
    bigint, text, bigint, timestamptz, jsonb, text, uuid, uuid, uuid, bigint, jsonb, text, text,
    uuid, bigint
) from public, anon, authenticated, service_role;


-- ---------------------------------------------------------------- settle: key and bound

drop function public.credit_settle_reservation(uuid, numeric, jsonb);
drop function public.credit_settle_usage(uuid, jsonb, jsonb, text);
drop function credit_private.settle(uuid, bigint, jsonb, jsonb, text);

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
        -- another caller's; and the caller's key as given, without a member's scope
        perform credit_private.fail(
            'DC020',
            format('idempotency key %s was already used for %s with other parameters',
                quote_literal(split_part(p_key, chr(31), -1)), v_operation),
            jsonb_build_object(
                'idempotency_key', split_part(p_key, chr(31), -1),
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

create function credit_private.settle(
    p_reservation_id uuid,
    p_actual bigint,
    p_usage jsonb,
    p_metadata jsonb,
    p_idempotency_key text,
    p_max_overage numeric
)
returns public.credit_deduct_result
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    -- what a key names: the usage or the amount (any hold of the account, any metadata)
    v_request jsonb := jsonb_build_object('usage', p_usage, 'amount', p_actual);
    -- null: the default bound, 9 times the hold
    v_max_overage bigint := case when p_max_overage is not null then
        credit_private.whole(p_max_overage, 'max_overage', 0)
    end;
    v_reservation public.credit_reservations;
    v_replay jsonb;
    v_cost public.credit_cost_result;
    v_actual bigint := p_actual;
    v_capture public.credit_transactions;
    v_result public.credit_deduct_result;
begin
    -- Settle a hold by an amount (p_actual) or by usage (p_usage, priced by the active
    -- version). With a key, the key names the request: its first settle stands, and a
    -- retried request (the same usage or amount) has its new hold let go instead of
    -- charged again; another request under the key is refused and its hold kept.
    v_reservation := credit_private.lock_reservation(p_reservation_id);
    if p_idempotency_key is not null then
        v_replay := credit_private.find_replay(
            v_reservation.account_id, p_idempotency_key, 'settle_usage', v_request
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
    v_max_overage := coalesce(v_max_overage, 9 * v_reservation.amount);
    if v_actual - v_reservation.amount > v_max_overage then
        perform credit_private.fail(
            'DC042',
            format('settling reservation %s for %s credits is %s over its hold of %s,'
                || ' beyond the %s allowed', p_reservation_id, v_actual,
                v_actual - v_reservation.amount, v_reservation.amount,
                v_max_overage),
            jsonb_build_object(
                'reservation_id', p_reservation_id,
                'held', v_reservation.amount,
                'actual_amount', v_actual,
                'max_overage', v_max_overage
            ),
            'pass a larger max_overage if this usage is right; the hold is still active'
        );
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
        v_reservation.account_id, p_idempotency_key, 'settle_usage', v_request,
        to_jsonb(v_result), v_now
    );
    return v_result;
end;
$$;
revoke all on function credit_private.settle(uuid, bigint, jsonb, jsonb, text, numeric)
from public, anon, authenticated, service_role;

create function public.credit_settle_reservation(
    p_reservation_id uuid,
    p_actual_amount numeric,
    p_metadata jsonb default '{}',
    p_max_overage numeric default null
)
returns public.credit_deduct_result
language plpgsql
volatile
-- definer: writes the ledger tables, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_actual bigint := credit_private.whole(p_actual_amount, 'actual_amount', 0);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
begin
    return credit_private.settle(
        p_reservation_id, v_actual, null, v_metadata, null, p_max_overage
    );
end;
$$;
revoke all on function public.credit_settle_reservation(uuid, numeric, jsonb, numeric)
from public, anon, authenticated, service_role;
grant execute on function public.credit_settle_reservation(
    uuid, numeric, jsonb, numeric
) to service_role;

create function public.credit_settle_usage(
    p_reservation_id uuid,
    p_metrics jsonb,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null,
    p_max_overage numeric default null
)
returns public.credit_deduct_result
language plpgsql
volatile
-- definer: writes the ledger tables, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_usage jsonb := credit_private.check_usage(p_metrics);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_key text := credit_private.check_key(p_idempotency_key);
begin
    return credit_private.settle(
        p_reservation_id, null, v_usage, v_metadata, v_key, p_max_overage
    );
end;
$$;
revoke all on function public.credit_settle_usage(uuid, jsonb, jsonb, text, numeric)
from public, anon, authenticated, service_role;
grant execute on function public.credit_settle_usage(
    uuid, jsonb, jsonb, text, numeric
) to service_role;

-- a settle's key record names the usage its hold was settled with (only credit_settle_usage
-- took a key, so every such record is a settle by usage)
update public.credit_idempotency_keys as k
set request = jsonb_build_object('usage', r.usage, 'amount', null)
from public.credit_reservations as r
where k.operation = 'settle_usage' and r.id = (k.result ->> 'reservation_id')::uuid;


-- ---------------------------------------------------------------- team keys

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
    -- A member's keys are the member's own: recorded under member id, U+001F, key (neither
    -- may hold a control character, so no other key looks the same). No member can
    -- replay, block or learn another's request, and a pool's own keys (its top-ups and
    -- refunds by the service role) never meet a member's.
    v_key text := p_user_id || chr(31) || p_idempotency_key;
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
            v_team.account_id, v_key, 'team_usage', v_request
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
        v_team.account_id, v_key, 'team_usage', v_request, to_jsonb(v_result), v_now
    );
    return v_result;
end;
$$;
revoke all on function credit_private.team_deduct(uuid, text, jsonb, jsonb, text)
from public, anon, authenticated, service_role;

update public.credit_idempotency_keys
set idempotency_key = (request ->> 'user_id') || chr(31) || idempotency_key
where operation = 'team_usage';


-- ---------------------------------------------------------------- allowances

alter table public.credit_allowance_grants
drop constraint credit_allowance_grants_pkey,
add primary key (account_id, period, period_start, plan_id);
comment on table public.credit_allowance_grants is
'One row per account, period and plan an allowance was granted for; the grant expires at'
' the period''s end. After a plan change within a period, allowance is what the new plan'
' added to reach its level.';

drop function credit_private.grant_allowance(text, public.credit_plans, timestamptz);
create function credit_private.grant_allowance(
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
    v_grant_id uuid := gen_random_uuid();
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

create or replace function public.credit_grant_allowances(p_user_id text default null)
returns public.credit_allowance_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_user record;
    v_granted record;
    v_result public.credit_allowance_result := row(0, 0, 0, 0::bigint, 0::bigint);
begin
    -- For every assigned user whose plan has an allowance (or only p_user_id): grant the
    -- current period's allowance, once per user and period. Idempotent, so it can run as
    -- often as wanted (pg_cron). A period in which it never ran is skipped, not granted
    -- late: its credits would have expired at its end anyway.
    if p_user_id is not null then
        perform credit_private.check_user_id(p_user_id);
    end if;
    -- one account at a time, in account id order as the sweep takes them, so the two
    -- jobs cannot deadlock on the locks each holds until commit; users without an
    -- account yet come last (the sweep never locks those)
    for v_user in
        select up.user_id, p as plan
        from public.credit_user_plans as up
        inner join public.credit_plans as p on up.plan_id = p.id
        left join public.credit_accounts as a on up.user_id = a.user_id
        where p.allowance is not null and (p_user_id is null or up.user_id = p_user_id)
        order by a.id nulls last, up.user_id
    loop
        v_granted := credit_private.grant_allowance(v_user.user_id, v_user.plan, v_now);
        v_result.users := v_result.users + 1;
        if v_granted.granted is null then
            v_result.already_granted := v_result.already_granted + 1;
        else
            v_result.granted := v_result.granted + 1;
            v_result.amount := v_result.amount + v_granted.granted + v_granted.rollover;
            v_result.rollover := v_result.rollover + v_granted.rollover;
        end if;
    end loop;
    return v_result;
end;
$$;
revoke all on function public.credit_grant_allowances(text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_grant_allowances(text) to service_role;


-- ---------------------------------------------------------------- numeric totals

alter type public.credit_stats_result
alter attribute spent type numeric,
alter attribute refunded type numeric,
alter attribute net_spent type numeric,
alter attribute credited type numeric,
alter attribute expired type numeric;
alter type public.credit_daily_spend_row
alter attribute spent type numeric,
alter attribute refunded type numeric,
alter attribute net_spent type numeric;
alter type public.credit_model_spend_row
alter attribute spent type numeric,
alter attribute refunded type numeric,
alter attribute net_spent type numeric;
alter type public.credit_user_spend_row
alter attribute spent type numeric,
alter attribute refunded type numeric,
alter attribute net_spent type numeric;
alter type public.credit_top_user_row
alter attribute net_spent type numeric,
alter attribute spent type numeric,
alter attribute refunded type numeric;
drop function credit_private.spend(timestamptz, timestamptz, text);
create function credit_private.spend(p_start timestamptz, p_end timestamptz, p_by text)
returns table (
    key text,
    spent numeric,
    refunded numeric,
    charges bigint,
    refunds bigint,
    users bigint,
    credited numeric,
    expired numeric
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
        coalesce(sum(a.amount) filter (where a.kind = 'charge'), 0),
        coalesce(sum(a.amount) filter (where a.kind = 'refund'), 0),
        count(*) filter (where a.kind = 'charge'),
        count(*) filter (where a.kind = 'refund'),
        count(distinct a.user_id) filter (where a.kind = 'charge'),
        coalesce(sum(a.amount) filter (where a.kind = 'credit'), 0),
        coalesce(sum(a.amount) filter (where a.kind = 'expiry'), 0)
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


-- ---------------------------------------------------------------- version

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205000200'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
