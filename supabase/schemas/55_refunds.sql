-- ducto: refunds. A refund gives credits back to the grants the charge drew from, pays
-- back debt the charge made first, and never refunds more than was charged.

create function credit_private.restore(
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

create function public.credit_refund_transaction(
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
    v_archived timestamptz;
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
        -- an id a row had before 0.7.0 gave it one that carries its month
        select t.* into v_original
        from credit_private.legacy_transaction_ids as m
        inner join public.credit_transactions as t on m.id = t.id and m.account_id = t.account_id
        where m.legacy_id = p_transaction_id;
    end if;
    if not found then
        -- a row of an archived month (88_archive.sql), or an old id of one
        v_archived := credit_private.archived_month_of(coalesce(
            (select m.id from credit_private.legacy_transaction_ids as m
            where m.legacy_id = p_transaction_id limit 1),
            p_transaction_id
        ));
        if v_archived is not null and p_idempotency_key is not null then
            -- a refund's key replays forever: its result is stored whole, and its request
            -- names the charge (the account is not known without the charge's row)
            select k.request, k.result into v_request, v_replay
            from public.credit_idempotency_keys as k
            where
                k.operation = 'refund_transaction' and k.idempotency_key = p_idempotency_key
                and k.request ->> 'transaction_id' = p_transaction_id::text;
            if found and v_request = jsonb_build_object(
                'transaction_id', p_transaction_id, 'amount', v_requested, 'reason', p_reason,
                'metadata', v_metadata
            ) then
                v_result := jsonb_populate_record(null::public.credit_refund_result, v_replay);
                v_result.is_replay := true;
                return v_result;
            end if;
        end if;
        if v_archived is not null then
            perform credit_private.fail_archived(
                format('transaction %s', p_transaction_id), v_archived,
                jsonb_build_object('transaction_id', p_transaction_id)
            );
        end if;
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
    where t.refund_of = v_original.id;
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
        p_idempotency_key, p_refund_of => v_original.id,
        -- a refund is attributed to whoever the refunded row was, so a member's net spend
        -- (their limit, spend_by_user) counts refunds of their debits
        p_attributed_user_id => v_original.attributed_user_id
    )).id;
    perform credit_private.restore(v_account.id, v_transaction_id, v_original.id, v_amount, v_now);
    perform credit_private.emit(v_account.id, v_account.user_id, 'charge.refunded',
        jsonb_build_object('transaction_id', p_transaction_id,
            'refund_transaction_id', v_transaction_id, 'amount', v_amount, 'reason', p_reason));
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
