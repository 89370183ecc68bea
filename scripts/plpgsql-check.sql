-- plpgsql_check over every PL/pgSQL function ducto owns; fails on any finding.
--
-- sqlfluff sees a $$ body as a string; this checks the bodies: references to
-- missing tables, columns and functions (with the function's own SET
-- search_path, so an unqualified name under search_path = '' is an error),
-- type mismatches, unused or never-read variables and parameters, dead code,
-- and SQL injection risks in dynamic SQL.
--
-- Which functions: PL/pgSQL functions in every schema except the catalogs and
-- the schemas the platform owns (extensions, auth, graphql_public,
-- supabase_migrations: the bootstrap and the CLI put them there), and except
-- functions that belong to an extension. So public and any ducto schema (for
-- example a private schema for internals) are covered without being listed.
--
-- Which checks, chosen to have no false positives by design:
--   on   errors, other_warnings, extra_warnings (unused/never-read variables
--        and parameters, unmodified OUT values), security_warnings (SQL
--        injection in EXECUTE)  -> any row fails the run
--   off  performance_warnings (volatility hints: an RPC that writes is VOLATILE
--        on purpose) and compatibility_warnings (advice for old servers)
-- Dynamic SQL (EXECUTE) is not analysed beyond the injection check: keep
-- EXECUTE out of the ledger. Trigger functions are checked against every table
-- they are attached to (plpgsql_check needs the table to know NEW and OLD); a
-- trigger function attached to none is listed as skipped.
-- A deliberate exception is written in the function body, where a reviewer
-- sees it, as an in-comment option, e.g.
--   -- @plpgsql_check_options: extra_warnings = off   (why: ...)
--
-- Usage: psql -X -v ON_ERROR_STOP=1 -f scripts/plpgsql-check.sql "$DATABASE_URL"

\set QUIET on
set client_min_messages = warning;
create extension if not exists plpgsql_check with schema extensions;

create temporary table plpgsql_check_targets as
select
    p.oid as fn,
    pg_catalog.format(
        '%I.%I(%s)', n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)
    ) as signature,
    p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype as is_trigger
from pg_catalog.pg_proc as p
inner join pg_catalog.pg_namespace as n on p.pronamespace = n.oid
inner join pg_catalog.pg_language as l on p.prolang = l.oid
where
    l.lanname = 'plpgsql'
    and n.nspname not in (
        'pg_catalog', 'information_schema', 'extensions', 'auth', 'graphql',
        'graphql_public', 'supabase_migrations'
    )
    and n.nspname not like 'pg\_%'
    and not exists (
        select from pg_catalog.pg_depend as d
        where
            d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
            and d.objid = p.oid
            and d.deptype = 'e'
    );

create temporary table plpgsql_check_findings as
select
    t.signature,
    coalesce(tg.tgrelid::regclass::text, '') as on_table,
    r.lineno,
    r.level,
    r.sqlstate,
    r.message,
    r.detail,
    r.hint
from plpgsql_check_targets as t
left join pg_catalog.pg_trigger as tg on t.is_trigger and tg.tgfoid = t.fn
cross join lateral extensions.plpgsql_check_function_tb(
    t.fn,
    relid => coalesce(tg.tgrelid, 0),
    fatal_errors => false,
    other_warnings => true,
    extra_warnings => true,
    performance_warnings => false,
    security_warnings => true,
    compatibility_warnings => false
) as r
where not t.is_trigger or tg.tgrelid is not null;

select
    (select count(*) from plpgsql_check_targets) as checked,
    (select count(*) from plpgsql_check_findings) as findings,
    exists (select from plpgsql_check_findings) as failed,
    (
        select coalesce(string_agg(t.signature, ', '), '')
        from plpgsql_check_targets as t
        where
            t.is_trigger
            and not exists (select from pg_catalog.pg_trigger as tg where tg.tgfoid = t.fn)
    ) as skipped
\gset

\if :failed
    \pset footer off
    \pset null ''
    select
        signature as function,
        on_table,
        lineno as line,
        level,
        sqlstate,
        message,
        concat_ws(' ', detail, hint) as detail_hint
    from plpgsql_check_findings
    order by signature, on_table, lineno nulls first;
\endif
\echo 'plpgsql_check:' :checked 'PL/pgSQL functions checked,' :findings 'findings'
select (:'skipped' <> '') as has_skipped \gset
\if :has_skipped
    \echo 'plpgsql_check: not checked, trigger functions attached to no table:' :skipped
\endif

do $$
begin
    if exists (select from pg_temp.plpgsql_check_findings) then
        raise exception 'plpgsql_check found problems (listed above)'
            using hint = 'Fix the code, or add a reasoned @plpgsql_check_options comment.';
    end if;
end
$$;
