-- Idempotency keys on add, deduct, reserve and refund: a replay returns the first result
-- marked is_replay and changes nothing; the same key with other parameters or another
-- operation is DC020; keys are scoped per account; a failed call does not consume its key.
--
-- Actors: test_owner and test_stranger (both use the key 'k1').
begin;
select plan(40);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

\ir helpers/tests_schema.psql

-- ---------------------------------------------------------------- add

create temp table add_1 as
select * from credit_add_credits(
    'test_owner', 100, p_category => 'promotional', p_expires_at => '2030-01-01 01:00:00+00',
    p_idempotency_key => 'add-1'
);
create temp table add_1_again as
select * from credit_add_credits(
    'test_owner', 100, p_category => 'promotional', p_expires_at => '2030-01-01 01:00:00+00',
    p_idempotency_key => 'add-1'
);

select is((select is_replay from add_1_again), true, 'Replaying an add is marked is_replay.');
select is(
    (select to_jsonb(r) - 'is_replay' from add_1_again as r),
    (select to_jsonb(r) - 'is_replay' from add_1 as r),
    'The add replay returns the first result: same transaction_id, grant_id, balance_after.'
);
select results_eq(
    $$select a.balance, a.version,
             (select count(*) from credit_grants as g where g.account_id = a.id)
      from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (100::bigint, 1::bigint, 1::bigint)$$,
    'The add replay credited nothing: balance 100, one journal row, one grant.'
);
select throws_ok(
    $$select credit_add_credits(
        'test_owner', 101, p_category => 'promotional',
        p_expires_at => '2030-01-01 01:00:00+00', p_idempotency_key => 'add-1'
    )$$,
    'DC020',
    'idempotency key ''add-1'' was already used for add_credits with other parameters',
    'The same add key with another amount is DC020.'
);
select throws_ok(
    $$select credit_add_credits(
        'test_owner', 100, p_expires_at => '2030-01-01 01:00:00+00',
        p_idempotency_key => 'add-1'
    )$$,
    'DC020', null,
    'The same add key with another category is DC020.'
);
select throws_ok(
    $$select credit_add_credits(
        'test_owner', 100, p_category => 'promotional',
        p_expires_at => '2030-01-01 02:00:00+00', p_idempotency_key => 'add-1'
    )$$,
    'DC020', null,
    'The same add key with another expiry is DC020.'
);

-- ---------------------------------------------------------------- deduct

create temp table deduct_1 as
select * from credit_deduct_credits('test_owner', 10, p_idempotency_key => 'k1');
create temp table deduct_1_again as
select * from credit_deduct_credits('test_owner', 10, p_idempotency_key => 'k1');

select is((select is_replay from deduct_1), false, 'The first keyed deduct is not a replay.');
select is((select is_replay from deduct_1_again), true, 'The second one is a replay.');
select is(
    (select to_jsonb(r) - 'is_replay' from deduct_1_again as r),
    (select to_jsonb(r) - 'is_replay' from deduct_1 as r),
    'The deduct replay returns the same transaction_id and balance_after 90.'
);
select results_eq(
    $$select a.balance, (select count(*) from credit_transactions as t
                         where t.account_id = a.id and t.type = 'usage')
      from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (90::bigint, 1::bigint)$$,
    'The key debited once: balance 90, one usage row.'
);
select results_eq(
    $$select
          t.type,
          t.request_hash = credit_private.request_hash(
              'usage', '{"amount": 10, "min_balance": 0, "metadata": {}}'
          ),
          t.available_after,
          (select count(*) from credit_idempotency_keys as k
           where k.account_id = a.id and k.idempotency_key = 'k1')
      from credit_transactions as t
      join credit_accounts as a on a.id = t.account_id
      where a.user_id = 'test_owner' and t.idempotency_key = 'k1'$$,
    $$values ('usage', true, 90::bigint, 0::bigint)$$,
    'The debit''s journal row is its key record: the operation, a fingerprint of its'
    || ' normalised parameters and what a replay returns; no row of its own.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 11, p_idempotency_key => 'k1')$$, 'DC020',
    null,
    'The same deduct key with another amount is DC020.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 10, p_min_balance => 5, p_idempotency_key => 'k1')$$,
    'DC020', null,
    'The same deduct key with another min_balance is DC020.'
);
select throws_ok(
    $$select credit_deduct_credits(
        'test_owner', 10, p_metadata => '{"a": 1}', p_idempotency_key => 'k1'
    )$$,
    'DC020', null,
    'The same deduct key with other metadata is DC020.'
);
select throws_ok(
    $$select credit_reserve_credits('test_owner', 10, p_idempotency_key => 'k1')$$, 'DC020',
    'idempotency key ''k1'' was already used for usage with other parameters',
    'A deduct key reused by a reserve is DC020 (another operation).'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_idempotency_key => 'k1')$$, 'DC020', null,
    'A deduct key reused by an add is DC020.'
);
select throws_ok(
    format(
        'select credit_refund_transaction(%L, p_idempotency_key => %L)',
        (select transaction_id from deduct_1), 'k1'
    ),
    'DC020', null,
    'A deduct key reused by a refund on the same account is DC020.'
);
select results_eq(
    $$select a.balance, a.version from credit_accounts as a where a.user_id = 'test_owner'$$,
    $$values (90::bigint, 2::bigint)$$,
    'Conflicting calls changed nothing.'
);

-- ---------------------------------------------------------------- per-account scope

select lives_ok(
    $$select credit_add_credits('test_stranger', 50)$$,
    '(test_stranger gets 50 credits.)'
);
create temp table deduct_stranger as
select * from credit_deduct_credits('test_stranger', 10, p_idempotency_key => 'k1');

select is(
    (select is_replay from deduct_stranger), false,
    'Another account using the same key k1 is not a replay: keys are per account.'
);
select isnt(
    (select transaction_id from deduct_stranger), (select transaction_id from deduct_1),
    'The two accounts'' k1 deducts are two transactions.'
);
select results_eq(
    $$select user_id, balance from credit_accounts
      where user_id in ('test_owner', 'test_stranger') order by user_id$$,
    $$values ('test_owner', 90::bigint), ('test_stranger', 40::bigint)$$,
    'Each account was debited once: 90 and 40.'
);

-- ---------------------------------------------------------------- failures do not consume

select throws_ok(
    $$select credit_deduct_credits('test_owner', 500, p_idempotency_key => 'big')$$, 'DC010',
    null,
    'A keyed deduct of 500 with 90 available is refused.'
);
select is_empty(
    $$select 1 from credit_idempotency_keys as k
      join credit_accounts as a on a.id = k.account_id
      where a.user_id = 'test_owner' and k.idempotency_key = 'big'$$,
    'The refused deduct stored no key.'
);
select lives_ok(
    $$select credit_add_credits('test_owner', 500)$$,
    '(test_owner tops up 500.)'
);
create temp table big_retry as
select * from credit_deduct_credits('test_owner', 500, p_idempotency_key => 'big');
select results_eq(
    $$select is_replay, amount, balance_after from big_retry$$,
    $$values (false, 500::bigint, 90::bigint)$$,
    'The retry with the same key after the top-up succeeds as a first call: 590 - 500 = 90.'
);
select is(
    (select r.transaction_id
     from credit_deduct_credits('test_owner', 500, p_idempotency_key => 'big') as r),
    (select transaction_id from big_retry),
    'From then on the key replays.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 0, p_idempotency_key => 'invalid-first')$$,
    'DC001', null,
    'A keyed call with an invalid amount is refused.'
);
select is(
    (select r.is_replay
     from credit_deduct_credits('test_owner', 1, p_idempotency_key => 'invalid-first') as r),
    false,
    'The valid retry with that key is a first call: validation failures store nothing.'
);

-- ---------------------------------------------------------------- reserve

create temp table reserve_1 as
select * from credit_reserve_credits('test_owner', 20, p_idempotency_key => 'res-1');
create temp table reserve_1_again as
select * from credit_reserve_credits('test_owner', 20, p_idempotency_key => 'res-1');

select is(
    (select to_jsonb(r) - 'is_replay' from reserve_1_again as r),
    (select to_jsonb(r) - 'is_replay' from reserve_1 as r),
    'A reserve replay returns the same reservation_id and available_after.'
);
select is((select is_replay from reserve_1_again), true, 'It is marked is_replay.');
select results_eq(
    $$select count(*) from credit_reservations where user_id = 'test_owner'$$,
    $$values (1::bigint)$$,
    'Only one hold exists.'
);
select throws_ok(
    $$select credit_reserve_credits(
        'test_owner', 20, p_timeout_seconds => 60, p_idempotency_key => 'res-1'
    )$$,
    'DC020', null,
    'The same reserve key with another timeout is DC020.'
);

-- ---------------------------------------------------------------- refund

create temp table refund_1 as
select * from credit_refund_transaction(
    (select transaction_id from deduct_1), 4, p_idempotency_key => 'ref-1'
);
create temp table refund_1_again as
select * from credit_refund_transaction(
    (select transaction_id from deduct_1), 4, p_idempotency_key => 'ref-1'
);

select is(
    (select to_jsonb(r) - 'is_replay' from refund_1_again as r),
    (select to_jsonb(r) - 'is_replay' from refund_1 as r),
    'A refund replay returns the same transaction_id and totals.'
);
select results_eq(
    $$select count(*), sum(amount) from credit_transactions
      where user_id = 'test_owner' and type = 'refund'$$,
    $$values (1::bigint, 4::numeric)$$,
    'The refund was journalled once.'
);
select throws_ok(
    format(
        'select credit_refund_transaction(%L, 5, p_idempotency_key => %L)',
        (select transaction_id from deduct_1), 'ref-1'
    ),
    'DC020', null,
    'The same refund key with another amount is DC020.'
);
select lives_ok(
    format('select credit_refund_transaction(%L)', (select transaction_id from deduct_1)),
    '(The rest of the deduct, 6, is refunded without a key.)'
);
select is(
    (select r.is_replay
     from credit_refund_transaction(
         (select transaction_id from deduct_1), 4, p_idempotency_key => 'ref-1'
     ) as r),
    true,
    'A refund replay still answers after the transaction is fully refunded, not DC050.'
);

-- ---------------------------------------------------------------- replay after time moved

set local ducto.now to '2030-01-01 02:00:00+00';

select is(
    (select r.is_replay
     from credit_deduct_credits('test_owner', 10, p_idempotency_key => 'k1') as r),
    true,
    'A deduct replay works whatever the clock says.'
);
select is(
    tests.row_or_error(
        $$select r.transaction_id, r.is_replay
          from credit_add_credits(
              'test_owner', 100, p_category => 'promotional',
              p_expires_at => '2030-01-01 01:00:00+00', p_idempotency_key => 'add-1'
          ) as r$$
    ),
    jsonb_build_object('transaction_id', (select transaction_id from add_1), 'is_replay', true),
    'An add replay returns the original result even after its expiry has passed'
    || ' (same key, same parameters), rather than DC005.'
);

select * from finish();
rollback;
