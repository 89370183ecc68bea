-- Keys for a ledger distributed by account (docs/operations.md, "Scaling"), read from the
-- catalog, so every table and constraint of every later migration is held to them:
--
--   * a reference table (configuration and Stripe's lookups, few and rarely written rows
--     every node may hold a copy of) references only reference tables;
--   * every other ducto table is an account table: it has a bigint not null account_id
--     (credit_accounts: its id), every primary key, unique constraint and unique index of
--     it includes that column, and every foreign key between account tables pairs the
--     two tables' account columns, so each row and everything it points to live with
--     their account;
--   * uuid keys are time-ordered: no column default makes a random uuid, and the ids the
--     ledger makes are UUID version 7, later ones sorting later.
--
-- The one exception: credit_accounts (user_id) is unique, since a user has one account.
-- Distributed, that uniqueness needs a table of users distributed by user_id; see
-- docs/operations.md.
begin;
select plan(12);

set local search_path to public, extensions;
set local timezone to 'UTC';

create temp view ducto_table as
select c.oid, c.relname
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace
where
    c.relkind in ('r', 'p') and not c.relispartition
    and ((n.nspname = 'public' and c.relname like 'credit\_%') or n.nspname = 'credit_private')
    -- setup()'s record of applied migrations, not the ledger's
    and c.relname <> 'schema_migrations';

create temp table reference_table (relname name primary key);
insert into reference_table values
('credit_plans'), ('credit_user_plans'), ('credit_pricing_config'),
('credit_event_settings'), ('credit_event_endpoints'), ('credit_balance_alerts'),
('credit_stripe_prices'), ('credit_stripe_customers'), ('credit_stripe_subscriptions'),
('credit_stripe_disputes'), ('credit_stripe_early_refunds'),
-- the archived months (88_archive.sql): one row a month, for the whole ledger
('archived_months');

-- account tables, with the number of their account column
create temp view account_table as
select
    t.oid,
    t.relname,
    (select a.attnum from pg_attribute as a
        where
            a.attrelid = t.oid and not a.attisdropped
            and a.attname = case t.relname when 'credit_accounts' then 'id' else 'account_id' end
    ) as key_attnum
from ducto_table as t
where t.relname not in (select r.relname from reference_table as r);

-- what breaks the rules, one row per offence
create temp view key_offence as
select a.relname::text, 'no bigint not null account column' as offence
from account_table as a
left join pg_attribute as k on k.attrelid = a.oid and k.attnum = a.key_attnum
where k.attnum is null or not k.attnotnull or k.atttypid <> 'bigint'::regtype
union all
select a.relname::text, 'unique index without the account: ' || i.indexrelid::regclass::text
from account_table as a
join pg_index as i on i.indrelid = a.oid
where
    i.indisunique and not coalesce(a.key_attnum = any(i.indkey::int2 []), false)
    and i.indexrelid <> 'public.credit_accounts_user_id_key'::regclass
union all
select a.relname::text, 'foreign key without the account: ' || k.conname::text
from pg_constraint as k
join account_table as a on a.oid = k.conrelid
join account_table as r on r.oid = k.confrelid
where
    k.contype = 'f'
    and not exists (
        select from unnest(k.conkey, k.confkey) as p (c, f)
        where p.c = a.key_attnum and p.f = r.key_attnum
    )
union all
select t.relname::text, 'reference table referencing an account table: ' || k.conname::text
from pg_constraint as k
join reference_table as t on t.relname = (select d.relname from ducto_table as d
    where d.oid = k.conrelid)
join account_table as r on r.oid = k.confrelid
where k.contype = 'f';

select is_empty(
    $$select r.relname from reference_table as r
      except select t.relname from ducto_table as t$$,
    'Every listed reference table exists.'
);
select cmp_ok(
    (select count(*) from account_table), '>=', 17::bigint,
    'The ledger''s state is in account tables.'
);
select is_empty(
    $$select relname, offence from key_offence$$,
    'Every account table has an account column in every key and every foreign key between'
    || ' account tables, and reference tables reference only reference tables.'
);

select is_empty(
    $$select c.relname, a.attname
      from pg_attrdef as d
      join pg_attribute as a on a.attrelid = d.adrelid and a.attnum = d.adnum
      join ducto_table as c on c.oid = d.adrelid
      where pg_get_expr(d.adbin, d.adrelid) like '%gen_random_uuid%'$$,
    'No key of a ducto table defaults to a random uuid.'
);

-- ---------------------------------------------------------------- the rules can fail

create table credit_private.keys_probe_without (id uuid primary key, note text);
select results_eq(
    $$select offence collate "default" from key_offence
      where relname = 'keys_probe_without' order by 1$$,
    array[
        'no bigint not null account column',
        'unique index without the account: credit_private.keys_probe_without_pkey'
    ],
    'A table without an account column, keyed by its id alone, breaks the rules.'
);

create table credit_private.keys_probe_loose (
    id uuid primary key default gen_random_uuid(),
    account_id bigint not null,
    transaction_id uuid,
    other_account_id bigint,
    period_start timestamptz,
    unique (id, account_id),
    foreign key (transaction_id, account_id) references public.credit_transactions (id, account_id)
);
-- a checkpoint of another account: a key with an account, but not this row's
alter table credit_private.keys_probe_loose
add constraint keys_probe_loose_cross foreign key (other_account_id, period_start)
references public.credit_checkpoints (account_id, period_start);
select results_eq(
    $$select offence collate "default" from key_offence
      where relname = 'keys_probe_loose' order by 1$$,
    array[
        'foreign key without the account: keys_probe_loose_cross',
        'unique index without the account: credit_private.keys_probe_loose_pkey'
    ],
    'A key by the id alone and a foreign key pairing the account with another column break'
    || ' the rules.'
);

-- ---------------------------------------------------------------- time-ordered ids

create temp table v7 as
select g as n, credit_private.uuid_v7() as id from generate_series(1, 2000) as g;

select is(
    (select count(*) from v7 where substr(id::text, 15, 1) = '7'
        and substr(id::text, 20, 1) in ('8', '9', 'a', 'b')),
    2000::bigint,
    'uuid_v7 makes version 7 UUIDs with the RFC variant.'
);
select is_empty(
    $$select a.n from v7 as a join v7 as b on b.n = a.n + 1 where b.id <= a.id$$,
    'Each id sorts after the one made before it.'
);
select ok(
    abs(
        ('x' || substr(replace((select id::text from v7 where n = 1), '-', ''), 1, 12))::bit(48)
        ::bigint - floor(extract(epoch from clock_timestamp()) * 1000)
    ) < 60000,
    'An id starts with the Unix time in milliseconds.'
);

set local ducto.now to '2031-03-04 05:06:07.089+00';
create temp table added as
select * from credit_add_credits('keys_user', 10);
select is(
    (select substr(t.id::text, 15, 1) || substr(g.id::text, 15, 1)
        from added as a
        join credit_transactions as t on t.id = a.transaction_id
        join credit_grants as g on g.id = a.grant_id),
    '77',
    'The journal row and the grant a credit makes have version 7 ids.'
);
select is(
    (select ('x' || substr(replace(t.id::text, '-', ''), 1, 12))::bit(48)::bigint
        from added as a join credit_transactions as t on t.id = a.transaction_id),
    (extract(epoch from timestamptz '2031-03-04 05:06:07.089+00') * 1000)::bigint,
    'A journal row''s id carries its created_at, to the millisecond.'
);
select ok(
    (select t.id > all(select o.id from credit_transactions as o
            where o.id <> t.id and substr(o.id::text, 15, 1) = '7')
        from added as a join credit_transactions as t on t.id = a.transaction_id),
    'The newest journal row has the greatest time-ordered id.'
);

select * from finish();
rollback;
