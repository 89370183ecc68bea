-- credit_deduct_team: usage priced under the active pricing and charged to a team's pool,
-- attributed to the member; a non-member (DC082), a member over their limit (DC083) and a
-- pool that cannot pay above its floor (DC084) are refused and nothing is written; limits
-- count net spend per calendar period, refunds included; a member's keys are the member's.
--
-- Pricing: model 'unit' costs 1 credit per request, so {"model": "unit", "requests": n}
-- costs n; 'other' costs the same; 'free' costs nothing.
-- Actors: team T (floor 10, pool 100); test_owner (owner, no limit); test_member (member,
-- 30 a day); test_stranger (no member).
begin;
select plan(41);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 10:00:00+00';

\ir helpers/tests_schema.psql

select credit_publish_pricing(
    '{"models": [{"model": "unit", "input": 0, "output": 0, "request": 1},
                 {"model": "other", "input": 0, "output": 0, "request": 1},
                 {"model": "free", "input": 0, "output": 0}],
      "default": null}'
);
select credit_upsert_team('11111111-1111-4111-8111-111111111111', 'T', 10);
select credit_add_credits('team:11111111-1111-4111-8111-111111111111', 100);
select credit_set_team_member('11111111-1111-4111-8111-111111111111', 'test_owner', 'owner');
select credit_set_team_member(
    '11111111-1111-4111-8111-111111111111', 'test_member', p_spend_limit => 30,
    p_limit_period => 'day'
);

-- the pool's journal, newest last
create temp view pool_journal as
select t.seq, t.type, t.amount, t.balance_after, t.attributed_user_id, t.model,
    t.pricing_version is not null as priced
from credit_transactions as t
where t.user_id = 'team:11111111-1111-4111-8111-111111111111';

-- ---------------------------------------------------------------- a member spends

create temp table first_charge as
select * from credit_deduct_team(
    '11111111-1111-4111-8111-111111111111', 'test_member', '{"model": "unit", "requests": 12}',
    '{"chat": 7}'
);
select is(
    (select to_jsonb(r) - 'transaction_id' - 'pricing_version' from first_charge as r),
    '{"team_id": "11111111-1111-4111-8111-111111111111", "user_id": "test_member",
      "amount": 12, "balance_after": 88, "available_after": 88, "spent_in_period": 12,
      "spend_limit": 30, "limit_period": "day", "created_at": "2030-01-01T10:00:00+00:00",
      "is_replay": false}'::jsonb,
    'A member''s charge is priced (12), debits the pool (88) and reports their spend (12 of 30).'
);
select results_eq(
    $$select type, amount, balance_after, attributed_user_id, model, priced from pool_journal
      where seq = 2$$,
    $$values ('usage', -12::bigint, 88::bigint, 'test_member', 'unit', true)$$,
    'It is one priced usage row on the pool, attributed to the member.'
);
select is(
    (select t.metadata from credit_transactions as t
     where t.id = (select transaction_id from first_charge)),
    '{"chat": 7}'::jsonb,
    'With the metadata given.'
);
select is(
    (select (credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "other", "requests": 18}')).spent_in_period),
    30::bigint,
    'Spending up to the limit exactly is allowed: 12 + 18 = 30.'
);

-- ---------------------------------------------------------------- the member's limit

select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "unit", "requests": 1}')$$,
    'DC083',
    'spending limit of user ''test_member'' in team 11111111-1111-4111-8111-111111111111'
    || ' exceeded: spent 30 of 30 this day, needed 1',
    'One credit more is DC083, the member''s limit.'
);
select is(
    (tests.error_of($$select credit_deduct_team('11111111-1111-4111-8111-111111111111',
        'test_member', '{"model": "unit", "requests": 1}')$$) ->> 'detail')::jsonb,
    '{"team_id": "11111111-1111-4111-8111-111111111111", "user_id": "test_member",
      "spend_limit": 30, "limit_period": "day", "spent": 30, "needed": 1}'::jsonb,
    'Its detail gives the limit, the period, what was spent and what was needed.'
);
select is(
    (select count(*) from pool_journal), 3::bigint,
    'The refused charge wrote nothing.'
);
select is(
    (credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "free"}')).amount,
    0::bigint,
    'Usage priced at 0 is admitted even at the limit ...'
);
select is(
    (select count(*) from pool_journal), 3::bigint,
    '... and journals nothing.'
);

-- a refund of the member's charge gives room back in the same period
select is(
    (credit_refund_transaction((select transaction_id from first_charge), 5)).balance_after,
    75::bigint,
    'Refunding 5 of the first charge gives them back to the pool (70 + 5).'
);
select results_eq(
    $$select type, amount, attributed_user_id from pool_journal order by seq desc limit 1$$,
    $$values ('refund', 5::bigint, 'test_member')$$,
    'The refund row inherits the charge''s attribution.'
);
select is(
    (credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "unit", "requests": 5}')).spent_in_period,
    30::bigint,
    'So the member may spend 5 more: net 30 - 5 + 5 = 30.'
);
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "unit", "requests": 1}')$$,
    'DC083', null,
    'And then no more.'
);

-- a new day is a new period
set local ducto.now to '2030-01-02 00:00:00+00';
select is(
    (credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "unit", "requests": 30}')).spent_in_period,
    30::bigint,
    'At midnight UTC the daily limit starts over: 30 again.'
);
select is(
    (credit_set_team_member('11111111-1111-4111-8111-111111111111', 'test_member',
        p_spend_limit => 100, p_limit_period => 'month')).spent_in_period,
    60::bigint,
    'Over a month the member has spent 60 net (12 + 18 - 5 + 5 + 30).'
);
select credit_set_team_member(
    '11111111-1111-4111-8111-111111111111', 'test_member', p_spend_limit => 30,
    p_limit_period => 'day'
);

-- ---------------------------------------------------------------- the pool's floor

select is(
    (credit_get_balance('team:11111111-1111-4111-8111-111111111111')).available, 40::bigint,
    '(The pool has 40 left.)'
);
select is(
    (credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_owner',
        '{"model": "unit", "requests": 30}')).available_after,
    10::bigint,
    'A member without a limit may spend down to the floor exactly: 40 - 30 = 10.'
);
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_owner',
        '{"model": "unit", "requests": 1}')$$,
    'DC084',
    'team 11111111-1111-4111-8111-111111111111 has too few credits: available 10, needed 1'
    || ' with min_balance 10',
    'One credit below the floor is DC084, the pool exhausted.'
);
select is(
    (tests.error_of($$select credit_deduct_team('11111111-1111-4111-8111-111111111111',
        'test_owner', '{"model": "unit", "requests": 1}')$$) ->> 'detail')::jsonb,
    '{"team_id": "11111111-1111-4111-8111-111111111111", "user_id": "test_owner",
      "available": 10, "needed": 1, "min_balance": 10}'::jsonb,
    'Its detail gives what was available and needed, and the floor.'
);
select credit_upsert_team('11111111-1111-4111-8111-111111111111', 'T', 0);
select credit_publish_pricing(
    '{"models": [{"model": "unit", "input": 0, "output": 0, "request": 1}],
      "default": null, "min_balance": 4}'
);
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_owner',
        '{"model": "unit", "requests": 7}')$$,
    'DC084', null,
    'With a team floor of 0 the pricing''s floor (4) still holds: 10 - 7 < 4.'
);
select is(
    (credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_owner',
        '{"model": "unit", "requests": 6}')).available_after,
    4::bigint,
    '10 - 6 = 4 is admitted.'
);
select is(
    (credit_get_balance('team:11111111-1111-4111-8111-111111111111')).balance, 4::bigint,
    'The pool never went below its floor.'
);
select credit_add_credits('team:11111111-1111-4111-8111-111111111111', 100);

-- ---------------------------------------------------------------- who may spend

select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_stranger',
        '{"model": "unit", "requests": 1}')$$,
    'DC082',
    'user ''test_stranger'' is not a member of team 11111111-1111-4111-8111-111111111111',
    'A user who is not a member is DC082.'
);
select credit_set_team_member('11111111-1111-4111-8111-111111111111', 'test_leaver');
select lives_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_leaver',
        '{"model": "unit", "requests": 1}')$$,
    '(test_leaver spends while a member ...)'
);
select credit_remove_team_member('11111111-1111-4111-8111-111111111111', 'test_leaver');
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_leaver',
        '{"model": "unit", "requests": 1}')$$,
    'DC082', null,
    '... and is refused once removed.'
);
select is(
    (select count(*) from pool_journal where attributed_user_id = 'test_leaver'), 1::bigint,
    'Their past charge stays attributed to them.'
);
select throws_ok(
    $$select credit_deduct_team('44444444-4444-4444-8444-444444444444', 'test_owner',
        '{"model": "unit"}')$$,
    'DC081', null,
    'An unknown team is DC081.'
);
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_owner',
        '{"model": "nope"}')$$,
    'DC061', null,
    'A model the pricing does not price is DC061, as for a user''s charge.'
);
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_owner',
        '{"model": "unit", "requests": -1}')$$,
    'DC007', null,
    'Invalid metrics are DC007.'
);
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', ' ',
        '{"model": "unit"}')$$,
    'DC002', null,
    'A blank user id is DC002.'
);

-- ---------------------------------------------------------------- idempotency

create temp table keyed as
select * from credit_deduct_team(
    '11111111-1111-4111-8111-111111111111', 'test_owner', '{"model": "unit", "requests": 3}',
    p_idempotency_key => 'turn-1'
);
select is(
    (select to_jsonb(r) - 'is_replay' from credit_deduct_team(
        '11111111-1111-4111-8111-111111111111', 'test_owner', '{"model": "unit", "requests": 3}',
        p_idempotency_key => 'turn-1') as r),
    (select to_jsonb(k) - 'is_replay' from keyed as k),
    'Replaying a keyed team charge returns the first result ...'
);
select is(
    (select count(*) from credit_transactions where idempotency_key = 'turn-1'), 1::bigint,
    '... and charges once.'
);
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "unit", "requests": 3}', p_idempotency_key => 'turn-1')$$,
    'DC083', null,
    'The same key from another member is that member''s own: neither a replay nor a'
    || ' conflict, the charge is judged as any (here over the member''s limit).'
);
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_owner',
        '{"model": "unit", "requests": 4}', p_idempotency_key => 'turn-1')$$,
    'DC020',
    'idempotency key ''turn-1'' was already used for team_usage with other parameters',
    'The same key with other usage is DC020, naming the key as the member gave it.'
);
select is(
    (select count(*) from credit_idempotency_keys
     where idempotency_key = 'test_owner' || chr(31) || 'turn-1'),
    1::bigint,
    'The key is recorded under the member''s id.'
);
select is(
    (select count(*) from credit_idempotency_keys where idempotency_key = 'turn-1'),
    0::bigint,
    'No pool-wide record of it: no other member can meet it.'
);

-- ---------------------------------------------------------------- attribution and the ledger

select results_eq(
    $$select attributed_user_id, -sum(amount)::bigint from pool_journal
      where attributed_user_id is not null group by 1 order by 1$$,
    $$values ('test_leaver', 1::bigint), ('test_member', 60::bigint), ('test_owner', 39::bigint)$$,
    'Every pool charge and refund is attributed: member 60 net, owner 30 + 6 + 3, leaver 1.'
);
select is(
    (select -sum(amount) from pool_journal where type in ('usage', 'refund')),
    (select -sum(amount) from pool_journal where attributed_user_id is not null),
    'The attributed spend sums to the pool''s spend.'
);
select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent.'
);

-- ---------------------------------------------------------------- who may call it

set local role authenticated;
set local request.jwt.claims to '{"sub": "test_member", "role": "authenticated"}';
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "unit"}')$$,
    '42501', null,
    'A signed-in member cannot charge the pool themselves: the backend does.'
);
reset role;
set local role anon;
select throws_ok(
    $$select credit_deduct_team('11111111-1111-4111-8111-111111111111', 'test_member',
        '{"model": "unit"}')$$,
    '42501', null,
    'Nor can anon.'
);
reset role;

select * from finish();
rollback;
