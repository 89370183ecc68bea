-- ducto: holds (reservations). A hold counts against available credits until it is
-- settled with the actual cost (overage kept as a charge, beyond what was held), released,
-- or times out. A settle's overage is bounded: by default at most 9 times the hold (so a
-- settle charges at most 10 times what it held), or what the call allows (p_max_overage);
-- beyond it the settle is refused (DC042), nothing is written and the hold stays as it was.

create function credit_private.lock_reservation(p_reservation_id uuid)
returns public.credit_reservations
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_account_id bigint;
    v_reservation public.credit_reservations;
begin
    select r.account_id into v_account_id
    from public.credit_reservations as r
    where r.id = p_reservation_id;
    if not found then
        perform credit_private.fail(
            'DC031',
            format('reservation %s does not exist', coalesce(p_reservation_id::text, 'null')),
            jsonb_build_object('reservation_id', p_reservation_id)
        );
    end if;
    -- the account first, as everywhere; then the hold, now stable
    perform credit_private.lock_account_by_id(v_account_id);
    select * into v_reservation
    from public.credit_reservations
    where id = p_reservation_id
    for update;
    return v_reservation;
end;
$$;
revoke all on function credit_private.lock_reservation(uuid)
from public, anon, authenticated, service_role;

create function credit_private.release(
    p_reservation public.credit_reservations, p_now timestamptz
)
returns public.credit_release_result
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_result public.credit_release_result;
begin
    -- the caller holds the account lock and has checked the hold is not settled
    perform credit_private.expire_grants(p_reservation.account_id, p_now);
    update public.credit_reservations
    set status = 'released', resolved_at = p_now
    where id = p_reservation.id;
    v_result := row(
        p_reservation.id, p_reservation.user_id, p_reservation.amount, 'released',
        credit_private.available(p_reservation.account_id, p_now), false
    );
    update public.credit_reservations set result = to_jsonb(v_result)
    where id = p_reservation.id;
    return v_result;
end;
$$;
revoke all on function credit_private.release(public.credit_reservations, timestamptz)
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

create function public.credit_reserve_credits(
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

create function public.credit_release_reservation(p_reservation_id uuid)
returns public.credit_release_result
language plpgsql
volatile
-- definer: writes the ledger tables, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_reservation public.credit_reservations;
    v_result public.credit_release_result;
begin
    v_reservation := credit_private.lock_reservation(p_reservation_id);
    if v_reservation.status = 'released' then
        v_result := jsonb_populate_record(
            null::public.credit_release_result, v_reservation.result
        );
        v_result.is_replay := true;
        return v_result;
    end if;
    if v_reservation.status = 'settled' then
        perform credit_private.fail(
            'DC040',
            format('reservation %s was settled and cannot be released', p_reservation_id),
            jsonb_build_object('reservation_id', p_reservation_id, 'status', 'settled')
        );
    end if;
    -- active or timed out: either way the hold stops counting
    return credit_private.release(v_reservation, credit_private.clock());
end;
$$;
revoke all on function public.credit_release_reservation(uuid)
from public, anon, authenticated, service_role;
grant execute on function public.credit_release_reservation(uuid) to service_role;
