-- credit_add_credits: every invalid argument has its own SQLSTATE, and a failed call
-- writes nothing (no account, no journal row, no grant, no key).
--
-- Actors: test_owner (every call here fails).
begin;
select plan(46);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

-- row counts before, so the end of the file can show that failed calls wrote nothing
create temp table counts_before as
select
    (select count(*) from credit_accounts) as accounts,
    (select count(*) from credit_transactions) as transactions,
    (select count(*) from credit_grants) as grants,
    (select count(*) from credit_idempotency_keys) as idempotency_keys;

-- ---------------------------------------------------------------- DC001 amount

select throws_ok(
    $$select credit_add_credits('test_owner', 0)$$, 'DC001',
    'amount must be a whole number of credits from 1 to 9007199254740991, got 0',
    'An amount of 0 is DC001, and the message names the argument, the range and the value.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', -1)$$, 'DC001', null,
    'A negative amount is DC001.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 1.5)$$, 'DC001',
    'amount must be a whole number of credits from 1 to 9007199254740991, got 1.5',
    'A fractional amount is DC001.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 0.0000001)$$, 'DC001', null,
    'A tiny fraction (1e-7) is DC001.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 'NaN')$$, 'DC001',
    'amount must be a whole number of credits from 1 to 9007199254740991, got NaN',
    'NaN is DC001, though NaN compares greater than every number.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 'Infinity')$$, 'DC001', null,
    'Infinity is DC001.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', '-Infinity')$$, 'DC001', null,
    '-Infinity is DC001.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 9007199254740992)$$, 'DC001', null,
    '2^53 is DC001: one more than the largest amount a JavaScript client keeps exact.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 2::numeric ^ 63)$$, 'DC001', null,
    '2^63, beyond bigint, is DC001 and not a cast error.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 1e400)$$, 'DC001', null,
    '1e400 is DC001.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', null)$$, 'DC001', null,
    'A null amount is DC001.'
);

-- ---------------------------------------------------------------- DC002 user id

select throws_ok(
    $$select credit_add_credits('', 10)$$, 'DC002', null,
    'An empty user id is DC002.'
);
select throws_ok(
    $$select credit_add_credits('   ', 10)$$, 'DC002', null,
    'A blank user id is DC002.'
);
select throws_ok(
    $$select credit_add_credits(null, 10)$$, 'DC002', null,
    'A null user id is DC002.'
);
select throws_ok(
    $$select credit_add_credits(repeat('u', 256), 10)$$, 'DC002', null,
    'A user id of 256 characters is DC002.'
);
select throws_ok(
    $$select credit_add_credits(E'test\towner', 10)$$, 'DC002', null,
    'A user id with a tab is DC002.'
);
select throws_ok(
    $$select credit_add_credits(E'test_owner\n', 10)$$, 'DC002', null,
    'A user id with a newline is DC002.'
);
select throws_ok(
    $$select credit_add_credits(E'test\x01owner', 10)$$, 'DC002', null,
    'A user id with a control character (0x01) is DC002.'
);

-- ---------------------------------------------------------------- DC003 metadata

select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_metadata => '[]')$$, 'DC003',
    'metadata must be a JSON object, got a JSON array',
    'A JSON array as metadata is DC003.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_metadata => '"text"')$$, 'DC003', null,
    'A JSON string as metadata is DC003.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_metadata => '42')$$, 'DC003', null,
    'A JSON number as metadata is DC003.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_metadata => 'null'::jsonb)$$, 'DC003', null,
    'A JSON null (not SQL NULL) as metadata is DC003.'
);
select throws_ok(
    $$select credit_add_credits(
        'test_owner', 10, p_metadata => jsonb_build_object('b', repeat('x', 16376))
    )$$,
    'DC003', 'metadata must be at most 16384 bytes as JSON, got 16385',
    'Metadata of 16385 bytes as JSON, one more than 16 KiB, is DC003.'
);
select is(
    octet_length(jsonb_build_object('b', repeat('x', 16375))::text), 16384,
    '(The metadata of the next test is exactly 16384 bytes as JSON.)'
);
select lives_ok(
    $$select credit_add_credits(
        'test_limit', 10, p_metadata => jsonb_build_object('b', repeat('x', 16375))
    )$$,
    'Metadata of exactly 16384 bytes as JSON is accepted.'
);

-- ---------------------------------------------------------------- DC004 idempotency key

select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_idempotency_key => '')$$, 'DC004',
    'idempotency_key must be 1 to 255 characters without control characters, got 0 characters',
    'An empty idempotency key is DC004.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_idempotency_key => repeat('k', 256))$$,
    'DC004', null,
    'An idempotency key of 256 characters is DC004.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_idempotency_key => E'k\n1')$$, 'DC004', null,
    'An idempotency key with a newline is DC004.'
);

-- ---------------------------------------------------------------- DC005 expiry

select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_expires_at => '2029-12-31 23:59:59+00')$$,
    'DC005', null,
    'An expiry in the past is DC005.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_expires_at => '2030-01-01 00:00:00+00')$$,
    'DC005', null,
    'An expiry equal to the ledger clock (now) is DC005: the grant would be born expired.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_expires_at => 'infinity')$$, 'DC005', null,
    'An infinite expiry is DC005 (null means never).'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_expires_at => '-infinity')$$, 'DC005', null,
    'An expiry of -infinity is DC005.'
);

-- ---------------------------------------------------------------- DC006 choices

select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_tx_type => 'usage')$$, 'DC006',
    'tx_type must be one of grant, purchase, adjustment, promotion, got ''usage''',
    'A debit type (usage) as tx_type is DC006.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_tx_type => 'refund')$$, 'DC006', null,
    'refund as tx_type is DC006: refunds are written only by credit_refund_transaction.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_tx_type => null)$$, 'DC006', null,
    'A null tx_type is DC006.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_category => 'free')$$, 'DC006', null,
    'An unknown category is DC006.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_category => null)$$, 'DC006', null,
    'A null category is DC006.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_priority => -1)$$, 'DC006', null,
    'Priority -1 is DC006.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_priority => 101)$$, 'DC006', null,
    'Priority 101 is DC006.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_priority => null)$$, 'DC006', null,
    'A null priority is DC006.'
);

-- ---------------------------------------------------------------- wrong shapes

select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_colour => 'red')$$, '42883', null,
    'An unknown named argument finds no function (42883), never a silent default.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 'ten')$$, '22P02', null,
    'A non-numeric amount is a cast error (22P02) before the function runs.'
);

-- ---------------------------------------------------------------- nothing written

select is_empty(
    $$select 1 from credit_accounts where user_id = 'test_owner'$$,
    'No failed call created an account.'
);
select is_empty(
    $$select 1 from credit_transactions where user_id = 'test_owner'$$,
    'No failed call wrote a journal row.'
);
select is_empty(
    $$select 1 from credit_grants where user_id = 'test_owner'$$,
    'No failed call created a grant.'
);
select results_eq(
    $$select
          (select count(*) from credit_accounts) - accounts,
          (select count(*) from credit_transactions) - transactions,
          (select count(*) from credit_grants) - grants,
          (select count(*) from credit_idempotency_keys) - idempotency_keys
      from counts_before$$,
    $$values (1::bigint, 1::bigint, 1::bigint, 0::bigint)$$,
    'In all, the file added one account, one journal row and one grant (the one successful'
    || ' call, for test_limit) and no idempotency key.'
);

select * from finish();
rollback;
