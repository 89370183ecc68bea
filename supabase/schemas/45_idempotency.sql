-- ducto: idempotency. A keyed operation happens at most once per account and key, forever:
-- the same request again is a replay of the first result, another request under the same
-- key is refused (DC020) and writes nothing.
--
-- Where a key is recorded:
--   * a one-call debit (credit_deduct_credits, _usage, _fixed) that journals a row records
--     its key on that row: idempotency_key, request_hash (a fingerprint of the request)
--     and available_after; its result is rebuilt from the row. credit_debit_keys points
--     from the key to the row, with the request's fingerprint: the journal is partitioned
--     by month, the key table is not, and it stays when the row's month is archived (a
--     replay is then DC132, another request under the key DC020).
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
    v_transaction_id uuid;
    v_operation text;
    v_result jsonb;
    v_same boolean;
begin
    if p_key is null or p_account_id is null then
        return null;
    end if;
    -- one probe of each key table (a key is in at most one of them). The journal is read
    -- only for a key found there: a statement that may read the partitioned journal locks
    -- every partition (and index) of it, even when it reads none.
    select
        k.transaction_id,
        k.operation,
        k.request_hash = credit_private.request_hash(p_operation, p_request)
    into v_transaction_id, v_operation, v_same
    from public.credit_debit_keys as k
    where k.account_id = p_account_id and k.idempotency_key = p_key;
    if found then
        select jsonb_build_object(
            'transaction_id', t.id,
            'user_id', t.user_id,
            'amount', -t.amount,
            'overage', 0,
            'balance_after', t.balance_after,
            'available_after', t.available_after,
            'created_at', t.created_at,
            'is_replay', false,
            'pricing_version', t.pricing_version
        )
        into v_result
        from public.credit_transactions as t
        where t.id = v_transaction_id and t.account_id = p_account_id;
        if v_result is null and v_same then
            -- the row that would rebuild the result is in an archived month (88_archive.sql)
            perform credit_private.fail_archived(
                format('the result of idempotency key %s',
                    quote_literal(split_part(p_key, chr(31), -1))),
                date_trunc('month', credit_private.uuid_time(v_transaction_id), 'UTC'),
                jsonb_build_object(
                    'idempotency_key', split_part(p_key, chr(31), -1),
                    'transaction_id', v_transaction_id
                )
            );
        end if;
    else
        select k.operation, k.operation = p_operation and k.request = p_request, k.result
        into v_operation, v_same, v_result
        from public.credit_idempotency_keys as k
        where k.account_id = p_account_id and k.idempotency_key = p_key;
    end if;
    if v_operation is null then
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
