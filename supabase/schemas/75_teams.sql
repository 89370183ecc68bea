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

create function credit_private.lock_team(p_team_id uuid)
returns public.credit_teams
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_account_id bigint;
    v_team public.credit_teams;
begin
    select t.account_id into v_account_id from public.credit_teams as t where t.id = p_team_id;
    if not found then
        perform credit_private.fail(
            'DC081', format('team %s does not exist', coalesce(p_team_id::text, 'null')),
            jsonb_build_object('team_id', p_team_id)
        );
    end if;
    -- the pool's account is the team's lock point, as for every ledger operation; the
    -- team row is read under it, so its floor is the one a concurrent upsert left
    perform credit_private.lock_account_by_id(v_account_id);
    select * into v_team from public.credit_teams where id = p_team_id;
    return v_team;
end;
$$;
revoke all on function credit_private.lock_team(uuid)
from public, anon, authenticated, service_role;

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
revoke all on function credit_private.member_spent(bigint, text, text, timestamptz)
from public, anon, authenticated, service_role;

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
revoke all on function credit_private.member_result(
    public.credit_teams, public.credit_team_members, timestamptz
) from public, anon, authenticated, service_role;

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
    on conflict (id, account_id) do update set
        name = excluded.name, min_balance = excluded.min_balance, updated_at = excluded.updated_at
    returning * into v_team;
    return row(
        v_team.id, v_team.name, 'team:' || v_team.id, v_team.min_balance, v_team.created_at,
        v_team.updated_at
    );
end;
$$;
revoke all on function public.credit_upsert_team(uuid, text, numeric)
from public, anon, authenticated, service_role;
grant execute on function public.credit_upsert_team(uuid, text, numeric) to service_role;

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
        team_id, account_id, user_id, role, spend_limit, limit_period, joined_at, updated_at
    ) values (
        p_team_id, v_team.account_id, p_user_id, p_role, v_spend_limit, p_limit_period, v_now,
        v_now
    )
    on conflict (team_id, user_id, account_id) do update set
        role = excluded.role,
        spend_limit = excluded.spend_limit,
        limit_period = excluded.limit_period,
        updated_at = excluded.updated_at
    returning * into v_member;
    return credit_private.member_result(v_team, v_member, v_now);
end;
$$;
revoke all on function public.credit_set_team_member(uuid, text, text, numeric, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_set_team_member(
    uuid, text, text, numeric, text
) to service_role;

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
revoke all on function public.credit_remove_team_member(uuid, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_remove_team_member(uuid, text) to service_role;

create function credit_private.team_deduct(
    p_team_id uuid,
    p_user_id text,
    p_usage jsonb,
    p_metadata jsonb,
    p_idempotency_key text
)
returns public.credit_team_deduct_result
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    -- what a replay must match; only needed with a key
    v_request jsonb := case when p_idempotency_key is not null then jsonb_build_object(
        'user_id', p_user_id, 'usage', p_usage, 'metadata', p_metadata
    ) end;
    -- A member's keys are the member's own: recorded under member id, U+001F, key (neither
    -- may hold a control character, so no other key looks the same). No member can
    -- replay, block or learn another's request, and a pool's own keys (its top-ups and
    -- refunds by the service role) never meet a member's.
    v_key text := p_user_id || chr(31) || p_idempotency_key;
    v_team public.credit_teams;
    v_replay jsonb;
    v_member public.credit_team_members;
    v_cost public.credit_cost_result;
    v_floor bigint;
    v_spent bigint;
    v_transaction public.credit_transactions;
    v_result public.credit_team_deduct_result;
begin
    -- Every check below is made under the pool's lock, in the transaction that debits it,
    -- and each refusal raises: nothing is written, and nothing looks like success.
    v_team := credit_private.lock_team(p_team_id);
    if p_idempotency_key is not null then
        v_replay := credit_private.find_replay(
            v_team.account_id, v_key, 'team_usage', v_request
        );
        if v_replay is not null then
            v_result := jsonb_populate_record(null::public.credit_team_deduct_result, v_replay);
            v_result.is_replay := true;
            return v_result;
        end if;
    end if;

    select * into v_member
    from public.credit_team_members as m
    where m.team_id = p_team_id and m.user_id = p_user_id;
    if not found then
        perform credit_private.fail(
            'DC082',
            format('user %s is not a member of team %s', quote_literal(p_user_id), p_team_id),
            jsonb_build_object('team_id', p_team_id, 'user_id', p_user_id)
        );
    end if;

    -- the pool keeps the higher of its own floor and the pricing's
    v_cost := credit_private.price(p_usage, null);
    v_floor := greatest(v_team.min_balance, v_cost.min_balance);

    if v_member.spend_limit is not null then
        v_spent := credit_private.member_spent(
            v_team.account_id, p_user_id, v_member.limit_period, v_now
        );
        if v_spent + v_cost.credits > v_member.spend_limit then
            perform credit_private.fail(
                'DC083',
                format('spending limit of user %s in team %s exceeded: spent %s of %s this %s,'
                    || ' needed %s', quote_literal(p_user_id), p_team_id, v_spent,
                    v_member.spend_limit, v_member.limit_period, v_cost.credits),
                jsonb_build_object(
                    'team_id', p_team_id,
                    'user_id', p_user_id,
                    'spend_limit', v_member.spend_limit,
                    'limit_period', v_member.limit_period,
                    'spent', v_spent,
                    'needed', v_cost.credits
                )
            );
        end if;
    end if;

    -- after the checks that only read: a charge over its member's limit does no expiry
    -- work before it is refused
    v_transaction := credit_private.debit(
        v_team.account_id, p_user_id, p_team_id, 'usage', v_cost.credits, v_floor, v_now,
        p_metadata, p_idempotency_key, null, v_cost.pricing_version, p_usage, null, null
    );

    v_result := row(
        v_transaction.id, p_team_id, p_user_id, v_cost.credits, v_transaction.balance_after,
        v_transaction.available_after, v_spent + v_cost.credits, v_member.spend_limit,
        v_member.limit_period, v_now, false, v_cost.pricing_version
    );
    perform credit_private.remember(
        v_team.account_id, v_key, 'team_usage', v_request, to_jsonb(v_result), v_now
    );
    return v_result;
end;
$$;
revoke all on function credit_private.team_deduct(uuid, text, jsonb, jsonb, text)
from public, anon, authenticated, service_role;

create function public.credit_deduct_team(
    p_team_id uuid,
    p_user_id text,
    p_metrics jsonb,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_team_deduct_result
language plpgsql
volatile
-- definer: writes the ledger tables, which no API role may write directly
security definer
set search_path = ''
as $$
declare
    v_usage jsonb := credit_private.check_usage(p_metrics);
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_user_id text := credit_private.check_user_id(p_user_id);
    v_key text := credit_private.check_key(p_idempotency_key);
begin
    -- priced under the active version, like credit_deduct_usage, then charged to the pool
    return credit_private.team_deduct(p_team_id, v_user_id, v_usage, v_metadata, v_key);
end;
$$;
revoke all on function public.credit_deduct_team(uuid, text, jsonb, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_deduct_team(uuid, text, jsonb, jsonb, text) to service_role;
