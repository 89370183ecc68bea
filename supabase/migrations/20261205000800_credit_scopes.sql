-- ducto: scoped credits (docs/scopes.md).
--
--   * credit_grants.scope (text[], null: usable for any charge): a grant limited to charges
--     of some models (model:<glob>), fixed jobs (job:<name>) or features (feature:<name>).
--     credit_grants_scoped_idx finds an account's spendable scoped grants in one probe.
--   * credit_add_credits gains p_scope (last, default null): dropped and created again
--     with the same grants. The scope is part of a keyed request.
--   * credit_private.debit admits a charge against what it may draw; its draws across
--     grants (credit_private.draw) take the matching scoped grants first;
--     credit_reserve_credits admits a hold against what its metadata's scope may draw.
--   * credit_get_balance answers a breakdown per scope (credit_balance_result.scopes): the
--     function and its type are dropped and created again.
--   * credit_verify_ledger checks that a scoped grant paid only within its scope.

-- ---------------------------------------------------------------- tables

alter table public.credit_grants
add column scope text[] check (scope is null or cardinality(scope) between 1 and 20);
comment on column public.credit_grants.scope is
'Null: pays for any charge. Else the sorted, distinct entries model:<glob>, job:<name>,'
' feature:<name>; the grant pays only for charges one entry matches (docs/scopes.md).';

-- spendable scoped grants: one probe tells a debit whether the account has any
create index credit_grants_scoped_idx
on public.credit_grants (account_id)
where spendable and scope is not null;

-- ---------------------------------------------------------------- result types

drop function public.credit_get_balance(text);
drop type public.credit_balance_result;
create type public.credit_balance_result as (
    user_id text,
    balance bigint,
    held bigint,
    available bigint,
    scopes jsonb
);
comment on type public.credit_balance_result is
'scopes: the credits left per scope, [{"scope": null or [entries], "remaining": n}].
@notNull user_id, balance, held, available, scopes';

-- ---------------------------------------------------------------- functions

create function credit_private.check_scope(p_scope text[])
returns text[]
language plpgsql
-- raises: volatile (see credit_private.fail)
volatile
set search_path = ''
as $$
declare
    v_entry text;
    v_scope text[];
begin
    -- null is unscoped; otherwise 1 to 20 well-formed entries, kept sorted and distinct so
    -- that one scope has one spelling (the balance groups by it, a key's request names it)
    if p_scope is null then
        return null;
    end if;
    if cardinality(p_scope) not between 1 and 20 then
        perform credit_private.fail(
            'DC006',
            format('scope must have 1 to 20 entries (null for credits usable everywhere),'
                || ' got %s', cardinality(p_scope)),
            jsonb_build_object('argument', 'scope')
        );
    end if;
    foreach v_entry in array p_scope loop
        -- a model pattern may use the globs * and ?; a job or feature is one exact name
        if v_entry is null or not (
            v_entry ~ '^model:[A-Za-z0-9._:/@*?+-]{1,200}$'
            or v_entry ~ '^(job|feature):[A-Za-z0-9._:/@+-]{1,128}$'
        ) then
            perform credit_private.fail(
                'DC006',
                format('scope entry %s is not model:<pattern>, job:<name> or feature:<name>',
                    coalesce(quote_literal(left(v_entry, 100)), 'null')),
                jsonb_build_object('argument', 'scope', 'entry', left(v_entry, 300))
            );
        end if;
    end loop;
    select array_agg(distinct s order by s) into v_scope from unnest(p_scope) as s;
    return v_scope;
end;
$$;
revoke all on function credit_private.check_scope(text[])
from public, anon, authenticated, service_role;

create function credit_private.scope_covers(
    p_scope text[], p_usage jsonb, p_job_name text, p_metadata jsonb
)
returns boolean
language sql
immutable
set search_path = ''
as $$
    -- does one entry of the scope match the charge? A model glob becomes a LIKE pattern:
    -- LIKE's own wildcards and its escape are escaped first, then * and ? translated.
    select exists (
        select
        from unnest(p_scope) as s
        where
            (
                s like 'model:%'
                and coalesce(p_usage ->> 'model', p_metadata ->> 'model') like replace(replace(
                    replace(replace(replace(substr(s, 7), '\', '\\'), '%', '\%'), '_', '\_'),
                    '*', '%'), '?', '_')
            )
            or s = 'job:' || coalesce(p_job_name, p_metadata ->> 'job')
            or s = 'feature:' || (p_metadata ->> 'feature')
    );
$$;
revoke all on function credit_private.scope_covers(text[], jsonb, text, jsonb)
from public, anon, authenticated, service_role;
-- credit_verify_ledger (security invoker) matches scopes as the service role
grant execute on function credit_private.scope_covers(text[], jsonb, text, jsonb)
to service_role;

create function credit_private.has_scoped(p_account_id bigint)
returns boolean
language sql
stable
set search_path = ''
as $$
    -- one probe of credit_grants_scoped_idx: does the account have scoped credits left?
    select exists (
        select
        from public.credit_grants as g
        where g.account_id = p_account_id and g.spendable and g.scope is not null
    );
$$;
revoke all on function credit_private.has_scoped(bigint)
from public, anon, authenticated, service_role;

create function credit_private.out_of_scope(
    p_account_id bigint, p_now timestamptz, p_usage jsonb, p_job_name text, p_metadata jsonb
)
returns bigint
language sql
stable
set search_path = ''
as $$
    -- the scoped credits a charge may not draw: what admission leaves out of its available
    select coalesce(sum(g.remaining), 0)::bigint
    from public.credit_grants as g
    where
        g.account_id = p_account_id
        and g.spendable
        and g.scope is not null
        and (g.expires_at is null or g.expires_at > p_now)
        and not credit_private.scope_covers(g.scope, p_usage, p_job_name, p_metadata);
$$;
revoke all on function credit_private.out_of_scope(bigint, timestamptz, jsonb, text, jsonb)
from public, anon, authenticated, service_role;

create function credit_private.create_scoped_grant(
    p_account_id bigint,
    p_transaction_id uuid,
    p_grant_id uuid,
    p_category text,
    p_priority integer,
    p_amount bigint,
    p_expires_at timestamptz,
    p_scope text[],
    p_now timestamptz
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    -- unlike credit_private.create_grant, no debt is paid: debt is what a charge could not
    -- pay, and a scoped grant pays nothing outside its scope
    insert into public.credit_grants (
        id, account_id, user_id, transaction_id, category, priority, amount, remaining,
        expires_at, created_at, scope
    )
    select
        p_grant_id, a.id, a.user_id, p_transaction_id, p_category, p_priority, p_amount,
        p_amount, p_expires_at, p_now, p_scope
    from public.credit_accounts as a
    where a.id = p_account_id;
end;
$$;
revoke all on function credit_private.create_scoped_grant(
    bigint, uuid, uuid, text, integer, bigint, timestamptz, text[], timestamptz
) from public, anon, authenticated, service_role;

create function credit_private.draw(
    p_account_id bigint,
    p_transaction_id uuid,
    p_amount bigint,
    p_now timestamptz,
    p_usage jsonb,
    p_job_name text,
    p_metadata jsonb
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_drawn bigint;
    v_debt bigint;
begin
    -- credit_private.debit's draws across grants: the scoped grants that match the charge
    -- first (43_scopes.sql), then the unscoped ones, each in burn-down order; never a
    -- scoped grant that does not match; what nothing can pay is debt (usage that happened
    -- is never dropped)
    with usable as (
        select
            g.id,
            g.remaining,
            g.scope is null as unscoped,
            g.priority,
            g.expires_at,
            g.created_at
        from public.credit_grants as g
        where
            g.account_id = p_account_id
            and g.spendable
            and (g.expires_at is null or g.expires_at > p_now)
            and (
                g.scope is null
                or credit_private.scope_covers(g.scope, p_usage, p_job_name, p_metadata)
            )
    ),

    ordered as (
        select
            u.id,
            u.remaining,
            sum(u.remaining) over (
                order by u.unscoped, u.priority, u.expires_at nulls last, u.created_at, u.id
            ) - u.remaining as drawn_before
        from usable as u
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
        select p_transaction_id, t.id, t.amount
        from taken as t
        order by t.drawn_before
    )

    select coalesce(sum(t.amount), 0)::bigint into v_drawn from taken as t;

    v_debt := p_amount - v_drawn;
    if v_debt > 0 then
        insert into public.credit_grant_draws (transaction_id, grant_id, amount)
        values (p_transaction_id, null, v_debt);
        update public.credit_accounts set debt = debt + v_debt where id = p_account_id;
    end if;
end;
$$;
revoke all on function credit_private.draw(
    bigint, uuid, bigint, timestamptz, jsonb, text, jsonb
) from public, anon, authenticated, service_role;

create function credit_private.scope_breakdown(p_account_id bigint, p_now timestamptz)
returns jsonb
language sql
stable
set search_path = ''
as $$
    -- credit_get_balance's breakdown: the credits left per scope (scope null: unscoped),
    -- unscoped first, then by scope; expired grants not yet swept are left out
    select coalesce(jsonb_agg(
        jsonb_build_object('scope', b.scope, 'remaining', b.remaining)
        order by b.scope nulls first
    ), '[]')
    from (
        select g.scope, sum(g.remaining)::bigint as remaining
        from public.credit_grants as g
        where
            g.account_id = p_account_id
            and g.spendable
            and (g.expires_at is null or g.expires_at > p_now)
        group by g.scope
    ) as b;
$$;
revoke all on function credit_private.scope_breakdown(bigint, timestamptz)
from public, anon, authenticated, service_role;
-- credit_get_balance is security invoker: a signed-in user reads their own breakdown
grant execute on function credit_private.scope_breakdown(bigint, timestamptz)
to authenticated, service_role;

create function credit_private.verify_scopes()
returns setof public.credit_ledger_issue
language sql
stable
set search_path = ''
as $$
    -- credit_verify_ledger's scope invariants: a scope is well formed (sorted, distinct),
    -- and a scoped grant paid only for charges its scope matches (expiry takes any grant)
    select g.account_id, g.user_id, 'grant ' || g.id || ' scope sorted and distinct',
        (select array_agg(distinct s order by s) from unnest(g.scope) as s)::text,
        g.scope::text
    from public.credit_grants as g
    where
        g.scope is not null
        and g.scope is distinct from (select array_agg(distinct s order by s) from unnest(g.scope) as s)

    union all
    select t.account_id, t.user_id,
        'grant ' || g.id || ' paid only within its scope', g.scope::text,
        format('transaction %s (%s)', t.id, t.type)
    from public.credit_grant_draws as d
    inner join public.credit_grants as g on d.grant_id = g.id
    inner join public.credit_transactions as t on d.transaction_id = t.id
    where
        g.scope is not null
        and d.amount > 0
        and t.type <> 'expiry'
        and not (
            t.type in ('usage', 'fixed_job', 'capture')
            and credit_private.scope_covers(g.scope, t.usage, t.job_name, t.metadata)
        );
$$;
revoke all on function credit_private.verify_scopes()
from public, anon, authenticated, service_role;
-- credit_verify_ledger is security invoker and granted to the service role
grant execute on function credit_private.verify_scopes() to service_role;

create or replace function credit_private.debit(
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
    v_admissible bigint;
    v_row public.credit_transactions;
    v_grant_id uuid;
    v_scoped boolean;
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
    -- scoped credits (43_scopes.sql): one index probe when the account has none
    v_scoped := credit_private.has_scoped(p_account_id);
    if p_floor is not null then
        -- admitted against what the charge may draw (scoped credits outside its scope left
        -- out), down to the floor a credit line lowers, then the account's limits
        -- (42_limits.sql)
        v_admissible := v_available - case when v_scoped then credit_private.out_of_scope(
            p_account_id, p_now, p_usage, p_job_name, p_metadata
        ) else 0 end;
        perform credit_private.admit(
            p_user_id, p_team_id, v_admissible, p_amount,
            credit_private.credit_floor(p_account_id, p_floor, v_admissible - p_amount, p_now)
        );
        perform credit_private.check_limits(
            p_account_id, p_amount, p_usage ->> 'model', false, p_now
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
    -- directly, and note the draw in the same statement (an account with scoped credits
    -- draws them first: credit_private.draw).
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
                    and not v_scoped
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

    -- Otherwise take p_amount across grants
    perform credit_private.draw(
        p_account_id, v_row.id, p_amount, p_now, p_usage, p_job_name, p_metadata
    );
    return v_row;
end;
$$;
revoke all on function credit_private.debit(
    bigint, text, uuid, text, bigint, bigint, timestamptz, jsonb, text, uuid, bigint, jsonb, text,
    uuid
) from public, anon, authenticated, service_role;

drop function public.credit_add_credits(
    text, numeric, text, text, integer, timestamptz, jsonb, text
);
create function public.credit_add_credits(
    p_user_id text,
    p_amount numeric,
    p_tx_type text default 'adjustment',
    p_category text default 'paid',
    p_priority integer default 50,
    p_expires_at timestamptz default null,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null,
    p_scope text[] default null
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
    v_scope text[] := credit_private.check_scope(p_scope);
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
    -- a scoped grant's key names its scope too (an unscoped one's request is as before)
    ) || case when v_scope is not null then jsonb_build_object('scope', v_scope) else '{}' end;
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
    if v_scope is null then
        perform credit_private.create_grant(
            v_account.id, v_transaction_id, v_grant_id, p_category, p_priority, v_amount,
            p_expires_at, v_now
        );
    else
        perform credit_private.create_scoped_grant(
            v_account.id, v_transaction_id, v_grant_id, p_category, p_priority, v_amount,
            p_expires_at, v_scope, v_now
        );
    end if;
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
revoke all on function public.credit_add_credits(
    text, numeric, text, text, integer, timestamptz, jsonb, text, text[]
) from public, anon, authenticated, service_role;
grant execute on function public.credit_add_credits(
    text, numeric, text, text, integer, timestamptz, jsonb, text, text[]
) to service_role;

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

create or replace function public.credit_verify_ledger()
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
    where r.status = 'settled' and r.settled_amount <> coalesce(-t.amount, 0)

    union all
    select s.account_id, s.user_id, s.check_name, s.expected, s.actual
    from credit_private.verify_scopes() as s;
$$;
revoke all on function public.credit_verify_ledger()
from public, anon, authenticated, service_role;
grant execute on function public.credit_verify_ledger() to service_role;

-- ---------------------------------------------------------------- schema version

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205000800'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
