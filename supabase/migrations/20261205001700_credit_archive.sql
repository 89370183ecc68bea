-- ducto: archiving closed months (docs/operations.md, "Archive").
--
--   * No foreign key into the journal from tables that outlive a month (the partitioned
--     journal of 20261205001600 was made without them): refund_of (the journal's own), and
--     transaction_id of credit_grants, credit_reservations, credit_topup_requests,
--     credit_stripe_payments, credit_stripe_clawbacks and credit_stripe_invoices. The RPCs
--     write each in the same transaction as its row; a partition still referenced could
--     never be detached. The draws keep theirs: they leave with their month. The comments
--     of those tables say so.
--   * credit_private.archived_months; archive_expectation (a month's rows
--     per account, from the checkpoints) and archive_month (checks, records, detaches),
--     for the owner only (`ducto archive`).
--   * DC132 (HTTP 410): a refund of an archived row, a replay of an archived one-call
--     debit's key, a balance before the archive horizon. DC133-DC135: an archive refused.
--   * credit_verify_ledger checks from the checkpoints at the horizon once months are
--     archived (a p_since before it counts as the horizon).
--   * credit_private.emit_expiring_grants writes one sweep at a time (two at once could
--     deadlock with the charges between them).

-- ---------------------------------------------------------------- foreign keys into the journal

comment on table public.credit_transactions is
'The journal. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE. Partitioned by'
' month of id (the time it carries is created_at). refund_of names a row written before it'
' by credit_refund_transaction, which reads it under the account lock; no foreign key, so'
' a closed month can leave the database (ducto archive).';

comment on table public.credit_grants is
'Buckets of credits. Spending draws by priority (lower first), then soonest expiry, then oldest.'
' A grant is never spent at or after expires_at. transaction_id is its journal row, written'
' in the same transaction; no foreign key, so an archived month''s rows can leave.';

comment on table public.credit_reservations is
'Holds. An active hold counts against available credits until expires_at; the sweep marks'
' timed-out holds expired. transaction_id is the capture row, written in the same'
' transaction as the settle; no foreign key, so an archived month''s rows can leave.';

comment on table public.credit_topup_requests is
'Auto top-up payments, one per attempt; id is the Stripe idempotency key and the'
' PaymentIntent''s metadata.ducto_topup_request_id. transaction_id is the purchase row,'
' written in the same transaction; no foreign key, so an archived month''s rows can leave.';

comment on table public.credit_stripe_payments is
'A credit purchase paid through Stripe, by its payment intent (refunds and disputes name it).'
' Its credits are clawed back in proportion to the money refunded or withdrawn.'
' transaction_id is the purchase row, written in the same transaction; no foreign key, so an'
' archived month''s rows can leave.';

comment on table public.credit_stripe_clawbacks is
'The void rows that clawed back a payment''s credits; a reinstatement refunds them. Each'
' is written in the same transaction as its row; no foreign key to the journal, so an'
' archived month''s rows can leave.';

comment on table public.credit_stripe_invoices is
'Each paid invoice that granted an allowance: one grant per invoice. transaction_id is its'
' grant''s row, written in the same transaction; no foreign key, so an archived month''s'
' rows can leave.';


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

-- ---------------------------------------------------------------- the ledger around the archive

-- a refund's key by itself: its replay when the refunded charge was archived, whose row
-- no longer says the account (55_refunds.sql)
create index credit_idempotency_keys_refund_idx
on public.credit_idempotency_keys (idempotency_key) where operation = 'refund_transaction';


create or replace function credit_private.fail(
    p_code text, p_message text, p_detail jsonb default null, p_hint text default null
)
returns void
language plpgsql
-- Functions that raise are volatile: the planner folds an immutable call with constant
-- arguments while planning, which would raise where the call is never reached.
volatile
set search_path = ''
as $$
begin
    -- detail is JSON so every client can read the numbers without parsing the message.
    -- Through PostgREST (it sets request.method for each request) the answer's HTTP status
    -- says what kind of refusal it is and the body keeps ducto's code (PostgREST 12 takes
    -- the body from a PGRST error's message, and wants details as text). Elsewhere (psql,
    -- psycopg, pgTAP) the SQLSTATE is ducto's code itself.
    if coalesce(current_setting('request.method', true), '') <> '' then
        raise sqlstate 'PGRST' using
            message = jsonb_build_object(
                'code', p_code,
                'message', p_message,
                'details', coalesce(p_detail, '{}')::text,
                'hint', p_hint
            )::text,
            -- PostgREST wants both keys of the detail
            detail = jsonb_build_object('status', case
                -- the request is valid, the account cannot pay it
                when p_code in ('DC010', 'DC083', 'DC084', 'DC085', 'DC087') then 402
                -- too many holds at once: a rate of work, not a lack of credits
                when p_code = 'DC086' then 429
                when p_code = 'DC082' then 403
                when p_code in (
                    'DC030', 'DC031', 'DC064', 'DC080', 'DC081', 'DC110', 'DC120', 'DC122'
                ) then 404
                -- it conflicts with the ledger's state (a used key, a settled hold, a
                -- checkpoint not yet possible, ...)
                when p_code in (
                    'DC020', 'DC040', 'DC041', 'DC050', 'DC051', 'DC063', 'DC111', 'DC121',
                    'DC130', 'DC131', 'DC133', 'DC134', 'DC135'
                ) then 409
                -- the row it needs was archived: gone from the database, for good
                when p_code = 'DC132' then 410
                -- an argument refused (DC001-DC008, DC042, DC06x): nothing was written
                else 422
            end, 'headers', '{}'::jsonb)::text;
    end if;
    if p_hint is null then
        raise exception using
            errcode = p_code, message = p_message, detail = coalesce(p_detail, '{}')::text;
    end if;
    raise exception using
        errcode = p_code, message = p_message, detail = coalesce(p_detail, '{}')::text,
        hint = p_hint;
end;
$$;
revoke all on function credit_private.fail(text, text, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function credit_private.fail(
    text, text, jsonb, text
) to authenticated, service_role;


create or replace function credit_private.find_replay(
    p_account_id bigint, p_key text, p_operation text, p_request jsonb
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
    v_transaction_id uuid;
    v_operation text;
    v_result jsonb;
    v_same boolean;
begin
    if p_key is null or p_account_id is null then
        return null;
    end if;
    -- one probe of each key table (a key is in at most one of them). The journal is read
    -- only for a key found there: a statement that may read the partitioned journal locks
    -- every partition (and index) of it, even when it reads none.
    select
        k.transaction_id,
        k.operation,
        k.request_hash = credit_private.request_hash(p_operation, p_request)
    into v_transaction_id, v_operation, v_same
    from public.credit_debit_keys as k
    where k.account_id = p_account_id and k.idempotency_key = p_key;
    if found then
        select jsonb_build_object(
            'transaction_id', t.id,
            'user_id', t.user_id,
            'amount', -t.amount,
            'overage', 0,
            'balance_after', t.balance_after,
            'available_after', t.available_after,
            'created_at', t.created_at,
            'is_replay', false,
            'pricing_version', t.pricing_version
        )
        into v_result
        from public.credit_transactions as t
        where t.id = v_transaction_id and t.account_id = p_account_id;
        if v_result is null and v_same then
            -- the row that would rebuild the result is in an archived month (88_archive.sql)
            perform credit_private.fail_archived(
                format('the result of idempotency key %s',
                    quote_literal(split_part(p_key, chr(31), -1))),
                date_trunc('month', credit_private.uuid_time(v_transaction_id), 'UTC'),
                jsonb_build_object(
                    'idempotency_key', split_part(p_key, chr(31), -1),
                    'transaction_id', v_transaction_id
                )
            );
        end if;
    else
        select k.operation, k.operation = p_operation and k.request = p_request, k.result
        into v_operation, v_same, v_result
        from public.credit_idempotency_keys as k
        where k.account_id = p_account_id and k.idempotency_key = p_key;
    end if;
    if v_operation is null then
        return null;
    end if;
    if not v_same then
        -- the detail names the caller's own request, never the first one: that may be
        -- another caller's; and the caller's key as given, without a member's scope
        perform credit_private.fail(
            'DC020',
            format('idempotency key %s was already used for %s with other parameters',
                quote_literal(split_part(p_key, chr(31), -1)), v_operation),
            jsonb_build_object(
                'idempotency_key', split_part(p_key, chr(31), -1),
                'operation', v_operation,
                'request', p_request
            ),
            'use a new idempotency key for a different operation'
        );
    end if;
    return v_result;
end;
$$;
revoke all on function credit_private.find_replay(bigint, text, text, jsonb)
from public, anon, authenticated, service_role;


create or replace function public.credit_refund_transaction(
    p_transaction_id uuid,
    p_amount numeric default null,
    p_reason text default null,
    p_metadata jsonb default '{}',
    p_idempotency_key text default null
)
returns public.credit_refund_result
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_now timestamptz := credit_private.clock();
    v_requested bigint;
    v_metadata jsonb := credit_private.check_metadata(p_metadata);
    v_original public.credit_transactions;
    v_archived timestamptz;
    v_request jsonb;
    v_account public.credit_accounts;
    v_replay jsonb;
    v_refunded bigint;
    v_amount bigint;
    v_transaction_id uuid;
    v_balance_after bigint;
    v_result public.credit_refund_result;
begin
    if p_amount is not null then
        v_requested := credit_private.whole(p_amount, 'amount', 1);
    end if;
    perform credit_private.check_key(p_idempotency_key);
    if length(p_reason) > 1000 then
        perform credit_private.fail(
            'DC006', 'reason must be at most 1000 characters',
            jsonb_build_object('argument', 'reason')
        );
    end if;

    select * into v_original
    from public.credit_transactions
    where id = p_transaction_id;
    if not found then
        -- an id a row had before 0.7.0 gave it one that carries its month
        select t.* into v_original
        from credit_private.legacy_transaction_ids as m
        inner join public.credit_transactions as t on m.id = t.id and m.account_id = t.account_id
        where m.legacy_id = p_transaction_id;
    end if;
    if not found then
        -- a row of an archived month (88_archive.sql), or an old id of one
        v_archived := credit_private.archived_month_of(coalesce(
            (select m.id from credit_private.legacy_transaction_ids as m
            where m.legacy_id = p_transaction_id limit 1),
            p_transaction_id
        ));
        if v_archived is not null and p_idempotency_key is not null then
            -- a refund's key replays forever: its result is stored whole, and its request
            -- names the charge (the account is not known without the charge's row)
            select k.request, k.result into v_request, v_replay
            from public.credit_idempotency_keys as k
            where
                k.operation = 'refund_transaction' and k.idempotency_key = p_idempotency_key
                and k.request ->> 'transaction_id' = p_transaction_id::text;
            if found and v_request = jsonb_build_object(
                'transaction_id', p_transaction_id, 'amount', v_requested, 'reason', p_reason,
                'metadata', v_metadata
            ) then
                v_result := jsonb_populate_record(null::public.credit_refund_result, v_replay);
                v_result.is_replay := true;
                return v_result;
            end if;
        end if;
        if v_archived is not null then
            perform credit_private.fail_archived(
                format('transaction %s', p_transaction_id), v_archived,
                jsonb_build_object('transaction_id', p_transaction_id)
            );
        end if;
        perform credit_private.fail(
            'DC030', format('transaction %s does not exist', coalesce(p_transaction_id::text, 'null')),
            jsonb_build_object('transaction_id', p_transaction_id)
        );
    end if;
    v_request := jsonb_build_object(
        'transaction_id', p_transaction_id, 'amount', v_requested, 'reason', p_reason,
        'metadata', v_metadata
    );
    v_account := credit_private.lock_account_by_id(v_original.account_id);
    v_replay := credit_private.find_replay(
        v_account.id, p_idempotency_key, 'refund_transaction', v_request
    );
    if v_replay is not null then
        v_result := jsonb_populate_record(null::public.credit_refund_result, v_replay);
        v_result.is_replay := true;
        return v_result;
    end if;

    if v_original.type not in ('usage', 'fixed_job', 'capture') then
        perform credit_private.fail(
            'DC051',
            format('transaction %s is of type %s; only usage, fixed_job and capture transactions'
                || ' can be refunded', p_transaction_id, v_original.type),
            jsonb_build_object('transaction_id', p_transaction_id, 'type', v_original.type)
        );
    end if;
    -- under the account lock, so concurrent refunds of one transaction see each other
    select coalesce(sum(t.amount), 0)::bigint into v_refunded
    from public.credit_transactions as t
    where t.refund_of = v_original.id;
    if v_refunded = -v_original.amount then
        perform credit_private.fail(
            'DC050',
            format('transaction %s is already fully refunded (charged %s, refunded %s)',
                p_transaction_id, -v_original.amount, v_refunded),
            jsonb_build_object(
                'transaction_id', p_transaction_id,
                'refundable', 0,
                'charged', -v_original.amount,
                'refunded', v_refunded
            )
        );
    end if;
    v_amount := coalesce(v_requested, -v_original.amount - v_refunded);
    if v_amount > -v_original.amount - v_refunded then
        perform credit_private.fail(
            'DC050',
            format('refund of %s exceeds what is refundable of transaction %s: %s'
                || ' (charged %s, refunded %s)', v_amount, p_transaction_id,
                -v_original.amount - v_refunded, -v_original.amount, v_refunded),
            jsonb_build_object(
                'transaction_id', p_transaction_id,
                'requested', v_amount,
                'refundable', -v_original.amount - v_refunded,
                'charged', -v_original.amount,
                'refunded', v_refunded
            )
        );
    end if;

    perform credit_private.expire_grants(v_account.id, v_now);
    v_transaction_id := (credit_private.append_transaction(
        v_account.id, 'refund', v_amount, v_now,
        v_metadata || jsonb_strip_nulls(jsonb_build_object('reason', p_reason)),
        p_idempotency_key, p_refund_of => v_original.id,
        -- a refund is attributed to whoever the refunded row was, so a member's net spend
        -- (their limit, spend_by_user) counts refunds of their debits
        p_attributed_user_id => v_original.attributed_user_id
    )).id;
    perform credit_private.restore(v_account.id, v_transaction_id, v_original.id, v_amount, v_now);
    perform credit_private.emit(v_account.id, v_account.user_id, 'charge.refunded',
        jsonb_build_object('transaction_id', p_transaction_id,
            'refund_transaction_id', v_transaction_id, 'amount', v_amount, 'reason', p_reason));
    -- credits given back to a grant that has expired since expire at once
    perform credit_private.expire_grants(v_account.id, v_now);
    select a.balance into v_balance_after
    from public.credit_accounts as a
    where a.id = v_account.id;

    v_result := row(
        v_transaction_id, p_transaction_id, v_account.user_id, v_amount,
        v_refunded + v_amount, -v_original.amount - v_refunded - v_amount, v_balance_after,
        v_now, false
    );
    perform credit_private.remember(
        v_account.id, p_idempotency_key, 'refund_transaction', v_request, to_jsonb(v_result),
        v_now
    );
    return v_result;
end;
$$;
revoke all on function public.credit_refund_transaction(uuid, numeric, text, jsonb, text)
from public, anon, authenticated, service_role;
grant execute on function public.credit_refund_transaction(
    uuid, numeric, text, jsonb, text
) to service_role;


create or replace function public.credit_balance_at(
    p_user_id text default null, p_at timestamptz default null
)
returns public.credit_balance_at_result
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
    -- no user id: a signed-in user's own
    v_user_id text := credit_private.reader_id(p_user_id, 'statement');
    v_result public.credit_balance_at_result;
    v_account_id bigint;
    v_checkpoint public.credit_checkpoints;
    v_until bigint;
    v_horizon timestamptz;
begin
    if p_at is null or not isfinite(p_at) then
        perform credit_private.fail(
            'DC006',
            format('at must be a finite time, got %s', coalesce(p_at::text, 'null')),
            jsonb_build_object('argument', 'at')
        );
    end if;
    -- before the archive horizon the journal no longer holds every row (88_archive.sql)
    v_horizon := credit_private.archive_horizon();
    if p_at < v_horizon then
        perform credit_private.fail_archived(
            format('the balance at %s', p_at), v_horizon - interval '1 month',
            jsonb_build_object('at', p_at, 'horizon', v_horizon)
        );
    end if;
    select a.id into v_account_id from public.credit_accounts as a where a.user_id = v_user_id;
    -- the newest checkpoint at or before p_at (84_checkpoints.sql), and the next one's seq
    select k.* into v_checkpoint
    from public.credit_checkpoints as k
    where k.account_id = v_account_id and k.period_start <= p_at
    order by k.period_start desc
    limit 1;
    if v_checkpoint.account_id is null then
        -- a sum, not the newest row's balance_after: rows of concurrent operations commit in
        -- seq order but may carry created_at out of that order
        select v_user_id, p_at, coalesce(sum(t.amount), 0)::bigint
        into v_result
        from public.credit_transactions as t
        where t.user_id = v_user_id and t.created_at <= p_at;
        return v_result;
    end if;
    -- rows after the next checkpoint's last_seq were created after its boundary, so after p_at
    select k.last_seq into v_until
    from public.credit_checkpoints as k
    where k.account_id = v_account_id and k.period_start > p_at
    order by k.period_start
    limit 1;
    -- the checkpoint's balance, less its rows created after p_at (only straddlers can be),
    -- plus the month's rows after it created at or before p_at
    select v_user_id, p_at, (v_checkpoint.balance + coalesce(sum(
        case when t.seq <= v_checkpoint.last_seq then -t.amount else t.amount end
    ), 0))::bigint
    into v_result
    from public.credit_transactions as t
    where
        t.account_id = v_account_id
        and t.seq >= coalesce(v_checkpoint.straddle_seq, v_checkpoint.last_seq + 1)
        and t.seq <= coalesce(v_until, 9223372036854775807)
        and (
            (t.seq <= v_checkpoint.last_seq and t.created_at > p_at)
            or (t.seq > v_checkpoint.last_seq and t.created_at <= p_at)
        );
    return v_result;
end;
$$;
revoke all on function public.credit_balance_at(text, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_balance_at(text, timestamptz)
to authenticated, service_role;

-- The sum of a user's journal rows created before p_at, from the newest checkpoint at or
-- before it (84_checkpoints.sql): its balance, less its rows created at or after p_at (only
-- straddlers can be), plus the later rows created before p_at. Once months are archived,
-- for p_at at or after the horizon, every row it reads is attached.
create function credit_private.balance_before(p_user_id text, p_at timestamptz)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
declare
    v_account_id bigint;
    v_checkpoint public.credit_checkpoints;
begin
    select a.id into v_account_id from public.credit_accounts as a where a.user_id = p_user_id;
    select k.* into v_checkpoint
    from public.credit_checkpoints as k
    where k.account_id = v_account_id and k.period_start <= p_at
    order by k.period_start desc
    limit 1;
    return (
        select (coalesce(v_checkpoint.balance, 0) + coalesce(sum(
            case when t.seq <= v_checkpoint.last_seq then -t.amount else t.amount end
        ), 0))::bigint
        from public.credit_transactions as t
        where
            t.account_id = v_account_id
            and t.seq >= coalesce(v_checkpoint.straddle_seq, v_checkpoint.last_seq + 1, 1)
            and (
                (t.seq <= v_checkpoint.last_seq and t.created_at >= p_at)
                or (t.seq > coalesce(v_checkpoint.last_seq, 0) and t.created_at < p_at)
            )
    );
end;
$$;
revoke all on function credit_private.balance_before(text, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function credit_private.balance_before(text, timestamptz)
to authenticated, service_role;

create or replace function public.credit_statement(
    p_user_id text default null, p_start timestamptz default null, p_end timestamptz default null
)
returns public.credit_statement_result
language plpgsql
stable
security invoker
set search_path = ''
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
declare
    -- no user id: a signed-in user's own
    v_user_id text := credit_private.reader_id(p_user_id, 'statement');
    v_result public.credit_statement_result;
    v_horizon timestamptz;
begin
    perform credit_private.check_window(p_start, p_end);
    v_result.user_id := v_user_id;
    v_result.period_start := p_start;
    v_result.period_end := p_end;

    v_horizon := credit_private.archive_horizon();
    if v_horizon is null then
        -- both balances in one pass over the account's journal before p_end
        select
            coalesce(sum(t.amount) filter (where t.created_at < p_start), 0)::bigint,
            coalesce(sum(t.amount), 0)::bigint
        into v_result.opening_balance, v_result.closing_balance
        from public.credit_transactions as t
        where t.user_id = v_user_id and t.created_at < p_end;
    else
        -- months are archived (88_archive.sql): the balances from the checkpoints, and no
        -- window that starts before the horizon
        if p_start < v_horizon then
            perform credit_private.fail_archived(
                format('the statement from %s', p_start), v_horizon - interval '1 month',
                jsonb_build_object('start', p_start, 'horizon', v_horizon)
            );
        end if;
        v_result.opening_balance := credit_private.balance_before(v_user_id, p_start);
        v_result.closing_balance := credit_private.balance_before(v_user_id, p_end);
    end if;

    select coalesce(jsonb_agg(jsonb_build_object(
        'type', s.type, 'count', s.n, 'amount', s.amount
    ) order by s.type), '[]')
    into v_result.by_type
    from (
        select t.type, count(*) as n, sum(t.amount) as amount
        from public.credit_transactions as t
        where t.user_id = v_user_id and t.created_at >= p_start and t.created_at < p_end
        group by t.type
    ) as s;

    -- a refund has no model of its own: it counts for the charge it refunds
    select coalesce(jsonb_agg(jsonb_build_object(
        'model', s.model, 'count', s.n, 'amount', s.amount
    ) order by s.model), '[]')
    into v_result.by_model
    from (
        select coalesce(t.model, o.model) as model, count(*) as n, sum(t.amount) as amount
        from public.credit_transactions as t
        left join public.credit_transactions as o on t.refund_of = o.id
        where
            t.user_id = v_user_id and t.created_at >= p_start and t.created_at < p_end
            and coalesce(t.model, o.model) is not null
        group by 1
    ) as s;

    -- the journal rows that created a grant, by the grant's category
    select coalesce(jsonb_agg(jsonb_build_object(
        'category', s.category, 'count', s.n, 'amount', s.amount
    ) order by s.category), '[]')
    into v_result.by_category
    from (
        select g.category, count(*) as n, sum(t.amount) as amount
        from public.credit_transactions as t
        inner join public.credit_grants as g on t.id = g.transaction_id
        where t.user_id = v_user_id and t.created_at >= p_start and t.created_at < p_end
        group by g.category
    ) as s;

    -- what is left now of the grants that lapse in the 30 days after the window
    select
        coalesce(jsonb_agg(jsonb_build_object(
            'grant_id', g.id, 'category', g.category, 'remaining', g.remaining,
            'expires_at', g.expires_at
        ) order by g.expires_at, g.id), '[]'),
        coalesce(sum(g.remaining), 0)::bigint
    into v_result.expiring, v_result.expiring_total
    from public.credit_grants as g
    where
        g.account_id = (select a.id from public.credit_accounts as a where a.user_id = v_user_id)
        and g.spendable
        and g.expires_at > p_end and g.expires_at <= p_end + interval '30 days';
    return v_result;
end;
$$;
revoke all on function public.credit_statement(text, timestamptz, timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_statement(text, timestamptz, timestamptz)
to authenticated, service_role;

create or replace function credit_private.verify_since(p_since timestamptz)
returns setof public.credit_ledger_issue
language sql
stable
set search_path = ''
-- the planner cannot know how few rows follow each checkpoint; compiling the one query
-- (JIT) would cost more than running it
set jit = off
as $$
    -- credit_verify_ledger's invariants, each account from its newest checkpoint at or
    -- before p_since (an account without one from its first row, which is the full check):
    -- the same issue rows, read from the rows after the checkpoint and what they point to
    with start as (
        select
            a.id as account_id,
            a.user_id,
            a.balance,
            a.debt,
            a.version,
            c.period_start as checkpoint,
            coalesce(c.last_seq, 0) as last_seq,
            coalesce(c.balance, 0) as opening,
            coalesce(c.debt, 0) as opening_debt
        from public.credit_accounts as a
        left join lateral (
            select k.period_start, k.last_seq, k.balance, k.debt
            from public.credit_checkpoints as k
            where k.account_id = a.id and k.period_start <= p_since
            order by k.period_start desc
            limit 1
        ) as c on true
    ),

    -- the rows after each checkpoint: one range of the (account_id, seq) key per account
    recent as materialized (
        select
            t.id, t.account_id, t.user_id, t.seq, t.type, t.amount, t.balance_after,
            t.refund_of, t.reservation_id, t.usage, t.job_name, t.metadata
        from start as s
        cross join lateral (
            select
                x.id, x.account_id, x.user_id, x.seq, x.type, x.amount, x.balance_after,
                x.refund_of, x.reservation_id, x.usage, x.job_name, x.metadata
            from public.credit_transactions as x
            where x.account_id = s.account_id and x.seq > s.last_seq
            -- offset 0: kept a subquery, so each account reads its range of the key
            offset 0
        ) as t
    ),

    recent_draws as materialized (
        select d.account_id, d.transaction_id, d.grant_id, d.amount
        from recent as r
        cross join lateral (
            select x.account_id, x.transaction_id, x.grant_id, x.amount
            from public.credit_grant_draws as x
            where x.transaction_id = r.id and x.account_id = r.account_id
            offset 0
        ) as d
    ),

    -- what each grant gave since the checkpoint
    drawn as (
        select d.account_id, d.grant_id, sum(d.amount) as amount
        from recent_draws as d
        where d.grant_id is not null
        group by d.account_id, d.grant_id
    ),

    journal as (
        select
            s.account_id,
            s.opening + coalesce(sum(r.amount), 0) as total,
            s.last_seq + count(r.id) as n,
            coalesce(max(r.seq), nullif(s.last_seq, 0)) as last_seq
        from start as s
        left join recent as r on s.account_id = r.account_id
        group by s.account_id, s.opening, s.last_seq
    ),

    -- the grants whose remaining the window can tell: listed at the checkpoint, created or
    -- drawn on since, or with credits now (a grant in none of these had nothing left then
    -- and has nothing now)
    touched as (
        select k.account_id, k.grant_id
        from start as s
        inner join public.credit_checkpoint_grants as k
            on s.account_id = k.account_id and s.checkpoint = k.period_start
        union
        select d.account_id, d.grant_id
        from recent_draws as d
        where d.grant_id is not null
        union
        select g.account_id, g.id
        from recent as r
        cross join lateral (
            select x.account_id, x.id from public.credit_grants as x
            where x.transaction_id = r.id and x.account_id = r.account_id
            offset 0
        ) as g
        union
        select g.account_id, g.id
        from start as s
        cross join lateral (
            select x.account_id, x.id from public.credit_grants as x
            where x.account_id = s.account_id and x.spendable
            offset 0
        ) as g
    ),

    grant_check as materialized (
        select
            g.account_id,
            g.user_id,
            g.id,
            g.remaining,
            g.scope,
            -- at the checkpoint: what it listed, the whole amount for a grant created
            -- since, else nothing
            case
                when k.grant_id is not null then k.remaining
                when o.seq > s.last_seq then g.amount
                else 0
            end - coalesce(w.amount, 0) as expected
        from touched as u
        inner join start as s on u.account_id = s.account_id
        inner join public.credit_grants as g on u.account_id = g.account_id and u.grant_id = g.id
        left join public.credit_checkpoint_grants as k
            on
                s.account_id = k.account_id and s.checkpoint = k.period_start
                and g.id = k.grant_id
        left join public.credit_transactions as o
            on g.account_id = o.account_id and g.transaction_id = o.id
        left join drawn as w on g.account_id = w.account_id and g.id = w.grant_id
    ),

    -- the charges refunded since the checkpoint (a refund comes after its charge, so a
    -- charge since the checkpoint has its refunds in the window too)
    refunded as (
        select distinct r.account_id, r.refund_of as id
        from recent as r
        where r.refund_of is not null
    ),

    -- per charge and source: what it drew, less what its refunds gave back
    refund_moves as (
        select r.account_id, coalesce(r.refund_of, r.id) as original, d.grant_id, d.amount
        from recent as r
        inner join recent_draws as d on r.account_id = d.account_id and r.id = d.transaction_id
        where r.type in ('usage', 'fixed_job', 'capture', 'void', 'refund')
        union all
        select r.account_id, r.refund_of, null, -g.amount
        from recent as r
        cross join lateral (
            select x.amount from public.credit_grants as x
            where x.transaction_id = r.id and x.account_id = r.account_id
            offset 0
        ) as g
        where r.type = 'refund'
        -- a charge from before the checkpoint refunded since: its own draws, and those of
        -- its refunds before the checkpoint, read by their keys
        union all
        select o.account_id, o.id, d.grant_id, d.amount
        from refunded as o
        inner join start as s on o.account_id = s.account_id
        cross join lateral (
            select x.id from public.credit_transactions as x
            where
                x.id = o.id and x.account_id = o.account_id and x.seq <= s.last_seq
                and x.type in ('usage', 'fixed_job', 'capture', 'void')
            union all
            select x.id from public.credit_transactions as x
            where x.refund_of = o.id and x.account_id = o.account_id and x.seq <= s.last_seq
        ) as m
        cross join lateral (
            select x.grant_id, x.amount from public.credit_grant_draws as x
            where x.transaction_id = m.id and x.account_id = o.account_id
            offset 0
        ) as d
        union all
        select o.account_id, o.id, null, -g.amount
        from refunded as o
        inner join start as s on o.account_id = s.account_id
        inner join public.credit_transactions as r
            on o.account_id = r.account_id and o.id = r.refund_of and r.seq <= s.last_seq
        inner join public.credit_grants as g
            on r.account_id = g.account_id and r.id = g.transaction_id
    )

    select s.account_id, s.user_id, 'balance = sum of journal', j.total::text, s.balance::text
    from start as s
    inner join journal as j on s.account_id = j.account_id
    where s.balance <> j.total

    union all
    select s.account_id, s.user_id, 'journal seq is 1..version', s.version::text,
        format('%s rows, last seq %s', j.n, j.last_seq)
    from start as s
    inner join journal as j on s.account_id = j.account_id
    where j.n <> s.version or coalesce(j.last_seq, 0) <> s.version

    union all
    select c.account_id, null, 'balance_after chain at seq ' || c.seq, c.expected::text,
        c.balance_after::text
    from (
        select
            r.account_id,
            r.seq,
            r.balance_after,
            coalesce(lag(r.balance_after) over w, s.opening) + r.amount as expected
        from recent as r
        inner join start as s on r.account_id = s.account_id
        window w as (partition by r.account_id order by r.seq)
    ) as c
    where c.balance_after <> c.expected

    union all
    select s.account_id, s.user_id, 'balance = grants remaining - debt',
        (coalesce(g.remaining, 0) - s.debt)::text, s.balance::text
    from start as s
    left join lateral (
        select sum(x.remaining) as remaining from public.credit_grants as x
        where x.account_id = s.account_id and x.spendable
    ) as g on true
    where s.balance <> coalesce(g.remaining, 0) - s.debt

    union all
    select s.account_id, s.user_id, 'debt = sum of debt draws',
        (s.opening_debt + coalesce(d.debt, 0))::text, s.debt::text
    from start as s
    left join (
        select x.account_id, sum(x.amount) as debt from recent_draws as x
        where x.grant_id is null
        group by x.account_id
    ) as d on s.account_id = d.account_id
    where s.debt <> s.opening_debt + coalesce(d.debt, 0)

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' remaining = amount - draws',
        g.expected::text, g.remaining::text
    from grant_check as g
    where g.remaining <> g.expected

    union all
    select r.account_id, r.user_id, 'transaction ' || r.id || ' amount = its draws',
        (-r.amount)::text, coalesce(sum(d.amount), 0)::text
    from recent as r
    left join recent_draws as d on r.account_id = d.account_id and r.id = d.transaction_id
    where r.type in ('usage', 'fixed_job', 'capture', 'expiry', 'void')
    group by r.id, r.account_id, r.user_id, r.amount
    having -r.amount <> coalesce(sum(d.amount), 0)

    union all
    select t.account_id, t.user_id,
        'refunds of ' || t.id || ' gave back at most what it drew from each source',
        '>= 0', m.amount::text
    from (
        select x.account_id, x.original, sum(x.amount) as amount
        from refund_moves as x
        group by x.account_id, x.original, x.grant_id
        having sum(x.amount) < 0
    ) as m
    inner join public.credit_transactions as t
        on m.account_id = t.account_id and m.original = t.id

    union all
    select o.account_id, o.user_id, 'refunds of ' || o.id || ' <= charged',
        (-o.amount)::text, sum(r.amount)::text
    from refunded as x
    inner join public.credit_transactions as o on x.account_id = o.account_id and x.id = o.id
    inner join public.credit_transactions as r
        on o.account_id = r.account_id and o.id = r.refund_of
    group by o.id, o.account_id
    having sum(r.amount) > -o.amount

    union all
    select v.account_id, v.user_id, 'reservation ' || v.id || ' settled = its capture',
        v.settled_amount::text, coalesce(-t.amount, 0)::text
    from recent as c
    inner join public.credit_reservations as v
        on c.account_id = v.account_id and c.reservation_id = v.id
    left join public.credit_transactions as t
        on v.account_id = t.account_id and v.transaction_id = t.id
    where v.status = 'settled' and v.settled_amount <> coalesce(-t.amount, 0)

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' scope sorted and distinct',
        (select array_agg(distinct s order by s) from unnest(g.scope) as s)::text,
        g.scope::text
    from grant_check as g
    where
        g.scope is not null
        and g.scope is distinct from (
            select array_agg(distinct s order by s) from unnest(g.scope) as s
        )

    union all
    select r.account_id, r.user_id,
        'grant ' || g.id || ' paid only within its scope', g.scope::text,
        format('transaction %s (%s)', r.id, r.type)
    from recent_draws as d
    inner join recent as r on d.account_id = r.account_id and d.transaction_id = r.id
    -- every grant drawn on since is in grant_check
    inner join grant_check as g on d.account_id = g.account_id and d.grant_id = g.id
    where
        g.scope is not null
        and d.amount > 0
        and r.type <> 'expiry'
        and not (
            r.type in ('usage', 'fixed_job', 'capture')
            and credit_private.scope_covers(g.scope, r.usage, r.job_name, r.metadata)
        )

    -- a refund's charge and a grant's row exist, attached or in an archived month (no
    -- foreign key says so: 88_archive.sql)
    union all
    select r.account_id, r.user_id, 'refund ' || r.id || ' names a journal row',
        r.refund_of::text, 'none'
    from recent as r
    where
        r.refund_of is not null
        and not exists (
            select from public.credit_transactions as o
            where o.account_id = r.account_id and o.id = r.refund_of
        )
        and credit_private.archived_month_of(r.refund_of) is null

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' has its journal row',
        g.transaction_id::text, 'none'
    from grant_check as c
    inner join public.credit_grants as g on c.account_id = g.account_id and c.id = g.id
    where
        not exists (
            select from public.credit_transactions as o
            where o.account_id = g.account_id and o.id = g.transaction_id
        )
        and credit_private.archived_month_of(g.transaction_id) is null;
$$;
revoke all on function credit_private.verify_since(timestamptz)
from public, anon, authenticated, service_role;
-- credit_verify_ledger is security invoker and granted to the service role
grant execute on function credit_private.verify_since(timestamptz) to service_role;

create or replace function public.credit_verify_ledger(p_since timestamptz default null)
returns setof public.credit_ledger_issue
language plpgsql
stable
security invoker
set search_path = ''
-- a plan over every month's partition of the journal is long: compiling it (JIT)
-- would cost more than running it
set jit = off
as $$
declare
    v_horizon timestamptz := credit_private.archive_horizon();
begin
    -- every row is a broken invariant; an empty answer means the ledger is consistent.
    -- p_since: each account from its newest checkpoint at or before it (84_checkpoints.sql);
    -- with no checkpoint that old, the full check reads every row in fewer steps. Once
    -- months are archived (88_archive.sql) the journal starts at the horizon: the full
    -- check, and a p_since before it, check from the checkpoints at the horizon
    if v_horizon is not null and (p_since is null or p_since < v_horizon) then
        return query select * from credit_private.verify_since(v_horizon);
        return;
    end if;
    if p_since is not null
        and exists (select from public.credit_checkpoints as k where k.period_start <= p_since) then
        return query select * from credit_private.verify_since(p_since);
        return;
    end if;
    return query
    with journal as (
        select
            t.account_id,
            sum(t.amount) as total,
            count(*) as n,
            max(t.seq) as last_seq
        from public.credit_transactions as t
        group by t.account_id
    ),

    grants as (
        select g.account_id, sum(g.remaining) as remaining
        from public.credit_grants as g
        group by g.account_id
    ),

    debt_draws as (
        select t.account_id, sum(d.amount) as debt
        from public.credit_grant_draws as d
        inner join public.credit_transactions as t on d.transaction_id = t.id
        where d.grant_id is null
        group by t.account_id
    ),

    chain as (
        select
            t.account_id,
            t.seq,
            t.balance_after,
            coalesce(lag(t.balance_after) over w, 0) + t.amount as expected
        from public.credit_transactions as t
        window w as (partition by t.account_id order by t.seq)
    )

    select a.id, a.user_id, 'balance = sum of journal', coalesce(j.total, 0)::text, a.balance::text
    from public.credit_accounts as a
    left join journal as j on a.id = j.account_id
    where a.balance <> coalesce(j.total, 0)

    union all
    select a.id, a.user_id, 'journal seq is 1..version', a.version::text,
        format('%s rows, last seq %s', coalesce(j.n, 0), j.last_seq)
    from public.credit_accounts as a
    left join journal as j on a.id = j.account_id
    where coalesce(j.n, 0) <> a.version or coalesce(j.last_seq, 0) <> a.version

    union all
    select c.account_id, null, 'balance_after chain at seq ' || c.seq, c.expected::text,
        c.balance_after::text
    from chain as c
    where c.balance_after <> c.expected

    union all
    select a.id, a.user_id, 'balance = grants remaining - debt',
        (coalesce(g.remaining, 0) - a.debt)::text, a.balance::text
    from public.credit_accounts as a
    left join grants as g on a.id = g.account_id
    where a.balance <> coalesce(g.remaining, 0) - a.debt

    union all
    select a.id, a.user_id, 'debt = sum of debt draws', coalesce(d.debt, 0)::text, a.debt::text
    from public.credit_accounts as a
    left join debt_draws as d on a.id = d.account_id
    where a.debt <> coalesce(d.debt, 0)

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' remaining = amount - draws',
        (g.amount - coalesce(sum(d.amount), 0))::text, g.remaining::text
    from public.credit_grants as g
    left join public.credit_grant_draws as d on g.account_id = d.account_id and g.id = d.grant_id
    group by g.id, g.account_id
    having g.remaining <> g.amount - coalesce(sum(d.amount), 0)

    union all
    select t.account_id, t.user_id, 'transaction ' || t.id || ' amount = its draws',
        (-t.amount)::text, coalesce(sum(d.amount), 0)::text
    from public.credit_transactions as t
    left join public.credit_grant_draws as d
        on t.account_id = d.account_id and t.id = d.transaction_id
    where t.type in ('usage', 'fixed_job', 'capture', 'expiry', 'void')
    group by t.id, t.account_id
    having -t.amount <> coalesce(sum(d.amount), 0)

    union all
    select t.account_id, t.user_id,
        'refunds of ' || t.id || ' gave back at most what it drew from each source',
        '>= 0', sum(m.amount)::text
    from public.credit_transactions as t
    inner join (
        select coalesce(r.refund_of, r.id) as original, d.grant_id, d.amount
        from public.credit_grant_draws as d
        inner join public.credit_transactions as r on d.transaction_id = r.id
        where r.type in ('usage', 'fixed_job', 'capture', 'void', 'refund')
        union all
        select r.refund_of, null, -g.amount
        from public.credit_grants as g
        inner join public.credit_transactions as r on g.transaction_id = r.id
        where r.type = 'refund'
    ) as m on t.id = m.original
    group by t.id, t.account_id, m.grant_id
    having sum(m.amount) < 0

    union all
    select o.account_id, o.user_id, 'refunds of ' || o.id || ' <= charged',
        (-o.amount)::text, sum(r.amount)::text
    from public.credit_transactions as o
    inner join public.credit_transactions as r
        on o.account_id = r.account_id and o.id = r.refund_of
    group by o.id, o.account_id
    having sum(r.amount) > -o.amount

    union all
    select r.account_id, r.user_id, 'reservation ' || r.id || ' settled = its capture',
        r.settled_amount::text, coalesce(-t.amount, 0)::text
    from public.credit_reservations as r
    left join public.credit_transactions as t on r.transaction_id = t.id
    where r.status = 'settled' and r.settled_amount <> coalesce(-t.amount, 0)

    -- what the journal's foreign keys checked before rows could be archived: a refund's
    -- charge and a grant's row exist (nothing is archived here: the full check runs only
    -- while every row is attached)
    union all
    select r.account_id, r.user_id, 'refund ' || r.id || ' names a journal row',
        r.refund_of::text, 'none'
    from public.credit_transactions as r
    where
        r.refund_of is not null
        and not exists (
            select from public.credit_transactions as o
            where o.account_id = r.account_id and o.id = r.refund_of
        )

    union all
    select g.account_id, g.user_id, 'grant ' || g.id || ' has its journal row',
        g.transaction_id::text, 'none'
    from public.credit_grants as g
    where not exists (
        select from public.credit_transactions as o
        where o.account_id = g.account_id and o.id = g.transaction_id
    )

    union all
    select s.account_id, s.user_id, s.check_name, s.expected, s.actual
    from credit_private.verify_scopes() as s;
end;
$$;
revoke all on function public.credit_verify_ledger(timestamptz)
from public, anon, authenticated, service_role;
grant execute on function public.credit_verify_ledger(timestamptz) to service_role;


create or replace function public.credit_schema_version()
returns text
language sql
immutable
set search_path = ''
as $$
    select '20261205001700'::text;
$$;
revoke all on function public.credit_schema_version()
from public, anon, authenticated, service_role;
grant execute on function public.credit_schema_version() to service_role;

create or replace function credit_private.emit_expiring_grants(p_now timestamptz)
returns integer
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_days integer := coalesce(
        (select s.grant_expiring_days from public.credit_event_settings as s), 7
    );
    v_grant record;
    v_count integer := 0;
begin
    -- one writer at a time: two sweeps writing the same grant's event (its dedupe key) wait
    -- for each other, each holding key locks on the accounts of the events it wrote, which
    -- the charges waiting between them need (a deadlock)
    perform pg_advisory_xact_lock(hashtext('credit_private.emit_expiring_grants'));
    -- grant.expiring, once per grant (its dedupe key), for grants with credits left that
    -- expire within the next v_days days; the sweep's expiry index finds them
    for v_grant in
        select g.id, g.account_id, g.user_id, g.remaining, g.amount, g.category, g.expires_at
        from public.credit_grants as g
        where
            g.spendable and g.expires_at > p_now
            and g.expires_at <= p_now + make_interval(days => v_days)
            and not exists (
                select 1 from public.credit_events as e
                where e.dedupe_key = 'grant.expiring:' || g.id
            )
        order by g.expires_at, g.id
    loop
        if credit_private.emit_event(
            v_grant.account_id, v_grant.user_id, 'grant.expiring',
            jsonb_build_object(
                'grant_id', v_grant.id, 'remaining', v_grant.remaining,
                'granted', v_grant.amount, 'category', v_grant.category,
                'expires_at', v_grant.expires_at, 'days_before', v_days
            ),
            'grant.expiring:' || v_grant.id
        ) is not null then
            v_count := v_count + 1;
        end if;
    end loop;
    return v_count;
end;
$$;
revoke all on function credit_private.emit_expiring_grants(timestamptz)
from public, anon, authenticated, service_role;

-- Writes events: runs as its owner (no API role writes the outbox). Service role only; a
-- pg_cron job runs it as its owner.
