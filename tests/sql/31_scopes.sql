-- Scoped credits: a grant with a scope pays only for charges its scope matches (by the
-- usage's model, the fixed job, or the metadata's feature); a charge draws matching scoped
-- grants first (burn-down order), then unscoped ones; admission counts only what a charge
-- may draw; refunds refill the scoped grant they drew; expiry and verify stay exact.
--
-- Actors: test_owner (image-only, chat-only and unscoped credits), test_member (a job
-- scope and a feature scope), test_holder (holds), test_expiry (a scoped grant that expires).
begin;
\ir helpers/tests_schema.psql
select plan(42);

set local timezone to 'UTC';
set local ducto.now to '2030-01-01 00:00:00+00';

select credit_publish_pricing(
    '{"models": [{"model": "gpt-image-1", "input": 0, "output": 0, "request": 1},
                 {"model": "gpt-4o", "input": 0, "output": 0, "request": 1},
                 {"model": "gpt-4o-mini", "input": 0, "output": 0, "request": 1}],
      "default": null, "fixed_jobs": {"report": 5, "export": 5}}'
);

-- ---------------------------------------------------------------- validation

select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_scope => array['image'])$$,
    'DC006', null, 'A scope entry without a kind (model:, job:, feature:) is DC006.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_scope => array[]::text[])$$,
    'DC006', null, 'An empty scope is DC006 (null is unscoped).'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_scope => array['job:a b'])$$,
    'DC006', null, 'A job name with a space is DC006.'
);
select throws_ok(
    $$select credit_add_credits('test_owner', 10, p_scope => array['model:x', null])$$,
    'DC006', null, 'A null entry is DC006.'
);
select is(
    (select count(*) from credit_accounts where user_id = 'test_owner'), 0::bigint,
    'A refused scope writes nothing: no account was created.'
);

-- ---------------------------------------------------------------- matching and order

create temp table img_late as
select * from credit_add_credits(
    'test_owner', 30, p_priority => 60, p_scope => array['model:gpt-image-*']
);
create temp table img_early as
select * from credit_add_credits(
    'test_owner', 20, p_priority => 40,
    p_scope => array['model:gpt-image-*', 'model:dall-e-?', 'model:gpt-image-*']
);
create temp table chat as
select * from credit_add_credits('test_owner', 15, p_scope => array['model:gpt-4o*']);
create temp table plain as
select * from credit_add_credits('test_owner', 10, p_priority => 0);

select is(
    (select scope from credit_grants where id = (select grant_id from img_early)),
    array['model:dall-e-?', 'model:gpt-image-*'],
    'A scope is stored sorted and without duplicates.'
);

create temp table img_charge as
select * from credit_deduct_usage('test_owner', '{"model": "gpt-image-1", "requests": 25}');
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from img_charge) order by d.id$$,
    $$values ((select grant_id from img_early), 20::bigint),
             ((select grant_id from img_late), 5::bigint)$$,
    'An image charge draws the matching scoped grants first, in burn-down order (priority'
    || ' 40 before 60), before the unscoped grant of priority 0.'
);
select is(
    (select remaining from credit_grants where id = (select grant_id from chat)), 15::bigint,
    'The chat-only grant paid nothing for the image charge.'
);

create temp table chat_charge as
select * from credit_deduct_usage('test_owner', '{"model": "gpt-4o-mini", "requests": 20}');
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      where d.transaction_id = (select transaction_id from chat_charge) order by d.id$$,
    $$values ((select grant_id from chat), 15::bigint), ((select grant_id from plain), 5::bigint)$$,
    'A chat charge draws the chat grant (glob gpt-4o*), then the unscoped grant; never an'
    || ' image grant.'
);
select is(
    (select remaining from credit_grants where id = (select grant_id from img_late)), 25::bigint,
    'The image grant is untouched by the chat charge.'
);

-- ---------------------------------------------------------------- admission

-- left: image 25 (scoped), unscoped 5; a chat charge may draw 5 only
select throws_ok(
    $$select credit_deduct_usage('test_owner', '{"model": "gpt-4o", "requests": 6}')$$,
    'DC010', null, 'A chat charge of 6 is refused: only the 5 unscoped credits may pay it.'
);
select is(
    (tests.error_of($$select credit_deduct_usage('test_owner',
        '{"model": "gpt-4o", "requests": 6}')$$) ->> 'detail')::jsonb ->> 'available',
    '5', 'DC010 reports as available what the charge may draw (5), not the balance (30).'
);
select is(
    (credit_deduct_usage('test_owner', '{"model": "gpt-image-1", "requests": 30}')).amount,
    30::bigint, 'An image charge of 30 is admitted: 25 image credits + 5 unscoped.'
);
select is(
    (select remaining from credit_grants where id = (select grant_id from plain)), 0::bigint,
    'It took the last unscoped credits after the image ones.'
);
select throws_ok(
    $$select credit_deduct_credits('test_owner', 1, p_metadata => '{"model": "gpt-image-1"}')$$,
    'DC010', null, 'Nothing is left for a by-amount charge naming the image model either.'
);

-- ---------------------------------------------------------------- refund to the scoped grant

select credit_refund_transaction((select transaction_id from img_charge), 10);
select results_eq(
    $$select remaining from credit_grants where id in
        ((select grant_id from img_early), (select grant_id from img_late))
      order by priority$$,
    $$values (5::bigint), (5::bigint)$$,
    'A refund of 10 of the image charge gives back to the image grants it drew, the last'
    || ' drawn first (5 to the priority-60 grant, then 5 to the priority-40 one).'
);
select is(
    (select remaining from credit_grants where id = (select grant_id from plain)), 0::bigint,
    'The refund of an image charge does not refill the unscoped grant.'
);

-- ---------------------------------------------------------------- jobs, features, debt

select credit_add_credits('test_member', 5, p_scope => array['job:report']);
select credit_add_credits('test_member', 7, p_scope => array['feature:search']);
select throws_ok(
    $$select credit_deduct_fixed('test_member', 'export')$$,
    'DC010', null, 'The job-scoped grant does not pay for another job (export).'
);
select is(
    (credit_deduct_fixed('test_member', 'report')).amount, 5::bigint,
    'It pays for its own job (report).'
);
select is(
    (credit_deduct_credits('test_member', 7, p_metadata => '{"feature": "search"}')).amount,
    7::bigint, 'The feature-scoped grant pays a charge whose metadata names its feature.'
);
select is(
    (select sum(remaining)::bigint from credit_grants where user_id = 'test_member'), 0::bigint,
    'Both scoped grants are spent.'
);

-- a settled hold beyond every grant makes debt; a scoped grant added next does not pay it
select credit_add_credits('test_member', 1);
create temp table member_hold as
select * from credit_reserve_credits('test_member', 1);
select credit_settle_reservation((select reservation_id from member_hold), 5);
select is((select debt from credit_accounts where user_id = 'test_member'), 4::bigint,
    'A settle beyond the credits (5, 1 unscoped credit left) is debt: 4.');
select credit_add_credits('test_member', 10, p_scope => array['model:gpt-4o']);
select is((select debt from credit_accounts where user_id = 'test_member'), 4::bigint,
    'A scoped grant does not pay the debt: it would pay for a charge outside its scope.');
select credit_add_credits('test_member', 6);
select is((select debt from credit_accounts where user_id = 'test_member'), 0::bigint,
    'An unscoped grant pays it as before.');

-- ---------------------------------------------------------------- holds

select credit_add_credits('test_holder', 50, p_scope => array['model:gpt-image-1']);
select credit_add_credits('test_holder', 10);
select throws_ok(
    $$select credit_reserve_credits('test_holder', 11)$$,
    'DC010', null, 'A plain hold relies on unscoped credits only (10).'
);
create temp table image_hold as
select * from credit_reserve_credits('test_holder', 40, p_metadata => '{"model": "gpt-image-1"}');
select is((select amount from image_hold), 40::bigint,
    'A hold whose metadata names the image model relies on the image credits too.');
select throws_ok(
    $$select credit_deduct_usage('test_holder', '{"model": "gpt-image-1", "requests": 21}')$$,
    'DC010', null,
    'Every active hold counts against every charge: 60 - 40 held leaves 20 for an image charge.'
);
create temp table image_settle as
select * from credit_settle_usage(
    (select reservation_id from image_hold), '{"model": "gpt-image-1", "requests": 45}'
);
select is(
    (select remaining from credit_grants where user_id = 'test_holder' and scope is null),
    10::bigint, 'Its settle (45) drew the image grant first: the unscoped grant is untouched.'
);

-- ---------------------------------------------------------------- a settle beyond the credits

-- test_settler: 20 image credits, 5 unscoped; a chat hold settled for 12 takes the 5
-- unscoped credits and makes 7 debt; the image credits stay whole
select credit_add_credits('test_settler', 20, p_scope => array['model:gpt-image-1']);
select credit_add_credits('test_settler', 5);
create temp table chat_hold as
select * from credit_reserve_credits('test_settler', 5, p_metadata => '{"model": "gpt-4o"}');
select credit_settle_usage(
    (select reservation_id from chat_hold), '{"model": "gpt-4o", "requests": 12}'
);
select results_eq(
    $$select a.debt, (select sum(g.remaining)::bigint from credit_grants as g
                      where g.account_id = a.id and g.scope is not null)
      from credit_accounts as a where a.user_id = 'test_settler'$$,
    $$values (7::bigint, 20::bigint)$$,
    'A chat settle beyond the unscoped credits is debt (7); the image credits pay none of it.'
);

-- ---------------------------------------------------------------- keys

select credit_add_credits(
    'test_keys', 5, p_scope => array['model:b', 'model:a'], p_idempotency_key => 'scoped'
);
select is(
    (credit_add_credits(
        'test_keys', 5, p_scope => array['model:a', 'model:b'], p_idempotency_key => 'scoped'
    )).is_replay,
    true, 'The same scope in another order under the same key is a replay.'
);
select throws_ok(
    $$select credit_add_credits(
        'test_keys', 5, p_scope => array['model:a'], p_idempotency_key => 'scoped')$$,
    'DC020', null, 'Another scope under the same key is DC020.'
);
select throws_ok(
    $$select credit_add_credits('test_keys', 5, p_idempotency_key => 'scoped')$$,
    'DC020', null, 'No scope under the key of a scoped grant is DC020.'
);

-- ---------------------------------------------------------------- a team's pool

select credit_upsert_team('22222222-2222-4222-8222-222222222222', 'Scoped', 0);
select credit_set_team_member('22222222-2222-4222-8222-222222222222', 'test_owner', 'owner');
select credit_add_credits(
    'team:22222222-2222-4222-8222-222222222222', 10, p_scope => array['model:gpt-image-*']
);
select credit_add_credits('team:22222222-2222-4222-8222-222222222222', 3);
select throws_ok(
    $$select credit_deduct_team('22222222-2222-4222-8222-222222222222', 'test_owner',
        '{"model": "gpt-4o", "requests": 4}')$$,
    'DC084', null, 'A team''s chat charge may draw only the pool''s 3 unscoped credits.'
);
select is(
    (credit_deduct_team('22222222-2222-4222-8222-222222222222', 'test_owner',
        '{"model": "gpt-image-1", "requests": 12}')).balance_after,
    1::bigint, 'A team''s image charge of 12 draws the 10 image credits, then 2 unscoped.'
);
select is(
    (select remaining from credit_grants
     where user_id = 'team:22222222-2222-4222-8222-222222222222' and scope is null),
    1::bigint, 'The unscoped pool grant paid only what the image credits could not.'
);

-- ---------------------------------------------------------------- expiry

select credit_add_credits(
    'test_expiry', 8, p_scope => array['model:gpt-4o'], p_expires_at => '2030-01-05 00:00+00'
);
select credit_add_credits('test_expiry', 2);
select is(
    (credit_get_balance('test_expiry')).scopes,
    '[{"scope": null, "remaining": 2}, {"scope": ["model:gpt-4o"], "remaining": 8}]'::jsonb,
    'get_balance breaks the balance down per scope, unscoped first.'
);
set local ducto.now to '2030-01-05 00:00:00+00';
select is(
    (credit_get_balance('test_expiry')).scopes,
    '[{"scope": null, "remaining": 2}]'::jsonb,
    'At its expiry the scoped grant leaves the breakdown, swept or not.'
);
select throws_ok(
    $$select credit_deduct_usage('test_expiry', '{"model": "gpt-4o", "requests": 3}')$$,
    'DC010', null, 'An expired scoped grant pays nothing.'
);
select is(
    (credit_deduct_usage('test_expiry', '{"model": "gpt-4o", "requests": 2}')).balance_after,
    0::bigint, 'A charge of 2 is paid by the unscoped 2.'
);
select is(
    (select -sum(amount)::bigint from credit_transactions
     where user_id = 'test_expiry' and type = 'expiry'),
    8::bigint, 'That charge first journaled the expiry of the 8 scoped credits.'
);

-- ---------------------------------------------------------------- verify

select is_empty(
    $$select * from credit_verify_ledger()$$,
    'verify finds nothing to report after all of the above.'
);
-- break the invariant on purpose: a chat charge drawn from the image grant
alter table credit_grant_draws disable trigger credit_grant_draws_append_only;
insert into credit_grant_draws (account_id, transaction_id, grant_id, amount)
select t.account_id, t.id, d.grant_id, d.amount
from credit_transactions as t,
    (values ((select grant_id from img_late), 1), ((select grant_id from plain), -1))
    as d (grant_id, amount)
where t.id = (select transaction_id from chat_charge);
update credit_grants set remaining = remaining - 1 where id = (select grant_id from img_late);
update credit_grants set remaining = remaining + 1 where id = (select grant_id from plain);
select results_eq(
    $$select check_name from credit_verify_ledger()$$,
    $$values ('grant ' || (select grant_id from img_late) || ' paid only within its scope')$$,
    'verify reports a scoped grant drawn by a charge outside its scope.'
);

select * from finish();
rollback;
