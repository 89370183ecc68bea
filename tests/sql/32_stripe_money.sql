-- Money back: voiding a grant, and the claw-back of a Stripe purchase whose money is
-- refunded or disputed (unspent credits voided first, spent ones become debt), with the
-- journal consistent throughout.
--
-- Actors: test_owner (buys 100 credits for 1000 cents, spends 80), test_member (a promotion
-- voided), test_stranger (a subscription).
begin;
select plan(45);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

-- ---------------------------------------------------------------- void

create temp table promo as
select * from credit_add_credits('test_member', 50, 'promotion', 'promotional');
select results_eq(
    $$select amount, remaining, balance_after, is_replay
    from credit_void_grant((select grant_id from promo), 20, 'given by mistake', 'v1')$$,
    $$values (20::bigint, 30::bigint, 30::bigint, false)$$,
    'Voiding 20 of a grant of 50 leaves 30 in it and a balance of 30.'
);
select results_eq(
    $$select amount, remaining, is_replay
    from credit_void_grant((select grant_id from promo), 20, 'given by mistake', 'v1')$$,
    $$values (20::bigint, 30::bigint, true)$$,
    'The same key again is a replay and voids nothing more.'
);
select throws_ok(
    $$select credit_void_grant((select grant_id from promo), 31)$$, 'DC121',
    null, 'Voiding more than is left is refused (DC121).'
);
select throws_ok(
    $$select credit_void_grant(gen_random_uuid())$$, 'DC120',
    null, 'An unknown grant is refused (DC120).'
);
select results_eq(
    $$select amount, remaining, balance_after from credit_void_grant((select grant_id from promo))$$,
    $$values (30::bigint, 0::bigint, 0::bigint)$$,
    'Without an amount, what is left is voided.'
);
select results_eq(
    $$select type, amount from credit_transactions
    where user_id = 'test_member' order by seq$$,
    $$values ('promotion', 50::bigint), ('void', -20::bigint), ('void', -30::bigint)$$,
    'Each void is a journal row of its own.'
);
select throws_ok(
    $$select credit_void_grant((select grant_id from promo))$$, 'DC121',
    null, 'A grant with nothing left cannot be voided.'
);

-- ---------------------------------------------------------------- refunds

create temp table buy as
select * from credit_stripe_record_purchase(
    'test_owner', 100, 'cs_1', 'pi_1', 1000,
    '{"source": "stripe", "checkout_session_id": "cs_1", "payment_intent": "pi_1"}'
);
select results_eq(
    $$select amount, is_replay from credit_stripe_record_purchase(
        'test_owner', 100, 'cs_1', 'pi_1', 1000,
        '{"source": "stripe", "checkout_session_id": "cs_1", "payment_intent": "pi_1"}'
    )$$,
    $$values (100::bigint, true)$$,
    'The same checkout again adds nothing.'
);
select results_eq(
    $$select credits, amount, grant_id from credit_stripe_payments where payment_intent_id = 'pi_1'$$,
    $$select 100::bigint, 1000::bigint, grant_id from buy$$,
    'The payment intent names the purchase''s grant.'
);
select lives_ok(
    $$select credit_deduct_credits('test_owner', 80)$$, 'test_owner spends 80.'
);
select results_eq(
    $$select known, clawed_back, change, balance_after, debt
    from credit_stripe_charge_refunded('pi_1', 300)$$,
    $$values (true, 30::bigint, 30::bigint, -10::bigint, 10::bigint)$$,
    'A refund of 30% claws back 30 credits: the 20 unspent, then 10 as debt.'
);
select results_eq(
    $$select clawed_back, change, balance_after from credit_stripe_charge_refunded('pi_1', 300)$$,
    $$values (30::bigint, 0::bigint, -10::bigint)$$,
    'The same refund event again changes nothing.'
);
select results_eq(
    $$select clawed_back, change, balance_after from credit_stripe_charge_refunded('pi_1', 600)$$,
    $$values (60::bigint, 30::bigint, -40::bigint)$$,
    'A cumulative refund of 60% claws back 30 more.'
);
select results_eq(
    $$select clawed_back, change from credit_stripe_charge_refunded('pi_1', 300)$$,
    $$values (60::bigint, 0::bigint)$$,
    'An older refund event arriving late changes nothing.'
);
select results_eq(
    $$select clawed_back, change, balance_after, debt from credit_stripe_charge_refunded('pi_1', 1000)$$,
    $$values (100::bigint, 40::bigint, -80::bigint, 80::bigint)$$,
    'A full refund after spending 80 of 100 leaves a balance of -80, all of it debt.'
);
select results_eq(
    $$select known, change from credit_stripe_charge_refunded('pi_unknown', 1000)$$,
    $$values (false, 0::bigint)$$,
    'A refund of a payment that bought no credits is acknowledged and changes nothing.'
);
select is_empty($$select * from credit_verify_ledger()$$, 'The ledger verifies after refunds.');
select throws_ok(
    $$select credit_stripe_charge_refunded('pi_1', -1)$$, 'DC001',
    null, 'A negative refunded amount is refused.'
);

-- ---------------------------------------------------------------- early events

select results_eq(
    $$select known, change from credit_stripe_charge_refunded('pi_early', 250)$$,
    $$values (false, 0::bigint)$$,
    'A refund of a payment not recorded yet is acknowledged...'
);
select results_eq(
    $$select known from credit_stripe_dispute('dp_early', 'pi_early', 250, 'withdrawn')$$,
    $$values (false)$$,
    '...and so is a dispute of it...'
);
select results_eq(
    $$select amount from credit_stripe_record_purchase(
        'test_member', 40, 'cs_early', 'pi_early', 1000, '{"source": "stripe"}')$$,
    $$values (40::bigint)$$,
    '...and the purchase is recorded...'
);
select results_eq(
    $$select balance from credit_get_balance('test_member')$$,
    $$values (20::bigint)$$,
    '...with both applied: 25% refunded and 25% disputed of 40 credits.'
);
select results_eq(
    $$select clawed_back, change from credit_stripe_dispute(
        'dp_early', 'pi_early', 250, 'reinstated')$$,
    $$values (10::bigint, -10::bigint)$$,
    'The early dispute reinstated gives its share back.'
);

-- ---------------------------------------------------------------- disputes

create temp table buy2 as
select * from credit_stripe_record_purchase(
    'test_owner', 100, 'cs_2', 'pi_2', 2000, '{"source": "stripe"}'
);
-- the purchase paid the 80 of debt first: 20 of its credits are left
select results_eq(
    $$select clawed_back, change, balance_after, debt
    from credit_stripe_dispute('dp_1', 'pi_2', 2000, 'withdrawn')$$,
    $$values (100::bigint, 100::bigint, -80::bigint, 80::bigint)$$,
    'Withdrawn funds claw back the purchase: the 20 unspent, 80 as debt again.'
);
select results_eq(
    $$select change from credit_stripe_dispute('dp_1', 'pi_2', 2000, 'withdrawn')$$,
    $$values (0::bigint)$$,
    'The same withdrawal again changes nothing.'
);
select results_eq(
    $$select clawed_back, change, balance_after, debt
    from credit_stripe_dispute('dp_1', 'pi_2', 2000, 'reinstated')$$,
    $$values (0::bigint, -100::bigint, 20::bigint, 0::bigint)$$,
    'Reinstated funds give the credits back: the balance is what it was before the dispute.'
);
select results_eq(
    $$select change from credit_stripe_dispute('dp_1', 'pi_2', 2000, 'withdrawn')$$,
    $$values (0::bigint)$$,
    'A withdrawal arriving after the reinstatement changes nothing.'
);
select results_eq(
    $$select g.remaining from credit_grants as g where g.id = (select grant_id from buy2)$$,
    $$values (20::bigint)$$,
    'The grant has its 20 unspent credits again.'
);
select is_empty($$select * from credit_verify_ledger()$$, 'The ledger verifies after disputes.');
select throws_ok(
    $$select credit_stripe_dispute('dp_2', 'pi_2', 2000, 'lost')$$, 'DC006',
    null, 'An unknown funds state is refused.'
);

-- ---------------------------------------------------------------- subscriptions

insert into credit_plans (id, name, allowance, allowance_period, created_at, updated_at)
values ('pro', 'Pro', 500, 'month', now(), now());
select results_eq(
    $$select price_id, plan_id from credit_set_price_plan('price_pro', 'pro')$$,
    $$values ('price_pro', 'pro')$$,
    'A price sells a plan.'
);
select results_eq(
    $$select applied, plan_id from credit_stripe_subscription_changed(
        'sub_1', 'cus_1', 'price_pro', 'active', '2030-01-01', 'test_stranger')$$,
    $$values (true, 'pro')$$,
    'An active subscription assigns its plan.'
);
select results_eq(
    $$select outcome, granted from credit_stripe_invoice_paid(
        'in_1', 'cus_1', 'sub_1', 'price_pro', 'subscription_create', '2030-02-01')$$,
    $$values ('granted', 500::bigint)$$,
    'The first invoice grants the plan''s allowance, the customer known from the subscription.'
);
select results_eq(
    $$select outcome, granted from credit_stripe_invoice_paid(
        'in_1', 'cus_1', 'sub_1', 'price_pro', 'subscription_create', '2030-02-01')$$,
    $$values ('replay', 500::bigint)$$,
    'The same invoice again grants nothing more.'
);
select results_eq(
    $$select outcome from credit_stripe_invoice_paid(
        'in_2', 'cus_1', 'sub_1', 'price_pro', 'subscription_update', '2030-02-01')$$,
    $$values ('not_a_period')$$,
    'A mid-period update''s invoice grants nothing.'
);
select results_eq(
    $$select balance from credit_get_balance('test_stranger')$$,
    $$values (500::bigint)$$,
    'test_stranger has the one allowance.'
);

select results_eq(
    $$select users, granted from credit_grant_allowances('test_stranger')$$,
    $$values (0, 0)$$,
    'The allowance job leaves a live subscription''s plan to its invoices.'
);
select results_eq(
    $$select applied, status from credit_stripe_subscription_changed(
        'sub_1', 'cus_1', 'price_pro', 'past_due', '2030-01-01 00:00:02')$$,
    $$values (true, 'past_due')$$,
    'past_due is applied...'
);
select results_eq(
    $$select plan_id from credit_get_user_plan('test_stranger')$$,
    $$values ('pro')$$,
    '...and keeps the plan while Stripe retries.'
);
select results_eq(
    $$select applied, status from credit_stripe_subscription_changed(
        'sub_1', 'cus_1', 'price_pro', 'active', '2030-01-01 00:00:01')$$,
    $$values (false, 'past_due')$$,
    'An older event arriving late is ignored.'
);
select results_eq(
    $$select applied from credit_stripe_subscription_changed(
        'sub_1', 'cus_1', 'price_pro', 'canceled', '2030-01-01 00:00:03')$$,
    $$values (true)$$,
    'A canceled subscription is applied...'
);
select results_eq(
    $$select plan_id from credit_get_user_plan('test_stranger')$$,
    $$values (null::text)$$,
    '...and removes the plan it gave.'
);
select results_eq(
    $$select outcome, granted from credit_stripe_invoice_paid(
        'in_3', 'cus_1', 'sub_1', 'price_pro', 'subscription_cycle', '2030-03-01')$$,
    $$values ('subscription_canceled', 0::bigint)$$,
    'A late invoice of a canceled subscription grants nothing; the credits granted stay.'
);
select throws_ok(
    $$select credit_stripe_invoice_paid(
        'in_4', 'cus_unknown', 'sub_9', 'price_pro', 'subscription_create', '2030-02-01')$$,
    'DC122', null, 'An invoice of a customer no user is known for is refused (DC122).'
);
select throws_ok(
    $$select credit_stripe_subscription_changed(
        'sub_2', 'cus_1', 'price_pro', 'active', '2030-01-02', 'test_owner')$$,
    'DC123', null, 'A customer is one user (DC123).'
);

select * from finish();
rollback;
