-- ducto: what the archive (88_archive.sql, docs/operations.md, "Archive") leaves behind: the
-- archived months, the horizon, and the refusal (DC132, HTTP 410) of what needs an
-- archived row. Here, ahead of the functions that ask them (find_replay,
-- credit_refund_transaction, credit_balance_at, verification).

-- ---------------------------------------------------------------- tables

create table credit_private.archived_months (
    month timestamptz primary key,
    transactions bigint not null check (transactions >= 0),
    amount bigint not null,
    draws bigint not null check (draws >= 0),
    archived_at timestamptz not null,
    check (month = date_trunc('month', month, 'UTC'))
);
comment on table credit_private.archived_months is
'The months (UTC) whose journal and draws partitions were detached: their rows, the sum of'
' their amounts and their draws. The horizon is the end of the newest one.';
alter table credit_private.archived_months enable row level security;
-- the horizon is no one's secret: credit_balance_at, which a signed-in user calls as
-- themselves, reads it (credit_private is not exposed through the API)
create policy archived_months_read on credit_private.archived_months
for select to authenticated
using (true);
revoke all on table credit_private.archived_months
from public, anon, authenticated, service_role;
grant select on table credit_private.archived_months to authenticated, service_role;

-- ---------------------------------------------------------------- the horizon

-- The end of the newest archived month: the journal holds every row created from it on
-- (null: nothing archived). The API roles' readers ask it, as themselves.
create function credit_private.archive_horizon()
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
    return (select max(m.month) + interval '1 month' from credit_private.archived_months as m);
end;
$$;
revoke all on function credit_private.archive_horizon()
from public, anon, authenticated, service_role;
grant execute on function credit_private.archive_horizon() to authenticated, service_role;

-- The archived month a journal row's id falls in, or null. Only a uuid_v7 carries its
-- month (every journal id since 0.7.0; an older random id was given a new one).
create function credit_private.archived_month_of(p_id uuid)
returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
begin
    if p_id is null or substring(p_id::text from 15 for 1) <> '7' then
        return null;
    end if;
    return (
        select m.month from credit_private.archived_months as m
        where m.month = date_trunc('month', credit_private.uuid_time(p_id), 'UTC')
    );
end;
$$;
revoke all on function credit_private.archived_month_of(uuid)
from public, anon, authenticated, service_role;
-- credit_verify_ledger (security invoker) asks it of the rows it checks
grant execute on function credit_private.archived_month_of(uuid) to service_role;

-- The refusal of what needs an archived row.
create function credit_private.fail_archived(p_what text, p_month timestamptz, p_detail jsonb)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    perform credit_private.fail(
        'DC132',
        format('%s is archived: the month of %s left the database', p_what,
            to_char(p_month at time zone 'UTC', 'YYYY-MM')),
        p_detail || jsonb_build_object('archived_month', p_month),
        'the archive export (ducto archive) holds it'
    );
end;
$$;
revoke all on function credit_private.fail_archived(text, timestamptz, jsonb)
from public, anon, authenticated, service_role;
