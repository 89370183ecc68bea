-- Auto top-up: a debit below the threshold writes one request (and topup.requested); no
-- second one while it is open; the cooldown and the monthly caps; enabling below the
-- threshold fires at once; a success grants once per payment intent; requires_action is
-- an event; failures retry after the cooldown and disable the rule at max_failures.
--
-- Actors: test_owner (a rule: below 50 buy 100 at 2 minor units each), test_member (a rule
-- set while below its threshold), test_stranger (failing payments).
begin;
select plan(29);

set local timezone to 'UTC';
set local ducto.now to '2030-01-10 00:00:00+00';

\ir helpers/tests_schema.psql

select credit_add_credits('test_owner', 100);
select credit_set_auto_topup(
    'test_owner', 50, 2, 'usd', 'cus_owner', 'pm_owner', p_amount => 100,
    p_monthly_cap_credits => 200, p_cooldown_seconds => 3600
);

select is(
    (select count(*) from credit_topup_requests where user_id = 'test_owner'), 0::bigint,
    'A rule set above its threshold requests nothing.'
);
select credit_deduct_credits('test_owner', 40);
select is(
    (select count(*) from credit_topup_requests where user_id = 'test_owner'), 0::bigint,
    'A debit that leaves the balance at or above the threshold requests nothing.'
);
select credit_deduct_credits('test_owner', 20);
select is(
    (select jsonb_build_object('state', state, 'credits', credits, 'amount_minor', amount_minor,
        'currency', currency, 'balance_at_request', balance_at_request)
     from credit_topup_requests where user_id = 'test_owner'),
    jsonb_build_object('state', 'pending', 'credits', 100, 'amount_minor', 200,
        'currency', 'usd', 'balance_at_request', 40),
    'The debit taking the balance below the threshold writes a pending request.'
);
select is(
    (select payload ->> 'request_id' from credit_events
     where user_id = 'test_owner' and type = 'topup.requested'),
    (select id::text from credit_topup_requests where user_id = 'test_owner'),
    'It writes topup.requested naming the request.'
);
select credit_deduct_credits('test_owner', 10);
select is(
    (select count(*) from credit_topup_requests where user_id = 'test_owner'), 1::bigint,
    'A further debit while the request is open writes no second one.'
);

-- the worker: claim, record the payment intent, report it
create temp table claimed as
select * from credit_claim_topup_requests(1000, 60) where user_id = 'test_owner';
select is(
    (select state || ':' || attempts from claimed), 'processing:1',
    'The claim takes the due request (processing, attempt 1).'
);
select is(
    (select count(*) from credit_claim_topup_requests(1000, 60) where user_id = 'test_owner'),
    0::bigint,
    'A claimed request is not claimed again within its lease.'
);
select is(
    (credit_complete_topup((select id from claimed), 'pi_owner_1', 'succeeded')).state,
    'succeeded', 'A succeeded payment completes the request.'
);
select is(
    (select balance from credit_accounts where user_id = 'test_owner'), 130::bigint,
    'It grants the credits: 30 + 100.'
);
select is(
    (credit_complete_topup((select id from claimed), 'pi_owner_1', 'succeeded')).state,
    'succeeded', 'The same report again (the webhook after the worker) is accepted.'
);
select is(
    (select count(*) from credit_transactions
     where user_id = 'test_owner' and type = 'purchase' and idempotency_key = 'pi_owner_1'),
    1::bigint, 'and grants nothing more: one purchase keyed by the payment intent.'
);
select throws_ok(
    format('select credit_complete_topup(%L, %L, %L)', (select id from claimed), 'pi_other',
        'succeeded'),
    'DC111', null, 'Another payment intent for the same request is refused (DC111).'
);
select throws_ok(
    format('select credit_complete_topup(%L, %L, %L)', gen_random_uuid(), 'pi_x', 'succeeded'),
    'DC110', null, 'An unknown request is DC110.'
);

-- cooldown: below again within the hour requests nothing; after it, a request
select credit_deduct_credits('test_owner', 90);
select is(
    (select count(*) from credit_topup_requests where user_id = 'test_owner'), 1::bigint,
    'Within the cooldown a debit below the threshold requests nothing.'
);
set local ducto.now to '2030-01-10 01:00:01+00';
select credit_deduct_credits('test_owner', 1);
select is(
    (select count(*) from credit_topup_requests
     where user_id = 'test_owner' and state = 'pending'), 1::bigint,
    'After the cooldown the next debit below the threshold requests again.'
);
-- the monthly cap (200 credits) admitted that one: 100 succeeded + 100 = 200
select is(
    (credit_get_auto_topup('test_owner')).month_credits, 200::bigint,
    'The month counts the requests that did not fail: 200 of the cap of 200.'
);
update credit_topup_requests set state = 'failed', completed_at = now()
where user_id = 'test_owner' and state = 'pending';
select is(
    (credit_get_auto_topup('test_owner')).month_credits, 100::bigint,
    'The month counts the requests that did not fail.'
);
set local ducto.now to '2030-01-10 03:00:00+00';
select credit_set_auto_topup(
    'test_owner', 50, 2, 'usd', 'cus_owner', 'pm_owner', p_amount => 100,
    p_monthly_cap_credits => 150, p_cooldown_seconds => 0
);
select credit_deduct_credits('test_owner', 1);
select is(
    (select count(*) from credit_topup_requests
     where user_id = 'test_owner' and state = 'pending'), 0::bigint,
    'The monthly cap stops the request that would pass it (100 + 100 > 150).'
);
set local ducto.now to '2030-02-01 00:00:00+00';
select credit_deduct_credits('test_owner', 1);
select is(
    (select count(*) from credit_topup_requests
     where user_id = 'test_owner' and state = 'pending'), 1::bigint,
    'A new month has room again.'
);

-- enabling below the threshold fires at once
select credit_add_credits('test_member', 10);
select is(
    (credit_set_auto_topup(
        'test_member', 50, 1, 'eur', 'cus_member', 'pm_member', p_target_balance => 300
    )).open_request_id is not null, true,
    'A rule enabled while the balance is below its threshold requests at once.'
);
select is(
    (select credits from credit_topup_requests where user_id = 'test_member'), 290::bigint,
    'A target balance buys what takes the balance to it (300 - 10).'
);

-- requires_action, then failures until the rule disables itself
select credit_add_credits('test_stranger', 10);
select credit_set_auto_topup(
    'test_stranger', 50, 1, 'usd', 'cus_stranger', 'pm_stranger', p_amount => 100,
    p_cooldown_seconds => 0, p_max_failures => 2
);
select credit_complete_topup(
    (select id from credit_topup_requests where user_id = 'test_stranger'), 'pi_s_1',
    'requires_action'
);
select is(
    (select count(*) from credit_events where user_id = 'test_stranger'
        and type = 'topup.action_required' and payload ->> 'payment_intent_id' = 'pi_s_1'),
    1::bigint, 'requires_action writes topup.action_required.'
);
select credit_complete_topup(
    (select id from credit_topup_requests where user_id = 'test_stranger'), 'pi_s_1',
    'failed', 'card_declined'
);
select is(
    (select count(*) from credit_topup_requests
     where user_id = 'test_stranger' and state = 'pending'),
    1::bigint, 'A failure below max_failures writes the retry, a new request.'
);
select credit_complete_topup(
    (select id from credit_topup_requests where user_id = 'test_stranger' and state = 'pending'),
    'pi_s_2', 'payment_failed', 'card_declined'
);
select is(
    (select jsonb_build_object('enabled', enabled, 'failures', consecutive_failures,
        'reason', disabled_reason)
     from credit_auto_topups where user_id = 'test_stranger'),
    jsonb_build_object('enabled', false, 'failures', 2,
        'reason', '2 payments failed in a row; last: card_declined'),
    'max_failures failures in a row disable the rule and say why.'
);
select is(
    (select count(*) from credit_events where user_id = 'test_stranger'
        and type = 'topup.disabled'),
    1::bigint, 'and write topup.disabled.'
);
select throws_ok(
    $$select credit_set_auto_topup('test_owner', 50, 2, 'USD', 'cus_o', 'pm_o', p_amount => 1)$$,
    'DC006', null, 'A currency that is not 3 lower-case letters is DC006.'
);
select throws_ok(
    $$select credit_set_auto_topup('test_owner', 50, 2, 'usd', 'cus_o', 'pm_o', p_amount => 1,
        p_target_balance => 100)$$,
    'DC006', null, 'Both an amount and a target balance is DC006.'
);
select is(
    (select stripe_customer_id from credit_auto_topups where user_id = 'test_owner'),
    'cus_owner', 'A refused rule changes nothing.'
);
select is_empty('select * from credit_verify_ledger()', 'The ledger verifies.');

select finish();
rollback;
