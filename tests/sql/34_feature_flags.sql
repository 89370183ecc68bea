-- Feature flags (credit_accounts.features: 1 alerts, 2 limits, 4 scoped credits, 8 auto
-- top-up): each setter and remover keeps them equal to credit_private.account_features;
-- a plan's alert reaches the plan's users, the default plan's the users without a plan and
-- team pools, and a new account starts with the alerts that apply to it; the row check.
--
-- Actors: test_owner (limits, then none; a scoped grant; an auto top-up rule), test_member
-- (an alert of their own, then a plan's), test_stranger (no plan: the default plan's).
begin;
select plan(16);

set local timezone to 'UTC';
set local ducto.now to '2030-01-10 00:00:00+00';

\ir helpers/tests_schema.psql

select credit_add_credits('test_owner', 1000);
select credit_add_credits('test_member', 1000);
select credit_add_credits('test_stranger', 1000);
select is(
    (select features from credit_accounts where user_id = 'test_owner'), 0::smallint,
    'A new account without any feature has no flag.'
);

select credit_set_limits('test_owner', '[{"period": "day", "spend_limit": 500}]');
select is(
    (select features from credit_accounts where user_id = 'test_owner'), 2::smallint,
    'Setting limits sets the limits flag.'
);
select credit_set_limits('test_owner');
select is(
    (select features from credit_accounts where user_id = 'test_owner'), 0::smallint,
    'Removing every limit clears it.'
);

select credit_add_credits('test_owner', 10, p_scope => array['feature:export']);
select credit_set_auto_topup(
    'test_owner', 50, 2, 'usd', 'cus_owner', 'pm_owner', p_amount => 100, p_enabled => false
);
select is(
    (select features from credit_accounts where user_id = 'test_owner'), 12::smallint,
    'A scoped grant and an auto top-up rule, even a disabled one, set their flags.'
);

select credit_set_alert('test_member', p_threshold => 100);
select is(
    (select features from credit_accounts where user_id = 'test_member'), 1::smallint,
    'A user''s alert sets the alerts flag of their account.'
);
select credit_delete_alert((select id from credit_balance_alerts where user_id = 'test_member'));
select is(
    (select features from credit_accounts where user_id = 'test_member'), 0::smallint,
    'Deleting it clears the flag.'
);

select credit_upsert_plan('flags_pro', 'Pro');
select credit_set_alert(p_plan_id => 'flags_pro', p_percent => 10);
select is(
    (select features from credit_accounts where user_id = 'test_member'), 0::smallint,
    'A plan''s alert does not reach a user not on the plan.'
);
select credit_assign_plan('test_member', 'flags_pro');
select is(
    (select features from credit_accounts where user_id = 'test_member'), 1::smallint,
    'Assigning a plan with an alert sets the flag.'
);
select credit_assign_plan('test_member', null);
select is(
    (select features from credit_accounts where user_id = 'test_member'), 0::smallint,
    'Leaving the plan clears it.'
);

select credit_upsert_team('00000000-0000-4000-8000-0000000000f1', 'Flags team');
select credit_upsert_plan('flags_free', 'Free', p_is_default => true);
select credit_set_alert(p_plan_id => 'flags_free', p_threshold => 900);
select is(
    (select array_agg(features order by user_id) from credit_accounts
     where user_id in ('test_stranger', 'team:00000000-0000-4000-8000-0000000000f1')),
    array[1, 1]::smallint[],
    'The default plan''s alert sets the flag of users without a plan and of team pools.'
);
select credit_deduct_credits('test_stranger', 200);
select is(
    (select count(*) from credit_events where user_id = 'test_stranger' and type = 'balance.low'),
    1::bigint,
    'And it fires for them.'
);
select credit_add_credits('test_newcomer', 1000);
select is(
    (select features from credit_accounts where user_id = 'test_newcomer'), 1::smallint,
    'A new account starts with the flag of the default plan''s alert.'
);
select credit_upsert_plan('flags_free', 'Free', p_is_default => false);
select is(
    (select features from credit_accounts where user_id = 'test_stranger'), 0::smallint,
    'With no default plan any more, the flag goes.'
);
select credit_assign_plan('test_member', 'flags_pro');
select credit_delete_alert((select id from credit_balance_alerts where plan_id = 'flags_pro'));
select is(
    (select features from credit_accounts where user_id = 'test_member'), 0::smallint,
    'Deleting a plan''s alert clears the flags of its users.'
);

select is_empty(
    'select user_id from credit_accounts
     where features <> credit_private.account_features(id)',
    'Every account''s flags equal a computation from scratch.'
);
select throws_ok(
    'update credit_accounts set features = 16 where user_id = ''test_owner''', '23514', null,
    'A flag outside the four features is refused by the row check.'
);

select * from finish();
rollback;
