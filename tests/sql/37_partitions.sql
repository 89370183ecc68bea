-- The journal's partitions (15_partitions.sql): a uuid_v7 carries its millisecond and the
-- bounds of a month are the smallest ids of its first millisecond and of the next month's;
-- create_partitions makes the month partitions of the journal and of the draws, once, with
-- only the service role reading it; a row of a month without a partition lands in the default
-- partition, credit_partitions() counts it there, and create_partitions then leaves that
-- month alone and still makes the others; a draw lies in the month of its journal row; a
-- charge in a month without a partition succeeds; the sweep makes the partitions of its
-- month and the next three.
--
-- The months used are far from now (2035 on), where no partition exists yet.
begin;
\ir helpers/tests_schema.psql
select plan(35);

set local timezone to 'UTC';

-- the partition a journal row, and the draws of it, lie in
create function pg_temp.journal_partition(p_id uuid)
returns text
language sql
as $$
    select t.tableoid::regclass::text from public.credit_transactions as t where t.id = p_id;
$$;
create function pg_temp.draw_partitions(p_id uuid)
returns text[]
language sql
as $$
    select array_agg(distinct d.tableoid::regclass::text)
    from public.credit_grant_draws as d where d.transaction_id = p_id;
$$;

-- ---------------------------------------------------------------- ids and months

select is(
    credit_private.uuid_time(credit_private.uuid_floor(w.at)),
    date_trunc('milliseconds', w.at),
    'uuid_time(uuid_floor(t)) is t to the millisecond: ' || w.at::text
)
from (values
    ('2035-01-01 00:00:00+00'::timestamptz), ('2035-02-28 23:59:59.999+00'),
    ('2036-07-04 12:34:56.789123+00')
) as w (at);
select is(
    credit_private.uuid_time(credit_private.uuid_v7('2035-02-14 08:09:10.123+00')),
    '2035-02-14 08:09:10.123+00'::timestamptz,
    'A uuid_v7 made for a time carries it.'
);
select is(
    credit_private.uuid_floor('2035-02-01 00:00:00+00'),
    '01de3607-1000-0000-0000-000000000000'::uuid,
    'A month starts at the smallest uuid of its first millisecond.'
);
select ok(
    credit_private.uuid_floor('2035-02-01') <= credit_private.uuid_v7('2035-02-01')
    and credit_private.uuid_v7('2035-02-28 23:59:59.999') < credit_private.uuid_floor('2035-03-01')
    and credit_private.uuid_v7('2035-01-31 23:59:59.999') < credit_private.uuid_floor('2035-02-01'),
    'The ids of a month lie from its floor to the next month''s floor, and no others.'
);

-- ---------------------------------------------------------------- create_partitions

select is(
    credit_private.create_partitions('2035-01-15', '2035-03-02'),
    6,
    'create_partitions makes the journal''s and the draws'' partitions of each month of the'
    || ' range: January, February and March.'
);
select set_eq(
    $$select c.relname::text, pg_get_expr(c.relpartbound, c.oid)
      from pg_inherits as i join pg_class as c on c.oid = i.inhrelid
      where i.inhparent in ('public.credit_transactions'::regclass,
                            'public.credit_grant_draws'::regclass)
        and c.relname like '%\_p2035\_%'$$,
    $$select t || '_p2035_0' || m, format('FOR VALUES FROM (%L) TO (%L)',
          credit_private.uuid_floor(make_timestamptz(2035, m, 1, 0, 0, 0, 'UTC')),
          credit_private.uuid_floor(make_timestamptz(2035, m + 1, 1, 0, 0, 0, 'UTC')))
      from unnest(array['credit_transactions', 'credit_grant_draws']) as t,
           generate_series(1, 3) as m$$,
    'Each partition is named by its month, in credit_private, and bounded by the month''s ids.'
);
select is(
    (select count(*) from pg_class
        where relnamespace = 'credit_private'::regnamespace and relkind = 'r'
          and relname like '%\_p2035\_%'),
    6::bigint,
    'The partitions live in credit_private.'
);
select is(
    credit_private.create_partitions('2035-01-01', '2035-03-31'),
    0,
    'create_partitions again makes nothing.'
);
select is(
    credit_private.create_partitions('2035-03-01', '2035-04-01'),
    2,
    'A range overlapping made months makes only the missing one.'
);
select is_empty(
    $$select c.relname, r.n from pg_class as c,
        unnest(array['anon', 'authenticated', 'service_role']) as r (n)
      where c.relnamespace = 'credit_private'::regnamespace and c.relname like '%\_p2035\_%'
        and has_table_privilege(r.n, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')$$,
    'No API role may write a made partition.'
);
select ok(
    (select bool_and(c.relrowsecurity and (
        select array_agg(a.grantee::regrole::text || ' ' || a.privilege_type)
        from aclexplode(c.relacl) as a where a.grantee <> c.relowner
    ) = array['service_role SELECT'])
     from pg_class as c
     where c.relnamespace = 'credit_private'::regnamespace and c.relkind = 'r'
       and c.relname like '%\_p2035\_%'),
    'A made partition is read alone by the service role only (SELECT; row-level security on).'
);
select is(
    (select count(*) from pg_trigger as g join pg_class as c on c.oid = g.tgrelid
        where c.relname in ('credit_transactions_p2035_02', 'credit_grant_draws_p2035_02')
          and g.tgfoid = 'credit_private.refuse_journal_change'::regproc),
    2::bigint,
    'A made partition refuses changes as its parent does.'
);

-- ---------------------------------------------------------------- rows in their months

set local ducto.now to '2035-02-10 09:00:00+00';
create temp table feb_grant as select * from credit_add_credits('test_owner', 100);
create temp table feb_charge as select * from credit_deduct_credits('test_owner', 30);
select is(
    pg_temp.journal_partition((select transaction_id from feb_charge)),
    'credit_private.credit_transactions_p2035_02',
    'A charge of February lies in February''s partition.'
);
select is(
    pg_temp.draw_partitions((select transaction_id from feb_charge)),
    array['credit_private.credit_grant_draws_p2035_02'],
    'Its draws lie in February''s partition of the draws.'
);

set local ducto.now to '2035-03-03 09:00:00+00';
create temp table mar_refund as
select * from credit_refund_transaction((select transaction_id from feb_charge), 10);
select is(
    pg_temp.journal_partition((select transaction_id from mar_refund)),
    'credit_private.credit_transactions_p2035_03',
    'A refund in March of February''s charge lies in March.'
);
select is(
    pg_temp.draw_partitions((select transaction_id from mar_refund)),
    array['credit_private.credit_grant_draws_p2035_03'],
    'The draws the refund gives back lie in March, with it.'
);
select is_empty(
    $$select d.id from credit_grant_draws as d
      join credit_transactions as t on t.account_id = d.account_id and t.id = d.transaction_id
      where date_trunc('month', credit_private.uuid_time(d.transaction_id))
            <> date_trunc('month', t.created_at)
         or replace(d.tableoid::regclass::text, 'credit_grant_draws', '')
            <> replace(t.tableoid::regclass::text, 'credit_transactions', '')$$,
    'Every draw lies in the month partition of its journal row, which is its created_at''s.'
);

-- ---------------------------------------------------------------- a window reads its months

-- the journal's partitions scanned by the statements run since the last call (counted in
-- this transaction by the statistics)
create temp table scans_seen (partition text, scans bigint);
create function pg_temp.partitions_scanned()
returns text[]
language plpgsql
as $$
declare
    v_changed text[];
begin
    create temp table now_seen on commit drop as
    select s.relname::text as partition, s.seq_scan + coalesce(s.idx_scan, 0) as scans
    from pg_stat_xact_user_tables as s
    where s.schemaname = 'credit_private' and s.relname like 'credit\_transactions\_%';
    select coalesce(array_agg(n.partition order by n.partition), '{}') into v_changed
    from now_seen as n left join scans_seen as o using (partition)
    where n.scans > coalesce(o.scans, 0);
    delete from scans_seen;
    insert into scans_seen select * from now_seen;
    drop table now_seen;
    return v_changed;
end;
$$;
select pg_temp.partitions_scanned();

select credit_aggregate_stats('2035-03-03', '2035-03-04');
select credit_daily_spend('2035-03-03', '2035-03-04');
select credit_spend_by_user('2035-03-03', '2035-03-04');
select credit_top_users(10, '2035-03-03', '2035-03-04');
select credit_export_journal('2035-03-03', '2035-03-04');
select is(
    pg_temp.partitions_scanned(),
    array['credit_transactions_p2035_03'],
    'The analytics and the export of a day in March read March''s partition of the journal alone.'
);
select is(
    (select refunded from credit_aggregate_stats('2035-03-03', '2035-03-04')),
    10::numeric,
    '(the day holds the refund)'
);
select credit_spend_by_model('2035-03-03', '2035-03-04');
select is(
    pg_temp.partitions_scanned(),
    array['credit_transactions_p2035_02', 'credit_transactions_p2035_03'],
    'By model, they read February''s too, for the model of the charge March''s refund refunds.'
);

-- ---------------------------------------------------------------- a month without partition

set local ducto.now to '2036-05-10 09:00:00+00';
select lives_ok(
    $$select credit_add_credits('test_member', 50)$$,
    'A credit in a month without a partition is written.'
);
create temp table may_charge as select * from credit_deduct_credits('test_member', 20);
select is(
    (select balance_after from may_charge),
    30::bigint,
    'A charge in a month without a partition succeeds.'
);
select is(
    pg_temp.journal_partition((select transaction_id from may_charge)),
    'credit_private.credit_transactions_default',
    'Its journal row lies in the default partition.'
);
select is(
    pg_temp.draw_partitions((select transaction_id from may_charge)),
    array['credit_private.credit_grant_draws_default'],
    'Its draws lie in the default partition of the draws.'
);
select set_eq(
    $$select table_name, row_count from credit_partitions() where month is null$$,
    $$values
        ('public.credit_transactions',
            (select count(*) from credit_private.credit_transactions_default)),
        ('public.credit_grant_draws',
            (select count(*) from credit_private.credit_grant_draws_default))$$,
    'credit_partitions() reports the default partitions with their exact row counts.'
);
select ok(
    (select row_count >= 2 from credit_partitions()
        where partition_name = 'credit_transactions_default'),
    'The rows of May 2036 are counted there.'
);
select is(
    (select month from credit_partitions() where partition_name = 'credit_grant_draws_p2035_02'),
    '2035-02-01 00:00:00+00'::timestamptz,
    'credit_partitions() gives a month partition its month.'
);
select is(
    credit_private.create_partitions('2036-04-01', '2036-06-30'),
    4,
    'create_partitions skips the month with rows in the default partition and makes the others.'
);
select ok(
    to_regclass('credit_private.credit_transactions_p2036_05') is null
    and to_regclass('credit_private.credit_grant_draws_p2036_05') is null
    and to_regclass('credit_private.credit_transactions_p2036_04') is not null
    and to_regclass('credit_private.credit_grant_draws_p2036_06') is not null,
    'May 2036 has no partition; April and June have theirs.'
);
select is(
    pg_temp.journal_partition((select transaction_id from may_charge)),
    'credit_private.credit_transactions_default',
    'May''s rows stay in the default partition.'
);

-- ---------------------------------------------------------------- the sweep

set local ducto.now to '2037-07-15 00:00:00+00';
-- the sweep makes partitions only when their locks are free at once: this transaction takes
-- them first (waiting for any other session's charges), so the sweep finds them held
lock table public.credit_accounts, public.credit_grants, public.credit_reservations,
public.credit_topup_requests, public.credit_stripe_payments, public.credit_stripe_clawbacks,
public.credit_stripe_invoices, public.credit_transactions, public.credit_grant_draws
in access exclusive mode;
create temp table swept as select * from credit_sweep_expired();
select is(
    (select count(*) from pg_class
        where relnamespace = 'credit_private'::regnamespace and relkind = 'r'
          and relname ~ '^credit_(transactions|grant_draws)_p2037_(07|08|09|10)$'),
    8::bigint,
    'The sweep makes the partitions of its month and of the next three.'
);
select is(
    credit_private.create_partitions('2037-07-01', '2037-10-31'),
    0,
    '(they are all there)'
);

select is_empty('select * from credit_verify_ledger()', 'The ledger verifies.');

select * from finish();
rollback;
