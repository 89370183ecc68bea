-- ducto: the comments of the result types that name the fields their functions always
-- fill (@notNull), which scripts/db_types.py reads to generate the TypeScript types.
--
--   * A database that applied 20261205000300 as first released has none of them: they are
--     set here for the types created up to it (the types added since carry theirs from the
--     migration that creates them). Comments only: nothing a function does changes.

comment on type public.credit_add_result is
'@notNull transaction_id, grant_id, user_id, amount, tx_type, category, priority,'
' balance_after, created_at, is_replay';
comment on type public.credit_reserve_result is
'@notNull reservation_id, user_id, amount, operation_type, expires_at, available_after,'
' created_at, is_replay';
comment on type public.credit_deduct_result is
'@notNull user_id, amount, overage, balance_after, available_after, created_at, is_replay';
comment on type public.credit_release_result is
'@notNull reservation_id, user_id, amount, status, available_after, is_replay';
comment on type public.credit_refund_result is
'@notNull transaction_id, refunded_transaction_id, user_id, amount, total_refunded,'
' refundable_remaining, balance_after, created_at, is_replay';
comment on type public.credit_sweep_result is
'@notNull dry_run, accounts, expired_grants, expired_amount, expired_holds, expired_hold_amount';
comment on type public.credit_ledger_issue is
'@notNull check_name, expected, actual';
comment on type public.credit_pricing_version is
'@notNull version, config, is_active, created_at';
comment on type public.credit_cost_result is
'@notNull pricing_version, exact_cost, credits, min_balance';
comment on type public.credit_plan_result is
'@notNull plan_id, name, features, is_default, created_at, updated_at';
comment on type public.credit_user_plan_result is
'@notNull user_id, features, is_default';
comment on type public.credit_feature_result is
'@notNull user_id, feature, has_feature';
comment on type public.credit_allowance_result is
'@notNull users, granted, already_granted, amount, rollover';
comment on type public.credit_team_result is
'@notNull team_id, name, account_user_id, min_balance, created_at, updated_at';
comment on type public.credit_team_deduct_result is
'@notNull team_id, user_id, amount, balance_after, available_after, created_at, is_replay';
comment on type public.credit_team_member_result is
'@notNull team_id, user_id, role, joined_at';
comment on type public.credit_stats_result is
'@notNull window_start, window_end, spent, refunded, net_spent, credited, expired, charges,'
' refunds, users';
comment on type public.credit_daily_spend_row is
'@notNull day, spent, refunded, net_spent, charges, users';
comment on type public.credit_model_spend_row is
'@notNull spent, refunded, net_spent, charges, users';
comment on type public.credit_user_spend_row is
'@notNull user_id, spent, refunded, net_spent, charges';
comment on type public.credit_top_user_row is
'@notNull rank, user_id, net_spent, spent, refunded, charges';

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205001200'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
