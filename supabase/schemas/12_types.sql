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

create type public.credit_release_result as (
    reservation_id uuid,
    user_id text,
    amount bigint,
    status text,
    available_after bigint,
    is_replay boolean
);

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

create type public.credit_balance_result as (
    user_id text,
    balance bigint,
    held bigint,
    available bigint
);

create type public.credit_sweep_result as (
    dry_run boolean,
    accounts integer,
    expired_grants integer,
    expired_amount bigint,
    expired_holds integer,
    expired_hold_amount bigint
);

create type public.credit_ledger_issue as (
    account_id bigint,
    user_id text,
    check_name text,
    expected text,
    actual text
);

create type public.credit_pricing_version as (
    version bigint,
    label text,
    config jsonb,
    is_active boolean,
    created_at timestamptz
);

create type public.credit_cost_result as (
    pricing_version bigint,
    model text,
    matched text,
    exact_cost numeric,
    credits bigint,
    min_balance bigint
);

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

create type public.credit_feature_result as (
    user_id text,
    feature text,
    has_feature boolean,
    value jsonb,
    plan_id text
);

create type public.credit_allowance_result as (
    users integer,
    granted integer,
    already_granted integer,
    amount bigint,
    rollover bigint
);

create type public.credit_team_result as (
    team_id uuid,
    name text,
    account_user_id text,
    min_balance bigint,
    created_at timestamptz,
    updated_at timestamptz
);

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

create type public.credit_team_member_result as (
    team_id uuid,
    user_id text,
    role text,
    spend_limit bigint,
    limit_period text,
    spent_in_period bigint,
    joined_at timestamptz
);

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

create type public.credit_daily_spend_row as (
    day date,
    spent numeric,
    refunded numeric,
    net_spent numeric,
    charges bigint,
    users bigint
);

create type public.credit_model_spend_row as (
    model text,
    spent numeric,
    refunded numeric,
    net_spent numeric,
    charges bigint,
    users bigint
);

create type public.credit_user_spend_row as (
    user_id text,
    spent numeric,
    refunded numeric,
    net_spent numeric,
    charges bigint
);

create type public.credit_top_user_row as (
    rank bigint,
    user_id text,
    net_spent numeric,
    spent numeric,
    refunded numeric,
    charges bigint
);
