-- credit_reserve_credits, credit_settle_reservation, credit_release_reservation: a hold
-- reduces what is available; settling below, at and above the hold (overage, then debt);
-- settling 0; resolve-once rules (replay, DC040, DC041); unknown reservations (DC031).
--
-- Actors: test_owner (100 credits, ends in debt), test_member (10 credits: settle 0 and
-- release).
begin;
select plan(51);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

create temp table topup as
select * from credit_add_credits('test_owner', 100);

-- ---------------------------------------------------------------- reserve

create temp table hold_1 as
select * from credit_reserve_credits('test_owner', 40, p_metadata => '{"job": "j-1"}');

select is(
    (select to_jsonb(r) - 'reservation_id' from hold_1 as r),
    '{"user_id": "test_owner", "amount": 40, "operation_type": "usage",
      "expires_at": "2030-01-01T00:15:00+00:00", "available_after": 60,
      "created_at": "2030-01-01T00:00:00+00:00", "is_replay": false}'::jsonb,
    'Reserving 40 of 100 holds it for the default 900 seconds and leaves 60 available.'
);
select results_eq(
    $$select r.user_id, r.amount, r.operation_type, r.status, r.metadata, r.expires_at,
             r.resolved_at, r.settled_amount, r.transaction_id
      from credit_reservations as r where r.id = (select reservation_id from hold_1)$$,
    $$values ('test_owner', 40::bigint, 'usage', 'active', '{"job": "j-1"}'::jsonb,
              '2030-01-01 00:15:00+00'::timestamptz, null::timestamptz, null::bigint,
              null::uuid)$$,
    'The hold is stored active, with its amount, metadata and timeout.'
);
select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (100::bigint, 1::bigint)$$,
    'A hold writes no journal row and leaves the balance at 100.'
);
select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', 100::bigint, 40::bigint, 60::bigint)$$,
    'get_balance reports balance 100, held 40, available 60.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 61)$$, 'DC010',
    'insufficient credits for user ''test_owner'': available 60, needed 61 with min_balance 0',
    'A deduct of 61 is refused: the hold counts against the 100.'
);
select throws_ok(
    $$select credit_reserve_credits('test_owner', 51, p_min_balance => 10)$$, 'DC010', null,
    'A second hold is admitted against available - min_balance (60 - 51 < 10 is refused).'
);
select is(
    (select r.available_after
     from credit_reserve_credits('test_owner', 50, p_min_balance => 10) as r),
    10::bigint,
    'A second hold of exactly available - min_balance (60 - 50 = 10) is admitted.'
);

-- release that second hold so the numbers below stay simple
select is(
    (select r.available_after
     from credit_release_reservation(
         (select id from credit_reservations where user_id = 'test_owner' and amount = 50)
     ) as r),
    60::bigint,
    'Releasing the 50 hold frees it: available is 60 again.'
);

-- ---------------------------------------------------------------- settle below the hold

create temp table settle_1 as
select * from credit_settle_reservation(
    (select reservation_id from hold_1), 25, '{"tokens": 2500}'
);

select is(
    (select to_jsonb(r) - 'transaction_id' from settle_1 as r),
    jsonb_build_object(
        'reservation_id', (select reservation_id from hold_1), 'user_id', 'test_owner',
        'amount', 25, 'overage', 0, 'balance_after', 75, 'available_after', 75,
        'created_at', '2030-01-01T00:00:00+00:00', 'is_replay', false, 'pricing_version', null
    ),
    'Settling 25 of a 40 hold charges 25, frees the rest: balance and available 75.'
);
select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after, t.reservation_id, t.metadata
      from credit_transactions as t where t.id = (select transaction_id from settle_1)$$,
    $$select 2::bigint, 'capture', -25::bigint, 75::bigint, reservation_id,
             '{"job": "j-1", "tokens": 2500}'::jsonb
      from hold_1$$,
    'The capture row is -25, points to the hold, and merges the hold and settle metadata.'
);
select results_eq(
    $$select r.status, r.settled_amount, r.transaction_id, r.resolved_at
      from credit_reservations as r where r.id = (select reservation_id from hold_1)$$,
    $$select 'settled', 25::bigint, transaction_id, '2030-01-01 00:00:00+00'::timestamptz
      from settle_1$$,
    'The hold is settled with 25 and points to its capture row.'
);

-- ---------------------------------------------------------------- replay and conflicts

create temp table settle_1_again as
select * from credit_settle_reservation((select reservation_id from hold_1), 25);

select is(
    (select is_replay from settle_1_again), true,
    'Settling again with the same amount is a replay.'
);
select is(
    (select to_jsonb(r) - 'is_replay' from settle_1_again as r),
    (select to_jsonb(r) - 'is_replay' from settle_1 as r),
    'The replay returns the first result: same transaction_id, amounts and balances.'
);
select results_eq(
    $$select count(*) from credit_transactions where user_id = 'test_owner' and type = 'capture'$$,
    $$values (1::bigint)$$,
    'The replay wrote no second capture.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 26)', (select reservation_id from hold_1)),
    'DC041',
    format('reservation %s was already settled with 25 credits, not 26',
        (select reservation_id from hold_1)),
    'Settling again with another amount is DC041, naming both amounts.'
);
select throws_ok(
    format('select credit_release_reservation(%L)', (select reservation_id from hold_1)),
    'DC040',
    format('reservation %s was settled and cannot be released',
        (select reservation_id from hold_1)),
    'Releasing a settled hold is DC040.'
);

-- ---------------------------------------------------------------- settle at the hold

create temp table hold_2 as
select * from credit_reserve_credits('test_owner', 30, p_operation_type => 'image');
create temp table settle_2 as
select * from credit_settle_reservation((select reservation_id from hold_2), 30);

select results_eq(
    $$select amount, overage, balance_after, available_after from settle_2$$,
    $$values (30::bigint, 0::bigint, 45::bigint, 45::bigint)$$,
    'Settling exactly the hold (30) charges 30 with no overage: balance 45.'
);

-- ---------------------------------------------------------------- settle above the hold

create temp table hold_3 as
select * from credit_reserve_credits('test_owner', 10);
create temp table settle_3 as
select * from credit_settle_reservation((select reservation_id from hold_3), 15);

select results_eq(
    $$select amount, overage, balance_after, available_after from settle_3$$,
    $$values (15::bigint, 5::bigint, 30::bigint, 30::bigint)$$,
    'Settling 15 on a hold of 10 charges all 15 and reports an overage of 5.'
);
select results_eq(
    $$select t.amount from credit_transactions as t
      where t.id = (select transaction_id from settle_3)$$,
    $$values (-15::bigint)$$,
    'The overage is journalled: the capture row is -15, not -10.'
);

-- the account now holds 30; a hold of 30 settled with 40 overdraws it by 10
create temp table hold_4 as
select * from credit_reserve_credits('test_owner', 30);
create temp table settle_4 as
select * from credit_settle_reservation((select reservation_id from hold_4), 40);

select results_eq(
    $$select amount, overage, balance_after, available_after from settle_4$$,
    $$values (40::bigint, 10::bigint, -10::bigint, -10::bigint)$$,
    'Settling 40 with 30 left charges 40 anyway (no floor check): balance -10.'
);
select results_eq(
    $$select a.balance, a.debt from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (-10::bigint, 10::bigint)$$,
    'What the grants could not pay is debt: debt 10, balance below zero by exactly that.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from settle_4) order by d.id$$,
    $$select grant_id, 30::bigint from topup union all select null::uuid, 10::bigint$$,
    'The capture is paid by 30 from the grant and 10 of debt (a draw without grant).'
);
select results_eq(
    $$select remaining from credit_grants where user_id = 'test_owner'$$,
    $$values (0::bigint)$$,
    'The grant is empty.'
);
select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', -10::bigint, 0::bigint, -10::bigint)$$,
    'get_balance shows the negative balance: -10, nothing held, -10 available.'
);
select throws_ok(
    $$select credit_reserve_credits('test_owner', 1)$$, 'DC010', null,
    'An account in debt cannot reserve.'
);

-- ---------------------------------------------------------------- settle with 0

create temp table member_topup as
select * from credit_add_credits('test_member', 10);
create temp table hold_5 as
select * from credit_reserve_credits('test_member', 10);
create temp table settle_5 as
select * from credit_settle_reservation((select reservation_id from hold_5), 0);

select is(
    (select to_jsonb(r) from settle_5 as r),
    jsonb_build_object(
        'transaction_id', null, 'reservation_id', (select reservation_id from hold_5),
        'user_id', 'test_member', 'amount', 0, 'overage', 0, 'balance_after', 10,
        'available_after', 10, 'created_at', '2030-01-01T00:00:00+00:00', 'is_replay', false,
        'pricing_version', null
    ),
    'Settling with 0 charges nothing: no transaction, balance and available 10.'
);
select results_eq(
    $$select r.status, r.settled_amount, r.transaction_id from credit_reservations as r
      where r.id = (select reservation_id from hold_5)$$,
    $$values ('settled', 0::bigint, null::uuid)$$,
    'The hold is settled with 0 and has no capture row.'
);
select results_eq(
    $$select a.version from credit_accounts as a where a.user_id = 'test_member'$$,
    $$values (1::bigint)$$,
    'Settling with 0 writes no journal row.'
);
select is(
    (select is_replay
     from credit_settle_reservation((select reservation_id from hold_5), 0)),
    true,
    'Settling with 0 again is a replay.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 1)', (select reservation_id from hold_5)),
    'DC041', null,
    'Settling a hold settled with 0 with 1 is DC041.'
);

-- ---------------------------------------------------------------- release

create temp table hold_6 as
select * from credit_reserve_credits('test_member', 4);
create temp table release_6 as
select * from credit_release_reservation((select reservation_id from hold_6));

select is(
    (select to_jsonb(r) from release_6 as r),
    jsonb_build_object(
        'reservation_id', (select reservation_id from hold_6), 'user_id', 'test_member',
        'amount', 4, 'status', 'released', 'available_after', 10, 'is_replay', false
    ),
    'Releasing a hold of 4 returns status released and available 10 again.'
);
select results_eq(
    $$select r.status, r.resolved_at, r.settled_amount, r.transaction_id
      from credit_reservations as r where r.id = (select reservation_id from hold_6)$$,
    $$values ('released', '2030-01-01 00:00:00+00'::timestamptz, null::bigint, null::uuid)$$,
    'The hold is stored released, at the ledger clock.'
);
create temp table release_6_again as
select * from credit_release_reservation((select reservation_id from hold_6));
select is(
    (select is_replay from release_6_again), true,
    'Releasing again is a replay.'
);
select is(
    (select to_jsonb(r) - 'is_replay' from release_6_again as r),
    (select to_jsonb(r) - 'is_replay' from release_6 as r),
    'The release replay returns the first result.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 4)', (select reservation_id from hold_6)),
    'DC040',
    format('reservation %s was released and cannot be settled',
        (select reservation_id from hold_6)),
    'Settling a released hold is DC040.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 0)', (select reservation_id from hold_6)),
    'DC040', null,
    'Settling a released hold with 0 is DC040 too.'
);
select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_member'$$,
    $$values (10::bigint, 1::bigint)$$,
    'Holding and releasing changed neither the balance nor the journal.'
);

-- ---------------------------------------------------------------- unknown reservations

select throws_ok(
    $$select credit_settle_reservation('00000000-0000-4000-8000-000000000000', 1)$$, 'DC031',
    'reservation 00000000-0000-4000-8000-000000000000 does not exist',
    'Settling an unknown reservation is DC031.'
);
select throws_ok(
    $$select credit_release_reservation('00000000-0000-4000-8000-000000000000')$$, 'DC031',
    null,
    'Releasing an unknown reservation is DC031.'
);
select throws_ok(
    $$select credit_settle_reservation(null, 1)$$, 'DC031', null,
    'Settling a null reservation id is DC031.'
);
select throws_ok(
    $$select credit_reserve_credits('test_stranger', 1)$$, 'DC010', null,
    'Reserving for a user without an account is DC010.'
);

-- ---------------------------------------------------------------- invalid arguments

select throws_ok(
    $$select credit_reserve_credits('test_member', 0)$$, 'DC001', null,
    'Reserving 0 is DC001.'
);
select throws_ok(
    $$select credit_reserve_credits('test_member', 'Infinity')$$, 'DC001', null,
    'Reserving Infinity is DC001.'
);
select throws_ok(
    $$select credit_reserve_credits('test_member', 1, p_timeout_seconds => 0)$$, 'DC005',
    'timeout_seconds must be from 1 to 604800 (7 days), got 0',
    'A timeout of 0 seconds is DC005.'
);
select throws_ok(
    $$select credit_reserve_credits('test_member', 1, p_timeout_seconds => 604801)$$, 'DC005',
    null,
    'A timeout of 7 days and 1 second is DC005.'
);
select is(
    (select r.expires_at
     from credit_reserve_credits('test_member', 1, p_timeout_seconds => 604800) as r),
    '2030-01-08 00:00:00+00'::timestamptz,
    'A timeout of exactly 7 days is accepted.'
);
select throws_ok(
    $$select credit_reserve_credits('test_member', 1, p_operation_type => '')$$, 'DC006', null,
    'An empty operation type is DC006.'
);
select throws_ok(
    $$select credit_reserve_credits('test_member', 1, p_operation_type => repeat('o', 65))$$,
    'DC006', null,
    'An operation type of 65 characters is DC006.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, -1)',
        (select id from credit_reservations where user_id = 'test_member' and status = 'active')),
    'DC001',
    'actual_amount must be a whole number of credits from 0 to 9007199254740991, got -1',
    'Settling a negative amount is DC001.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 0.5)',
        (select id from credit_reservations where user_id = 'test_member' and status = 'active')),
    'DC001', null,
    'Settling a fractional amount is DC001.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 1, %L)',
        (select id from credit_reservations where user_id = 'test_member' and status = 'active'),
        '"x"'),
    'DC003', null,
    'Settling with non-object metadata is DC003.'
);

select * from finish();
rollback;
