-- ducto: archiving closed months (docs/operations.md, "Archive"). `ducto archive` exports a
-- month's partitions of the journal and the draws, checks the export against the
-- checkpoints at the month's start and end, then credit_private.archive_month detaches
-- the partitions, oldest month first. The detached tables stay in credit_private until the
-- operator drops them. The table of archived months, the horizon and the refusal of
-- what needs an archived row are in 17_archived.sql; the keys of a month's one-call
-- debits stay in credit_debit_keys (a replay of one is DC132).
--
-- What stays exact: every account's balance, debt and grants (they are state, not sums of
-- the journal), verification from the checkpoint at the horizon (the end of the newest
-- archived month), credit_balance_at from the horizon on, refunds and replays of rows
-- still attached. A refund of an archived row, a replay of an archived one-call debit's key
-- and a balance before the horizon are refused with DC132 (HTTP 410). Archive is an owner
-- operation over a direct database connection: nothing here is granted to an API role.

-- ---------------------------------------------------------------- what a month must hold

create type credit_private.archive_account as (
    account_id bigint,
    transactions bigint,
    amount bigint
);

-- Per account, the journal rows of a month (UTC) and the sum of their amounts, from the
-- checkpoints at its start and end (84_checkpoints.sql), not from the month's partition.
-- A checkpoint is a prefix of seq: the month holds rows opening.last_seq + 1 ..
-- closing.last_seq (closing.balance - opening.balance in amounts), less those created at or
-- after its end (the closing checkpoint's straddlers, in a later partition), plus the
-- opening checkpoint's straddlers (created in the month with a seq before the boundary's).
-- A month without an opening checkpoint starts at seq 0 and balance 0. An account without
-- a closing checkpoint is not listed: archive_month refuses a month with rows of one.
create function credit_private.archive_expectation(p_month timestamptz)
returns setof credit_private.archive_account
language plpgsql
stable
set search_path = ''
as $$
declare
    v_start timestamptz := date_trunc('month', p_month, 'UTC');
    v_end timestamptz := date_trunc('month', p_month, 'UTC') + interval '1 month';
begin
    return query
    select
        c.account_id,
        (c.last_seq - coalesce(o.last_seq, 0) - coalesce(late.n, 0) + coalesce(early.n, 0))
        ::bigint,
        (c.balance - coalesce(o.balance, 0) - coalesce(late.amount, 0)
        + coalesce(early.amount, 0))::bigint
    from public.credit_checkpoints as c
    left join public.credit_checkpoints as o
        on c.account_id = o.account_id and o.period_start = v_start
    -- the closing checkpoint's straddlers of the month's seqs: created at or after its end
    left join lateral (
        select count(*) as n, sum(t.amount) as amount
        from public.credit_transactions as t
        where
            t.account_id = c.account_id
            and t.seq > coalesce(o.last_seq, 0) and t.seq >= c.straddle_seq
            and t.seq <= c.last_seq
            and t.id >= credit_private.uuid_floor(v_end)
    ) as late on c.straddle_seq is not null
    -- the opening checkpoint's straddlers: created in the month
    left join lateral (
        select count(*) as n, sum(t.amount) as amount
        from public.credit_transactions as t
        where
            t.account_id = c.account_id
            and t.seq >= o.straddle_seq and t.seq <= o.last_seq
            and t.id >= credit_private.uuid_floor(v_start)
            and t.id < credit_private.uuid_floor(v_end)
    ) as early on o.straddle_seq is not null
    where c.period_start = v_end
    order by c.account_id;
end;
$$;
revoke all on function credit_private.archive_expectation(timestamptz)
from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- archiving a month

-- The foreign keys of a detached partition (a table of credit_private), dropped.
create function credit_private.drop_foreign_keys(p_table text)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_name text;
begin
    -- a foreign key to a partitioned table has one child per partition it references,
    -- which goes with it
    for v_name in
        select c.conname from pg_catalog.pg_constraint as c
        where
            c.contype = 'f' and c.conparentid = 0
            and c.conrelid = ('credit_private.' || quote_ident(p_table))::regclass
    loop
        execute format('alter table credit_private.%I drop constraint %I', p_table, v_name);
    end loop;
end;
$$;
revoke all on function credit_private.drop_foreign_keys(text)
from public, anon, authenticated, service_role;

-- Whether a month (UTC) can be archived, or the refusal: the month must be the oldest with
-- an attached partition and have no row in a default partition (DC133), and the
-- checkpoints at its end must be taken for every account that has rows in it or an older
-- checkpoint (DC134). `ducto archive` asks before it exports; archive_month under its locks.
create function credit_private.check_archivable(p_month timestamptz)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
    v_start timestamptz;
    v_journal text;
    v_draws text;
    v_oldest timestamptz;
    v_missing bigint;
    v_account_id bigint;
begin
    if p_month is null or not isfinite(p_month)
        or p_month <> date_trunc('month', p_month, 'UTC') then
        perform credit_private.fail(
            'DC006',
            format('month must be the start of a month in UTC, got %s',
                coalesce(p_month::text, 'null')),
            jsonb_build_object('argument', 'month')
        );
    end if;
    v_start := p_month;
    v_journal := format('credit_transactions_p%s', to_char(v_start at time zone 'UTC', 'YYYY_MM'));
    v_draws := format('credit_grant_draws_p%s', to_char(v_start at time zone 'UTC', 'YYYY_MM'));

    -- the oldest month with an attached journal partition
    select min(credit_private.uuid_time(substring(
        pg_catalog.pg_get_expr(c.relpartbound, c.oid) from '\(''([0-9a-f-]+)''\)'
    )::uuid))
    into v_oldest
    from pg_catalog.pg_inherits as i
    inner join pg_catalog.pg_class as c on i.inhrelid = c.oid
    where
        i.inhparent = 'public.credit_transactions'::regclass
        and c.relname <> 'credit_transactions_default';
    if v_oldest is distinct from v_start
        or to_regclass('credit_private.' || v_journal) is null
        or to_regclass('credit_private.' || v_draws) is null then
        perform credit_private.fail(
            'DC133',
            format('%s is not the oldest month with attached partitions (that is %s)',
                to_char(v_start at time zone 'UTC', 'YYYY-MM'),
                coalesce(to_char(v_oldest at time zone 'UTC', 'YYYY-MM'), 'none')),
            jsonb_build_object('month', v_start, 'oldest', v_oldest),
            'archive the months in order, oldest first'
        );
    end if;
    if exists (
        select from credit_private.credit_transactions_default as t
        where t.id < credit_private.uuid_floor(v_start + interval '1 month')
    ) or exists (
        select from credit_private.credit_grant_draws_default as d
        where d.transaction_id < credit_private.uuid_floor(v_start + interval '1 month')
    ) then
        perform credit_private.fail(
            'DC133',
            format('the default partition holds rows of %s or before: move them into their'
                || ' month''s partition first', to_char(v_start at time zone 'UTC', 'YYYY-MM')),
            jsonb_build_object('month', v_start),
            'see docs/operations.md, "Partitions"'
        );
    end if;

    -- the checkpoints at the month's end: every account with rows in it, or with an older
    -- checkpoint, has one (credit_take_checkpoints records exactly those)
    execute format(
        'select count(*), min(u.account_id) from ('
        ' select distinct t.account_id from credit_private.%I as t'
        ' union'
        ' select k.account_id from public.credit_checkpoints as k where k.period_start < $1'
        ') as u'
        ' where not exists (select from public.credit_checkpoints as c'
        ' where c.account_id = u.account_id and c.period_start = $1)',
        v_journal
    ) into v_missing, v_account_id using v_start + interval '1 month';
    if v_missing > 0 then
        perform credit_private.fail(
            'DC134',
            format('the checkpoints at the end of %s are not taken (%s accounts lack one,'
                || ' first %s): take them first, ducto checkpoint --month %s',
                to_char(v_start at time zone 'UTC', 'YYYY-MM'), v_missing, v_account_id,
                to_char((v_start + interval '1 month') at time zone 'UTC', 'YYYY-MM')),
            jsonb_build_object(
                'month', v_start, 'period_start', v_start + interval '1 month',
                'accounts', v_missing, 'account_id', v_account_id
            ),
            'see docs/operations.md, "Archive"'
        );
    end if;
end;
$$;
revoke all on function credit_private.check_archivable(timestamptz)
from public, anon, authenticated, service_role;

-- Detach a closed month's partitions, after checking them: check_archivable (DC006,
-- DC133, DC134), then its journal partition must hold, per account, what
-- archive_expectation says, and in all p_transactions rows with amounts summing to
-- p_amount, and its draws partition p_draws rows when given (DC135): the caller's totals
-- are those of its export. Records the month, then detaches the draws partition and the
-- journal's, and drops the detached tables' foreign keys. The detached tables stay in credit_private for the operator to drop once the
-- export is stored.
create function credit_private.archive_month(
    p_month timestamptz, p_transactions bigint, p_amount bigint, p_draws bigint default null
)
returns credit_private.archived_months
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_start timestamptz := p_month;
    v_journal text;
    v_draws text;
    v_account_id bigint;
    v_mismatches bigint;
    v_result credit_private.archived_months;
    v_attempt integer := 0;
begin
    -- Every lock the archive needs, taken first: the partitions to detach (through their
    -- parents), and the tables their foreign keys point to, whose triggers the detaches
    -- make and the drops of the detached tables' keys remove. No writer waits on the
    -- archive for long, and none deadlocks with it: each try waits at most 100 ms for each
    -- lock (less than the writers' deadlock_timeout, so in a lock cycle the archive gives
    -- way), then lets them go on before the next.
    loop
        begin
            perform set_config('lock_timeout', '100ms', true);
            lock table
            public.credit_accounts, public.credit_transactions, public.credit_grant_draws,
            public.credit_grants, public.credit_reservations
            in access exclusive mode;
            exit;
        exception when lock_not_available then
            v_attempt := v_attempt + 1;
            if v_attempt >= 50 then
                raise;
            end if;
            perform pg_catalog.pg_sleep(0.05 + random() * 0.1);
        end;
    end loop;
    perform set_config('lock_timeout', '0', true);

    perform credit_private.check_archivable(p_month);
    v_journal := format('credit_transactions_p%s', to_char(v_start at time zone 'UTC', 'YYYY_MM'));
    v_draws := format('credit_grant_draws_p%s', to_char(v_start at time zone 'UTC', 'YYYY_MM'));

    -- the partitions against the checkpoints, and against the caller's export
    execute format(
        'with held as ('
        ' select t.account_id, count(*) as transactions, sum(t.amount) as amount'
        ' from credit_private.%I as t group by t.account_id'
        '), expected as ('
        ' select e.account_id, e.transactions, e.amount'
        ' from credit_private.archive_expectation($1) as e'
        ' where e.transactions <> 0 or e.amount <> 0'
        ')'
        ' select count(*), min(coalesce(h.account_id, e.account_id))'
        ' from held as h full join expected as e on h.account_id = e.account_id'
        ' where h.transactions is distinct from e.transactions'
        ' or h.amount is distinct from e.amount',
        v_journal
    ) into v_mismatches, v_account_id using v_start;
    execute format(
        'select count(*), coalesce(sum(t.amount), 0), (select count(*) from credit_private.%I)'
        ' from credit_private.%I as t',
        v_draws, v_journal
    ) into v_result.transactions, v_result.amount, v_result.draws;
    if v_mismatches > 0
        or v_result.transactions is distinct from p_transactions
        or v_result.amount is distinct from p_amount
        or v_result.draws is distinct from coalesce(p_draws, v_result.draws) then
        perform credit_private.fail(
            'DC135',
            format('%s does not add up: its partitions hold %s rows summing to %s and %s'
                || ' draws, the export %s rows summing to %s and %s draws; %s accounts differ'
                || ' from their checkpoints', to_char(v_start at time zone 'UTC', 'YYYY-MM'),
                v_result.transactions, v_result.amount, v_result.draws, p_transactions,
                p_amount, coalesce(p_draws::text, '?'), v_mismatches),
            jsonb_build_object(
                'month', v_start,
                'transactions', v_result.transactions, 'amount', v_result.amount,
                'draws', v_result.draws, 'export_transactions', p_transactions,
                'export_amount', p_amount, 'export_draws', p_draws,
                'accounts', v_mismatches, 'account_id', v_account_id
            ),
            'nothing was detached; export the month again'
        );
    end if;

    insert into credit_private.archived_months (month, transactions, amount, draws, archived_at)
    values (
        v_start, v_result.transactions, v_result.amount, v_result.draws,
        pg_catalog.clock_timestamp()
    )
    returning * into v_result;

    -- the draws first: the journal partition leaves once no row refers to it. A detached
    -- table keeps copies of its foreign keys: dropped, so it can be dropped on its own.
    execute format(
        'alter table public.credit_grant_draws detach partition credit_private.%I', v_draws
    );
    perform credit_private.drop_foreign_keys(v_draws);
    execute format(
        'alter table public.credit_transactions detach partition credit_private.%I', v_journal
    );
    perform credit_private.drop_foreign_keys(v_journal);
    return v_result;
end;
$$;
revoke all on function credit_private.archive_month(timestamptz, bigint, bigint, bigint)
from public, anon, authenticated, service_role;
