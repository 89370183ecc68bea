-- credit_sweep_expired: the dry run reports without changing anything; the sweep journals
-- one expiry row per expired grant and marks timed-out holds expired; a second sweep
-- changes nothing (0 everywhere).
--
-- Actors (all set up at T = 2030-01-01):
--   test_owner    20 promotional expiring T+1d, 5 paid never expiring
--   test_member   7 promotional expiring T+2d
--   test_spender  3 promotional expiring T+1d, all spent before expiry
--   test_holder   10 paid, a hold of 4 for 60 s
begin;
select plan(19);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

-- Sweep whatever was already due in this database at the test clock, so that the sweep
-- counts below are about this file's own accounts (on a fresh database this does nothing).
create temp table presweep as select * from credit_sweep_expired();

create temp table owner_promo as
select * from credit_add_credits(
    'test_owner', 20, p_category => 'promotional', p_expires_at => '2030-01-02 00:00:00+00'
);
create temp table owner_paid as
select * from credit_add_credits('test_owner', 5);
create temp table member_promo as
select * from credit_add_credits(
    'test_member', 7, p_category => 'promotional', p_expires_at => '2030-01-03 00:00:00+00'
);
create temp table spender_promo as
select * from credit_add_credits(
    'test_spender', 3, p_category => 'promotional', p_expires_at => '2030-01-02 00:00:00+00'
);
create temp table spender_deduct as
select * from credit_deduct_credits('test_spender', 3);
create temp table holder_paid as
select * from credit_add_credits('test_holder', 10);
create temp table holder_hold as
select * from credit_reserve_credits('test_holder', 4, p_timeout_seconds => 60);

-- what changes when the sweep writes, over this file's four accounts
create temp view ledger_state as
with mine as (
    select id from credit_accounts
    where user_id in ('test_owner', 'test_member', 'test_spender', 'test_holder')
)
select
    (select count(*) from credit_transactions where account_id in (select id from mine))
        as journal_rows,
    (select sum(remaining) from credit_grants where account_id in (select id from mine))
        as remaining,
    (select count(*) from credit_reservations
     where status = 'active' and account_id in (select id from mine)) as active_holds,
    (select sum(balance) from credit_accounts where id in (select id from mine)) as balances;

select results_eq(
    $$select * from ledger_state$$,
    $$values (6::bigint, 42::numeric, 1::bigint, 42::numeric)$$,
    '(Before: 6 journal rows, 42 credits in grants and balances, one active hold.)'
);

-- ---------------------------------------------------------------- before anything is due

select results_eq(
    $$select * from credit_sweep_expired()$$,
    $$values (false, 0, 0, 0::bigint, 0, 0::bigint)$$,
    'With nothing due, the sweep does nothing.'
);

-- ---------------------------------------------------------------- T+1d: dry run

set local ducto.now to '2030-01-02 00:00:00+00';

select results_eq(
    $$select * from credit_sweep_expired(p_dry_run => true)$$,
    $$values (true, 2, 1, 20::bigint, 1, 4::bigint)$$,
    'At T+1d the dry run reports 2 accounts: one grant of 20 to expire and one hold of 4.'
);
select results_eq(
    $$select * from ledger_state$$,
    $$values (6::bigint, 42::numeric, 1::bigint, 42::numeric)$$,
    'The dry run changed nothing.'
);

-- ---------------------------------------------------------------- T+1d: sweep

select results_eq(
    $$select * from credit_sweep_expired()$$,
    $$values (false, 2, 1, 20::bigint, 1, 4::bigint)$$,
    'The sweep expires the grant of 20 and the hold of 4 on 2 accounts.'
);
select results_eq(
    $$select * from ledger_state$$,
    $$values (7::bigint, 22::numeric, 0::bigint, 22::numeric)$$,
    'One expiry row was journalled; 20 credits left the grants and the balances.'
);
select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after, t.grant_id, t.created_at
      from credit_transactions as t where t.user_id = 'test_owner' and t.type = 'expiry'$$,
    $$select 3::bigint, 'expiry', -20::bigint, 5::bigint, grant_id,
             '2030-01-02 00:00:00+00'::timestamptz
      from owner_promo$$,
    'test_owner''s expiry row is seq 3: -20, leaving the 5 paid credits.'
);
select results_eq(
    $$select g.remaining from credit_grants as g where g.id = (select grant_id from owner_promo)$$,
    $$values (0::bigint)$$,
    'The expired grant has nothing remaining.'
);
select results_eq(
    $$select r.status, r.resolved_at from credit_reservations as r
      where r.id = (select reservation_id from holder_hold)$$,
    $$values ('expired', '2030-01-02 00:00:00+00'::timestamptz)$$,
    'test_holder''s hold is marked expired.'
);
select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_holder'$$,
    $$values (10::bigint, 1::bigint)$$,
    'Expiring the hold wrote no journal row for test_holder.'
);
select results_eq(
    $$select a.version from credit_accounts as a where a.user_id in ('test_spender', 'test_member')
      order by a.user_id$$,
    $$values (1::bigint), (2::bigint)$$,
    'Accounts with nothing due were not touched (a spent grant has nothing to expire).'
);

-- ---------------------------------------------------------------- T+1d: second sweep

select results_eq(
    $$select * from credit_sweep_expired()$$,
    $$values (false, 0, 0, 0::bigint, 0, 0::bigint)$$,
    'A second sweep at the same time changes nothing: 0 everywhere.'
);
select results_eq(
    $$select * from credit_sweep_expired(true)$$,
    $$values (true, 0, 0, 0::bigint, 0, 0::bigint)$$,
    'And a dry run reports nothing left.'
);
select results_eq(
    $$select * from ledger_state$$,
    $$values (7::bigint, 22::numeric, 0::bigint, 22::numeric)$$,
    'The ledger is as the first sweep left it.'
);

-- ---------------------------------------------------------------- T+2d

set local ducto.now to '2030-01-02 23:59:59.999999+00';
select results_eq(
    $$select * from credit_sweep_expired()$$,
    $$values (false, 0, 0, 0::bigint, 0, 0::bigint)$$,
    'One microsecond before test_member''s grant expires, the sweep leaves it.'
);

set local ducto.now to '2030-01-03 00:00:00+00';
select results_eq(
    $$select * from credit_sweep_expired()$$,
    $$values (false, 1, 1, 7::bigint, 0, 0::bigint)$$,
    'At its expires_at exactly, the sweep expires test_member''s 7.'
);
select results_eq(
    $$select user_id, balance from credit_accounts
      where user_id in ('test_owner', 'test_member', 'test_spender', 'test_holder')
      order by user_id$$,
    $$values ('test_holder', 10::bigint), ('test_member', 0::bigint),
             ('test_owner', 5::bigint), ('test_spender', 0::bigint)$$,
    'Balances: only never-expiring credits are left.'
);
select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_member')$$,
    $$values ('test_member', 0::bigint, 0::bigint, 0::bigint)$$,
    'get_balance agrees with the stored balance after the sweep.'
);
select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent after the sweeps.'
);

select * from finish();
rollback;
