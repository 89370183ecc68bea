-- Refunds give credits back where they came from, the most recently drawn first: debt is
-- forgiven before grants are refilled; a refilled promotional grant keeps its expiry;
-- credits given back to a grant that has expired since expire again at once; debt that
-- newer credits paid in the meantime comes back as a new paid grant without expiry.
--
-- Actors:
--   test_owner   paid 50 (priority 50, never expires) and promotional 20 (priority 10,
--                expires T+10d); a deduct of 30 draws 20 promotional then 10 paid
--   test_member  10 credits; a hold of 10 settled with 25 (15 of debt)
--   test_payer   10 credits; a hold of 10 settled with 14 (4 of debt), then 10 more
--                credits pay that debt
begin;
select plan(25);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

create temp table paid as
select * from credit_add_credits('test_owner', 50);
create temp table promo as
select * from credit_add_credits(
    'test_owner', 20, p_category => 'promotional', p_priority => 10,
    p_expires_at => '2030-01-11 00:00:00+00'
);
create temp table usage_30 as
select * from credit_deduct_credits('test_owner', 30);

-- what each of test_owner's grants has left
create temp view owner_grants as
select
    (select remaining from credit_grants where id = (select grant_id from paid)) as paid,
    (select remaining from credit_grants where id = (select grant_id from promo)) as promo;

select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from usage_30) order by d.id$$,
    $$select grant_id, 20::bigint from promo union all select grant_id, 10::bigint from paid$$,
    '(The deduct of 30 drew 20 promotional, then 10 paid.)'
);

-- ---------------------------------------------------------------- last drawn, first refilled

create temp table refund_5 as
select * from credit_refund_transaction((select transaction_id from usage_30), 5);

select results_eq(
    $$select paid, promo from owner_grants$$,
    $$values (45::bigint, 0::bigint)$$,
    'A refund of 5 refills the grant drawn last (paid): 45 and 0.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from refund_5)$$,
    $$select grant_id, -5::bigint from paid$$,
    'The refund is recorded as a negative draw of 5 on the paid grant.'
);

create temp table refund_15 as
select * from credit_refund_transaction((select transaction_id from usage_30), 15);

select results_eq(
    $$select paid, promo from owner_grants$$,
    $$values (50::bigint, 10::bigint)$$,
    'A refund of 15 gives the paid grant back its last 5 and the promotional one 10.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from refund_15) order by d.id$$,
    $$select grant_id, -5::bigint from paid union all select grant_id, -10::bigint from promo$$,
    'Each grant gets back at most what this transaction took from it, net of earlier refunds.'
);
select results_eq(
    $$select g.category, g.priority, g.expires_at from credit_grants as g
      where g.id = (select grant_id from promo)$$,
    $$values ('promotional', 10, '2030-01-11 00:00:00+00'::timestamptz)$$,
    'The refilled promotional grant keeps its category, priority and expiry.'
);
select is(
    (select count(*) from credit_grants where user_id = 'test_owner'), 2::bigint,
    'No new grant was created: the credits went back where they came from.'
);
select results_eq(
    $$select balance_after from refund_15$$,
    $$values (60::bigint)$$,
    'Balance after: 50 + 10 = 60.'
);

-- ---------------------------------------------------------------- into a grant expired since

set local ducto.now to '2030-01-11 00:00:00+00';

create temp table refund_10 as
select * from credit_refund_transaction((select transaction_id from usage_30), 10);

select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after, t.grant_id, t.refund_of
      from credit_transactions as t where t.user_id = 'test_owner' and t.seq > 5
      order by t.seq$$,
    $$select 6::bigint, 'expiry', -10::bigint, 50::bigint, (select grant_id from promo),
             null::uuid
      union all
      select 7, 'refund', 10, 60, null, (select transaction_id from usage_30)
      union all
      select 8, 'expiry', -10, 50, (select grant_id from promo), null$$,
    'At the promotional grant''s expiry, a refund of 10 into it journals: the expiry of its'
    || ' 10 left, the refund, and the expiry of the 10 given back.'
);
select results_eq(
    $$select balance_after, total_refunded, refundable_remaining from refund_10$$,
    $$values (50::bigint, 30::bigint, 0::bigint)$$,
    'The refund completes the 30 and reports the balance net of the expiry: 50.'
);
select results_eq(
    $$select paid, promo from owner_grants$$,
    $$values (50::bigint, 0::bigint)$$,
    'The expired grant is empty again; the paid one is whole.'
);

-- ---------------------------------------------------------------- debt is forgiven first

create temp table member_topup as
select * from credit_add_credits('test_member', 10);
create temp table member_hold as
select * from credit_reserve_credits('test_member', 10);
create temp table member_capture as
select * from credit_settle_reservation((select reservation_id from member_hold), 25);

select results_eq(
    $$select a.balance, a.debt from credit_accounts as a where a.user_id = 'test_member'$$,
    $$values (-15::bigint, 15::bigint)$$,
    '(test_member: capture of 25 with 10 credits leaves balance -15, debt 15.)'
);

create temp table member_refund_5 as
select * from credit_refund_transaction((select transaction_id from member_capture), 5);

select results_eq(
    $$select a.balance, a.debt,
             (select g.remaining from credit_grants as g
              where g.id = (select grant_id from member_topup))
      from credit_accounts as a where a.user_id = 'test_member'$$,
    $$values (-10::bigint, 10::bigint, 0::bigint)$$,
    'A refund of 5 of a debt-financed capture forgives 5 of debt first: debt 10, grant 0.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from member_refund_5)$$,
    $$values (null::uuid, -5::bigint)$$,
    'The forgiveness is a negative draw of 5 without grant.'
);

create temp table member_refund_rest as
select * from credit_refund_transaction((select transaction_id from member_capture));

select results_eq(
    $$select amount, balance_after from member_refund_rest$$,
    $$values (20::bigint, 10::bigint)$$,
    'Refunding the remaining 20 brings the balance back to 10.'
);
select results_eq(
    $$select a.balance, a.debt,
             (select g.remaining from credit_grants as g
              where g.id = (select grant_id from member_topup))
      from credit_accounts as a where a.user_id = 'test_member'$$,
    $$values (10::bigint, 0::bigint, 10::bigint)$$,
    'It forgave the last 10 of debt and refilled the grant with 10.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from member_refund_rest) order by d.id$$,
    $$select null::uuid, -10::bigint
      union all select grant_id, -10::bigint from member_topup$$,
    'Its draws: -10 of debt, then -10 on the grant.'
);

-- ---------------------------------------------------------------- debt paid since

create temp table payer_topup as
select * from credit_add_credits('test_payer', 10);
create temp table payer_hold as
select * from credit_reserve_credits('test_payer', 10);
create temp table payer_capture as
select * from credit_settle_reservation((select reservation_id from payer_hold), 14);
create temp table payer_topup_2 as
select * from credit_add_credits('test_payer', 10);

select results_eq(
    $$select a.balance, a.debt,
             (select g.remaining from credit_grants as g
              where g.id = (select grant_id from payer_topup_2))
      from credit_accounts as a where a.user_id = 'test_payer'$$,
    $$values (6::bigint, 0::bigint, 6::bigint)$$,
    '(test_payer: the second 10 paid the debt of 4; balance 6.)'
);

create temp table payer_refund_4 as
select * from credit_refund_transaction((select transaction_id from payer_capture), 4);

select results_eq(
    $$select a.balance, a.debt from credit_accounts as a where a.user_id = 'test_payer'$$,
    $$values (10::bigint, 0::bigint)$$,
    'Refunding the 4 that debt paid gives 4 back though there is no debt left: balance 10.'
);
select results_eq(
    $$select g.category, g.priority, g.expires_at, g.amount, g.remaining
      from credit_grants as g
      where g.transaction_id = (select transaction_id from payer_refund_4)$$,
    $$values ('paid', 50, null::timestamptz, 4::bigint, 4::bigint)$$,
    'The 4 come back as a new paid grant at priority 50 without expiry, created by the refund.'
);
select results_eq(
    $$select (select remaining from credit_grants where id = (select grant_id from payer_topup)),
             (select remaining from credit_grants where id = (select grant_id from payer_topup_2))$$,
    $$values (0::bigint, 6::bigint)$$,
    'The existing grants are untouched by that refund.'
);
select results_eq(
    $$select amount, balance_after
      from credit_refund_transaction((select transaction_id from payer_capture))$$,
    $$values (10::bigint, 20::bigint)$$,
    'The remaining 10 of the capture are refunded: balance 20.'
);
select results_eq(
    $$select remaining from credit_grants where id = (select grant_id from payer_topup)$$,
    $$values (10::bigint)$$,
    'They went back to the grant the capture drew them from (10), not to a new grant.'
);
select results_eq(
    $$select count(*), sum(g.amount) from credit_grants as g
      join credit_transactions as t on t.id = g.transaction_id
      where t.refund_of = (select transaction_id from payer_capture)$$,
    $$values (1::bigint, 4::numeric)$$,
    'Refunds of the capture created one new grant, for the 4 of repaid debt, and no more.'
);

select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent after every kind of refund.'
);

select * from finish();
rollback;
