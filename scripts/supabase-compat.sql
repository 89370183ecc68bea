-- Supabase compatibility bootstrap for a plain PostgreSQL 15.
--
-- Gives a throw-away cluster what every Supabase project already has, so that
-- ducto's migrations, PostgREST and `supabase db advisors` behave as they do on
-- a hosted project. It is NOT a migration: it is applied by a superuser, per
-- database, before `supabase db push`, and only creates what is missing, so
-- running it again (or on a database that already has these objects) is
-- harmless.
--
-- What it provides (see ../shared/facts/supabase.md, sections 1.1 to 1.5):
--   roles        anon, authenticated, service_role (BYPASSRLS), authenticator
--   timeouts     anon 3s, authenticated 8s, authenticator 8s + lock 8s
--   schemas      extensions (pgcrypto, uuid-ossp where available), auth, graphql_public
--   auth.*       uid(), role(), email(), jwt() reading request.jwt.claims
--   reload       event triggers sending NOTIFY pgrst, 'reload schema' on DDL
--   defaults     Supabase's legacy default privileges on schema public
--
-- The default privileges are the one switchable part: Supabase projects exist
-- both with them ("auto-expose", the legacy state) and without them. Apply
-- scripts/supabase-compat-revoked-defaults.sql after this file to get the
-- revoked state; migrations must be correct in both.
--
-- The authenticator password is set by scripts/local-stack, not here.
--
-- Usage: psql -X -v ON_ERROR_STOP=1 -f scripts/supabase-compat.sql "$DATABASE_URL"
-- The wheel ships this file as ducto/supabase-compat.sql: ducto.embedded applies it to
-- its fresh cluster before setup().

set client_min_messages = warning;

-- ---------------------------------------------------------------------------
-- Roles (cluster-wide)
-- ---------------------------------------------------------------------------

do $roles$
begin
    if not exists (select from pg_catalog.pg_roles where rolname = 'anon') then
        create role anon nologin inherit;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'authenticated') then
        create role authenticated nologin inherit;
    end if;
    if not exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
        create role service_role nologin inherit bypassrls;
    end if;
    -- PostgREST logs in as authenticator and switches to the role named in
    -- the JWT; noinherit so it has no privileges of its own.
    if not exists (select from pg_catalog.pg_roles where rolname = 'authenticator') then
        create role authenticator login noinherit;
    end if;
end
$roles$;

-- Memberships: authenticator may become any API role; postgres (the role the
-- CLI runs migrations as) is a member of all three, as on Supabase.
do $members$
declare
    api_role text;
    member_role text;
begin
    foreach member_role in array array['authenticator', 'postgres'] loop
        foreach api_role in array array['anon', 'authenticated', 'service_role'] loop
            -- pg_auth_members, not pg_has_role(): a superuser "has" every role
            -- without being a member of it.
            if not exists (
                select
                from pg_catalog.pg_auth_members as m
                where m.roleid = api_role::regrole and m.member = member_role::regrole
            ) then
                execute pg_catalog.format('grant %I to %I', api_role, member_role);
            end if;
        end loop;
    end loop;
end
$members$;

-- Role settings are plain upserts: setting them again changes nothing.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
alter role authenticator set lock_timeout = '8s';
alter role postgres set search_path = "$user", public, extensions;

-- ---------------------------------------------------------------------------
-- Schema: extensions
-- ---------------------------------------------------------------------------

create schema if not exists extensions;
-- Only where the server ships them: ducto's migrations use neither, and the embedded
-- server (ducto.embedded) is built without PostgreSQL's contrib modules.
do $extensions$
declare
    ext text;
begin
    foreach ext in array array['pgcrypto', 'uuid-ossp'] loop
        if exists (select from pg_catalog.pg_available_extensions where name = ext) then
            execute pg_catalog.format('create extension if not exists %I with schema extensions', ext);
        end if;
    end loop;
end
$extensions$;
grant usage on schema extensions to postgres, anon, authenticated, service_role;

-- ---------------------------------------------------------------------------
-- Schema: auth (on Supabase owned by the Auth service; here a minimal stand-in)
-- ---------------------------------------------------------------------------

create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

-- PostgREST 12 sets only the JSON GUC request.jwt.claims; the per-claim GUCs
-- (request.jwt.claim.sub, ...) are still read first, as Supabase's Auth does.
do $auth_functions$
begin
    if pg_catalog.to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid
        language sql stable
        as $fn$
            select coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $fn$;
        comment on function auth.uid() is
            'Deprecated. Use auth.jwt() -> ''sub'' instead. (compat bootstrap)';
    end if;

    if pg_catalog.to_regprocedure('auth.role()') is null then
        create function auth.role() returns text
        language sql stable
        as $fn$
            select coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
            )::text
        $fn$;
        comment on function auth.role() is
            'Deprecated. Use auth.jwt() -> ''role'' instead. (compat bootstrap)';
    end if;

    if pg_catalog.to_regprocedure('auth.email()') is null then
        create function auth.email() returns text
        language sql stable
        as $fn$
            select coalesce(
                nullif(current_setting('request.jwt.claim.email', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
            )::text
        $fn$;
        comment on function auth.email() is
            'Deprecated. Use auth.jwt() -> ''email'' instead. (compat bootstrap)';
    end if;

    if pg_catalog.to_regprocedure('auth.jwt()') is null then
        create function auth.jwt() returns jsonb
        language sql stable
        as $fn$
            select coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $fn$;
        comment on function auth.jwt() is
            'The claims of the request''s JWT, as PostgREST set them. (compat bootstrap)';
    end if;
end
$auth_functions$;

-- ---------------------------------------------------------------------------
-- Schema: graphql_public (listed in PostgREST's db-schemas, as on Supabase)
-- ---------------------------------------------------------------------------

create schema if not exists graphql_public;
grant usage on schema graphql_public to anon, authenticated, service_role;

-- ---------------------------------------------------------------------------
-- Schema: public
-- ---------------------------------------------------------------------------

grant usage on schema public to postgres, anon, authenticated, service_role;

-- The exposed schemas, readable by splinter (`supabase db advisors`): several
-- lints read current_setting('pgrst.db_schemas') and silently find nothing
-- when it is unset. Same value as PostgREST's db-schemas.
do $db_schemas$
begin
    execute pg_catalog.format(
        'alter database %I set pgrst.db_schemas = %L',
        pg_catalog.current_database(),
        'public,graphql_public'
    );
end
$db_schemas$;

-- ---------------------------------------------------------------------------
-- PostgREST schema cache reload on DDL
-- ---------------------------------------------------------------------------
-- PostgREST caches the schema; a function created after it started answers
-- 404 until it hears NOTIFY pgrst, 'reload schema'. These event triggers send
-- it after every DDL command and every drop outside temporary schemas (a
-- NOTIFY is delivered at commit and duplicates within a transaction collapse,
-- so a migration of many statements causes one reload).

create or replace function extensions.pgrst_ddl_watch()
returns event_trigger
language plpgsql
as $fn$
begin
    if exists (
        select
        from pg_catalog.pg_event_trigger_ddl_commands() as cmd
        where cmd.schema_name is null
           or cmd.schema_name not like 'pg\_temp%'
    ) then
        notify pgrst, 'reload schema';
    end if;
end
$fn$;

create or replace function extensions.pgrst_drop_watch()
returns event_trigger
language plpgsql
as $fn$
begin
    if exists (
        select
        from pg_catalog.pg_event_trigger_dropped_objects() as obj
        where not obj.is_temporary
    ) then
        notify pgrst, 'reload schema';
    end if;
end
$fn$;

do $event_triggers$
begin
    if not exists (select from pg_catalog.pg_event_trigger where evtname = 'pgrst_ddl_watch') then
        create event trigger pgrst_ddl_watch on ddl_command_end
            execute function extensions.pgrst_ddl_watch();
    end if;
    if not exists (select from pg_catalog.pg_event_trigger where evtname = 'pgrst_drop_watch') then
        create event trigger pgrst_drop_watch on sql_drop
            execute function extensions.pgrst_drop_watch();
    end if;
end
$event_triggers$;

-- ---------------------------------------------------------------------------
-- Default privileges on public: Supabase's legacy ("auto-expose") state
-- ---------------------------------------------------------------------------
-- Objects that postgres creates in public (i.e. everything `supabase db push`
-- creates there) are granted to the API roles unless a migration revokes them.
-- ALTER DEFAULT PRIVILEGES is idempotent. To test the other state, apply
-- scripts/supabase-compat-revoked-defaults.sql afterwards.

alter default privileges for role postgres in schema public
    grant all on tables to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on functions to postgres, anon, authenticated, service_role;
alter default privileges for role postgres in schema public
    grant all on sequences to postgres, anon, authenticated, service_role;
