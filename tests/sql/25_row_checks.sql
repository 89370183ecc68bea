-- The row checks of the journal and of the grants (credit_transactions_row_check and
-- credit_grants_row_check): each rule refuses a row that breaks it with 23514, even from
-- the owner writing the table directly, and a row that keeps every rule passes. And the
-- grant a debit draws from is updated in place (a HOT update): no index of credit_grants
-- mentions a column that every debit changes.
--
-- Actor: test_owner with one grant of 100 (the account the rows below point at; the grant
-- written directly has priority 90, so deducts draw from the 100 first); the
-- statements run as the superuser that owns the tables.
begin;
select plan(35);

set local ducto.now to '2030-01-01 00:00:00+00';

create temp table topup as
select * from credit_add_credits('test_owner', 100);

-- A journal row that keeps every rule, as JSON; each test changes one field.
create function pg_temp.journal_insert(p_change jsonb)
returns void
language plpgsql
as $$
begin
    insert into public.credit_transactions
    select * from jsonb_populate_record(
        null::public.credit_transactions,
        jsonb_build_object(
            'id', gen_random_uuid(),
            'account_id', (select a.id from public.credit_accounts as a
                           where a.user_id = 'test_owner'),
            'seq', 1000,
            'user_id', 'test_owner',
            'type', 'usage',
            'amount', -5,
            'balance_after', 95,
            'metadata', '{}'::jsonb,
            'created_at', '2030-01-01 00:00:00+00'
        ) || p_change
    );
end;
$$;

-- A grant that keeps every rule; each test changes one field.
create function pg_temp.grant_insert(p_change jsonb)
returns void
language plpgsql
as $$
declare
    v_row public.credit_grants;
begin
    v_row := jsonb_populate_record(
        null::public.credit_grants,
        jsonb_build_object(
            'id', gen_random_uuid(),
            'account_id', (select a.id from public.credit_accounts as a
                           where a.user_id = 'test_owner'),
            'user_id', 'test_owner',
            'transaction_id', (select t.transaction_id from topup as t),
            'category', 'paid',
            'priority', 90,
            'amount', 10,
            'remaining', 10,
            'created_at', '2030-01-01 00:00:00+00'
        ) || p_change
    );
    insert into public.credit_grants (
        id, account_id, user_id, transaction_id, category, priority, amount, remaining,
        expires_at, created_at
    ) values (
        v_row.id, v_row.account_id, v_row.user_id, v_row.transaction_id, v_row.category,
        v_row.priority, v_row.amount, v_row.remaining, v_row.expires_at, v_row.created_at
    );
end;
$$;

-- ---------------------------------------------------------------- journal

select lives_ok(
    $$select pg_temp.journal_insert('{}')$$,
    'A journal row that keeps every rule is written.'
);
select lives_ok(
    $$select pg_temp.journal_insert(
        '{"seq": 1001, "idempotency_key": "k", "available_after": 90,
          "request_hash": "00000000-0000-0000-0000-000000000001"}'
    )$$,
    'A keyed debit''s row that is its key record is written.'
);

-- (the partition the row would lie in reports it: credit_transactions_default, or a month's)
select throws_like(
    format('select pg_temp.journal_insert(%L)', c.change),
    'new row for relation "credit\_transactions%" violates check constraint'
    || ' "credit\_transactions\_row\_check"',
    'journal: ' || c.rule
)
from (values
    (1, '{"seq": 0}', 'seq is at least 1'),
    (2, '{"type": "grant", "amount": -5}', 'a credit (grant) with a negative amount is refused'),
    (3, '{"type": "refund", "amount": -5}', 'a refund with a negative amount is refused'),
    (4, '{"amount": 5}', 'a debit (usage) with a positive amount is refused'),
    (5, '{"type": "expiry", "amount": 5}', 'an expiry with a positive amount is refused'),
    (6, '{"amount": 0}', 'an amount of 0 is refused'),
    (7, '{"type": "gift"}', 'an unknown type is refused'),
    (8, '{"type": "refund", "amount": 5}', 'a refund names the row it refunds'),
    (
        9, '{"refund_of": "00000000-0000-0000-0000-000000000001"}',
        'only a refund names a refunded row'
    ),
    (10, '{"type": "capture"}', 'a capture names its reservation'),
    (
        11, '{"reservation_id": "00000000-0000-0000-0000-000000000001"}',
        'only a capture names a reservation'
    ),
    (12, '{"metadata": []}', 'metadata is a JSON object'),
    (
        13, '{"type": "grant", "amount": 5, "usage": {"model": "m"}, "model": "m",'
        || ' "pricing_version": 1}',
        'usage is recorded only on usage and capture rows'
    ),
    (14, '{"usage": {"model": "m"}, "model": "m"}', 'usage is recorded with its pricing version'),
    (
        15, '{"usage": {"model": "m"}, "model": "n", "pricing_version": 1}',
        'model is the usage''s model'
    ),
    (16, '{"model": "m"}', 'no model without usage'),
    (17, '{"job_name": "render"}', 'only a fixed job names a job'),
    (18, '{"type": "fixed_job", "pricing_version": 1}', 'a priced fixed job names its job'),
    (
        19, '{"type": "expiry", "available_after": 5}',
        'available_after only on a usage or fixed-job row'
    ),
    (
        20, '{"request_hash": "00000000-0000-0000-0000-000000000001", "available_after": 5}',
        'a key record names its key'
    ),
    (
        21, '{"request_hash": "00000000-0000-0000-0000-000000000001",'
        || ' "idempotency_key": "k"}',
        'a key record has what its replay returns'
    )
) as c (n, change, rule)
order by c.n;

-- ---------------------------------------------------------------- grants

select lives_ok(
    $$select pg_temp.grant_insert('{"expires_at": "2030-02-01 00:00:00+00"}')$$,
    'A grant that keeps every rule is written.'
);

select throws_ok(
    format('select pg_temp.grant_insert(%L)', c.change),
    '23514',
    'new row for relation "credit_grants" violates check constraint "credit_grants_row_check"',
    'grants: ' || c.rule
)
from (values
    (1, '{"category": "gift"}', 'category is paid or promotional'),
    (2, '{"priority": -1}', 'priority is at least 0'),
    (3, '{"priority": 101}', 'priority is at most 100'),
    (4, '{"amount": 0, "remaining": 0}', 'amount is positive'),
    (5, '{"remaining": -1}', 'remaining is not negative'),
    (6, '{"remaining": 11}', 'remaining is at most amount'),
    (7, '{"expires_at": "infinity"}', 'expires_at is a time, not infinity')
) as c (n, change, rule)
order by c.n;

-- ---------------------------------------------------------------- in-place grant updates

select is(
    (
        select count(*)::integer
        from pg_index as i
        inner join pg_attribute as a
            on a.attrelid = i.indrelid and a.attname = 'remaining'
        where
            i.indrelid = 'public.credit_grants'::regclass
            and (
                a.attnum = any(i.indkey::smallint [])
                or pg_get_expr(i.indexprs, i.indrelid) ~ '\mremaining\M'
                or pg_get_expr(i.indpred, i.indrelid) ~ '\mremaining\M'
            )
    ),
    0,
    'No index of credit_grants mentions remaining (which would rule out in-place updates).'
);

create temp table hot_before as
select n_tup_upd, n_tup_hot_upd from pg_stat_xact_user_tables
where relid = 'public.credit_grants'::regclass;
select credit_deduct_credits('test_owner', 7);
select results_eq(
    $$select s.n_tup_upd - b.n_tup_upd, s.n_tup_hot_upd - b.n_tup_hot_upd
      from pg_stat_xact_user_tables as s, hot_before as b
      where s.relid = 'public.credit_grants'::regclass$$,
    $$values (1::bigint, 1::bigint)$$,
    'A deduct that leaves credits in its grant updates the grant in place (HOT).'
);
select is(
    (select g.spendable from credit_grants as g where g.id = (select grant_id from topup)),
    true,
    'The grant is still spendable with 93 of 100 left ...'
);
select credit_deduct_credits('test_owner', 93);
select is(
    (select g.spendable from credit_grants as g where g.id = (select grant_id from topup)),
    false,
    '... and not spendable once used up.'
);

select * from finish();
rollback;
