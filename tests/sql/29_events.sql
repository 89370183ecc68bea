-- Durable events (41_events.sql): balance.low fires once per downward crossing of a
-- threshold and re-arms above it; balance.depleted at the crossing to <= 0; a percent
-- threshold of a plan follows the last top-up; grant.expiring once per grant, from
-- credit_emit_due_events and the sweep; grant.expired and charge.refunded; a rolled-back
-- change emits nothing; bad alert arguments write nothing; a delivery is claimed by one
-- worker at a time, retried, and marked delivered; users read only their own events.
--
-- Actors: test_owner (an alert at 50 credits), test_member (on the plan test_events_plan
-- with an alert at 10 % of the last top-up), test_holder (expiring grants), and the
-- signed-in users aaaaaaaa-... (owner of one event) and bbbbbbbb-... (a stranger).
begin;
select plan(37);

set local timezone to 'UTC';
set local ducto.now to '2031-01-01 00:00:00+00';
-- deliveries in this file go to this file's endpoint only
update credit_event_endpoints set enabled = false;

create function pg_temp.events(p_user text, p_type text)
returns bigint
language sql
as $$
    select count(*) from public.credit_events where user_id = p_user and type = p_type;
$$;

-- ---------------------------------------------------------------- balance.low, absolute

select lives_ok(
    $$select credit_add_credits('test_owner', 100, 'purchase')$$,
    'test_owner gets 100 credits.'
);
select is(
    (select count(*) from credit_events where user_id = 'test_owner'), 0::bigint,
    'Without an alert, credits and a debit above zero emit nothing.'
);
select is(
    (select threshold from credit_set_alert(p_user_id => 'test_owner', p_threshold => 50)),
    50::bigint,
    'An alert at 50 credits is set for test_owner.'
);
select is(
    (select id from credit_set_alert(p_user_id => 'test_owner', p_threshold => 50)),
    (select id from credit_balance_alerts where user_id = 'test_owner'),
    'Setting the same alert again returns it: one row.'
);
select credit_deduct_credits('test_owner', 40);
select is(pg_temp.events('test_owner', 'balance.low'), 0::bigint, '100 -> 60 crosses nothing.');
select credit_deduct_credits('test_owner', 20);
select is(pg_temp.events('test_owner', 'balance.low'), 1::bigint, '60 -> 40 crosses 50: one.');
select is(
    (select payload - 'alert_id' - 'transaction_id' from credit_events
     where user_id = 'test_owner' and type = 'balance.low'),
    '{"threshold": 50, "balance": 40, "balance_before": 60, "transaction_type": "usage"}'::jsonb,
    'Its payload names the threshold and the balance before and after.'
);
select credit_deduct_credits('test_owner', 5);
select is(
    pg_temp.events('test_owner', 'balance.low'), 1::bigint,
    '40 -> 35 stays below: no second event.'
);
select credit_add_credits('test_owner', 30);
select credit_deduct_credits('test_owner', 5);
select is(
    pg_temp.events('test_owner', 'balance.low'), 1::bigint,
    'Back above (65) and a debit to 60 above the threshold: nothing.'
);
select credit_deduct_credits('test_owner', 20);
select is(
    pg_temp.events('test_owner', 'balance.low'), 2::bigint,
    'Re-armed: 60 -> 40 crosses 50 again, a second event.'
);

-- ---------------------------------------------------------------- rollback emits nothing

savepoint before_change;
select credit_deduct_credits('test_owner', 40);
rollback to savepoint before_change;
select is(
    (select count(*) from credit_events where user_id = 'test_owner'), 2::bigint,
    'A debit to 0 that rolls back leaves no balance.depleted behind.'
);

-- ---------------------------------------------------------------- balance.depleted

select credit_deduct_credits('test_owner', 40);
select is(
    pg_temp.events('test_owner', 'balance.depleted'), 1::bigint,
    '40 -> 0 is balance.depleted.'
);
select credit_add_credits('test_owner', 1);
select credit_deduct_credits('test_owner', 1);
select is(
    pg_temp.events('test_owner', 'balance.depleted'), 2::bigint,
    'Back to 1 and down to 0 again: a second balance.depleted.'
);
select ok(
    (select bool_and(id::text ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7') from credit_events),
    'Event ids are UUIDv7 (time-ordered).'
);

-- ---------------------------------------------------------------- a plan's percent alert

select credit_upsert_plan('test_events_plan', 'Events plan', '{}');
select credit_assign_plan('test_member', 'test_events_plan');
select is(
    (select percent from credit_set_alert(p_plan_id => 'test_events_plan', p_percent => 10)),
    10::numeric,
    'A plan alert at 10 % of the last top-up is set.'
);
select credit_add_credits('test_member', 200, 'purchase');
select credit_deduct_credits('test_member', 185);
select is(
    (select payload ->> 'threshold' from credit_events
     where user_id = 'test_member' and type = 'balance.low'),
    '20',
    'After a top-up of 200, 200 -> 15 crosses 10 % of it: threshold 20.'
);

-- ---------------------------------------------------------------- bad alerts write nothing

select throws_ok(
    $$select credit_set_alert(p_threshold => 5)$$, 'DC006', null,
    'An alert of nobody is DC006.'
);
select throws_ok(
    $$select credit_set_alert(p_user_id => 'test_owner', p_threshold => 5, p_percent => 5)$$,
    'DC006', null,
    'An alert both absolute and a percent is DC006.'
);
select throws_ok(
    $$select credit_set_alert(p_user_id => 'test_owner', p_threshold => 0)$$, 'DC001', null,
    'A threshold of 0 credits is DC001.'
);
select throws_ok(
    $$select credit_set_alert(p_plan_id => 'no_such_plan', p_percent => 5)$$, 'DC080', null,
    'An alert of a plan that does not exist is DC080.'
);
select is(
    (select count(*) from credit_balance_alerts
     where user_id = 'test_owner' or plan_id = 'test_events_plan'),
    2::bigint,
    'The refused alerts wrote nothing.'
);

-- ---------------------------------------------------------------- grants: expiring, expired

select credit_set_grant_expiring_days(3);
create temp table holder_grant as
select * from credit_add_credits(
    'test_holder', 30, p_category => 'promotional', p_expires_at => '2031-01-03 00:00:00+00'
);
select credit_add_credits(
    'test_holder', 30, p_category => 'promotional', p_expires_at => '2031-01-10 00:00:00+00'
);
select is(
    credit_emit_due_events() >= 1 and pg_temp.events('test_holder', 'grant.expiring') = 1, true,
    'credit_emit_due_events writes grant.expiring for the grant due within 3 days only.'
);
select is(credit_emit_due_events(), 0, 'Run again it writes nothing: once per grant.');
select lives_ok($$select credit_sweep_expired()$$, 'The sweep runs.');
select is(
    pg_temp.events('test_holder', 'grant.expiring'), 1::bigint,
    'The sweep does not write it a second time.'
);
set local ducto.now to '2031-01-03 00:00:00+00';
select credit_sweep_expired();
select is(
    (select (payload ->> 'amount')::bigint from credit_events
     where user_id = 'test_holder' and type = 'grant.expired'),
    30::bigint,
    'The sweep journals the expiry and writes grant.expired with the credits lost.'
);

-- ---------------------------------------------------------------- charge.refunded

create temp table holder_charge as select * from credit_deduct_credits('test_holder', 7);
select credit_refund_transaction((select transaction_id from holder_charge), 3);
select is(
    (select (payload ->> 'amount')::bigint from credit_events
     where user_id = 'test_holder' and type = 'charge.refunded'),
    3::bigint,
    'A refund writes charge.refunded with the amount given back.'
);

-- ---------------------------------------------------------------- delivery

create temp table endpoint as
select * from credit_set_event_endpoint('http://127.0.0.1:9/hook', 'a-secret-of-16-chars!');
select credit_deduct_credits('test_holder', 20);  -- 26 -> 6: no alert, not depleted
select credit_deduct_credits('test_holder', 6);  -- -> 0: balance.depleted
create temp table first_claim as select * from credit_claim_event_deliveries(10, 60);
select is(
    (select count(*) from first_claim), 1::bigint,
    'The one event written while the endpoint is enabled is claimed.'
);
select is(
    (select count(*) from credit_claim_event_deliveries(10, 60)), 0::bigint,
    'A claimed delivery is not claimed again during its lease.'
);
select ok(
    credit_finish_event_delivery((select claim_id from first_claim), false, 'HTTP 503', 0),
    'A failed attempt is reported, due again at once (Retry-After: 0).'
);
create temp table second_claim as select * from credit_claim_event_deliveries(10, 60);
select is(
    (select attempt from second_claim), 2,
    'It is claimed again, as the second attempt.'
);
select is(
    credit_finish_event_delivery((select claim_id from first_claim), true), false,
    'The first, stale claim can no longer report it.'
);
select ok(
    credit_finish_event_delivery((select claim_id from second_claim), true),
    'The second claim reports it delivered.'
);
select is(
    (select delivery from credit_events where id = (select event_id from second_claim)),
    'delivered',
    'The event is marked delivered.'
);
select is(
    (select attempts from credit_event_deliveries
     where event_id = (select event_id from second_claim)),
    2,
    'After two attempts.'
);

-- ---------------------------------------------------------------- reading as users

select credit_add_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1);
select credit_deduct_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1);
set local role authenticated;
set local request.jwt.claims to
    '{"sub": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "role": "authenticated"}';
select results_eq(
    $$select user_id, type from credit_events$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 'balance.depleted')$$,
    'A signed-in user reads their own event and nobody else''s.'
);
set local request.jwt.claims to
    '{"sub": "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", "role": "authenticated"}';
select throws_ok(
    $$select * from credit_list_events('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')$$, '42501', null,
    'Another user asking for them by id is refused (42501).'
);
reset role;

select * from finish();
rollback;
