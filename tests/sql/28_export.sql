-- Journal export: credit_export_journal pages the journal rows created in [start, end),
-- optionally one user's, in (account_id, seq) order, with a keyset cursor (the last row's
-- account_id and seq). Walking the pages yields every row of the window once, in order,
-- whatever the page size; bad arguments are DC006 (DC002 for a user id); only the service
-- role may call it.
--
-- In 2042 (far in the future, so nothing else in this database falls in these windows),
-- at 10:00 UTC:
--   Jan 1  test_owner 100, test_member 50, test_stranger 20 (one grant each)
--   Jan 2  test_owner charged 3 times (1 each), test_member twice, test_stranger once
--   Jan 3  test_owner 10 more credits, test_member charged once
-- The window [Jan 2, Jan 3) holds the six charges of Jan 2 only.
begin;
select plan(17);

set local timezone to 'UTC';

\ir helpers/tests_schema.psql

-- tests.export_ids(start, end, user, page): walks credit_export_journal page by page as
-- a client does (each page after the last row of the one before) and returns the ids in
-- the order they came, with the number of calls it took.
create function tests.export_ids(
    p_start timestamptz, p_end timestamptz, p_user_id text, p_page integer,
    out ids uuid [], out calls integer
)
language plpgsql
as $$
declare
    v_account bigint;
    v_seq bigint;
    v_n integer;
    r record;
begin
    ids := '{}';
    calls := 0;
    loop
        calls := calls + 1;
        v_n := 0;
        for r in
            select * from public.credit_export_journal(
                p_start, p_end, p_user_id, v_account, v_seq, p_page
            )
        loop
            ids := ids || r.id;
            v_account := r.account_id;
            v_seq := r.seq;
            v_n := v_n + 1;
        end loop;
        exit when v_n < p_page;
    end loop;
end;
$$;

set local ducto.now to '2042-01-01 10:00:00+00';
select credit_add_credits('test_owner', 100);
select credit_add_credits('test_member', 50);
select credit_add_credits('test_stranger', 20);
set local ducto.now to '2042-01-02 10:00:00+00';
select credit_deduct_credits(u, 1)
from unnest(array[
    'test_owner', 'test_member', 'test_owner', 'test_stranger', 'test_member', 'test_owner'
]) as u;
set local ducto.now to '2042-01-03 10:00:00+00';
select credit_add_credits('test_owner', 10);
select credit_deduct_credits('test_member', 1);

create temp table journal_2042 as
select t.* from credit_transactions as t
where t.created_at >= '2042-01-01' and t.created_at < '2043-01-01';

-- ---------------------------------------------------------------- pages

select is(
    (select array_agg(array[e.user_id, e.seq::text, e.type, e.amount::text])
     from credit_export_journal('2042-01-01', '2042-01-04', p_limit => 4) as e),
    (select array_agg(array[t.user_id, t.seq::text, t.type, t.amount::text]
        order by t.account_id, t.seq)
     from (select * from journal_2042 order by account_id, seq limit 4) as t),
    'The first page holds the first p_limit rows of the window in (account_id, seq) order.'
);
select is(
    (select count(*) from credit_export_journal('2042-01-01', '2042-01-04')),
    11::bigint,
    'Without a limit a page holds up to 1000 rows: here the whole window, 11 rows.'
);
select is(
    (select array_agg(to_jsonb(e) order by e.account_id, e.seq)
     from credit_export_journal('2042-01-01', '2042-01-04') as e),
    (select array_agg(
        to_jsonb(t) - 'request_hash' - 'available_after' order by t.account_id, t.seq
     ) from journal_2042 as t),
    'Each exported row is the journal row, column for column, without its key record.'
);
select is(
    (tests.export_ids('2042-01-01', '2042-01-04', null, 1)).ids,
    (select array_agg(t.id order by t.account_id, t.seq) from journal_2042 as t),
    'Pages of one row walk the whole window, every row once, in order.'
);
select is(
    (tests.export_ids('2042-01-01', '2042-01-04', null, 1)).calls, 12,
    'Pages of one row: 11 full pages, then an empty one ends the walk.'
);
select is(
    (tests.export_ids('2042-01-01', '2042-01-04', null, 5)).ids,
    (select array_agg(t.id order by t.account_id, t.seq) from journal_2042 as t),
    'Pages of five rows walk the same rows in the same order (5 + 5 + 1).'
);
select is(
    (tests.export_ids('2042-01-02', '2042-01-03', null, 2)).ids,
    (select array_agg(t.id order by t.account_id, t.seq) from journal_2042 as t
     where t.created_at >= '2042-01-02' and t.created_at < '2042-01-03'),
    'A window holds the rows created in [start, end) only: the six charges of Jan 2.'
);
select is(
    (select count(*) from credit_export_journal('2042-01-02', '2042-01-02 10:00:00+00')),
    0::bigint,
    'The end is excluded: rows created at the very instant of the end are not in the window.'
);
select is(
    (tests.export_ids('2042-01-01', '2042-01-04', 'test_owner', 2)).ids,
    (select array_agg(t.id order by t.seq) from journal_2042 as t
     where t.user_id = 'test_owner'),
    'With a user, the pages hold that user''s rows only (5 of test_owner''s).'
);
select is(
    (select count(*) from credit_export_journal(
        '2042-01-01', '2042-01-04', 'test_nobody'
    )),
    0::bigint,
    'A user without an account has nothing to export.'
);
select is(
    (select count(*) from credit_export_journal(
        '2042-01-01', '2042-01-04', null,
        (select max(account_id) from journal_2042),
        (select max(seq) from journal_2042 where account_id = (
            select max(account_id) from journal_2042
        ))
    )),
    0::bigint,
    'After the last row of the window, the next page is empty.'
);

-- ---------------------------------------------------------------- bad input

select throws_ok(
    $$select * from credit_export_journal('2042-01-02', '2042-01-02')$$,
    'DC006', null, 'An empty window (start = end) is refused with DC006.'
);
select throws_ok(
    $$select * from credit_export_journal('2042-01-01', '2042-01-04', p_limit => 0)$$,
    'DC006', null, 'A page of 0 rows is refused with DC006.'
);
select throws_ok(
    $$select * from credit_export_journal('2042-01-01', '2042-01-04', p_limit => 10001)$$,
    'DC006', null, 'A page of more than 10000 rows is refused with DC006.'
);
select throws_ok(
    $$select * from credit_export_journal('2042-01-01', '2042-01-04', p_after_account => 1)$$,
    'DC006', null, 'Half a cursor (an account without a seq) is refused with DC006.'
);

-- ---------------------------------------------------------------- who may call

set local role authenticated;
set local request.jwt.claims to '{"sub": "test_owner", "role": "authenticated"}';
select throws_ok(
    $$select * from credit_export_journal('2042-01-01', '2042-01-04', 'test_owner')$$,
    '42501', null, 'A signed-in user may not export, not even their own rows (42501).'
);

set local role anon;
set local request.jwt.claims to '{"role": "anon"}';
select throws_ok(
    $$select * from credit_export_journal('2042-01-01', '2042-01-04')$$,
    '42501', null, 'anon may not call credit_export_journal.'
);

select * from finish();
rollback;
