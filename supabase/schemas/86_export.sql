-- ducto: the journal's export. Every journal row created in a window, page by page, for a
-- warehouse, an auditor or `ducto export journal` (docs/statements.md).
--
-- Keyset paging on the journal's unique (account_id, seq) index: a page is the rows after
-- (p_after_account, p_after_seq) in (account_id, seq) order, so the next page starts
-- after the last row of this one and every page costs the same, however deep. A journal
-- row never changes, so no row is read twice; an export of a window that has closed (its
-- end in the past) misses none, since later rows are created after its end. Service role
-- only: an export reads every account.

-- ---------------------------------------------------------------- result types

create type public.credit_journal_row as (
    id uuid,
    account_id bigint,
    seq bigint,
    user_id text,
    type text,
    amount bigint,
    balance_after bigint,
    grant_id uuid,
    reservation_id uuid,
    refund_of uuid,
    idempotency_key text,
    metadata jsonb,
    created_at timestamptz,
    pricing_version bigint,
    usage jsonb,
    model text,
    job_name text,
    attributed_user_id text
);
comment on type public.credit_journal_row is
'credit_export_journal: one journal row (credit_transactions without its internal key record'
' columns), as the journal holds it.
@notNull id, account_id, seq, user_id, type, amount, balance_after, metadata, created_at';

-- ---------------------------------------------------------------- functions

create function public.credit_export_journal(
    p_start timestamptz,
    p_end timestamptz,
    p_user_id text default null,
    p_after_account bigint default null,
    p_after_seq bigint default null,
    p_limit integer default 1000
)
returns setof public.credit_journal_row
language plpgsql
stable
security invoker
set search_path = ''
set plan_cache_mode = force_custom_plan
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
declare
    v_first_id uuid;
    v_end_id uuid;
begin
    perform credit_private.check_window(p_start, p_end);
    if p_limit is null or p_limit < 1 or p_limit > 10000 then
        perform credit_private.fail(
            'DC006',
            format('limit must be from 1 to 10000, got %s', coalesce(p_limit::text, 'null')),
            jsonb_build_object('argument', 'limit')
        );
    end if;
    -- a cursor is both halves of the last row's key, or none (the first page)
    if (p_after_account is null) <> (p_after_seq is null) then
        perform credit_private.fail(
            'DC006',
            format('the cursor must be an account and a seq, or neither, got (%s, %s)',
                coalesce(p_after_account::text, 'null'), coalesce(p_after_seq::text, 'null')),
            jsonb_build_object('argument', 'cursor')
        );
    end if;
    if p_user_id is not null then
        perform credit_private.check_user_id(p_user_id);
    end if;
    -- the window in ids (each carries its created_at's millisecond), as constants of the
    -- plan: only the partitions of its months are read
    v_first_id := credit_private.uuid_floor(p_start);
    v_end_id := credit_private.uuid_floor(p_end + interval '1 millisecond');
    -- the row comparison walks the (account_id, seq) index from the cursor, within the
    -- user's account when one is named (planned per call, so the index range is exact);
    -- the window filters the rows it meets
    return query
    select
        t.id, t.account_id, t.seq, t.user_id, t.type, t.amount, t.balance_after, t.grant_id,
        t.reservation_id, t.refund_of, t.idempotency_key, t.metadata, t.created_at,
        t.pricing_version, t.usage, t.model, t.job_name, t.attributed_user_id
    from public.credit_transactions as t
    where
        (p_after_account is null or (t.account_id, t.seq) > (p_after_account, p_after_seq))
        and t.created_at >= p_start and t.created_at < p_end
        and t.id >= v_first_id and t.id < v_end_id
        and (p_user_id is null or t.account_id = (
            select a.id from public.credit_accounts as a where a.user_id = p_user_id
        ))
    order by t.account_id, t.seq
    limit p_limit;
end;
$$;
revoke all on function public.credit_export_journal(
    timestamptz, timestamptz, text, bigint, bigint, integer
) from public, anon, authenticated, service_role;
grant execute on function public.credit_export_journal(
    timestamptz, timestamptz, text, bigint, bigint, integer
) to service_role;
