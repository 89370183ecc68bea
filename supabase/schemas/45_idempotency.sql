-- ducto: idempotency. A keyed operation remembers its request and its result, per account
-- and forever: the same request again is a replay of the first result, another request
-- under the same key is refused (DC020).

create function credit_private.find_replay(
    p_account_id bigint, p_key text, p_operation text, p_request jsonb
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
    v_stored public.credit_idempotency_keys;
begin
    if p_key is null or p_account_id is null then
        return null;
    end if;
    -- callers hold the account lock, so a concurrent first use of the key has committed
    select * into v_stored
    from public.credit_idempotency_keys
    where account_id = p_account_id and idempotency_key = p_key;
    if not found then
        return null;
    end if;
    if v_stored.operation <> p_operation or v_stored.request <> p_request then
        perform credit_private.fail(
            'DC020',
            format('idempotency key %s was already used for %s with other parameters',
                quote_literal(p_key), v_stored.operation),
            jsonb_build_object(
                'idempotency_key', p_key,
                'operation', v_stored.operation,
                'original_request', v_stored.request,
                'request', p_request
            ),
            'use a new idempotency key for a different operation'
        );
    end if;
    return v_stored.result;
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
