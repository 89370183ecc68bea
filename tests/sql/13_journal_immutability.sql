-- The journal is append-only: UPDATE, DELETE and TRUNCATE of credit_transactions and
-- credit_grant_draws fail with DC900, even for the superuser that owns the tables. (API
-- roles have no such privilege at all: 16_rls_as_users.sql.)
--
-- Actor: test_owner (a few rows in both tables); the statements run as the owner.
begin;
select plan(14);

-- (TRUNCATE ... CASCADE lists the tables it would cascade to; keep the TAP output clean)
set local client_min_messages to warning;

set local ducto.now to '2030-01-01 00:00:00+00';

create temp table topup as
select * from credit_add_credits('test_owner', 100);
create temp table spend as
select * from credit_deduct_credits('test_owner', 30);

-- check the deferred foreign keys now: TRUNCATE refuses to run while trigger events are
-- pending, which would hide what the append-only triggers do
set constraints all immediate;

-- 'SQLSTATE: message' of the error a statement raises. A row is refused by the trigger of
-- the partition it lies in (15_partitions.sql), which names that partition.
create function pg_temp.error_line(p_sql text)
returns text
language plpgsql
as $$
begin
    execute p_sql;
    return 'no error';
exception when others then
    return sqlstate || ': ' || sqlerrm;
end;
$$;

select ok(
    (select rolsuper from pg_roles where rolname = current_user)
    and (select pg_get_userbyid(relowner) = current_user from pg_class
         where oid = 'public.credit_transactions'::regclass),
    '(These statements run as a superuser that owns the journal.)'
);

-- ---------------------------------------------------------------- credit_transactions

select matches(
    pg_temp.error_line(
        $$update credit_transactions set amount = -1 where id = (select transaction_id from spend)$$
    ),
    '^DC900: the credit journal is append-only: UPDATE on credit_transactions'
    || '(_p[0-9]{4}_[0-9]{2}|_default)? is not allowed$',
    'UPDATE of a journal row is DC900.'
);
select throws_ok(
    $$update credit_transactions set metadata = '{"edited": true}'$$,
    'DC900', null,
    'UPDATE of any column, on every row, is DC900.'
);
select matches(
    pg_temp.error_line(
        $$delete from credit_transactions where id = (select transaction_id from spend)$$
    ),
    '^DC900: the credit journal is append-only: DELETE on credit_transactions'
    || '(_p[0-9]{4}_[0-9]{2}|_default)? is not allowed$',
    'DELETE of a journal row is DC900.'
);
select throws_ok(
    $$truncate credit_transactions cascade$$,
    'DC900',
    'the credit journal is append-only: TRUNCATE on credit_transactions is not allowed',
    'TRUNCATE ... CASCADE of the journal is DC900.'
);
select throws_ok(
    $$truncate credit_transactions, credit_grants, credit_grant_draws, credit_reservations,
               credit_idempotency_keys, credit_accounts, credit_allowance_grants,
               credit_teams, credit_team_members, credit_events, credit_event_deliveries,
               credit_account_limits, credit_spend_windows, credit_stripe_payments,
               credit_stripe_clawbacks, credit_stripe_disputes, credit_stripe_invoices,
               credit_auto_topups, credit_topup_requests, credit_checkpoints,
               credit_checkpoint_grants$$,
    'DC900', null,
    'TRUNCATE of every ledger table at once is DC900.'
);
select throws_ok(
    $$truncate credit_transactions$$,
    '0A000', null,
    'A plain TRUNCATE of the journal fails too (the grants reference it).'
);

-- ---------------------------------------------------------------- credit_grant_draws

select matches(
    pg_temp.error_line(
        $$update credit_grant_draws set amount = amount + 1$$
    ),
    '^DC900: the credit journal is append-only: UPDATE on credit_grant_draws'
    || '(_p[0-9]{4}_[0-9]{2}|_default)? is not allowed$',
    'UPDATE of a draw is DC900.'
);
select matches(
    pg_temp.error_line(
        $$delete from credit_grant_draws$$
    ),
    '^DC900: the credit journal is append-only: DELETE on credit_grant_draws'
    || '(_p[0-9]{4}_[0-9]{2}|_default)? is not allowed$',
    'DELETE of a draw is DC900.'
);
select throws_ok(
    $$truncate credit_grant_draws$$,
    'DC900',
    'the credit journal is append-only: TRUNCATE on credit_grant_draws is not allowed',
    'TRUNCATE of the draws is DC900.'
);

-- ---------------------------------------------------------------- nothing changed

select results_eq(
    $$select t.seq, t.type, t.amount, t.balance_after, t.metadata from credit_transactions as t
      where t.user_id = 'test_owner' order by t.seq$$,
    $$values (1::bigint, 'adjustment', 100::bigint, 100::bigint, '{}'::jsonb),
             (2::bigint, 'usage', -30::bigint, 70::bigint, '{}'::jsonb)$$,
    'The journal is unchanged.'
);
select results_eq(
    $$select d.grant_id, d.amount from credit_grant_draws as d
      join credit_transactions as t on t.id = d.transaction_id
      where t.user_id = 'test_owner'$$,
    $$select grant_id, 30::bigint from topup$$,
    'The draws are unchanged.'
);
select is_empty(
    $$select * from credit_verify_ledger()$$,
    'The ledger is consistent.'
);
select results_eq(
    $$select tgname::text collate "default" from pg_trigger
      where tgrelid in ('public.credit_transactions'::regclass,
                        'public.credit_grant_draws'::regclass)
        and not tgisinternal and tgenabled = 'O'
        and tgfoid = 'credit_private.refuse_journal_change'::regproc
      order by 1$$,
    $$values ('credit_grant_draws_append_only'), ('credit_grant_draws_no_truncate'),
             ('credit_transactions_append_only'), ('credit_transactions_no_truncate')$$,
    'The four append-only triggers exist and are enabled.'
);

select * from finish();
rollback;
