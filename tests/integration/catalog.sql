-- Every catalog fact of ducto's schemas (public and credit_private), one row each:
-- (kind, name, detail). tests/integration/test_schemas.py reads it from a database built
-- from supabase/schemas and from one built by the migrations; the two must be equal.
-- Names are schema-qualified (the test sets search_path to ''); ACLs are sorted, so the
-- order in which grants were made does not count, and dropped columns do not count.
with
ns as (
    select * from pg_namespace where nspname in ('public', 'credit_private')
)
select kind, name, detail from (
    select 'schema' as kind, n.nspname::text as name,
        concat_ws(' | ', pg_get_userbyid(n.nspowner),
            (select string_agg(a::text, ',' order by a::text) from unnest(n.nspacl) as a),
            obj_description(n.oid, 'pg_namespace')) as detail
    from ns as n
    union all
    select 'function', p.oid::regprocedure::text,
        concat_ws(' | ', pg_get_functiondef(p.oid), pg_get_userbyid(p.proowner),
            (select string_agg(a::text, ',' order by a::text) from unnest(p.proacl) as a),
            obj_description(p.oid, 'pg_proc'))
    from pg_proc as p join ns as n on n.oid = p.pronamespace
    union all
    select 'relation', c.oid::regclass::text,
        concat_ws(' | ', c.relkind, pg_get_userbyid(c.relowner),
            (select string_agg(a::text, ',' order by a::text) from unnest(c.relacl) as a),
            c.relrowsecurity, c.relforcerowsecurity, c.relpersistence,
            array_to_string(c.reloptions, ','), obj_description(c.oid, 'pg_class'),
            case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid) end,
            case when c.relkind = 'i' then pg_get_indexdef(c.oid) end)
    from pg_class as c join ns as n on n.oid = c.relnamespace
    where c.relkind <> 'c'
    union all
    select 'column', a.attrelid::regclass::text || '.' || a.attname,
        concat_ws(' | ', a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
            a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid),
            (select string_agg(x::text, ',' order by x::text) from unnest(a.attacl) as x),
            col_description(a.attrelid, a.attnum), a.attcollation::regcollation::text)
    from pg_attribute as a
    join pg_class as c on c.oid = a.attrelid
    join ns as n on n.oid = c.relnamespace
    left join pg_attrdef as d on d.adrelid = a.attrelid and d.adnum = a.attnum
    where a.attnum > 0 and not a.attisdropped and c.relkind <> 'i'
    union all
    select 'constraint', co.conrelid::regclass::text || '.' || co.conname,
        concat_ws(' | ', co.contype, pg_get_constraintdef(co.oid), co.convalidated,
            obj_description(co.oid, 'pg_constraint'))
    from pg_constraint as co join ns as n on n.oid = co.connamespace
    union all
    select 'policy', pol.polrelid::regclass::text || '.' || pol.polname,
        concat_ws(' | ', pol.polcmd, pol.polpermissive,
            (select string_agg(r::regrole::text, ',' order by r::regrole::text)
             from unnest(pol.polroles) as r),
            pg_get_expr(pol.polqual, pol.polrelid), pg_get_expr(pol.polwithcheck, pol.polrelid))
    from pg_policy as pol
    join pg_class as c on c.oid = pol.polrelid
    join ns as n on n.oid = c.relnamespace
    union all
    select 'trigger', t.tgrelid::regclass::text || '.' || t.tgname,
        concat_ws(' | ', pg_get_triggerdef(t.oid), t.tgenabled)
    from pg_trigger as t
    join pg_class as c on c.oid = t.tgrelid
    join ns as n on n.oid = c.relnamespace
    where not t.tgisinternal
    union all
    select 'type', ty.oid::regtype::text,
        concat_ws(' | ', ty.typtype, pg_get_userbyid(ty.typowner),
            (select string_agg(a::text, ',' order by a::text) from unnest(ty.typacl) as a),
            obj_description(ty.oid, 'pg_type'),
            (select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                               order by a.attnum)
             from pg_attribute as a
             where a.attrelid = ty.typrelid and a.attnum > 0 and not a.attisdropped),
            (select string_agg(e.enumlabel, ',' order by e.enumsortorder)
             from pg_enum as e where e.enumtypid = ty.oid),
            format_type(ty.typbasetype, ty.typtypmod))
    from pg_type as ty
    join ns as n on n.oid = ty.typnamespace
    left join pg_class as c on c.oid = ty.typrelid
    where (c.relkind is null or c.relkind = 'c') and ty.typcategory <> 'A'
    union all
    select 'default privileges', concat_ws(' ', pg_get_userbyid(d.defaclrole),
            coalesce(n.nspname, '*'), d.defaclobjtype),
        (select string_agg(a::text, ',' order by a::text) from unnest(d.defaclacl) as a)
    from pg_default_acl as d
    left join pg_namespace as n on n.oid = d.defaclnamespace
) as facts
order by kind, name, detail;
