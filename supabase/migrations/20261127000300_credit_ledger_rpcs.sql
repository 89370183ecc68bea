-- ducto: the ledger RPCs, called by every client (psycopg, PostgREST, edge functions).
--
-- Write RPCs are SECURITY DEFINER because no API role may write a ledger table directly,
-- not even service_role: the function must run as its owner to write. They live in
-- `public` because PostgREST calls them there, pin search_path = '' and qualify every
-- name, and only service_role may execute them, so splinter's lints 0028/0029 (a definer
-- function executable by anon/authenticated) cannot fire. Read RPCs are SECURITY INVOKER
-- and rely on row-level security.
--
-- Errors (SQLSTATE, PostgREST answers HTTP 400 for all of them; detail is JSON):
--   DC001 invalid amount        DC002 invalid user id       DC003 invalid metadata
--   DC004 invalid idem. key     DC005 invalid expiry        DC006 invalid argument
--   DC010 insufficient credits  DC020 idempotency conflict
--   DC030 transaction not found DC031 reservation not found
--   DC040 reservation not active (released or settled)
--   DC041 reservation already settled with another amount
--   DC050 refund exceeds what is refundable
--   DC051 transaction not refundable
--   DC900 journal is append-only

-- ---------------------------------------------------------------- add credits

create function public.credit_add_credits(
    p_user_id text,
    p_amount numeric,
    p_tx_type text default 'adjustment',
    p_category text default 'paid',
    p_priority integer default 50,
    p_expires_at timestamptz default null,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
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
    v_grant_id uuid := gen_random_uuid();
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
    );
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
    perform credit_private.create_grant(
        v_account.id, v_transaction_id, v_grant_id, p_category, p_priority, v_amount,
        p_expires_at, v_now
    );
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

-- ---------------------------------------------------------------- deduct

create function public.credit_deduct_credits(
    p_user_id text,
    p_amount numeric,
    p_min_balance numeric default 0,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_deduct_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_amount bigint := credit_private.whole(p_amount, 'amount', 1);
    v_min_balance bigint := credit_private.whole(p_min_balance, 'min_balance', 0);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_user_id text := credit_private.check_user_id(p_user_id);
    v_key text := credit_private.check_key(p_idempotency_key);
begin
    return credit_private.deduct(
        v_user_id, 'usage', v_amount, v_min_balance, v_metadata, v_key,
        -- what a replay must match; only needed with a key
        case when v_key is not null then jsonb_build_object(
            'amount', v_amount, 'min_balance', v_min_balance, 'metadata', v_metadata
        ) end
    );
end;
$$;

-- ---------------------------------------------------------------- reserve

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
        p_user_id, coalesce(credit_private.available(v_account.id, v_now), 0), v_amount,
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

-- ---------------------------------------------------------------- settle

create function public.credit_settle_reservation(
    p_reservation_id uuid,
    p_actual_amount numeric,
    p_metadata jsonb default '{}'
)
returns public.credit_deduct_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_actual bigint := credit_private.whole(p_actual_amount, 'actual_amount', 0);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_reservation public.credit_reservations;
    v_transaction_id uuid;
    v_balance_after bigint;
    v_result public.credit_deduct_result;
begin
    v_reservation := credit_private.lock_reservation(p_reservation_id);
    if v_reservation.status = 'settled' then
        -- settling twice with the same amount is a replay; another amount is a conflict
        if v_reservation.settled_amount = v_actual then
            v_result := jsonb_populate_record(
                null::public.credit_deduct_result, v_reservation.result
            );
            v_result.is_replay := true;
            return v_result;
        end if;
        perform credit_private.fail(
            'DC041',
            format('reservation %s was already settled with %s credits, not %s',
                p_reservation_id, v_reservation.settled_amount, v_actual),
            jsonb_build_object(
                'reservation_id', p_reservation_id,
                'settled_amount', v_reservation.settled_amount,
                'actual_amount', v_actual
            )
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
    perform credit_private.expire_grants(v_reservation.account_id, v_now);
    if v_actual > 0 then
        v_transaction_id := (credit_private.append_transaction(
            v_reservation.account_id, 'capture', -v_actual, v_now,
            v_reservation.metadata || v_metadata,
            p_reservation_id => p_reservation_id
        )).id;
        perform credit_private.draw(
            v_reservation.account_id, v_transaction_id, v_actual, v_now
        );
    end if;
    select a.balance into v_balance_after
    from public.credit_accounts as a
    where a.id = v_reservation.account_id;

    v_result := row(
        v_transaction_id, p_reservation_id, v_reservation.user_id, v_actual,
        greatest(v_actual - v_reservation.amount, 0), v_balance_after, null::bigint, v_now,
        false
    );
    update public.credit_reservations
    set
        status = 'settled', settled_amount = v_actual, transaction_id = v_transaction_id,
        resolved_at = v_now
    where id = p_reservation_id;
    v_result.available_after := credit_private.available(v_reservation.account_id, v_now);
    update public.credit_reservations set result = to_jsonb(v_result)
    where id = p_reservation_id;
    return v_result;
end;
$$;

-- ---------------------------------------------------------------- release

create function public.credit_release_reservation(p_reservation_id uuid)
returns public.credit_release_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
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
    perform credit_private.expire_grants(v_reservation.account_id, v_now);
    update public.credit_reservations
    set status = 'released', resolved_at = v_now
    where id = p_reservation_id;
    v_result := row(
        p_reservation_id, v_reservation.user_id, v_reservation.amount, 'released',
        credit_private.available(v_reservation.account_id, v_now), false
    );
    update public.credit_reservations set result = to_jsonb(v_result)
    where id = p_reservation_id;
    return v_result;
end;
$$;

-- ---------------------------------------------------------------- refund

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
        p_idempotency_key, p_refund_of => p_transaction_id
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

-- ---------------------------------------------------------------- balance

create function public.credit_get_balance(p_user_id text)
returns public.credit_balance_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_result public.credit_balance_result;
begin
    perform credit_private.check_user_id(p_user_id);
    -- row-level security would answer zeros for someone else's account; say no instead
    if current_user = 'authenticated' and p_user_id is distinct from (select auth.uid())::text then
        raise exception 'a signed-in user may read only their own balance'
            using errcode = '42501';
    end if;
    select
        p_user_id,
        -- expired grants not yet swept are not credits any more
        coalesce(a.balance, 0) - coalesce((
            select sum(g.remaining)::bigint
            from public.credit_grants as g
            where g.account_id = a.id and g.remaining > 0 and g.expires_at <= v_now
        ), 0),
        coalesce((
            select sum(r.amount)::bigint
            from public.credit_reservations as r
            where r.account_id = a.id and r.status = 'active' and r.expires_at > v_now
        ), 0)
    into v_result.user_id, v_result.balance, v_result.held
    from (select 1) as one
    left join public.credit_accounts as a on a.user_id = p_user_id;
    v_result.available := v_result.balance - v_result.held;
    return v_result;
end;
$$;

-- ---------------------------------------------------------------- sweep

create function public.credit_sweep_expired(p_dry_run boolean default false)
returns public.credit_sweep_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_account_id bigint;
    v_expired record;
    v_holds integer;
    v_hold_amount bigint;
    v_result public.credit_sweep_result := row(
        coalesce(p_dry_run, false), 0, 0, 0::bigint, 0, 0::bigint
    );
begin
    if v_result.dry_run then
        select count(*)::integer, coalesce(sum(g.remaining), 0)::bigint
        into v_result.expired_grants, v_result.expired_amount
        from public.credit_grants as g
        where g.remaining > 0 and g.expires_at <= v_now;
        select count(*)::integer, coalesce(sum(r.amount), 0)::bigint
        into v_result.expired_holds, v_result.expired_hold_amount
        from public.credit_reservations as r
        where r.status = 'active' and r.expires_at <= v_now;
        select count(*)::integer into v_result.accounts
        from credit_private.sweep_candidates(v_now);
        return v_result;
    end if;

    -- one account at a time, in id order: no deadlock with other sweeps or operations
    for v_account_id in select c.account_id from credit_private.sweep_candidates(v_now) as c loop
        perform credit_private.lock_account_by_id(v_account_id);
        v_expired := credit_private.expire_grants(v_account_id, v_now);
        with timed_out as (
            update public.credit_reservations as r
            set status = 'expired', resolved_at = v_now
            where r.account_id = v_account_id and r.status = 'active' and r.expires_at <= v_now
            returning r.amount
        )
        select count(*)::integer, coalesce(sum(t.amount), 0)::bigint into v_holds, v_hold_amount
        from timed_out as t;
        v_result.accounts := v_result.accounts + 1;
        v_result.expired_grants := v_result.expired_grants + v_expired.grants;
        v_result.expired_amount := v_result.expired_amount + v_expired.amount;
        v_result.expired_holds := v_result.expired_holds + v_holds;
        v_result.expired_hold_amount := v_result.expired_hold_amount + v_hold_amount;
    end loop;
    return v_result;
end;
$$;

-- ---------------------------------------------------------------- verify

create function public.credit_verify_ledger()
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
    left join public.credit_grant_draws as d on g.id = d.grant_id
    group by g.id
    having g.remaining <> g.amount - coalesce(sum(d.amount), 0)

    union all
    select t.account_id, t.user_id, 'transaction ' || t.id || ' amount = its draws',
        (-t.amount)::text, coalesce(sum(d.amount), 0)::text
    from public.credit_transactions as t
    left join public.credit_grant_draws as d on t.id = d.transaction_id
    where t.type in ('usage', 'fixed_job', 'capture', 'expiry')
    group by t.id
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
        where r.type in ('usage', 'fixed_job', 'capture', 'refund')
        union all
        select r.refund_of, null, -g.amount
        from public.credit_grants as g
        inner join public.credit_transactions as r on g.transaction_id = r.id
        where r.type = 'refund'
    ) as m on t.id = m.original
    group by t.id, m.grant_id
    having sum(m.amount) < 0

    union all
    select o.account_id, o.user_id, 'refunds of ' || o.id || ' <= charged',
        (-o.amount)::text, sum(r.amount)::text
    from public.credit_transactions as o
    inner join public.credit_transactions as r on o.id = r.refund_of
    group by o.id
    having sum(r.amount) > -o.amount

    union all
    select r.account_id, r.user_id, 'reservation ' || r.id || ' settled = its capture',
        r.settled_amount::text, coalesce(-t.amount, 0)::text
    from public.credit_reservations as r
    left join public.credit_transactions as t on r.transaction_id = t.id
    where r.status = 'settled' and r.settled_amount <> coalesce(-t.amount, 0);
$$;

-- ---------------------------------------------------------------- privileges

revoke all on function public.credit_add_credits(
    text, numeric, text, text, integer, timestamptz, jsonb, text
) from public, anon, authenticated, service_role;
revoke all on function public.credit_deduct_credits(text, numeric, numeric, jsonb, text)
from public, anon, authenticated, service_role;
revoke all on function public.credit_reserve_credits(
    text, numeric, text, numeric, integer, jsonb, text
) from public, anon, authenticated, service_role;
revoke all on function public.credit_settle_reservation(uuid, numeric, jsonb)
from public, anon, authenticated, service_role;
revoke all on function public.credit_release_reservation(uuid)
from public, anon, authenticated, service_role;
revoke all on function public.credit_refund_transaction(uuid, numeric, text, jsonb, text)
from public, anon, authenticated, service_role;
revoke all on function public.credit_get_balance(text)
from public, anon, authenticated, service_role;
revoke all on function public.credit_sweep_expired(boolean)
from public, anon, authenticated, service_role;
revoke all on function public.credit_verify_ledger()
from public, anon, authenticated, service_role;

grant execute on function public.credit_add_credits(
    text, numeric, text, text, integer, timestamptz, jsonb, text
) to service_role;
grant execute on function public.credit_deduct_credits(text, numeric, numeric, jsonb, text)
to service_role;
grant execute on function public.credit_reserve_credits(
    text, numeric, text, numeric, integer, jsonb, text
) to service_role;
grant execute on function public.credit_settle_reservation(uuid, numeric, jsonb)
to service_role;
grant execute on function public.credit_release_reservation(uuid) to service_role;
grant execute on function public.credit_refund_transaction(uuid, numeric, text, jsonb, text)
to service_role;
grant execute on function public.credit_get_balance(text) to authenticated, service_role;
grant execute on function public.credit_sweep_expired(boolean) to service_role;
grant execute on function public.credit_verify_ledger() to service_role;
