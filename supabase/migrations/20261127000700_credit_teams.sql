-- ducto: teams with a shared credit pool, members with a role and per-member spending limits.
--
--   credit_teams          a team and its pool: an account of its own, whose user_id is
--                         'team:<team id>', with a floor (min_balance) for team debits
--   credit_team_members   who may spend from the pool, with a role and an optional limit
--                         of net spend per calendar period (day, week, month; UTC)
--
-- The pool is an ordinary account, so every ledger rule holds for it unchanged: grants,
-- burn-down, expiry, refunds, idempotency, credit_verify_ledger. Top it up with
-- credit_add_credits('team:<team id>', ...). A team debit (credit_deduct_team) is attributed
-- to the member who spent: credit_transactions.attributed_user_id, which a refund of that
-- row inherits.
--
-- Locking: every team operation locks the pool's account row first, as every ledger
-- operation does; membership changes lock it too, so a debit and a membership change of
-- the same team never interleave.
--
-- Errors: DC081 team not found, DC082 not a member of the team, DC083 member spending
-- limit exceeded, DC084 pool exhausted (docs/plans-teams.md).

-- ---------------------------------------------------------------- tables

create table public.credit_teams (
    id uuid primary key,
    name text not null check (length(name) between 1 and 200),
    account_id bigint not null unique references public.credit_accounts (id),
    min_balance bigint not null default 0 check (min_balance between 0 and 9007199254740991),
    created_at timestamptz not null,
    updated_at timestamptz not null
);
comment on table public.credit_teams is
'Teams. Each has a credit pool: the account whose user_id is ''team:'' || id.';
comment on column public.credit_teams.min_balance is
'The pool''s floor: a team debit is admitted only if available - cost >= min_balance.';

create table public.credit_team_members (
    team_id uuid not null references public.credit_teams (id),
    user_id text not null,
    role text not null check (role in ('owner', 'admin', 'member')),
    spend_limit bigint check (spend_limit between 0 and 9007199254740991),
    limit_period text check (limit_period in ('day', 'week', 'month')),
    joined_at timestamptz not null,
    updated_at timestamptz not null,
    primary key (team_id, user_id),
    check ((spend_limit is null) = (limit_period is null))
);
comment on table public.credit_team_members is
'Members of a team, who may spend from its pool. The role is the app''s to interpret.';
comment on column public.credit_team_members.spend_limit is
'Most net credits (debits minus their refunds) the member may spend from the pool per'
' limit_period (calendar, UTC); null = no limit.';

create index credit_team_members_user_idx on public.credit_team_members (user_id);

-- ---------------------------------------------------------------- attribution

alter table public.credit_transactions add column attributed_user_id text;
comment on column public.credit_transactions.attributed_user_id is
'The member a team pool''s debit is attributed to (a refund of it inherits it); null on'
' rows of a user''s own account, which are that user''s.';

-- a member's spend from a pool in a period, read by every team debit with a limit
create index credit_transactions_attribution_idx
on public.credit_transactions (account_id, attributed_user_id, created_at) include (amount)
where attributed_user_id is not null;

create function credit_private.inherit_attribution()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- a refund is attributed to whoever the refunded row was, so a member's net spend
    -- (their limit, spend_by_user) counts refunds of their debits
    select o.attributed_user_id into new.attributed_user_id
    from public.credit_transactions as o
    where o.id = new.refund_of;
    return new;
end;
$$;

create trigger credit_transactions_inherit_attribution
before insert on public.credit_transactions
for each row when (new.refund_of is not null)
execute function credit_private.inherit_attribution();

-- ---------------------------------------------------------------- result types

create type public.credit_team_result as (
    team_id uuid,
    name text,
    account_user_id text,
    min_balance bigint,
    created_at timestamptz,
    updated_at timestamptz
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

-- ---------------------------------------------------------------- row-level security

alter table public.credit_teams enable row level security;
alter table public.credit_team_members enable row level security;

-- A signed-in user reads their own memberships and the teams they belong to.
create policy credit_team_members_read_own on public.credit_team_members
for select to authenticated
using (user_id = (select auth.uid())::text);

create policy credit_teams_read_member on public.credit_teams
for select to authenticated
using (
    id in (
        select m.team_id from public.credit_team_members as m
        where m.user_id = (select auth.uid())::text
    )
);

-- Members read their teams' pools like their own account: the account row, its journal,
-- grants and holds. `= any(array(...))` keeps the user_id and account_id index paths
-- open (a bitmap OR of the two), where `in (subquery)` would scan the whole table.
alter policy credit_accounts_read_own on public.credit_accounts
using (
    user_id = (select auth.uid())::text
    or id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

alter policy credit_transactions_read_own on public.credit_transactions
using (
    user_id = (select auth.uid())::text
    or account_id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

alter policy credit_grants_read_own on public.credit_grants
using (
    user_id = (select auth.uid())::text
    or account_id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

alter policy credit_reservations_read_own on public.credit_reservations
using (
    user_id = (select auth.uid())::text
    or account_id = any(array(
        select t.account_id
        from public.credit_teams as t
        inner join public.credit_team_members as m on t.id = m.team_id
        where m.user_id = (select auth.uid())::text
    ))
);

revoke all on table public.credit_teams, public.credit_team_members
from public, anon, authenticated, service_role;
grant select on table public.credit_teams, public.credit_team_members
to authenticated, service_role;

-- ---------------------------------------------------------------- internals

create function credit_private.lock_team(p_team_id uuid)
returns public.credit_teams
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_team public.credit_teams;
begin
    select * into v_team from public.credit_teams where id = p_team_id;
    if not found then
        perform credit_private.fail(
            'DC081', format('team %s does not exist', coalesce(p_team_id::text, 'null')),
            jsonb_build_object('team_id', p_team_id)
        );
    end if;
    -- the pool's account is the team's lock point, as for every ledger operation
    perform credit_private.lock_account_by_id(v_team.account_id);
    return v_team;
end;
$$;

create function credit_private.member_spent(
    p_account_id bigint, p_user_id text, p_period text, p_now timestamptz
)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
begin
    -- net spend of a member from a pool in the current period: debits attributed to the
    -- member minus refunds of them, both counted in the period they were made
    return coalesce((
        select -sum(t.amount)
        from public.credit_transactions as t
        where
            t.account_id = p_account_id
            and t.attributed_user_id = p_user_id
            and t.created_at >= (credit_private.period_bounds(p_period, p_now)).period_start
    ), 0)::bigint;
end;
$$;

create function credit_private.member_result(
    p_team public.credit_teams, p_member public.credit_team_members, p_now timestamptz
)
returns public.credit_team_member_result
language plpgsql
stable
set search_path = ''
as $$
begin
    return row(
        p_member.team_id, p_member.user_id, p_member.role, p_member.spend_limit,
        p_member.limit_period,
        case when p_member.limit_period is not null then credit_private.member_spent(
            p_team.account_id, p_member.user_id, p_member.limit_period, p_now
        ) end,
        p_member.joined_at
    );
end;
$$;

revoke all on function credit_private.inherit_attribution()
from public, anon, authenticated, service_role;
revoke all on function credit_private.lock_team(uuid)
from public, anon, authenticated, service_role;
revoke all on function credit_private.member_spent(bigint, text, text, timestamptz)
from public, anon, authenticated, service_role;
revoke all on function credit_private.member_result(
    public.credit_teams, public.credit_team_members, timestamptz
) from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- manage teams

create function public.credit_upsert_team(
    p_team_id uuid,
    p_name text,
    p_min_balance numeric default 0
)
returns public.credit_team_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_min_balance bigint := credit_private.whole(p_min_balance, 'min_balance', 0);
    v_account public.credit_accounts;
    v_team public.credit_teams;
begin
    if p_team_id is null then
        perform credit_private.fail(
            'DC006', 'team_id must be a uuid', jsonb_build_object('argument', 'team_id')
        );
    end if;
    if p_name is null or length(p_name) not between 1 and 200 then
        perform credit_private.fail(
            'DC006', 'team name must be 1 to 200 characters',
            jsonb_build_object('argument', 'name')
        );
    end if;
    -- the pool's account: created with the team, locked by every later change of it
    v_account := credit_private.lock_account('team:' || p_team_id, true);
    select * into v_team from public.credit_teams where id = p_team_id;
    if not found and v_account.version > 0 then
        -- an account of that name with a history is someone else's, never a new pool
        perform credit_private.fail(
            'DC006',
            format('account %s already exists and is not the pool of team %s',
                quote_literal('team:' || p_team_id), p_team_id),
            jsonb_build_object('argument', 'team_id', 'team_id', p_team_id)
        );
    end if;
    insert into public.credit_teams as t (id, name, account_id, min_balance, created_at, updated_at)
    values (p_team_id, p_name, v_account.id, v_min_balance, v_now, v_now)
    on conflict (id) do update set
        name = excluded.name, min_balance = excluded.min_balance, updated_at = excluded.updated_at
    returning * into v_team;
    return row(
        v_team.id, v_team.name, 'team:' || v_team.id, v_team.min_balance, v_team.created_at,
        v_team.updated_at
    );
end;
$$;

create function public.credit_set_team_member(
    p_team_id uuid,
    p_user_id text,
    p_role text default 'member',
    p_spend_limit numeric default null,
    p_limit_period text default null
)
returns public.credit_team_member_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_spend_limit bigint;
    v_team public.credit_teams;
    v_member public.credit_team_members;
begin
    perform credit_private.check_user_id(p_user_id);
    perform credit_private.check_choice(p_role, 'role', array['owner', 'admin', 'member']);
    if p_spend_limit is not null then
        v_spend_limit := credit_private.whole(p_spend_limit, 'spend_limit', 0);
        perform credit_private.check_choice(
            p_limit_period, 'limit_period', array['day', 'week', 'month']
        );
    elsif p_limit_period is not null then
        perform credit_private.fail(
            'DC006', 'limit_period needs a spend_limit',
            jsonb_build_object('argument', 'limit_period')
        );
    end if;

    v_team := credit_private.lock_team(p_team_id);
    insert into public.credit_team_members as m (
        team_id, user_id, role, spend_limit, limit_period, joined_at, updated_at
    ) values (p_team_id, p_user_id, p_role, v_spend_limit, p_limit_period, v_now, v_now)
    on conflict (team_id, user_id) do update set
        role = excluded.role,
        spend_limit = excluded.spend_limit,
        limit_period = excluded.limit_period,
        updated_at = excluded.updated_at
    returning * into v_member;
    return credit_private.member_result(v_team, v_member, v_now);
end;
$$;

create function public.credit_remove_team_member(p_team_id uuid, p_user_id text)
returns boolean
language plpgsql
volatile
security definer
set search_path = ''
as $$
begin
    perform credit_private.check_user_id(p_user_id);
    perform credit_private.lock_team(p_team_id);
    -- the member's past debits stay attributed to them in the journal
    delete from public.credit_team_members where team_id = p_team_id and user_id = p_user_id;
    return found;
end;
$$;

-- ---------------------------------------------------------------- privileges

revoke all on function public.credit_upsert_team(uuid, text, numeric)
from public, anon, authenticated, service_role;
revoke all on function public.credit_set_team_member(uuid, text, text, numeric, text)
from public, anon, authenticated, service_role;
revoke all on function public.credit_remove_team_member(uuid, text)
from public, anon, authenticated, service_role;

grant execute on function public.credit_upsert_team(uuid, text, numeric) to service_role;
grant execute on function public.credit_set_team_member(uuid, text, text, numeric, text)
to service_role;
grant execute on function public.credit_remove_team_member(uuid, text) to service_role;

-- ---------------------------------------------------------------- schema version

create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261127000700'::text;
$$;

revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;
