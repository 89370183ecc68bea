-- Every catalog fact of ducto's schemas (public and credit_private), one row each:
-- (kind, name, detail). tests/integration/test_schemas.py reads it from a database built
-- from supabase/schemas and from one built by the migrations; the two must be equal.
-- Names are schema-qualified (the test sets search_path to ''); ACLs are sorted, so the
-- order in which grants were made does not count, and dropped columns do not count. Each
-- detail keeps its fields in place ('-' for a null), so no two facts read the same.
with
ns as (
    select * from pg_namespace where nspname in ('public', 'credit_private')
)
select kind, name, detail from (
    select 'schema' as kind, n.nspname::text as name,
        array_to_string(array[
            (pg_get_userbyid(n.nspowner))::text,
            ((select string_agg(a::text, ',' order by a::text) from unnest(n.nspacl) as a))::text,
            (obj_description(n.oid, 'pg_namespace'))::text
        ], ' | ', '-') as detail
    from ns as n
    union all
    select 'function', p.oid::regprocedure::text,
        array_to_string(array[
            (pg_get_functiondef(p.oid))::text,
            (pg_get_userbyid(p.proowner))::text,
            ((select string_agg(a::text, ',' order by a::text) from unnest(p.proacl) as a))::text,
            (obj_description(p.oid, 'pg_proc'))::text
        ], ' | ', '-')
    from pg_proc as p join ns as n on n.oid = p.pronamespace
    union all
    select 'relation', c.oid::regclass::text,
        array_to_string(array[
            (c.relkind)::text,
            (pg_get_userbyid(c.relowner))::text,
            ((select string_agg(a::text, ',' order by a::text) from unnest(c.relacl) as a))::text,
            (c.relrowsecurity)::text,
            (c.relforcerowsecurity)::text,
            (c.relpersistence)::text,
            (array_to_string(c.reloptions, ','))::text,
            (obj_description(c.oid, 'pg_class'))::text,
            (case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid) end)::text,
            (case when c.relkind = 'i' then pg_get_indexdef(c.oid) end)::text
        ], ' | ', '-')
    from pg_class as c join ns as n on n.oid = c.relnamespace
    where c.relkind <> 'c'
    union all
    select 'column', a.attrelid::regclass::text || '.' || a.attname,
        array_to_string(array[
            (a.attnum)::text,
            (format_type(a.atttypid, a.atttypmod))::text,
            (a.attnotnull)::text,
            (a.attidentity)::text,
            (a.attgenerated)::text,
            (pg_get_expr(d.adbin, d.adrelid))::text,
            ((select string_agg(x::text, ',' order by x::text) from unnest(a.attacl) as x))::text,
            (col_description(a.attrelid, a.attnum))::text,
            (a.attcollation::regcollation::text)::text
        ], ' | ', '-')
    from pg_attribute as a
    join pg_class as c on c.oid = a.attrelid
    join ns as n on n.oid = c.relnamespace
    left join pg_attrdef as d on d.adrelid = a.attrelid and d.adnum = a.attnum
    where a.attnum > 0 and not a.attisdropped and c.relkind <> 'i'
    union all
    select 'constraint', co.conrelid::regclass::text || '.' || co.conname,
        array_to_string(array[
            (co.contype)::text,
            (pg_get_constraintdef(co.oid))::text,
            (co.convalidated)::text,
            (obj_description(co.oid, 'pg_constraint'))::text
        ], ' | ', '-')
    from pg_constraint as co join ns as n on n.oid = co.connamespace
    -- not the copies a key to a partitioned table makes for each partition, numbered in the
    -- order the partitions were made; their parent is compared
    where co.conparentid = 0
    union all
    select 'policy', pol.polrelid::regclass::text || '.' || pol.polname,
        array_to_string(array[
            (pol.polcmd)::text,
            (pol.polpermissive)::text,
            ((select string_agg(r::regrole::text, ',' order by r::regrole::text)
             from unnest(pol.polroles) as r))::text,
            (pg_get_expr(pol.polqual, pol.polrelid))::text,
            (pg_get_expr(pol.polwithcheck, pol.polrelid))::text
        ], ' | ', '-')
    from pg_policy as pol
    join pg_class as c on c.oid = pol.polrelid
    join ns as n on n.oid = c.relnamespace
    union all
    select 'trigger', t.tgrelid::regclass::text || '.' || t.tgname,
        array_to_string(array[
            (pg_get_triggerdef(t.oid))::text,
            (t.tgenabled)::text
        ], ' | ', '-')
    from pg_trigger as t
    join pg_class as c on c.oid = t.tgrelid
    join ns as n on n.oid = c.relnamespace
    where not t.tgisinternal
    union all
    select 'type', ty.oid::regtype::text,
        array_to_string(array[
            (ty.typtype)::text,
            (pg_get_userbyid(ty.typowner))::text,
            ((select string_agg(a::text, ',' order by a::text) from unnest(ty.typacl) as a))::text,
            (obj_description(ty.oid, 'pg_type'))::text,
            ((select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', '
                               order by a.attnum)
             from pg_attribute as a
             where a.attrelid = ty.typrelid and a.attnum > 0 and not a.attisdropped))::text,
            ((select string_agg(e.enumlabel, ',' order by e.enumsortorder)
             from pg_enum as e where e.enumtypid = ty.oid))::text,
            (format_type(ty.typbasetype, ty.typtypmod))::text
        ], ' | ', '-')
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
