-- Plans and feature gates: credit_upsert_plan, credit_assign_plan, credit_get_user_plan,
-- credit_check_feature with the truthy convention; the default plan; a user without any
-- plan gets no features (never an error); validation; who may read which plan.
--
-- Actors: test_owner (assigned the plan 'pro'), test_member (no assignment: the default
-- plan once there is one), test_stranger (a signed-in user, uuid id, on 'team-plan').
begin;
select plan(38);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

\ir helpers/tests_schema.psql

-- whatever this database holds, this file starts without a default plan
update credit_plans set is_default = false where is_default;

-- ---------------------------------------------------------------- no plan at all

select is(
    to_jsonb(credit_get_user_plan('test_member')),
    '{"user_id": "test_member", "plan_id": null, "plan_name": null, "features": {},
      "is_default": false, "allowance": null, "allowance_period": null, "rollover_cap": null,
      "assigned_at": null}'::jsonb,
    'A user with no plan and no default plan gets no plan and empty features, not an error.'
);
select is(
    to_jsonb(credit_check_feature('test_member', 'export')),
    '{"user_id": "test_member", "feature": "export", "has_feature": false, "value": null,
      "plan_id": null}'::jsonb,
    'Without any plan every feature check answers no.'
);

-- ---------------------------------------------------------------- upsert a plan

select is(
    to_jsonb(credit_upsert_plan(
        'pro', 'Pro',
        '{"export": true, "max_projects": 10, "tier": "gold", "beta": false, "legacy": null,
          "zero": 0, "empty": "", "limits": {"rpm": 60}, "models": []}'
    )) - 'created_at' - 'updated_at',
    '{"plan_id": "pro", "name": "Pro", "features": {"export": true, "max_projects": 10,
      "tier": "gold", "beta": false, "legacy": null, "zero": 0, "empty": "",
      "limits": {"rpm": 60}, "models": []}, "is_default": false, "allowance": null,
      "allowance_period": null, "rollover_cap": null}'::jsonb,
    'credit_upsert_plan creates a plan and returns it.'
);
select is(
    (to_jsonb(credit_assign_plan('test_owner', 'pro')) - 'features'),
    '{"user_id": "test_owner", "plan_id": "pro", "plan_name": "Pro", "is_default": false,
      "allowance": null, "allowance_period": null, "rollover_cap": null,
      "assigned_at": "2030-01-01T00:00:00+00:00"}'::jsonb,
    'credit_assign_plan assigns it and returns the user''s plan.'
);

-- ---------------------------------------------------------------- the truthy convention

select results_eq(
    $$select f.feature, r.has_feature, r.value
      from unnest(array['export', 'max_projects', 'tier', 'zero', 'empty', 'limits', 'models',
                        'beta', 'legacy', 'absent']) with ordinality as f (feature, n)
      cross join lateral credit_check_feature('test_owner', f.feature) as r
      order by f.n$$,
    $$values ('export', true, 'true'::jsonb), ('max_projects', true, '10'),
             ('tier', true, '"gold"'), ('zero', true, '0'), ('empty', true, '""'),
             ('limits', true, '{"rpm": 60}'), ('models', true, '[]'),
             ('beta', false, 'false'), ('legacy', false, null), ('absent', false, null)$$,
    'true, numbers (0 too), strings (empty too), objects and arrays are yes; false, null and'
    || ' absent are no; the value comes back for a numeric limit.'
);
select is(
    (credit_check_feature('test_owner', 'export')).plan_id, 'pro',
    'The answer names the plan it came from.'
);
select is(
    (credit_check_feature('test_owner', 'Export')).has_feature, false,
    'Feature names are case-sensitive keys.'
);

-- ---------------------------------------------------------------- the default plan

select lives_ok(
    $$select credit_upsert_plan('free', 'Free', '{"export": false, "max_projects": 1}',
                                p_is_default => true)$$,
    'A plan can be made the default.'
);
select is(
    to_jsonb(credit_get_user_plan('test_member')) - 'features',
    '{"user_id": "test_member", "plan_id": "free", "plan_name": "Free", "is_default": true,
      "allowance": null, "allowance_period": null, "rollover_cap": null,
      "assigned_at": null}'::jsonb,
    'A user without an assignment is on the default plan (is_default, no assigned_at).'
);
select is(
    to_jsonb(credit_check_feature('test_member', 'max_projects')) - 'user_id' - 'feature',
    '{"has_feature": true, "value": 1, "plan_id": "free"}'::jsonb,
    'Their features are the default plan''s.'
);
select is(
    (credit_get_user_plan('test_owner')).plan_id, 'pro',
    'An assigned user keeps their own plan.'
);
select lives_ok(
    $$select credit_upsert_plan('basic', 'Basic', '{}', p_is_default => true)$$,
    'Making another plan the default ...'
);
select results_eq(
    $$select id from credit_plans where is_default$$, $$values ('basic')$$,
    '... moves the flag: there is exactly one default plan.'
);

-- ---------------------------------------------------------------- updates and reassignments

select is(
    (credit_upsert_plan('pro', 'Pro 2', '{"export": false}')).features, '{"export": false}'::jsonb,
    'Upserting an existing plan replaces its name and features.'
);
select is(
    (credit_check_feature('test_owner', 'export')).has_feature, false,
    'Assigned users see the new features at once.'
);
select is(
    (select (credit_upsert_plan('pro', 'Pro 2', '{}')).created_at) = '2030-01-01 00:00:00+00',
    true,
    'created_at stays the first creation time.'
);
set local ducto.now to '2030-01-05 00:00:00+00';
select is(
    (credit_assign_plan('test_owner', 'pro')).assigned_at, '2030-01-01 00:00:00+00'::timestamptz,
    'Assigning the plan a user already has keeps the original assigned_at.'
);
select is(
    (credit_assign_plan('test_owner', 'free')).assigned_at, '2030-01-05 00:00:00+00'::timestamptz,
    'Assigning another plan moves assigned_at.'
);
select is(
    to_jsonb(credit_assign_plan('test_owner', null)) - 'features' - 'user_id',
    '{"plan_id": "basic", "plan_name": "Basic", "is_default": true, "allowance": null,
      "allowance_period": null, "rollover_cap": null, "assigned_at": null}'::jsonb,
    'Assigning null removes the assignment: back on the default plan.'
);

-- ---------------------------------------------------------------- errors

select throws_ok(
    $$select credit_assign_plan('test_owner', 'nope')$$, 'DC080', 'plan ''nope'' does not exist',
    'Assigning an unknown plan is DC080.'
);
select is(
    (select count(*) from credit_user_plans where user_id = 'test_owner'), 0::bigint,
    '(and assigns nothing).'
);
select throws_ok(
    $$select credit_upsert_plan('Pro Plan', 'x')$$, 'DC006', null,
    'A plan id with upper case or spaces is DC006.'
);
select throws_ok(
    $$select credit_upsert_plan('p', '')$$, 'DC006', 'plan name must be 1 to 200 characters',
    'An empty plan name is DC006.'
);
select throws_ok(
    $$select credit_upsert_plan('p', 'P', '[1]')$$, 'DC006',
    'features must be a JSON object of at most 16384 bytes',
    'Features that are not an object are DC006.'
);
select throws_ok(
    $$select credit_upsert_plan('p', 'P', null)$$, 'DC006', null,
    'Null features are DC006.'
);
select throws_ok(
    $$select credit_upsert_plan('p', 'P', p_allowance => 100)$$, 'DC006', null,
    'An allowance without a period is DC006.'
);
select throws_ok(
    $$select credit_upsert_plan('p', 'P', p_allowance => 1.5, p_allowance_period => 'month')$$,
    'DC001', null,
    'A fractional allowance is DC001.'
);
select throws_ok(
    $$select credit_upsert_plan('p', 'P', p_rollover_cap => 5)$$, 'DC006',
    'allowance_period and rollover_cap need an allowance',
    'A rollover cap without an allowance is DC006.'
);
select throws_ok(
    $$select credit_upsert_plan('p', 'P', p_allowance => 5, p_allowance_period => 'month',
                                p_is_default => true)$$,
    'DC006', 'the default plan cannot carry an allowance: allowances go to assigned users',
    'The default plan cannot carry an allowance (the allowance job lists assigned users).'
);
select throws_ok(
    $$select credit_check_feature('test_owner', '')$$, 'DC006', null,
    'An empty feature name is DC006.'
);
select throws_ok(
    $$select credit_get_user_plan('')$$, 'DC002', null,
    'A blank user id is DC002.'
);

-- ---------------------------------------------------------------- as a signed-in user

select credit_upsert_plan('team-plan', 'Team', '{"sso": true}');
select credit_assign_plan('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 'team-plan');
select credit_assign_plan('test_owner', 'pro');

set local role authenticated;
set local request.jwt.claims to
    '{"sub": "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", "role": "authenticated"}';

select is(
    to_jsonb(credit_check_feature('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 'sso'))
    - 'user_id' - 'feature',
    '{"has_feature": true, "value": true, "plan_id": "team-plan"}'::jsonb,
    'A signed-in user checks their own features.'
);
select is(
    (credit_get_user_plan('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')).plan_name, 'Team',
    'A signed-in user reads their own plan.'
);
select throws_ok(
    $$select credit_get_user_plan('test_owner')$$, '42501',
    'a signed-in user may read only their own plan',
    'A signed-in user cannot read another user''s plan.'
);
select throws_ok(
    $$select credit_check_feature('test_owner', 'export')$$, '42501', null,
    'Nor check another user''s features.'
);
select results_eq(
    $$select id from credit_plans order by id$$,
    $$values ('basic'), ('team-plan')$$,
    'Through RLS a user sees their own plan and the default plan, not the others.'
);
select results_eq(
    $$select user_id, plan_id from credit_user_plans$$,
    $$values ('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 'team-plan')$$,
    'And only their own assignment.'
);
select throws_ok(
    $$select credit_assign_plan('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 'pro')$$, '42501', null,
    'A signed-in user cannot assign themselves a plan.'
);

select * from finish();
rollback;
