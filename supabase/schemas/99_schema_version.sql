-- ducto: the schema version, the newest migration's; `ducto status` and setup() read it.

create function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205001800'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
