-- ducto: idempotency. A keyed operation happens at most once per account and key, forever:
-- the same request again is a replay of the first result, another request under the same
-- key is refused (DC020) and writes nothing.
--
-- Where a key is recorded:
--   * a one-call debit (credit_deduct_credits, _usage, _fixed) that journals a row records
--     its key on that row: idempotency_key, request_hash (a fingerprint of the request)
--     and available_after; its result is rebuilt from the row. No second row per charge.
--   * every other keyed operation (and a debit priced at 0 credits, which journals
--     nothing) records its request and result in credit_idempotency_keys.
-- find_replay looks in both, so a key is unique per account across every operation; on a
-- miss it looks in the keys of the archived months (88_archive.sql), which refuse a replay.
-- Callers hold the account lock, so a concurrent first use of the key has committed.

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

create function credit_private.find_replay(
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
    v_archived jsonb;
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
        -- a one-call debit of an archived month (88_archive.sql): its row, which would
        -- rebuild the result, has left the database
        select k.operation, k.request_hash = credit_private.request_hash(p_operation, p_request),
            jsonb_build_object('transaction_id', k.transaction_id, 'month', k.month)
        into v_operation, v_same, v_archived
        from credit_private.archived_keys as k
        where k.account_id = p_account_id and k.idempotency_key = p_key;
        if not found then
            return null;
        end if;
        if v_same then
            perform credit_private.fail_archived(
                format('the result of idempotency key %s',
                    quote_literal(split_part(p_key, chr(31), -1))),
                (v_archived ->> 'month')::timestamptz,
                jsonb_build_object(
                    'idempotency_key', split_part(p_key, chr(31), -1),
                    'transaction_id', v_archived -> 'transaction_id'
                )
            );
        end if;
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

create function credit_private.remember(
    p_account_id bigint,
    p_key text,
    p_operation text,
    p_request jsonb,
    p_result jsonb,
    p_now timestamptz
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    if p_key is null then
        return;
    end if;
    insert into public.credit_idempotency_keys (
        account_id, idempotency_key, operation, request, result, created_at
    ) values (p_account_id, p_key, p_operation, p_request, p_result, p_now);
end;
$$;
revoke all on function credit_private.remember(
    bigint, text, text, jsonb, jsonb, timestamptz
) from public, anon, authenticated, service_role;
