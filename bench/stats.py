"""Usage analytics on a journal of 1,000,000 rows: a one-day window reads that day's
blocks, not the journal.

Run against a running stack (``eval "$(scripts/local-stack up)"``); it makes a database of
its own there (``scripts/local-stack db-create ducto_bench_stats --replace --test-clock``):

    .venv/bin/python bench/stats.py [rows, default 1000000] [days, default 100]

The journal is built set-based, as the ledger's functions would write it: 10,000 users and
20 team pools (10 members each) funded once, then usage charges priced by a published
pricing version (five models), fixed-cost jobs, and refunds, spread evenly over the days in
time order, with their grant draws, balances and pool attributions.
``credit_verify_ledger()`` checks the result before anything is measured.

Then, for a one-day window in the middle and for the whole range, each analytics function
is timed (median of 5 runs), the one-day window once more with bitmap scans disabled (so
the planner can only read the whole journal), and the plan of the query each function runs
is printed with its buffers (``auto_explain``, nested statements): the one-day window must
go through the BRIN index on created_at and touch about 1/days of the journal's blocks.
Last, the plan of a team member reading the journal through row-level security: their own
rows and their pool's, by index, not the journal.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "ducto_bench_stats"
USERS = 10_000
TEAMS = 20
MEMBERS = 10
START = datetime(2030, 1, 1, tzinfo=UTC)
FUNDING = 10**12
RUNS = 5

PRICING = {
    "models": [{"model": f"model-{j}", "input": 1000 * j, "output": 4000 * j} for j in range(1, 6)],
    "default": None,
    "fixed_jobs": {"report": 50},
}

# One row per journal entry after the funding: its account (round robin, so row i and row
# i - accounts share one), kind, time, tokens and cost. Every 50th row refunds 1 credit of
# the row `accounts` before it (never a refund itself, as accounts % 50 != 0); every 97th
# is a fixed-cost job; the rest are usage of one of five models, priced as the published
# config prices it (ceil of tokens x rate per 1M tokens).
PLAN = """
create temp table plan as
with numbered as (
    select
        i,
        (i - 1) %% %(accounts)s + 1 as slot,
        %(start)s::timestamptz + (i - 1) * (%(days)s * interval '1 day') / %(rows)s as created_at,
        case
            when i %% 50 = 0 and i > %(accounts)s then 'refund'
            when i %% 97 = 0 then 'fixed_job'
            else 'usage'
        end as type,
        i %% 5 + 1 as model,
        500 + i %% 1500 as input_tokens,
        100 + i %% 700 as output_tokens
    from generate_series(1, %(rows)s) as i
)
select
    n.i, gen_random_uuid() as id, a.id as account_id, a.user_id, a.grant_id, n.created_at,
    n.type,
    case n.type
        when 'refund' then 1
        when 'fixed_job' then -50
        else -ceil((n.input_tokens * 1000 * n.model + n.output_tokens * 4000 * n.model)
            / 1000000.0)::bigint
    end as amount,
    case when n.type = 'usage' then jsonb_build_object(
        'model', 'model-' || n.model, 'input_tokens', n.input_tokens,
        'output_tokens', n.output_tokens, 'cached_input_tokens', 0,
        'cache_creation_tokens', 0, 'reasoning_tokens', 0, 'tool_calls', 0, 'requests', 1
    ) end as usage,
    case when a.user_id like 'team:%%' then 'member-' || a.team_no || '-' || n.i %% 10 end
        as attributed_user_id
from numbered as n
join bench_accounts as a on a.slot = n.slot
order by n.i
"""

STEPS = [
    (
        "accounts",
        """
        create temp table bench_accounts as
        select
            row_number() over (order by a.user_id) as slot, a.id, a.user_id, g.id as grant_id,
            rank() over (partition by a.user_id like 'team:%%' order by a.user_id) as team_no
        from credit_accounts as a
        join credit_grants as g on g.account_id = a.id
        """,
    ),
    ("plan", PLAN),
    ("refunded rows", "create index on plan (i)"),
    (
        "journal",
        """
        insert into credit_transactions (
            id, account_id, seq, user_id, type, amount, balance_after, refund_of, metadata,
            created_at, pricing_version, usage, model, job_name, attributed_user_id
        )
        select
            p.id, p.account_id, 1 + row_number() over w, p.user_id, p.type, p.amount,
            %(funding)s + sum(p.amount) over w, o.id, '{}', p.created_at,
            case when p.type <> 'refund' then %(version)s end, p.usage, p.usage ->> 'model',
            case when p.type = 'fixed_job' then 'report' end, p.attributed_user_id
        from plan as p
        left join plan as o on p.type = 'refund' and o.i = p.i - %(accounts)s
        window w as (partition by p.account_id order by p.i)
        order by p.i
        """,
    ),
    (
        "draws",
        """
        insert into credit_grant_draws (account_id, transaction_id, grant_id, amount)
        select p.account_id, p.id, p.grant_id, -p.amount from plan as p order by p.i
        """,
    ),
    (
        "balances",
        """
        with totals as (
            select p.account_id, p.grant_id, sum(p.amount) as total, count(*) as n
            from plan as p group by 1, 2
        ),
        accounts as (
            update credit_accounts as a
            set balance = a.balance + t.total, version = a.version + t.n
            from totals as t where a.id = t.account_id
        )
        update credit_grants as g set remaining = g.remaining + t.total
        from totals as t where g.id = t.grant_id
        """,
    ),
]

FUNCTIONS = {
    "aggregate_stats": "select * from credit_aggregate_stats(%(start)s, %(end)s)",
    "daily_spend": "select * from credit_daily_spend(%(start)s, %(end)s)",
    "spend_by_model": "select * from credit_spend_by_model(%(start)s, %(end)s)",
    "spend_by_user": "select * from credit_spend_by_user(%(start)s, %(end)s)",
    "top_users": "select * from credit_top_users(10, %(start)s, %(end)s)",
}

# A member of the first pool (a uuid, as auth.uid() requires) reads the journal as PostgREST
# would run their request: role authenticated, their claims.
MEMBER = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
MEMBER_READ = "explain (analyze, buffers, timing off) select count(*) from credit_transactions"


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def make_database() -> str:
    """A fresh database with ducto's migrations on the running stack, and the tests' clock
    (the journal is written over past days); its URL."""
    return subprocess.run(
        [str(ROOT / "scripts" / "local-stack"), "db-create", DATABASE, "--replace", "--test-clock"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def build(conn: psycopg.Connection[Any], rows: int, days: int) -> None:
    conn.execute("select set_config('ducto.now', %s, false)", ((START - timedelta(1)).isoformat(),))
    version = conn.execute(
        "select version from credit_publish_pricing(%s)", (Jsonb(PRICING),)
    ).fetchone()
    assert version is not None
    log(f"funding {USERS:,} users and {TEAMS} team pools of {MEMBERS} members")
    conn.execute(
        "select count(*) from generate_series(1, %s) as u,"
        " lateral credit_add_credits('user-' || lpad(u::text, 5, '0'), %s, 'purchase')",
        (USERS, FUNDING),
    )
    for team in range(TEAMS):
        team_id = f"00000000-0000-4000-8000-{team:012d}"
        conn.execute("select credit_upsert_team(%s, %s)", (team_id, f"team {team}"))
        conn.execute("select credit_add_credits(%s, %s, 'purchase')", (f"team:{team_id}", FUNDING))
    # members are named by their team's rank among the pools' user ids, as in PLAN
    conn.execute(
        """
        select count(*)
        from (
            select t.id, dense_rank() over (order by a.user_id) as team_no
            from credit_teams as t join credit_accounts as a on a.id = t.account_id
        ) as ranked,
        generate_series(0, %s - 1) as m,
        lateral credit_set_team_member(ranked.id, 'member-' || ranked.team_no || '-' || m)
        """,
        (MEMBERS,),
    )
    params = {
        "rows": rows,
        "days": days,
        "start": START,
        "accounts": USERS + TEAMS,
        "funding": FUNDING,
        "version": version[0],
    }
    for name, sql in STEPS:
        began = time.perf_counter()
        conn.execute(sql, params)
        log(f"{name}: {time.perf_counter() - began:.1f} s")
    conn.commit()


def plans_of(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> list[str]:
    """The plans auto_explain reports for the statements ``sql`` runs inside functions."""
    notices: list[str] = []

    def collect(diagnostic: psycopg.errors.Diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    conn.add_notice_handler(collect)
    conn.execute("load 'auto_explain'")
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_analyze = on",
        "auto_explain.log_buffers = on",
        "auto_explain.log_timing = off",
        "auto_explain.log_nested_statements = on",
        "auto_explain.log_level = notice",
    ):
        conn.execute(f"set {setting}")
    conn.execute(sql, params).fetchall()
    conn.execute("set auto_explain.log_min_duration = -1")
    conn.remove_notice_handler(collect)
    return [n for n in notices if "credit_transactions" in n or "journal_activity" in n]


def median_ms(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> float:
    times = []
    for _ in range(RUNS):
        began = time.perf_counter()
        conn.execute(sql, params).fetchall()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    days = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    url = make_database()
    with psycopg.connect(url) as conn:
        log(f"building a journal of {rows:,} rows over {days} days")
        build(conn, rows, days)
    with psycopg.connect(url, autocommit=True) as conn:
        log("vacuum analyze; credit_verify_ledger()")
        conn.execute("vacuum analyze")
        issues = conn.execute("select count(*) from credit_verify_ledger()").fetchone()
        assert issues == (0,), f"the built journal breaks {issues} invariants"
        journal_rows, blocks = conn.execute(
            "select count(*), pg_relation_size('credit_transactions') / 8192"
            " from credit_transactions"
        ).fetchone() or (0, 0)
        middle = START + timedelta(days=days // 2)
        day = {"start": middle, "end": middle + timedelta(days=1)}
        everything = {"start": START, "end": START + timedelta(days=days)}

        print(
            f"\njournal: {journal_rows:,} rows in {blocks:,} blocks of 8 kB over {days} days;"
            f" one day is about {journal_rows // days:,} rows, {blocks // days:,} blocks"
        )
        print(f"{'function':<16} {'1 day ms':>9} {'1 day, no index ms':>19} {'all days ms':>12}")
        for name, sql in FUNCTIONS.items():
            indexed = median_ms(conn, sql, day)
            conn.execute("set enable_bitmapscan = off")
            scanned = median_ms(conn, sql, day)
            conn.execute("reset enable_bitmapscan")
            full = median_ms(conn, sql, everything)
            print(f"{name:<16} {indexed:9.1f} {scanned:19.1f} {full:12.1f}")

        print("\nplans of the one-day window (auto_explain: the statement inside each function)")
        for name, sql in FUNCTIONS.items():
            for plan in plans_of(conn, sql, day):
                # the top node's buffers: the whole statement's
                top = re.search(r"Buffers: ([^\n]*)", plan)
                touched = sum(
                    int(n) for n in re.findall(r"(?:hit|read)=(\d+)", top[1] if top else "")
                )
                print(f"\n-- {name}: {touched:,} buffers touched of {blocks:,} journal blocks")
                print(plan)

        print("\na team member counts the journal rows they may read (row-level security)")
        conn.execute(
            "select credit_set_team_member(id, %s) from credit_teams order by id limit 1",
            (MEMBER,),
        )
        with conn.transaction(force_rollback=True):
            conn.execute("set local role authenticated")
            conn.execute(
                "select set_config('request.jwt.claims', %s, true)",
                (f'{{"sub": "{MEMBER}", "role": "authenticated"}}',),
            )
            for (line,) in conn.execute(MEMBER_READ).fetchall():
                print(line)


if __name__ == "__main__":
    main()
