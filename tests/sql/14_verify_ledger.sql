-- credit_verify_ledger: no rows after a scenario that uses every operation; one row per
-- broken invariant when a stored number is corrupted (credit_accounts and credit_grants are
-- not append-only, so the owner can corrupt them inside this test's transaction).
--
-- Actors: test_owner, test_member, test_stranger.
begin;
select plan(9);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

-- ---------------------------------------------------------------- a mixed scenario

create temp table owner_paid as
select * from credit_add_credits('test_owner', 100, p_idempotency_key => 'a1');
create temp table owner_promo as
select * from credit_add_credits(
    'test_owner', 30, p_category => 'promotional', p_priority => 20,
    p_expires_at => '2030-01-02 00:00:00+00'
);
create temp table owner_usage as
select * from credit_deduct_credits('test_owner', 45, p_idempotency_key => 'd1');
create temp table owner_usage_replay as
select * from credit_deduct_credits('test_owner', 45, p_idempotency_key => 'd1');
create temp table owner_hold as
select * from credit_reserve_credits('test_owner', 20, p_timeout_seconds => 60);
create temp table owner_hold_2 as
select * from credit_reserve_credits('test_owner', 5);
create temp table owner_release as
select * from credit_release_reservation((select reservation_id from owner_hold_2));
create temp table owner_refund as
select * from credit_refund_transaction((select transaction_id from owner_usage), 20);

create temp table member_topup as
select * from credit_add_credits('test_member', 10);
create temp table member_hold as
select * from credit_reserve_credits('test_member', 10);
create temp table member_capture as
select * from credit_settle_reservation((select reservation_id from member_hold), 18);
create temp table member_topup_2 as
select * from credit_add_credits('test_member', 5);
create temp table member_refund as
select * from credit_refund_transaction((select transaction_id from member_capture), 3);

set local ducto.now to '2030-01-02 00:00:00+00';
create temp table owner_capture as
select * from credit_settle_reservation((select reservation_id from owner_hold), 25);
create temp table stranger_topup as
select * from credit_add_credits(
    'test_stranger', 8, p_category => 'promotional', p_expires_at => '2030-01-02 12:00:00+00'
);

set local ducto.now to '2030-01-03 00:00:00+00';
create temp table sweep as
select * from credit_sweep_expired();

select results_eq(
    $$select user_id, balance, debt from credit_accounts
      where user_id in ('test_owner', 'test_member', 'test_stranger') order by user_id$$,
    $$values ('test_member', 0::bigint, 0::bigint), ('test_owner', 75::bigint, 0::bigint),
             ('test_stranger', 0::bigint, 0::bigint)$$,
    '(After the scenario: owner 75; member 0, its debt paid and refunded; stranger 0.)'
);
select is_empty(
    $$select * from credit_verify_ledger()$$,
    'After adds, deducts, a replay, holds, settles, a release, refunds, expiry and a sweep,'
    || ' verify_ledger reports nothing.'
);

-- ---------------------------------------------------------------- corruption: the balance

savepoint corrupt_balance;
update credit_accounts set balance = balance + 1 where user_id = 'test_owner';

select results_eq(
    $$select user_id, check_name, expected, actual from credit_verify_ledger() order by check_name$$,
    $$values ('test_owner', 'balance = grants remaining - debt', '75', '76'),
             ('test_owner', 'balance = sum of journal', '75', '76')$$,
    'A balance off by one is reported twice: against the journal and against the grants.'
);
select results_eq(
    $$select v.account_id from credit_verify_ledger() as v limit 1$$,
    $$select id from credit_accounts where user_id = 'test_owner'$$,
    'Each report names the account.'
);
rollback to savepoint corrupt_balance;

-- ---------------------------------------------------------------- corruption: a grant

savepoint corrupt_grant;
update credit_grants set remaining = remaining - 2
where id = (select grant_id from owner_paid);

select results_eq(
    $$select check_name, expected, actual from credit_verify_ledger() order by check_name$$,
    format(
        'values (%L, %L, %L), (%L, %L, %L)',
        'balance = grants remaining - debt', '73', '75',
        'grant ' || (select grant_id from owner_paid) || ' remaining = amount - draws',
        (select remaining + 2 from credit_grants where id = (select grant_id from owner_paid)),
        (select remaining from credit_grants where id = (select grant_id from owner_paid))
    ),
    'A grant''s remaining off by two breaks its draw sum and the account''s grant sum.'
);
rollback to savepoint corrupt_grant;

-- ---------------------------------------------------------------- corruption: the version

savepoint corrupt_version;
update credit_accounts set version = version + 1 where user_id = 'test_stranger';

select results_eq(
    $$select user_id, check_name, expected, actual from credit_verify_ledger()$$,
    $$values ('test_stranger', 'journal seq is 1..version', '3', '2 rows, last seq 2')$$,
    'A version that does not match the journal is reported.'
);
rollback to savepoint corrupt_version;

-- ---------------------------------------------------------------- corruption: the debt

savepoint corrupt_debt;
update credit_accounts set debt = 4, balance = balance - 4 where user_id = 'test_member';

select results_eq(
    $$select check_name, expected, actual from credit_verify_ledger() order by check_name$$,
    $$values ('balance = sum of journal', '0', '-4'),
             ('debt = sum of debt draws', '0', '4')$$,
    'Debt that no draw explains is reported (the balance follows it).'
);
rollback to savepoint corrupt_debt;

-- ---------------------------------------------------------------- corruption: a settled hold

savepoint corrupt_settle;
update credit_reservations set settled_amount = 24
where id = (select reservation_id from owner_hold);

select results_eq(
    $$select check_name, expected, actual from credit_verify_ledger()$$,
    format($$values (%L, '24', '25')$$,
        'reservation ' || (select reservation_id from owner_hold) || ' settled = its capture'),
    'A settled amount that differs from its capture row is reported.'
);
rollback to savepoint corrupt_settle;

select is_empty(
    $$select * from credit_verify_ledger()$$,
    'Once the corruption is rolled back, the ledger is consistent again.'
);

select * from finish();
rollback;
