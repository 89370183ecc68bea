-- ducto: the installed schema version, so clients can tell whether the database has what
-- they need. Every later migration that changes the ledger replaces this function with its
-- own version.

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261127000400'::text;
$$;

revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
