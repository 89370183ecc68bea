-- ducto: the result types of the RPCs (PostgREST returns their fields by name).

create type public.credit_add_result as (
    transaction_id uuid,
    grant_id uuid,
    user_id text,
    amount bigint,
    tx_type text,
    category text,
    priority integer,
    expires_at timestamptz,
    balance_after bigint,
    created_at timestamptz,
    is_replay boolean
);
comment on type public.credit_add_result is
'@notNull transaction_id, grant_id, user_id, amount, tx_type, category, priority,'
' balance_after, created_at, is_replay';

create type public.credit_reserve_result as (
    reservation_id uuid,
    user_id text,
    amount bigint,
    operation_type text,
    expires_at timestamptz,
    available_after bigint,
    created_at timestamptz,
    is_replay boolean
);
comment on type public.credit_reserve_result is
'@notNull reservation_id, user_id, amount, operation_type, expires_at, available_after,'
' created_at, is_replay';

create type public.credit_deduct_result as (
    transaction_id uuid,
    reservation_id uuid,
    user_id text,
    amount bigint,
    overage bigint,
    balance_after bigint,
    available_after bigint,
    created_at timestamptz,
    is_replay boolean,
    -- the pricing version that priced the charge; null for unpriced charges
    pricing_version bigint
);
comment on type public.credit_deduct_result is
'@notNull user_id, amount, overage, balance_after, available_after, created_at, is_replay';

create type public.credit_release_result as (
    reservation_id uuid,
    user_id text,
    amount bigint,
    status text,
    available_after bigint,
    is_replay boolean
);
comment on type public.credit_release_result is
'@notNull reservation_id, user_id, amount, status, available_after, is_replay';

create type public.credit_refund_result as (
    transaction_id uuid,
    refunded_transaction_id uuid,
    user_id text,
    amount bigint,
    total_refunded bigint,
    refundable_remaining bigint,
    balance_after bigint,
    created_at timestamptz,
    is_replay boolean
);
comment on type public.credit_refund_result is
'@notNull transaction_id, refunded_transaction_id, user_id, amount, total_refunded,'
' refundable_remaining, balance_after, created_at, is_replay';

create type public.credit_balance_result as (
    user_id text,
    balance bigint,
    held bigint,
    available bigint,
    scopes jsonb
);
comment on type public.credit_balance_result is
'scopes: the credits left per scope, [{"scope": null or [entries], "remaining": n}].
@notNull user_id, balance, held, available, scopes';

create type public.credit_sweep_result as (
    dry_run boolean,
    accounts integer,
    expired_grants integer,
    expired_amount bigint,
    expired_holds integer,
    expired_hold_amount bigint
);
comment on type public.credit_sweep_result is
'@notNull dry_run, accounts, expired_grants, expired_amount, expired_holds, expired_hold_amount';

create type public.credit_ledger_issue as (
    account_id bigint,
    user_id text,
    check_name text,
    expected text,
    actual text
);
comment on type public.credit_ledger_issue is
'@notNull check_name, expected, actual';

create type public.credit_pricing_version as (
    version bigint,
    label text,
    config jsonb,
    is_active boolean,
    created_at timestamptz
);
comment on type public.credit_pricing_version is
'@notNull version, config, is_active, created_at';

create type public.credit_cost_result as (
    pricing_version bigint,
    model text,
    matched text,
    exact_cost numeric,
    credits bigint,
    min_balance bigint
);
comment on type public.credit_cost_result is
'@notNull pricing_version, exact_cost, credits, min_balance';

create type public.credit_plan_result as (
    plan_id text,
    name text,
    features jsonb,
    is_default boolean,
    allowance bigint,
    allowance_period text,
    rollover_cap bigint,
    created_at timestamptz,
    updated_at timestamptz
);
comment on type public.credit_plan_result is
'@notNull plan_id, name, features, is_default, created_at, updated_at';

create type public.credit_user_plan_result as (
    user_id text,
    plan_id text,
    plan_name text,
    features jsonb,
    is_default boolean,
    allowance bigint,
    allowance_period text,
    rollover_cap bigint,
    assigned_at timestamptz
);
comment on type public.credit_user_plan_result is
'@notNull user_id, features, is_default';

create type public.credit_feature_result as (
    user_id text,
    feature text,
    has_feature boolean,
    value jsonb,
    plan_id text
);
comment on type public.credit_feature_result is
'@notNull user_id, feature, has_feature';

create type public.credit_allowance_result as (
    users integer,
    granted integer,
    already_granted integer,
    amount bigint,
    rollover bigint
);
comment on type public.credit_allowance_result is
'@notNull users, granted, already_granted, amount, rollover';

create type public.credit_team_result as (
    team_id uuid,
    name text,
    account_user_id text,
    min_balance bigint,
    created_at timestamptz,
    updated_at timestamptz
);
comment on type public.credit_team_result is
'@notNull team_id, name, account_user_id, min_balance, created_at, updated_at';

create type public.credit_team_deduct_result as (
    transaction_id uuid,
    team_id uuid,
    user_id text,
    amount bigint,
    balance_after bigint,
    available_after bigint,
    spent_in_period bigint,
    spend_limit bigint,
    limit_period text,
    created_at timestamptz,
    is_replay boolean,
    pricing_version bigint
);
comment on type public.credit_team_deduct_result is
'@notNull team_id, user_id, amount, balance_after, available_after, created_at, is_replay';

create type public.credit_team_member_result as (
    team_id uuid,
    user_id text,
    role text,
    spend_limit bigint,
    limit_period text,
    spent_in_period bigint,
    joined_at timestamptz
);
comment on type public.credit_team_member_result is
'@notNull team_id, user_id, role, joined_at';

create type public.credit_stats_result as (
    window_start timestamptz,
    window_end timestamptz,
    spent numeric,
    refunded numeric,
    net_spent numeric,
    credited numeric,
    expired numeric,
    charges bigint,
    refunds bigint,
    users bigint
);
comment on type public.credit_stats_result is
'@notNull window_start, window_end, spent, refunded, net_spent, credited, expired, charges,'
' refunds, users';

create type public.credit_daily_spend_row as (
    day date,
    spent numeric,
    refunded numeric,
    net_spent numeric,
    charges bigint,
    users bigint
);
comment on type public.credit_daily_spend_row is
'@notNull day, spent, refunded, net_spent, charges, users';

create type public.credit_model_spend_row as (
    model text,
    spent numeric,
    refunded numeric,
    net_spent numeric,
    charges bigint,
    users bigint
);
comment on type public.credit_model_spend_row is
'@notNull spent, refunded, net_spent, charges, users';

create type public.credit_user_spend_row as (
    user_id text,
    spent numeric,
    refunded numeric,
    net_spent numeric,
    charges bigint
);
comment on type public.credit_user_spend_row is
'@notNull user_id, spent, refunded, net_spent, charges';

create type public.credit_top_user_row as (
    rank bigint,
    user_id text,
    net_spent numeric,
    spent numeric,
    refunded numeric,
    charges bigint
);
comment on type public.credit_top_user_row is
'@notNull rank, user_id, net_spent, spent, refunded, charges';
