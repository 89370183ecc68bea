-- ducto: accounts and the journal. An operation locks its account row first; the journal
-- writer changes the balance and appends the journal row in one statement.

create function credit_private.lock_account(p_user_id text, p_create boolean)
returns public.credit_accounts
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_account public.credit_accounts;
begin
    select * into v_account
    from public.credit_accounts
    where user_id = p_user_id
    for update;
    if not found and p_create then
        -- two first operations of a new user race here: one inserts, the other waits
        insert into public.credit_accounts (user_id) values (p_user_id)
        on conflict (user_id) do nothing;
        select * into v_account
        from public.credit_accounts
        where user_id = p_user_id
        for update;
    end if;
    return v_account;
end;
$$;
revoke all on function credit_private.lock_account(text, boolean)
from public, anon, authenticated, service_role;

create function credit_private.lock_account_by_id(p_account_id bigint)
returns public.credit_accounts
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_account public.credit_accounts;
begin
    select * into v_account from public.credit_accounts where id = p_account_id for update;
    return v_account;
end;
$$;
revoke all on function credit_private.lock_account_by_id(bigint)
from public, anon, authenticated, service_role;

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
    -- balance.low / balance.depleted (41_events.sql), on the rows that lower a balance
    if v_row.amount < 0 then
        perform credit_private.balance_events(v_row);
    end if;
    -- auto top-up (46_auto_topup.sql): one primary-key probe of its rules per debit row
    if v_row.amount < 0 and exists (
        select 1 from public.credit_auto_topups as r
        where r.account_id = v_row.account_id and r.enabled and v_row.balance_after < r.threshold
    ) then
        perform credit_private.request_topup(v_row.account_id, v_row.balance_after, p_now, v_row.id);
    end if;
    return v_row;
end;
$$;
revoke all on function credit_private.append_transaction(
    bigint, text, bigint, timestamptz, jsonb, text, uuid, uuid, uuid, bigint, jsonb, text, text,
    uuid, bigint
) from public, anon, authenticated, service_role;

create function public.credit_get_balance(p_user_id text default null)
returns public.credit_balance_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    -- no user id: a signed-in user's own
    v_user_id text := credit_private.reader_id(p_user_id, 'balance');
    v_result public.credit_balance_result;
begin
    select
        v_user_id,
        -- expired grants not yet swept are not credits any more
        coalesce(a.balance, 0) - coalesce((
            select sum(g.remaining)::bigint
            from public.credit_grants as g
            where g.account_id = a.id and g.spendable and g.expires_at <= v_now
        ), 0),
        coalesce((
            select sum(r.amount)::bigint
            from public.credit_reservations as r
            where r.account_id = a.id and r.status = 'active' and r.expires_at > v_now
        ), 0)
    into v_result.user_id, v_result.balance, v_result.held
    from (select 1) as one
    left join public.credit_accounts as a on a.user_id = v_user_id;
    v_result.available := v_result.balance - v_result.held;
    v_result.scopes := coalesce(credit_private.scope_breakdown(
        (select a.id from public.credit_accounts as a where a.user_id = v_user_id), v_now
    ), '[]');
    return v_result;
end;
$$;
revoke all on function public.credit_get_balance(text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_get_balance(text) to authenticated, service_role;
