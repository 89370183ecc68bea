-- Privileges, read from the catalog: the exact allowlist of (object, grantee, privilege)
-- on every ducto function, table, sequence and view, and on the schema credit_private.
--
-- "ducto objects" are found, not listed: every function, table, view and sequence in
-- public whose name starts with credit_, and everything in the schema credit_private.
-- So a new object created without explicit grants makes this file fail:
--   * under Supabase's legacy default privileges it is granted to anon, authenticated and
--     service_role, which the allowlist does not contain;
--   * under revoked defaults (or in credit_private, which has no default privileges) its
--     ACL is NULL, which means PUBLIC may execute a function; aclexplode(acldefault(...))
--     turns that into a PUBLIC row, which the allowlist does not contain either;
--   * a new public function that revokes everything and grants nothing fails the check
--     that service_role may execute every public credit_ function.
-- The owner's own privileges are left out (the migration owner is not an API role).
begin;
select plan(25);

-- the object names below are printed as in this search path
set local search_path to public, extensions;

-- every ducto function, with its ACL (NULL ACL = the default one, PUBLIC included)
create temp view ducto_function as
select
    p.oid,
    n.nspname,
    p.proname,
    format('%s.%s(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)) as object,
    p.prosecdef,
    p.proconfig,
    p.proowner,
    coalesce(p.proacl, acldefault('f', p.proowner)) as acl
from pg_proc as p
join pg_namespace as n on n.oid = p.pronamespace
where (n.nspname = 'public' and p.proname like 'credit\_%') or n.nspname = 'credit_private';

-- every ducto table, view, materialized view, foreign table and sequence
create temp view ducto_relation as
select
    c.oid,
    n.nspname,
    c.relname,
    c.relkind,
    format('%s.%s', n.nspname, c.relname) as object,
    c.relrowsecurity,
    c.reloptions,
    c.relowner,
    coalesce(
        c.relacl, acldefault((case when c.relkind = 'S' then 's' else 'r' end)::"char", c.relowner)
    ) as acl
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace
where
    c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
    and ((n.nspname = 'public' and c.relname like 'credit\_%') or n.nspname = 'credit_private');

-- the tables no API role reads: the journal's and the draws' partitions (and month tables
-- detached by an archive), read through their parent, and the old journal ids
create temp view owner_only as
select object from ducto_relation
where
    nspname = 'credit_private'
    and (
        relname ~ '^credit_(transactions|grant_draws)_(p[0-9]{4}_[0-9]{2}|default)$'
        or relname = 'legacy_transaction_ids'
    );

-- (object, grantee, privilege) for everyone but the owner; grantee 0 is PUBLIC
create temp view ducto_acl as
select
    format('%s | %s | %s',
        f.object,
        case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
        a.privilege_type) as acl_row,
    f.object,
    a.grantee,
    a.privilege_type
from ducto_function as f, aclexplode(f.acl) as a
where a.grantee <> f.proowner
union all
select
    format('%s | %s | %s',
        r.object,
        case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end,
        a.privilege_type),
    r.object,
    a.grantee,
    a.privilege_type
from ducto_relation as r, aclexplode(r.acl) as a
where a.grantee <> r.relowner;

select cmp_ok(
    (select count(*) from ducto_function where nspname = 'public'), '>=', 9::bigint,
    '(The filter finds the public credit_ functions.)'
);
select cmp_ok(
    (select count(*) from ducto_relation where relkind = 'r'), '>=', 6::bigint,
    '(The filter finds the credit_ tables.)'
);

-- ---------------------------------------------------------------- the allowlist

select set_eq(
    $$select acl_row from ducto_acl where object like '%(%'$$,
    array[
        'credit_private.clock() | authenticated | EXECUTE',
        'credit_private.clock() | service_role | EXECUTE',
        'credit_private.check_user_id(text) | authenticated | EXECUTE',
        'credit_private.check_user_id(text) | service_role | EXECUTE',
        'credit_private.fail(text, text, jsonb, text) | authenticated | EXECUTE',
        'credit_private.fail(text, text, jsonb, text) | service_role | EXECUTE',
        'credit_private.reader_id(text, text) | authenticated | EXECUTE',
        'credit_private.reader_id(text, text) | service_role | EXECUTE',
        'credit_private.uuid_floor(timestamp with time zone) | service_role | EXECUTE',
        'credit_private.uuid_time(uuid) | service_role | EXECUTE',
        'credit_private.archive_horizon() | authenticated | EXECUTE',
        'credit_private.archive_horizon() | service_role | EXECUTE',
        'credit_private.archived_month_of(uuid) | service_role | EXECUTE',
        'credit_private.balance_before(text, timestamp with time zone) | authenticated | EXECUTE',
        'credit_private.balance_before(text, timestamp with time zone) | service_role | EXECUTE',
        'public.credit_add_credits(text, numeric, text, text, integer, timestamp with time zone,'
        || ' jsonb, text, text[]) | service_role | EXECUTE',
        'public.credit_deduct_credits(text, numeric, numeric, jsonb, text) | service_role | EXECUTE',
        'public.credit_reserve_credits(text, numeric, text, numeric, integer, jsonb, text)'
        || ' | service_role | EXECUTE',
        'public.credit_settle_reservation(uuid, numeric, jsonb, numeric) | service_role | EXECUTE',
        'public.credit_release_reservation(uuid) | service_role | EXECUTE',
        'public.credit_refund_transaction(uuid, numeric, text, jsonb, text)'
        || ' | service_role | EXECUTE',
        'public.credit_get_balance(text) | authenticated | EXECUTE',
        'public.credit_get_balance(text) | service_role | EXECUTE',
        'public.credit_sweep_expired(boolean) | service_role | EXECUTE',
        'public.credit_partitions() | service_role | EXECUTE',
        'public.credit_verify_ledger(timestamp with time zone) | service_role | EXECUTE',
        'public.credit_take_checkpoints(timestamp with time zone) | service_role | EXECUTE',
        'public.credit_schema_version() | service_role | EXECUTE',
        'public.credit_publish_pricing(jsonb, text) | service_role | EXECUTE',
        'public.credit_get_pricing(bigint) | service_role | EXECUTE',
        'public.credit_list_pricing_versions() | service_role | EXECUTE',
        'public.credit_calculate_cost(jsonb, bigint) | service_role | EXECUTE',
        'public.credit_deduct_usage(text, jsonb, jsonb, text) | service_role | EXECUTE',
        'public.credit_deduct_fixed(text, text, jsonb, text) | service_role | EXECUTE',
        'public.credit_settle_usage(uuid, jsonb, jsonb, text, numeric) | service_role | EXECUTE',
        'credit_private.check_usage(jsonb) | service_role | EXECUTE',
        'credit_private.pricing(bigint) | service_role | EXECUTE',
        'credit_private.price(jsonb, bigint) | service_role | EXECUTE',
        'credit_private.cost(jsonb, jsonb) | service_role | EXECUTE',
        'public.credit_upsert_plan(text, text, jsonb, numeric, text, numeric, boolean)'
        || ' | service_role | EXECUTE',
        'public.credit_assign_plan(text, text) | service_role | EXECUTE',
        'public.credit_get_user_plan(text) | authenticated | EXECUTE',
        'public.credit_get_user_plan(text) | service_role | EXECUTE',
        'public.credit_check_feature(text, text) | authenticated | EXECUTE',
        'public.credit_check_feature(text, text) | service_role | EXECUTE',
        'public.credit_grant_allowances(text) | service_role | EXECUTE',
        'public.credit_upsert_team(uuid, text, numeric) | service_role | EXECUTE',
        'public.credit_set_team_member(uuid, text, text, numeric, text) | service_role | EXECUTE',
        'public.credit_remove_team_member(uuid, text) | service_role | EXECUTE',
        'public.credit_deduct_team(uuid, text, jsonb, jsonb, text) | service_role | EXECUTE',
        'public.credit_aggregate_stats(timestamp with time zone, timestamp with time zone)'
        || ' | service_role | EXECUTE',
        'public.credit_daily_spend(timestamp with time zone, timestamp with time zone)'
        || ' | service_role | EXECUTE',
        'public.credit_spend_by_model(timestamp with time zone, timestamp with time zone)'
        || ' | service_role | EXECUTE',
        'public.credit_spend_by_user(timestamp with time zone, timestamp with time zone)'
        || ' | service_role | EXECUTE',
        'public.credit_top_users(integer, timestamp with time zone, timestamp with time zone)'
        || ' | service_role | EXECUTE',
        'credit_private.check_window(timestamp with time zone, timestamp with time zone)'
        || ' | authenticated | EXECUTE',
        'credit_private.check_window(timestamp with time zone, timestamp with time zone)'
        || ' | service_role | EXECUTE',
        'public.credit_balance_at(text, timestamp with time zone) | authenticated | EXECUTE',
        'public.credit_balance_at(text, timestamp with time zone) | service_role | EXECUTE',
        'public.credit_statement(text, timestamp with time zone, timestamp with time zone)'
        || ' | authenticated | EXECUTE',
        'public.credit_statement(text, timestamp with time zone, timestamp with time zone)'
        || ' | service_role | EXECUTE',
        'public.credit_export_journal(timestamp with time zone, timestamp with time zone,'
        || ' text, bigint, bigint, integer) | service_role | EXECUTE',
        'credit_private.spend(timestamp with time zone, timestamp with time zone, text)'
        || ' | service_role | EXECUTE',
        'public.credit_list_events(text, uuid, text[], integer) | authenticated | EXECUTE',
        'public.credit_list_events(text, uuid, text[], integer) | service_role | EXECUTE',
        'public.credit_emit_due_events() | service_role | EXECUTE',
        'public.credit_poll_events(uuid, integer) | service_role | EXECUTE',
        'public.credit_set_alert(text, text, numeric, numeric) | service_role | EXECUTE',
        'public.credit_delete_alert(uuid) | service_role | EXECUTE',
        'public.credit_list_alerts(text, text) | service_role | EXECUTE',
        'public.credit_set_grant_expiring_days(integer) | service_role | EXECUTE',
        'public.credit_set_event_endpoint(text, text, text[], boolean, uuid)'
        || ' | service_role | EXECUTE',
        'public.credit_list_event_endpoints() | service_role | EXECUTE',
        'public.credit_claim_event_deliveries(integer, integer) | service_role | EXECUTE',
        'public.credit_finish_event_delivery(uuid, boolean, text, integer)'
        || ' | service_role | EXECUTE',
        'credit_private.window_start(text, integer, timestamp with time zone) | authenticated | EXECUTE',
        'credit_private.window_start(text, integer, timestamp with time zone) | service_role | EXECUTE',
        'credit_private.window_used(text, timestamp with time zone, text) | authenticated | EXECUTE',
        'credit_private.window_used(text, timestamp with time zone, text) | service_role | EXECUTE',
        'credit_private.active_holds(bigint, timestamp with time zone) | authenticated | EXECUTE',
        'credit_private.active_holds(bigint, timestamp with time zone) | service_role | EXECUTE',
        'credit_private.below_zero_since(bigint) | authenticated | EXECUTE',
        'credit_private.below_zero_since(bigint) | service_role | EXECUTE',
        'credit_private.credit_line(bigint, text) | authenticated | EXECUTE',
        'credit_private.credit_line(bigint, text) | service_role | EXECUTE',
        'credit_private.limits_result(text, timestamp with time zone) | authenticated | EXECUTE',
        'credit_private.limits_result(text, timestamp with time zone) | service_role | EXECUTE',
        'public.credit_get_limits(text) | authenticated | EXECUTE',
        'public.credit_get_limits(text) | service_role | EXECUTE',
        'public.credit_set_limits(text, jsonb, integer, numeric, integer) | service_role'
        || ' | EXECUTE',
        'public.credit_set_plan_credit_line(text, numeric, integer) | service_role | EXECUTE',
        'credit_private.scope_breakdown(bigint, timestamp with time zone) | authenticated'
        || ' | EXECUTE',
        'credit_private.scope_breakdown(bigint, timestamp with time zone) | service_role'
        || ' | EXECUTE',
        'credit_private.scope_covers(text[], jsonb, text, jsonb) | service_role | EXECUTE',
        'credit_private.verify_scopes() | service_role | EXECUTE',
        'credit_private.verify_since(timestamp with time zone) | service_role | EXECUTE',
        'public.credit_void_grant(uuid, numeric, text, text) | service_role | EXECUTE',
        'public.credit_stripe_record_purchase(text, numeric, text, text, numeric, jsonb)'
        || ' | service_role | EXECUTE',
        'public.credit_stripe_charge_refunded(text, numeric) | service_role | EXECUTE',
        'public.credit_stripe_dispute(text, text, numeric, text) | service_role | EXECUTE',
        'public.credit_set_price_plan(text, text) | service_role | EXECUTE',
        'public.credit_list_price_plans() | service_role | EXECUTE',
        'public.credit_stripe_subscription_changed(text, text, text, text,'
        || ' timestamp with time zone, text) | service_role | EXECUTE',
        'public.credit_stripe_invoice_paid(text, text, text, text, text,'
        || ' timestamp with time zone, text) | service_role | EXECUTE',
        'public.credit_set_auto_topup(text, bigint, numeric, text, text, text, bigint, bigint,'
        || ' bigint, bigint, integer, integer, boolean) | service_role | EXECUTE',
        'public.credit_get_auto_topup(text) | service_role | EXECUTE',
        'credit_private.auto_topup_row(bigint, timestamp with time zone) | service_role'
        || ' | EXECUTE',
        'public.credit_claim_topup_requests(integer, integer) | service_role | EXECUTE',
        'public.credit_record_topup_payment(uuid, text) | service_role | EXECUTE',
        'public.credit_complete_topup(uuid, text, text, text) | service_role | EXECUTE'
    ],
    'Function privileges are exactly the allowlist: service_role executes every RPC and the'
    || ' credit_private helpers its read RPCs call as the caller (clock, check_user_id,'
    || ' reader_id, fail, uuid_floor, and the pricing reads); authenticated only the readers of'
    || ' their own balance, plan and statements (credit_get_balance, credit_get_user_plan,'
    || ' credit_check_feature, credit_balance_at, credit_statement) and the six helpers they'
    || ' call; nothing else.'
);
select set_eq(
    -- a month's partitions by one name: they are made every month, all alike
    $$select regexp_replace(acl_row, '_p[0-9]{4}_[0-9]{2} ', '_pYYYY_MM ')
      from ducto_acl where object not like '%(%'$$,
    array[
        'credit_private.credit_transactions_pYYYY_MM | service_role | SELECT',
        'credit_private.credit_grant_draws_pYYYY_MM | service_role | SELECT',
        'credit_private.credit_transactions_default | service_role | SELECT',
        'credit_private.credit_grant_draws_default | service_role | SELECT',
        'credit_private.legacy_transaction_ids | service_role | SELECT',
        'public.credit_accounts | authenticated | SELECT',
        'public.credit_accounts | service_role | SELECT',
        'public.credit_transactions | authenticated | SELECT',
        'public.credit_transactions | service_role | SELECT',
        'public.credit_grants | authenticated | SELECT',
        'public.credit_grants | service_role | SELECT',
        'public.credit_reservations | authenticated | SELECT',
        'public.credit_reservations | service_role | SELECT',
        'public.credit_grant_draws | service_role | SELECT',
        'public.credit_idempotency_keys | service_role | SELECT',
        'public.credit_pricing_config | service_role | SELECT',
        'public.credit_plans | authenticated | SELECT',
        'public.credit_plans | service_role | SELECT',
        'public.credit_user_plans | authenticated | SELECT',
        'public.credit_user_plans | service_role | SELECT',
        'public.credit_allowance_grants | service_role | SELECT',
        'public.credit_checkpoints | authenticated | SELECT',
        'public.credit_checkpoints | service_role | SELECT',
        'public.credit_checkpoint_grants | service_role | SELECT',
        'public.credit_debit_keys | service_role | SELECT',
        'public.credit_teams | authenticated | SELECT',
        'public.credit_teams | service_role | SELECT',
        'public.credit_team_members | authenticated | SELECT',
        'public.credit_team_members | service_role | SELECT',
        'credit_private.journal_activity | service_role | SELECT',
        'credit_private.archived_months | authenticated | SELECT',
        'credit_private.archived_months | service_role | SELECT',
        'public.credit_events | authenticated | SELECT',
        'public.credit_events | service_role | SELECT',
        'public.credit_balance_alerts | service_role | SELECT',
        'public.credit_event_settings | service_role | SELECT',
        'public.credit_event_endpoints | service_role | SELECT',
        'public.credit_event_deliveries | service_role | SELECT',
        'public.credit_account_limits | authenticated | SELECT',
        'public.credit_account_limits | service_role | SELECT',
        'public.credit_spend_windows | authenticated | SELECT',
        'public.credit_spend_windows | service_role | SELECT',
        'public.credit_stripe_payments | service_role | SELECT',
        'public.credit_stripe_clawbacks | service_role | SELECT',
        'public.credit_stripe_disputes | service_role | SELECT',
        'public.credit_stripe_early_refunds | service_role | SELECT',
        'public.credit_stripe_prices | service_role | SELECT',
        'public.credit_stripe_customers | service_role | SELECT',
        'public.credit_stripe_subscriptions | service_role | SELECT',
        'public.credit_stripe_invoices | service_role | SELECT',
        'public.credit_auto_topups | service_role | SELECT',
        'public.credit_topup_requests | service_role | SELECT'
    ],
    'Table and sequence privileges are exactly the allowlist: SELECT only; authenticated on'
    || ' the tables of their own rows, service_role on all; nothing on the sequences.'
);
select set_eq(
    $$select format('%s | %s', case when a.grantee = 0 then 'PUBLIC'
                                    else pg_get_userbyid(a.grantee) end, a.privilege_type)
      from pg_namespace as n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) as a
      where n.nspname = 'credit_private' and a.grantee <> n.nspowner$$,
    array['authenticated | USAGE', 'service_role | USAGE'],
    'The schema credit_private is usable by authenticated and service_role only (for the'
    || ' helpers of the read RPCs), not by anon or PUBLIC.'
);
select is_empty(
    $$select format('%s.%s | %s', r.object, a.attname, c.item)
      from ducto_relation as r
      join pg_attribute as a on a.attrelid = r.oid
      cross join lateral unnest(a.attacl) as c (item)
      where a.attacl is not null$$,
    'No column of a ducto table has column-level privileges.'
);

-- ---------------------------------------------------------------- PUBLIC and anon

select is_empty(
    $$select acl_row from ducto_acl where grantee = 0$$,
    'PUBLIC has no privilege on any ducto function, table or sequence (no NULL ACL either).'
);
select is_empty(
    $$select object from ducto_function where has_function_privilege('anon', oid, 'EXECUTE')$$,
    'anon can execute no ducto function, by any path (PUBLIC, membership, direct grant).'
);
select is_empty(
    $$select object from ducto_relation
      where relkind <> 'S'
        and has_table_privilege(
            'anon', oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'
        )$$,
    'anon has no privilege on any ducto table or view.'
);
select is_empty(
    $$select object from ducto_relation
      where case when relkind = 'S'
                 then has_sequence_privilege('anon', oid, 'USAGE, SELECT, UPDATE') end$$,
    'anon has no privilege on any ducto sequence.'
);
select ok(
    not has_schema_privilege('anon', 'credit_private', 'USAGE'),
    'anon has no USAGE on the schema credit_private.'
);
select ok(
    not has_schema_privilege('anon', 'credit_private', 'CREATE')
    and not has_schema_privilege('authenticated', 'credit_private', 'CREATE')
    and not has_schema_privilege('service_role', 'credit_private', 'CREATE'),
    'No API role can create objects in credit_private.'
);

-- ---------------------------------------------------------------- authenticated

select set_eq(
    $$select object from ducto_function
      where has_function_privilege('authenticated', oid, 'EXECUTE')$$,
    array['public.credit_get_balance(text)', 'public.credit_get_user_plan(text)',
          'public.credit_check_feature(text, text)', 'credit_private.clock()',
          'credit_private.check_user_id(text)', 'credit_private.fail(text, text, jsonb, text)',
          'credit_private.reader_id(text, text)',
          'public.credit_balance_at(text, timestamp with time zone)',
          'public.credit_statement(text, timestamp with time zone, timestamp with time zone)',
          'credit_private.check_window(timestamp with time zone, timestamp with time zone)',
          'public.credit_list_events(text, uuid, text[], integer)',
          'public.credit_get_limits(text)',
          'credit_private.window_start(text, integer, timestamp with time zone)',
          'credit_private.window_used(text, timestamp with time zone, text)',
          'credit_private.active_holds(bigint, timestamp with time zone)',
          'credit_private.below_zero_since(bigint)',
          'credit_private.credit_line(bigint, text)',
          'credit_private.limits_result(text, timestamp with time zone)',
          'credit_private.scope_breakdown(bigint, timestamp with time zone)',
          'credit_private.archive_horizon()',
          'credit_private.balance_before(text, timestamp with time zone)'],
    'authenticated can execute the readers of their own balance, plan, statements, events'
    || ' and limits and the helpers they call, nothing else.'
);
select set_eq(
    $$select object from ducto_relation where has_table_privilege('authenticated', oid, 'SELECT')$$,
    array['public.credit_accounts', 'public.credit_transactions', 'public.credit_grants',
          'public.credit_reservations', 'public.credit_plans', 'public.credit_user_plans',
          'public.credit_teams', 'public.credit_team_members', 'public.credit_events',
          'public.credit_account_limits', 'public.credit_spend_windows',
          'public.credit_checkpoints', 'credit_private.archived_months'],
    'authenticated can SELECT exactly the tables that hold their own rows, and the archived'
    || ' months (the horizon of credit_balance_at).'
);
select is_empty(
    $$select object from ducto_relation
      where (relkind <> 'S'
             and has_table_privilege(
                 'authenticated', oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'
             ))
         or case when relkind = 'S'
                 then has_sequence_privilege('authenticated', oid, 'USAGE, SELECT, UPDATE') end$$,
    'authenticated cannot write any ducto table or use any ducto sequence.'
);

-- ---------------------------------------------------------------- service_role

select is_empty(
    $$select object from ducto_function
      where nspname = 'public' and not has_function_privilege('service_role', oid, 'EXECUTE')$$,
    'service_role can execute every public credit_ function (a new one without a grant fails).'
);
select set_eq(
    $$select object from ducto_function
      where nspname = 'credit_private' and has_function_privilege('service_role', oid, 'EXECUTE')$$,
    array['credit_private.clock()', 'credit_private.check_user_id(text)',
          'credit_private.reader_id(text, text)',
          'credit_private.uuid_floor(timestamp with time zone)',
          'credit_private.uuid_time(uuid)',
          'credit_private.fail(text, text, jsonb, text)', 'credit_private.check_usage(jsonb)',
          'credit_private.pricing(bigint)', 'credit_private.price(jsonb, bigint)',
          'credit_private.cost(jsonb, jsonb)',
          'credit_private.check_window(timestamp with time zone, timestamp with time zone)',
          'credit_private.spend(timestamp with time zone, timestamp with time zone, text)',
          'credit_private.window_start(text, integer, timestamp with time zone)',
          'credit_private.window_used(text, timestamp with time zone, text)',
          'credit_private.active_holds(bigint, timestamp with time zone)',
          'credit_private.below_zero_since(bigint)',
          'credit_private.credit_line(bigint, text)',
          'credit_private.limits_result(text, timestamp with time zone)',
          'credit_private.scope_breakdown(bigint, timestamp with time zone)',
          'credit_private.scope_covers(text[], jsonb, text, jsonb)',
          'credit_private.verify_scopes()',
          'credit_private.verify_since(timestamp with time zone)',
          'credit_private.auto_topup_row(bigint, timestamp with time zone)',
          'credit_private.archive_horizon()',
          'credit_private.balance_before(text, timestamp with time zone)',
          'credit_private.archived_month_of(uuid)'],
    'In credit_private, service_role can execute only the helpers its read RPCs call (none'
    || ' of them writes).'
);
select is_empty(
    $$select object from ducto_relation
      where relkind in ('r', 'p') and not has_table_privilege('service_role', oid, 'SELECT')
        and object not in (select object from owner_only)$$,
    'service_role can SELECT every ducto table (but the partitions, read through their'
    || ' parent, and the owner''s own tables).'
);
select is_empty(
    $$select object from ducto_relation
      where (relkind <> 'S'
             and has_table_privilege(
                 'service_role', oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'
             ))
         or case when relkind = 'S'
                 then has_sequence_privilege('service_role', oid, 'USAGE, SELECT, UPDATE') end$$,
    'service_role has no INSERT, UPDATE, DELETE or TRUNCATE on any ducto table, nor any'
    || ' sequence: the ledger is written only through the RPCs.'
);

-- ---------------------------------------------------------------- row-level security

select is_empty(
    $$select object from ducto_relation where relkind in ('r', 'p') and not relrowsecurity
        and object not in (select object from owner_only)$$,
    'Every ducto table has row-level security enabled (a partition is read through its'
    || ' parent, whose policies apply).'
);
select is_empty(
    $$select object from ducto_relation
      where relkind = 'v'
        and not coalesce('security_invoker=true' = any(reloptions), false)$$,
    'Every ducto view (if any) is security_invoker, so RLS applies to its readers.'
);

-- ---------------------------------------------------------------- SECURITY DEFINER

select set_eq(
    $$select object from ducto_function where prosecdef$$,
    array[
        'public.credit_add_credits(text, numeric, text, text, integer, timestamp with time zone,'
        || ' jsonb, text, text[])',
        'public.credit_deduct_credits(text, numeric, numeric, jsonb, text)',
        'public.credit_reserve_credits(text, numeric, text, numeric, integer, jsonb, text)',
        'public.credit_settle_reservation(uuid, numeric, jsonb, numeric)',
        'public.credit_release_reservation(uuid)',
        'public.credit_refund_transaction(uuid, numeric, text, jsonb, text)',
        'public.credit_sweep_expired(boolean)',
        'public.credit_take_checkpoints(timestamp with time zone)',
        'public.credit_publish_pricing(jsonb, text)',
        'public.credit_deduct_usage(text, jsonb, jsonb, text)',
        'public.credit_deduct_fixed(text, text, jsonb, text)',
        'public.credit_settle_usage(uuid, jsonb, jsonb, text, numeric)',
        'public.credit_upsert_plan(text, text, jsonb, numeric, text, numeric, boolean)',
        'public.credit_assign_plan(text, text)',
        'public.credit_grant_allowances(text)',
        'public.credit_upsert_team(uuid, text, numeric)',
        'public.credit_set_team_member(uuid, text, text, numeric, text)',
        'public.credit_remove_team_member(uuid, text)',
        'public.credit_deduct_team(uuid, text, jsonb, jsonb, text)',
        'public.credit_emit_due_events()',
        'public.credit_set_alert(text, text, numeric, numeric)',
        'public.credit_delete_alert(uuid)',
        'public.credit_set_grant_expiring_days(integer)',
        'public.credit_set_event_endpoint(text, text, text[], boolean, uuid)',
        'public.credit_claim_event_deliveries(integer, integer)',
        'public.credit_finish_event_delivery(uuid, boolean, text, integer)',
        'public.credit_set_limits(text, jsonb, integer, numeric, integer)',
        'public.credit_set_plan_credit_line(text, numeric, integer)',
        'public.credit_void_grant(uuid, numeric, text, text)',
        'public.credit_stripe_record_purchase(text, numeric, text, text, numeric, jsonb)',
        'public.credit_stripe_charge_refunded(text, numeric)',
        'public.credit_stripe_dispute(text, text, numeric, text)',
        'public.credit_set_price_plan(text, text)',
        'public.credit_stripe_subscription_changed(text, text, text, text,'
        || ' timestamp with time zone, text)',
        'public.credit_stripe_invoice_paid(text, text, text, text, text,'
        || ' timestamp with time zone, text)',
        'public.credit_set_auto_topup(text, bigint, numeric, text, text, text, bigint, bigint,'
        || ' bigint, bigint, integer, integer, boolean)',
        'public.credit_claim_topup_requests(integer, integer)',
        'public.credit_record_topup_payment(uuid, text)',
        'public.credit_complete_topup(uuid, text, text, text)'
    ],
    'Exactly the write RPCs are SECURITY DEFINER; the reads and every credit_private'
    || ' helper run as the caller.'
);
select is_empty(
    $$select object from ducto_function
      where prosecdef
        and not exists (select from unnest(proconfig) as c where c like 'search\_path=%')$$,
    'Every SECURITY DEFINER ducto function pins search_path (splinter 0011).'
);
select is_empty(
    $$select object from ducto_function
      where not ('search_path=""' = any(coalesce(proconfig, '{}')))$$,
    'Every ducto function sets search_path to the empty string.'
);
select is_empty(
    $$select format('%s | %s', object, r.rolname) from ducto_function
      cross join (values ('anon'), ('authenticated')) as r (rolname)
      where prosecdef and has_function_privilege(r.rolname, oid, 'EXECUTE')$$,
    'No SECURITY DEFINER ducto function is executable by anon or authenticated'
    || ' (splinter 0028/0029).'
);

select * from finish();
rollback;
