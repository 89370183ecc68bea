-- ducto: the debit's probe for scoped credits is planned once per session
-- (docs/scopes.md, "Cost").
--
--   * credit_private.has_scoped, called by every debit, was a sql function: one with
--     "set search_path" is never inlined, so it was planned again on every call (about a
--     tenth of a priced charge's time in the database). It is plpgsql now, whose plan is
--     cached; what it answers is unchanged.

create or replace function credit_private.has_scoped(p_account_id bigint)
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

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205001100'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
