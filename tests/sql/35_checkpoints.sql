-- Per-account checkpoints: at a month boundary each account's last row before it, balance,
-- debt and grant balances are recorded, from the previous checkpoint and the month's rows;
-- the numbers equal those of the full history; taking a boundary again changes nothing;
-- verify(since) checks the rows after the checkpoint, finds what the full check finds
-- there, and trusts what the checkpoint summarizes; credit_balance_at answers as before.
--
-- Actors: test_owner (charges, a hold, a refund of an older charge, debt), test_member
-- (a plain account), test_late (an account whose first row is after the first boundary).
begin;
\ir helpers/tests_schema.psql
select plan(36);

set local timezone to 'UTC';

-- what a checkpoint must say, from the full history: the state after row last_seq
create temp view expected_checkpoint as
select
    a.id as account_id,
    b.period_start,
    coalesce(max(t.seq) filter (where t.created_at < b.period_start), 0) as last_seq
from credit_accounts as a
cross join (values ('2025-02-01'::timestamptz), ('2025-03-01'), ('2025-04-01'))
    as b (period_start)
left join credit_transactions as t on a.id = t.account_id
group by a.id, b.period_start;

create temp view expected_state as
select
    e.account_id,
    e.period_start,
    e.last_seq,
    coalesce((select t.balance_after from credit_transactions as t
        where t.account_id = e.account_id and t.seq = e.last_seq), 0) as balance,
    coalesce((select sum(d.amount) from credit_grant_draws as d
        join credit_transactions as t on t.account_id = d.account_id and t.id = d.transaction_id
        where d.account_id = e.account_id and d.grant_id is null and t.seq <= e.last_seq), 0)::bigint
    as debt
from expected_checkpoint as e
where e.last_seq > 0;

create temp view expected_grants as
select e.account_id, e.period_start, g.id as grant_id,
    g.amount - coalesce((select sum(d.amount) from credit_grant_draws as d
        join credit_transactions as t on t.account_id = d.account_id and t.id = d.transaction_id
        where d.account_id = g.account_id and d.grant_id = g.id and t.seq <= e.last_seq), 0)::bigint
    as remaining
from expected_checkpoint as e
join credit_grants as g on g.account_id = e.account_id
join credit_transactions as o on o.account_id = g.account_id and o.id = g.transaction_id
where o.seq <= e.last_seq;

-- the journal's balance at an instant, summed over the whole history
create temp view direct_balance as
select a.user_id, w.at, coalesce((select sum(t.amount) from credit_transactions as t
    where t.account_id = a.id and t.created_at <= w.at), 0)::bigint as balance
from credit_accounts as a
cross join (values
    ('2025-01-01'::timestamptz), ('2025-01-15'), ('2025-01-31 23:59:59'), ('2025-02-01'),
    ('2025-02-03'), ('2025-02-10 12:00'), ('2025-02-28 23:00'), ('2025-03-01'),
    ('2025-03-03'), ('2025-04-01')
) as w (at);

-- ---------------------------------------------------------------- January

set local ducto.now to '2025-01-10 09:00:00+00';
create temp table jan_paid as select * from credit_add_credits('test_owner', 100);
create temp table jan_promo as
select * from credit_add_credits(
    'test_owner', 50, p_category => 'promotional', p_expires_at => '2025-02-20'
);
create temp table jan_charge as select * from credit_deduct_credits('test_owner', 30);
select credit_add_credits('test_member', 40);
create temp table jan_hold as select * from credit_reserve_credits('test_owner', 20);

set local ducto.now to '2025-01-20 09:00:00+00';
select credit_settle_reservation((select reservation_id from jan_hold), 15);
select credit_deduct_credits('test_member', 5);
-- a charge of more than the grants hold, through a hold: the rest becomes debt
create temp table jan_hold2 as select * from credit_reserve_credits('test_member', 10);
select credit_settle_reservation((select reservation_id from jan_hold2), 60);

-- ---------------------------------------------------------------- February

set local ducto.now to '2025-02-03 09:00:00+00';
select credit_add_credits('test_member', 25);
-- a refund in February of a charge of January
select credit_refund_transaction((select transaction_id from jan_charge), 10);
create temp table feb_charge as select * from credit_deduct_credits('test_owner', 70);
select credit_add_credits('test_late', 10);

-- ---------------------------------------------------------------- the first boundary

select throws_ok(
    $$select credit_take_checkpoints('2025-02-02')$$, 'DC006', null,
    'A boundary that is not a month start is DC006.'
);
select throws_ok(
    $$select credit_take_checkpoints(null)$$, 'DC006', null,
    'A null boundary is DC006.'
);
select throws_ok(
    $$select credit_take_checkpoints('2025-03-01')$$, 'DC130', null,
    'A boundary not yet an hour past is DC130: the month is not closed.'
);
select is(
    (select count(*) from credit_checkpoints), 0::bigint,
    'A refused boundary records nothing.'
);

create temp table first_take as select * from credit_take_checkpoints('2025-02-01');
select is(
    (select (recorded, kept) from first_take), (2, 0),
    'The first boundary records a checkpoint for the two accounts with rows before it (not'
    || ' for test_late, whose rows all came after).'
);
select results_eq(
    $$select account_id, last_seq, balance, debt from credit_checkpoints
      where period_start = '2025-02-01' order by account_id$$,
    $$select account_id, last_seq, balance, debt from expected_state
      where period_start = '2025-02-01' order by account_id$$,
    'Each checkpoint''s last seq, balance and debt equal those computed from the full history.'
);
select cmp_ok(
    (select debt from credit_checkpoints
        where period_start = '2025-02-01'
            and account_id = (select id from credit_accounts where user_id = 'test_member')),
    '>', 0::bigint,
    'test_member''s checkpoint carries the debt of January''s overage.'
);
select results_eq(
    $$select account_id, grant_id, remaining from credit_checkpoint_grants
      where period_start = '2025-02-01' order by 1, 2$$,
    $$select account_id, grant_id, remaining from expected_grants
      where period_start = '2025-02-01' and remaining > 0 order by 1, 2$$,
    'Each grant with credits left at the boundary is recorded with its remaining from the'
    || ' full history.'
);
select is(
    (select grants from first_take),
    (select count(*)::integer from credit_checkpoint_grants),
    'The result counts the grant balances recorded.'
);

create temp table again as select * from credit_take_checkpoints('2025-02-01');
select is(
    (select (recorded, kept, grants) from again), (0, 2, 0),
    'Taking the same boundary again records nothing and keeps what was recorded.'
);

select is_empty(
    $$select * from credit_verify_ledger('2025-02-15')$$,
    'verify(since) is empty on a valid ledger.'
);
select is_empty($$select * from credit_verify_ledger()$$, 'The full verify is empty too.');
select is_empty(
    $$select * from credit_verify_ledger('2025-01-15')$$,
    'verify(since) before every checkpoint is the full check, empty.'
);

-- ---------------------------------------------------------------- March

set local ducto.now to '2025-02-21 09:00:00+00';
-- the promotional grant expired on 2025-02-20: the sweep journals it
select credit_sweep_expired();
select credit_add_credits('test_member', 30);
select credit_refund_transaction((select transaction_id from feb_charge), 20);
set local ducto.now to '2025-03-02 09:00:00+00';
create temp table mar_keyed as
select * from credit_deduct_credits('test_owner', 3, p_idempotency_key => 'mar-3');
-- a refund after both checkpoints of a January charge refunded in February already
create temp table mar_refund as
select * from credit_refund_transaction((select transaction_id from jan_charge), 5);
select credit_deduct_credits('test_late', 4);

create temp table second_take as select * from credit_take_checkpoints('2025-03-01');
select is(
    (select (recorded, kept) from second_take), (3, 0),
    'The second boundary records a checkpoint for every account, test_late''s first.'
);
select results_eq(
    $$select account_id, last_seq, balance, debt from credit_checkpoints
      where period_start = '2025-03-01' order by account_id$$,
    $$select account_id, last_seq, balance, debt from expected_state
      where period_start = '2025-03-01' order by account_id$$,
    'Taken from the previous checkpoint and February''s rows, each checkpoint equals the'
    || ' full history.'
);
select results_eq(
    $$select account_id, grant_id, remaining from credit_checkpoint_grants
      where period_start = '2025-03-01' order by 1, 2$$,
    $$select account_id, grant_id, remaining from expected_grants
      where period_start = '2025-03-01' and remaining > 0 order by 1, 2$$,
    'Each grant''s remaining at the second boundary equals the full history''s (the'
    || ' expired grant is gone, the refunded one refilled).'
);
select is_empty(
    $$select * from credit_verify_ledger('2025-03-01')$$,
    'verify(since the second boundary) is empty.'
);

-- ---------------------------------------------------------------- balance_at

select results_eq(
    $$select b.user_id, w.at, (credit_balance_at(b.user_id, w.at)).balance
      from direct_balance as b, lateral (select b.at) as w order by 1, 2$$,
    $$select user_id, at, balance from direct_balance order by 1, 2$$,
    'credit_balance_at answers, from the checkpoints, what the sum of the whole history says.'
);

-- ---------------------------------------------------------------- a corruption after the checkpoint

savepoint after_checkpoint;
alter table credit_grant_draws disable trigger credit_grant_draws_append_only;
-- March's charge of test_owner is said to have drawn 1 more from the paid grant
insert into credit_grant_draws (account_id, transaction_id, grant_id, amount)
select t.account_id, t.id, (select grant_id from jan_paid), 1
from credit_transactions as t
join credit_accounts as a on a.id = t.account_id
where a.user_id = 'test_owner' and t.created_at >= '2025-03-01';
select isnt_empty(
    $$select * from credit_verify_ledger('2025-03-05')$$,
    'verify(since) finds a draw added after the checkpoint.'
);
select set_eq(
    $$select * from credit_verify_ledger('2025-03-05')$$,
    $$select * from credit_verify_ledger()$$,
    'It reports exactly the issue rows the full verify reports.'
);
select set_eq(
    $$select * from credit_verify_ledger('2025-02-05')$$,
    $$select * from credit_verify_ledger()$$,
    'From the first checkpoint too.'
);
rollback to savepoint after_checkpoint;

-- ---------------------------------------------------------------- a refund of an older charge, broken

savepoint older_refund;
alter table credit_grant_draws disable trigger credit_grant_draws_append_only;
-- March's refund of the January charge is said to have given 40 more back to the paid grant
insert into credit_grant_draws (account_id, transaction_id, grant_id, amount)
select t.account_id, t.id, (select grant_id from jan_paid), -40
from credit_transactions as t
where t.id = (select transaction_id from mar_refund);
select isnt_empty(
    $$select * from credit_verify_ledger('2025-03-05')
      where check_name like 'refunds of % gave back at most%'$$,
    'verify(since) finds a refund since the checkpoint giving back more than its older'
    || ' charge drew, reading the charge and its earlier refund by their keys.'
);
select set_eq(
    $$select * from credit_verify_ledger('2025-03-05')$$,
    $$select * from credit_verify_ledger()$$,
    'It reports exactly the issue rows the full verify reports.'
);
rollback to savepoint older_refund;

-- ---------------------------------------------------------------- a broken balance_after after it

savepoint chain;
-- triggers off for this savepoint (an ALTER would wait for the deferred key checks)
set local session_replication_role to replica;
update credit_transactions set balance_after = balance_after + 7
where account_id = (select id from credit_accounts where user_id = 'test_late') and seq = 2;
select set_eq(
    $$select * from credit_verify_ledger('2025-03-05')$$,
    $$select * from credit_verify_ledger()$$,
    'A broken balance_after chain after the checkpoint is reported as the full verify does.'
);
select is(
    (select count(*) from credit_verify_ledger('2025-03-05')
        where check_name like 'balance_after chain%'),
    1::bigint,
    'The chain breaks at the changed row, the account''s newest.'
);
rollback to savepoint chain;

-- ---------------------------------------------------------------- a lost key record after it

savepoint lost_key;
delete from credit_debit_keys where idempotency_key = 'mar-3';
select results_eq(
    $$select check_name, expected, actual from credit_verify_ledger('2025-03-05')$$,
    format($$values (%L, 'mar-3', 'none')$$,
        'keyed debit ' || (select transaction_id from mar_keyed) || ' has its key record'),
    'verify(since) finds a keyed debit since the checkpoint that its key no longer finds.'
);
select set_eq(
    $$select * from credit_verify_ledger('2025-03-05')$$,
    $$select * from credit_verify_ledger()$$,
    'It reports exactly the issue rows the full verify reports.'
);
rollback to savepoint lost_key;

-- ---------------------------------------------------------------- a corruption before it

savepoint before_checkpoint;
alter table credit_grant_draws disable trigger credit_grant_draws_append_only;
-- January's charge of test_owner is said to have drawn 1 more from the paid grant
insert into credit_grant_draws (account_id, transaction_id, grant_id, amount)
select t.account_id, t.id, (select grant_id from jan_paid), 1
from credit_transactions as t
where t.id = (select transaction_id from jan_charge);
select isnt_empty(
    $$select * from credit_verify_ledger()$$,
    'The full verify finds a draw added before the checkpoint.'
);
select is_empty(
    $$select * from credit_verify_ledger('2025-03-05')$$,
    'verify(since) trusts the checkpoint: what it summarizes is not read again.'
);
rollback to savepoint before_checkpoint;

-- ---------------------------------------------------------------- refusing a broken month

savepoint broken_month;
set local ducto.now to '2025-04-05 09:00:00+00';
alter table credit_grant_draws disable trigger credit_grant_draws_append_only;
insert into credit_grant_draws (account_id, transaction_id, grant_id, amount)
select t.account_id, t.id, (select grant_id from jan_paid), 1
from credit_transactions as t
join credit_accounts as a on a.id = t.account_id
where a.user_id = 'test_owner' and t.created_at >= '2025-03-01';
select throws_ok(
    $$select credit_take_checkpoints('2025-04-01')$$, 'DC131', null,
    'A checkpoint is not taken on a month with broken invariants: DC131.'
);
select is(
    (select count(*) from credit_checkpoints where period_start = '2025-04-01'), 0::bigint,
    'The refused boundary recorded nothing.'
);
rollback to savepoint broken_month;

-- ---------------------------------------------------------------- a later month, idle accounts

set local ducto.now to '2025-04-05 09:00:00+00';
create temp table third_take as select * from credit_take_checkpoints('2025-04-01');
select is(
    (select recorded from third_take), 3,
    'An account without rows in the month still gets its checkpoint, carried forward.'
);
select results_eq(
    $$select account_id, last_seq, balance, debt from credit_checkpoints
      where period_start = '2025-04-01' order by account_id$$,
    $$select account_id, last_seq, balance, debt from expected_state
      where period_start = '2025-04-01' order by account_id$$,
    'The third boundary''s checkpoints equal the full history; test_member, without rows in'
    || ' March, carries its March checkpoint forward.'
);
select results_eq(
    $$select c.period_start, c.last_seq, c.balance, c.debt from credit_checkpoints as c
      join credit_accounts as a on a.id = c.account_id
      where a.user_id = 'test_member' and c.period_start >= '2025-03-01' order by 1$$,
    $$select p, l, b, d from credit_checkpoints as c
      join credit_accounts as a on a.id = c.account_id,
      lateral (values ('2025-03-01'::timestamptz, c.last_seq, c.balance, c.debt),
                      ('2025-04-01'::timestamptz, c.last_seq, c.balance, c.debt)) as v (p, l, b, d)
      where a.user_id = 'test_member' and c.period_start = '2025-03-01' order by 1$$,
    'An idle account''s checkpoint is the one before it.'
);

-- ---------------------------------------------------------------- privileges

select ok(
    not has_function_privilege('authenticated', 'credit_take_checkpoints(timestamptz)', 'execute'),
    'Only the service role takes checkpoints.'
);
select ok(
    not has_table_privilege('authenticated', 'credit_checkpoint_grants', 'select'),
    'Only the service role reads the grant balances of checkpoints.'
);

select * from finish();
rollback;
