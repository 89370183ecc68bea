-- Debt: usage a settle records beyond what grants can pay is debt, the balance goes below
-- zero by exactly that much, nothing can be spent meanwhile, and new credits pay the debt
-- first (their grant's remaining is reduced by what they paid).
--
-- Actor: test_owner (10 credits, a hold of 10 settled with 25).
begin;
select plan(17);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

create temp table topup as
select * from credit_add_credits('test_owner', 10);
create temp table hold as
select * from credit_reserve_credits('test_owner', 10);
create temp table capture as
select * from credit_settle_reservation((select reservation_id from hold), 25);

-- ---------------------------------------------------------------- in debt

select results_eq(
    $$select a.balance, a.debt from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (-15::bigint, 15::bigint)$$,
    'A capture of 25 with 10 credits leaves debt 15 and balance -15.'
);
select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', -15::bigint, 0::bigint, -15::bigint)$$,
    'get_balance reports balance and available -15.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1)$$, 'DC010',
    'insufficient credits for user ''test_owner'': available -15, needed 1 with min_balance 0',
    'Nothing can be deducted while in debt.'
);

-- ---------------------------------------------------------------- credits pay debt first

create temp table pay_part as
select * from credit_add_credits('test_owner', 10);

select is((select balance_after from pay_part), -5::bigint,
    'Adding 10 against a debt of 15 leaves balance -5.');
select results_eq(
    $$select a.balance, a.debt from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (-5::bigint, 5::bigint)$$,
    'The 10 paid 10 of the debt: debt 5.'
);
select results_eq(
    $$select g.amount, g.remaining from credit_grants as g
      where g.id = (select grant_id from pay_part)$$,
    $$values (10::bigint, 0::bigint)$$,
    'Its grant is created with amount 10 and nothing remaining.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from pay_part) order by d.id$$,
    $$select grant_id, 10::bigint from pay_part union all select null::uuid, -10::bigint$$,
    'The payment is two draws: 10 taken from the new grant, -10 of debt.'
);
select results_eq(
    $$select t.type, t.amount, t.balance_after from credit_transactions as t
      where t.id = (select transaction_id from pay_part)$$,
    $$values ('adjustment', 10::bigint, -5::bigint)$$,
    'The journal shows the full +10, balance_after -5.'
);

create temp table pay_rest as
select * from credit_add_credits(
    'test_owner', 20, p_category => 'promotional', p_expires_at => '2030-02-01 00:00:00+00'
);

select is((select balance_after from pay_rest), 15::bigint,
    'Adding 20 against a debt of 5 leaves balance 15.');
select results_eq(
    $$select a.balance, a.debt,
             (select g.remaining from credit_grants as g where g.id = (select grant_id from pay_rest))
      from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (15::bigint, 0::bigint, 15::bigint)$$,
    'The debt is paid off (0); the promotional grant keeps 15 of its 20.'
);

create temp table no_debt as
select * from credit_add_credits('test_owner', 7);

select results_eq(
    $$select g.remaining from credit_grants as g where g.id = (select grant_id from no_debt)$$,
    $$values (7::bigint)$$,
    'Without debt, new credits keep all they bring: 7 of 7.'
);
select is_empty(
    $$select 1 from credit_grant_draws where transaction_id = (select transaction_id from no_debt)$$,
    'Without debt, adding credits draws nothing.'
);
select results_eq(
    $$select user_id, balance, held, available from credit_get_balance('test_owner')$$,
    $$values ('test_owner', 22::bigint, 0::bigint, 22::bigint)$$,
    'Balance 22 = 15 + 7, the grants'' remaining.'
);

-- ---------------------------------------------------------------- debt across holds

create temp table hold_2 as
select * from credit_reserve_credits('test_owner', 20);
create temp table capture_2 as
select * from credit_settle_reservation((select reservation_id from hold_2), 30);

select results_eq(
    $$select amount, overage, balance_after from capture_2$$,
    $$values (30::bigint, 10::bigint, -8::bigint)$$,
    'A second overdraw: 30 settled with 22 in the grants leaves -8.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from capture_2) order by d.id$$,
    $$select grant_id, 15::bigint from pay_rest
      union all select grant_id, 7::bigint from no_debt
      union all select null::uuid, 8::bigint$$,
    'It drew both grants empty in burn-down order (expiring first) and 8 of debt.'
);
select results_eq(
    $$select a.balance, a.debt, coalesce(sum(g.remaining), 0)::bigint
      from credit_accounts as a join credit_grants as g on g.account_id = a.id
      where a.user_id = 'test_owner' group by a.id$$,
    $$values (-8::bigint, 8::bigint, 0::bigint)$$,
    'balance = grants remaining - debt: -8 = 0 - 8.'
);

select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent.'
);

select * from finish();
rollback;
