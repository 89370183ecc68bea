-- credit_add_credits: the success path, its result, the journal row, the grant row and
-- the defaults.
--
-- Actors: test_owner (gets credits with defaults, then with every argument),
-- test_member (boundary values). Behaviour tests run as the migration owner; what each
-- API role may call is tested in 15_privileges_catalog.sql and 16_rls_as_users.sql.
begin;
select plan(22);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

-- ---------------------------------------------------------------- defaults

create temp table first_add as
select * from credit_add_credits('test_owner', 100);

select is(
    (select to_jsonb(r) - '{transaction_id,grant_id}'::text [] from first_add as r),
    '{"user_id": "test_owner", "amount": 100, "tx_type": "adjustment", "category": "paid",
      "priority": 50, "expires_at": null, "balance_after": 100,
      "created_at": "2030-01-01T00:00:00+00:00", "is_replay": false}'::jsonb,
    'With only a user and an amount, add_credits returns an adjustment of paid credits at'
    || ' priority 50 that never expires.'
);
select isnt((select transaction_id from first_add), null, 'The result names its journal row.');
select isnt((select grant_id from first_add), null, 'The result names the grant it created.');

select results_eq(
    $$select a.user_id, a.balance, a.debt, a.version from credit_accounts as a
      where a.user_id = 'test_owner'$$,
    $$values ('test_owner', 100::bigint, 0::bigint, 1::bigint)$$,
    'The first credits create the account with balance 100, no debt and one journal row.'
);

select results_eq(
    $$select t.seq, t.user_id, t.type, t.amount, t.balance_after, t.grant_id, t.reservation_id,
             t.refund_of, t.idempotency_key, t.metadata, t.created_at
      from credit_transactions as t
      where t.id = (select transaction_id from first_add)$$,
    $$select 1::bigint, 'test_owner', 'adjustment', 100::bigint, 100::bigint,
             (select grant_id from first_add), null::uuid, null::uuid, null::text,
             '{}'::jsonb, '2030-01-01 00:00:00+00'::timestamptz$$,
    'The journal row is seq 1, an adjustment of +100 with balance_after 100, pointing to its'
    || ' grant, with empty metadata, at the ledger clock.'
);

select results_eq(
    $$select g.user_id, g.transaction_id, g.category, g.priority, g.amount, g.remaining,
             g.expires_at, g.created_at,
             g.account_id = (select a.id from credit_accounts as a where a.user_id = 'test_owner')
      from credit_grants as g
      where g.id = (select grant_id from first_add)$$,
    $$select 'test_owner', (select transaction_id from first_add), 'paid', 50, 100::bigint,
             100::bigint, null::timestamptz, '2030-01-01 00:00:00+00'::timestamptz, true$$,
    'The grant holds 100 paid credits at priority 50, all remaining, with no expiry.'
);

select is_empty(
    $$select 1 from credit_grant_draws where transaction_id = (select transaction_id from first_add)$$,
    'Credits added to an account without debt draw nothing.'
);
select is_empty(
    $$select 1 from credit_idempotency_keys as k
      join credit_accounts as a on a.id = k.account_id where a.user_id = 'test_owner'$$,
    'A call without an idempotency key stores no key.'
);

-- ---------------------------------------------------------------- every argument

create temp table second_add as
select * from credit_add_credits(
    p_user_id => 'test_owner',
    p_amount => 50,
    p_tx_type => 'purchase',
    p_category => 'promotional',
    p_priority => 10,
    p_expires_at => '2030-02-01 00:00:00+00',
    p_metadata => '{"order": "o-1"}',
    p_idempotency_key => 'add-1'
);

select is(
    (select to_jsonb(r) - '{transaction_id,grant_id}'::text [] from second_add as r),
    '{"user_id": "test_owner", "amount": 50, "tx_type": "purchase", "category": "promotional",
      "priority": 10, "expires_at": "2030-02-01T00:00:00+00:00", "balance_after": 150,
      "created_at": "2030-01-01T00:00:00+00:00", "is_replay": false}'::jsonb,
    'With every argument given, the result echoes them and the balance after is 150.'
);

select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after, t.grant_id, t.idempotency_key, t.metadata
      from credit_transactions as t
      where t.id = (select transaction_id from second_add)$$,
    $$select 2::bigint, 'purchase', 50::bigint, 150::bigint, (select grant_id from second_add),
             'add-1', '{"order": "o-1"}'::jsonb$$,
    'The second journal row is seq 2, a purchase of +50, carrying the key and the metadata.'
);

select results_eq(
    $$select g.category, g.priority, g.amount, g.remaining, g.expires_at
      from credit_grants as g
      where g.id = (select grant_id from second_add)$$,
    $$values ('promotional', 10, 50::bigint, 50::bigint,
              '2030-02-01 00:00:00+00'::timestamptz)$$,
    'The grant is promotional, priority 10, 50 remaining, expiring when asked.'
);

select results_eq(
    $$select k.idempotency_key, k.operation, k.result ->> 'transaction_id'
      from credit_idempotency_keys as k
      join credit_accounts as a on a.id = k.account_id where a.user_id = 'test_owner'$$,
    $$select 'add-1', 'add_credits', (select transaction_id::text from second_add)$$,
    'The key is stored once for add_credits, with the first result.'
);

select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (150::bigint, 2::bigint)$$,
    'The account balance is 150 after two journal rows.'
);

-- ---------------------------------------------------------------- transaction types

-- (each call in its own statement: a query does not see the rows written by a function
-- it calls)
create temp table typed_adds as
select 1 as n, r.* from credit_add_credits('test_member', 1, p_tx_type => 'grant') as r;
insert into typed_adds
select 2, r.* from credit_add_credits('test_member', 2, p_tx_type => 'promotion') as r;

select results_eq(
    $$select t.type, t.amount
      from typed_adds as r join credit_transactions as t on t.id = r.transaction_id
      order by r.n$$,
    $$values ('grant', 1::bigint), ('promotion', 2::bigint)$$,
    'The tx_types grant and promotion are journalled under their own names.'
);

-- ---------------------------------------------------------------- boundaries

select is(
    (select amount from credit_add_credits('test_big', 9007199254740991)),
    9007199254740991::bigint,
    'The largest amount, 2^53 - 1, is accepted.'
);
select is(
    (select amount from credit_add_credits('test_member', 7.000)),
    7::bigint,
    'A numeric with only zero decimals (7.000) is a whole number and is accepted as 7.'
);
select results_eq(
    $$select r.priority from credit_add_credits('test_member', 1, p_priority => 0) as r
      union all
      select r.priority from credit_add_credits('test_member', 1, p_priority => 100) as r$$,
    $$values (0), (100)$$,
    'Priorities 0 and 100 are both in range.'
);

create temp table null_metadata_add as
select * from credit_add_credits('test_member', 1, p_metadata => null);
select is(
    (select t.metadata from credit_transactions as t
     where t.id = (select transaction_id from null_metadata_add)),
    '{}'::jsonb,
    'A null metadata is stored as an empty object.'
);
select is(
    (select r.expires_at
     from credit_add_credits(
         'test_member', 1, p_expires_at => '2030-01-01 00:00:00.000001+00'
     ) as r),
    '2030-01-01 00:00:00.000001+00'::timestamptz,
    'An expiry one microsecond after the ledger clock is accepted.'
);
select is(
    (select r.user_id from credit_add_credits(repeat('u', 255), 1) as r),
    repeat('u', 255),
    'A user id of 255 characters is accepted.'
);

create temp table long_key_add as
select * from credit_add_credits('test_member', 1, p_idempotency_key => repeat('k', 255));
select is(
    (select t.idempotency_key from credit_transactions as t
     where t.id = (select transaction_id from long_key_add)),
    repeat('k', 255),
    'An idempotency key of 255 characters is accepted and journalled.'
);

create temp table unicode_key_add as
select * from credit_add_credits('test_member', 1, p_idempotency_key => 'ü-ключ-🔑');
select is(
    (select k.result ->> 'transaction_id' from credit_idempotency_keys as k
     join credit_accounts as a on a.id = k.account_id
     where a.user_id = 'test_member' and k.idempotency_key = 'ü-ключ-🔑'),
    (select transaction_id::text from unicode_key_add),
    'A non-ASCII idempotency key is accepted and stored verbatim.'
);

select * from finish();
rollback;
