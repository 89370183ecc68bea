-- Expiry at the exact boundary: a grant is spendable while now < expires_at and expired at
-- expires_at, whether or not a sweep has run; credit_get_balance excludes expired grants
-- nobody has journalled yet; the next write on the account journals an expiry row first.
--
-- Actors: test_owner (30 promotional credits expiring at E = 2030-01-02 00:00),
-- test_member (10 promotional credits expiring at E, and a hold settled at E),
-- test_holder (30 promotional credits expiring at E2 = 2030-01-03 00:00, and a hold
-- released at E2).
begin;
select plan(24);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

-- Sweep whatever was already due in this database at the test clock, so that the sweep
-- counts below are about this file's own accounts (on a fresh database this does nothing).
create temp table presweep as select * from credit_sweep_expired();

create temp table owner_promo as
select * from credit_add_credits(
    'test_owner', 30, p_category => 'promotional', p_expires_at => '2030-01-02 00:00:00+00'
);
create temp table member_promo as
select * from credit_add_credits(
    'test_member', 10, p_category => 'promotional', p_expires_at => '2030-01-02 00:00:00+00'
);
create temp table holder_promo as
select * from credit_add_credits(
    'test_holder', 30, p_category => 'promotional', p_expires_at => '2030-01-03 00:00:00+00'
);
create temp table holder_hold as
select * from credit_reserve_credits('test_holder', 10, p_timeout_seconds => 604800);

-- ---------------------------------------------------------------- one microsecond before

set local ducto.now to '2030-01-01 23:59:59.999999+00';

select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', 30::bigint, 0::bigint, 30::bigint)$$,
    'One microsecond before expires_at the grant counts: balance 30.'
);
select is(
    (select r.balance_after from credit_deduct_credits('test_owner', 1) as r), 29::bigint,
    'One microsecond before expires_at it can be spent: 30 - 1 = 29.'
);
select is(
    (select r.available_after from credit_reserve_credits('test_member', 10) as r), 0::bigint,
    'One microsecond before expires_at test_member can hold all 10.'
);

-- ---------------------------------------------------------------- at expires_at

set local ducto.now to '2030-01-02 00:00:00+00';

select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', 0::bigint, 0::bigint, 0::bigint)$$,
    'At expires_at get_balance excludes the expired grant though no sweep has run: 0.'
);
select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (29::bigint, 2::bigint)$$,
    '(The stored balance still says 29: nothing has journalled the expiry yet.)'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1)$$, 'DC010',
    'insufficient credits for user ''test_owner'': available 0, needed 1 with min_balance 0',
    'At expires_at the grant cannot be spent: a deduct of 1 sees 0 available.'
);
select throws_ok(
    $$select credit_reserve_credits('test_owner', 1)$$, 'DC010', null,
    'At expires_at the grant cannot be held either.'
);
select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (29::bigint, 2::bigint)$$,
    'A refused call rolls its expiry row back with it.'
);

-- ---------------------------------------------------------------- the next write

create temp table owner_topup as
select * from credit_add_credits('test_owner', 5);

select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after, t.grant_id, t.created_at
      from credit_transactions as t where t.user_id = 'test_owner' order by t.seq$$,
    $$select 1::bigint, 'adjustment', 30::bigint, 30::bigint, (select grant_id from owner_promo),
             '2030-01-01 00:00:00+00'::timestamptz
      union all
      select 2, 'usage', -1, 29, null, '2030-01-01 23:59:59.999999+00'
      union all
      select 3, 'expiry', -29, 0, (select grant_id from owner_promo), '2030-01-02 00:00:00+00'
      union all
      select 4, 'adjustment', 5, 5, (select grant_id from owner_topup), '2030-01-02 00:00:00+00'$$,
    'The next write journals the expiry of the 29 left (seq 3) before its own row (seq 4).'
);
select is(
    (select balance_after from owner_topup), 5::bigint,
    'The add reports the balance net of the expired credits: 5.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      join credit_transactions as t on t.id = d.transaction_id
      where t.user_id = 'test_owner' and t.type = 'expiry'$$,
    $$select grant_id, 29::bigint from owner_promo$$,
    'The expiry row is paid by a draw of 29 from the expired grant.'
);
select results_eq(
    $$select g.remaining from credit_grants as g where g.id = (select grant_id from owner_promo)$$,
    $$values (0::bigint)$$,
    'The expired grant has nothing remaining.'
);
select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', 5::bigint, 0::bigint, 5::bigint)$$,
    'get_balance and the stored balance agree again: 5.'
);
select is(
    (select r.balance_after from credit_deduct_credits('test_owner', 5) as r), 0::bigint,
    'The fresh 5 are spendable at E.'
);

-- ---------------------------------------------------------------- settling at expires_at

create temp table member_settle as
select * from credit_settle_reservation(
    (select id from credit_reservations where user_id = 'test_member'), 10
);

select results_eq(
    $$select amount, overage, balance_after from member_settle$$,
    $$values (10::bigint, 0::bigint, -10::bigint)$$,
    'A hold settled at E cannot use the grant that expired at E: balance -10.'
);
select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after
      from credit_transactions as t where t.user_id = 'test_member' order by t.seq$$,
    $$values (1::bigint, 'adjustment', 10::bigint, 10::bigint),
             (2::bigint, 'expiry', -10::bigint, 0::bigint),
             (3::bigint, 'capture', -10::bigint, -10::bigint)$$,
    'The grant''s 10 are journalled as expired first; the capture follows.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from member_settle)$$,
    $$values (null::uuid, 10::bigint)$$,
    'The capture is paid entirely by debt, never by the expired grant.'
);
select results_eq(
    $$select a.debt from credit_accounts as a where a.user_id = 'test_member'$$,
    $$values (10::bigint)$$,
    'test_member owes 10.'
);

-- ---------------------------------------------------------------- nothing left for the sweep

select results_eq(
    $$select * from credit_sweep_expired(true)$$,
    $$values (true, 0, 0, 0::bigint, 0, 0::bigint)$$,
    'The writes already journalled every expired grant: the sweep has nothing to do.'
);
select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent.'
);

-- ---------------------------------------------------------------- after the boundary

set local ducto.now to '2030-01-02 00:00:00.000001+00';

select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_member')$$,
    $$values ('test_member', -10::bigint, 0::bigint, -10::bigint)$$,
    'After E the member''s balance stays -10: expired credits never come back.'
);
select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_nobody')$$,
    $$values ('test_nobody', 0::bigint, 0::bigint, 0::bigint)$$,
    'A user without an account has balance, held and available 0.'
);

-- ---------------------------------------------------------------- releasing at expires_at

set local ducto.now to '2030-01-03 00:00:00+00';

create temp table holder_release as
select * from credit_release_reservation((select reservation_id from holder_hold));

select is(
    (select available_after from holder_release),
    (select available from credit_get_balance('test_holder')),
    'Releasing a hold at E2 reports the same available as get_balance: the expired 30 are'
    || ' not available (0).'
);
select results_eq(
    $$select a.balance from credit_accounts as a where a.user_id = 'test_holder'$$,
    $$values (0::bigint)$$,
    'A release is a write on the account, so it first journals the expired grant: the'
    || ' stored balance after it is net of expired credits (0).'
);

select * from finish();
rollback;
