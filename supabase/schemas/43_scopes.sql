-- ducto: scoped credits (docs/scopes.md). A grant may carry a scope, a text array of
-- entries `model:<glob>` (`*` any characters, `?` one), `job:<name>` or `feature:<name>`;
-- the grant pays only for a charge that one of its entries matches. A charge's model is its
-- usage's model (or, without usage, its metadata's "model"), its job the fixed job's name
-- (or its metadata's "job"), its feature its metadata's "feature". A charge draws first
-- from the scoped grants that match it, in burn-down order, then from unscoped grants;
-- scoped grants never pay debt. Every function here runs under the caller's account lock.
--
-- The hot path: an account that never had a scoped grant costs the debit nothing (the
-- scoped bit of its credit_accounts.features is clear); one without spendable scoped grants
-- one probe of credit_grants_scoped_idx (credit_private.has_scoped) and nothing else.

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
language plpgsql
stable
set search_path = ''
as $$
begin
    -- one probe of credit_grants_scoped_idx: does the account have scoped credits left?
    -- (plpgsql, not sql: a function with "set" is never inlined, and a sql one would be
    -- planned again on every call of every debit)
    return exists (
        select
        from public.credit_grants as g
        where g.account_id = p_account_id and g.spendable and g.scope is not null
    );
end;
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
    -- its debits probe for scoped credits from now on (the caller holds the account lock)
    perform credit_private.set_feature(p_account_id, 4::smallint, true);
end;
$$;
revoke all on function credit_private.create_scoped_grant(
    bigint, uuid, uuid, text, integer, bigint, timestamptz, text[], timestamptz
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
