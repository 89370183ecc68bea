-- Burn-down order: a debit draws from grants by priority (lower first), then the soonest
-- expiry (never-expiring grants last), then the oldest; deducts spanning several grants.
--
-- Actor: test_owner with seven grants of 10, created an hour apart:
--   name          created  priority  expires   spent
--   paid_old      T+0h     50        never     5th
--   paid_new      T+1h     50        never     6th
--   promo_late    T+2h     50        T+30d     4th
--   promo_soon_a  T+2h30   50        T+10d     2nd (same expiry as b, older)
--   promo_soon_b  T+3h     50        T+10d     3rd
--   first         T+4h     10        never     1st (lowest priority number, though newest)
--   last          T+5h     90        T+1d      7th (soonest expiry, but priority 90)
begin;
select plan(13);

set local timezone to 'UTC';

create temp table named_grant (name text primary key, grant_id uuid not null);

set local ducto.now to '2030-01-01 00:00:00+00';
insert into named_grant
select 'paid_old', grant_id from credit_add_credits('test_owner', 10);

set local ducto.now to '2030-01-01 01:00:00+00';
insert into named_grant
select 'paid_new', grant_id from credit_add_credits('test_owner', 10);

set local ducto.now to '2030-01-01 02:00:00+00';
insert into named_grant
select 'promo_late', grant_id from credit_add_credits(
    'test_owner', 10, p_category => 'promotional', p_expires_at => '2030-01-31 00:00:00+00'
);

set local ducto.now to '2030-01-01 02:30:00+00';
insert into named_grant
select 'promo_soon_a', grant_id from credit_add_credits(
    'test_owner', 10, p_category => 'promotional', p_expires_at => '2030-01-11 00:00:00+00'
);

set local ducto.now to '2030-01-01 03:00:00+00';
insert into named_grant
select 'promo_soon_b', grant_id from credit_add_credits(
    'test_owner', 10, p_category => 'promotional', p_expires_at => '2030-01-11 00:00:00+00'
);

set local ducto.now to '2030-01-01 04:00:00+00';
insert into named_grant
select 'first', grant_id from credit_add_credits('test_owner', 10, p_priority => 10);

set local ducto.now to '2030-01-01 05:00:00+00';
insert into named_grant
select 'last', grant_id from credit_add_credits(
    'test_owner', 10, p_priority => 90, p_expires_at => '2030-01-02 00:00:00+00'
);

set local ducto.now to '2030-01-01 06:00:00+00';

-- what each grant has left, in the expected burn-down order
create temp view remaining_by_name as
select n.name, g.remaining
from named_grant as n
join credit_grants as g on g.id = n.grant_id
order by array_position(
    array['first', 'promo_soon_a', 'promo_soon_b', 'promo_late', 'paid_old', 'paid_new', 'last'],
    n.name
);

select results_eq(
    $$select sum(remaining) from credit_grants where user_id = 'test_owner'$$,
    $$values (70::numeric)$$,
    '(Seven grants of 10: 70 credits.)'
);

-- ---------------------------------------------------------------- deduct 5: inside one grant

select lives_ok($$select credit_deduct_credits('test_owner', 5)$$, 'Deduct 5.');
select results_eq(
    $$select name, remaining from remaining_by_name$$,
    $$values ('first', 5::bigint), ('promo_soon_a', 10::bigint), ('promo_soon_b', 10::bigint),
             ('promo_late', 10::bigint), ('paid_old', 10::bigint), ('paid_new', 10::bigint),
             ('last', 10::bigint)$$,
    'The first 5 come from the priority-10 grant, though it is the newest and never expires.'
);

-- ---------------------------------------------------------------- deduct 10: two grants

select lives_ok($$select credit_deduct_credits('test_owner', 10)$$, 'Deduct 10.');
select results_eq(
    $$select name, remaining from remaining_by_name$$,
    $$values ('first', 0::bigint), ('promo_soon_a', 5::bigint), ('promo_soon_b', 10::bigint),
             ('promo_late', 10::bigint), ('paid_old', 10::bigint), ('paid_new', 10::bigint),
             ('last', 10::bigint)$$,
    'Then the soonest-expiring priority-50 grant, the older of two with the same expiry.'
);

-- ---------------------------------------------------------------- deduct 20: three grants

create temp table deduct_20 as
select * from credit_deduct_credits('test_owner', 20);

select results_eq(
    $$select name, remaining from remaining_by_name$$,
    $$values ('first', 0::bigint), ('promo_soon_a', 0::bigint), ('promo_soon_b', 0::bigint),
             ('promo_late', 5::bigint), ('paid_old', 10::bigint), ('paid_new', 10::bigint),
             ('last', 10::bigint)$$,
    'Deducting 20 empties both T+10d grants and takes 5 from the T+30d one.'
);
select results_eq(
    $$select n.name, d.amount
      from credit_grant_draws as d join named_grant as n on n.grant_id = d.grant_id
      where d.transaction_id = (select transaction_id from deduct_20)
      order by d.id$$,
    $$values ('promo_soon_a', 5::bigint), ('promo_soon_b', 10::bigint),
             ('promo_late', 5::bigint)$$,
    'The 20 is recorded as three draws, in burn-down order: 5, 10, 5.'
);

-- ---------------------------------------------------------------- deduct 17: expiring, then never

select lives_ok($$select credit_deduct_credits('test_owner', 17)$$, 'Deduct 17.');
select results_eq(
    $$select name, remaining from remaining_by_name$$,
    $$values ('first', 0::bigint), ('promo_soon_a', 0::bigint), ('promo_soon_b', 0::bigint),
             ('promo_late', 0::bigint), ('paid_old', 0::bigint), ('paid_new', 8::bigint),
             ('last', 10::bigint)$$,
    'Never-expiring grants come after expiring ones, the older (paid_old) first.'
);

-- ---------------------------------------------------------------- deduct 13: up to priority 90

select lives_ok($$select credit_deduct_credits('test_owner', 13)$$, 'Deduct 13.');
select results_eq(
    $$select name, remaining from remaining_by_name$$,
    $$values ('first', 0::bigint), ('promo_soon_a', 0::bigint), ('promo_soon_b', 0::bigint),
             ('promo_late', 0::bigint), ('paid_old', 0::bigint), ('paid_new', 0::bigint),
             ('last', 5::bigint)$$,
    'The priority-90 grant is spent last, though it expires soonest.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 6)$$, 'DC010', null,
    'With 5 left, a deduct of 6 is refused and draws nothing.'
);
select results_eq(
    $$select a.balance, a.debt from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (5::bigint, 0::bigint)$$,
    'The balance (5) equals what the grants have left.'
);

select * from finish();
rollback;
