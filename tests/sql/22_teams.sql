-- Teams: credit_upsert_team creates a team and its pool (the account 'team:<id>');
-- credit_set_team_member and credit_remove_team_member manage members, roles and limits;
-- members read their team, their membership and the pool's account, journal and grants
-- through row-level security; other users read nothing of it.
--
-- Actors (auth.uid() is a uuid, so the signed-in ones have uuid ids):
--   team T1 11111111-1111-4111-8111-111111111111, its pool topped up with 500
--   test_owner    aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa  owner of T1, 20 credits of their own
--   test_member   cccccccc-cccc-4ccc-8ccc-cccccccccccc  member of T1 with a limit
--   test_stranger bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb  in no team, 30 credits of their own
begin;
select plan(40);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

\ir helpers/tests_schema.psql

-- ---------------------------------------------------------------- create a team

select is(
    to_jsonb(credit_upsert_team('11111111-1111-4111-8111-111111111111', 'Acme', 10)),
    '{"team_id": "11111111-1111-4111-8111-111111111111", "name": "Acme",
      "account_user_id": "team:11111111-1111-4111-8111-111111111111", "min_balance": 10,
      "created_at": "2030-01-01T00:00:00+00:00", "updated_at": "2030-01-01T00:00:00+00:00"}'::jsonb,
    'credit_upsert_team creates a team with a floor and names its pool''s account.'
);
select results_eq(
    $$select a.user_id, a.balance, a.version from credit_accounts as a
      join credit_teams as t on t.account_id = a.id
      where t.id = '11111111-1111-4111-8111-111111111111'$$,
    $$values ('team:11111111-1111-4111-8111-111111111111', 0::bigint, 0::bigint)$$,
    'The pool is an account of its own, empty.'
);
select is(
    (credit_add_credits('team:11111111-1111-4111-8111-111111111111', 500)).balance_after,
    500::bigint,
    'The pool is topped up like any account: credit_add_credits(''team:<id>'', ...).'
);
set local ducto.now to '2030-01-02 00:00:00+00';
select is(
    to_jsonb(credit_upsert_team('11111111-1111-4111-8111-111111111111', 'Acme Inc', 0))
    - 'team_id' - 'account_user_id',
    '{"name": "Acme Inc", "min_balance": 0, "created_at": "2030-01-01T00:00:00+00:00",
      "updated_at": "2030-01-02T00:00:00+00:00"}'::jsonb,
    'Upserting it again renames it and moves its floor; created_at stays.'
);
select is(
    (select count(*) from credit_accounts
     where user_id = 'team:11111111-1111-4111-8111-111111111111'),
    1::bigint,
    'And keeps the one pool.'
);
select credit_upsert_team('11111111-1111-4111-8111-111111111111', 'Acme', 10);

-- ---------------------------------------------------------------- team errors

select lives_ok(
    $$select credit_add_credits('team:22222222-2222-4222-8222-222222222222', 5)$$,
    '(An account named like a pool, with a history, exists before its team.)'
);
select throws_ok(
    $$select credit_upsert_team('22222222-2222-4222-8222-222222222222', 'Squatter')$$,
    'DC006', null,
    'A team cannot adopt an existing account with a history as its pool.'
);
select throws_ok(
    $$select credit_upsert_team(null, 'x')$$, 'DC006', 'team_id must be a uuid',
    'A null team id is DC006.'
);
select throws_ok(
    $$select credit_upsert_team('33333333-3333-4333-8333-333333333333', '')$$, 'DC006',
    'team name must be 1 to 200 characters',
    'An empty team name is DC006.'
);
select throws_ok(
    $$select credit_upsert_team('33333333-3333-4333-8333-333333333333', 'x', -1)$$, 'DC001', null,
    'A negative floor is DC001.'
);
select is(
    (select count(*) from credit_teams where id = '33333333-3333-4333-8333-333333333333'),
    0::bigint,
    '(Refused upserts create nothing.)'
);

-- ---------------------------------------------------------------- members

select is(
    to_jsonb(credit_set_team_member(
        '11111111-1111-4111-8111-111111111111', 'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 'owner'
    )),
    '{"team_id": "11111111-1111-4111-8111-111111111111",
      "user_id": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "role": "owner", "spend_limit": null,
      "limit_period": null, "spent_in_period": null,
      "joined_at": "2030-01-02T00:00:00+00:00"}'::jsonb,
    'credit_set_team_member adds a member with a role and no limit.'
);
select is(
    to_jsonb(credit_set_team_member(
        '11111111-1111-4111-8111-111111111111', 'cccccccc-cccc-4ccc-8ccc-cccccccccccc',
        p_spend_limit => 100, p_limit_period => 'day'
    )) - 'team_id' - 'joined_at',
    '{"user_id": "cccccccc-cccc-4ccc-8ccc-cccccccccccc", "role": "member", "spend_limit": 100,
      "limit_period": "day", "spent_in_period": 0}'::jsonb,
    'A member with a daily limit of 100 (role member by default) has spent 0 so far.'
);
set local ducto.now to '2030-01-03 00:00:00+00';
select is(
    to_jsonb(credit_set_team_member(
        '11111111-1111-4111-8111-111111111111', 'cccccccc-cccc-4ccc-8ccc-cccccccccccc', 'admin',
        200, 'month'
    )) - 'team_id' - 'user_id' - 'spent_in_period',
    '{"role": "admin", "spend_limit": 200, "limit_period": "month",
      "joined_at": "2030-01-02T00:00:00+00:00"}'::jsonb,
    'Setting a member again changes role and limit; joined_at stays.'
);
select credit_set_team_member(
    '11111111-1111-4111-8111-111111111111', 'cccccccc-cccc-4ccc-8ccc-cccccccccccc',
    p_spend_limit => 100, p_limit_period => 'day'
);
select throws_ok(
    $$select credit_set_team_member('11111111-1111-4111-8111-111111111111', 'x', 'boss')$$,
    'DC006', null,
    'An unknown role is DC006.'
);
select throws_ok(
    $$select credit_set_team_member('11111111-1111-4111-8111-111111111111', 'x',
                                    p_limit_period => 'day')$$,
    'DC006', 'limit_period needs a spend_limit',
    'A limit period without a limit is DC006.'
);
select throws_ok(
    $$select credit_set_team_member('11111111-1111-4111-8111-111111111111', 'x',
                                    p_spend_limit => 5)$$,
    'DC006', null,
    'A limit without a period is DC006.'
);
select throws_ok(
    $$select credit_set_team_member('11111111-1111-4111-8111-111111111111', 'x',
                                    p_spend_limit => -5, p_limit_period => 'day')$$,
    'DC001', null,
    'A negative limit is DC001.'
);
select throws_ok(
    $$select credit_set_team_member('44444444-4444-4444-8444-444444444444', 'x')$$,
    'DC081', 'team 44444444-4444-4444-8444-444444444444 does not exist',
    'A member of an unknown team is DC081.'
);
select throws_ok(
    $$select credit_set_team_member('11111111-1111-4111-8111-111111111111', '')$$,
    'DC002', null,
    'A blank user id is DC002.'
);
select lives_ok(
    $$select credit_set_team_member('11111111-1111-4111-8111-111111111111', 'test_leaver')$$,
    '(test_leaver joins ...)'
);
select is(
    credit_remove_team_member('11111111-1111-4111-8111-111111111111', 'test_leaver'), true,
    'credit_remove_team_member removes a member: true ...'
);
select is(
    credit_remove_team_member('11111111-1111-4111-8111-111111111111', 'test_leaver'), false,
    '... and false when there was no such member.'
);
select throws_ok(
    $$select credit_remove_team_member('44444444-4444-4444-8444-444444444444', 'x')$$,
    'DC081', null,
    'Removing from an unknown team is DC081.'
);
select results_eq(
    $$select user_id, role from credit_team_members
      where team_id = '11111111-1111-4111-8111-111111111111' order by user_id$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 'owner'),
             ('cccccccc-cccc-4ccc-8ccc-cccccccccccc', 'member')$$,
    'T1 has its owner and its member.'
);

-- ---------------------------------------------------------------- row-level security

select credit_add_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 20);
select credit_add_credits('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 30);

set local role authenticated;
set local request.jwt.claims to
    '{"sub": "cccccccc-cccc-4ccc-8ccc-cccccccccccc", "role": "authenticated"}';

select results_eq(
    $$select id, name from credit_teams$$,
    $$values ('11111111-1111-4111-8111-111111111111'::uuid, 'Acme')$$,
    'A member reads their team.'
);
select results_eq(
    $$select user_id, spend_limit from credit_team_members$$,
    $$values ('cccccccc-cccc-4ccc-8ccc-cccccccccccc', 100::bigint)$$,
    'And their own membership, with their limit (not the other members'').'
);
select results_eq(
    $$select user_id, balance from credit_accounts$$,
    $$values ('team:11111111-1111-4111-8111-111111111111', 500::bigint)$$,
    'They read the pool''s balance through RLS.'
);
select results_eq(
    $$select user_id, type, amount from credit_transactions$$,
    $$values ('team:11111111-1111-4111-8111-111111111111', 'adjustment', 500::bigint)$$,
    'And the pool''s journal.'
);
select is(
    (select sum(remaining) from credit_grants), 500::numeric,
    'And its grants.'
);
select throws_ok(
    $$select credit_get_balance('team:11111111-1111-4111-8111-111111111111')$$, '42501', null,
    '(credit_get_balance stays a reader of one''s own account only.)'
);

set local request.jwt.claims to
    '{"sub": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "role": "authenticated"}';
select results_eq(
    $$select user_id, balance from credit_accounts order by user_id$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 20::bigint),
             ('team:11111111-1111-4111-8111-111111111111', 500)$$,
    'The owner reads their own account and the pool.'
);
select is(
    (select count(*) from credit_transactions), 2::bigint,
    'And both journals (one row each).'
);

set local request.jwt.claims to
    '{"sub": "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", "role": "authenticated"}';
select is_empty(
    $$select 1 from credit_teams union all select 1 from credit_team_members$$,
    'A user in no team reads no team and no membership.'
);
select results_eq(
    $$select user_id from credit_accounts$$,
    $$values ('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')$$,
    'Nor the pool: only their own account.'
);
select is_empty(
    $$select 1 from credit_transactions where user_id like 'team:%'
      union all select 1 from credit_grants where user_id like 'team:%'$$,
    'Nor the pool''s journal or grants.'
);
select throws_ok(
    $$select credit_set_team_member('11111111-1111-4111-8111-111111111111',
                                    'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')$$,
    '42501', null,
    'A user cannot add themselves to a team.'
);
select throws_ok(
    $$update credit_team_members set spend_limit = null$$, '42501', null,
    'Nor lift a limit by writing the table.'
);

reset role;
set local role anon;
select throws_ok(
    $$select * from credit_teams$$, '42501', null, 'anon reads no team.'
);
reset role;

select is_empty($$select * from credit_verify_ledger()$$, 'The ledger is consistent.');

select * from finish();
rollback;
