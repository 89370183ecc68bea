-- Row-level security and privileges, exercised as each API role the way PostgREST sets
-- them (SET LOCAL ROLE plus request.jwt.claims): a signed-in user reads only their own
-- rows and balance; anon reads and calls nothing; authenticated calls no write RPC;
-- service_role calls every RPC but cannot write a ledger table directly.
--
-- Actors (auth.uid() is a uuid, so user ids are uuid strings):
--   test_owner     aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa  100 credits, deduct 10, hold 5
--   test_stranger  bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb  50 credits, deduct 3, hold 2 (both keyed)
--
-- Ids needed inside role switches are kept in psql variables (\gset): a temp table made
-- by the owner could not be read by the API roles. Claims are set with SET LOCAL, the same
-- as set_config(..., true), without printing anything into the TAP stream.
begin;
select plan(68);

set local ducto.now to '2030-01-01 00:00:00+00';

\ir helpers/tests_schema.psql

select transaction_id as owner_topup_id
from credit_add_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 100) \gset
select transaction_id as owner_usage_id
from credit_deduct_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 10) \gset
select reservation_id as owner_hold_id
from credit_reserve_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 5) \gset
select transaction_id as stranger_topup_id
from credit_add_credits('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 50) \gset
select transaction_id as stranger_usage_id
from credit_deduct_credits(
    'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 3, p_idempotency_key => 'stranger-k'
) \gset
select reservation_id as stranger_hold_id
from credit_reserve_credits(
    'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 2, p_idempotency_key => 'stranger-hold'
) \gset

-- =============================================================== authenticated: test_owner

set local role authenticated;
set local request.jwt.claims to
    '{"sub": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "role": "authenticated"}';

select results_eq(
    $$select user_id, balance, debt from credit_accounts$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 90::bigint, 0::bigint)$$,
    'A signed-in user sees exactly their own account.'
);
select results_eq(
    $$select user_id, type, amount from credit_transactions order by seq$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 'adjustment', 100::bigint),
             ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 'usage', -10::bigint)$$,
    'They see exactly their own two journal rows.'
);
select results_eq(
    $$select user_id, amount, remaining from credit_grants$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 100::bigint, 90::bigint)$$,
    'They see exactly their own grant.'
);
select results_eq(
    $$select user_id, amount, status from credit_reservations$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 5::bigint, 'active')$$,
    'They see exactly their own hold.'
);
select is_empty(
    $$select user_id from credit_accounts where user_id = 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb'
      union all
      select user_id from credit_transactions
      where user_id = 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb'
      union all
      select user_id from credit_grants where user_id = 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb'
      union all
      select user_id from credit_reservations
      where user_id = 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb'$$,
    'Asking for the other user''s rows by user_id returns nothing from any of the four tables.'
);
select is_empty(
    format('select 1 from credit_transactions where id = %L', :'stranger_usage_id'),
    'Asking for the other user''s transaction by id returns nothing.'
);
select is(
    tests.row_or_error($$select * from credit_get_balance('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')$$),
    '{"user_id": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "balance": 90, "held": 5,
      "available": 85, "scopes": [{"scope": null, "remaining": 90}]}'::jsonb,
    'credit_get_balance for their own id answers balance 90, held 5, available 85.'
);
select throws_ok(
    $$select credit_get_balance('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')$$, '42501',
    'a signed-in user may read only their own balance',
    'credit_get_balance for another user''s id is 42501 (not zeros).'
);
select throws_ok(
    $$select * from credit_grant_draws$$, '42501', null,
    'credit_grant_draws cannot be read by a signed-in user.'
);
select throws_ok(
    $$select * from credit_idempotency_keys$$, '42501', null,
    'credit_idempotency_keys cannot be read by a signed-in user.'
);

-- ---------------------------------------------------------------- authenticated: no writes

select throws_ok(
    $$select credit_add_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1000)$$, '42501', null,
    'A signed-in user cannot add credits, even to themselves.'
);
select throws_ok(
    $$select credit_deduct_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1)$$, '42501', null,
    'A signed-in user cannot call credit_deduct_credits.'
);
select throws_ok(
    $$select credit_reserve_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1)$$, '42501', null,
    'A signed-in user cannot call credit_reserve_credits.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 0)', :'owner_hold_id'), '42501', null,
    'A signed-in user cannot settle their own hold.'
);
select throws_ok(
    format('select credit_release_reservation(%L)', :'owner_hold_id'), '42501', null,
    'A signed-in user cannot release their own hold.'
);
select throws_ok(
    format('select credit_refund_transaction(%L)', :'owner_usage_id'), '42501', null,
    'A signed-in user cannot refund their own usage.'
);
select throws_ok(
    $$select credit_sweep_expired()$$, '42501', null,
    'A signed-in user cannot sweep.'
);
select throws_ok(
    $$select * from credit_verify_ledger()$$, '42501', null,
    'A signed-in user cannot verify the ledger.'
);
select throws_ok(
    $$select credit_schema_version()$$, '42501', null,
    'A signed-in user cannot call credit_schema_version.'
);
select throws_ok(
    $$select credit_private.whole(1, 'amount', 1)$$, '42501', null,
    'A signed-in user cannot call the credit_private helpers.'
);
select throws_ok(
    format(
        $$insert into credit_transactions (account_id, seq, user_id, type, amount, balance_after,
                                           created_at)
          select id, 99, user_id, 'adjustment', 1000, 1090, now() from credit_accounts$$
    ),
    '42501', null,
    'A signed-in user cannot insert a journal row.'
);
select throws_ok(
    $$update credit_accounts set balance = 1000000$$, '42501', null,
    'A signed-in user cannot update their own balance.'
);
select throws_ok(
    $$delete from credit_reservations$$, '42501', null,
    'A signed-in user cannot delete their own hold.'
);
select throws_ok(
    $$update credit_grants set remaining = amount$$, '42501', null,
    'A signed-in user cannot refill their own grant.'
);

-- =============================================================== authenticated: test_stranger

set local request.jwt.claims to
    '{"sub": "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", "role": "authenticated"}';

select results_eq(
    $$select user_id, balance from credit_accounts$$,
    $$values ('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 47::bigint)$$,
    'The other user, signed in, sees only their own account.'
);
select results_eq(
    $$select count(*), min(user_id) from credit_transactions$$,
    $$values (2::bigint, 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')$$,
    'And only their own two journal rows.'
);
select throws_ok(
    $$select credit_get_balance('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')$$, '42501',
    'a signed-in user may read only their own balance',
    'They cannot read test_owner''s balance.'
);

-- =============================================================== authenticated without a subject

set local request.jwt.claims to '{"role": "authenticated"}';

select is_empty(
    $$select 1 from credit_accounts union all select 1 from credit_transactions
      union all select 1 from credit_grants union all select 1 from credit_reservations$$,
    'authenticated without a sub claim sees no rows.'
);
select throws_ok(
    $$select credit_get_balance('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')$$, '42501',
    'a signed-in user may read only their own balance',
    'authenticated without a sub claim cannot read any balance.'
);

reset role;
reset request.jwt.claims;

-- =============================================================== anon

set local role anon;

select throws_ok(
    $$select * from credit_accounts$$, '42501', null, 'anon cannot read credit_accounts.'
);
select throws_ok(
    $$select * from credit_transactions$$, '42501', null,
    'anon cannot read credit_transactions.'
);
select throws_ok(
    $$select * from credit_grants$$, '42501', null, 'anon cannot read credit_grants.'
);
select throws_ok(
    $$select * from credit_grant_draws$$, '42501', null, 'anon cannot read credit_grant_draws.'
);
select throws_ok(
    $$select * from credit_reservations$$, '42501', null,
    'anon cannot read credit_reservations.'
);
select throws_ok(
    $$select * from credit_idempotency_keys$$, '42501', null,
    'anon cannot read credit_idempotency_keys.'
);
select throws_ok(
    $$select credit_get_balance('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')$$, '42501', null,
    'anon cannot call credit_get_balance.'
);
select throws_ok(
    $$select credit_add_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1)$$, '42501', null,
    'anon cannot call credit_add_credits.'
);
select throws_ok(
    $$select credit_deduct_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1)$$, '42501', null,
    'anon cannot call credit_deduct_credits.'
);
select throws_ok(
    $$select credit_reserve_credits('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 1)$$, '42501', null,
    'anon cannot call credit_reserve_credits.'
);
select throws_ok(
    format('select credit_settle_reservation(%L, 0)', :'owner_hold_id'), '42501', null,
    'anon cannot call credit_settle_reservation.'
);
select throws_ok(
    format('select credit_release_reservation(%L)', :'owner_hold_id'), '42501', null,
    'anon cannot call credit_release_reservation.'
);
select throws_ok(
    format('select credit_refund_transaction(%L)', :'owner_usage_id'), '42501', null,
    'anon cannot call credit_refund_transaction.'
);
select throws_ok(
    $$select credit_sweep_expired(true)$$, '42501', null,
    'anon cannot call credit_sweep_expired.'
);
select throws_ok(
    $$select * from credit_verify_ledger()$$, '42501', null,
    'anon cannot call credit_verify_ledger.'
);
select throws_ok(
    $$select credit_schema_version()$$, '42501', null,
    'anon cannot call credit_schema_version.'
);
select throws_ok(
    $$select credit_private.clock()$$, '42501', null,
    'anon cannot reach the schema credit_private, not even the clock.'
);

reset role;

-- =============================================================== service_role

set local role service_role;

select results_eq(
    $$select user_id, balance from credit_accounts
      where user_id in ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa',
                        'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')
      order by user_id$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 90::bigint),
             ('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 47::bigint)$$,
    'service_role reads every account (it bypasses RLS).'
);
select results_eq(
    $$select
          (select count(*) from credit_grant_draws as d
           join credit_transactions as t on t.id = d.transaction_id
           where t.user_id in ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa',
                               'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')),
          (select count(*) from credit_idempotency_keys as k
           join credit_accounts as a on a.id = k.account_id
           where a.user_id = 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb')$$,
    $$values (2::bigint, 1::bigint)$$,
    'service_role reads the draws and the idempotency keys.'
);
select is(
    tests.row_or_error($$select * from credit_get_balance('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa')$$),
    '{"user_id": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "balance": 90, "held": 5,
      "available": 85, "scopes": [{"scope": null, "remaining": 90}]}'::jsonb,
    'service_role reads any user''s balance.'
);
select is(
    tests.row_or_error($$select * from credit_get_balance('dddddddd-dddd-4ddd-8ddd-dddddddddddd')$$),
    '{"user_id": "dddddddd-dddd-4ddd-8ddd-dddddddddddd", "balance": 0, "held": 0,
      "available": 0, "scopes": []}'::jsonb,
    'service_role reads zeros for a user without an account.'
);

-- ---------------------------------------------------------------- service_role: the RPCs

select lives_ok(
    $$select credit_add_credits('cccccccc-cccc-4ccc-8ccc-cccccccccccc', 20)$$,
    'service_role can call credit_add_credits.'
);
select lives_ok(
    $$select credit_deduct_credits('cccccccc-cccc-4ccc-8ccc-cccccccccccc', 2)$$,
    'service_role can call credit_deduct_credits.'
);
select lives_ok(
    $$select credit_reserve_credits('cccccccc-cccc-4ccc-8ccc-cccccccccccc', 3)$$,
    'service_role can call credit_reserve_credits.'
);
select lives_ok(
    format('select credit_settle_reservation(%L, 4)', :'owner_hold_id'),
    'service_role can call credit_settle_reservation.'
);
select lives_ok(
    format('select credit_release_reservation(%L)', :'stranger_hold_id'),
    'service_role can call credit_release_reservation.'
);
select lives_ok(
    format('select credit_refund_transaction(%L, 1)', :'owner_usage_id'),
    'service_role can call credit_refund_transaction.'
);
select lives_ok(
    $$select credit_sweep_expired()$$,
    'service_role can call credit_sweep_expired.'
);
select is_empty(
    $$select * from credit_verify_ledger()$$,
    'service_role can call credit_verify_ledger, and the ledger is consistent.'
);
select matches(
    credit_schema_version(), '^[0-9]{14}$',
    'service_role can call credit_schema_version: a migration timestamp.'
);

-- ---------------------------------------------------------------- service_role: no direct writes

select throws_ok(
    $$insert into credit_transactions (account_id, seq, user_id, type, amount, balance_after,
                                       created_at)
      select id, 99, user_id, 'adjustment', 1000, balance + 1000, now() from credit_accounts
      limit 1$$,
    '42501', null,
    'service_role cannot insert into credit_transactions.'
);
select throws_ok(
    $$update credit_accounts set balance = balance + 1000$$, '42501', null,
    'service_role cannot update credit_accounts.'
);
select throws_ok(
    $$delete from credit_grants$$, '42501', null,
    'service_role cannot delete from credit_grants.'
);
select throws_ok(
    $$update credit_grant_draws set amount = 0$$, '42501', null,
    'service_role cannot update credit_grant_draws.'
);
select throws_ok(
    $$delete from credit_reservations$$, '42501', null,
    'service_role cannot delete from credit_reservations.'
);
select throws_ok(
    $$insert into credit_idempotency_keys (account_id, idempotency_key, operation, request,
                                           result, created_at)
      select id, 'forged', 'usage', '{}', '{}', now() from credit_accounts limit 1$$,
    '42501', null,
    'service_role cannot insert into credit_idempotency_keys.'
);
select throws_ok(
    $$truncate credit_reservations$$, '42501', null,
    'service_role cannot truncate a ledger table.'
);
select throws_ok(
    $$select nextval('credit_accounts_id_seq')$$, '42501', null,
    'service_role cannot use the ledger''s sequences.'
);

reset role;

select results_eq(
    $$select user_id, balance from credit_accounts
      where user_id in ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa',
                        'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb',
                        'cccccccc-cccc-4ccc-8ccc-cccccccccccc')
      order by user_id$$,
    $$values ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 87::bigint),
             ('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 47::bigint),
             ('cccccccc-cccc-4ccc-8ccc-cccccccccccc', 18::bigint)$$,
    'Only the RPCs changed balances: 90 - 4 + 1, 47, 20 - 2.'
);

select * from finish();
rollback;
