-- Pricing: publishing versions (the newest is active, old ones stay), the cost function,
-- usage and fixed-job charges priced and recorded on the journal, settling a hold by
-- usage, and the errors of each; nothing written on failure.
--
-- Actors: test_owner (1,000 credits), test_member (8 credits).
begin;
select plan(32);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

\ir helpers/tests_schema.psql

select is(
    tests.error_of($$select credit_get_pricing()$$) ->> 'code', 'DC063',
    'With nothing published, reading the active pricing is DC063.'
);

-- ---------------------------------------------------------------- publishing

create temp table v1 as
select * from credit_publish_pricing(
    '{"models": [{"model": "chat-*", "input": 1000, "output": 4000},
                 {"model": "chat-large", "input": 3000, "output": 9000, "cached_input": 300}],
      "default": null, "min_balance": 5, "fixed_jobs": {"report": 40}}',
    'launch'
);

select is(
    (select config from v1),
    '{"unit": "credits", "credits_per_usd": null, "markup": null, "rounding": "ceil",
      "min_balance": 5, "default": null, "fixed_jobs": {"report": 40},
      "models": [
        {"model": "chat-*", "input": 1000, "output": 4000, "cached_input": 1000,
         "cache_creation": 1000, "cache_creation_1h": 1000, "reasoning": 4000, "tool_call": 0,
         "request": 0},
        {"model": "chat-large", "input": 3000, "output": 9000, "cached_input": 300,
         "cache_creation": 3000, "cache_creation_1h": 3000, "reasoning": 9000, "tool_call": 0,
         "request": 0}]}'::jsonb,
    'A published config is stored normalised: every default explicit.'
);
select ok((select is_active and label = 'launch' from v1), 'The new version is active.');

create temp table v2 as
select * from credit_publish_pricing(
    '{"models": [{"model": "chat-*", "input": 2000, "output": 8000}], "default": null}'
);

select ok(
    (select v2.version > v1.version from v1, v2), 'Every publish is a new, higher version.'
);
select results_eq(
    $$select version, is_active from credit_list_pricing_versions() limit 2$$,
    $$select version, true from v2 union all select version, false from v1$$,
    'Versions list newest first; only the newest is active.'
);
select is(
    (select (credit_get_pricing()).version), (select version from v2),
    'credit_get_pricing() without a version reads the active one.'
);
select is(
    (select (credit_get_pricing(v1.version)).config from v1), (select config from v1),
    'An old version is kept, unchanged, and can be read by number.'
);
select is(
    tests.error_of($$select credit_get_pricing(987654321)$$) ->> 'code', 'DC064',
    'An unknown version is DC064.'
);
select is(
    tests.error_of($$update credit_pricing_config set config = '{}'$$) ->> 'code', 'DC900',
    'A published config cannot be changed: the table is append-only.'
);
select is(
    tests.error_of($$delete from credit_pricing_config$$) ->> 'code', 'DC900',
    'A published config cannot be deleted.'
);

select is(
    tests.error_of($$select credit_publish_pricing('{"models": [], "default": {"input": -1,
        "output": 1}}')$$) - 'hint',
    jsonb_build_object(
        'code', 'DC060', 'message', 'invalid pricing config: default.input must not be negative',
        'detail', '{"path": "default.input", "problem": "must not be negative"}'
    ),
    'A bad config is DC060, naming the field and the problem.'
);
select is(
    (select (credit_get_pricing()).version), (select version from v2),
    'A refused config leaves the active version as it was.'
);

-- back to v1's prices for the charges below
create temp table v3 as
select * from credit_publish_pricing((select config from v1), 'launch again');

-- ---------------------------------------------------------------- the cost

select results_eq(
    $$select pricing_version, matched, exact_cost, credits, min_balance
      from credit_calculate_cost('{"model": "chat-large", "input_tokens": 1000,
          "cached_input_tokens": 10000, "output_tokens": 100}')$$,
    $$select version, 'chat-large', 6.9, 7::bigint, 5::bigint from v3$$,
    'The exact name wins over chat-*: (1000*3000 + 10000*300 + 100*9000)/1e6 = 6.9 -> 7.'
);
select results_eq(
    $$select matched, credits from credit_calculate_cost(
        '{"model": "CHAT-small", "output_tokens": 1000}', (select version from v2))$$,
    $$values ('chat-*', 8::bigint)$$,
    'With a version, the cost is that version''s: 1000 output tokens at 8000 per 1M.'
);
select is(
    tests.error_of($$select credit_calculate_cost('{"model": "other", "input_tokens": 1}')$$)
    ->> 'code', 'DC061',
    'A model no entry matches, without a default, is DC061.'
);

-- ---------------------------------------------------------------- usage charges

create temp table topup as
select * from credit_add_credits('test_owner', 1000);
select * from credit_add_credits('test_member', 8);

create temp table usage_1 as
select * from credit_deduct_usage(
    'test_owner', '{"model": "chat-small", "input_tokens": 3000, "output_tokens": 500}',
    '{"turn": 1}', 'turn-1'
);

select results_eq(
    $$select amount, balance_after, pricing_version, is_replay from usage_1$$,
    $$select 5::bigint, 995::bigint, version, false from v3$$,
    'A usage charge is priced by the active version: (3000*1000 + 500*4000)/1e6 = 5.'
);
select results_eq(
    $$select t.type, t.amount, t.model, t.pricing_version, t.usage, t.metadata
      from credit_transactions as t where t.id = (select transaction_id from usage_1)$$,
    $$select 'usage', -5::bigint, 'chat-small', version,
        '{"model": "chat-small", "input_tokens": 3000, "output_tokens": 500}'::jsonb,
        '{"turn": 1}'::jsonb
      from v3$$,
    'The journal row records the version, the model and the normalised usage: the counts'
    || ' not at their default (0, or 1 request).'
);
select is(
    credit_private.check_usage(
        '{"model": "m", "input_tokens": 0, "tool_calls": 2, "requests": 1, "reasoning_tokens": 7}'
    ),
    '{"model": "m", "tool_calls": 2, "reasoning_tokens": 7}'::jsonb,
    'check_usage leaves out the counts at their default: 0 tokens or tool calls, 1 request.'
);
select is(
    credit_private.check_usage('{"model": "m", "requests": 3}'),
    '{"model": "m", "requests": 3}'::jsonb,
    'A request count other than 1 is kept.'
);
select is(
    (
        select (credit_private.cost(
            '{"unit": "credits", "rounding": "ceil", "min_balance": 0, "models": [],
              "default": {"input": 1000000, "output": 0, "cached_input": 0,
                          "cache_creation": 0, "cache_creation_1h": 0, "reasoning": 0,
                          "tool_call": 2, "request": 3}}',
            u
        )).credits
        from (values
            ('{"model": "m", "input_tokens": 4, "output_tokens": 0, "cached_input_tokens": 0,
               "cache_creation_tokens": 0, "cache_creation_1h_tokens": 0,
               "reasoning_tokens": 0, "tool_calls": 0, "requests": 1}'::jsonb)
        ) as full_form (u)
    ),
    (
        select (credit_private.cost(
            '{"unit": "credits", "rounding": "ceil", "min_balance": 0, "models": [],
              "default": {"input": 1000000, "output": 0, "cached_input": 0,
                          "cache_creation": 0, "cache_creation_1h": 0, "reasoning": 0,
                          "tool_call": 2, "request": 3}}',
            '{"model": "m", "input_tokens": 4}'
        )).credits
    ),
    'A usage stored in full (before compact usages) prices the same as its compact form:'
    || ' 4 tokens + 1 request = 7.'
);
select is(
    (select (credit_calculate_cost(t.usage, t.pricing_version)).credits
     from credit_transactions as t where t.id = (select transaction_id from usage_1)),
    5::bigint,
    'Re-pricing the row from what it records gives what was charged.'
);

-- a new version does not change a replay
select * from credit_publish_pricing((select config from v2));
select results_eq(
    $$select transaction_id, amount, is_replay from credit_deduct_usage('test_owner',
        '{"model": "chat-small", "input_tokens": 3000, "output_tokens": 500}', '{"turn": 1}',
        'turn-1')$$,
    $$select transaction_id, 5::bigint, true from usage_1$$,
    'A replay returns the original charge, whatever was published since.'
);
select is(
    tests.error_of($$select credit_deduct_usage('test_owner',
        '{"model": "chat-small", "input_tokens": 3001}', '{"turn": 1}', 'turn-1')$$)
    ->> 'code', 'DC020',
    'The same key with other usage is an idempotency conflict.'
);
select * from credit_publish_pricing((select config from v1));

-- the floor is the version's min_balance (5): 8 - 4 = 4 < 5
select is(
    tests.error_of($$select credit_deduct_usage('test_member',
        '{"model": "chat-small", "output_tokens": 1000}')$$) ->> 'detail',
    '{"needed": 4, "user_id": "test_member", "available": 8, "min_balance": 5}',
    'A charge that would leave less than the pricing''s min_balance is DC010.'
);
select is(
    tests.error_of($$select credit_deduct_usage('test_owner',
        '{"model": "chat-small", "input_tokens": -1}')$$) ->> 'code', 'DC007',
    'Negative token counts are DC007.'
);
select is(
    tests.error_of($$select credit_deduct_usage('test_owner',
        '{"model": "mystery", "input_tokens": 1}')$$) ->> 'code', 'DC061',
    'An unpriced model is DC061.'
);

-- ---------------------------------------------------------------- fixed jobs

create temp table job_1 as
select * from credit_deduct_fixed('test_owner', 'report');

select results_eq(
    $$select t.type, t.amount, t.job_name, t.pricing_version
      from credit_transactions as t where t.id = (select transaction_id from job_1)$$,
    $$select 'fixed_job', -40::bigint, 'report', (credit_get_pricing()).version$$,
    'A fixed job is charged its price and journalled with its name and version.'
);
select is(
    tests.error_of($$select credit_deduct_fixed('test_owner', 'unknown')$$) ->> 'code',
    'DC062',
    'An unknown job is DC062.'
);

-- ---------------------------------------------------------------- settle by usage

create temp table hold_1 as
select * from credit_reserve_credits('test_owner', 3, p_min_balance => 0);
create temp table settle_1 as
select * from credit_settle_usage(
    (select reservation_id from hold_1), '{"model": "chat-small", "output_tokens": 2000}'
);

select results_eq(
    $$select amount, overage, pricing_version is not null from settle_1$$,
    $$values (8::bigint, 5::bigint, true)$$,
    'Settling a hold of 3 by usage that costs 8 charges 8 and reports an overage of 5.'
);
select results_eq(
    $$select r.status, r.settled_amount, r.usage ->> 'output_tokens', t.type, t.model
      from credit_reservations as r
      join credit_transactions as t on t.id = r.transaction_id
      where r.id = (select reservation_id from hold_1)$$,
    $$values ('settled', 8::bigint, '2000', 'capture', 'chat-small')$$,
    'The hold records its usage; the capture row its model.'
);
select is(
    tests.error_of($$select credit_settle_usage((select reservation_id from hold_1),
        '{"model": "chat-small", "output_tokens": 1}')$$) ->> 'code',
    'DC041',
    'Settling again with other usage is DC041.'
);

select is_empty(
    $$select * from credit_verify_ledger()$$,
    'Every ledger invariant holds after the priced charges.'
);

select * from finish();
rollback;
