-- Hold timeout: a hold counts until expires_at and stops counting at expires_at exactly,
-- before any sweep; a timed-out hold can still be settled or released; the sweep marks
-- timed-out holds expired, without touching the journal.
--
-- Actors: test_owner (100 credits, a hold of 40 for 60 s and one of 10 for 60 s).
begin;
select plan(19);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

-- Sweep whatever was already due in this database at the test clock, so that the sweep
-- counts below are about this file's own accounts (on a fresh database this does nothing).
create temp table presweep as select * from credit_sweep_expired();

create temp table topup as
select * from credit_add_credits('test_owner', 100);
create temp table hold_1 as
select * from credit_reserve_credits('test_owner', 40, p_timeout_seconds => 60);
create temp table hold_2 as
select * from credit_reserve_credits('test_owner', 10, p_timeout_seconds => 60);

select is(
    (select expires_at from hold_1), '2030-01-01 00:01:00+00'::timestamptz,
    'A 60 second hold expires 60 seconds after the ledger clock.'
);

-- ---------------------------------------------------------------- one microsecond before

set local ducto.now to '2030-01-01 00:00:59.999999+00';

select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', 100::bigint, 50::bigint, 50::bigint)$$,
    'One microsecond before expires_at both holds still count: held 50, available 50.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 51)$$, 'DC010', null,
    'One microsecond before expires_at a deduct of 51 is refused.'
);

-- ---------------------------------------------------------------- at expires_at

set local ducto.now to '2030-01-01 00:01:00+00';

select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', 100::bigint, 0::bigint, 100::bigint)$$,
    'At expires_at exactly the holds stop counting: held 0, available 100.'
);
select results_eq(
    $$select status from credit_reservations where user_id = 'test_owner' order by amount$$,
    $$values ('active'), ('active')$$,
    '(No sweep has run: both holds are still stored active.)'
);
select is(
    (select r.available_after
     from credit_reserve_credits('test_owner', 100, p_timeout_seconds => 1) as r),
    0::bigint,
    'At expires_at a new hold of the full 100 is admitted.'
);

-- let that new hold time out as well, one second later
set local ducto.now to '2030-01-01 00:01:01+00';

-- ---------------------------------------------------------------- the sweep

select results_eq(
    $$select * from credit_sweep_expired(p_dry_run => true)$$,
    $$values (true, 1, 0, 0::bigint, 3, 150::bigint)$$,
    'The dry run reports one account with three timed-out holds worth 150.'
);
select results_eq(
    $$select count(*) from credit_reservations
      where user_id = 'test_owner' and status = 'active'$$,
    $$values (3::bigint)$$,
    'The dry run marked nothing.'
);
select results_eq(
    $$select * from credit_sweep_expired()$$,
    $$values (false, 1, 0, 0::bigint, 3, 150::bigint)$$,
    'The sweep marks three holds worth 150 on one account.'
);
select results_eq(
    $$select r.status, r.resolved_at from credit_reservations as r
      where r.id = (select reservation_id from hold_1)$$,
    $$values ('expired', '2030-01-01 00:01:01+00'::timestamptz)$$,
    'The swept hold is stored expired, resolved at the sweep''s clock.'
);
select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (100::bigint, 1::bigint)$$,
    'Expiring holds changes neither the balance nor the journal.'
);
select results_eq(
    $$select * from credit_sweep_expired()$$,
    $$values (false, 0, 0, 0::bigint, 0, 0::bigint)$$,
    'A second sweep finds nothing.'
);

-- ---------------------------------------------------------------- after the timeout

create temp table settle_1 as
select * from credit_settle_reservation((select reservation_id from hold_1), 45);

select results_eq(
    $$select amount, overage, balance_after, available_after, is_replay from settle_1$$,
    $$values (45::bigint, 5::bigint, 55::bigint, 55::bigint, false)$$,
    'A timed-out (even swept) hold can still be settled: the usage happened; 45 with'
    || ' overage 5.'
);
select results_eq(
    $$select r.status, r.settled_amount from credit_reservations as r
      where r.id = (select reservation_id from hold_1)$$,
    $$values ('settled', 45::bigint)$$,
    'The expired hold becomes settled.'
);
select results_eq(
    $$select t.type, t.amount, t.balance_after from credit_transactions as t
      where t.id = (select transaction_id from settle_1)$$,
    $$values ('capture', -45::bigint, 55::bigint)$$,
    'Its capture row is journalled.'
);
select is(
    (select is_replay
     from credit_settle_reservation((select reservation_id from hold_1), 45)),
    true,
    'Settling it again with 45 is a replay.'
);
select results_eq(
    $$select status, amount, available_after, is_replay
      from credit_release_reservation((select reservation_id from hold_2))$$,
    $$values ('released', 10::bigint, 55::bigint, false)$$,
    'A timed-out hold can be released; it frees nothing more (it no longer counted).'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 10)', (select reservation_id from hold_2)),
    'DC040', null,
    'Once released, the timed-out hold cannot be settled.'
);
select results_eq(
    $$select status, count(*) from credit_reservations where user_id = 'test_owner'
      group by status order by status$$,
    $$values ('expired', 1::bigint), ('released', 1::bigint), ('settled', 1::bigint)$$,
    'In the end one hold is expired, one released, one settled.'
);

select * from finish();
rollback;
