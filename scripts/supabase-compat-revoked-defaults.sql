-- Supabase's "secure by default" state of schema public, for tests.
--
-- Apply after scripts/supabase-compat.sql (which sets the legacy auto-expose
-- defaults) to turn them off, exactly as the Supabase CLI does with
-- `[api] auto_expose_new_tables = false`: new tables, sequences and functions
-- that postgres creates in public are no longer granted to the API roles.
-- PUBLIC keeps PostgreSQL's own default EXECUTE on new functions, as on
-- Supabase. Migrations must grant (and revoke) explicitly per object so they
-- behave the same under both states.
--
-- Usage: psql -X -v ON_ERROR_STOP=1 -f scripts/supabase-compat-revoked-defaults.sql "$URL"

alter default privileges for role postgres in schema public
    revoke select, insert, update, delete on tables from anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    revoke usage, select on sequences from anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    revoke execute on functions from anon, authenticated, service_role;
