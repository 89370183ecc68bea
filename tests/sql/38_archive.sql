-- Archiving a closed month (88_archive.sql): archive_month refuses a month that is not the
-- oldest attached one (DC133), one whose closing checkpoints are missing (DC134) and totals
-- that are not the partition's (DC135), and a refusal detaches nothing; archive_expectation
-- equals the month's partition; an archived month's partitions are detached without
-- foreign keys, its keyed charges recorded; afterwards a replay of an archived key, a
-- refund of an archived row and a balance before the horizon are DC132, while the recent
-- month refunds, replays and verifies as before.
--
-- The months are in 2003, older than any other test's, so 2003-01 is the oldest month
-- partition of the database while this file's transaction lasts.
begin;
\ir helpers/tests_schema.psql
select plan(36);

set local timezone to 'UTC';
select credit_private.create_partitions('2003-01-01', '2003-03-01');

create temp view attached as
select c.relname::text as name
from pg_inherits as i
join pg_class as c on c.oid = i.inhrelid
where c.relname in (
    'credit_transactions_p2003_01', 'credit_grant_draws_p2003_01',
    'credit_transactions_p2003_02', 'credit_grant_draws_p2003_02'
);

-- ---------------------------------------------------------------- January and February

set local ducto.now to '2003-01-10 09:00:00+00';
create temp table jan_paid as select * from credit_add_credits('pgtap_archive_a', 100);
create temp table jan_keyed as
select * from credit_deduct_credits('pgtap_archive_a', 30, p_idempotency_key => 'arch-jan');
create temp table jan_charge as select * from credit_deduct_credits('pgtap_archive_a', 5);
select credit_add_credits('pgtap_archive_b', 40);
create temp table jan_hold as select * from credit_reserve_credits('pgtap_archive_b', 10);
select credit_settle_reservation((select reservation_id from jan_hold), 60);

set local ducto.now to '2003-02-03 09:00:00+00';
-- refunds in February of a January charge, before January is archived
select credit_refund_transaction((select transaction_id from jan_charge), 2);
create temp table feb_refund as
select * from credit_refund_transaction(
    (select transaction_id from jan_charge), 1, p_idempotency_key => 'arch-refund'
);
create temp table feb_keyed as
select * from credit_deduct_credits('pgtap_archive_a', 7, p_idempotency_key => 'arch-feb');
select credit_add_credits('pgtap_archive_b', 25);

-- ---------------------------------------------------------------- refusals

select throws_ok(
    $$select credit_private.archive_month('2003-01-02', 0, 0)$$, 'DC006', null,
    'A month that is not a month start is DC006.'
);
select throws_ok(
    $$select credit_private.archive_month(null, 0, 0)$$, 'DC006', null,
    'A null month is DC006.'
);
select throws_ok(
    $$select credit_private.archive_month('2003-02-01', 0, 0)$$, 'DC133', null,
    'A month that is not the oldest attached one is DC133.'
);
select throws_ok(
    $$select credit_private.archive_month('2003-01-01', 6, 30)$$, 'DC134', null,
    'A month whose closing checkpoints are not taken is DC134.'
);

set local ducto.now to '2003-02-05 09:00:00+00';
select credit_take_checkpoints('2003-02-01');

select results_eq(
    $$select account_id, transactions, amount
      from credit_private.archive_expectation('2003-01-01') order by 1$$,
    $$select account_id, count(*), sum(amount)::bigint
      from credit_private.credit_transactions_p2003_01 group by 1 order by 1$$,
    'The expectation from the checkpoints equals the month''s partition, per account.'
);

create temp table totals as
select count(*) as n, sum(amount)::bigint as amount,
    (select count(*) from credit_private.credit_grant_draws_p2003_01) as draws
from credit_private.credit_transactions_p2003_01;

select is(
    tests.error_of(format(
        'select credit_private.archive_month(%L, %s, %s)',
        '2003-01-01', (select n from totals) + 1, (select amount from totals)
    ))->>'code',
    'DC135',
    'A row count other than the partition''s is DC135.'
);
select is(
    tests.error_of(format(
        'select credit_private.archive_month(%L, %s, %s)',
        '2003-01-01', (select n from totals), (select amount from totals) - 1
    ))->>'code',
    'DC135',
    'An amount other than the partition''s is DC135.'
);
select is(
    tests.error_of(format(
        'select credit_private.archive_month(%L, %s, %s, %s)',
        '2003-01-01', (select n from totals), (select amount from totals),
        (select draws from totals) + 1
    ))->>'code',
    'DC135',
    'A draw count other than the partition''s is DC135.'
);
select is(
    (select count(*) from credit_private.archived_months), 0::bigint,
    'A refused archive records no month.'
);
select is(
    (select count(*) from attached), 4::bigint,
    'A refused archive detaches nothing.'
);

-- a row of January changed behind the checkpoints' back: the partition no longer adds up
create temp table tampered as
select t.id, t.account_id from credit_private.credit_transactions_p2003_01 as t
where t.id = (select transaction_id from jan_charge);
alter table public.credit_transactions disable trigger credit_transactions_append_only;
update credit_private.credit_transactions_p2003_01 set amount = amount - 1
where id = (select id from tampered);
select is(
    tests.error_of(format(
        'select credit_private.archive_month(%L, %s, %s, %s)',
        '2003-01-01', (select n from totals), (select amount from totals) - 1,
        (select draws from totals)
    ))->>'code',
    'DC135',
    'A partition that differs from its checkpoints is DC135, even with totals to match it.'
);
update credit_private.credit_transactions_p2003_01 set amount = amount + 1
where id = (select id from tampered);
alter table public.credit_transactions enable trigger credit_transactions_append_only;

-- ---------------------------------------------------------------- the archive

-- the deferred checks of this transaction's rows, done: a table with pending trigger
-- events cannot be altered (an archive runs in a transaction of its own)
set constraints all immediate;

create temp table archived as
select * from credit_private.archive_month(
    '2003-01-01', (select n from totals), (select amount from totals), (select draws from totals)
);
select is(
    (select (month, transactions, amount, draws) from archived),
    (select ('2003-01-01'::timestamptz, n, amount, draws) from totals),
    'The archive returns the month, its rows, their sum and its draws.'
);
select is(
    (select (month, transactions, amount, draws) from credit_private.archived_months),
    (select ('2003-01-01'::timestamptz, n, amount, draws) from totals),
    'The archived month is recorded.'
);
select set_eq(
    $$select name from attached$$,
    array['credit_transactions_p2003_02', 'credit_grant_draws_p2003_02'],
    'January''s partitions are detached; February''s stay.'
);
select is(
    (select count(*) from pg_constraint
        where contype = 'f' and conrelid in (
            'credit_private.credit_transactions_p2003_01'::regclass,
            'credit_private.credit_grant_draws_p2003_01'::regclass
        )),
    0::bigint,
    'The detached tables keep no foreign key: the operator drops them on their own.'
);
select is(
    (select count(*) from credit_private.credit_transactions_p2003_01),
    (select n from totals),
    'The detached journal table still holds the month''s rows.'
);
select results_eq(
    $$select k.idempotency_key, k.transaction_id from public.credit_debit_keys as k
      where k.transaction_id in (select transaction_id from jan_keyed)$$,
    $$select 'arch-jan'::text, transaction_id from jan_keyed$$,
    'The key of the month''s keyed one-call debit stays, pointing to its archived row.'
);
select is(credit_private.archive_horizon(), '2003-02-01'::timestamptz, 'The horizon.');

-- ---------------------------------------------------------------- afterwards

select throws_ok(
    $$select credit_deduct_credits('pgtap_archive_a', 30, p_idempotency_key => 'arch-jan')$$,
    'DC132', null,
    'A replay of an archived key is DC132.'
);
select throws_ok(
    $$select credit_deduct_credits('pgtap_archive_a', 31, p_idempotency_key => 'arch-jan')$$,
    'DC020', null,
    'Another request under an archived key is DC020.'
);
select is(
    (select transaction_id from credit_deduct_credits(
        'pgtap_archive_a', 7, p_idempotency_key => 'arch-feb'
    )),
    (select transaction_id from feb_keyed),
    'A replay of a recent key returns its charge.'
);
select throws_ok(
    format('select credit_refund_transaction(%L)', (select transaction_id from jan_charge)),
    'DC132', null,
    'A refund of an archived row is DC132.'
);
select is(
    (select (transaction_id, is_replay) from credit_refund_transaction(
        (select transaction_id from jan_charge), 1, p_idempotency_key => 'arch-refund'
    )),
    (select (transaction_id, true) from feb_refund),
    'A refund''s key replays though the charge it refunded is archived.'
);
select is(
    tests.error_of(format(
        'select credit_refund_transaction(%L, 2, p_idempotency_key => %L)',
        (select transaction_id from jan_charge), 'arch-refund'
    ))->>'code',
    'DC132',
    'Another refund of the archived charge under that key is DC132.'
);
select throws_ok(
    $$select credit_refund_transaction('3b1f0c57-1e4a-4c8e-9f27-0a1b2c3d4e5f')$$,
    'DC030', null,
    'A refund of an id that never existed is still DC030.'
);
select is(
    (select amount from credit_refund_transaction((select transaction_id from feb_keyed), 3)),
    3::bigint,
    'A refund of a recent charge goes through.'
);
select is(
    tests.error_of($$select credit_balance_at('pgtap_archive_a', '2003-01-31')$$)->>'code',
    'DC132',
    'A balance before the horizon is DC132.'
);
select is(
    (select balance from credit_balance_at('pgtap_archive_a', '2003-02-06')),
    (select balance from credit_accounts where user_id = 'pgtap_archive_a'),
    'A balance after the horizon is exact, from the checkpoint.'
);
select is(
    (select (opening_balance, closing_balance)
        from credit_statement('pgtap_archive_a', '2003-02-01', '2003-02-06')),
    (select (b.balance, a.balance)
        from credit_balance_at('pgtap_archive_a', '2003-02-01') as b,
            credit_accounts as a where a.user_id = 'pgtap_archive_a'),
    'A statement from the horizon opens and closes at the balances of the checkpoints.'
);
select is(
    tests.error_of(
        $$select credit_statement('pgtap_archive_a', '2003-01-15', '2003-02-06')$$
    )->>'code',
    'DC132',
    'A statement that starts before the horizon is DC132.'
);
select is_empty(
    $$select * from credit_verify_ledger() where account_id in (
        select id from credit_accounts where user_id like 'pgtap_archive_%')$$,
    'The ledger verifies from the horizon.'
);
select is_empty(
    $$select * from credit_verify_ledger('2003-01-15') where account_id in (
        select id from credit_accounts where user_id like 'pgtap_archive_%')$$,
    'A p_since before the horizon verifies from the horizon.'
);
-- no foreign key keeps a refund's charge or a grant's row: verification does
select is_empty(
    $$select * from credit_verify_ledger() where check_name like '%journal row%'$$,
    'A February refund of an archived January charge names a row verification accepts.'
);
set constraints all immediate;
alter table public.credit_transactions disable trigger credit_transactions_append_only;
update credit_transactions set refund_of = '3b1f0c57-1e4a-4c8e-9f27-0a1b2c3d4e5f'
where refund_of = (select transaction_id from jan_charge) and created_at >= '2003-02-01';
alter table public.credit_transactions enable trigger credit_transactions_append_only;
update credit_grants set transaction_id = '3b1f0c57-1e4a-4c8e-9f27-0a1b2c3d4e5f'
where user_id = 'pgtap_archive_b' and created_at >= '2003-02-01';
select set_eq(
    $$select split_part(check_name, ' ', 1) || ' ' || split_part(check_name, ' ', 3)
        || ' ' || split_part(check_name, ' ', 4)
      from credit_verify_ledger() where check_name like '%journal row%'$$,
    array['refund names a', 'grant has its'],
    'A refund whose charge is neither attached nor archived, and a grant without its row,'
    || ' are broken invariants.'
);
select throws_ok(
    $$select credit_private.archive_month('2003-01-01', 0, 0)$$, 'DC133', null,
    'An archived month cannot be archived again.'
);
select throws_ok(
    $$select credit_private.archive_month('2003-02-01', 0, 0)$$, 'DC134', null,
    'February, now the oldest, waits for its closing checkpoints.'
);

select * from finish();
rollback;
